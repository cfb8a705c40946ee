"""Progress that fits where it is read: bars on a terminal, one line per stage elsewhere, JSON lines for
pipelines, nothing when asked to be quiet.

``configure(mode)`` (the command line sets it: ``--quiet`` -> "quiet", ``--log-json`` -> "json", else
"auto"): "auto" draws tqdm bars when stderr is a terminal and writes plain lines otherwise, so a CI log
gets one line per finished stage (``LABEL: N/TOTAL UNIT in S s``) instead of megabytes of redrawn bars;
"json" writes one JSON object per stage (``{"event": "stage", "stage", "count", "total", "unit",
"seconds"}``) and per announcement (``{"event": "message", "message"}``); "bars" forces bars. Every
progress bar of privaudit comes from ``progress_bar`` and every stage announcement from ``announce``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

MODES = ("auto", "bars", "lines", "json", "quiet")
_MODE = ["auto"]


def configure(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: choose one of {MODES}")
    _MODE[0] = mode


def current_mode() -> str:
    """The mode in effect: "auto" resolved to "bars" on a terminal, "lines" elsewhere."""
    m = _MODE[0]
    if m == "auto":
        return "bars" if sys.stderr.isatty() else "lines"
    return m


def announce(message: str) -> None:
    """One line for a stage that starts or a result worth a line (stderr); nothing when quiet."""
    m = current_mode()
    if m == "quiet":
        return
    line = json.dumps({"event": "message", "message": message}) if m == "json" else message
    print(line, file=sys.stderr, flush=True)


class _StageLine:
    """A progress bar's interface that writes one line when its stage ends (plain or JSON)."""

    def __init__(self, *, total: float | None, desc: str, unit: str, initial: float, as_json: bool,
                 iterable: Any = None):
        self.total, self.desc, self.unit, self.n, self.as_json = total, desc, unit, initial, as_json
        self.iterable = iterable
        self.start = time.perf_counter()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def update(self, k: float = 1) -> None:
        self.n += k

    def set_postfix(self, **kw: Any) -> None:
        self.postfix.update(kw)

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        secs = time.perf_counter() - self.start
        if self.as_json:
            line = json.dumps({"event": "stage", "stage": self.desc, "count": self.n, "total": self.total,
                               "unit": self.unit, "seconds": round(secs, 3), **{k: str(v) for k, v in self.postfix.items()}})
        else:
            of = f"/{self.total:g}" if isinstance(self.total, (int, float)) else ""
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            line = f"{self.desc}: {self.n:g}{of} {self.unit} in {secs:.1f} s{extra}"
        print(line, file=sys.stderr, flush=True)

    def __iter__(self):
        """Iterate the wrapped iterable (``progress_bar(iterable=...)``), one update per item, then close."""
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def __enter__(self) -> "_StageLine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(iterable: Any = None, *, total: float | None = None, desc: str, unit: str = "it",
                 disable: bool = False, initial: float = 0, leave: bool = True):
    """A tqdm bar on a terminal, a one-line stage summary elsewhere, nothing when disabled or quiet; over
    ``iterable`` when given (then iterate the result, as with tqdm)."""
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    m = current_mode()
    if disable or m == "quiet":
        return tqdm(iterable, total=total, disable=True)
    if m == "bars":
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return _StageLine(total=total, desc=desc, unit=unit, initial=initial, as_json=m == "json", iterable=iterable)
