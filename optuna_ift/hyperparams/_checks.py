"""Argument checks shared by the hyperparameter families, on top of :mod:`optuna_ift._validation`:
a value of the wrong kind raises ``ArgumentKindError`` (a ``TypeError``), one out of range a
``ValueError``, and each message names the argument and says what is allowed."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from optuna_ift._validation import ArgumentKindError, check_int

__all__ = ["check_generator", "check_int_sequence", "check_shape"]

_NO_LOW = -(2**63)  # below any dimension or index a tensor can have


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def check_int_sequence(name: str, value: Any, low: int | None = None) -> tuple[int, ...]:
    """``value`` as a tuple of ``int``s, if it is a sequence (not a string) of integers (NumPy's
    included, not bools), each ``>= low`` when ``low`` is given."""
    allowed = f"{name} must be a sequence of ints" + ("" if low is None else f" >= {low}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArgumentKindError(f"{allowed}, got {_shown(value)}")
    checked = []
    for item in value:
        try:
            checked.append(check_int(name, item, _NO_LOW if low is None else low))
        except ValueError as error:  # ArgumentKindError included: keep its kind
            raise type(error)(f"{allowed}, got {value!r:.60}") from None
    return tuple(checked)


def check_shape(name: str, value: Any) -> tuple[int, ...]:
    """``value`` as a shape: a sequence of ints ``>= 1``, or one int (a 1-d shape)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    return check_int_sequence(name, value, 1)


def check_generator(name: str, value: Any) -> torch.Generator | None:
    """``value``, if it is a ``torch.Generator`` or ``None``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise ArgumentKindError(f"{name} must be a torch.Generator or None, got {_shown(value)}")
    return value
