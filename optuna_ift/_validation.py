"""Argument checks shared by every layer: each error names the argument and what is allowed."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_positive"]


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` as an ``int``, if it is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a ``float``, if it is a finite number ``> 0`` (``>= 0`` with
    ``allow_zero``)."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))
    if not ok or value < 0 or (value == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {relation}, got {value!r}")
    return float(value)
