"""Hessian-vector products and mixed products from loss *functions*, three ways.

:func:`~optuna_ift.hypergradient` takes loss tensors and differentiates their graphs twice
(reverse over reverse). With the loss as a function of the weights, two more ways open:

- ``"forward"``: forward over reverse, ``torch.func.jvp`` of ``torch.func.grad``: one
  forward-mode pass through the backward pass, no graph of the gradient kept. It needs a loss
  that ``torch.func`` can transform (``torch.func.functional_call`` of a module). Some modules
  have been seen to give a wrong forward-over-reverse product (``torch.func.hessian`` through
  ``functional_call`` of a CNN with BatchNorm in train mode, torch 2.14): so the first product
  is checked against reverse over reverse and the mode is refused, with a ``ValueError``,
  where they disagree (``verify=True``, the default).
- ``"finite_difference"``: a first-order mode that needs no second derivative at all, for
  fused kernels without double backward and for low precision: ``H v ~= (g(w + h v) -
  g(w - h v)) / 2h`` with ``g`` the gradient (two gradient evaluations, central) or
  ``(g(w + h v) - g(w)) / h`` (one, forward, with ``g(w)`` computed once). The step ``h`` is
  chosen for the dtype: ``eps ** (1/3)`` (central) or ``eps ** (1/2)`` (forward) times
  ``(1 + ||w||) / ||v||``, the step that balances rounding and truncation errors.
  The mixed product ``v . d2L_T/dw dlambda`` is the same difference of ``dL_T/dlambda`` (as in
  SAMA, Choe et al., 2023).

Every evaluation of a loss function inside one product runs with the same random state, so a
loss with dropout is the same function at ``w + h v`` and at ``w - h v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from optuna_ift._validation import check_bool, check_callable, check_choice
from optuna_ift.hypergrad import _tensors as T
from optuna_ift.hypergrad._hypergradient import (
    as_tensors,
    check_scalar,
    grad_keeping_graph,
    hypergradient,
    reduced_hvp,
    train_gradient_hvp,
    vjp_through,
)
from optuna_ift.hypergrad._solvers import HVP, Neumann, Solver, check_solver

__all__ = ["HVP_MODES", "MIXED_MODES", "finite_difference_step", "functional_hvp",
           "functional_hypergradient"]

HVP_MODES = ("reverse", "forward", "finite_difference")
MIXED_MODES = ("reverse", "finite_difference")

WeightLoss = Callable[[tuple[Tensor, ...]], Tensor]
PairLoss = Callable[[tuple[Tensor, ...], tuple[Tensor, ...]], Tensor]


def finite_difference_step(dtype: torch.dtype, *, central: bool = True) -> float:
    """The relative step of a finite difference of gradients in ``dtype``: ``eps ** (1/3)``
    for a central difference, ``eps ** (1/2)`` for a forward one (``eps`` the machine epsilon
    of ``dtype``: 4.9e-3 / 3.5e-4 in float32, 6.1e-6 / 1.5e-8 in float64, 0.1 / 0.031 in
    float16)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    eps = torch.finfo(dtype).eps
    return eps ** (1.0 / 3.0) if check_bool("central", central) else math.sqrt(eps)


class _SameRandomness:
    """Calls that all start from the random state of the moment this object was made."""

    def __init__(self, like: Tensor) -> None:
        self.devices = [like.device] if like.device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    def __call__(self, fn: Callable[..., Tensor], *args) -> Tensor:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            return fn(*args)


def _step(base: Sequence[Tensor], v: Sequence[Tensor], central: bool) -> float | None:
    """The absolute step ``h`` along ``v`` from ``base``; ``None`` when ``v`` is zero."""
    size_v = float(T.norm(v))
    if not (size_v > 0 and math.isfinite(size_v)):
        return None
    relative = finite_difference_step(v[0].dtype, central=central)
    return relative * (1.0 + float(T.norm(base))) / size_v


def _gradient_at(fn: PairLoss, point: tuple[Tensor, ...], other: tuple[Tensor, ...],
                 wrt_first: bool, same: _SameRandomness) -> tuple[Tensor, ...]:
    """The gradient of ``fn(first, second)`` w.r.t. ``point`` (first or second argument)."""
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_() for t in point)
        args = (leaves, other) if wrt_first else (other, leaves)
        loss = check_scalar("loss function", same(fn, *args))
        return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


def _difference(fn: PairLoss, w: tuple[Tensor, ...], lam: tuple[Tensor, ...],
                v: tuple[Tensor, ...], *, wrt_weights: bool, central: bool,
                same: _SameRandomness, at_w: tuple[Tensor, ...] | None = None
                ) -> tuple[Tensor, ...]:
    """``(g(w + h v) - g(w - h v)) / 2h`` (or the forward difference) with ``g`` the gradient of
    ``fn`` w.r.t. the weights (``wrt_weights``) or the hyperparameters."""
    target = w if wrt_weights else lam
    h = _step(w, v, central)
    if h is None:
        return tuple(torch.zeros_like(t) for t in target)
    lam = tuple(t.detach() for t in lam)

    def grad(weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if wrt_weights:
            return _gradient_at(fn, weights, lam, True, same)
        return _gradient_at(fn, lam, weights, False, same)

    plus = grad(tuple(a.detach() + h * b for a, b in zip(w, v)))
    if central:
        minus = grad(tuple(a.detach() - h * b for a, b in zip(w, v)))
        return tuple((p - m) / (2 * h) for p, m in zip(plus, minus))
    base = grad(tuple(a.detach() for a in w)) if at_w is None else at_w
    return tuple((p - b) / h for p, b in zip(plus, base))


def _agree(a: Sequence[Tensor], b: Sequence[Tensor], tol: float) -> tuple[bool, int, float]:
    """Whether every tensor of ``a`` is within ``tol`` of ``b`` relative to its own size
    (floored at ``1e-3`` of the whole), the first offender and its error."""
    whole = float(T.norm(b))
    for k, (x, y) in enumerate(zip(a, b)):
        scale = max(float(torch.linalg.vector_norm(y)), 1e-3 * whole, 1e-30)
        error = float(torch.linalg.vector_norm(x - y)) / scale
        if not error <= tol:
            return False, k, error
    return True, -1, 0.0


def functional_hvp(loss_fn: WeightLoss, params: Sequence[Tensor], *, mode: str = "reverse",
                   central: bool = True, verify: bool = True) -> HVP:
    """A Hessian-vector product of ``loss_fn`` at ``params``, by ``mode``.

    Args:
        loss_fn: ``loss_fn(weights) -> scalar``, weights a tuple shaped like ``params``. For
            ``mode="forward"`` it must be transformable by ``torch.func`` (e.g. a
            ``torch.func.functional_call`` of a module); it must not change state that a
            second call would see (BatchNorm running statistics: pass buffers as copies).
        params: The weights at which the Hessian is taken.
        mode: ``"reverse"`` (the graph of the gradient built once, one backward per product),
            ``"forward"`` (``jvp`` of ``grad``) or ``"finite_difference"`` (differences of
            gradients, no second derivative).
        central: Finite differences: central (two gradients per product, error ``O(h**2)``)
            or forward (one, error ``O(h)``).
        verify: ``"forward"`` only: check the first product against reverse over reverse and
            refuse the mode (``ValueError``) where they disagree.

    Returns:
        ``hvp(v) -> H v`` (detached tensors shaped like ``params``).
    """
    check_callable("loss_fn", loss_fn, "loss_fn(weights)")
    check_choice("mode", mode, HVP_MODES)
    check_bool("central", central)
    check_bool("verify", verify)
    primals = tuple(p.detach() for p in params)
    if not primals:
        raise ValueError("params must hold at least one tensor, got none")
    same = _SameRandomness(primals[0])

    if mode == "reverse":
        with torch.enable_grad():
            leaves = tuple(p.clone().requires_grad_() for p in primals)
            _, graph_hvp = train_gradient_hvp(check_scalar("loss_fn(weights)",
                                                           same(loss_fn, leaves)), leaves)

        def reverse(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(t.detach() for t in graph_hvp(v))

        reverse.batched = graph_hvp.batched  # type: ignore[attr-defined]
        return reverse

    if mode == "finite_difference":
        pair = _as_pair(loss_fn)
        at_w = None if central else _gradient_at(pair, primals, (), True, same)

        def difference(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return _difference(pair, primals, (), tuple(t.detach() for t in v),
                               wrt_weights=True, central=central, same=same, at_w=at_w)

        return difference

    def scalar(weights: tuple[Tensor, ...]) -> Tensor:
        return loss_fn(weights).reshape(())

    gradient = torch.func.grad(scalar)

    def forward(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        tangents = tuple(t.detach().to(p.dtype) for t, p in zip(v, primals))
        try:
            _, product = same(torch.func.jvp, gradient, (primals,), (tangents,))
        except RuntimeError as error:  # e.g. an in-place update of a captured buffer
            raise ValueError(f"mode='forward' cannot transform this loss with torch.func "
                             f"({error}); pass buffers as copies through "
                             "torch.func.functional_call, or use mode='reverse' or "
                             "'finite_difference'") from error
        return tuple(product)

    if not verify:
        return forward
    checked: list[bool] = []
    reference = functional_hvp(loss_fn, primals, mode="reverse")

    def verified(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        result = forward(v)
        if not checked:
            ok, k, error = _agree(result, reference(v), 1e3 * torch.finfo(primals[0].dtype).eps
                                  ** 0.5)
            if not ok:
                raise ValueError(
                    f"mode='forward' (forward-over-reverse) disagrees with reverse over "
                    f"reverse on this loss: tensor {k} of params is off by {error:.2g} "
                    "relative (seen with BatchNorm in train mode through functional_call); "
                    "use mode='reverse' or 'finite_difference'")
            checked.append(True)
        return result

    return verified


def _as_pair(loss_fn: WeightLoss) -> PairLoss:
    return lambda weights, _unused: loss_fn(weights)


def functional_hypergradient(
    val_fn: PairLoss,
    train_fn: PairLoss,
    params: Sequence[Tensor],
    hparams: Sequence[Tensor],
    *,
    solver: Solver = Neumann(),  # noqa: B008 (frozen, immutable)
    hvp: str = "reverse",
    mixed: str = "reverse",
    curvature_fn: PairLoss | None = None,
    central: bool = True,
    reduce: Callable[[tuple[Tensor, ...]], Sequence[Tensor]] | None = None,
) -> tuple[Tensor, ...]:
    """The implicit hypergradient from loss functions, with a choice of how products are made.

    The same quantity as :func:`~optuna_ift.hypergradient`, whose loss tensors become
    functions ``fn(weights, hyperparameters) -> scalar`` so that they can be evaluated again at
    shifted weights (finite differences) or transformed (forward mode).

    Args:
        val_fn: ``val_fn(weights, hyperparameters) -> scalar`` validation loss.
        train_fn: ``train_fn(weights, hyperparameters) -> scalar`` training loss.
        params: The weights ``w`` (tensors).
        hparams: The hyperparameters ``lambda`` (tensors).
        solver: The inverse-HVP solver, ``solver(hvp, v)``.
        hvp: How HVPs are made: ``"reverse"``, ``"forward"`` or ``"finite_difference"`` (see
            :func:`functional_hvp`).
        mixed: How the mixed product ``v . d2L_T/dw dlambda`` is made: ``"reverse"`` (one
            backward through the graph of ``dL_T/dw``) or ``"finite_difference"`` (a difference
            of ``dL_T/dlambda`` at ``w +- h v``: no second derivative).
        curvature_fn: The loss whose Hessian is inverted (e.g. the training loss on a
            sub-batch); default ``train_fn``.
        central: Finite differences central (default) or forward.
        reduce: Data-parallel mean over processes (see :func:`~optuna_ift.hypergradient`).

    Returns:
        Detached tensors shaped like ``hparams``.
    """
    check_callable("val_fn", val_fn, "val_fn(weights, hyperparameters)")
    check_callable("train_fn", train_fn, "train_fn(weights, hyperparameters)")
    if curvature_fn is not None:
        check_callable("curvature_fn", curvature_fn, "curvature_fn(weights, hyperparameters)")
    check_choice("hvp", hvp, HVP_MODES)
    check_choice("mixed", mixed, MIXED_MODES)
    solver = check_solver("solver", solver)
    params = tuple(p.detach() for p in as_tensors("params", params, need_grad=False))
    hparams = tuple(h.detach() for h in as_tensors("hparams", hparams, need_grad=False))
    same = _SameRandomness(params[0])

    with torch.enable_grad():
        w = tuple(p.clone().requires_grad_() for p in params)
        lam = tuple(h.clone().requires_grad_() for h in hparams)
        if hvp == "reverse" and mixed == "reverse" and curvature_fn is None:
            return hypergradient(same(val_fn, w, lam), same(train_fn, w, lam), w, lam,
                                 solver=solver, reduce=reduce)
        both = grad_keeping_graph(check_scalar("val_fn(...)", same(val_fn, w, lam)), w + lam)
    if reduce is not None:
        both = tuple(reduce(tuple(both)))
    v1 = tuple(t.detach() for t in both[: len(w)])
    direct = tuple(t.detach() for t in both[len(w):])

    curvature = train_fn if curvature_fn is None else curvature_fn
    local = functional_hvp(lambda weights: curvature(weights, hparams), params, mode=hvp,
                           central=central)
    product = local if reduce is None else reduced_hvp(local, reduce)
    v2 = tuple(t.detach() for t in solver(product, v1))
    if len(v2) != len(params):
        raise ValueError(f"solver returned {len(v2)} tensors for {len(params)} weights")

    if mixed == "reverse":
        with torch.enable_grad():
            loss = check_scalar("train_fn(...)", same(train_fn, w, lam))
            gradient = torch.autograd.grad(loss, w, create_graph=True, allow_unused=True,
                                           materialize_grads=True)
            products = vjp_through(gradient, v2, lam)
    else:
        products = _difference(train_fn, params, hparams, v2, wrt_weights=False,
                               central=central, same=same)
    if reduce is not None:
        products = tuple(reduce(tuple(products)))
    return tuple((d - m).detach() for d, m in zip(direct, products))
