"""Hypergradients by differentiating through unrolled SGD (the baseline of the paper's Table 1).

Reverse-mode differentiation through ``steps`` SGD steps keeps every intermediate weight vector
in the graph, so its memory grows linearly with the number of differentiated steps. Truncating
to the last ``truncate`` steps bounds that memory at the price of bias. Started at an optimum
of the training loss, ``steps`` unrolled steps with learning rate ``lr`` give exactly the
implicit hypergradient with ``Neumann(steps=steps - 1, alpha=lr)`` (the paper's Theorem 2),
which tends to the exact one as ``steps`` grows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from optuna_ift._validation import check_callable, check_int, check_positive
from optuna_ift.hypergrad._hypergradient import as_tensors, check_scalar, grad_keeping_graph

__all__ = ["unrolled_hypergradient"]

LossFn = Callable[[tuple[Tensor, ...], tuple[Tensor, ...]], Tensor]


@torch.enable_grad()
def unrolled_hypergradient(
    train_loss_fn: LossFn,
    val_loss_fn: LossFn,
    params: Sequence[Tensor],
    hparams: Sequence[Tensor],
    *,
    steps: int,
    lr: float,
    truncate: int | None = None,
) -> tuple[Tensor, ...]:
    """``dL_V(w_K)/dlambda`` through ``K = steps`` SGD steps ``w <- w - lr dL_T/dw``.

    Args:
        train_loss_fn: ``train_loss_fn(weights, hparams)`` returns the scalar training loss; it
            is called once per step, so a closure that draws a new batch each call unrolls
            stochastic SGD.
        val_loss_fn: ``val_loss_fn(weights, hparams)`` returns the scalar validation loss.
        params: The starting weights; they are not modified.
        hparams: The hyperparameters (tensors requiring grad).
        steps: Number of SGD steps ``K >= 0``.
        lr: The SGD learning rate, ``> 0``.
        truncate: Differentiate through only the last ``truncate`` steps (``1 <= truncate <=
            steps``); the earlier ones run without a graph. ``None`` differentiates through all.

    Returns:
        A tuple of detached tensors shaped like ``hparams``.
    """
    check_callable("train_loss_fn", train_loss_fn, "train_loss_fn(weights, hparams)")
    check_callable("val_loss_fn", val_loss_fn, "val_loss_fn(weights, hparams)")
    hparams = as_tensors("hparams", hparams)
    steps = check_int("steps", steps, 0)
    lr = check_positive("lr", lr)
    truncate = check_int("truncate", steps if truncate is None else truncate, min(1, steps),
                         steps)

    weights = tuple(p.detach() for p in params)
    detached_hparams = tuple(h.detach() for h in hparams)
    for _ in range(steps - truncate):
        weights = tuple(w.requires_grad_() for w in weights)
        loss = check_scalar("train_loss_fn(...)", train_loss_fn(weights, detached_hparams))
        grads = grad_keeping_graph(loss, weights)
        weights = tuple((w - lr * g).detach() for w, g in zip(weights, grads))

    weights = tuple(w.requires_grad_() for w in weights)
    for _ in range(truncate):
        loss = check_scalar("train_loss_fn(...)", train_loss_fn(weights, hparams))
        grads = torch.autograd.grad(
            loss, weights, create_graph=True, allow_unused=True, materialize_grads=True
        )
        weights = tuple(w - lr * g for w, g in zip(weights, grads))
    val = check_scalar("val_loss_fn(...)", val_loss_fn(weights, hparams))
    return tuple(g.detach() for g in grad_keeping_graph(val, hparams))
