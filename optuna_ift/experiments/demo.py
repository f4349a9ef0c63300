"""The demo: a hybrid Optuna study on scikit-learn's digits (embedded, nothing downloads).

Optuna's sampler (TPE, wrapped in :class:`~optuna_ift.integration.HybridSampler`) tunes the
low-dimensional hyperparameters of a one-hidden-layer MLP: the learning rate of its weights,
its width, the number of weight steps between hyper steps (the paper's N) and the global weight
decay that every weight's own decay starts from. Inside each trial,
:class:`~optuna_ift.HyperTrainer` tunes one weight decay *per weight* (thousands of
hyperparameters) by implicit hypergradients on the validation loss. Each trial reports its
validation loss to a ``MedianPruner``, checkpoints its trainer and saves its learned decays as
Optuna artifacts under ``out/artifacts``; with ``warm_start`` its decays start from the best
finished trial of the same width instead.

:func:`make_objective` builds that objective; :func:`demo` runs a study with it and writes
the results and figures; :func:`run_worker` joins a shared study with the same objective
from any number of processes or machines (heartbeats, retries, resume from checkpoints).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shlex
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift._validation import check_real as _check_real
from optuna_ift.data import ClassificationData, load_dataset
from optuna_ift.experiments._common import count_warnings, write_results
from optuna_ift.experiments._models import (
    DecayedClassifier,
    classification_loss,
    decayed_train_loss,
    make_classifier,
)
from optuna_ift.hypergrad import Neumann, NeumannDivergenceWarning, Solver, check_solver
from optuna_ift.integration import (
    ATTR_LEARNED,
    ATTR_RESUMED_FROM,
    ATTR_WARM_START,
    HybridSampler,
    broadcast_object,
    create_storage,
    load_learned,
    mask_password,
    optimize_distributed,
    run_trainer,
)
from optuna_ift.trainer import (
    Callback,
    HyperTrainer,
    accuracy,
    process_is_alive,
    resolve_device,
)

__all__ = ["ATTR_HOST", "ATTR_PID", "VAL_FRACTION", "demo", "make_objective",
           "retry_trials_of_dead_processes", "run_worker"]

_logger = logging.getLogger(__name__)

DEFAULT_STUDY_NAME = "optuna-ift-demo"

#: The validation share of train + validation in the hybrid study: with thousands of decays
#: fitted on it, the validation set gets as many images as the training set (the recipe of
#: ``benchmarks/bench_hybrid.py``; the weights-only baseline keeps the loader's split).
VAL_FRACTION = 0.5


def make_objective(
    *,
    data: ClassificationData,
    artifact_store: Any,
    hyper_steps: int = 40,
    checkpoint_every: int | None = 10,
    eval_every: int = 5,
    neumann_steps: int = 3,
    solver: Solver | None = None,
    hyper_lr: float = 0.1,
    init_decay: float | None = None,
    batch_size: int = 256,
    warm_start: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    step_seconds: float = 0.0,
    learn_decays: bool = True,
) -> Callable[[optuna.Trial], float]:
    """The demo's objective: sample lr, width, inner steps and a decay; IFT tunes a decay per
    weight from there.

    Search space: ``lr`` (Adam on the weights, log-uniform in [1e-3, 3e-2]), ``width``
    (hidden units, 32 to 128 by 32), ``inner_steps`` (weight steps per hyper step, 2 to 10)
    and ``decay`` (log-uniform in [1e-6, 1e-1]), the decay every weight's own decay starts
    from. The log-decays get Adam with ``hyper_lr``; hypergradients use
    ``Neumann(neumann_steps, alpha="auto")``. The value is the final validation loss.

    This is the recipe the hybrid benchmark (``benchmarks/bench_hybrid.py``) found to pay on
    test accuracy: Optuna samples the level of the decays, IFT shapes them per weight inside
    the trial, and the trial's own model is the result. Per-weight decays started from a fixed
    value instead did worse there.

    With ``learn_decays=False`` it is the weights-only baseline the demo compares with: the
    same search space, every weight keeps the sampled ``decay`` (``hyper_optimizer=None``), and
    nothing is warm-started.

    Args:
        data: The data (train for the weights, val for the decays and the objective; test is
            evaluated too and recorded as ``ift:final_test_metric``, the test accuracy).
        artifact_store: Where learned decays and checkpoints go.
        hyper_steps: Hyper steps per trial (raise it to make trials last longer).
        checkpoint_every: Hyper steps between checkpoints (``None``: none).
        eval_every: Hyper steps between evaluations (each is reported to the pruner).
        neumann_steps: Hessian-vector products per hypergradient.
        solver: Any solver of :mod:`optuna_ift.hypergrad` instead of
            ``Neumann(neumann_steps, alpha="auto")`` (a stateful one gets a fresh state per
            trial).
        hyper_lr: Adam learning rate of the natural-log decays.
        init_decay: A fixed initial decay of every weight instead of the sampled ``decay``
            (``None``: sampled; a float takes ``decay`` out of the search space).
        batch_size: Training and validation mini-batch size.
        warm_start: Start the decays from the best finished trial of the same width (the
            sampled ``decay`` is then the start of a trial with no such trial before it).
        seed: Base seed; trial ``k`` initialises and batches with ``seed + k``.
        device: ``"auto"`` (CUDA when present) or a ``torch.device``.
        step_seconds: Sleep this long after each hyper step (only to make trials slow enough
            to be interrupted in tests of distributed runs).
        learn_decays: ``False``: the weights-only baseline above.
    """
    if not isinstance(learn_decays, bool):
        raise TypeError(f"learn_decays must be a bool, got {type(learn_decays).__name__}")
    device_ = resolve_device(device)
    data = data.to(device_)
    inverse = Neumann(steps=neumann_steps, alpha="auto") if solver is None else check_solver(
        "solver", solver)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 3e-2, log=True)
        width = trial.suggest_int("width", 32, 128, step=32)
        inner_steps = trial.suggest_int("inner_steps", 2, 10)
        decay = (trial.suggest_float("decay", 1e-6, 1e-1, log=True)
                 if init_decay is None or not learn_decays else init_decay)
        trial_seed = seed + trial.number
        with torch.random.fork_rng(devices=[]):  # seeded init, global state untouched
            torch.manual_seed(trial_seed)
            net = make_classifier("mlp", data.shape, data.num_classes, hidden=width)
            model = DecayedClassifier(net, init_decay=decay)
        callbacks = []
        if step_seconds > 0:
            callbacks.append(_Sleep(step_seconds))
        trainer = HyperTrainer(
            model, train_loss=decayed_train_loss, val_loss=classification_loss,
            train_data=(data.X_train, data.y_train), val_data=(data.X_val, data.y_val),
            batch_size=batch_size,
            weight_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
            hyper_optimizer=(lambda p: torch.optim.Adam(p, lr=hyper_lr)) if learn_decays
            else None,
            solver=inverse, inner_steps=inner_steps,
            alpha_every=10,
            eval_data={"val": (data.X_val, data.y_val), "test": (data.X_test, data.y_test)},
            eval_every=eval_every, metric=accuracy, device=device_, callbacks=callbacks,
            progress=False, seed=trial_seed,
        )
        trial.set_user_attr(ATTR_PID, os.getpid())
        trial.set_user_attr(ATTR_HOST, socket.gethostname())
        return run_trainer(trial, trainer, hyper_steps=hyper_steps,
                           artifact_store=artifact_store, checkpoint_every=checkpoint_every,
                           warm_start=warm_start and learn_decays)

    return objective


class _Sleep(Callback):
    """Pauses after each hyper step (to slow trials down in tests of distributed runs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        time.sleep(self.seconds)


#: The process and the machine that run a demo trial (user attributes).
ATTR_PID = "ift:pid"
ATTR_HOST = "ift:host"


def retry_trials_of_dead_processes(study: optuna.Study, storage: Any) -> list[int]:
    """Fail and retry the trials of ``study`` left ``RUNNING`` by a process of this machine
    that no longer exists (a demo killed with SIGKILL); returns their numbers.

    The retry is queued by the storage's failed-trial callback (Optuna's
    ``RetryFailedTrialCallback``), so it keeps the trial's parameters and its user attributes,
    among them its last checkpoint, from which :func:`~optuna_ift.integration.run_trainer`
    resumes it. Trials of other machines are left to their heartbeats.
    """
    host = socket.gethostname()
    callback = getattr(storage, "get_failed_trial_callback", lambda: None)()
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, where = trial.user_attrs.get(ATTR_PID), trial.user_attrs.get(ATTR_HOST)
        if where != host or not isinstance(pid, int) or pid == os.getpid() or (
                process_is_alive(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if storage.set_trial_state_values(trial_id, TrialState.FAIL):
            failed.append(trial.number)
            if callback is not None:
                callback(study, storage.get_trial(trial_id))
    return failed


def _dashboard_command(storage: str, artifacts: Path) -> str:
    """The shell command that opens the study in optuna-dashboard (``storage`` is shown with
    its password masked by :func:`mask_password`)."""
    return (f"optuna-dashboard {shlex.quote(mask_password(storage))} "
            f"--artifact-dir {shlex.quote(str(artifacts))}")


def _summarise(study: optuna.Study, store: Any, *, top: int) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE
                       and t.value is not None and math.isfinite(t.value)),
                      key=lambda t: (t.value, t.number))

    def row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        a = t.user_attrs
        return {"number": t.number, "val_loss": t.value, **t.params,
                "val_accuracy": a.get("ift:final_val_metric"),
                "test_accuracy": a.get("ift:final_test_metric"),
                "num_decays": a.get("ift:num_hyperparameters"),
                "mean_decay": a.get("ift:mean_decay"),
                "warm_started_from": a.get(ATTR_WARM_START),
                "resumed_from": a.get(ATTR_RESUMED_FROM),
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start else None}

    results: dict[str, Any] = {
        "states": states,
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value,
                    "params": t.params,
                    "intermediate_values": {str(k): v
                                            for k, v in sorted(t.intermediate_values.items())},
                    "warm_started_from": t.user_attrs.get(ATTR_WARM_START),
                    "resumed_from": t.user_attrs.get(ATTR_RESUMED_FROM)}
                   for t in trials],
        "best_trials": [row(t) for t in complete[:top]],
        "warm_started_trials": sum(t.user_attrs.get(ATTR_WARM_START) is not None
                                   for t in trials),
        "resumed_trials": sum(ATTR_RESUMED_FROM in t.user_attrs for t in trials),
        "importances": {},
        "best": None,
    }
    if len(complete) >= 2:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            results["importances"] = {k: float(v) for k, v in importances.items()}
        except Exception as error:  # too few distinct trials, say
            _logger.info("parameter importances unavailable: %s", error)
    if complete:
        best = complete[0]
        decays = {name: t.double().exp() for name, t in
                  load_learned(study, best.number, store).items()}  # artifact round trip
        log10 = torch.cat([d.flatten() for d in decays.values()]).log10()
        results["best"] = {
            **row(best),
            "params": best.params,
            "learned_artifact": best.user_attrs.get(ATTR_LEARNED),
            "log10_decays": log10.tolist(),
            "log10_decay_quantiles": {
                str(q): float(log10.quantile(q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)},
            "validation_curve": {
                "hyper_step": sorted(best.intermediate_values),
                "val_loss": [best.intermediate_values[k]
                             for k in sorted(best.intermediate_values)],
            },
        }
    return results


def _format_table(rows: list[dict[str, Any]]) -> str:
    columns = [("number", "trial", "{:d}"), ("val_loss", "val loss", "{:.4f}"),
               ("val_accuracy", "val acc", "{:.1%}"), ("test_accuracy", "test acc", "{:.1%}"),
               ("lr", "lr", "{:.2e}"), ("width", "width", "{:d}"),
               ("inner_steps", "inner", "{:d}"), ("num_decays", "decays", "{:,d}"),
               ("decay", "from decay", "{:.2e}"), ("mean_decay", "mean decay", "{:.2e}"),
               ("warm_started_from", "warm from", "{:d}")]

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else fmt.format(value)

    cells = [[title for _, title, _ in columns]] + [
        [cell(r, key, fmt) for key, _, fmt in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _open_storage(storage: str | None, out: Path, **heartbeat: Any) -> tuple[Any, str]:
    """``(storage object, the string optuna-dashboard takes)``; the string still holds the
    password, if any: mask it (:func:`mask_password`) before it is shown or saved."""
    if storage is None:
        storage = str(out / "study.log")
    if storage.startswith("journal://"):
        storage = storage[len("journal://"):]
    return create_storage(storage, **heartbeat), storage


def demo(
    *,
    n_trials: int = 40,
    out: str | Path = "runs/demo",
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY_NAME,
    hyper_steps: int = 60,
    seed: int = 0,
    device: str = "auto",
    show_progress: bool = True,
    timeout: float | None = None,
    top: int = 5,
    step_seconds: float = 0.0,
    baseline: bool = True,
    warm_start: bool = False,
    val_fraction: float = VAL_FRACTION,
) -> dict[str, Any]:
    """Run the demo study and write ``results.json`` and figures to ``out``.

    Run it again on the same ``out`` (or ``storage``) and it adds trials to the same study:
    its sampler is seeded afresh (``seed`` plus the trials already there), so it does not
    repeat the first run's parameters, and a trial left running by a process that was killed
    is failed and retried, resuming its inner training from its last checkpoint. Trials send
    heartbeats, so a trial of a dead process on another machine of a shared storage is
    retried too, once its heartbeat is 20 seconds old.

    Args:
        n_trials: Trials to run (added to the study if it already exists in ``storage``).
        out: Folder of the results, the figures, the artifacts (``out/artifacts``) and, by
            default, the study (the journal file ``out/study.log``).
        storage: An Optuna storage URL (``sqlite:///...``, ``postgresql://...``) or a journal
            file path; ``None``: ``out/study.log``.
        study_name: Name of the study in the storage.
        hyper_steps: Hyper steps per trial.
        seed: Seed of the sampler, the data split and the trials.
        device: ``"auto"`` (CUDA when present) or a ``torch.device`` string.
        show_progress: Show Optuna's progress bar.
        timeout: Stop starting trials after this many seconds.
        top: Rows of the table of best trials.
        step_seconds: Pause after each hyper step (only to make trials slow enough to be
            interrupted in tests).
        baseline: Then run the weights-only baseline (:func:`make_objective` with
            ``learn_decays=False``: every weight keeps the sampled decay) in a
            study of its own, in memory, for as long as the hybrid study's trials took in all,
            and compare the test accuracy of the two best trials (each picked by its
            validation loss): what the decays learned by IFT bought on this split.
        warm_start: Start a trial's decays from the best finished trial of the same width
            (an artifact) instead of the sampled ``decay``, where there is one.
        val_fraction: Share of train + validation that the hybrid study validates on (the
            digits' training pool re-split; the baseline keeps the loader's 80/20).

    Returns:
        The results (also in ``out/results.json``): trial states, the best trials, the
        parameter importances, the best trial's learned decays (log10) and validation curve,
        the storage and the ``optuna-dashboard`` command (both with the password masked),
        ``neumann_cutoffs`` (Neumann series cut off, counted instead of warned), ``seconds``,
        and with ``baseline`` ``weights_only`` (its trials, seconds and best trial).
    """
    _check_int("n_trials", n_trials, 1)
    _check_int("hyper_steps", hyper_steps, 1)
    _check_int("seed", seed, 0)
    _check_int("top", top, 1)
    if timeout is not None:
        _check_positive("timeout", timeout)
    _check_real("val_fraction", val_fraction, low=0, high=1, low_open=True, high_open=True)
    for name, flag in (("show_progress", show_progress), ("baseline", baseline),
                       ("warm_start", warm_start)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    resolve_device(device)  # refused before the study is created or any data is read
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = out / "artifacts"
    artifacts.mkdir(exist_ok=True)
    store = FileSystemArtifactStore(str(artifacts))
    _check_positive("step_seconds", step_seconds, allow_zero=True)
    storage_obj, storage_str = _open_storage(storage, out, heartbeat_interval=5,
                                             grace_period=20, max_retry=3)
    given = load_dataset("digits", seed=seed)
    data = given.resplit(val_fraction, seed)  # the test set stays the baseline's

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar replaces per-trial logs
    study = optuna.create_study(
        storage=storage_obj, study_name=study_name, direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10),
        load_if_exists=True,
    )
    before = len(study.get_trials(deepcopy=False))
    # A rerun draws new parameters: the sampler's seed moves on with the study.
    study.sampler = HybridSampler(optuna.samplers.TPESampler(seed=seed + before,
                                                             n_startup_trials=8))
    recovered = retry_trials_of_dead_processes(study, storage_obj)
    if recovered:
        _logger.info("demo: trials %s were left running by a killed process; retrying them",
                     recovered)
    objective = make_objective(data=data, artifact_store=store, hyper_steps=hyper_steps,
                               seed=seed + before, device=device, step_seconds=step_seconds,
                               warm_start=warm_start)
    try:
        with count_warnings(NeumannDivergenceWarning) as cut:
            study.optimize(objective, n_trials=n_trials, timeout=timeout,
                           show_progress_bar=show_progress, gc_after_trial=False)
    finally:
        optuna.logging.set_verbosity(verbosity)
    cutoffs = cut.value

    summary = _summarise(study, store, top=top)
    weights_only = None
    if baseline:
        weights_only = _weights_only_baseline(
            given, out / "weights-only", seconds=_trial_seconds(study), hyper_steps=hyper_steps,
            seed=seed, device=device, show_progress=show_progress)
    dashboard = _dashboard_command(storage_str, artifacts)
    results: dict[str, Any] = {
        "study": "demo",
        "study_name": study_name,
        "dataset": data.name,
        "n_train": len(data.y_train), "n_val": len(data.y_val), "n_test": len(data.y_test),
        "storage": mask_password(storage_str),
        "artifacts": str(artifacts),
        "dashboard": dashboard,
        "settings": {"n_trials": n_trials, "hyper_steps": hyper_steps, "seed": seed,
                     "device": str(resolve_device(device)), "previous_trials": before,
                     "sampler": "HybridSampler(TPESampler(n_startup_trials=8))",
                     "pruner": "MedianPruner(n_startup_trials=5, n_warmup_steps=10)",
                     "search_space": {"lr": "log-uniform [1e-3, 3e-2]",
                                      "width": "32..128 step 32", "inner_steps": "2..10"},
                     "inner": "a weight decay per weight, Adam(0.1) on log decays, "
                              "Neumann(3, alpha='auto')"},
        **summary,
        "neumann_cutoffs": cutoffs,
        "weights_only": weights_only,
        "seconds": time.perf_counter() - started,
    }
    write_results(out, results)
    from optuna_ift.plots import plot_demo

    results["figures"] = [str(p) for p in plot_demo(results, out)]
    write_results(out, results)

    print(f"\n{sum(results['states'].values())} trials in study {study_name!r} "
          f"({', '.join(f'{v} {k.lower()}' for k, v in results['states'].items() if v)}); "
          f"{results['warm_started_trials']} warm-started. Best trials:")
    print(_format_table(results["best_trials"]))
    if cutoffs:
        print(f"{cutoffs} Neumann series cut off where their terms grew (the hypergradient "
              "kept the terms before; counted here instead of one warning each)")
    if weights_only is not None:
        print(_format_comparison(results))
    print(f"\nresults and figures: {out}  ({results['seconds']:.0f} s)")
    print(dashboard)
    if mask_password(storage_str) != storage_str:
        print("(the password is shown as ***: put it back to run the command)")
    return results


def _trial_seconds(study: optuna.Study) -> float:
    """The time the study's finished trials took, in all."""
    return sum((t.datetime_complete - t.datetime_start).total_seconds()
               for t in study.get_trials(deepcopy=False)
               if t.datetime_complete is not None and t.datetime_start is not None)


def _weights_only_baseline(data: ClassificationData, out: Path, *, seconds: float,
                           hyper_steps: int, seed: int, device: str,
                           show_progress: bool) -> dict[str, Any]:
    """TPE over the same space, weights-only trainers (one global decay), for ``seconds``
    (at least one trial) in a study in memory; its trials' artifacts go under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(out))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10))
    objective = make_objective(data=data, artifact_store=store, hyper_steps=hyper_steps,
                               checkpoint_every=None, seed=seed, device=device,
                               learn_decays=False)
    started = time.perf_counter()

    def enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if time.perf_counter() - started >= seconds:
            study.stop()

    try:
        study.optimize(objective, callbacks=[enough], show_progress_bar=show_progress,
                       gc_after_trial=False)
    finally:
        optuna.logging.set_verbosity(verbosity)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                and t.value is not None and math.isfinite(t.value)]
    best = min(complete, key=lambda t: (t.value, t.number), default=None)
    return {
        "trials": len(study.trials), "seconds": time.perf_counter() - started,
        "budget_seconds": seconds,
        "sampler": "TPESampler(n_startup_trials=8)",
        "search_space": {"lr": "log-uniform [1e-3, 3e-2]", "width": "32..128 step 32",
                         "inner_steps": "2..10", "decay": "log-uniform [1e-6, 1e-1], global"},
        "best": None if best is None else {
            "number": best.number, "val_loss": best.value, **best.params,
            "val_accuracy": best.user_attrs.get("ift:final_val_metric"),
            "test_accuracy": best.user_attrs.get("ift:final_test_metric")},
    }


def _format_comparison(results: dict[str, Any]) -> str:
    hybrid, base = results["best"], results["weights_only"]
    if hybrid is None or base["best"] is None:
        return "\nno finished trial to compare with the weights-only baseline"
    trials = sum(results["states"].values())
    return (f"\nWhat IFT bought (best trial by validation loss, test accuracy on "
            f"{results['n_test']} held-out digits):\n"
            f"  hybrid (a decay per weight, learned from the sampled one): "
            f"{hybrid['test_accuracy']:.1%}  ({trials} trials)\n"
            f"  weights-only TPE (the sampled decay on every weight): "
            f"{base['best']['test_accuracy']:.1%}  "
            f"({base['trials']} trials in {base['seconds']:.0f} s, the hybrid trials' time)\n"
            "  One split; over seeds and on MNIST: benchmarks/bench_hybrid.py (README).")


def run_worker(
    *,
    storage: str | optuna.storages.BaseStorage,
    study_name: str = DEFAULT_STUDY_NAME,
    n_trials: int,
    out: str | Path,
    seed: int = 0,
    device: str = "auto",
    heartbeat_interval: int = 10,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    total_trials: int | None = None,
    hyper_steps: int = 40,
    checkpoint_every: int = 10,
    step_seconds: float = 0.0,
    pruner: optuna.pruners.BasePruner | None = None,
    data_seed: int = 0,
    val_fraction: float = VAL_FRACTION,
) -> dict[str, Any]:
    """Join (or create) a shared study and run the demo objective in it.

    Start one per GPU or machine, with the same ``storage`` and ``study_name``: heartbeats
    mark a dead worker's trial ``FAIL`` after ``grace_period`` seconds, and
    :class:`optuna.storages.RetryFailedTrialCallback` queues it again; the worker that runs
    the retry resumes its inner training from the dead trial's last checkpoint artifact
    (artifacts go to ``out/artifacts``, which all workers must share).

    Launched by ``torchrun --nproc_per_node N -m optuna_ift worker ...`` (or ``optuna-ift
    worker --nproc N``), the N processes join the launch's process group (NCCL, one GPU each,
    when training on CUDA; gloo on the CPU) and run each trial together, data-parallel: rank 0
    talks to the storage and samples, every rank trains on its share of each global batch
    (:func:`~optuna_ift.integration.optimize_distributed`). Many such groups may share one
    storage, like single-process workers.

    Args:
        storage: A database URL (PostgreSQL, MySQL, SQLite), a journal file path (heartbeats
            are added to it by this package) or a storage object.
        study_name: The shared study.
        n_trials: Trials this worker runs (Optuna counts each worker separately).
        out: Folder shared by all workers; artifacts go to ``out/artifacts``.
        seed: Seed of this worker's sampler; give each worker its own.
        device: ``"auto"``, ``"cuda:1"``, ... (one GPU per worker; in a launched group
            ``"auto"`` is the GPU of the process's local rank).
        heartbeat_interval: Seconds between heartbeats.
        grace_period: Seconds without heartbeat before a trial is failed (default twice the
            interval).
        max_retry: Retries of a trial that died (``None``: no limit).
        total_trials: When given, the worker runs one trial at a time and only while the
            study's finished (complete or pruned) plus running trials fall short of it (at
            most ``n_trials`` new ones), always runs queued retries, and keeps polling for
            stale trials of dead workers until the study holds ``total_trials`` finished
            trials. Two workers can still both start a trial in the same instant, so the
            count can be overshot by a race, never undershot.
        hyper_steps: Hyper steps per trial.
        checkpoint_every: Hyper steps between checkpoints.
        step_seconds: Pause after each hyper step (to slow trials down in tests).
        pruner: The study's pruner when this worker creates it; ``None``: the demo's
            ``MedianPruner``. Use ``optuna.pruners.NopPruner()`` to count complete trials.
        data_seed: Seed of the digits split; the same for all workers.
        val_fraction: Share of train + validation for validation, as in :func:`demo`; the
            same for all workers.

    Returns:
        ``{"study_name", "rank", "trials_run", "states", "artifacts", "neumann_cutoffs"}``:
        this worker's rank in its group (0 alone), its trial numbers, the study's trial
        counts by state when it stopped (empty on ranks other than 0, which never read the
        storage), the folder of the artifacts, and how many Neumann series were cut off
        (counted; the ``NeumannDivergenceWarning`` of each is not shown).
    """
    _check_int("n_trials", n_trials, 1)
    _check_real("val_fraction", val_fraction, low=0, high=1, low_open=True, high_open=True)
    if total_trials is not None:
        _check_int("total_trials", total_trials, 1)
    device, joined = _join_launched_group(device)
    finished = False
    try:
        result = _work(storage=storage, study_name=study_name, n_trials=n_trials,
                       out=Path(out), seed=seed, device=device,
                       heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                       max_retry=max_retry, total_trials=total_trials,
                       hyper_steps=hyper_steps, checkpoint_every=checkpoint_every,
                       step_seconds=step_seconds, pruner=pruner, data_seed=data_seed,
                       val_fraction=val_fraction)
        finished = True
        return result
    finally:
        if joined:
            if finished:
                torch.distributed.barrier()  # leave the group together
            torch.distributed.destroy_process_group()
            # Objects of the finished trials (trainers, distributed trials) that sit in
            # reference cycles still hold the group's gloo context: freed only at interpreter
            # exit, its threads were sometimes destroyed while running, and the process died
            # on std::terminate (SIGABRT) after all its work was done. Free them now.
            gc.collect()


def _join_launched_group(device: str) -> tuple[str, bool]:
    """Join the process group of a ``torchrun`` launch (``WORLD_SIZE`` > 1 in the environment,
    with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``): NCCL with one GPU per
    process when this process trains on CUDA, else gloo. Returns the device of this process
    (``"auto"`` becomes ``cuda:<LOCAL_RANK>`` when CUDA is present) and whether it joined."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or torch.distributed.is_initialized():
        return device, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(torch.device(device))
    torch.distributed.init_process_group(backend="nccl" if on_cuda else "gloo")
    return device, True


def _work(*, storage: Any, study_name: str, n_trials: int, out: Path, seed: int, device: str,
          heartbeat_interval: int, grace_period: int | None, max_retry: int | None,
          total_trials: int | None, hyper_steps: int, checkpoint_every: int,
          step_seconds: float, pruner: optuna.pruners.BasePruner | None,
          data_seed: int, val_fraction: float) -> dict[str, Any]:
    distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    rank = torch.distributed.get_rank() if distributed else 0
    artifacts = out / "artifacts"
    study = None
    if rank == 0:  # only rank 0 talks to the storage and writes artifacts
        artifacts.mkdir(parents=True, exist_ok=True)
        storage_obj = create_storage(storage, heartbeat_interval=heartbeat_interval,
                                     grace_period=grace_period, max_retry=max_retry)
        study = optuna.create_study(
            storage=storage_obj, study_name=study_name, direction="minimize",
            sampler=HybridSampler(optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)),
            pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=5,
                                                         n_warmup_steps=10),
            load_if_exists=True,
        )
    store = FileSystemArtifactStore(str(artifacts))
    data = load_dataset("digits", seed=data_seed).resplit(val_fraction, data_seed)
    objective = make_objective(data=data, artifact_store=store, hyper_steps=hyper_steps,
                               checkpoint_every=checkpoint_every, seed=seed * 100_003,
                               device=device, step_seconds=step_seconds)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    mine: list[int] = []

    def remember(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        mine.append(trial.number)

    cutoffs = 0

    def optimize(n: int) -> None:
        # Count the Neumann cut-offs (reported once) instead of printing a warning for each.
        nonlocal cutoffs
        with count_warnings(NeumannDivergenceWarning) as cut:
            if not distributed:
                study.optimize(objective, n_trials=n, callbacks=[remember],
                               gc_after_trial=False)
            else:  # rank 0 tells the others when to start (True) and when it is done
                broadcast_object(True)
                optimize_distributed(study, objective, n_trials=n, callbacks=[remember])
        cutoffs += cut.value

    if rank != 0:
        followed: list[int] = []

        def follow(trial: Any) -> float:
            followed.append(trial.number)
            return objective(trial)

        with count_warnings(NeumannDivergenceWarning) as cut:
            while broadcast_object(None):
                optimize_distributed(None, follow)
        return {"study_name": study_name, "rank": rank, "trials_run": followed, "states": {},
                "artifacts": str(artifacts), "neumann_cutoffs": cut.value}
    try:
        if total_trials is None:
            optimize(n_trials)
        else:
            # One trial at a time, deciding before each whether the study still needs one: a
            # queued retry always runs; a new trial only while finished + running trials fall
            # short of total_trials. When only other workers' trials are running, wait: if
            # their worker died, its heartbeat stops, the trial is failed and its retry queued
            # here.
            started = 0
            while True:
                trials = study.get_trials(deepcopy=False)
                done = sum(t.state in done_states for t in trials)
                waiting = sum(t.state == TrialState.WAITING for t in trials)
                running = sum(t.state == TrialState.RUNNING for t in trials)
                if done >= total_trials:
                    break
                if waiting or (done + running < total_trials and started < n_trials):
                    optimize(1)
                    started += not waiting
                elif running:
                    time.sleep(max(0.5, heartbeat_interval / 2))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.fail_stale_trials(study)
                else:
                    break
    finally:
        if distributed:
            try:
                broadcast_object(False)
            except Exception:  # a rank died: the error that caused it wins
                _logger.warning("could not tell the other ranks to stop", exc_info=True)
    trials = study.get_trials(deepcopy=False)
    return {"study_name": study_name, "rank": 0, "trials_run": mine,
            "states": {s.name: sum(t.state == s for t in trials) for s in TrialState},
            "artifacts": str(artifacts), "neumann_cutoffs": cutoffs}
