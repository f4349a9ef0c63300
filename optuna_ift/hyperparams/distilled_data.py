"""Dataset distillation: a few learned training examples per class (Sec. 5.2 of the paper)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from optuna_ift._validation import check_int
from optuna_ift.hyperparams._base import HyperParameter
from optuna_ift.hyperparams._checks import check_generator, check_shape

__all__ = ["DistilledData"]

# A learned label starts with this much probability on the class it was made for.
_LABEL_CONFIDENCE = 0.9


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    return check_int(name, value, minimum)


class DistilledData(nn.Module):
    """Learned training inputs (and optionally learned soft labels), ``num_per_class`` a class.

    The images are the hyperparameters: train the model on ``data()`` alone and tune the images
    on the validation loss of the real data. Example ``i`` is made for class
    ``i // num_per_class`` (the buffer ``labels``).

    Args:
        num_per_class: Images per class, >= 1.
        num_classes: Number of classes, >= 2.
        shape: Shape of one input, such as ``(1, 28, 28)`` or ``(64,)``.
        learn_labels: Also learn soft labels: ``label_logits`` of shape
            ``(num_per_class * num_classes, num_classes)``, starting with probability 0.9 on the
            class each image was made for. Otherwise the targets are the fixed ``labels``.
        init: Optional initial images of shape ``(num_per_class * num_classes, *shape)``, such as
            real examples of each class; its dtype and device are kept. By default images are
            drawn from a standard normal (default dtype, CPU; move the module with ``.to``).
        generator: Random generator for the default initial images.

    Example:
        >>> distilled = DistilledData(1, 10, (1, 28, 28), learn_labels=True)
        >>> images, targets = distilled()
        >>> train_loss = F.cross_entropy(model(images), targets)
    """

    def __init__(
        self,
        num_per_class: int,
        num_classes: int,
        shape: Sequence[int] | int,
        *,
        learn_labels: bool = False,
        init: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _positive_int("num_per_class", num_per_class)
        _positive_int("num_classes", num_classes, 2)
        shape = check_shape("shape", shape)
        if not isinstance(learn_labels, bool):
            raise TypeError(f"learn_labels must be a bool, got {type(learn_labels).__name__}")
        check_generator("generator", generator)
        n = num_per_class * num_classes
        full_shape = (n, *shape)

        if init is None:
            images = torch.randn(full_shape, generator=generator)
        elif not isinstance(init, Tensor):
            raise TypeError(f"init must be a torch.Tensor or None, got {type(init).__name__}")
        elif tuple(init.shape) != full_shape:
            raise ValueError(
                f"init must have shape (num_per_class * num_classes, *shape) = {full_shape}, "
                f"got {tuple(init.shape)}"
            )
        elif not init.is_floating_point():
            raise TypeError(f"init must be a floating-point tensor, got dtype {init.dtype}")
        else:
            images = init.detach().clone()

        self.num_per_class = num_per_class
        self.num_classes = num_classes
        self.shape = tuple(shape)
        self.images = HyperParameter(images)
        labels = torch.arange(num_classes, device=images.device).repeat_interleave(num_per_class)
        self.register_buffer("labels", labels)
        if learn_labels:
            # softmax puts _LABEL_CONFIDENCE on the own class when its logit is this much higher.
            scale = math.log(_LABEL_CONFIDENCE / (1 - _LABEL_CONFIDENCE) * (num_classes - 1))
            logits = nn.functional.one_hot(labels, num_classes).to(images.dtype) * scale
            self.label_logits = HyperParameter(logits)
        else:
            self.register_parameter("label_logits", None)

    @property
    def learn_labels(self) -> bool:
        return self.label_logits is not None

    def forward(self) -> tuple[Tensor, Tensor]:
        """``(images, targets)``: targets are the integer ``labels``, or with learned labels the
        softmax probabilities of ``label_logits``; both suit ``F.cross_entropy``."""
        if self.label_logits is None:
            return self.images, self.labels
        return self.images, self.label_logits.softmax(dim=-1)

    def extra_repr(self) -> str:
        return (
            f"num_per_class={self.num_per_class}, num_classes={self.num_classes}, "
            f"shape={self.shape}, learn_labels={self.learn_labels}"
        )
