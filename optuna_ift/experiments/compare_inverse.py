"""Fig. 3 of the paper: how well each inverse-Hessian approximation gives the hypergradient.

A linear regression with one weight decay per weight is trained to its exact optimum on
scikit-learn's diabetes data (the paper used Boston housing, which scikit-learn removed). At
several random settings of the decays, the hypergradient of each solver after 1..``max_steps``
Hessian-vector products is compared with the exact one (dense inverse): cosine similarity and
l2 distance.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from optuna_ift._validation import ArgumentKindError, check_int
from optuna_ift.data import load_diabetes
from optuna_ift.experiments._common import progress, write_results
from optuna_ift.hypergrad import (
    ConjugateGradient,
    Exact,
    Identity,
    Neumann,
    hypergradient,
    power_iteration,
    train_gradient_hvp,
)

__all__ = ["compare_inverse"]

_logger = logging.getLogger(__name__)


class _DecayedLinearRegression:
    """``L_T = |X w + b - y|^2 / 2n + sum(exp(theta) w^2) / 2``; ``L_V`` without the decay."""

    def __init__(self, X: Tensor, y: Tensor, Xv: Tensor, yv: Tensor) -> None:
        ones = lambda A: torch.ones(A.shape[0], 1, dtype=A.dtype, device=A.device)  # noqa: E731
        self.X, self.y = torch.cat([X, ones(X)], 1), y
        self.Xv, self.yv = torch.cat([Xv, ones(Xv)], 1), yv
        self.n_features = X.shape[1]

    def decay(self, theta: Tensor) -> Tensor:
        return torch.cat([theta.exp(), theta.new_zeros(1)])  # the bias is not decayed

    def train_loss(self, wb: Tensor, theta: Tensor) -> Tensor:
        fit = ((self.X @ wb - self.y) ** 2).mean() / 2
        return fit + (self.decay(theta) * wb**2).sum() / 2

    def val_loss(self, wb: Tensor) -> Tensor:
        return ((self.Xv @ wb - self.yv) ** 2).mean() / 2

    def optimum(self, theta: Tensor) -> Tensor:
        H = self.X.T @ self.X / self.X.shape[0] + torch.diag(self.decay(theta))
        return torch.linalg.solve(H, self.X.T @ self.y / self.X.shape[0])


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))


def _check_range(name: str, value: Any) -> tuple[float, float]:
    """``(low, high)`` as floats, if ``value`` is two finite numbers with ``low <= high``."""
    allowed = f"{name} must be (low, high) with low <= high, two finite numbers"
    if isinstance(value, (str, bytes)):
        raise ArgumentKindError(f"{allowed}, got {type(value).__name__} {value!r:.60}")
    try:
        items = list(value)
    except TypeError:
        raise ArgumentKindError(f"{allowed}, got {type(value).__name__} {value!r:.60}") from None
    if any(isinstance(x, bool) or not isinstance(x, numbers.Real) for x in items):
        raise ArgumentKindError(f"{allowed}, got {value!r:.60}")
    if len(items) != 2 or not all(math.isfinite(x) for x in items) or not items[0] <= items[1]:
        raise ValueError(f"{allowed}, got {value!r:.60}")
    return float(items[0]), float(items[1])


def compare_inverse(
    *,
    max_steps: int = 50,
    n_draws: int = 10,
    log10_decay_range: tuple[float, float] = (-2.0, 0.0),
    seed: int = 0,
    out: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the study and, if ``out`` is given, write ``results.json`` and ``compare_inverse.png``.

    Args:
        max_steps: Largest number of inverse steps (HVPs) tried; every count from 1 is run.
        n_draws: Number of random decay settings averaged over.
        log10_decay_range: Each decay is drawn as ``10**U(low, high)``. Small decays make the
            Hessian ill-conditioned (the diabetes features are correlated), which slows
            Neumann and not CG: ``(-3, 0)`` shows that side of the story.
        seed: Seed of the data split and of the decay draws.
        out: Folder for the results; created if missing.
        show_progress: Show a tqdm progress bar.

    Returns:
        The results: per solver and step count, mean and standard deviation over draws of the
        cosine similarity and the l2 distance to the exact hypergradient.
    """
    max_steps = check_int("max_steps", max_steps, 1)
    n_draws = check_int("n_draws", n_draws, 1)
    low, high = _check_range("log10_decay_range", log10_decay_range)
    check_int("seed", seed, 0)
    started = time.perf_counter()
    data = load_diabetes(val_fraction=0.5, seed=seed)
    problem = _DecayedLinearRegression(data.X_train, data.y_train, data.X_val, data.y_val)
    generator = torch.Generator().manual_seed(seed)
    steps = list(range(1, max_steps + 1))
    names = ("neumann", "cg", "identity")
    cosine = {name: torch.zeros(n_draws, max_steps, dtype=torch.float64) for name in names}
    distance = {name: torch.zeros(n_draws, max_steps, dtype=torch.float64) for name in names}
    conditions, alphas = [], []

    bar = progress(total=n_draws * max_steps, desc="compare-inverse", enable=show_progress)
    for d in range(n_draws):
        log10_decay = low + (high - low) * torch.rand(
            problem.n_features, generator=generator, dtype=torch.float64
        )
        theta_value = log10_decay * math.log(10.0)

        def solve(solver) -> Tensor:
            theta = theta_value.clone().requires_grad_()
            wb = problem.optimum(theta).detach().requires_grad_()
            train = problem.train_loss(wb, theta)
            (g,) = hypergradient(problem.val_loss(wb), train, [wb], [theta], solver=solver)
            return g

        exact = solve(Exact())
        theta = theta_value.clone().requires_grad_()
        wb = problem.optimum(theta).detach().requires_grad_()
        _, hvp = train_gradient_hvp(problem.train_loss(wb, theta), [wb])
        eigenvalues = torch.linalg.eigvalsh(
            torch.stack([hvp((e,))[0] for e in torch.eye(wb.numel(), dtype=wb.dtype)])
        )
        conditions.append(float(eigenvalues.max() / eigenvalues.min()))
        # alpha = 1 / lambda_max, estimated as a user would (power iteration), not read off H.
        lam = float(power_iteration(hvp, (torch.ones_like(wb),), steps=100))
        alphas.append(1.0 / lam)

        identity = solve(Identity())
        for k in steps:
            results = {
                "neumann": solve(Neumann(steps=k, alpha=1.0 / lam)),
                "cg": solve(ConjugateGradient(steps=k, tol=0.0)),
                "identity": identity,
            }
            for name, g in results.items():
                cosine[name][d, k - 1] = _cosine(g, exact)
                distance[name][d, k - 1] = float(torch.linalg.vector_norm(g - exact))
            bar.update(1)
    bar.close()

    solvers = {
        name: {
            "cosine_mean": cosine[name].mean(0).tolist(),
            "cosine_std": cosine[name].std(0).tolist() if n_draws > 1 else [0.0] * max_steps,
            "l2_mean": distance[name].mean(0).tolist(),
            "l2_std": distance[name].std(0).tolist() if n_draws > 1 else [0.0] * max_steps,
        }
        for name in names
    }
    at = min(20, max_steps)
    results = {
        "study": "compare-inverse",
        "dataset": "diabetes",
        "model": "linear regression, one weight decay per weight, trained to its exact optimum",
        "n_train": int(data.X_train.shape[0]),
        "n_val": int(data.X_val.shape[0]),
        "n_features": problem.n_features,
        "n_draws": n_draws,
        "log10_decay_range": [low, high],
        "seed": seed,
        "steps": steps,
        "solvers": solvers,
        "hessian_condition_numbers": conditions,
        "neumann_alphas": alphas,
        "steps_for_summary": at,
        f"neumann_cosine_at_{at}_steps": solvers["neumann"]["cosine_mean"][at - 1],
        f"neumann_cosine_at_{at}_steps_median": float(cosine["neumann"][:, at - 1].median()),
        "neumann_cosine_per_draw": cosine["neumann"][:, at - 1].tolist(),
        f"cg_cosine_at_{at}_steps": solvers["cg"]["cosine_mean"][at - 1],
        "identity_cosine": solvers["identity"]["cosine_mean"][0],
        "seconds": time.perf_counter() - started,
    }
    _logger.info("compare-inverse: Neumann cosine at %d steps %.4f", at,
                 results[f"neumann_cosine_at_{at}_steps"])
    if out is not None:
        from optuna_ift.plots import plot_inverse_comparison

        out = Path(out)
        write_results(out, results)
        plot_inverse_comparison(results, out / "compare_inverse.png")
    return results
