"""Atomic writes and hashing: outputs are complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists: where a missing output folder would be created,
    so it can be checked (a file? writable?) before any work."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: NaN and infinities become null, and a top-level ``null_values`` lists where and why."""
    found: list[dict] = []
    clean = _finite(obj, "", found)
    if found and isinstance(clean, dict):
        clean["null_values"] = found
    write_text(path, json.dumps(clean, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def _finite(v: Any, where: str, found: list[dict]) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        found.append({"path": where or "$", "reason": "not a finite number: " + repr(v)})
        return None
    if isinstance(v, dict):
        return {k: _finite(x, f"{where}.{k}" if where else str(k), found) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x, f"{where}[{i}]", found) for i, x in enumerate(v)]
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # numpy scalars
        return _finite(v.item(), where, found)
    return v


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(table):
    """A copy of a pandas table whose text cells cannot start a spreadsheet formula (ids are user file
    names, e.g. ``=HYPERLINK(...).png``): such cells get a leading apostrophe."""
    import pandas as pd

    out = table.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = [f"'{c}" if isinstance(c, str) and c.startswith(FORMULA_START) else c for c in out[col]]
    return out


@contextmanager
def atomic_dir(path: str | Path, *, hint: str = "choose a new or empty folder") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename (see ``publish_dir``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield tmp
        publish_dir(tmp, path, hint=hint)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(stage: str | Path, out: str | Path, *, hint: str = "choose a new or empty --out") -> None:
    """``stage`` (a finished folder beside ``out``) gets its ownership manifest (``privaudit.io.ownership``,
    written last) and becomes ``out`` with one rename. A previous ``out`` is replaced only when it is empty
    or privaudit provably wrote all of it (exit 2 naming the first foreign file otherwise): it is first
    moved into a hidden sibling and removed after the swap, so ``out`` is never half old, half new."""
    from privaudit.io.ownership import check_replaceable, write_manifest

    stage, out = Path(stage), Path(out)
    write_manifest(stage)
    check_replaceable(out, hint=hint)
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / "previous")
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)  # rename(2) replaces an empty folder


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
