"""Implicit hypergradients (Algorithm 2 of Lorraine, Vicol & Duvenaud, 2020).

With weights ``w`` at (or near) a minimum of the training loss ``L_T(lambda, w)``, the implicit
function theorem gives the derivative of the validation loss ``L_V(lambda, w*(lambda))``::

    dL_V/dlambda = dL_V/dlambda|direct - (dL_V/dw) H^-1 (d2L_T/dw dlambda),   H = d2L_T/dw dw

computed as three products, never forming a matrix:

1. ``v1 = dL_V/dw`` and the direct term, one backward pass through the validation loss;
2. ``v2 = H^-1 v1`` by a solver (``H`` is symmetric, so ``v1 H^-1 = H^-1 v1``);
3. ``v3 = v2 . d2L_T/dw dlambda``, one vector-Jacobian product.

The graph of ``dL_T/dw`` is built once (``create_graph=True``) and every Hessian-vector product
of step 2 and the mixed product of step 3 run backward through that same graph, so a
hypergradient costs about ``steps + 3`` backward passes and its memory does not grow with
``steps``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from optuna_ift.hypergrad._solvers import HVP, Neumann, Solver, check_solver

__all__ = ["as_tensors", "check_scalar", "grad_keeping_graph", "hypergradient", "lazy_hvp",
           "reduced_hvp", "train_gradient_hvp", "vjp_through"]


def as_tensors(name: str, tensors: Sequence[Tensor] | Tensor, *, need_grad: bool = True
               ) -> tuple[Tensor, ...]:
    """``tensors`` as a non-empty tuple of tensors (that require grad, if ``need_grad``)."""
    if isinstance(tensors, Tensor):
        tensors = (tensors,)
    tensors = tuple(tensors)
    if not tensors:
        raise ValueError(f"{name} must hold at least one tensor, got none")
    for k, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{k}] must be a torch.Tensor, got {type(t).__name__}")
        if need_grad and not t.requires_grad:
            raise ValueError(
                f"{name}[{k}] does not require grad; every tensor in {name} must be a leaf or "
                "intermediate that the losses were computed from with requires_grad=True"
            )
    return tensors


def check_scalar(name: str, loss: object) -> Tensor:
    if not isinstance(loss, Tensor):
        raise TypeError(f"{name} must be a scalar torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"{name} must be a scalar tensor, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError(f"{name} has no graph: compute it from the weights with grad enabled")
    return loss.reshape(())


def grad_keeping_graph(outputs, inputs, grad_outputs=None) -> tuple[Tensor, ...]:
    """``torch.autograd.grad`` that keeps the graph and gives zeros for unreached inputs."""
    return torch.autograd.grad(
        outputs,
        inputs,
        grad_outputs=grad_outputs,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )


def train_gradient_hvp(
    train_loss: Tensor, params: Sequence[Tensor]
) -> tuple[tuple[Tensor, ...], HVP]:
    """Build the graph of ``dL_T/dw`` once and a Hessian-vector product that reuses it.

    The HVP also has ``hvp.batched(vs)``: ``H`` times each of a batch of vectors (every tensor
    of ``vs`` with a leading batch dimension) in one backward pass, vectorised by
    ``torch.autograd.grad(is_grads_batched=True)`` (``torch.func.vmap``); it falls back to one
    product at a time where vmap has no batching rule.

    Returns:
        ``(gradient, hvp)``: the training gradient (with its graph) and ``hvp(v) = H v``.
    """
    params = tuple(params)
    gradient = torch.autograd.grad(
        train_loss, params, create_graph=True, allow_unused=True, materialize_grads=True
    )

    def hvp(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return vjp_through(gradient, v, params)

    hvp.batched = (  # type: ignore[attr-defined]
        lambda vs: _batched_vjp(gradient, vs, params, hvp))
    return gradient, hvp


def lazy_hvp(loss: Tensor, params: Sequence[Tensor]) -> HVP:
    """:func:`train_gradient_hvp`'s HVP (``batched`` included), with the graph of
    ``dloss/dw`` built at the first product only: a solver that needs no product (a fresh
    :class:`~optuna_ift.hypergrad.Nystrom` sketch) costs no backward pass."""
    params = tuple(params)
    built: list[HVP] = []

    def get() -> HVP:
        if not built:
            built.append(train_gradient_hvp(loss, params)[1])
        return built[0]

    def hvp(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return get()(v)

    hvp.batched = lambda vs: get().batched(vs)  # type: ignore[attr-defined]
    return hvp


def reduced_hvp(hvp: HVP, reduce: Callable[[tuple[Tensor, ...]], Sequence[Tensor]]) -> HVP:
    """``hvp`` followed by ``reduce`` (data-parallel mean), keeping ``batched``."""
    def reduced(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(reduce(tuple(hvp(v))))

    many = getattr(hvp, "batched", None)
    if many is not None:
        reduced.batched = lambda vs: tuple(reduce(tuple(many(vs))))  # type: ignore[attr-defined]
    return reduced


def vjp_through(gradient: tuple[Tensor, ...], v: Sequence[Tensor], inputs: tuple[Tensor, ...]
                ) -> tuple[Tensor, ...]:
    """``v . d(gradient)/d(inputs)`` through the graph of ``gradient``, keeping it (the HVP
    when ``inputs`` are the weights, the mixed product when they are the hyperparameters)."""
    # Entries without a graph are constant in everything: their products are zero.
    live = [k for k, g in enumerate(gradient) if g.requires_grad]
    if not live:
        return tuple(torch.zeros_like(x) for x in inputs)
    return grad_keeping_graph([gradient[k] for k in live], inputs, [v[k].detach() for k in live])


def _batched_vjp(gradient: tuple[Tensor, ...], vs: Sequence[Tensor],
                 inputs: tuple[Tensor, ...], one: HVP) -> tuple[Tensor, ...]:
    """:func:`vjp_through` for a batch of vectors (leading dimension) in one vectorised backward."""
    live = [k for k, g in enumerate(gradient) if g.requires_grad]
    count = vs[0].shape[0]
    if not live:
        return tuple(x.new_zeros((count, *x.shape)) for x in inputs)
    try:
        with warnings.catch_warnings():  # "performance drop" warnings of vmap fallbacks
            warnings.simplefilter("ignore", UserWarning)
            return torch.autograd.grad([gradient[k] for k in live], inputs,
                                       [vs[k].detach() for k in live], retain_graph=True,
                                       allow_unused=True, materialize_grads=True,
                                       is_grads_batched=True)
    except RuntimeError:  # an operator without a batching rule: one product at a time
        columns = [one(tuple(v[j] for v in vs)) for j in range(count)]
        return tuple(torch.stack(parts) for parts in zip(*columns))


def hypergradient(
    val_loss: Tensor,
    train_loss: Tensor,
    params: Sequence[Tensor],
    hparams: Sequence[Tensor],
    *,
    solver: Solver = Neumann(),  # noqa: B008 (frozen, immutable)
    reduce: Callable[[tuple[Tensor, ...]], Sequence[Tensor]] | None = None,
    curvature_loss: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """The implicit hypergradient ``dL_V/dlambda`` at the current weights.

    The losses are plain tensors with their graphs, so any model works (buffers, BatchNorm,
    dropout): compute them as you would for training, then call this. The graphs are kept,
    so the losses can still be backpropagated afterwards.

    Args:
        val_loss: Scalar validation loss, computed from ``params`` (and maybe ``hparams``).
        train_loss: Scalar training loss, computed from ``params`` and ``hparams``; ``params``
            should be near its minimum for the implicit function theorem to hold.
        params: The weights ``w`` (tensors requiring grad).
        hparams: The hyperparameters ``lambda`` (tensors requiring grad).
        solver: An inverse-HVP solver called as ``solver(hvp, v)``; default
            ``Neumann(steps=10, alpha="auto")``. Solvers are frozen, so the default is safe.
        reduce: For data-parallel training: ``reduce(tensors) -> tensors``, the mean of each
            tensor over the processes (an all-reduce). The validation gradient and direct
            term, every Hessian-vector product and the mixed product are reduced, so each
            process gets the hypergradient of the losses averaged over processes.
        curvature_loss: The loss whose Hessian the solver inverts, when it is not
            ``train_loss``: typically the training loss on a sub-batch of the training batch
            (curvature is smoother than gradients, so fewer examples do). Its graph of
            ``dL/dw`` is built at the solver's first HVP only. The mixed product stays on
            ``train_loss``.

    Returns:
        A tuple of detached tensors shaped like ``hparams``. A hyperparameter that reaches
        neither loss gets zeros.

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> log_decay = torch.zeros(3, requires_grad=True)
        >>> train = ((X @ w - y) ** 2).mean() + (log_decay.exp() * w**2).sum()
        >>> val = ((Xv @ w - yv) ** 2).mean()
        >>> (g,) = hypergradient(val, train, [w], [log_decay], solver=ConjugateGradient(steps=3))
    """
    val_loss = check_scalar("val_loss", val_loss)
    train_loss = check_scalar("train_loss", train_loss)
    params = as_tensors("params", params)
    hparams = as_tensors("hparams", hparams)
    solver = check_solver("solver", solver)

    both = grad_keeping_graph(val_loss, params + hparams)
    if reduce is not None:
        both = tuple(reduce(tuple(both)))
    v1, direct = both[: len(params)], both[len(params):]

    gradient, local_hvp = train_gradient_hvp(train_loss, params)
    if curvature_loss is not None:
        local_hvp = lazy_hvp(check_scalar("curvature_loss", curvature_loss), params)
    hvp = local_hvp if reduce is None else reduced_hvp(local_hvp, reduce)
    v2 = tuple(solver(hvp, v1))
    if len(v2) != len(params):
        raise ValueError(f"solver returned {len(v2)} tensors for {len(params)} weights")

    mixed = vjp_through(gradient, v2, hparams)
    if reduce is not None:
        mixed = tuple(reduce(tuple(mixed)))
    return tuple((d - m).detach() for d, m in zip(direct, mixed))
