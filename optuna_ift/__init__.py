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

__version__ = "0.1.0"

__all__ = [
    "ConjugateGradient",
    "Exact",
    "Identity",
    "Neumann",
    "NeumannDivergenceWarning",
    "NonPositiveCurvatureWarning",
    "__version__",
    "hypergradient",
    "power_iteration",
    "unrolled_hypergradient",
]
