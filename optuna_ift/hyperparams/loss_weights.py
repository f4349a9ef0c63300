"""One learned weight per training example (data reweighting)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from optuna_ift._validation import check_int, check_positive
from optuna_ift.hyperparams._base import HyperParameter

__all__ = ["LossWeights"]


class LossWeights(nn.Module):
    """A positive weight per training example, ``exp(log_weights)``, for its loss.

    The weights are log-parameterised, like :class:`WeightDecay`: they stay positive, and a
    gradient step rescales a weight rather than shifting it, so down-weighting a noisy example
    by a factor of ten is as easy as up-weighting one. (A weight can approach zero but never
    reach it, and its gradient shrinks with it.)

    Args:
        num_examples: Size of the training set, >= 1; examples are indexed ``0..num_examples-1``.
        init: Initial weight of every example, a finite number > 0.

    Example:
        >>> loss_weights = LossWeights(len(train_set))
        >>> losses = F.cross_entropy(model(x), y, reduction="none")
        >>> train_loss = (loss_weights(idx) * losses).mean()
    """

    def __init__(self, num_examples: int, *, init: float = 1.0) -> None:
        super().__init__()
        num_examples = check_int("num_examples", num_examples, 1)
        init = check_positive("init", init)
        self.log_weights = HyperParameter(torch.full((num_examples,), math.log(init)))

    @property
    def num_examples(self) -> int:
        return self.log_weights.shape[0]

    @property
    def weights(self) -> Tensor:
        """All ``num_examples`` weights, with their graph (detach to log them)."""
        return self.log_weights.exp()

    def forward(self, indices: Tensor) -> Tensor:
        """The weights of the examples at ``indices`` (an integer tensor of any shape)."""
        if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.is_complex():
            got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
            raise TypeError(f"indices must be an integer torch.Tensor, got {got}")
        # Bounds are checked on the CPU only: on an accelerator the check would synchronise.
        if indices.device.type == "cpu" and indices.numel() and (
            int(indices.min()) < 0 or int(indices.max()) >= self.num_examples
        ):
            raise ValueError(
                f"indices must lie in [0, {self.num_examples - 1}] (num_examples="
                f"{self.num_examples}), got values from {int(indices.min())} to "
                f"{int(indices.max())}"
            )
        return self.log_weights[indices].exp()

    def extra_repr(self) -> str:
        return f"num_examples={self.num_examples}"
