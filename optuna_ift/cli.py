"""The ``optuna-ift`` command: one subcommand per job, each a thin call into ``experiments``.

An error that a user can cause (an argument out of range, a missing file, a storage URL that
does not parse or a database that cannot be reached) ends the command with one line,
``optuna-ift <subcommand>: error: <message>``, on stderr and exit status 2; ``--debug`` shows
the traceback instead. Any other exception is a bug and keeps its traceback. Passwords in
storage URLs are masked in everything the command prints.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["USER_ERRORS", "CommandParser", "build_parser", "main"]

#: Exceptions that mean "the user asked for something impossible": the argument checks of the
#: library raise them (and a missing file, a folder in the way, a database that is down), so
#: the command reports them in one line. Everything else keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
    IsADirectoryError, PermissionError, ConnectionError,
)


class _UsageError(Exception):
    """An argument combination the parser cannot check itself (reported like its errors)."""


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, ``PROG: error: MESSAGE``
    (no usage block), with exit status 2.

    Attributes:
        commands: The parser of each subcommand, by name (filled by :func:`build_parser`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- argument types ----------------------------------------------------------------------------


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1)


def _nonnegative_int(text: str) -> int:
    return _integer(text, 0)


def _float(text: str) -> float:
    """``text`` as a float; NaN when it is not a number (every range check refuses NaN)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _positive_float(text: str) -> float:
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text}")
    return value


def _device(text: str) -> str:
    """A device the trainer can use: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ...
    Refused here, before any data is read, if PyTorch does not know it or the machine lacks it."""
    from optuna_ift.trainer import resolve_device

    try:
        resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("device").lstrip("=: ")
                                         ) from None
    return text


def _list_of(kind: type, noun: str) -> Callable[[str], list]:
    """An argparse type: comma-separated values of ``kind``, at least one."""

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated {noun}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"must name at least one of the {noun}")
        return values

    return parse


_int_list = _list_of(int, "integers")
_float_list = _list_of(float, "numbers")


# -- what a run wrote and what it prints -------------------------------------------------------


def _entries(folder: Path) -> dict[str, int]:
    try:
        return {p.name + "/" * p.is_dir(): p.stat().st_mtime_ns for p in folder.iterdir()}
    except OSError:  # not there (yet)
        return {}


@contextmanager
def _watch(folder: str | Path | None) -> Iterator[list[str]]:
    """Yields a list that, after the block, names the entries of ``folder`` that the block
    created or changed (so the command claims only the files it wrote)."""
    names: list[str] = []
    if folder is None:
        yield names
        return
    folder = Path(folder)
    before = _entries(folder)
    yield names
    names.extend(sorted(n for n, t in _entries(folder).items() if before.get(n) != t))


def _print_summary(results: dict[str, Any], out: str | Path, written: list[str]) -> None:
    """The run's scalar results as JSON (NaN as null), then the files it wrote."""
    from optuna_ift.experiments import jsonable

    summary = {k: v for k, v in results.items() if not isinstance(v, (list, tuple, dict))}
    if summary:
        print(json.dumps(jsonable(summary), indent=2, allow_nan=False))
    if written:
        print(f"results written to {out}: {', '.join(written)}")
    else:
        print(f"nothing written to {out}")


def _masked(url: str) -> str:
    from optuna_ift.integration import mask_password

    return mask_password(url)


# -- the subcommands ---------------------------------------------------------------------------


def _compare_inverse(args: argparse.Namespace) -> None:
    from optuna_ift.experiments import compare_inverse

    with _watch(args.out) as written:
        results = compare_inverse(max_steps=args.max_steps, n_draws=args.draws,
                                  log10_decay_range=tuple(args.log10_decay_range),
                                  seed=args.seed, out=args.out,
                                  show_progress=not args.no_progress)
    _print_summary(results, args.out, written)


# The studies on classification data:
# subcommand -> (function in optuna_ift.experiments, help, own options).
# Each option is (flag, add_argument keywords); its value goes to the function argument of the
# same name, and its default (None: the function's own, shown in --help, or "shown") is only
# passed when given. --dataset, --data-root, --download, --seed, --device, --out and
# --no-progress are common to all of them.
_STUDIES: dict[str, tuple[str, str, list[tuple[str, dict]]]] = {
    "overfit": ("overfit", "Fig. 5/10: overfit 50 validation examples with a decay per weight", [
        ("--models", dict(nargs="+", choices=("linear", "mlp", "cnn"), default=None,
                          help="classifiers to run")),
        ("--hyper-steps", dict(type=_positive_int, default=None, help="hyper steps per model")),
    ]),
    "distill": ("distill", "Fig. 6: distil the training set into one learned image per class", [
        ("--hyper-steps", dict(type=_positive_int, default=None, help="hyper steps")),
        ("--learn-labels", dict(action="store_true", help="also learn soft labels")),
    ]),
    "augment": ("augment", "Table 3 / Fig. 7: learn a data-augmentation network", [
        ("--seeds", dict(type=_positive_int, default=None, help="number of seeds per method")),
        ("--hyper-steps", dict(type=_positive_int, default=None, help="hyper steps per run")),
        ("--n-train", dict(type=_positive_int, default=None, help="labelled training examples")),
    ]),
    "split-ratio": ("split_ratio", "Fig. 9: the best validation share with one decay or many", [
        ("--sizes", dict(type=_int_list, default=None,
                         help="training-pool sizes, comma-separated (e.g. 1000,5000)",
                         shown="100,400,1400 on digits, 1000,5000 otherwise")),
        ("--fractions", dict(type=_float_list, default=None,
                             help="validation fractions, comma-separated (e.g. 0.1,0.3,0.5)")),
        ("--weight-decays", dict(type=_list_of(str, "decay modes"), default=None,
                                 help="decay modes, comma-separated, of global, per_weight, "
                                      "per_weight_from_global",
                                 shown="all three")),
        ("--seeds", dict(type=_positive_int, default=None, help="number of seeds")),
        ("--max-iter", dict(type=_positive_int, default=None, help="hyper steps per fit")),
    ]),
}
_COMMON = ("dataset", "data_root", "seed", "device", "out")


def _run_study(args: argparse.Namespace) -> None:
    from optuna_ift import experiments

    if args.dataset != "digits" and args.data_root is None:
        raise _UsageError(f"argument --data-root: required with --dataset {args.dataset} "
                          "(only digits is embedded)")
    function_name, _, options = _STUDIES[args.command]
    kwargs = {name: getattr(args, name) for name in _COMMON}
    kwargs["show_progress"] = not args.no_progress
    for flag, _ in options:
        name = flag.lstrip("-").replace("-", "_")
        value = getattr(args, name)
        if value is not None and value is not False:
            kwargs[name] = value
    if args.download:
        kwargs["download"] = True
    with _watch(args.out) as written:
        results = getattr(experiments, function_name)(**kwargs)
    _print_summary(results, args.out, written)


def _demo(args: argparse.Namespace) -> None:
    from optuna_ift.experiments import demo

    # demo() prints its own report: the table of best trials, where the results and figures
    # went, and the optuna-dashboard command (passwords masked).
    demo(n_trials=args.n_trials, out=args.out, storage=args.storage,
         hyper_steps=args.hyper_steps, seed=args.seed, device=args.device,
         show_progress=not args.no_progress, timeout=args.timeout,
         baseline=not args.no_baseline, warm_start=args.warm_start,
         val_fraction=args.val_fraction)


def _launch_group(args: argparse.Namespace) -> None:
    """``worker --nproc N``: run this worker as N processes through torchrun (PyTorch's
    launcher, ``torch.distributed.run``), which sets each one's rank and restarts nothing."""
    argv = ["worker", "--storage", args.storage, "--study-name", args.study_name,
            "--n-trials", str(args.n_trials), "--out", args.out,
            "--hyper-steps", str(args.hyper_steps),
            "--checkpoint-every", str(args.checkpoint_every),
            "--heartbeat-interval", str(args.heartbeat_interval),
            "--seed", str(args.seed), "--device", str(args.device)]
    if args.total_trials is not None:
        argv += ["--total-trials", str(args.total_trials)]
    if args.grace_period is not None:
        argv += ["--grace-period", str(args.grace_period)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={args.nproc}", "-m", "optuna_ift", *argv]
    code = subprocess.call(command)
    if code:
        raise SystemExit(code)


def _worker(args: argparse.Namespace) -> None:
    from optuna_ift.experiments import run_worker

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_group(args)
        return
    results = run_worker(storage=args.storage, study_name=args.study_name,
                         n_trials=args.n_trials, out=args.out, seed=args.seed,
                         device=args.device, heartbeat_interval=args.heartbeat_interval,
                         grace_period=args.grace_period, total_trials=args.total_trials,
                         hyper_steps=args.hyper_steps, checkpoint_every=args.checkpoint_every)
    if results.get("rank", 0):  # rank 0 reports for its group
        return
    mine, states = results["trials_run"], results["states"]
    numbers = f" ({', '.join(map(str, mine))})" if mine else ""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in states.items() if n) or "none"
    print(f"this worker ran {len(mine)} trial{'s' * (len(mine) != 1)}{numbers} of study "
          f"{results['study_name']!r} in {_masked(args.storage)}")
    print(f"the study holds {sum(states.values())} trials: {counts}")
    print(f"artifacts (learned decays, checkpoints): {results['artifacts']}")
    cutoffs = results.get("neumann_cutoffs", 0)
    if cutoffs:
        print(f"{cutoffs} Neumann series cut off where their terms grew (the hypergradient "
              "kept the terms before; counted here instead of one warning each)")


# The paper's LSTM (Table 4), for --paper-size.
_PAPER_LSTM = dict(hidden_size=650, num_layers=2, seq_len=70, batch_size=40, optimizer="sgd",
                   lr=30.0, clip=0.25, hyper_lr=1e-3, max_train_tokens=None)
_LSTM_OPTIONS = ("methods", "hidden_size", "num_layers", "seq_len", "batch_size", "epochs",
                 "optimizer", "lr", "clip", "hyper_lr", "inner_steps", "neumann_steps",
                 "evaluations")
_LSTM_OVERFIT_OPTIONS = ("hidden_size", "num_layers", "seq_len", "inner_steps",
                         "neumann_steps", "lr", "hyper_lr")


def _lstm(args: argparse.Namespace) -> None:
    from optuna_ift.experiments import lstm, lstm_overfit

    common = dict(data_root=args.data_root, seed=args.seed, device=args.device,
                  show_progress=not args.no_progress)
    if args.overfit:
        ignored = [name for name in (*_LSTM_OPTIONS, "max_train_tokens")
                   if name not in _LSTM_OVERFIT_OPTIONS and getattr(args, name) is not None]
        ignored += ["paper_size"] if args.paper_size else []
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            raise _UsageError(f"argument {flags}: not allowed with --overfit")
        out = args.out or "runs/lstm-overfit"
        kwargs = {name: getattr(args, name) for name in _LSTM_OVERFIT_OPTIONS
                  if getattr(args, name) is not None}
        if args.hyper_steps is not None:
            kwargs["hyper_steps"] = args.hyper_steps
        with _watch(out) as written:
            results = lstm_overfit(out=out, **common, **kwargs)
        _print_summary(results, out, written)
        return
    if args.hyper_steps is not None:
        raise _UsageError("argument --hyper-steps: only with --overfit (the study trains "
                          "for --epochs)")
    out = args.out or "runs/lstm"
    kwargs = dict(_PAPER_LSTM) if args.paper_size else {}
    kwargs |= {name: getattr(args, name) for name in _LSTM_OPTIONS
               if getattr(args, name) is not None}
    if args.max_train_tokens is not None:
        kwargs["max_train_tokens"] = args.max_train_tokens or None
    with _watch(out) as written:
        results = lstm(out=out, **common, **kwargs)
    _print_summary(results, out, written)


# -- the parser --------------------------------------------------------------------------------


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``function`` (what an option left out means)."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _show(value: Any, keywords: dict[str, Any]) -> str:
    if isinstance(value, (list, tuple)):
        return ("," if keywords.get("type") in (_int_list, _float_list) else " ").join(
            map(str, value))
    return str(value)


def _with_default(keywords: dict[str, Any], default: Any) -> dict[str, Any]:
    """``keywords`` with " (default: ...)" added to the help (a ``shown`` entry overrides
    ``default``); flags (store_true) have none."""
    keywords = dict(keywords)
    shown = keywords.pop("shown", None)
    if keywords.get("action") != "store_true":
        text = shown if shown is not None else _show(default, keywords)
        keywords["help"] = f"{keywords.get('help', '')} (default: {text})".strip()
    return keywords


def _common_flags(*, suppress: bool) -> argparse.ArgumentParser:
    """``-v`` and ``--debug``; on a subcommand they default to "not given", so that
    ``optuna-ift --debug demo`` and ``optuna-ift demo --debug`` mean the same."""
    flags = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else False
    flags.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log at INFO level (database retries, study progress)")
    flags.add_argument("--debug", action="store_true", default=default,
                       help="show the full traceback of an error instead of one line, and log "
                       "optuna_ift at DEBUG level")
    return flags


def _add_lstm_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    from optuna_ift.experiments import LSTM_METHODS, lstm, lstm_overfit

    study, overfit = _defaults(lstm), _defaults(lstm_overfit)

    def default(name: str) -> str:
        def show(value: Any) -> str:
            return "all" if value is None else _show(value, {})

        parts = [show(study.get(name, overfit.get(name)))]
        if name in _PAPER_LSTM and _PAPER_LSTM[name] != study.get(name):
            parts.append(f"{show(_PAPER_LSTM[name])} with --paper-size")
        if name in overfit and name in study and overfit[name] != study[name]:
            parts.append(f"{show(overfit[name])} with --overfit")
        return "; ".join(parts)

    p = commands.add_parser(
        "lstm", parents=parents,
        help="Table 4 / Fig. 8: tune the dropout rates of an LSTM language model on PTB",
        description="Train an AWD-style LSTM language model on Penn Treebank four ways on the "
        "same tokens: regularisers fixed, IFT on the 7 (embedding/input/hidden/output dropout, "
        "DropConnect, AR, TAR), IFT on a rate per unit and weight, and an Optuna TPE study over "
        "the 7 with IFT's wall-clock time. With --overfit: Fig. 8 (10 training and 10 "
        "validation sequences, a weight decay per weight).",
    )
    p.add_argument("--data-root", required=True,
                   help="folder of train.txt, valid.txt and test.txt (Penn Treebank)")
    p.add_argument("--out", default=None,
                   help="folder for results.json and PNGs (default: runs/lstm, or "
                   "runs/lstm-overfit with --overfit)")
    p.add_argument("--overfit", action="store_true",
                   help="Fig. 8: overfit 10 validation sequences with a decay per weight")
    p.add_argument("--paper-size", action="store_true",
                   help="the paper's model and optimizer: 650 units, sequence length 70, batch "
                   "40, SGD lr 30, clipping 0.25, Adam 1e-3 for hyperparameters, all of "
                   "train.txt (a GPU job); other flags override single values")
    p.add_argument("--methods", nargs="+", choices=LSTM_METHODS, default=None,
                   help=f"methods to run (default: {default('methods')})")
    for flag, kind, text in (
            ("--hidden-size", _positive_int, "LSTM units per layer"),
            ("--num-layers", _positive_int, "LSTM layers"),
            ("--seq-len", _positive_int, "tokens per training sequence"),
            ("--batch-size", _positive_int, "sequences per mini-batch"),
            ("--epochs", _positive_float, "passes over the training tokens"),
            ("--max-train-tokens", _nonnegative_int,
             "train on the first N tokens of train.txt (0: all of it)"),
            ("--optimizer", None, "weight optimizer"),
            ("--lr", _positive_float, "weight learning rate"),
            ("--clip", _positive_float, "gradient-norm clipping"),
            ("--hyper-lr", _positive_float, "Adam learning rate of the hyperparameters"),
            ("--inner-steps", _positive_int, "weight steps per hyper step"),
            ("--neumann-steps", _positive_int, "Neumann terms per hypergradient"),
            ("--evaluations", _positive_int, "validation evaluations per run"),
            ("--hyper-steps", _positive_int, "--overfit only: hyper steps")):
        name = flag[2:].replace("-", "_")
        keywords: dict[str, Any] = {"type": kind} if kind else {"choices": ("adam", "sgd")}
        p.add_argument(flag, default=None, help=f"{text} (default: {default(name)})",
                       **keywords)
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the data order and the initialisation (default: %(default)s)")
    p.add_argument("--device", type=_device, default="auto",
                   help='"auto" (CUDA when present), "cpu", "cuda", "cuda:N", ... '
                   "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(run=_lstm)


def build_parser() -> CommandParser:
    """The ``optuna-ift`` argument parser (its errors are one line, exit status 2)."""
    import optuna_ift
    from optuna_ift import experiments

    parser = CommandParser(
        prog="optuna-ift",
        description="Gradient-based hyperparameter optimization by implicit differentiation.",
        epilog="Run 'optuna-ift COMMAND --help' for the options of a command. An error prints "
        "one line and exits with status 2; --debug shows its traceback.",
        parents=[_common_flags(suppress=False)],
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {optuna_ift.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [_common_flags(suppress=True)]
    device_help = '"auto" (CUDA when present), "cpu", "cuda", "cuda:N", ... (default: %(default)s)'

    p = commands.add_parser(
        "demo", parents=parents,
        help="the main job: a hybrid Optuna study on digits, IFT tuning a decay per weight",
        description="TPE (through HybridSampler) tunes the learning rate, width, inner steps and "
        "the decay that every weight's own decay starts from; inside each trial implicit "
        "hypergradients tune one weight decay per weight. Writes the study (journal file), "
        "artifacts, results.json and figures into --out.",
    )
    p.add_argument("--n-trials", type=_positive_int, default=40,
                   help="trials to add to the study (default: %(default)s)")
    p.add_argument("--out", default="runs/demo",
                   help="folder for the study, artifacts, figures (default: %(default)s)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL or journal file (default: OUT/study.log)")
    p.add_argument("--hyper-steps", type=_positive_int, default=60,
                   help="hyper steps per trial (default: %(default)s)")
    p.add_argument("--timeout", type=_positive_float, default=None,
                   help="stop starting trials after this many seconds (default: no limit)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the sampler, the data split and the trials "
                   "(default: %(default)s)")
    p.add_argument("--device", type=_device, default="auto", help=device_help)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the weights-only TPE run (as long as the hybrid trials took) "
                   "whose best trial's test accuracy is shown beside the hybrid's")
    p.add_argument("--warm-start", action="store_true",
                   help="start a trial's decays from the best finished trial of the same width "
                   "instead of the sampled decay")
    p.add_argument("--val-fraction", type=_fraction, default=0.5,
                   help="share of train + validation the hybrid study validates on; the "
                   "baseline keeps the loader's 0.2 (default: %(default)s)")
    p.set_defaults(run=_demo)

    p = commands.add_parser(
        "worker", parents=parents,
        help="join a shared study (PostgreSQL, MySQL, SQLite or journal file) and run trials",
        description="Run the demo objective in a shared study. Start one worker per GPU or "
        "machine with the same --storage, --study-name and --out (artifacts are shared there). "
        "Heartbeats fail a dead worker's trial, which is retried and resumes from its last "
        "checkpoint.",
    )
    p.add_argument("--storage", required=True,
                   help="e.g. postgresql+psycopg2://user:password@host/db, sqlite:///study.db, "
                   "or a journal file")
    p.add_argument("--study-name", default="optuna-ift-demo",
                   help="the shared study (default: %(default)s)")
    p.add_argument("--n-trials", type=_positive_int, required=True, help="trials this worker runs")
    p.add_argument("--total-trials", type=_positive_int, default=None,
                   help="stop when the study has this many finished trials (workers that "
                   "start a trial in the same instant can overshoot it by one each) "
                   "(default: no total)")
    p.add_argument("--out", default="runs/worker",
                   help="shared folder of the artifacts (default: %(default)s)")
    p.add_argument("--hyper-steps", type=_positive_int, default=40,
                   help="hyper steps per trial (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=10,
                   help="hyper steps between checkpoints (default: %(default)s)")
    p.add_argument("--heartbeat-interval", type=_positive_int, default=10,
                   help="seconds between heartbeats (default: %(default)s)")
    p.add_argument("--grace-period", type=_positive_int, default=None,
                   help="seconds without heartbeat before a trial is failed and retried "
                   "(default: twice the heartbeat interval)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of this worker's sampler; give each worker its own "
                   "(default: %(default)s)")
    p.add_argument("--device", type=_device, default="auto", help=device_help)
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="processes that run each trial together, data-parallel (one per GPU; "
                   "gloo on the CPU), launched through torchrun; the same as "
                   "'torchrun --nproc-per-node N -m optuna_ift worker ...' "
                   "(default: %(default)s)")
    p.set_defaults(run=_worker)

    p = commands.add_parser(
        "compare-inverse", parents=parents,
        help="Fig. 3: inverse-Hessian approximations against the exact hypergradient",
        description="Compare Neumann, conjugate gradient and identity hypergradients with the "
        "exact one on a linear model with a weight decay per weight (diabetes data).",
    )
    p.add_argument("--out", default="runs/compare-inverse",
                   help="folder for results.json and PNGs (default: %(default)s)")
    p.add_argument("--max-steps", type=_positive_int, default=50,
                   help="largest step count (default: %(default)s)")
    p.add_argument("--draws", type=_positive_int, default=10,
                   help="random decay settings (default: %(default)s)")
    p.add_argument("--log10-decay-range", type=float, nargs=2, default=(-2.0, 0.0),
                   metavar=("LOW", "HIGH"),
                   help="decays are drawn as 10**U(LOW, HIGH) (default: -2.0 0.0)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the draws (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_compare_inverse)

    for command, (function_name, help_text, options) in _STUDIES.items():
        defaults = _defaults(getattr(experiments, function_name))
        p = commands.add_parser(command, parents=parents, help=help_text,
                                description=help_text)
        p.add_argument("--dataset", default="digits",
                       choices=("digits", "mnist", "fashion-mnist", "cifar10"),
                       help="digits is embedded; the others are read from --data-root "
                       "(default: %(default)s)")
        p.add_argument("--data-root", default=None,
                       help="folder in torchvision's layout (MNIST/raw, FashionMNIST/raw, "
                       "cifar-10-batches-py) (default: none, which only digits allows)")
        p.add_argument("--download", action="store_true",
                       help="let torchvision download the data set into --data-root")
        p.add_argument("--seed", type=_nonnegative_int, default=0,
                       help="seed of the split, the initialisation and the batches "
                       "(default: %(default)s)")
        p.add_argument("--device", type=_device, default="auto", help=device_help)
        p.add_argument("--out", default=f"runs/{command}",
                       help="folder for results.json and PNGs (default: %(default)s)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        for flag, keywords in options:
            name = flag.lstrip("-").replace("-", "_")
            p.add_argument(flag, **_with_default(keywords, defaults.get(name)))
        p.set_defaults(run=_run_study)
    _add_lstm_parser(commands, parents)
    parser.commands = dict(commands.choices)
    return parser


# -- running -----------------------------------------------------------------------------------

#: A URL in free text (an error message): masked before it is printed.
_URL_IN_TEXT = re.compile(r"[A-Za-z][\w+.\-]*://[^\s'\"]+")


def _error_message(error: BaseException, args: argparse.Namespace) -> str:
    """``error`` as one line, with any password in a URL masked."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])  # str(KeyError) adds quotes
    else:
        text = str(error) or type(error).__name__
    storage = getattr(args, "storage", None)
    if isinstance(storage, str) and storage and storage in text:
        text = text.replace(storage, _masked(storage))
    text = _URL_IN_TEXT.sub(lambda m: _masked(m.group()), text)
    return _one_line(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``optuna-ift`` command line; returns 0 when the job is done.

    Raises:
        SystemExit: With status 2 (and one line on stderr) for an error the user can fix,
            with status 0 after ``--help`` and ``--version``.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command_parser = parser.commands[args.command]
    if extras:
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if debug:
        logging.getLogger("optuna_ift").setLevel(logging.DEBUG)
    try:
        args.run(args)
    except _UsageError as error:
        command_parser.error(str(error))
    except USER_ERRORS as error:
        if debug:
            raise
        command_parser.error(_error_message(error, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
