"""Dropout with a learned rate, made differentiable by the concrete relaxation.

A Bernoulli mask has no derivative in its rate. The concrete (relaxed Bernoulli) distribution
(Maddison et al. 2017; Gal, Hron & Kendall, "Concrete Dropout", 2017) replaces it with

    drop = sigmoid((logit(p) + log u - log(1 - u)) / temperature),   u ~ Uniform(0, 1),

which tends to a Bernoulli(p) draw as the temperature tends to 0 and is smooth in ``p`` for any
positive temperature. Kept units are scaled by ``1 / (1 - p)`` (inverted dropout), so the
expected activation is (up to the relaxation's small bias) unchanged and evaluation needs no
mask at all. The paper tunes a dropout rate per unit this way (Sec. 5.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from optuna_ift._validation import check_choice, check_positive, check_real
from optuna_ift.hyperparams._base import HyperParameter
from optuna_ift.hyperparams._checks import check_generator, check_int_sequence, check_shape

__all__ = ["ConcreteDropout"]

_MODES = ("unit", "channel")


def _check_rate(name: str, value: object) -> float:
    """``value`` as a ``float``, if it is a number in the open interval (0, 1)."""
    try:
        return check_real(name, value, low=0.0, high=1.0, low_open=True, high_open=True)
    except ValueError as error:  # ArgumentKindError included: keep its kind
        raise type(error)(
            f"{name} must be a rate in the open interval (0, 1), got {type(value).__name__} "
            f"{value!r:.60}"
        ) from None


class ConcreteDropout(nn.Module):
    """Dropout (or DropConnect) whose rate is a hyperparameter, stored as a logit.

    In training mode ``forward(x)`` returns ``x * (1 - drop) / (1 - p)`` with a fresh relaxed
    mask ``drop``; in evaluation mode it returns ``x`` unchanged. :meth:`drop_connect` does the
    same to a weight tensor.

    The rate's ``shape`` says how many rates there are: ``()`` is one rate for everything,
    ``(features,)`` one rate per unit of the last dimension (``mode="unit"``) or per channel
    (``mode="channel"``), and a weight's shape one rate per weight for :meth:`drop_connect`.
    In ``"unit"`` mode the rate broadcasts against the trailing dimensions of ``x``.

    Args:
        shape: Shape of the rate tensor (an int is a 1-d shape).
        init: Initial rate, in the open interval (0, 1).
        temperature: Temperature of the relaxation, > 0; small values (0.1, the default, as in
            Gal et al.) give nearly binary masks.
        mode: ``"unit"``: an independent mask entry for every element of ``x`` (standard
            dropout). ``"channel"``: one mask entry per example and channel (dimension 1),
            shared over the remaining dimensions (spatial dropout for feature maps, as
            ``nn.Dropout2d``); the rate then has shape ``()`` or ``(channels,)``.
        generator: Random generator for the masks; noise is drawn on its device and moved to
            the input's.

    Example:
        >>> drop = ConcreteDropout((128,), init=0.2)
        >>> hidden = drop(F.relu(layer(x)))            # a rate per hidden unit
        >>> connect = ConcreteDropout(layer.weight.shape)
        >>> out = F.linear(x, connect.drop_connect(layer.weight), layer.bias)
    """

    def __init__(
        self,
        shape: Sequence[int] | int = (),
        *,
        init: float = 0.1,
        temperature: float = 0.1,
        mode: str = "unit",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        shape = check_shape("shape", shape)
        init = _check_rate("init", init)
        temperature = check_positive("temperature", temperature)
        check_choice("mode", mode, _MODES)
        check_generator("generator", generator)
        if mode == "channel" and len(shape) > 1:
            raise ValueError(
                f"shape must be () or (channels,) in mode='channel', got {tuple(shape)}"
            )
        self.logit = HyperParameter(torch.full(shape, math.log(init / (1 - init))))
        self.temperature = temperature
        self.mode = mode
        self.generator = generator

    @property
    def rate(self) -> Tensor:
        """The dropout probabilities ``sigmoid(logit)``, with their graph (detach to log them)."""
        return torch.sigmoid(self.logit)

    def _keep_scale(self, logit: Tensor, mask_shape: Sequence[int], like: Tensor) -> Tensor:
        """``(1 - drop) / (1 - p)`` of ``mask_shape``, with ``logit`` broadcast against it."""
        device = like.device if self.generator is None else self.generator.device
        u = torch.rand(tuple(mask_shape), generator=self.generator, device=device, dtype=like.dtype)
        u = u.to(like.device)
        eps = torch.finfo(like.dtype).eps
        u = u.clamp(eps, 1 - eps)
        logit = logit.to(like.dtype)
        noise = torch.log(u) - torch.log1p(-u)
        # 1 - sigmoid(a) = sigmoid(-a), for both the relaxed mask and the keep probability.
        return torch.sigmoid(-(logit + noise) / self.temperature) / torch.sigmoid(-logit)

    def _check_trailing(self, name: str, t: Tensor) -> None:
        k = self.logit.ndim
        if t.ndim < k or tuple(t.shape[t.ndim - k :]) != tuple(self.logit.shape):
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not end in the rate's shape "
                f"{tuple(self.logit.shape)}"
            )

    def forward(self, x: Tensor, *, shared_dims: Sequence[int] = ()) -> Tensor:
        """Apply relaxed dropout to ``x`` in training mode; the identity in evaluation mode.

        Args:
            x: The input.
            shared_dims: ``"unit"`` mode only: dimensions of ``x`` along which one mask entry
                is shared, e.g. ``(0,)`` for variational dropout of a ``(time, batch,
                features)`` sequence (the same units dropped at every time step), or
                ``(1,)`` on an embedding matrix ``(features, vocabulary)`` to drop whole
                words. They must lie outside the rate's trailing dimensions.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        shared = self._check_shared_dims(shared_dims, x)
        if not self.training:
            return x
        if self.mode == "unit":
            self._check_trailing("x", x)
            mask_shape = [1 if d in shared else n for d, n in enumerate(x.shape)]
            return x * self._keep_scale(self.logit, mask_shape, x)
        if x.ndim < 2 or (self.logit.ndim == 1 and x.shape[1] != self.logit.shape[0]):
            raise ValueError(
                f"x must have shape (batch, {self.logit.shape[0] if self.logit.ndim else 'C'}, "
                f"...) in mode='channel', got {tuple(x.shape)}"
            )
        trailing = (1,) * (x.ndim - 2)
        logit = self.logit.reshape(*self.logit.shape, *trailing) if self.logit.ndim else self.logit
        return x * self._keep_scale(logit, (*x.shape[:2], *trailing), x)

    def _check_shared_dims(self, shared_dims: Sequence[int], x: Tensor) -> set[int]:
        shared_dims = check_int_sequence("shared_dims", shared_dims)
        if shared_dims and self.mode != "unit":
            raise ValueError("shared_dims applies only in mode='unit'")
        free = x.ndim - self.logit.ndim  # dimensions the rate does not cover
        shared = {d % x.ndim if -x.ndim <= d < x.ndim else None for d in shared_dims}
        if None in shared or any(d >= free for d in shared):
            raise ValueError(f"shared_dims must name dimensions of x among the first {free} "
                             f"(x has shape {tuple(x.shape)}, the rate "
                             f"{tuple(self.logit.shape)}), got {tuple(shared_dims)}")
        return shared

    def drop_connect(self, weight: Tensor) -> Tensor:
        """Relaxed DropConnect: ``weight`` times one relaxed mask (shared by the whole batch),
        scaled by ``1 / (1 - p)``; the rate broadcasts against the weight's trailing dimensions.
        The identity in evaluation mode."""
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if not self.training:
            return weight
        self._check_trailing("weight", weight)
        return weight * self._keep_scale(self.logit, weight.shape, weight)

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.logit.shape)}, temperature={self.temperature}, mode={self.mode!r}"
        )
