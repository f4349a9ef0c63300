"""Fig. 9: test accuracy against the share of data held out for validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from optuna_ift.plots._common import save_figure

__all__ = ["plot_split_ratio"]

_MODE_STYLE = {"global": ("-", "one global decay"), "per_weight": (":", "a decay per weight"),
               "per_weight_from_global": ("--", "a decay per weight, from the global one")}


def plot_split_ratio(results: dict[str, Any], path: str | Path) -> Path:
    """Fig. 9: two panels (without / with re-training on all the data); x: validation share
    in per cent; one colour per data size; solid lines one global decay, dotted lines a decay
    per weight, dashed a decay per weight started from the learned global one; mean over
    seeds with a band of one standard deviation.

    Args:
        results: The dict of :func:`optuna_ift.sklearn.validation_split_curve` (or of the
            ``split-ratio`` study, which contains it).
        path: The PNG file to write.

    Returns:
        ``path``.
    """
    fractions = 100 * np.asarray(results["fractions"], dtype=float)
    sizes = results["sizes"]
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(sizes)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, constrained_layout=True)
    titles = {"no_refit": "Without re-training (trained on the non-validation part)",
              "refit": "Re-trained on all the data with the learned decays"}
    for ax, key in zip(axes, ("no_refit", "refit")):
        for color, size in zip(colors, sizes):
            for mode in results["weight_decays"]:
                style, _ = _MODE_STYLE[mode]
                curve = results["summary"][mode][key][str(size)]
                mean, std = np.asarray(curve["mean"]), np.asarray(curve["std"])
                ax.plot(fractions, mean, ls=style, color=color, lw=2, marker="o", ms=3)
                ax.fill_between(fractions, mean - std, mean + std, color=color, alpha=0.1, lw=0)
        ax.set(title=titles[key], xlabel="% of the data in the validation split")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    handles = [plt.Line2D([], [], color=c, lw=2, label=f"{s} examples")
               for c, s in zip(colors, sizes)]
    handles += [plt.Line2D([], [], color="black", ls=_MODE_STYLE[m][0], lw=2,
                           label=_MODE_STYLE[m][1]) for m in results["weight_decays"]]
    axes[1].legend(handles=handles, loc="lower left", fontsize=9)
    name = results.get("dataset", "data")
    fig.suptitle(f"Logistic regression on {name}: test accuracy against the validation share "
                 f"(mean ± sd over {len(results['seeds'])} seed(s))", fontsize=11)
    return save_figure(fig, path, tight=False)
