"""Fig. 3: inverse-Hessian approximations against the exact hypergradient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from optuna_ift.plots._common import save_figure

__all__ = ["plot_inverse_comparison"]

_SOLVER_STYLE = {
    "neumann": ("Neumann", "tab:blue"),
    "cg": ("Conjugate gradient", "tab:orange"),
    "identity": ("Identity (T1-T2)", "tab:green"),
}


def plot_inverse_comparison(results: dict[str, Any], path: str | Path) -> Path:
    """Fig. 3: cosine similarity and l2 distance to the exact hypergradient against steps."""
    steps = np.asarray(results["steps"])
    fig, (ax_cos, ax_l2, ax_kappa) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    for name, (label, color) in _SOLVER_STYLE.items():
        curves = results["solvers"][name]
        for ax, key in ((ax_cos, "cosine"), (ax_l2, "l2")):
            mean = np.asarray(curves[f"{key}_mean"])
            std = np.asarray(curves[f"{key}_std"])
            if name == "identity":  # no steps to take: one value, its spread in the legend
                ax.plot(steps, mean, color=color, lw=2, ls="--",
                        label=f"{label}, sd {std[0]:.2g}")
                continue
            ax.plot(steps, mean, color=color, label=label, lw=2)
            low = mean - std if key == "cosine" else np.maximum(mean - std, mean * 1e-3)
            ax.fill_between(steps, low, mean + std, color=color, alpha=0.15, lw=0)
    ax_cos.set(xlabel="# of inverse steps (Hessian-vector products)",
               ylabel="cosine similarity to exact", title="Direction")
    ax_cos.set_ylim(top=1.005)
    ax_l2.set(xlabel="# of inverse steps (Hessian-vector products)",
              ylabel="l2 distance to exact", title="Distance", yscale="log")
    at = results["steps_for_summary"]
    ax_kappa.scatter(results["hessian_condition_numbers"], results["neumann_cosine_per_draw"],
                     color=_SOLVER_STYLE["neumann"][1])
    ax_kappa.set(xlabel="condition number of the training Hessian", xscale="log",
                 ylabel=f"Neumann cosine at {at} steps", title="Each decay setting")
    for ax in (ax_cos, ax_l2, ax_kappa):
        ax.grid(alpha=0.3)
    ax_cos.legend(loc="lower right")
    ax_l2.legend(loc="center right")
    fig.suptitle(
        f"Hypergradient approximations, linear regression with a weight decay per weight "
        f"({results['dataset']}; mean ± sd over {results['n_draws']} settings, "
        f"log10 decay ~ U{tuple(results['log10_decay_range'])})",
        fontsize=10,
    )
    return save_figure(fig, path, tight=False)
