"""The mathematics of implicit hypergradients: tensors in, tensors out.

This layer knows nothing of Optuna, scikit-learn, trainers or datasets.
"""

from __future__ import annotations

from optuna_ift.hypergrad._hypergradient import hypergradient, train_gradient_hvp
from optuna_ift.hypergrad._solvers import (
    HVP,
    ConjugateGradient,
    Exact,
    Identity,
    Neumann,
    NeumannDivergenceWarning,
    NonPositiveCurvatureWarning,
    Solver,
    check_alpha,
    check_solver,
    power_iteration,
)
from optuna_ift.hypergrad._unrolled import unrolled_hypergradient

__all__ = [
    "HVP",
    "ConjugateGradient",
    "Exact",
    "Identity",
    "Neumann",
    "NeumannDivergenceWarning",
    "NonPositiveCurvatureWarning",
    "Solver",
    "check_alpha",
    "check_solver",
    "hypergradient",
    "power_iteration",
    "train_gradient_hvp",
    "unrolled_hypergradient",
]
