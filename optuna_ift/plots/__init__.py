"""Matplotlib figures of the studies, written as PNG files: one private module per study."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display

from optuna_ift.plots._augment import plot_augment_accuracy, plot_augmentations  # noqa: E402
from optuna_ift.plots._demo import plot_demo  # noqa: E402
from optuna_ift.plots._distill import plot_distill_curve, plot_distilled_images  # noqa: E402
from optuna_ift.plots._inverse import plot_inverse_comparison  # noqa: E402
from optuna_ift.plots._lstm import plot_lstm_curves, plot_lstm_overfit, plot_lstm_rates  # noqa: E402
from optuna_ift.plots._overfit import plot_overfit, plot_overfit_decays  # noqa: E402
from optuna_ift.plots._split import plot_split_ratio  # noqa: E402

__all__ = [
    "plot_augment_accuracy",
    "plot_augmentations",
    "plot_demo",
    "plot_distill_curve",
    "plot_distilled_images",
    "plot_inverse_comparison",
    "plot_lstm_curves",
    "plot_lstm_overfit",
    "plot_lstm_rates",
    "plot_overfit",
    "plot_overfit_decays",
    "plot_split_ratio",
]
