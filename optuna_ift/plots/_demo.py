"""The demo's figures: the study (history, importances) and its best trial (decays, curve).

Every figure is drawn from the results dict alone, so it can be redrawn from
``results.json`` without the storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optuna_ift.plots._common import save_figure

__all__ = [
    "plot_demo",
    "plot_demo_curve",
    "plot_demo_decays",
    "plot_demo_history",
    "plot_demo_importances",
]

_PARAM_LABELS = {"lr": "learning rate", "width": "width", "inner_steps": "inner steps"}


def _history(ax: Any, results: dict[str, Any]) -> None:
    trials = results["trials"]
    complete = [t for t in trials if t["state"] == "COMPLETE" and isinstance(t["value"], float)]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    warm = [t for t in complete if t["warm_started_from"] is not None]
    cold = [t for t in complete if t["warm_started_from"] is None]
    for group, label, marker in ((cold, "complete", "o"), (warm, "complete, warm-started", "D")):
        if group:
            ax.scatter([t["number"] for t in group], [t["value"] for t in group],
                       s=26, marker=marker, color="tab:blue", alpha=0.8 if marker == "o" else 1,
                       facecolor="none" if marker == "D" else "tab:blue", label=label,
                       zorder=3)
    if pruned:
        last = [list(t["intermediate_values"].values())[-1] if t["intermediate_values"]
                else np.nan for t in pruned]
        ax.scatter([t["number"] for t in pruned], last, s=22, marker="x", color="tab:red",
                   alpha=0.7, label="pruned (last reported)", zorder=2)
    if complete:
        numbers = [t["number"] for t in complete]
        best = list(np.minimum.accumulate([t["value"] for t in complete]))
        last = max(t["number"] for t in trials)
        if last > numbers[-1]:  # carry the line to the last trial
            numbers, best = numbers + [last], best + [best[-1]]
        ax.step(numbers, best, where="post", color="black", lw=1.6, label="best so far")
        values = np.array([t["value"] for t in complete] + [v for v in
                          (list(t["intermediate_values"].values())[-1]
                           for t in pruned if t["intermediate_values"])])
        low, high = np.nanmin(values), np.nanquantile(values, 0.95)
        pad = 0.08 * (high - low or 1.0)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss (cross-entropy)")
    ax.set_title("Optimization history", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def _importances(ax: Any, results: dict[str, Any]) -> None:
    importances = results.get("importances") or {}
    if not importances:
        ax.text(0.5, 0.5, "too few complete trials\nfor importances", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
        ax.set_axis_off()
        return
    names = sorted(importances, key=importances.get)
    values = [importances[n] for n in names]
    ax.barh([_PARAM_LABELS.get(n, n) for n in names], values, color="tab:green", alpha=0.8)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(values) * 1.2 or 1)
    ax.set_xlabel("importance (fANOVA) for the validation loss")
    ax.set_title("Parameter importances (Optuna's sampler)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def _decays(ax: Any, results: dict[str, Any]) -> None:
    best = results.get("best")
    if not best:
        ax.set_axis_off()
        return
    log10 = np.asarray(best["log10_decays"], dtype=float)
    low, high = float(log10.min()), float(log10.max())
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    ax.hist(log10, bins=40, range=(low, high), color="tab:purple", alpha=0.7)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)
    median = float(np.median(log10))
    ax.axvline(median, color="black", ls="--", lw=1.2, label=f"median 10^{median:.2f}")
    ax.set_xlabel("log10 weight decay (one per weight)")
    ax.set_ylabel("number of weights")
    warm = best.get("warm_started_from")
    source = f", warm-started from trial {warm}" if warm is not None else ""
    ax.set_title(f"Learned decays of trial {best['number']}: {len(log10):,} decays{source}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _curve(ax: Any, results: dict[str, Any]) -> None:
    best = results.get("best")
    for t in results["trials"]:
        if t["intermediate_values"] and (best is None or t["number"] != best["number"]):
            steps = [int(k) for k in t["intermediate_values"]]
            ax.plot(steps, list(t["intermediate_values"].values()), color="0.75", lw=0.8,
                    ls="--" if t["state"] == "PRUNED" else "-", zorder=1)
    ax.plot([], [], color="0.75", lw=0.8, label="other trials (dashed: pruned)")
    if best:
        curve = best["validation_curve"]
        ax.plot(curve["hyper_step"], curve["val_loss"], color="tab:blue", lw=2.2, marker="o",
                ms=4, label=f"best trial {best['number']}", zorder=3)
        values = curve["val_loss"]
        others = [v for t in results["trials"] for v in t["intermediate_values"].values()]
        high = np.nanquantile(others, 0.9) if others else max(values)
        ax.set_ylim(min(values + others) * 0.95, max(max(values), high) * 1.05)
    ax.set_xlabel("hyper step")
    ax.set_ylabel("validation loss (cross-entropy)")
    ax.set_title("Validation curve while IFT tunes the decays", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def _single(draw: Any, results: dict[str, Any], path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    draw(ax, results)
    return save_figure(fig, path)


def plot_demo_history(results: dict[str, Any], path: str | Path) -> Path:
    """Validation loss of each trial (pruned ones at their last report) and the best so far."""
    return _single(_history, results, path)


def plot_demo_importances(results: dict[str, Any], path: str | Path) -> Path:
    """fANOVA importances of the sampled parameters."""
    return _single(_importances, results, path)


def plot_demo_decays(results: dict[str, Any], path: str | Path) -> Path:
    """Histogram of the best trial's learned decays (log10), loaded from its artifact."""
    return _single(_decays, results, path)


def plot_demo_curve(results: dict[str, Any], path: str | Path) -> Path:
    """The best trial's validation loss against hyper steps, the other trials in grey."""
    return _single(_curve, results, path)


def plot_demo(results: dict[str, Any], out: str | Path) -> list[Path]:
    """All four figures as ``demo_*.png`` in ``out``, and the four together in ``demo.png``."""
    out = Path(out)
    paths = [plot_demo_history(results, out / "demo_history.png"),
             plot_demo_importances(results, out / "demo_importances.png"),
             plot_demo_decays(results, out / "demo_decays.png"),
             plot_demo_curve(results, out / "demo_curve.png")]
    fig, axes = plt.subplots(2, 2, figsize=(12.5, 8.4), constrained_layout=True)
    for ax, draw in zip(axes.flat, (_history, _importances, _decays, _curve)):
        draw(ax, results)
    n = sum(results["states"].values())
    fig.suptitle(f"optuna-ift demo: TPE tunes learning rate, width, inner steps and a decay; "
                 f"IFT tunes a decay per weight from it in each trial ({n} trials, "
                 f"{results['dataset']})", fontsize=11)
    paths.append(save_figure(fig, out / "demo.png"))
    return paths
