"""A learned data augmentation: a small U-Net whose weights are hyperparameters (Sec. 5.3).

The net maps an image and a noise channel to ``image + residual``. Its last convolution starts
at zero, so training begins from "no augmentation" and the hypergradient grows the residual
only as far as it helps the validation loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from optuna_ift._validation import ArgumentKindError, check_int
from optuna_ift.hyperparams._base import HyperParameter
from optuna_ift.hyperparams._checks import check_generator

__all__ = ["AugmentationNet", "as_hyperparameters"]


def as_hyperparameters(module: nn.Module) -> nn.Module:
    """Turn every trainable parameter of ``module`` into a :class:`HyperParameter`, in place.

    Each parameter is replaced (same data, same ``requires_grad``) on the submodule that owns it,
    so ``module.to(...)``, ``state_dict`` and ``load_state_dict`` keep working as before. Frozen
    parameters (``requires_grad=False``) stay as they are. Returns ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for submodule in module.modules():
        for name, p in list(submodule._parameters.items()):
            if p is not None and p.requires_grad and not isinstance(p, HyperParameter):
                setattr(submodule, name, HyperParameter(p.data))
    return module


def _check_int(name: str, value: object, minimum: int) -> int:
    return check_int(name, value, minimum)


def _conv(
    in_channels: int, out_channels: int, generator: torch.Generator | None, *, stride: int = 1
) -> nn.Conv2d:
    """A 3x3 convolution initialised from ``generator`` (He init for ReLU, zero bias)."""
    conv = nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, 3, stride=stride, padding=1)
    with torch.no_grad():
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=generator)
        conv.bias.zero_()
    return conv


class AugmentationNet(nn.Module):
    """A small U-Net that returns ``x + residual(x, noise)``; all its weights are hyperparameters.

    Encoder: a 3x3 convolution, then ``depth`` stride-2 convolutions doubling the width. Decoder:
    at each level, nearest-neighbour upsampling to the exact size of the matching encoder map
    (so odd sizes such as 7x7 come back whole and the output always has the input's shape),
    concatenation with that skip connection, and a 3x3 convolution. A last 3x3 convolution,
    zero-initialised, gives the residual, so at initialisation the net is exactly the identity.

    Args:
        channels: Image channels (1 for digits and MNIST, 3 for CIFAR).
        hidden: Width of the first level, >= 1; level ``l`` has ``hidden * 2**l`` channels.
        depth: Number of downsampling levels, >= 0 (0 gives a plain two-layer conv net).
        noise: Feed a standard-normal noise channel next to the image, which makes the
            augmentation random (a fresh draw on every call).
        generator: Random generator for the initial weights and the noise. Noise is drawn on
            the generator's device and then moved to the input's.

    Example:
        >>> augment = AugmentationNet(1, hidden=8)
        >>> train_loss = F.cross_entropy(model(augment(x)), y)
        >>> val_loss = F.cross_entropy(model(x_val), y_val)
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden: int = 16,
        depth: int = 2,
        noise: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_int("channels", channels, 1)
        _check_int("hidden", hidden, 1)
        _check_int("depth", depth, 0)
        if not isinstance(noise, bool):
            raise TypeError(f"noise must be a bool, got {type(noise).__name__}")
        check_generator("generator", generator)
        self.channels = channels
        self.noise = noise
        self.generator = generator
        widths = [hidden * 2**level for level in range(depth + 1)]
        self.stem = _conv(channels + int(noise), widths[0], generator)
        self.down = nn.ModuleList(
            _conv(widths[k], widths[k + 1], generator, stride=2) for k in range(depth)
        )
        self.up = nn.ModuleList(
            _conv(widths[k + 1] + widths[k], widths[k], generator) for k in range(depth)
        )
        self.head = _conv(widths[0], channels, generator)
        with torch.no_grad():
            self.head.weight.zero_()
        as_hyperparameters(self)

    def _draw_noise(self, x: Tensor) -> Tensor:
        shape = (x.shape[0], 1, *x.shape[2:])
        device = x.device if self.generator is None else self.generator.device
        z = torch.randn(shape, generator=self.generator, device=device, dtype=x.dtype)
        return z.to(x.device)

    def forward(self, x: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """Augment a batch of images.

        Args:
            x: Images of shape ``(batch, channels, height, width)``, any height and width.
            noise: Optional noise channel of shape ``(batch, 1, height, width)`` to use instead
                of a fresh draw (only with ``noise=True``).

        Returns:
            Augmented images, the same shape, dtype and device as ``x``.
        """
        if not isinstance(x, Tensor):
            raise ArgumentKindError(
                f"x must be a torch.Tensor of shape (batch, {self.channels}, height, width), "
                f"got {type(x).__name__}"
            )
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must be a tensor of shape (batch, {self.channels}, height, width), got "
                f"{tuple(x.shape)}"
            )
        if self.noise:
            if noise is None:
                noise = self._draw_noise(x)
            elif tuple(noise.shape) != (x.shape[0], 1, *x.shape[2:]):
                raise ValueError(
                    f"noise must have shape {(x.shape[0], 1, *x.shape[2:])}, "
                    f"got {tuple(noise.shape)}"
                )
            inputs = torch.cat([x, noise.to(x)], dim=1)
        elif noise is not None:
            raise ValueError("noise was given but this AugmentationNet was built with noise=False")
        else:
            inputs = x

        h = F.relu(self.stem(inputs))
        skips = [h]
        for conv in self.down:
            h = F.relu(conv(h))
            skips.append(h)
        for level in reversed(range(len(self.up))):
            skip = skips[level]
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = F.relu(self.up[level](torch.cat([h, skip], dim=1)))
        return x + self.head(h)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, noise={self.noise}"
