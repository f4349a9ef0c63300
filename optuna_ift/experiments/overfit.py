"""Fig. 5 (and Fig. 10) of the paper: overfitting a small validation set with hyperparameters.

Each model (linear, MLP, small CNN) gets one weight decay per weight, biases included, so it
has exactly as many hyperparameters as weights. Weights are trained on a tiny training set
(default 50 images, 5 per class) and the decays on an equally tiny validation set with
:class:`~optuna_ift.HyperTrainer` (Algorithm 1, Neumann inverse). With that many
hyperparameters the validation set is no longer held out: the decays can pick, weight by
weight, a training optimum that also classifies the validation images, and validation
accuracy reaches 100% while accuracy on a large held-out test set stays far lower: the
hyperparameters overfit.

As a baseline, the same initial models are trained for the same number of weight steps with
the decays fixed at their initial value.

Why it can work: at an optimum of ``CE_train(w) + sum_i exp(theta_i) w_i^2 / 2`` every weight
satisfies ``w_i = -g_i / exp(theta_i)`` with ``g = dCE_train/dw``, so the decays can reach any
optimum whose weights have the opposite sign of their training gradient, a huge set when there
are as many decays as weights. The log-decays must be free to move by several units (orders of
magnitude); Adam on the log-decays with a learning rate of 0.1 lets them.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from optuna_ift._validation import ArgumentKindError
from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift.data import check_dataset, load_dataset
from optuna_ift.experiments._common import BarCallback, count_warnings, progress, write_results
from optuna_ift.experiments._models import (
    MODEL_KINDS,
    DecayedClassifier,
    classification_loss,
    decayed_train_loss,
    make_classifier,
)
from optuna_ift.hypergrad import Neumann, NeumannDivergenceWarning
from optuna_ift.hyperparams import WeightDecay, split_parameters
from optuna_ift.trainer import Callback, HyperTrainer, accuracy, evaluate, resolve_device

__all__ = ["overfit"]

_logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")
_QUANTILES = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)


def _check_models(models: Any) -> tuple[str, ...]:
    allowed = ", ".join(map(repr, MODEL_KINDS))
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise ArgumentKindError(f"models must be a non-empty sequence of {allowed}, got "
                                f"{type(models).__name__} {models!r:.60}")
    if not models:
        raise ValueError(f"models must be a non-empty sequence of {allowed}, got {models!r}")
    for kind in models:
        if kind not in MODEL_KINDS:
            raise ValueError(f"models may hold only {allowed}, got {kind!r}")
    if len(set(models)) != len(models):
        raise ValueError(f"models must not repeat a kind, got {models!r}")
    return tuple(models)


def _evaluate(model: nn.Module, sets: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Accuracy and cross-entropy of ``model`` (eval mode) on each named set."""
    record: dict[str, float] = {}
    for name, data in sets.items():
        scores = evaluate(model, data, classification_loss, metric=accuracy, batch_size=1000)
        record[f"{name}_accuracy"], record[f"{name}_loss"] = scores["metric"], scores["loss"]
    return record


class _EvaluateAt(Callback):
    """Evaluates every set after the hyper steps in ``at`` (and once at the start)."""

    def __init__(self, at: Sequence[int], sets: dict[str, tuple[Tensor, Tensor]],
                 model: nn.Module) -> None:
        self.at, self.sets = set(at), sets
        self.records = [{"hyper_step": 0, "weight_step": 0, **_evaluate(model, sets)}]

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if trainer.hyper_step in self.at:
            self.records.append({"hyper_step": trainer.hyper_step,
                                 "weight_step": trainer.weight_step,
                                 **_evaluate(trainer.model, self.sets)})


def _curves(records: list[dict[str, float]]) -> dict[str, list[float]]:
    keys = ["hyper_step", "weight_step"] + [f"{s}_{m}" for s in _SPLITS
                                            for m in ("accuracy", "loss")]
    return {key: [r[key] for r in records] for key in keys}


def _final(curves: dict[str, list[float]]) -> dict[str, float]:
    return {f"{s}_accuracy": curves[f"{s}_accuracy"][-1] for s in _SPLITS}


def _decay_summary(decay: WeightDecay, *, init_decay: float, bins: int = 40) -> dict[str, Any]:
    log10 = torch.cat([p.detach().flatten() for p in decay.log_decays]).double().cpu()
    log10 = log10 / math.log(10.0)
    low, high = float(log10.min()), float(log10.max())
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    counts = torch.histc(log10, bins=bins, min=low, max=high)
    init = math.log10(init_decay)
    return {
        "log10_quantiles": dict(zip(map(str, _QUANTILES),
                                    log10.quantile(torch.tensor(_QUANTILES, dtype=log10.dtype))
                                    .tolist())),
        "share_raised": float((log10 > init + 1e-6).double().mean()),
        "share_lowered": float((log10 < init - 1e-6).double().mean()),
        "histogram_edges": torch.linspace(low, high, bins + 1).tolist(),
        "histogram_counts": [int(c) for c in counts.tolist()],
    }


def overfit(
    *,
    dataset: str = "digits",
    data_root: str | None = None,
    download: bool = False,
    models: Sequence[str] = ("linear", "mlp", "cnn"),
    n_train: int = 50,
    n_val: int = 50,
    n_test: int = 1000,
    hyper_steps: int = 150,
    inner_steps: int = 10,
    neumann_steps: int = 5,
    alpha_every: int = 10,
    weight_lr: float = 1e-3,
    hyper_lr: float = 0.1,
    init_decay: float = 1e-3,
    hidden: int = 128,
    channels: int = 16,
    eval_every: int = 5,
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Overfit a small validation set with one weight decay per weight (the paper's Fig. 5).

    For each model kind, the weights (Adam, full batch) and the log-decays (Adam) are trained
    jointly by :class:`~optuna_ift.HyperTrainer`: ``inner_steps`` weight steps, then one hyper
    step along the implicit hypergradient (``Neumann(neumann_steps, alpha="auto")``), repeated
    ``hyper_steps`` times. Train, validation and test accuracy are recorded every
    ``eval_every`` hyper steps. The same initial model is also trained for the same number of
    weight steps with the decays frozen at ``init_decay`` (the baseline).

    Args:
        dataset: ``"digits"`` (embedded, the default), ``"mnist"``, ``"fashion-mnist"`` or
            ``"cifar10"``; see :func:`optuna_ift.data.load_dataset`.
        data_root: Folder of the torchvision files (all but ``"digits"``).
        download: Let torchvision download the data set into ``data_root``.
        models: Model kinds to run, from ``"linear"``, ``"mlp"``, ``"cnn"``.
        n_train: Training examples, balanced over classes (a multiple of the class count).
        n_val: Validation examples, balanced likewise.
        n_test: Held-out test examples, balanced likewise.
        hyper_steps: Hyper steps per model.
        inner_steps: Weight steps before each hyper step (the paper's N).
        neumann_steps: Hessian-vector products of the Neumann inverse (the paper's i).
        alpha_every: Re-estimate the Neumann step ``alpha = 1 / lambda_max`` (five power
            iterations) every this many hyper steps. The top curvature grows as decays grow,
            and a stale ``alpha`` makes the series diverge (it is then cut off, and counted in
            ``neumann_cutoffs``); the trainer's default of 50 is too slow here.
        weight_lr: Adam learning rate of the weights.
        hyper_lr: Adam learning rate of the log-decays (natural log).
        init_decay: Initial value of every decay (and its fixed value in the baseline).
        hidden: Hidden units of the MLP.
        channels: Channels of the CNN's first convolution (the second has twice as many).
        eval_every: Evaluate train, validation and test accuracy every this many hyper steps.
        seed: Seed of the data split, the initial weights and the batching.
        device: ``"auto"`` (CUDA when present) or a ``torch.device`` string.
        out: Folder for ``results.json``, ``overfit.png`` and ``overfit_decays.png``.
        show_progress: Show a tqdm progress bar.

    Returns:
        The results: per model, the accuracy curves of the tuned and the baseline run, the
        final accuracies, the hyper step at which validation accuracy first reached 100%
        (``None`` if never), the numbers of weights and hyperparameters and a summary of the
        learned decays; the settings and ``seconds`` (wall time).

    Raises:
        TypeError: If an argument is of the wrong kind (the message names it).
        ValueError: If an argument is out of range (the message names it).
    """
    models = _check_models(models)
    for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 1), ("n_test", n_test, 1),
                             ("hyper_steps", hyper_steps, 1), ("inner_steps", inner_steps, 1),
                             ("neumann_steps", neumann_steps, 0), ("alpha_every", alpha_every, 1),
                             ("hidden", hidden, 1),
                             ("channels", channels, 1), ("eval_every", eval_every, 1),
                             ("seed", seed, 0)):
        _check_int(name, value, low)
    for name, value in (("weight_lr", weight_lr), ("hyper_lr", hyper_lr),
                        ("init_decay", init_decay)):
        _check_positive(name, value)
    if not isinstance(show_progress, bool):
        raise TypeError(f"show_progress must be a bool, got {type(show_progress).__name__}")
    check_dataset(dataset, "dataset")
    device_ = resolve_device(device)

    started = time.perf_counter()
    data = load_dataset(dataset, root=data_root, download=download, n_train=n_train,
                        n_val=n_val, n_test=n_test, balanced=True, seed=seed, device=device_)
    sets = {"train": (data.X_train, data.y_train), "val": (data.X_val, data.y_val),
            "test": (data.X_test, data.y_test)}
    eval_at = sorted(set(range(eval_every, hyper_steps + 1, eval_every)) | {hyper_steps})
    solver = Neumann(steps=neumann_steps, alpha="auto")

    def train(model: DecayedClassifier, *, tune: bool) -> tuple[HyperTrainer, list]:
        """Joint training, or (``tune=False``) the same weight steps with the decays fixed at
        ``init_decay``: the baseline. Returns the trainer and the evaluations."""
        evaluations = _EvaluateAt(eval_at, sets, model)
        trainer = HyperTrainer(
            model, train_loss=decayed_train_loss, val_loss=classification_loss,
            train_data=sets["train"], val_data=sets["val"], batch_size=n_train,
            val_batch_size=n_val, weight_optimizer=lambda p: torch.optim.Adam(p, lr=weight_lr),
            hyper_optimizer=(lambda p: torch.optim.Adam(p, lr=hyper_lr)) if tune else None,
            solver=solver, inner_steps=inner_steps, alpha_every=alpha_every, device=device_,
            callbacks=[BarCallback(bar), evaluations], progress=False, seed=seed,
        )
        trainer.fit(hyper_steps)
        return trainer, evaluations.records

    per_model: dict[str, Any] = {}
    bar = progress(total=2 * hyper_steps * len(models), desc="overfit", enable=show_progress)
    try:
        for kind in models:
            model_started = time.perf_counter()
            with torch.random.fork_rng(devices=[]):  # seeded init, global state untouched
                torch.manual_seed(seed)
                net = make_classifier(kind, data.shape, data.num_classes, hidden=hidden,
                                      channels=channels)
            model = DecayedClassifier(net, init_decay=init_decay, include_biases=True).to(device_)
            baseline = copy.deepcopy(model)
            weights, _ = split_parameters(model)

            with count_warnings(NeumannDivergenceWarning) as cut:
                trainer, records = train(model, tune=True)
            history = trainer.history
            cutoffs = cut.value
            if cutoffs:
                _logger.info("overfit %s: %d Neumann series cut off", kind, cutoffs)

            tuned = _curves(records)
            base = _curves(train(baseline, tune=False)[1])
            perfect = [s for s, a in zip(tuned["hyper_step"], tuned["val_accuracy"]) if a >= 1.0]
            per_model[kind] = {
                "num_weights": sum(w.numel() for w in weights),
                "num_hyperparameters": model.decay.num_hyperparameters,
                "final": _final(tuned),
                "baseline_final": _final(base),
                "first_perfect_val_step": perfect[0] if perfect else None,
                "curves": tuned,
                "baseline_curves": base,
                "val_loss_per_hyper_step": [r["val_loss"] for r in history.hyper_steps],
                "hypergradient_norm": [r["hypergradient_norm"] for r in history.hyper_steps],
                "skipped_hyper_steps": history.skipped,
                "neumann_cutoffs": cutoffs,
                "decays": _decay_summary(model.decay, init_decay=init_decay),
                "seconds": time.perf_counter() - model_started,
            }
            f, b = per_model[kind]["final"], per_model[kind]["baseline_final"]
            _logger.info("overfit %s: val %.3f test %.3f (baseline val %.3f test %.3f), "
                         "100%% val at hyper step %s", kind, f["val_accuracy"],
                         f["test_accuracy"], b["val_accuracy"], b["test_accuracy"],
                         per_model[kind]["first_perfect_val_step"])
    finally:
        bar.close()

    results: dict[str, Any] = {
        "study": "overfit",
        "dataset": data.name,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "balanced": True,
        "models": list(models),
        "settings": {
            "hyper_steps": hyper_steps,
            "inner_steps": inner_steps,
            "weight_steps": hyper_steps * inner_steps,
            "solver": f"Neumann(steps={neumann_steps}, alpha='auto'), alpha re-estimated "
                      f"every {alpha_every} hyper steps",
            "alpha_every": alpha_every,
            "neumann_steps": neumann_steps,
            "weight_optimizer": f"Adam(lr={weight_lr}), full batch",
            "weight_lr": weight_lr,
            "hyper_lr": hyper_lr,
            "hyper_optimizer": f"Adam(lr={hyper_lr}) on the natural-log decays",
            "init_decay": init_decay,
            "decay": "WeightDecay(mode='per_weight', include_biases=True): one per weight",
            "hidden": hidden,
            "channels": channels,
            "eval_every": eval_every,
            "baseline": "same initial model and weight steps, decays fixed at init_decay",
            "seed": seed,
            "device": str(device_),
        },
        "per_model": per_model,
        "summary": {
            kind: {
                "num_hyperparameters": r["num_hyperparameters"],
                "first_perfect_val_step": r["first_perfect_val_step"],
                "neumann_cutoffs": r["neumann_cutoffs"],
                **{f"tuned_{k}": v for k, v in r["final"].items()},
                **{f"baseline_{k}": v for k, v in r["baseline_final"].items()},
            }
            for kind, r in per_model.items()
        },
        "seconds": time.perf_counter() - started,
    }
    if out is not None:
        from optuna_ift.plots import plot_overfit, plot_overfit_decays

        out = Path(out)
        write_results(out, results)
        plot_overfit(results, out / "overfit.png")
        plot_overfit_decays(results, out / "overfit_decays.png")
    return results
