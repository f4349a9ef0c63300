"""Solvers that carry state from one hyper step to the next.

Between two hyper steps the weights move by a few optimizer steps, so the linear system
``H x = dL_V/dw`` changes little. Three solvers exploit that, each with the usual call
``solver(hvp, v)`` (then it starts cold, as if for the first time) and the stateful call
``solver(hvp, v, state=state)`` with a :class:`SolverState` that the caller keeps (and
checkpoints) between hyper steps:

- :class:`WarmNeumann`: Richardson iteration ``x <- x + alpha (v - H x)`` (the Neumann series
  of :class:`~optuna_ift.hypergrad.Neumann` is the same iteration started at zero) started at
  the previous solution, scaled by the factor that best fits the new system. Over hyper steps
  the iterations add up (the SOBA / AmIGO idea), so a few HVPs per step go as far as many.
- :class:`WarmConjugateGradient`: conjugate gradient started at the previous solution, scaled to
  minimise the energy of the new system (never worse than starting at zero).
- :class:`Nystrom`: a randomized Nystrom approximation ``U diag(s) U'`` of ``H`` built from
  ``rank`` HVPs (one batched call when the HVP offers one) and reused for ``refresh_every``
  hyper steps; between refreshes a solve costs no HVP at all:
  ``x = U diag(1 / (s + rho)) U' v + (v - U U' v) / rho`` (Hataya & Yamada, 2023).

The state holds tensors shaped like the weights (the previous solution) or ``n x rank``
(the sketch) and a few numbers; :meth:`SolverState.state_dict` is what checkpoints store.
Every quantity in it is computed from ``v`` and from HVPs, so in data-parallel training (where
both are averaged over the processes) it is the same on every process.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from optuna_ift._validation import ArgumentKindError, check_bool, check_int, check_positive
from optuna_ift.hypergrad import _tensors as T
from optuna_ift.hypergrad._solvers import (
    HVP,
    ConjugateGradient,
    Neumann,
    NeumannDivergenceWarning,
    Solver,
    check_alpha,
    divergence_caught,
    power_iteration,
)

__all__ = ["Nystrom", "SolverState", "StatefulSolver", "WarmConjugateGradient", "WarmNeumann",
           "is_stateful"]


class SolverState:
    """What a stateful solver remembers between calls; one per run, kept by its caller.

    Attributes:
        solution: The last solution (detached tensors shaped like the weights), or ``None``.
        basis: The Nystrom sketch's orthonormal basis, ``n x r`` (flat weights), or ``None``.
        eigenvalues: The sketch's ``r`` eigenvalues, or ``None``.
        alpha: The cached Neumann step of ``alpha="auto"``, or ``None``.
        age: Calls since the sketch (or ``alpha``) was last made.
        calls: Calls made with this state.
        builds: Sketches (or ``alpha`` estimates) made.
        hvps: Hessian-vector products spent in all.
    """

    _TENSORS = ("solution", "basis", "eigenvalues")
    _NUMBERS = ("alpha", "age", "calls", "builds", "hvps")

    def __init__(self) -> None:
        self.solution: tuple[Tensor, ...] | None = None
        self.basis: Tensor | None = None
        self.eigenvalues: Tensor | None = None
        self.alpha: float | None = None
        self.age = 0
        self.calls = 0
        self.builds = 0
        self.hvps = 0

    def reset(self) -> None:
        """Forget everything: the next call starts cold."""
        self.__init__()

    def state_dict(self) -> dict[str, Any]:
        """Tensors (cloned) and plain numbers, loadable with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {k: getattr(self, k) for k in self._NUMBERS}
        state["solution"] = (None if self.solution is None
                             else [t.detach().clone() for t in self.solution])
        for key in ("basis", "eigenvalues"):
            value = getattr(self, key)
            state[key] = None if value is None else value.detach().clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` gave; tensors go where the next call's ``v`` is."""
        missing = [k for k in (*self._TENSORS, *self._NUMBERS) if k not in state]
        if missing:
            raise ValueError(f"state: not a SolverState state_dict (missing {missing})")
        solution = state["solution"]
        self.solution = None if solution is None else tuple(t.clone() for t in solution)
        self.basis = None if state["basis"] is None else state["basis"].clone()
        self.eigenvalues = (None if state["eigenvalues"] is None
                            else state["eigenvalues"].clone())
        self.alpha = None if state["alpha"] is None else float(state["alpha"])
        for key in ("age", "calls", "builds", "hvps"):
            setattr(self, key, int(state[key]))

    def __repr__(self) -> str:
        sketch = "none" if self.basis is None else f"{tuple(self.basis.shape)}"
        return (f"SolverState(calls={self.calls}, hvps={self.hvps}, builds={self.builds}, "
                f"age={self.age}, alpha={self.alpha}, sketch={sketch}, "
                f"solution={'kept' if self.solution is not None else 'none'})")


class StatefulSolver:
    """Base of the solvers that take ``state=``: ``solver(hvp, v, state=SolverState())``."""

    def new_state(self) -> SolverState:
        """A fresh state for this solver."""
        return SolverState()

    def bind(self, state: SolverState) -> Solver:
        """This solver with ``state`` fixed: a plain ``solver(hvp, v)`` for
        :func:`~optuna_ift.hypergradient` that remembers across calls."""
        _check_state(state)
        return functools.partial(self, state=state)


def is_stateful(solver: object) -> bool:
    """Whether ``solver`` takes a :class:`SolverState` (``solver(hvp, v, state=...)``)."""
    return isinstance(solver, StatefulSolver)


def _check_state(state: object) -> SolverState:
    if state is None:
        return SolverState()
    if not isinstance(state, SolverState):
        raise ArgumentKindError(f"state must be a SolverState or None, got "
                                f"{type(state).__name__}")
    return state


def _counted(hvp: HVP, state: SolverState) -> HVP:
    def counted(u: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        state.hvps += 1
        return hvp(u)
    return counted


def _begin(state: SolverState | None, v: tuple[Tensor, ...], hvp: HVP
           ) -> tuple[SolverState, tuple[Tensor, ...], HVP]:
    """The start of a call: the state checked (a fresh one for ``None``), the call counted and
    the HVP wrapped to count its products."""
    state = _check_state(state)
    state.calls += 1
    return state, tuple(v), _counted(hvp, state)


def _previous(state: SolverState, v: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
    """The kept solution on ``v``'s device and dtype, if it fits ``v``'s shapes."""
    kept = state.solution
    if kept is None or len(kept) != len(v) or any(a.shape != b.shape for a, b in zip(kept, v)):
        return None
    return tuple(a.to(device=b.device, dtype=b.dtype) for a, b in zip(kept, v))


def _keep(state: SolverState, x: tuple[Tensor, ...]) -> None:
    """Keep ``x`` as the next warm start when it is finite; forget it otherwise."""
    finite = bool(torch.stack([torch.isfinite(t).all() for t in x]).all())
    state.solution = tuple(t.detach().clone() for t in x) if finite else None


def _scaled_start(hvp: HVP, v: tuple[Tensor, ...], x0: tuple[Tensor, ...], *, energy: bool
                  ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(c x0, v - c H x0)`` with the scalar ``c`` that minimises the residual norm
    (``energy=False``) or the energy ``x'Hx/2 - v'x`` (``energy=True``) along ``x0``; ``c = 0``
    when ``x0`` meets no positive curvature or anything is not finite. One HVP."""
    hx = hvp(x0)
    if energy:
        num, den = float(T.dot(v, x0)), float(T.dot(x0, hx))
    else:
        num, den = float(T.dot(v, hx)), float(T.dot(hx, hx))
    c = num / den if den > 0 and math.isfinite(num) and math.isfinite(den) else 0.0
    start = tuple(c * t for t in x0)
    residual = tuple(a - c * b for a, b in zip(v, hx))
    return start, residual


@dataclass(frozen=True)
class WarmNeumann(StatefulSolver):
    """Richardson iteration ``x <- x + alpha (v - H x)`` started at the last solution.

    Started at zero, ``steps + 1`` iterations are exactly ``Neumann(steps, alpha)``, and that is
    what the first call (or a call without ``state``) returns. Later calls start at ``c x_prev``,
    the previous solution scaled by the ``c`` that minimises the new residual (one HVP), and
    spend the other ``steps - 1`` HVPs on a Neumann series for the correction, so a call costs
    ``steps`` HVPs and the iterations of successive hyper steps add up. The divergence guard of
    :class:`~optuna_ift.hypergrad.Neumann` applies to the correction.

    Args:
        steps: HVPs per call, >= 1.
        alpha: The step, or ``"auto"``: ``1 / lambda_max`` by :func:`power_iteration` (from
            ``v``), kept in the state and re-estimated every ``alpha_every`` calls and after a
            divergence.
        power_steps: HVPs of an estimate of ``alpha``.
        alpha_every: Calls between two estimates of ``alpha``.
    """

    steps: int = 2
    alpha: float | Literal["auto"] = "auto"
    power_steps: int = 5
    alpha_every: int = 50

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("power_steps", self.power_steps, 1)
        check_int("alpha_every", self.alpha_every, 1)
        check_alpha("alpha", self.alpha)

    def _alpha(self, hvp: HVP, v: tuple[Tensor, ...], state: SolverState) -> float | None:
        if self.alpha != "auto":
            return float(self.alpha)
        if state.alpha is None or state.age >= self.alpha_every:
            try:
                lam = float(power_iteration(hvp, v, steps=self.power_steps))
            except ValueError:  # v is zero
                return state.alpha
            state.age = 0
            state.builds += 1
            state.alpha = 1.0 / lam if math.isfinite(lam) and lam > 0 else None
        return state.alpha

    def __call__(self, hvp: HVP, v: tuple[Tensor, ...], *, state: SolverState | None = None
                 ) -> tuple[Tensor, ...]:
        state, v, hvp = _begin(state, v, hvp)
        alpha = self._alpha(hvp, v, state)
        state.age += 1
        if alpha is None:
            warnings.warn("WarmNeumann(alpha='auto') found the Hessian zero or not finite "
                          "along v; the identity was used instead.", NeumannDivergenceWarning,
                          stacklevel=2)
            return v
        previous = _previous(state, v)

        def solve() -> tuple[Tensor, ...]:
            if previous is None:
                return Neumann(steps=self.steps, alpha=alpha)(hvp, v)
            start, residual = _scaled_start(hvp, v, previous, energy=False)
            correction = Neumann(steps=self.steps - 1, alpha=alpha)(hvp, residual)
            return tuple(a + b for a, b in zip(start, correction))

        x, diverged = divergence_caught(solve)
        if diverged:
            if self.alpha == "auto":
                state.alpha = None  # stale: estimated afresh next call
            warnings.warn(f"WarmNeumann diverged (alpha={alpha:.3g}): the series was cut off "
                          "where its terms grew and the warm start dropped. Lower alpha, use "
                          "alpha='auto', or add curvature (weight decay).",
                          NeumannDivergenceWarning, stacklevel=2)
            state.solution = None
        else:
            _keep(state, x)
        return x


@dataclass(frozen=True)
class WarmConjugateGradient(StatefulSolver):
    """Conjugate gradient on ``H x = v`` started at the last solution.

    The first call (or a call without ``state``) is ``ConjugateGradient(steps, tol)`` from zero.
    Later calls start at ``c x_prev`` with the ``c`` that minimises the energy of the new system
    along the previous solution (one HVP; ``c = 0`` if it meets no positive curvature, so the
    start is never worse than zero), then run ``steps - 1`` CG iterations on the rest.

    Args:
        steps: Most HVPs per call, >= 1.
        tol: Stop when ``||H x - v|| <= tol ||v||``.
    """

    steps: int = 3
    tol: float = 1e-10

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_positive("tol", self.tol, allow_zero=True)

    def __call__(self, hvp: HVP, v: tuple[Tensor, ...], *, state: SolverState | None = None
                 ) -> tuple[Tensor, ...]:
        state, v, hvp = _begin(state, v, hvp)
        state.age += 1
        previous = _previous(state, v)
        if previous is None:
            x = ConjugateGradient(steps=self.steps, tol=self.tol)(hvp, v)
        else:
            start, residual = _scaled_start(hvp, v, previous, energy=True)
            if self.steps == 1:
                x = start
            else:
                size_v, size_r = float(T.norm(v)), float(T.norm(residual))
                tol = (self.tol * size_v / size_r if size_r > 0 and math.isfinite(size_r)
                       else self.tol)
                correction = ConjugateGradient(steps=self.steps - 1, tol=tol)(hvp, residual)
                x = tuple(a + b for a, b in zip(start, correction))
        _keep(state, x)
        return x


def _batched_products(hvp: HVP, columns: Tensor, like: tuple[Tensor, ...], batched: bool
                      ) -> Tensor:
    """``H`` times each column of ``columns`` (``n x k``), as an ``n x k`` tensor: one batched
    call of ``hvp.batched`` when it exists and ``batched`` is true, else one HVP per column."""
    k = columns.shape[1]
    many = getattr(hvp, "batched", None) if batched else None
    if many is not None:
        stacked = tuple(part.T.reshape(k, *t.shape)
                        for part, t in zip(torch.split(columns, [t.numel() for t in like]), like))
        products = many(stacked)
        return torch.cat([p.reshape(k, -1) for p in products], dim=1).T
    return torch.stack([T.flatten(hvp(T.unflatten(columns[:, j], like))) for j in range(k)],
                       dim=1)


@dataclass(frozen=True)
class Nystrom(StatefulSolver):
    """A randomized Nystrom approximation of ``H``, reused across calls.

    A sketch ``H ~= U diag(s) U'`` (``U`` orthonormal, ``n x r``, ``r <= rank``) is built from
    ``rank`` HVPs on Gaussian test vectors, ``Y = H Omega``: ``H ~= Y (Omega' Y)^+ Y'``, computed
    stably with a small shift (Tropp et al., 2017) and with the non-positive part of the core
    ``Omega' Y`` dropped, so an indefinite Hessian gives the sketch of its positive part.
    Every call then solves the damped system without an HVP::

        x = U diag(1 / (s + rho)) U' v + (v - U U' v) / rho

    The sketch is rebuilt every ``refresh_every`` calls (and when ``v`` changes shape); with a
    :class:`SolverState` it is kept between calls, without one it is built at every call. The
    ``rank`` HVPs of a build run as one batched call (``torch.func.vmap`` over the backward pass,
    via ``torch.autograd.grad(is_grads_batched=True)``) when the HVP offers ``hvp.batched`` and
    ``batched`` is true, else one by one. Test vectors come from a generator seeded with
    ``seed`` and the build count, so every process of a data-parallel run draws the same.

    Args:
        rank: HVPs per sketch (its rank), >= 1; capped at the number of weights.
        rho: The damping (> 0), or ``"auto"``: the smallest sketched eigenvalue, so the
            unsketched directions are treated as if they had that curvature.
        refresh_every: Calls between two sketches.
        batched: Use ``hvp.batched`` when there is one.
        seed: Seed of the test vectors.
    """

    rank: int = 10
    rho: float | Literal["auto"] = "auto"
    refresh_every: int = 10
    batched: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("rank", self.rank, 1)
        check_alpha("rho", self.rho)
        check_int("refresh_every", self.refresh_every, 1)
        check_bool("batched", self.batched)
        check_int("seed", self.seed, 0)

    def sketch(self, hvp: HVP, like: tuple[Tensor, ...], *, build: int = 0
               ) -> tuple[Tensor, Tensor]:
        """``(U, s)`` with ``H ~= U diag(s) U'`` from ``min(rank, n)`` HVPs; ``like`` gives the
        weights' shapes, device and dtype; ``build`` varies the test vectors."""
        like = tuple(like)
        n = T.size(like)
        k = min(self.rank, n)
        dtype, device = like[0].dtype, like[0].device
        generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + build)
        omega = torch.randn(n, k, generator=generator, device=device, dtype=dtype)
        omega = torch.linalg.qr(omega).Q
        y = _batched_products(hvp, omega, like, self.batched)
        if not bool(torch.isfinite(y).all()):
            raise FloatingPointError("Nystrom: a Hessian-vector product of the sketch is not "
                                     "finite")
        shift = math.sqrt(n) * torch.finfo(dtype).eps * float(torch.linalg.matrix_norm(y, 2))
        y = y + shift * omega
        core = omega.T @ y
        core = (core + core.T) / 2
        values, vectors = torch.linalg.eigh(core)
        keep = values > max(float(values.max()), 0.0) * 10 * torch.finfo(dtype).eps
        if not bool(keep.any()):
            return omega[:, :0], values[:0]
        values, vectors = values[keep], vectors[:, keep]
        b = y @ (vectors / values.sqrt())
        u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
        return u, (sigma**2 - shift).clamp_min(0.0)

    def _rho(self, eigenvalues: Tensor) -> float:
        if self.rho != "auto":
            return float(self.rho)
        positive = eigenvalues[eigenvalues > 0]
        return float(positive.min()) if positive.numel() else 1.0

    def __call__(self, hvp: HVP, v: tuple[Tensor, ...], *, state: SolverState | None = None
                 ) -> tuple[Tensor, ...]:
        state = _check_state(state)
        v = tuple(v)
        n = T.size(v)
        stale = (state.basis is None or state.age >= self.refresh_every
                 or state.basis.shape[0] != n)
        if stale:
            counted = _counted(hvp, state)
            if self.batched and getattr(hvp, "batched", None) is not None:
                many = hvp.batched

                def batched(u: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                    state.hvps += u[0].shape[0]
                    return many(u)

                counted.batched = batched  # type: ignore[attr-defined]
            state.basis, state.eigenvalues = self.sketch(counted, v, build=state.builds)
            state.builds += 1
            state.age = 0
        state.calls += 1
        state.age += 1
        # Moved once (a state loaded from a checkpoint is on the CPU), then kept there.
        u = state.basis = state.basis.to(device=v[0].device, dtype=v[0].dtype)
        s = state.eigenvalues = state.eigenvalues.to(device=v[0].device, dtype=v[0].dtype)
        rho = self._rho(s)
        flat = T.flatten(v)
        coefficients = u.T @ flat
        x = u @ (coefficients / (s + rho))
        if u.shape[1] < n:  # the rest of v, outside the sketch (none at full rank: rounding)
            x = x + (flat - u @ coefficients) / rho
        return T.unflatten(x, v)
