"""The target every benchmark runs on, and the tiny one of ``--quick`` (CI's smoke run of each benchmark).

``--quick`` must break the build when the API the benchmarks call changes, within seconds and without
a trained model: it builds the digits target with the fixture's own code (same files, same layout,
same loaders) but a few training steps and few images, in a temporary folder. Its timings mean
nothing; its ratio lines are printed all the same, so the whole measuring path runs.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from privaudit.api import default_cache_dir
from privaudit.fixtures import digits

# 2 training steps: the weights are noise, which costs the same per query as trained ones
QUICK_DIGITS = digits.DigitsConfig(n_members=32, n_holdout=64, n_null=8, train_steps=2, batch_size=16)


def cached_fixture_dir() -> Path:
    """Where the full digits fixture is cached (the test suite's cache when set, else privaudit's)."""
    test_cache = os.environ.get("PRIVAUDIT_TEST_CACHE")
    return Path(test_cache) / "digits" if test_cache else default_cache_dir() / "fixtures" / "digits"


@contextmanager
def digits_target(target: Path | None, *, quick: bool, progress: bool = False) -> Iterator[Path]:
    """``target`` when given; with ``quick``, a tiny digits target in a temporary folder (removed after);
    else the cached digits fixture (built there the first time: minutes)."""
    if target is not None:
        yield target
    elif quick:
        with tempfile.TemporaryDirectory(prefix="privaudit-bench-") as tmp:
            yield digits.build(out=Path(tmp) / "digits", cfg=QUICK_DIGITS, progress=False)
    else:
        yield digits.build(out=cached_fixture_dir(), progress=progress)
