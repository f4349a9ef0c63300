"""Argument checks shared by every layer: each error names the argument and what is allowed.

One rule everywhere: a value of the wrong kind (a string where a number goes, a class where an
instance goes, something not callable where a function goes) raises :class:`ArgumentKindError`,
a ``TypeError`` (and, for callers that catch that, a ``ValueError``); a value of the right kind
out of its range raises ``ValueError``. Numbers are ``numbers.Integral`` / ``numbers.Real``, so
NumPy scalars are accepted like Python ones; ``bool`` is not a number here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

__all__ = ["ArgumentKindError", "check_bool", "check_callable", "check_choice", "check_int",
           "check_positive", "check_real"]


class ArgumentKindError(TypeError, ValueError):
    """An argument of the wrong kind: a ``TypeError``, and a ``ValueError`` for callers that
    catch argument errors as such."""


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an ``int``, if it is an integer (not a bool) in ``[low, high]``."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentKindError(f"{name} must be an integer {allowed}, got {_shown(value)}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a ``float``, if it is a finite real number (not a bool) within the bounds
    (closed unless ``low_open`` / ``high_open``)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    allowed = "a finite number" + (f" {' and '.join(parts)}" if parts else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentKindError(f"{name} must be {allowed}, got {_shown(value)}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a ``float``, if it is a finite number ``> 0`` (``>= 0`` with
    ``allow_zero``)."""
    return check_real(name, value, low=0.0, low_open=not allow_zero)


def check_bool(name: str, value: Any) -> bool:
    """``value``, if it is a ``bool`` (NumPy's included)."""
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if not isinstance(value, bool) and not numpy_bool:
        raise ArgumentKindError(f"{name} must be True or False, got {_shown(value)}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value``, if it is one of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value looked up in a set
        ok = False
    if not ok:
        shown = ", ".join(map(repr, choices))
        raise ValueError(f"{name} must be one of {shown}, got {value!r:.60}")
    return value


def check_callable(name: str, value: Any, usage: str) -> Any:
    """``value``, if it is callable as ``usage`` describes (``"train_loss(model, batch)"``)."""
    if not callable(value):
        raise ArgumentKindError(f"{name} must be callable as {usage}, got {_shown(value)}")
    return value
