"""Fig. 6: dataset distillation, the learned images and how the classifier they train improves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from optuna_ift.plots._common import save_figure

__all__ = ["plot_distill_curve", "plot_distilled_images"]

_INIT_NAMES = {"mean": "initial: class means", "real": "initial: a real image",
               "noise": "initial: noise"}


def _to_display(images: Any) -> np.ndarray:
    """``(n, C, H, W)`` pixels (about ``[0, 1]``) as ``(n, H, W)`` or ``(n, H, W, 3)``."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(
        images)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images must be shaped (n, C, H, W) with C in (1, 3), got "
                         f"{array.shape}")
    array = array.astype(np.float64)
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)


def plot_distilled_images(
    images: Any,
    path: str | Path,
    *,
    class_names: Sequence[str],
    initial: Any | None = None,
    initial_name: str = "mean",
    soft_labels: Any | None = None,
    title: str | None = None,
) -> Path:
    """A grid of distilled images, one column per class, titled with the class.

    Images are in pixel units (``ClassificationData.unnormalize``); learned pixels may leave
    ``[0, 1]``, so each row is shown over the range of its own pixels (grey scale, the same
    range for every image of the row, stated at the row's left) rather than clipped.

    Args:
        images: The distilled images ``(n_classes, C, H, W)``.
        path: The PNG file to write.
        class_names: One name per image.
        initial: Optional initial images, shown in a first row, plus a last row with the
            change (distilled minus initial, red brighter, blue darker).
        initial_name: ``"mean"``, ``"real"`` or ``"noise"``: how ``initial`` was made.
        soft_labels: Optional learned label probabilities ``(n_classes, n_classes)``; each
            column then also names the image's top label and its probability.
        title: Figure title.
    """
    shown = _to_display(images)
    n = shown.shape[0]
    if len(class_names) != n:
        raise ValueError(f"class_names must name the {n} images, got {len(class_names)}")
    rows = [("distilled", shown)]
    if initial is not None:
        start = _to_display(initial)
        if start.shape != shown.shape:
            raise ValueError(f"initial must be shaped like images, got {start.shape} and "
                             f"{shown.shape}")
        rows = [(_INIT_NAMES.get(initial_name, f"initial: {initial_name}"), start),
                ("distilled", shown), ("change", shown - start)]
    probs = None if soft_labels is None else np.asarray(
        soft_labels.detach().cpu() if isinstance(soft_labels, torch.Tensor) else soft_labels)

    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 1.2, 1.45 * len(rows) + 0.8),
                             squeeze=False, constrained_layout=True)
    for r, (name, row) in enumerate(rows):
        if name == "change":
            bound = float(np.abs(row).max()) or 1.0
            vmin, vmax, cmap = -bound, bound, "RdBu_r"
            label = f"change\n±{bound:.2g}"
        else:
            vmin, vmax = min(0.0, float(row.min())), max(1.0, float(row.max()))
            vmin = 0.0 if vmin > -5e-3 else vmin  # rounding below 0 is not worth a "-0.00"
            cmap = "gray"
            label = f"{name}\n[{vmin:.2f}, {vmax:.2f}]".replace(": ", ":\n")
        for c in range(n):
            ax = axes[r, c]
            image = row[c]
            if image.ndim == 3:  # colour: rescale the row's range into [0, 1]
                ax.imshow(np.clip((image - vmin) / (vmax - vmin), 0, 1))
            else:
                ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                heading = str(class_names[c])
                if probs is not None:
                    top = int(probs[c].argmax())
                    heading += f"\nlabel {class_names[top]}: {probs[c, top]:.2f}"
                ax.set_title(heading, fontsize=11)
        axes[r, 0].set_ylabel(label, fontsize=8.5)
    if title:
        fig.suptitle(title, fontsize=10.5)
    return save_figure(fig, path, dpi=110, tight=False)


def plot_distill_curve(results: dict[str, Any], path: str | Path) -> Path:
    """Validation accuracy of a fresh classifier fitted on the distilled images, per hyper
    step, against the baselines (dashed); and the outer loss of each hyper step."""
    curve = results["curve"]
    steps = np.asarray(curve["hyper_step"])
    baselines = results["baselines"]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    ax_acc.plot(steps, curve["val_accuracy"], color="tab:blue", lw=2, marker="o", ms=3,
                label=f"10 distilled images (test {results['test_accuracy']:.1%})")
    # Zoom on the distilled curve and the stronger baselines; a baseline far below is
    # named at the bottom edge instead of squeezing the curve.
    low = min(min(curve["val_accuracy"]), baselines["class_means"]["val_accuracy"],
              baselines["full_training_set"]["val_accuracy"])
    bottom = max(0.0, low - 0.05)
    for key, label, color in (("full_training_set", "full training set", "black"),
                              ("class_means", "10 class means", "tab:orange"),
                              ("random_real", "10 random real images", "tab:red")):
        entry = baselines[key]
        text = f"{label} (test {entry['test_accuracy']:.1%})"
        if entry["val_accuracy"] >= bottom:
            ax_acc.axhline(entry["val_accuracy"], color=color, ls="--", lw=1.5, label=text)
        else:
            ax_acc.plot([], [], color=color, ls="--", lw=1.5,
                        label=f"{text}, val {entry['val_accuracy']:.1%}: off the axis")
    ax_acc.set_ylim(bottom, 1.0)
    ax_acc.set(xlabel="hyper step", ylabel="validation accuracy of a fresh classifier",
               title="Logistic regression fitted on the images alone")
    ax_acc.legend(loc="lower right", fontsize=9)
    history = results["hyper_steps_history"]
    loss = np.asarray(history["val_loss"], dtype=float)
    x = np.arange(1, len(loss) + 1)
    ax_loss.plot(x, loss, color="tab:blue", alpha=0.35, lw=1, label="each batch")
    window = max(1, len(loss) // 25)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(x[window - 1:], smooth, color="tab:blue", lw=2,
                     label=f"moving mean of {window}")
    ax_loss.set(xlabel="hyper step", ylabel="cross-entropy on real training batches",
                title="Outer loss (the hyperparameters' objective)")
    ax_loss.legend(loc="upper right", fontsize=9)
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    settings = results["settings"]
    labels = "learned soft labels" if settings["learn_labels"] else "fixed labels"
    fig.suptitle(
        f"Dataset distillation, {results['dataset']}: one image per class, {labels}, "
        f"decay {settings['decay']:g}, {settings['solver']} ({settings['solver_steps']} HVPs), "
        f"{settings['hyper_steps']} hyper steps, {results['seconds']:.0f} s",
        fontsize=10.5,
    )
    return save_figure(fig, path, tight=False)
