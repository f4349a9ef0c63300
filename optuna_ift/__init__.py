"""optuna-ift: gradient-based tuning of many hyperparameters by implicit differentiation.

The core is :func:`hypergradient` (Lorraine, Vicol & Duvenaud, AISTATS 2020) with its
inverse-Hessian-vector-product solvers; the layers above it bring the method to Optuna studies
and scikit-learn estimators.
"""

from __future__ import annotations

from optuna_ift.hypergrad import (
    ConjugateGradient,
    Exact,
    Identity,
    Neumann,
    NeumannDivergenceWarning,
    NonPositiveCurvatureWarning,
    hypergradient,
    power_iteration,
    unrolled_hypergradient,
)
from optuna_ift.hyperparams import HyperParameter, split_parameters
from optuna_ift.trainer import (
    Callback,
    EarlyStopping,
    History,
    HyperparameterSchedule,
    HyperStep,
    HyperTrainer,
    KeepBest,
    LRScheduler,
    TensorBatches,
    Unrolled,
    evaluate,
)

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "ConjugateGradient",
    "EarlyStopping",
    "Exact",
    "History",
    "HyperParameter",
    "HyperStep",
    "HyperTrainer",
    "HyperparameterSchedule",
    "Identity",
    "KeepBest",
    "LRScheduler",
    "Neumann",
    "NeumannDivergenceWarning",
    "NonPositiveCurvatureWarning",
    "TensorBatches",
    "__version__",
    "evaluate",
    "hypergradient",
    "power_iteration",
    "split_parameters",
    "unrolled_hypergradient",
    "Unrolled",
]
