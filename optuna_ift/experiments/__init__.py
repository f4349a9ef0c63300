"""The paper's studies, each a function that returns its results and writes its figures."""

from __future__ import annotations

from optuna_ift.experiments.augment import augment
from optuna_ift.experiments.compare_inverse import compare_inverse
from optuna_ift.experiments.demo import demo, run_worker
from optuna_ift.experiments.distill import distill
from optuna_ift.experiments.overfit import overfit
from optuna_ift.experiments.split_ratio import split_ratio

__all__ = [
    "augment",
    "compare_inverse",
    "demo",
    "distill",
    "overfit",
    "run_worker",
    "split_ratio",
]
