"""The ``optuna-ift`` command: one subcommand per job, each a thin call into ``experiments``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _compare_inverse(args: argparse.Namespace) -> dict:
    from optuna_ift.experiments import compare_inverse

    return compare_inverse(max_steps=args.max_steps, n_draws=args.draws,
                           log10_decay_range=tuple(args.log10_decay_range), seed=args.seed,
                           out=args.out, show_progress=not args.no_progress)


def _list_of(kind: type, noun: str):
    """An argparse type: comma-separated values of ``kind``, at least one."""

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated {noun}, got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError(f"must name at least one of the {noun}")
        return values

    return parse


_int_list = _list_of(int, "integers")
_float_list = _list_of(float, "numbers")


# The studies on classification data:
# subcommand -> (function in optuna_ift.experiments, help, own options).
# Each option is (flag, add_argument keywords); its value goes to the function argument of the
# same name. --dataset, --data-root, --download, --seed, --device, --out and --no-progress are
# common to all of them.
_STUDIES: dict[str, tuple[str, str, list[tuple[str, dict]]]] = {
    "overfit": ("overfit", "Fig. 5/10: overfit 50 validation examples with a decay per weight", [
        ("--models", dict(nargs="+", choices=("linear", "mlp", "cnn"),
                          default=["linear", "mlp", "cnn"], help="classifiers to run")),
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
                         help="training-pool sizes, comma-separated (e.g. 1000,5000)")),
        ("--fractions", dict(type=_float_list, default=None,
                             help="validation fractions, comma-separated (e.g. 0.1,0.3,0.5)")),
        ("--seeds", dict(type=_positive_int, default=None, help="number of seeds")),
        ("--max-iter", dict(type=_positive_int, default=None, help="hyper steps per fit")),
    ]),
}
_COMMON = ("dataset", "data_root", "seed", "device", "out")


def _run_study(args: argparse.Namespace) -> dict:
    import optuna_ift.experiments as experiments

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
    return getattr(experiments, function_name)(**kwargs)


def _demo(args: argparse.Namespace) -> dict:
    from optuna_ift.experiments import demo

    return demo(n_trials=args.n_trials, out=args.out, storage=args.storage,
                hyper_steps=args.hyper_steps, seed=args.seed, device=args.device,
                show_progress=not args.no_progress, timeout=args.timeout)


def _worker(args: argparse.Namespace) -> dict:
    from optuna_ift.experiments import run_worker

    return run_worker(storage=args.storage, study_name=args.study_name, n_trials=args.n_trials,
                      out=args.out, seed=args.seed, device=args.device,
                      heartbeat_interval=args.heartbeat_interval,
                      grace_period=args.grace_period, total_trials=args.total_trials,
                      hyper_steps=args.hyper_steps, checkpoint_every=args.checkpoint_every)


# The paper's LSTM (Table 4), for --paper-size.
_PAPER_LSTM = dict(hidden_size=650, num_layers=2, seq_len=70, batch_size=40, optimizer="sgd",
                   lr=30.0, clip=0.25, hyper_lr=1e-3, max_train_tokens=None)
_LSTM_OPTIONS = ("methods", "hidden_size", "num_layers", "seq_len", "batch_size", "epochs",
                 "optimizer", "lr", "clip", "hyper_lr", "inner_steps", "neumann_steps",
                 "evaluations")


def _lstm(args: argparse.Namespace) -> dict:
    from optuna_ift.experiments import lstm, lstm_overfit

    common = dict(data_root=args.data_root, seed=args.seed, device=args.device,
                  show_progress=not args.no_progress)
    if args.overfit:
        out = args.out or "runs/lstm-overfit"
        args.out = out
        kwargs = {name: getattr(args, name) for name in ("hidden_size", "num_layers", "seq_len",
                                                         "inner_steps", "neumann_steps", "lr",
                                                         "hyper_lr")
                  if getattr(args, name) is not None}
        if args.hyper_steps is not None:
            kwargs["hyper_steps"] = args.hyper_steps
        return lstm_overfit(out=out, **common, **kwargs)
    args.out = args.out or "runs/lstm"
    kwargs = dict(_PAPER_LSTM) if args.paper_size else {}
    kwargs |= {name: getattr(args, name) for name in _LSTM_OPTIONS
               if getattr(args, name) is not None}
    if args.max_train_tokens is not None:
        kwargs["max_train_tokens"] = args.max_train_tokens or None
    return lstm(out=args.out, **common, **kwargs)


def _add_lstm_parser(commands) -> None:
    p = commands.add_parser(
        "lstm",
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
                   help="folder for results.json and PNGs (default runs/lstm or "
                   "runs/lstm-overfit)")
    p.add_argument("--overfit", action="store_true",
                   help="Fig. 8: overfit 10 validation sequences with a decay per weight")
    p.add_argument("--paper-size", action="store_true",
                   help="the paper's model and optimizer: 650 units, sequence length 70, batch "
                   "40, SGD lr 30, clipping 0.25, Adam 1e-3 for hyperparameters, all of "
                   "train.txt (a GPU job); other flags override single values")
    p.add_argument("--methods", nargs="+", choices=("none", "ift-7", "ift-many", "tpe"),
                   default=None, help="methods to run (default: all four)")
    p.add_argument("--hidden-size", type=_positive_int, default=None)
    p.add_argument("--num-layers", type=_positive_int, default=None)
    p.add_argument("--seq-len", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--epochs", type=float, default=None, help="passes over the training tokens")
    p.add_argument("--max-train-tokens", type=int, default=None,
                   help="train on the first N tokens of train.txt (0: all of it)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                   help="weight optimizer")
    p.add_argument("--lr", type=float, default=None, help="weight learning rate")
    p.add_argument("--clip", type=float, default=None, help="gradient-norm clipping")
    p.add_argument("--hyper-lr", type=float, default=None,
                   help="Adam learning rate of the hyperparameters")
    p.add_argument("--inner-steps", type=_positive_int, default=None,
                   help="weight steps per hyper step")
    p.add_argument("--neumann-steps", type=_positive_int, default=None,
                   help="Neumann terms per hypergradient")
    p.add_argument("--evaluations", type=_positive_int, default=None,
                   help="validation evaluations per run")
    p.add_argument("--hyper-steps", type=_positive_int, default=None,
                   help="--overfit only: hyper steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu", ...')
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(run=_lstm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-ift",
        description="Gradient-based hyperparameter optimization by implicit differentiation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "demo",
        help="the main job: a hybrid Optuna study on digits, IFT tuning a decay per weight",
        description="TPE (through HybridSampler) tunes the learning rate, width and inner steps; "
        "inside each trial implicit hypergradients tune one weight decay per weight. Writes the "
        "study (journal file), artifacts, results.json and figures into --out.",
    )
    p.add_argument("--n-trials", type=_positive_int, default=40)
    p.add_argument("--out", default="runs/demo", help="folder for the study, artifacts, figures")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL or journal file (default: OUT/study.log)")
    p.add_argument("--hyper-steps", type=_positive_int, default=60, help="hyper steps per trial")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after S s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_demo)

    p = commands.add_parser(
        "worker",
        help="join a shared study (PostgreSQL, MySQL, SQLite or journal file) and run trials",
        description="Run the demo objective in a shared study. Start one worker per GPU or "
        "machine with the same --storage, --study-name and --out (artifacts are shared there). "
        "Heartbeats fail a dead worker's trial, which is retried and resumes from its last "
        "checkpoint.",
    )
    p.add_argument("--storage", required=True,
                   help="e.g. postgresql://user@host/db, sqlite:///study.db, or a journal file")
    p.add_argument("--study-name", default="optuna-ift-demo")
    p.add_argument("--n-trials", type=_positive_int, required=True, help="trials this worker runs")
    p.add_argument("--total-trials", type=_positive_int, default=None,
                   help="stop when the study has this many finished trials (workers that "
                   "start a trial in the same instant can overshoot it by one each)")
    p.add_argument("--out", default="runs/worker", help="shared folder of the artifacts")
    p.add_argument("--hyper-steps", type=_positive_int, default=40)
    p.add_argument("--checkpoint-every", type=_positive_int, default=10)
    p.add_argument("--heartbeat-interval", type=_positive_int, default=10)
    p.add_argument("--grace-period", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=0, help="give each worker its own")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_worker)

    p = commands.add_parser(
        "compare-inverse",
        help="Fig. 3: inverse-Hessian approximations against the exact hypergradient",
        description="Compare Neumann, conjugate gradient and identity hypergradients with the "
        "exact one on a linear model with a weight decay per weight (diabetes data).",
    )
    p.add_argument("--out", default="runs/compare-inverse", help="folder for results.json and PNGs")
    p.add_argument("--max-steps", type=_positive_int, default=50, help="largest step count")
    p.add_argument("--draws", type=_positive_int, default=10, help="random decay settings")
    p.add_argument("--log10-decay-range", type=float, nargs=2, default=(-2.0, 0.0),
                   metavar=("LOW", "HIGH"), help="decays are drawn as 10**U(LOW, HIGH)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_compare_inverse)

    for command, (_, help_text, options) in _STUDIES.items():
        p = commands.add_parser(command, help=help_text, description=help_text)
        p.add_argument("--dataset", default="digits",
                       choices=("digits", "mnist", "fashion-mnist", "cifar10"),
                       help="digits is embedded; the others are read from --data-root")
        p.add_argument("--data-root", default=None,
                       help="folder in torchvision's layout (MNIST/raw, FashionMNIST/raw, "
                       "cifar-10-batches-py)")
        p.add_argument("--download", action="store_true",
                       help="let torchvision download the data set into --data-root")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu", ...')
        p.add_argument("--out", default=f"runs/{command}",
                       help="folder for results.json and PNGs")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        for flag, keywords in options:
            p.add_argument(flag, **keywords)
        p.set_defaults(run=_run_study)
    _add_lstm_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    results = args.run(args)
    summary = {k: v for k, v in results.items() if not isinstance(v, (list, dict))}
    json.dump(summary, sys.stdout, indent=2)
    print(f"\nresults and figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
