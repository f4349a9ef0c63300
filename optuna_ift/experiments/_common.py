"""What every study shares: where results go and how progress is shown."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from optuna_ift.trainer import Callback, HyperTrainer

__all__ = ["BarCallback", "Count", "count_warnings", "progress", "write_results"]


def progress(*, total: int, desc: str, enable: bool = True) -> tqdm:
    """A tqdm bar that the user can switch off."""
    return tqdm(total=total, desc=desc, disable=not enable, leave=False, dynamic_ncols=True)


class BarCallback(Callback):
    """Advances a progress bar by ``steps`` after every hyper step."""

    def __init__(self, bar: tqdm, steps: int = 1) -> None:
        self.bar, self.steps = bar, steps

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        self.bar.update(self.steps)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity; keep the value readable
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``out/results.json`` (creating ``out``) and return the path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
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
