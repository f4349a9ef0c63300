"""Fig. 7 (learned augmentations) and Table 3 (accuracy per hypergradient method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from optuna_ift.plots._common import save_figure

__all__ = ["plot_augment_accuracy", "plot_augmentations"]

_METHOD_COLORS = {
    "none": "tab:gray",
    "identity": "tab:green",
    "neumann": "tab:blue",
    "unrolled": "tab:orange",
}


def _image(values: Any) -> np.ndarray:
    """``(H, W, C)`` pixels in [0, 1] for ``imshow``: grey images lose their channel axis."""
    array = np.clip(np.asarray(values, dtype=float), 0.0, 1.0)
    return array[..., 0] if array.shape[-1] == 1 else array


def plot_augmentations(figure: dict[str, Any], path: str | Path) -> Path:
    """Fig. 7: per row, a test image, two augmented samples and the pixel-wise deviation of
    the augmentation over many noise draws.

    Args:
        figure: ``results["figure"]`` of :func:`optuna_ift.experiments.augment`.
        path: The PNG to write.
    """
    n = len(figure["original"])
    if n == 0:
        raise ValueError("figure holds no images (n_show=0)")
    std = np.asarray(figure["pixel_std"], dtype=float)
    vmax = max(float(std.max()), 1e-6)
    grey = np.asarray(figure["original"]).shape[-1] == 1
    cmap = "gray" if grey else None
    fig, axes = plt.subplots(n, 4, figsize=(8.6, 2.05 * n + 0.6), squeeze=False,
                             constrained_layout=True)
    titles = ("original", "augmented, noise 1", "augmented, noise 2",
              f"pixel std ({figure['n_samples']} draws)")
    std_image = None
    for row in range(n):
        panels = (figure["original"][row], figure["sample_1"][row], figure["sample_2"][row])
        for col, values in enumerate(panels):
            axes[row, col].imshow(_image(values), cmap=cmap, vmin=0.0, vmax=1.0,
                                  interpolation="nearest")
        std_image = axes[row, 3].imshow(std[row], cmap="magma", vmin=0.0, vmax=vmax,
                                        interpolation="nearest")
        axes[row, 0].set_ylabel(f"label {figure['labels'][row]}", fontsize=10)
        for col in range(4):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(titles[col], fontsize=10)
    fig.colorbar(std_image, ax=axes[:, 3], shrink=0.8, label="std of pixel (0..1 scale)")
    fig.suptitle(f"Learned augmentation, {figure['label']}: test images", fontsize=11)
    return save_figure(fig, path, tight=False)


def plot_augment_accuracy(results: dict[str, Any], path: str | Path) -> Path:
    """Table 3 as a figure: test and validation accuracy per method (mean ± sd over seeds,
    dots for single runs), and the validation accuracy along training.

    Args:
        results: The results of :func:`optuna_ift.experiments.augment`.
        path: The PNG to write.
    """
    methods = results["methods"]
    per = results["results"]
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(12.5, 4.6), constrained_layout=True,
                                           gridspec_kw={"width_ratios": [1.1, 1]})
    x = np.arange(len(methods))
    width = 0.38
    for offset, key, name, hatch in ((-width / 2, "val_accuracy", "validation", "//"),
                                     (width / 2, "test_accuracy", "test", "")):
        for i, method in enumerate(methods):
            s = per[method]
            color = _METHOD_COLORS[method]
            mean, std = 100 * s[f"{key}_mean"], 100 * s[f"{key}_std"]
            ax_bar.bar(x[i] + offset, mean, width, yerr=std, capsize=4, color=color,
                       alpha=0.45 if key == "val_accuracy" else 0.9, hatch=hatch,
                       edgecolor="black", lw=0.6)
            values = 100 * np.asarray(s[key])
            ax_bar.scatter(np.full(values.shape, x[i] + offset), values, s=12, color="black",
                           zorder=3)
            if key == "test_accuracy":
                ax_bar.annotate(f"{mean:.1f}±{std:.1f}", (x[i] + offset, mean + std),
                                xytext=(0, 3), textcoords="offset points", ha="center",
                                fontsize=8)
    every = [100 * v for m in methods for key in ("val_accuracy", "test_accuracy")
             for v in per[m][key]]
    low, high = min(every), max(every)
    pad = max(1.0, 0.35 * (high - low))
    ax_bar.set_ylim(max(0.0, low - 3 * pad), min(100.0, high + 1.5 * pad))
    ax_bar.set_xticks(x, [per[m]["label"] for m in methods], fontsize=9)
    ax_bar.set_ylabel("accuracy (%)")
    from matplotlib.patches import Patch

    ax_bar.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//",
                                 label="validation (best evaluation)"),
                           Patch(facecolor="lightgray", edgecolor="black",
                                 label="test (at that evaluation)")],
                  loc="lower right", fontsize=8)
    ax_bar.set_title(f"Accuracy, mean ± sd over {len(results['seeds'])} seeds (dots: runs)",
                     fontsize=10)
    ax_bar.grid(axis="y", alpha=0.3)

    for method in methods:
        color = _METHOD_COLORS[method]
        curves = per[method]["curves"]
        if not curves or not curves[0]:
            continue
        steps = np.asarray([r["weight_step"] for r in curves[0]])
        length = min(len(c) for c in curves)
        accs = 100 * np.asarray([[r["val_metric"] for r in c[:length]] for c in curves])
        mean = accs.mean(0)
        ax_curve.plot(steps[:length], mean, color=color, lw=2, label=per[method]["label"])
        if accs.shape[0] > 1:
            std = accs.std(0, ddof=1)
            ax_curve.fill_between(steps[:length], mean - std, mean + std, color=color,
                                  alpha=0.15, lw=0)
    ax_curve.set(xlabel="weight steps", ylabel="validation accuracy (%)",
                 title="Validation accuracy during training (mean ± sd)")
    ax_curve.grid(alpha=0.3)
    if ax_curve.get_legend_handles_labels()[0]:
        ax_curve.legend(loc="lower right", fontsize=9)
    fig.suptitle(
        f"Learned data augmentation, {results['dataset']}: CNN on {results['n_train']} "
        f"labelled images, {results['n_val']} validation, {results['n_test']} test",
        fontsize=11)
    return save_figure(fig, path, tight=False)
