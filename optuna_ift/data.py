"""Datasets: small ones embedded in scikit-learn by default, so nothing downloads.

Every loader takes the seed of its split as an argument and returns tensors in the dtype and on
the device asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "load_diabetes"]


@dataclass(frozen=True)
class Split:
    """A train/validation split of features and targets."""

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def load_diabetes(
    *,
    val_fraction: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> Split:
    """scikit-learn's diabetes regression data (442 patients, 10 features), split at random.

    Features and target are standardised with the training part's mean and deviation, so a
    weight decay means the same on every feature.

    Args:
        val_fraction: Share of the rows held out for validation, in (0, 1).
        seed: Seed of the random split.
        dtype: Dtype of the returned tensors.
        device: Device of the returned tensors.
    """
    from sklearn.datasets import load_diabetes as _sk_load

    _check_fraction("val_fraction", val_fraction)
    X, y = _sk_load(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(round(val_fraction * len(y)))
    val, train = order[:n_val], order[n_val:]
    mean, std = X[train].mean(0), X[train].std(0)
    y_mean, y_std = y[train].mean(), y[train].std()

    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return Split(
        X_train=tensor((X[train] - mean) / std),
        y_train=tensor((y[train] - y_mean) / y_std),
        X_val=tensor((X[val] - mean) / std),
        y_val=tensor((y[val] - y_mean) / y_std),
    )
