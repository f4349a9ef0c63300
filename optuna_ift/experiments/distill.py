"""Fig. 6 of the paper: dataset distillation, one learned image per class.

The hyperparameters are the pixels of ten images (one per class, :class:`DistilledData`,
optionally with learned soft labels). The inner problem is a logistic regression trained on
those ten images alone, with a small L2 decay on all its weights so that its optimum exists and
is unique:

    L_T(W, b; X_d) = CE(W X_d + b, y_d) + decay / 2 * (|W|^2 + |b|^2).

The outer (validation) loss is the cross-entropy of that classifier on batches of the *real*
training images; its gradient with respect to the pixels comes from the implicit function
theorem through :class:`~optuna_ift.trainer.HyperTrainer` (conjugate gradient or Neumann
inverse-Hessian-vector products).

Why ten images can be enough: at the optimum, ``decay * W = (Y_d - P_d)^T X_d / n``, so the
rows of ``W`` are combinations of the distilled images. Any linear classifier is a 10 x D
matrix, so ten suitably chosen images can encode a good one; the decay sets how large the
images must be to produce a classifier of a given norm.

Design choices:

- One deterministic fitting procedure serves everywhere: ``torch.optim.LBFGS`` (strong-Wolfe
  line search) to a gradient tolerance in one weight step of the trainer.
  :func:`fit_logistic_regression` runs it from a fresh seeded initialisation (a weights-only
  trainer); inside the distillation it is every weight step, warm-started from the current
  weights with its curvature pairs cleared after each hyper step, so the weights sit at the
  optimum the implicit function theorem assumes.
- The result is judged the honest way: a *fresh* classifier is fitted on the ten distilled
  images alone and scored on the real test set, beside the same procedure on the ten class-mean
  images, on one random real image per class, and on the whole training set.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift.data import check_dataset, load_dataset
from optuna_ift.experiments._common import write_results
from optuna_ift.experiments._models import classification_loss, make_classifier
from optuna_ift.hypergrad import ConjugateGradient, Neumann
from optuna_ift.hyperparams import DistilledData
from optuna_ift.trainer import (
    Callback,
    HyperTrainer,
    LRScheduler,
    accuracy,
    evaluate,
    resolve_device,
)

__all__ = ["INITS", "LR_SCHEDULES", "SOLVERS", "distill", "fit_logistic_regression"]

_logger = logging.getLogger(__name__)

INITS = ("mean", "real", "noise")
SOLVERS = ("cg", "neumann")
LR_SCHEDULES = ("cosine", "constant")

# L-BFGS stops when the largest gradient entry falls below this, or when the loss changes by
# less than its square (a change that small means the gradient is about that small too).
_GRAD_TOL = 1e-5


def _lbfgs(max_iter: int, grad_tol: float = _GRAD_TOL
           ) -> Callable[[list[nn.Parameter]], torch.optim.LBFGS]:
    """The study's weight optimizer: L-BFGS (strong-Wolfe line search) that, in one step,
    iterates until no gradient entry exceeds ``grad_tol`` or ``max_iter`` iterations."""
    return lambda params: torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=grad_tol,
        tolerance_change=grad_tol**2, history_size=20, line_search_fn="strong_wolfe")


def _iterations(optimizer: torch.optim.LBFGS) -> int:
    """L-BFGS iterations taken since its state was last cleared."""
    params = optimizer.param_groups[0]["params"]
    return int(optimizer.state[params[0]].get("n_iter", 0))


class _LBFGSIterations(Callback):
    """Records the L-BFGS iterations of each inner solve. The trainer forgets L-BFGS's
    curvature pairs after every hyper step (they describe the training problem of the old
    hyperparameters), so each solve is a fresh L-BFGS started at the current weights and its
    iteration count restarts; it is read after the solve's weight steps, before that reset."""

    def __init__(self) -> None:
        self.iterations: list[int] = []
        self._since_reset = 0

    def on_weight_step(self, trainer: HyperTrainer, loss: Tensor) -> None:
        self._since_reset = _iterations(trainer.weight_optimizer)

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        self.iterations.append(self._since_reset)


def _penalty(classifier: nn.Module, decay: float) -> Tensor:
    return decay / 2 * sum(p.pow(2).sum() for p in classifier.parameters())


def fit_logistic_regression(
    images: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    decay: float,
    max_iter: int = 500,
    grad_tol: float = _GRAD_TOL,
    generator: torch.Generator | None = None,
) -> tuple[nn.Module, int]:
    """The study's fitting procedure: a fresh logistic regression fitted to convergence.

    Minimises ``CE(classifier(images), targets) + decay / 2 * |all weights|^2`` with L-BFGS
    from a fresh initialisation (normal, deviation 0.01, drawn from ``generator``). The loss
    is strictly convex, so the result does not depend on the initialisation.

    Args:
        images: Training images ``(n, C, H, W)`` (or any ``(n, ...)``).
        targets: Integer labels ``(n,)`` or soft labels ``(n, num_classes)``.
        num_classes: Number of classes.
        decay: L2 decay on the weights and the bias, > 0.
        max_iter: Most L-BFGS iterations.
        grad_tol: Stop when no gradient entry exceeds this (the weights are then within
            about ``grad_tol / decay`` of the optimum).
        generator: Seeded generator of the initial weights (on the CPU).

    Returns:
        ``(classifier, iterations)``: the fitted ``nn.Module`` and the L-BFGS iterations used.
    """
    images, targets = images.detach(), targets.detach()
    classifier = make_classifier("linear", _as_chw(tuple(images.shape[1:])), num_classes)
    with torch.no_grad():
        for p in classifier.parameters():
            p.copy_(0.01 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    classifier = classifier.to(images.device, images.dtype)

    def loss_fn(model: nn.Module, batch: None) -> Tensor:  # noqa: ARG001 (no batches)
        return F.cross_entropy(model(images), targets) + _penalty(model, decay)

    trainer = HyperTrainer(classifier, train_loss=loss_fn, train_data=None,
                           weight_optimizer=_lbfgs(max_iter, grad_tol), hyper_optimizer=None,
                           inner_steps=1, device=images.device, progress=False)
    trainer.fit(1)  # one weight step: L-BFGS to convergence
    classifier.requires_grad_(False)
    return classifier, _iterations(trainer.weight_optimizer)


def _as_chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``make_classifier`` wants ``(C, H, W)``; a flat input is ``(1, 1, D)``."""
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    return (1, 1, math.prod(shape))


def _score(classifier: nn.Module, X: Tensor, y: Tensor) -> dict[str, float]:
    scores = evaluate(classifier, (X, y), classification_loss, metric=accuracy, batch_size=4096)
    return {"accuracy": scores["metric"], "loss": scores["loss"]}


class _DistillModel(nn.Module):
    """The inner model: the logistic regression and the distilled data it trains on."""

    def __init__(self, classifier: nn.Module, distilled: DistilledData) -> None:
        super().__init__()
        self.classifier = classifier
        self.distilled = distilled


class _FreshEvaluation(Callback):
    """Every ``every`` hyper steps: fit a fresh classifier on the current distilled images and
    score it on the validation set (the curve of the figure)."""

    def __init__(self, every: int, evaluate: Callable[[], dict[str, float]]) -> None:
        self.every = every
        self.evaluate = evaluate
        self.records: list[dict[str, float]] = []

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if trainer.hyper_step % self.every == 0:
            self.records.append({"hyper_step": trainer.hyper_step, **self.evaluate()})


def distill(
    *,
    dataset: str = "digits",
    data_root: str | None = None,
    download: bool = False,
    hyper_steps: int = 400,
    decay: float = 1e-3,
    learn_labels: bool = False,
    init: str = "mean",
    solver: str = "cg",
    solver_steps: int = 20,
    hyper_lr: float = 0.01,
    lr_schedule: str = "cosine",
    batch_size: int = 2048,
    fit_iterations: int = 500,
    eval_every: int = 20,
    n_random_draws: int = 5,
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Distil the training set into one image per class for a logistic regression (Fig. 6).

    Writes, when ``out`` is given: ``results.json``, ``distill_images.png`` (the distilled
    images beside their initialisation), ``distill_curve.png`` (validation accuracy of a fresh
    classifier on the distilled images against hyper steps, with the baselines) and
    ``distilled.pt`` (the images, normalised and in pixel units, and their targets;
    ``torch.load(..., weights_only=True)``).

    Args:
        dataset: ``"digits"`` (embedded), ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        data_root: Folder of the torchvision files (not needed for ``"digits"``).
        download: Let torchvision download the data set into ``data_root``.
        hyper_steps: Hyper steps (each: refit the classifier, then one step on the pixels).
        decay: L2 decay of the logistic regression (weights and bias), > 0; the same value in
            the inner problem, the fresh fit and every baseline.
        learn_labels: Also learn a soft label per distilled image.
        init: Initial images: ``"mean"`` (the class means of the training set), ``"real"``
            (one random training image per class) or ``"noise"`` (standard normal pixels).
        solver: Inverse-Hessian-vector product of the hypergradient: ``"cg"`` (conjugate
            gradient) or ``"neumann"`` (Neumann series, ``alpha`` from power iteration).
        solver_steps: Hessian-vector products per hypergradient.
        hyper_lr: Adam learning rate of the pixels (in units of the normalised data). The
            default keeps the images closer to digits; 0.03 buys about half a point of
            accuracy on MNIST for noisier-looking images.
        lr_schedule: ``"cosine"`` (annealed to 0 over ``hyper_steps``) or ``"constant"``.
        batch_size: Real training images per validation batch of the outer loss.
        fit_iterations: Most L-BFGS iterations of each fit (inner refits are warm-started).
        eval_every: Fit a fresh classifier on the current images and score it on the
            validation set every this many hyper steps (the curve).
        n_random_draws: Draws of one random real image per class for that baseline.
        seed: Seed of the data split, the initial images, the batches and the fresh fits.
        device: ``"auto"`` (CUDA when present) or a torch device.
        out: Folder for the results and figures; created if missing.
        show_progress: Show a tqdm progress bar.

    Returns:
        The results: ``test_accuracy`` and ``val_accuracy`` of a fresh classifier fitted on
        the distilled images, ``baselines`` (the same procedure on class means, random real
        images, the full training set), ``initial`` (on the initial images), the ``curve``,
        the settings and ``seconds``.
    """
    hyper_steps = _check_int("hyper_steps", hyper_steps, 1)
    decay = _check_positive("decay", decay)
    hyper_lr = _check_positive("hyper_lr", hyper_lr)
    if not isinstance(learn_labels, bool):
        raise TypeError(f"learn_labels must be a bool, got {type(learn_labels).__name__}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    solver_steps = _check_int("solver_steps", solver_steps, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    fit_iterations = _check_int("fit_iterations", fit_iterations, 1)
    eval_every = _check_int("eval_every", eval_every, 1)
    n_random_draws = _check_int("n_random_draws", n_random_draws, 1)
    _check_int("seed", seed, 0)
    check_dataset(dataset, "dataset")
    dev = resolve_device(device)

    started = time.perf_counter()
    data = load_dataset(dataset, root=data_root, download=download, seed=seed, device=dev)
    K, shape = data.num_classes, tuple(data.shape)
    classes = list(data.classes) if data.classes else [str(c) for c in range(K)]
    generator = torch.Generator().manual_seed(seed)

    def fit(images: Tensor, targets: Tensor) -> tuple[nn.Module, int]:
        return fit_logistic_regression(images, targets, num_classes=K, decay=decay,
                                       max_iter=fit_iterations, generator=generator)

    def judge(images: Tensor, targets: Tensor, *, test: bool = True) -> dict[str, float]:
        classifier, iterations = fit(images, targets)
        scores = {"val_accuracy": _score(classifier, data.X_val, data.y_val)["accuracy"]}
        if test:
            scores["test_accuracy"] = _score(classifier, data.X_test, data.y_test)["accuracy"]
        scores["fit_iterations"] = iterations
        return scores

    # -- baselines -------------------------------------------------------------------------
    labels = torch.arange(K, device=dev)
    means = torch.stack([data.X_train[data.y_train == c].mean(0) for c in range(K)])
    by_class = [torch.nonzero(data.y_train == c).flatten() for c in range(K)]
    if any(len(idx) == 0 for idx in by_class):
        raise ValueError(f"dataset {dataset!r}: every class needs a training image")

    def random_real() -> Tensor:
        picks = [idx[int(torch.randint(len(idx), (), generator=generator))] for idx in by_class]
        return data.X_train[torch.stack(picks)]

    real_draws = [random_real() for _ in range(n_random_draws)]
    _logger.info("distill: fitting the baselines")
    baseline_means = judge(means, labels)
    random_scores = [judge(images, labels) for images in real_draws]
    baseline_random = {
        "test_accuracy": sum(s["test_accuracy"] for s in random_scores) / n_random_draws,
        "val_accuracy": sum(s["val_accuracy"] for s in random_scores) / n_random_draws,
        "test_accuracy_per_draw": [s["test_accuracy"] for s in random_scores],
    }
    baseline_full = judge(data.X_train, data.y_train)

    # -- distillation ----------------------------------------------------------------------
    if init == "mean":
        start = means.clone()
    elif init == "real":
        start = real_draws[0].clone()
    else:
        start = torch.randn((K, *shape), generator=generator).to(dev, data.X_train.dtype)
    distilled = DistilledData(1, K, shape, learn_labels=learn_labels, init=start)
    classifier = make_classifier("linear", shape, K)
    with torch.no_grad():
        for p in classifier.parameters():
            p.copy_(0.01 * torch.randn(p.shape, generator=generator))
    model = _DistillModel(classifier, distilled).to(dev, data.X_train.dtype)

    def train_loss(m: _DistillModel, batch: Any) -> Tensor:  # noqa: ARG001 (batch is None)
        images, targets = m.distilled()
        return F.cross_entropy(m.classifier(images), targets) + _penalty(m.classifier, decay)

    def val_loss(m: _DistillModel, batch: tuple[Tensor, ...]) -> Tensor:
        return F.cross_entropy(m.classifier(batch[0]), batch[1])

    def current() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            images, targets = model.distilled()
        return images.detach().clone(), targets.detach().clone()

    initial = judge(*current())
    fresh = _FreshEvaluation(eval_every, lambda: judge(*current(), test=False))
    fresh.records.append({"hyper_step": 0, **{k: v for k, v in initial.items()
                                               if k != "test_accuracy"}})
    fresh_lbfgs = _LBFGSIterations()
    inverse = (ConjugateGradient(steps=solver_steps, tol=1e-6) if solver == "cg"
               else Neumann(steps=solver_steps, alpha="auto"))
    trainer = HyperTrainer(
        model, train_loss=train_loss, val_loss=val_loss, train_data=None,
        val_data=(data.X_train, data.y_train), batch_size=batch_size,
        weight_optimizer=_lbfgs(fit_iterations),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=hyper_lr),
        solver=inverse, inner_steps=1, callbacks=[fresh, fresh_lbfgs], device=dev,
        progress=show_progress, seed=seed,
    )
    if lr_schedule == "cosine":
        trainer.callbacks.append(LRScheduler(
            lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, hyper_steps),
            optimizer="hyper"))
    _logger.info("distill: %d hyper steps", hyper_steps)
    history = trainer.fit(hyper_steps)
    if fresh.records[-1]["hyper_step"] != hyper_steps:
        fresh.records.append({"hyper_step": hyper_steps, **judge(*current(), test=False)})

    images, targets = current()
    final = judge(images, targets)
    pixels = data.unnormalize(images)
    steps = history.hyper_steps
    results: dict[str, Any] = {
        "study": "distill",
        "dataset": data.name,
        "model": "logistic regression (linear layer + softmax), L2 decay on weights and bias, "
                 "fitted to convergence with L-BFGS",
        "test_accuracy": final["test_accuracy"],
        "val_accuracy": final["val_accuracy"],
        "baselines": {
            "class_means": baseline_means,
            "random_real": baseline_random,
            "full_training_set": baseline_full,
        },
        "initial": initial,
        "settings": {
            "dataset": data.name, "n_train": int(data.y_train.shape[0]),
            "n_val": int(data.y_val.shape[0]), "n_test": int(data.y_test.shape[0]),
            "images_per_class": 1, "hyper_steps": hyper_steps, "decay": decay,
            "learn_labels": learn_labels, "init": init, "solver": solver,
            "solver_steps": solver_steps, "hyper_optimizer": "Adam", "hyper_lr": hyper_lr,
            "lr_schedule": lr_schedule,
            "batch_size": batch_size, "fit_iterations": fit_iterations,
            "eval_every": eval_every, "n_random_draws": n_random_draws, "seed": seed,
            "device": str(dev),
        },
        "curve": {key: [r[key] for r in fresh.records]
                  for key in ("hyper_step", "val_accuracy")},
        "hyper_steps_history": {key: [r[key] for r in steps]
                                for key in ("val_loss", "train_loss", "hypergradient_norm")},
        "skipped_hypergradients": history.skipped,
        "inner_lbfgs_iterations_mean": (
            sum(fresh_lbfgs.iterations) / max(len(fresh_lbfgs.iterations), 1)),
        "class_names": classes,
        "distilled_targets": targets.tolist() if learn_labels else labels.tolist(),
        "distilled_pixel_range": [float(pixels.min()), float(pixels.max())],
        "seconds": 0.0,
    }
    results["seconds"] = time.perf_counter() - started
    _logger.info("distill: test accuracy %.4f (class means %.4f, random real %.4f, full %.4f)",
                 results["test_accuracy"], baseline_means["test_accuracy"],
                 baseline_random["test_accuracy"], baseline_full["test_accuracy"])
    if out is not None:
        from optuna_ift.plots import plot_distill_curve, plot_distilled_images

        out = Path(out)
        write_results(out, results)
        torch.save({"images": images.cpu(), "pixels": pixels.cpu(), "targets": targets.cpu(),
                    "class_names": classes}, out / "distilled.pt")
        plot_distilled_images(
            pixels.cpu(), out / "distill_images.png", class_names=classes,
            initial=data.unnormalize(start).cpu(), initial_name=init,
            soft_labels=targets.cpu() if learn_labels else None,
            title=(f"{data.name}: one distilled image per class; a logistic regression fitted "
                   f"on them alone reaches {final['test_accuracy']:.1%} test accuracy"),
        )
        plot_distill_curve(results, out / "distill_curve.png")
    return results
