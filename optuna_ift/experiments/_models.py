"""The small classifiers the vision studies train: linear, MLP and CNN."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from optuna_ift.hyperparams import WeightDecay

__all__ = ["MODEL_KINDS", "DecayedClassifier", "classification_loss", "decayed_train_loss",
           "make_classifier"]

MODEL_KINDS = ("linear", "mlp", "cnn")


def make_classifier(kind: str, shape: tuple[int, int, int], num_classes: int, *,
                    hidden: int = 128, channels: int = 16) -> nn.Module:
    """A classifier of images shaped ``(C, H, W)`` into ``num_classes`` logits.

    Args:
        kind: ``"linear"`` (logistic regression), ``"mlp"`` (one hidden ReLU layer of
            ``hidden`` units) or ``"cnn"`` (two 3x3 conv layers of ``channels`` with max
            pooling, then a linear layer).
        shape: The image shape ``(C, H, W)``.
        num_classes: Number of classes.
    """
    c, h, w = shape
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))
    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * channels * (h // 4) * (w // 4), num_classes),
        )
    raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")


class DecayedClassifier(nn.Module):
    """A classifier ``net`` with one learned weight decay per weight (``WeightDecay``)."""

    def __init__(self, net: nn.Module, *, init_decay: float,
                 include_biases: bool = False) -> None:
        super().__init__()
        self.net = net
        self.decay = WeightDecay(net, mode="per_weight", init=init_decay,
                                 include_biases=include_biases)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def decayed_train_loss(model: DecayedClassifier, batch: tuple[Tensor, ...]) -> Tensor:
    """Cross-entropy on ``batch = (images, labels)`` plus the decay penalty."""
    return F.cross_entropy(model(batch[0]), batch[1]) + model.decay(model.net)


def classification_loss(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
    """Cross-entropy on ``batch = (images, labels)``: the validation loss."""
    return F.cross_entropy(model(batch[0]), batch[1])
