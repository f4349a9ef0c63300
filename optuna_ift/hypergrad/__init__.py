"""The mathematics of implicit hypergradients: tensors in, tensors out.

This layer knows nothing of Optuna, scikit-learn, trainers or datasets.
"""

from __future__ import annotations

from optuna_ift.hypergrad._hvp import (
    HVP_MODES,
    MIXED_MODES,
    finite_difference_step,
    functional_hvp,
    functional_hypergradient,
)
from optuna_ift.hypergrad._hypergradient import (
    hypergradient,
    lazy_hvp,
    reduced_hvp,
    train_gradient_hvp,
)
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
    divergence_caught,
    power_iteration,
)
from optuna_ift.hypergrad._stateful import (
    Nystrom,
    SolverState,
    StatefulSolver,
    WarmConjugateGradient,
    WarmNeumann,
    is_stateful,
)
from optuna_ift.hypergrad._unrolled import unrolled_hypergradient

__all__ = [
    "HVP",
    "HVP_MODES",
    "MIXED_MODES",
    "ConjugateGradient",
    "Exact",
    "Identity",
    "Neumann",
    "NeumannDivergenceWarning",
    "NonPositiveCurvatureWarning",
    "Nystrom",
    "Solver",
    "SolverState",
    "StatefulSolver",
    "WarmConjugateGradient",
    "WarmNeumann",
    "check_alpha",
    "check_solver",
    "divergence_caught",
    "finite_difference_step",
    "functional_hvp",
    "functional_hypergradient",
    "hypergradient",
    "is_stateful",
    "lazy_hvp",
    "power_iteration",
    "reduced_hvp",
    "train_gradient_hvp",
    "unrolled_hypergradient",
]
