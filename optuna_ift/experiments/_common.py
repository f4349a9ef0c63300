"""What every study shares: where results go and how progress is shown."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from optuna_ift.trainer import Callback, HyperTrainer

__all__ = ["BarCallback", "Count", "count_warnings", "jsonable", "progress", "write_results"]


def progress(*, total: int, desc: str, enable: bool = True) -> tqdm:
    """A tqdm bar that the user can switch off."""
    return tqdm(total=total, desc=desc, disable=not enable, leave=False, dynamic_ncols=True)


class BarCallback(Callback):
    """Advances a progress bar by ``steps`` after every hyper step."""

    def __init__(self, bar: tqdm, steps: int = 1) -> None:
        self.bar, self.steps = bar, steps

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        self.bar.update(self.steps)


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by ``None``, so that
    ``json.dumps(..., allow_nan=False)`` writes standard JSON (``null``) instead of the
    ``NaN``/``Infinity`` tokens that other JSON readers reject. NumPy scalars become Python
    numbers, mappings get string keys and tuples become lists; other values are returned as
    they are.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)  # also NumPy's integers, which json cannot write
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``out/results.json`` (creating ``out``) and return the path.

    NaN and infinities are written as ``null`` (see :func:`jsonable`). The file is replaced
    atomically: the JSON goes to a temporary file in ``out`` that is then renamed over
    ``results.json``, so a reader (or a crash) never sees half a file.

    Raises:
        TypeError: If ``results`` holds a value that JSON cannot represent.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    text = json.dumps(jsonable(results), indent=2, allow_nan=False) + "\n"
    temporary = out / f".results.json.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temporary, "x", encoding="utf-8") as f:  # "x": the usual permissions
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


class Count:
    """How many warnings :func:`count_warnings` caught."""

    value: int = 0


@contextlib.contextmanager
def count_warnings(category: type[Warning]) -> Iterator[Count]:
    """Count (and silence) warnings of ``category`` raised inside the block; every other
    warning is re-issued. A study reports the count instead of printing each one."""
    count = Count()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        try:
            yield count
        finally:
            count.value = sum(issubclass(w.category, category) for w in caught)
    for w in caught:
        if not issubclass(w.category, category):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
