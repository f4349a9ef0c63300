"""Fig. 5: a validation set overfit by as many hyperparameters as weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from optuna_ift.plots._common import save_figure

__all__ = ["plot_overfit", "plot_overfit_decays"]

_TITLES = {"linear": "Linear", "mlp": "MLP", "cnn": "CNN"}
_SPLIT_STYLE = {
    "train": ("Train", "tab:green"),
    "val": ("Validation", "tab:blue"),
    "test": ("Test", "tab:red"),
}


def _title(kind: str, result: dict[str, Any]) -> str:
    return (f"{_TITLES.get(kind, kind)}: {result['num_hyperparameters']:,} hyperparameters\n"
            f"(= {result['num_weights']:,} weights)")


def plot_overfit(results: dict[str, Any], path: str | Path) -> Path:
    """One panel per model: train, validation and test accuracy against hyper steps.

    Solid lines are the run with tuned decays; dashed lines the baseline with the decays fixed
    at their initial value, after the same number of weight steps. A dotted vertical line marks
    the hyper step at which validation accuracy first reached 100%.
    """
    kinds = results["models"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(4.6 * len(kinds) + 0.6, 9.0), 4.4),
                             sharey=True, constrained_layout=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        result = results["per_model"][kind]
        tuned, base = result["curves"], result["baseline_curves"]
        for split, (label, color) in _SPLIT_STYLE.items():
            ax.plot(tuned["hyper_step"], tuned[f"{split}_accuracy"], color=color, lw=2,
                    label=f"{label} (tuned decays)")
            if split != "train":  # the baseline fits its training set too; keep it legible
                ax.plot(base["hyper_step"], base[f"{split}_accuracy"], color=color, lw=1.3,
                        ls="--", alpha=0.8, label=f"{label} (fixed decay)")
        first = result["first_perfect_val_step"]
        if first is not None:
            ax.axvline(first, color="0.4", ls=":", lw=1.2)
            ax.annotate(f"100% val.\nat step {first}", xy=(first, 0.03),
                        xytext=(4, 0), textcoords="offset points", fontsize=8, color="0.3")
        final, baseline = result["final"], result["baseline_final"]
        ax.text(0.98, 0.03,
                f"test: {final['test_accuracy']:.1%} tuned\n"
                f"      {baseline['test_accuracy']:.1%} fixed",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                family="monospace", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
        ax.set_title(_title(kind, result), fontsize=10)
        ax.set_xlabel(f"hyper steps ({results['settings']['inner_steps']} weight steps each)")
        ax.set_ylim(0.0, 1.03)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:.0%}"))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(
        f"Overfitting {results['n_val']} validation examples with a weight decay per weight "
        f"({results['dataset']}, {results['n_train']} training, {results['n_test']} test "
        f"examples)",
        fontsize=10,
    )
    return save_figure(fig, path)


def plot_overfit_decays(results: dict[str, Any], path: str | Path) -> Path:
    """One panel per model: histogram of the learned decays (log10), initial value marked."""
    kinds = results["models"]
    init = np.log10(results["settings"]["init_decay"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds) + 0.6, 3.6),
                             constrained_layout=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        result = results["per_model"][kind]
        decays = result["decays"]
        edges = np.asarray(decays["histogram_edges"])
        counts = np.asarray(decays["histogram_counts"])
        ax.stairs(counts, edges, fill=True, color="tab:purple", alpha=0.6)
        ax.axvline(init, color="black", ls="--", lw=1.2, label=f"initial decay 1e{init:.3g}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
        ax.set_title(
            f"{_TITLES.get(kind, kind)}: {decays['share_raised']:.0%} of decays raised, "
            f"{decays['share_lowered']:.0%} lowered", fontsize=10)
        ax.set_xlabel("log10 decay after tuning")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[0][0].set_ylabel("number of weights")
    fig.suptitle(f"Learned weight decays, one per weight ({results['dataset']})", fontsize=10)
    return save_figure(fig, path)
