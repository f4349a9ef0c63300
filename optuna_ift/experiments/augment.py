"""Table 3 and Fig. 7 of the paper, at CPU scale: a learned data-augmentation network.

A small CNN is trained on a small labelled subset. Its training loss is the cross-entropy on
*augmented* training images, ``x -> AugmentationNet(x, noise)``, a U-Net fed the image and a
noise channel, with an identity residual so that it starts as "no augmentation". Every weight
of the U-Net is a hyperparameter, tuned on the cross-entropy of the classifier on *real*
validation images (Algorithm 1 with :class:`~optuna_ift.HyperTrainer`). The hypergradient is
computed four ways, as in Table 3:

=============  ===========================================================================
``none``       no augmentation: the same classifier, optimizer and number of weight steps
``identity``   implicit hypergradient with the identity for the inverse Hessian (i = 0)
``neumann``    implicit hypergradient, Neumann series with ``neumann_steps`` HVPs (i = 3)
``unrolled``   reverse-mode differentiation through ``unrolled_steps`` SGD steps (i = 3)
=============  ===========================================================================

Each method runs once per seed; the seed sets the classifier's initial weights (the same for
every method at a given seed, so the comparison is paired), the U-Net's, the batch order and
the noise. The data split is fixed by ``seed`` alone. Every run is scored on the test set at
its best evaluation on the validation set (highest accuracy, ties to the lower loss) and at
its end; the table reports the mean and the standard deviation over seeds.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from optuna_ift._validation import ArgumentKindError
from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift.data import check_dataset, load_dataset
from optuna_ift.experiments._common import count_warnings, progress, write_results
from optuna_ift.experiments._models import classification_loss, make_classifier
from optuna_ift.hypergrad import Identity, Neumann, NeumannDivergenceWarning
from optuna_ift.hyperparams import AugmentationNet
from optuna_ift.trainer import (
    HyperTrainer,
    KeepBest,
    Unrolled,
    accuracy,
    evaluate,
    resolve_device,
)

__all__ = ["AUGMENT_METHODS", "augment"]

_logger = logging.getLogger(__name__)

#: The methods of Table 3, in the order they are reported.
AUGMENT_METHODS: tuple[str, ...] = ("none", "identity", "neumann", "unrolled")


class _AugmentedClassifier(nn.Module):
    """A classifier and the augmentation net that feeds it during training.

    ``forward`` is the classifier alone (validation, test); the training loss calls
    ``classifier(augment(x, noise=...))``.
    """

    def __init__(self, classifier: nn.Module, augment: AugmentationNet) -> None:
        super().__init__()
        self.classifier = classifier
        self.augment = augment

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)


def _reset_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default initialisation of every ``Conv2d`` and ``Linear``, drawn from
    ``generator`` instead of the global random state."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                if layer.bias is not None:
                    fan_in = layer.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return module


def _score(classifier: nn.Module, X: Tensor, y: Tensor) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``classifier`` on ``(X, y)``, in eval mode."""
    scores = evaluate(classifier, (X, y), classification_loss, metric=accuracy, batch_size=1000)
    return {"loss": scores["loss"], "accuracy": scores["metric"]}


def _noise_maker(scale: float, device: torch.device, seed: int
                 ) -> Callable[[Tensor], Tensor | None]:
    """``noise(x)``: a fresh noise channel for the augmentation net, ``scale`` times a
    standard normal draw from a generator seeded with ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def noise(x: Tensor) -> Tensor:
        shape = (x.shape[0], 1, *x.shape[2:])
        return scale * torch.randn(shape, generator=generator, device=device, dtype=x.dtype)

    return noise
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    std = float(t.std()) if t.numel() > 1 else 0.0
    return float(t.mean()), std


def augment(
    *,
    dataset: str = "digits",
    data_root: str | None = None,
    download: bool = False,
    seeds: int | Sequence[int] = 3,
    methods: Sequence[str] = AUGMENT_METHODS,
    n_train: int = 200,
    n_val: int = 500,
    n_test: int | None = None,
    hyper_steps: int = 40,
    inner_steps: int = 10,
    batch_size: int = 32,
    val_batch_size: int = 256,
    lr: float = 1e-3,
    hyper_lr: float = 3e-3,
    noise_scale: float = 1.0,
    neumann_steps: int = 3,
    neumann_alpha: float | str = "auto",
    unrolled_steps: int = 3,
    unrolled_lr: float = 0.05,
    aug_hidden: int = 8,
    aug_depth: int = 2,
    cnn_channels: int = 16,
    eval_every: int = 5,
    n_show: int = 4,
    n_std_samples: int = 64,
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the study and, if ``out`` is given, write ``results.json``, ``augment.png`` (Fig. 7)
    and ``augment_accuracy.png`` (Table 3 as bars, and validation curves).

    Args:
        dataset: ``"digits"`` (embedded), ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        data_root: Folder of the torchvision files (every dataset but ``"digits"``).
        download: Let torchvision download the data set into ``data_root``.
        seeds: Number of runs per method (seeds ``seed, seed + 1, ...``), or the run seeds.
        methods: Which of ``"none"``, ``"identity"``, ``"neumann"``, ``"unrolled"`` to run.
        n_train: Labelled training images (balanced over classes): small, so that
            augmentation has room to help.
        n_val: Validation images (balanced), the data the augmentation is tuned on.
        n_test: Test images (balanced); ``None`` keeps the whole test set.
        hyper_steps: Hyper steps per run; a run takes ``hyper_steps * inner_steps`` weight
            steps, and ``none`` takes as many.
        inner_steps: Weight steps between hyper steps (the paper's N).
        batch_size: Training mini-batch size.
        val_batch_size: Validation mini-batch size of each hypergradient (larger is less
            noisy; it costs only classifier passes).
        lr: Adam learning rate of the classifier's weights.
        hyper_lr: Adam learning rate of the augmentation net's weights (the hyperparameters).
        noise_scale: Standard deviation of the noise channel fed to the augmentation net.
        neumann_steps: HVPs of the Neumann series (the paper's i).
        neumann_alpha: Step of the Neumann series, or ``"auto"`` (one over the top eigenvalue
            of the training Hessian, re-estimated every 50 hyper steps).
        unrolled_steps: SGD steps differentiated through by ``unrolled``.
        unrolled_lr: Learning rate of those SGD steps.
        aug_hidden: Width of the augmentation U-Net's first level.
        aug_depth: Downsampling levels of the U-Net.
        cnn_channels: Channels of the classifier's first convolution.
        eval_every: Evaluate on the validation set every this many hyper steps (and every
            ``eval_every * inner_steps`` weight steps for ``none``).
        n_show: Test images shown in ``augment.png``.
        n_std_samples: Noise draws behind the pixel-wise standard deviation in ``augment.png``.
        seed: Seed of the data split; also the first run seed when ``seeds`` is a count.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
        out: Folder for the results; created if missing.
        show_progress: Show a tqdm progress bar.

    Returns:
        The results: per method the test and validation accuracy of every run (at the best
        validation evaluation and at the end), their mean and standard deviation, the
        validation curves, how far the learned augmentation moves images, and the table.
    """
    seeds_allowed = "seeds must be an integer >= 1 or a non-empty sequence of integers >= 0"
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        run_seeds = list(range(seed, seed + _check_int("seeds", seeds, 1)))
    elif isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in seeds
    ):
        raise ArgumentKindError(f"{seeds_allowed}, got {type(seeds).__name__} {seeds!r:.60}")
    elif not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"{seeds_allowed}, got {seeds!r}")
    else:
        run_seeds = [int(s) for s in seeds]
    methods_allowed = f"methods must be a non-empty sequence drawn from {AUGMENT_METHODS}"
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Collection):
        raise ArgumentKindError(f"{methods_allowed}, got {type(methods).__name__} "
                                f"{methods!r:.60}")
    if not methods or any(m not in AUGMENT_METHODS for m in methods):
        raise ValueError(f"{methods_allowed}, got {methods!r}")
    methods = [m for m in AUGMENT_METHODS if m in methods]
    _check_int("n_train", n_train, 1)
    _check_int("n_val", n_val, 1)
    if n_test is not None:
        _check_int("n_test", n_test, 1)
    _check_int("hyper_steps", hyper_steps, 1)
    _check_int("inner_steps", inner_steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("val_batch_size", val_batch_size, 1)
    _check_positive("lr", lr)
    _check_positive("hyper_lr", hyper_lr)
    _check_positive("noise_scale", noise_scale, allow_zero=True)
    _check_int("neumann_steps", neumann_steps, 0)
    if not (isinstance(neumann_alpha, str) and neumann_alpha == "auto"):
        if isinstance(neumann_alpha, bool) or not isinstance(neumann_alpha, numbers.Real):
            raise ArgumentKindError(f"neumann_alpha must be 'auto' or a finite number > 0, got "
                                    f"{type(neumann_alpha).__name__} {neumann_alpha!r:.60}")
        if not (math.isfinite(neumann_alpha) and neumann_alpha > 0):
            raise ValueError(f"neumann_alpha must be 'auto' or a finite number > 0, got "
                             f"{neumann_alpha!r}")
    _check_int("unrolled_steps", unrolled_steps, 1)
    _check_positive("unrolled_lr", unrolled_lr)
    _check_int("aug_hidden", aug_hidden, 1)
    _check_int("aug_depth", aug_depth, 0)
    _check_int("cnn_channels", cnn_channels, 1)
    _check_int("eval_every", eval_every, 1)
    _check_int("n_show", n_show, 0)
    _check_int("n_std_samples", n_std_samples, 2)
    _check_int("seed", seed, 0)
    key = check_dataset(dataset, "dataset")
    if key != "digits" and data_root is None:
        raise ValueError(f"data_root is required for dataset={dataset!r}: the folder that "
                         "holds the torchvision files ('digits' needs none)")

    dev = resolve_device(device)

    started = time.perf_counter()
    data = load_dataset(dataset, root=data_root, download=download, n_train=n_train,
                        n_val=n_val, n_test=n_test, balanced=True, seed=seed, device=dev)
    solvers = {
        "identity": Identity(),
        "neumann": Neumann(steps=neumann_steps, alpha=neumann_alpha),
        "unrolled": Unrolled(steps=unrolled_steps, lr=unrolled_lr),
    }
    labels = {
        "none": "No augmentation",
        "identity": "Identity (i=0)",
        "neumann": f"Neumann (i={neumann_steps})",
        "unrolled": f"Unrolled (i={unrolled_steps})",
    }
    weight_steps = hyper_steps * inner_steps
    show_method = next((m for m in ("neumann", "unrolled", "identity") if m in methods), None)
    shown_net: AugmentationNet | None = None

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    bar = progress(total=len(methods) * len(run_seeds), desc="augment", enable=show_progress)
    for run_seed in run_seeds:
        for method in methods:
            bar.set_postfix(method=method, seed=run_seed)
            run_started = time.perf_counter()
            generator = torch.Generator().manual_seed(run_seed)
            classifier = _reset_parameters(
                make_classifier("cnn", data.shape, data.num_classes, channels=cnn_channels),
                generator)
            net = AugmentationNet(data.shape[0], hidden=aug_hidden, depth=aug_depth,
                                  generator=torch.Generator().manual_seed(run_seed + 10_000))
            net.generator = None  # the noise comes from _noise_maker, seeded per run
            model = _AugmentedClassifier(classifier, net).to(dev)
            best = KeepBest(("val_metric", "val_loss"), mode=("max", "min"), restore=False)
            with count_warnings(NeumannDivergenceWarning) as cut:
                curve, skipped = _train(
                    model, data, best, solver=solvers.get(method), hyper_steps=hyper_steps,
                    inner_steps=inner_steps, lr=lr, hyper_lr=hyper_lr, batch_size=batch_size,
                    val_batch_size=val_batch_size, eval_every=eval_every,
                    noise_scale=noise_scale, seed=run_seed, device=dev)
            cut_off = cut.value
            if method == show_method and shown_net is None:  # the augmentation at the end
                shown_net = copy.deepcopy(net).cpu()
            run = _summarise_run(model, data, best, curve, noise_scale=noise_scale,
                                 seed=run_seed, augmented=method != "none")
            run["skipped_hyper_steps"] = skipped
            run["neumann_cut_off"] = cut_off
            run["seconds"] = time.perf_counter() - run_started
            runs[method].append(run)
            _logger.info("augment: %s seed %d: test accuracy %.4f (best val %.4f)", method,
                         run_seed, run["test_accuracy"], run["val_accuracy"])
            bar.update(1)
    bar.close()

    per_method: dict[str, Any] = {}
    for method in methods:
        summary: dict[str, Any] = {"label": labels[method]}
        for key in ("test_accuracy", "val_accuracy", "final_test_accuracy",
                    "final_val_accuracy", "test_loss", "augmentation_change"):
            values = [r[key] for r in runs[method]]
            summary[key] = values
            summary[f"{key}_mean"], summary[f"{key}_std"] = _mean_std(values)
        summary["skipped_hyper_steps"] = sum(r["skipped_hyper_steps"] for r in runs[method])
        summary["neumann_cut_off"] = sum(r["neumann_cut_off"] for r in runs[method])
        summary["seconds_per_run"] = _mean_std([r["seconds"] for r in runs[method]])[0]
        summary["curves"] = [r["curve"] for r in runs[method]]
        summary["best_weight_step"] = [r["best_weight_step"] for r in runs[method]]
        per_method[method] = summary

    def cell(method: str, key: str) -> str:
        s = per_method[method]
        return f"{100 * s[f'{key}_mean']:.2f} ± {100 * s[f'{key}_std']:.2f}"

    table = [{"method": per_method[m]["label"], "val_accuracy_%": cell(m, "val_accuracy"),
              "test_accuracy_%": cell(m, "test_accuracy"),
              "final_test_accuracy_%": cell(m, "final_test_accuracy")} for m in methods]
    results: dict[str, Any] = {
        "study": "augment",
        "dataset": data.name,
        "model": f"CNN (make_classifier('cnn', channels={cnn_channels}))",
        "augmentation": f"AugmentationNet(hidden={aug_hidden}, depth={aug_depth}), noise "
                        f"channel N(0, {noise_scale:g}^2), identity at initialisation",
        "n_train": int(data.y_train.shape[0]),
        "n_val": int(data.y_val.shape[0]),
        "n_test": int(data.y_test.shape[0]),
        "seed": seed,
        "seeds": run_seeds,
        "methods": methods,
        "settings": {
            "hyper_steps": hyper_steps, "inner_steps": inner_steps,
            "weight_steps": weight_steps, "batch_size": batch_size,
            "val_batch_size": val_batch_size,
            "weight_optimizer": f"Adam(lr={lr:g})", "hyper_optimizer": f"Adam(lr={hyper_lr:g})",
            "noise_scale": noise_scale, "neumann_steps": neumann_steps,
            "neumann_alpha": neumann_alpha, "unrolled_steps": unrolled_steps,
            "unrolled_lr": unrolled_lr, "eval_every_hyper_steps": eval_every,
            "model_selection": "test scored at the best validation evaluation (accuracy, "
                               "ties to the lower loss); final_* at the last step",
        },
        "device": str(dev),
        "results": per_method,
        "table": table,
    }
    if "none" in methods:
        base = per_method["none"]["test_accuracy_mean"]
        results["test_accuracy_gain_over_none"] = {
            m: per_method[m]["test_accuracy_mean"] - base for m in methods if m != "none"}
        # Paired by seed (same classifier initialisation): mean and sd of the differences.
        paired = {}
        for m in methods:
            if m != "none":
                diffs = [a - b for a, b in zip(per_method[m]["test_accuracy"],
                                               per_method["none"]["test_accuracy"])]
                mean, std = _mean_std(diffs)
                paired[m] = {"per_seed": diffs, "mean": mean, "std": std,
                             "wins": sum(d > 0 for d in diffs)}
        results["paired_test_gain_over_none"] = paired
    if shown_net is not None and n_show > 0:
        results["figure"] = _figure_data(shown_net, data, n_show=n_show,
                                         n_samples=n_std_samples, noise_scale=noise_scale,
                                         seed=seed, method=show_method,
                                         label=labels[show_method])
    results["seconds"] = time.perf_counter() - started
    for row in table:
        _logger.info("augment: %-18s val %s  test %s", row["method"], row["val_accuracy_%"],
                     row["test_accuracy_%"])
    if out is not None:
        from optuna_ift.plots import plot_augment_accuracy, plot_augmentations

        out = Path(out)
        figure = results.pop("figure", None)
        write_results(out, results)
        plot_augment_accuracy(results, out / "augment_accuracy.png")
        if figure is not None:
            plot_augmentations(figure, out / "augment.png")
            results["figure"] = figure
    return results


def _train(model: _AugmentedClassifier, data: Any, best: KeepBest, *, solver: Any,
           hyper_steps: int, inner_steps: int, lr: float, hyper_lr: float, batch_size: int,
           val_batch_size: int, eval_every: int, noise_scale: float, seed: int,
           device: torch.device) -> tuple[list[dict[str, float]], int]:
    """Algorithm 1 with the augmentation net's weights as hyperparameters; with
    ``solver=None`` the baseline: the same weight steps on real training images, no
    augmentation (weights-only)."""
    noise = _noise_maker(noise_scale, device, seed)

    def augmented_loss(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x, y = batch
        return F.cross_entropy(m.classifier(m.augment(x, noise=noise(x))), y)

    trainer = HyperTrainer(
        model, train_loss=classification_loss if solver is None else augmented_loss,
        val_loss=classification_loss,
        train_data=(data.X_train, data.y_train), val_data=(data.X_val, data.y_val),
        batch_size=batch_size, val_batch_size=val_batch_size,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        hyper_optimizer=None if solver is None else lambda p: torch.optim.Adam(p, lr=hyper_lr),
        solver=Identity() if solver is None else solver,  # unused by the baseline
        inner_steps=inner_steps,
        eval_data={"val": (data.X_val, data.y_val)}, eval_every=eval_every, metric=accuracy,
        device=device, callbacks=[best], progress=False, seed=seed,
    )
    history = trainer.fit(hyper_steps)
    curve = [{"weight_step": r["weight_step"], "val_loss": r["val_loss"],
              "val_metric": r["val_metric"]} for r in history.evaluations]
    return curve, history.skipped


@torch.no_grad()
def _summarise_run(model: _AugmentedClassifier, data: Any, best: KeepBest,
                   curve: list[dict[str, float]], *, noise_scale: float, seed: int,
                   augmented: bool) -> dict[str, Any]:
    """Test scores at the best validation evaluation and at the end; how much the learned
    augmentation moves validation images (mean absolute pixel change, in [0, 1] units)."""
    final_val = _score(model.classifier, data.X_val, data.y_val)
    final_test = _score(model.classifier, data.X_test, data.y_test)
    change = 0.0
    if augmented:  # the learned augmentation at the end of the run
        X = data.X_val
        noise = _noise_maker(noise_scale, X.device, seed + 1)(X)
        moved = model.augment(X, noise=noise) - X
        std = data.std.to(X).view(1, -1, 1, 1)
        change = float((moved * std).abs().mean())
    if best.best_state is not None:
        model.load_state_dict(best.best_state)
    test = _score(model.classifier, data.X_test, data.y_test)
    return {
        "seed": seed,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "val_accuracy": best.best_record.get("val_metric", final_val["accuracy"]),
        "best_weight_step": int(best.best_record.get("weight_step", -1)),
        "final_test_accuracy": final_test["accuracy"],
        "final_val_accuracy": final_val["accuracy"],
        "augmentation_change": change,
        "curve": curve,
    }


@torch.no_grad()
def _figure_data(net: AugmentationNet, data: Any, *, n_show: int, n_samples: int,
                 noise_scale: float, seed: int, method: str, label: str) -> dict[str, Any]:
    """Fig. 7's panels for the first ``n_show`` test images, in [0, 1] pixel units: the
    original, two augmented samples (different noise) and the pixel-wise standard deviation
    of the augmentation over ``n_samples`` noise draws."""
    net.eval()
    X = data.X_test[:n_show].cpu()
    noise = _noise_maker(noise_scale, torch.device("cpu"), seed + 2)
    samples = torch.stack([net(X, noise=noise(X)) for _ in range(n_samples)])  # (S, n, C, H, W)
    std = data.std.cpu().view(1, -1, 1, 1)

    def pixels(images: Tensor) -> list:
        shown = data.unnormalize(images.cpu()).permute(0, 2, 3, 1)  # (n, H, W, C)
        return shown.tolist()

    return {
        "method": method,
        "label": label,
        "labels": [int(v) for v in data.y_test[:n_show].cpu()],
        "original": pixels(X),
        "sample_1": pixels(samples[0]),
        "sample_2": pixels(samples[1]),
        "pixel_std": (samples.std(0) * std).mean(1).tolist(),  # (n, H, W), channel-averaged
        "n_samples": n_samples,
    }
