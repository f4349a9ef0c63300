"""Inverse-Hessian-vector-product solvers.

Every solver is a small frozen dataclass called as ``solver(hvp, v) -> x`` with ``x ~= H^-1 v``,
where ``hvp`` maps a tuple of tensors (shaped like the weights) to ``H`` times it. A solver sees
the Hessian only through ``hvp``, so the same solver serves a linear model and a ResNet, on any
device and in any dtype. To add a solver, write another dataclass with the same call.

Cost, counted in Hessian-vector products (HVPs, each about one gradient evaluation):

==========================  =====================  =========================================
solver                      HVPs                   use it when
==========================  =====================  =========================================
``Identity()``              0                      speed matters most (the T1-T2 approximation)
``Neumann(steps, alpha)``   ``steps``              the default: stable, cheap, memory flat
``ConjugateGradient(...)``  ``<= steps``           the Hessian is positive definite and
                                                   accuracy per HVP matters
``Exact()``                 one per weight         tests and tiny problems (dense solve)
==========================  =====================  =========================================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from optuna_ift._validation import ArgumentKindError
from optuna_ift._validation import check_callable as _check_callable
from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift.hypergrad import _tensors as T

HVP = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]
Solver = Callable[[HVP, tuple[Tensor, ...]], tuple[Tensor, ...]]

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
    "divergence_caught",
    "power_iteration",
]


class NeumannDivergenceWarning(RuntimeWarning):
    """A Neumann series whose terms grew was cut off before the growth."""


class NonPositiveCurvatureWarning(RuntimeWarning):
    """Conjugate gradient met a direction of zero or negative curvature and stopped there."""


def check_solver(name: str, solver: object) -> Solver:
    """``solver``, if it is a solver instance callable as ``solver(hvp, v)``.

    A class (``Neumann`` rather than ``Neumann()``) is callable too, but calling it builds a
    solver instead of solving; it is refused with the advice to call it.
    """
    if isinstance(solver, type):
        raise ArgumentKindError(
            f"{name} is the class {solver.__name__}, not a solver: call it, e.g. "
            f"{name}={solver.__name__}()"
        )
    if not callable(solver):
        raise ArgumentKindError(
            f"{name} must be a solver(hvp, v) such as Neumann(), ConjugateGradient(), "
            f"Identity() or Exact(), got {type(solver).__name__} {solver!r:.40}")
    return solver


def check_alpha(name: str, value: object) -> float | Literal["auto"]:
    """``"auto"``, or ``value`` as a ``float`` if it is a finite number > 0 (NumPy's included)."""
    if isinstance(value, str) and value == "auto":
        return "auto"
    try:
        return _check_positive(name, value)
    except ValueError as error:  # ArgumentKindError included: keep its kind, say all allowed
        raise type(error)(
            f"{name} must be 'auto' or a finite number > 0, got {type(value).__name__} "
            f"{value!r:.60}"
        ) from None


def _rounding_slack(v: tuple[Tensor, ...]) -> float:
    """A relative change below this is rounding, not growth, in the dtype of ``v``."""
    return math.sqrt(torch.finfo(v[0].dtype).eps)


def divergence_caught(solve: Callable[[], tuple[Tensor, ...]]
                      ) -> tuple[tuple[Tensor, ...], bool]:
    """``(solve(), diverged)``: a :class:`NeumannDivergenceWarning` raised inside is held back
    and reported as ``diverged`` (so the caller can warn with advice that fits it); every
    other warning is shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solve()
    diverged = False
    for w in caught:
        if issubclass(w.category, NeumannDivergenceWarning):
            diverged = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, diverged


def power_iteration(hvp: HVP, v: tuple[Tensor, ...], *, steps: int = 5) -> Tensor:
    """Estimate the largest eigenvalue magnitude of ``H`` seen from ``v``.

    Runs ``steps`` power iterations started at ``v`` itself, so the estimate is the top of the
    spectrum restricted to the Krylov space of ``v``: exactly the part a Neumann series started
    at ``v`` has to converge on. Needs no random numbers.

    Args:
        hvp: The Hessian-vector product.
        v: The start vector (a tuple of tensors); it must not be zero.
        steps: How many HVPs to spend.

    Returns:
        A 0-dim tensor, ``||H u|| / ||u||`` at the last iterate ``u``.

    Raises:
        ValueError: ``v`` is zero (it has no direction to iterate on). Checking costs one
            host synchronisation; a non-finite ``v`` gives a non-finite estimate.
    """
    _check_callable("hvp", hvp, "hvp(v)")
    steps = _check_int("steps", steps, 1)
    v = tuple(v)
    if float(T.norm(v)) == 0.0:
        raise ValueError("v must be a non-zero start vector, got all zeros: power iteration "
                         "needs a direction to start from")
    return _power_iteration(hvp, v, steps)


def _power_iteration(hvp: HVP, v: tuple[Tensor, ...], steps: int) -> Tensor:
    """:func:`power_iteration` unchecked: a zero ``v`` gives NaN, for callers that handle it."""
    u = T.scale(v, 1.0 / T.norm(v))
    estimate = u[0].new_zeros(())
    for _ in range(steps):
        hu = hvp(u)
        estimate = T.norm(hu)
        u = T.scale(hu, 1.0 / estimate)
    return estimate


@dataclass(frozen=True)
class Identity:
    """Approximate ``H^-1`` by the identity: zero HVPs.

    With it the hypergradient is the T1-T2 approximation of Luketina et al. (2016), the
    cheapest and the roughest (the paper's ``i = 0``).
    """

    def __call__(self, hvp: HVP, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(v)


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series (Algorithm 3): ``H^-1 v ~= alpha sum_{j<=steps} (I - alpha H)^j v``.

    The series converges when ``0 < alpha * eigenvalue < 2`` for every eigenvalue of ``H`` that
    ``v`` touches; then the error falls geometrically with ``steps``. If a term grows, the Hessian
    is not positive definite along ``v`` or ``alpha`` is too large: the series is cut off before
    the first growing term and a :class:`NeumannDivergenceWarning` says so, never returning a
    blown-up sum. The loop never synchronises with the device; the check is made once at the end.

    Args:
        steps: Number of HVPs (the paper's ``i``); ``0`` gives ``alpha * v``.
        alpha: The step of the series, or ``"auto"``: ``1 / lambda_max`` from
            :func:`power_iteration`, at the price of ``power_steps`` more HVPs per call.
        power_steps: HVPs spent on the estimate when ``alpha="auto"``.
    """

    steps: int = 10
    alpha: float | Literal["auto"] = "auto"
    power_steps: int = 5

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 0)
        _check_int("power_steps", self.power_steps, 1)
        check_alpha("alpha", self.alpha)

    def __call__(self, hvp: HVP, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        v = tuple(v)
        if self.alpha == "auto":
            # Unchecked: a zero v gives NaN here, and the fallback below handles it.
            lam = float(_power_iteration(hvp, v, self.power_steps))
            if not (math.isfinite(lam) and lam > 0.0):
                warnings.warn(
                    f"Neumann(alpha='auto') estimated a top eigenvalue of {lam!r}; the "
                    "Hessian is zero or not finite along v, so the identity was used instead.",
                    NeumannDivergenceWarning,
                    stacklevel=2,
                )
                return v
            alpha = 1.0 / lam
        else:
            alpha = float(self.alpha)

        # Four weight-sized buffers live at any step (v, the sum, the term, one HVP), updated in
        # place, so the peak memory is the same for every number of steps. Growth is tracked
        # on the device and checked once at the end: the loop never waits for the device.
        slack = 1.0 + _rounding_slack(v)
        total = [t.clone() for t in v]
        term = [t.clone() for t in v]
        previous = T.norm(term)
        stopped = torch.zeros((), dtype=torch.bool, device=v[0].device)
        cut_at = torch.full((), self.steps + 1, device=v[0].device)
        for j in range(1, self.steps + 1):
            torch._foreach_add_(term, hvp(tuple(term)), alpha=-alpha)
            size = T.norm(term)
            grew = ~(size <= previous * slack)  # also true for NaN and infinity
            cut_at = torch.where(grew & ~stopped, j, cut_at)
            stopped = stopped | grew
            for t in term:  # once stopped, the term is zero from here on, NaN-free
                t.masked_fill_(stopped, 0.0)
            torch._foreach_add_(total, term)
            previous = size
        if bool(stopped):
            j = int(cut_at)
            warnings.warn(
                f"Neumann series diverged: its term {j} of {self.steps} grew, so alpha times an "
                "eigenvalue of the Hessian is above 2 or the Hessian is not positive definite. "
                f"Returned the sum of the first {j} terms. Lower alpha (now {alpha:.3g}), use "
                "alpha='auto', or add curvature (weight decay).",
                NeumannDivergenceWarning,
                stacklevel=2,
            )
        torch._foreach_mul_(total, alpha)
        return tuple(total)


@dataclass(frozen=True)
class ConjugateGradient:
    """Conjugate gradient on ``H x = v``, started at zero.

    Stops after ``steps`` HVPs or when ``||H x - v|| <= tol * ||v||`` (``tol`` is raised to ten
    rounding errors of the dtype, below which the residual is noise). CG needs a positive
    definite Hessian: on a direction of zero or negative curvature it stops, warns with
    :class:`NonPositiveCurvatureWarning` and returns the last iterate (zero if that was the first
    direction), rather than a step along a direction of no meaning.

    Args:
        steps: Most HVPs to spend.
        tol: Relative residual at which to stop.
    """

    steps: int = 10
    tol: float = 1e-10

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_positive("tol", self.tol, allow_zero=True)

    def __call__(self, hvp: HVP, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        v = tuple(v)
        x = [torch.zeros_like(t) for t in v]
        r = [t.clone() for t in v]
        p = [t.clone() for t in v]
        rr = float(T.dot(r, r))
        if not math.isfinite(rr):
            return v  # non-finite in, non-finite out: the caller must see it, not a zero
        # Below a few rounding errors the residual is noise, whatever tol asks for.
        tol = max(float(self.tol), 10 * torch.finfo(v[0].dtype).eps)
        stop = tol**2 * rr
        for k in range(self.steps):
            if rr <= stop:
                break
            hp = hvp(tuple(p))
            curvature = float(T.dot(p, hp))
            if not curvature > 0.0:
                reason = (f"non-positive curvature p'Hp = {curvature:.3g}"
                          if math.isfinite(curvature) else "a non-finite Hessian-vector product")
                warnings.warn(
                    f"ConjugateGradient met {reason} at step {k + 1}: the Hessian is not "
                    f"positive definite here. Returned the iterate of step {k}. Use Neumann, "
                    "or add curvature (weight decay).",
                    NonPositiveCurvatureWarning,
                    stacklevel=2,
                )
                break
            step = rr / curvature
            torch._foreach_add_(x, p, alpha=step)
            torch._foreach_add_(r, hp, alpha=-step)
            rr_new = float(T.dot(r, r))
            torch._foreach_mul_(p, rr_new / rr)
            torch._foreach_add_(p, r)
            rr = rr_new
        return tuple(x)


@dataclass(frozen=True)
class Exact:
    """Build the dense Hessian (one HVP per weight) and solve ``H x = v`` directly.

    For tests and tiny problems: it costs ``n`` HVPs and ``n**2`` numbers of memory.

    Args:
        max_size: Refuse problems with more weights than this.
    """

    max_size: int = 5000

    def __post_init__(self) -> None:
        _check_int("max_size", self.max_size, 1)

    def __call__(self, hvp: HVP, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        v = tuple(v)
        n = T.size(v)
        if n > self.max_size:
            raise ValueError(
                f"Exact() builds an n x n Hessian and n = {n} weights exceeds max_size = "
                f"{self.max_size}; use Neumann or ConjugateGradient, or raise max_size."
            )
        flat_v = T.flatten(v)
        eye = torch.eye(n, dtype=flat_v.dtype, device=flat_v.device)
        columns = [T.flatten(hvp(T.unflatten(eye[k], v))) for k in range(n)]
        hessian = torch.stack(columns, dim=1)
        solution, info = torch.linalg.solve_ex(hessian, flat_v)
        if int(info) != 0 or not bool(torch.isfinite(solution).all()):
            raise ValueError(
                "Exact() found the Hessian singular; the implicit function theorem needs an "
                "invertible Hessian. Add curvature (weight decay) or use Neumann."
            )
        return T.unflatten(solution, v)
