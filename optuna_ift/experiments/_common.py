"""What every study shares: where results go and how progress is shown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress", "write_results"]


def progress(*, total: int, desc: str, enable: bool = True) -> tqdm:
    """A tqdm bar that the user can switch off."""
    return tqdm(total=total, desc=desc, disable=not enable, leave=False, dynamic_ncols=True)


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
