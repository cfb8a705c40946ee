"""Where an audit's per-image work runs, as plugins see it.

During an audit the runner activates a stage runner (``privaudit.audit.engine.Session``): sharded,
resumable, local or on Ray. ``AuditContext.samples`` and ``AuditContext.features`` hand their work to it
when one is active and run the plain loop below otherwise; either way the result is the same. The API
knows the stage runner only by this small protocol, so it stands below the audit layer that implements it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Protocol

import numpy as np
import torch


class Stages(Protocol):
    def score(self, attack: Any, denoiser: Any, images: Any, *, batch_size: int, seed: int, label: str,
              prompt: str) -> np.ndarray: ...

    def features(self, extractor: Any, images: Any, *, batch_size: int, label: str) -> np.ndarray: ...

    def samples(self, denoiser: Any, *, n: int, steps: int, sampler: str, seed: int, batch_size: int,
                key: str) -> torch.Tensor: ...


_ACTIVE: list[Stages] = []


def active_stages() -> Stages | None:
    """The stage runner of the audit running in this process, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def activate(stages: Stages) -> Iterator[Stages]:
    _ACTIVE.append(stages)
    try:
        yield stages
    finally:
        _ACTIVE.remove(stages)


def transform_batches(extractor: Any, images: Any, *, batch_size: int) -> np.ndarray:
    """Features of ``images`` (an ImageSet, or a tensor in [-1, 1]) as float32 (n, d), ``extractor.transform``
    batch by batch (the one feature loop every engine runs)."""
    n = len(images)
    if isinstance(images, torch.Tensor):
        part = lambda a, b: images[a:b]  # noqa: E731
    else:
        part = lambda a, b: images.tensor(np.arange(a, b))  # noqa: E731
    if n == 0:
        return np.ascontiguousarray(extractor.transform(part(0, 0)), dtype=np.float32)
    return np.concatenate([np.ascontiguousarray(extractor.transform(part(s, min(s + batch_size, n))), dtype=np.float32)
                           for s in range(0, n, batch_size)])
