"""Figures of the LSTM language-model study (Table 4 and Fig. 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from optuna_ift.plots._common import save_figure

__all__ = ["plot_lstm_curves", "plot_lstm_overfit", "plot_lstm_rates"]

_LABELS = {"none": "no tuning", "ift-7": "IFT, 7 hyperparameters",
           "ift-many": "IFT, a rate per unit / weight",
           "ift-many-from-7": "IFT, a rate per unit / weight, from IFT's 7",
           "tpe": "Optuna TPE over the 7 (best so far)"}


def plot_lstm_curves(table: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Validation perplexity against wall-clock seconds, one line per method."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, row in table.items():
        curve = row.get("curve") or []
        if not curve:
            continue
        seconds = [p["seconds"] for p in curve]
        ppl = [p["val_ppl"] for p in curve]
        style = dict(drawstyle="steps-post") if method == "tpe" else dict(marker="o", ms=3)
        ax.plot(seconds, ppl, label=f"{_LABELS.get(method, method)}: test {row['test_ppl']:.1f}",
                **style)
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("LSTM on Penn Treebank: validation perplexity over time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_lstm_rates(learned: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """How the regularisers moved: one panel per regulariser, one line per IFT method (with
    the 10-90 % band of the per-unit / per-weight rates)."""
    names = [k for k in learned[next(iter(learned))][0] if k not in ("seconds", "hyper_step")]
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes.flat, names):
        for method, records in learned.items():
            steps = [r["hyper_step"] for r in records]
            values = [r[name] for r in records]
            label = _LABELS.get(method, method)
            if isinstance(values[0], dict):
                line, = ax.plot(steps, [v["mean"] for v in values], label=f"{label} (mean)")
                ax.fill_between(steps, [v["q10"] for v in values], [v["q90"] for v in values],
                                color=line.get_color(), alpha=0.2)
            else:
                ax.plot(steps, values, label=label)
        title = f"{name.upper()} coefficient" if name in ("ar", "tar") else f"{name} dropout rate"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("hyper step", fontsize=8)
        ax.grid(alpha=0.3)
        if name in ("ar", "tar"):
            ax.set_yscale("log")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    spare = list(axes.flat)[len(names):]
    (spare[0] if spare else fig).legend(handles, labels, loc="center", fontsize=8)
    fig.suptitle("Regularisers learned by implicit hypergradients (band: 10-90 % of the rates)")
    return save_figure(fig, path)


def plot_lstm_overfit(results: dict[str, Any], path: str | Path) -> Path:
    """Fig. 8: training and validation loss of the 10 + 10 sequences per hyper step."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(results["hyper_steps"], results["val_loss"], label="validation loss")
    ax.plot(results["hyper_steps"], results["train_loss"], label="training loss (with decay)")
    ax.axhline(results["start_val_loss"] / 10, ls="--", color="gray",
               label="a tenth of the starting validation loss")
    ax.set_xlabel("hyper step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_yscale("log")
    n = results["config"]["n_sequences"]
    ax.set_title(f"LSTM LM, {n} training and {n} validation sequences,\n"
                 f"a weight decay per weight ({results['hyperparameters']:,})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
