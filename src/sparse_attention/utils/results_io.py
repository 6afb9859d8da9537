"""Atomic JSON results files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """Make ``value`` strict JSON: NaN/inf become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    ``os.replace`` is atomic on POSIX and Windows, so a concurrent reader sees the old file or
    the whole new one, never a partial one; the temporary file is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`atomic_write`); NaN and inf become
    null, so the file is strict JSON."""
    atomic_write(path, (json.dumps(_clean(data), indent=1, allow_nan=False) + "\n").encode())


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically (:func:`atomic_write`)."""
    atomic_write(path, text.encode())


def read_json(path: str | Path) -> Any:
    """Read a results file; a clear error when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"results file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
