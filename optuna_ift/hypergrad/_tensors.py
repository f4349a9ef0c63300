"""Arithmetic on tuples of tensors, the vectors every solver works with.

A weight vector of a neural network is a tuple of tensors of different shapes; the solvers
treat such a tuple as one long vector without ever flattening it into a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Tensors = tuple[Tensor, ...]


def scale(a: Sequence[Tensor], factor: float | Tensor) -> Tensors:
    """``factor * a``."""
    return tuple(factor * x for x in a)


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """The inner product of two tuples, as a 0-dim tensor (no host synchronisation)."""
    return sum((torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)),
               start=a[0].new_zeros(()))


def norm(a: Sequence[Tensor]) -> Tensor:
    """The l2 norm of a tuple, as a 0-dim tensor (no host synchronisation)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(a))))


def flatten(a: Sequence[Tensor]) -> Tensor:
    """One 1-d tensor holding every element of ``a`` in order."""
    return torch.cat([x.reshape(-1) for x in a])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> Tensors:
    """The inverse of :func:`flatten`: split ``flat`` into tensors shaped like ``like``."""
    sizes = [x.numel() for x in like]
    return tuple(part.view_as(x) for part, x in zip(torch.split(flat, sizes), like))


def size(a: Sequence[Tensor]) -> int:
    """The total number of elements in ``a``."""
    return sum(x.numel() for x in a)
