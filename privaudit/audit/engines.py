"""Choose the engine that runs an audit's shards: one factory above both engines, so neither imports the other.

``local`` (``privaudit.audit.engine.LocalEngine``, this process) or ``ray``
(``privaudit.audit.ray_engine.RayEngine``, a Ray cluster); results do not depend on the choice.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from privaudit.api.stages import activate
from privaudit.audit.engine import LocalEngine, Session, ShardStore
from privaudit.io.errors import InputError

ENGINES = ("local", "ray")
_ENGINES: dict[tuple, Any] = {}


def get_engine(name: str = "local", *, address: str | None = None, workers: int | None = None):
    """The engine called ``name`` (one instance per process and configuration)."""
    if name not in ENGINES:
        raise InputError(f"--engine {name}: choose one of {', '.join(ENGINES)}")
    key = (name, address, workers)
    if key not in _ENGINES:
        if name == "ray":
            from privaudit.audit.ray_engine import RayEngine  # ray is an optional extra: imported on demand

            _ENGINES[key] = RayEngine(address=address, workers=workers)
        else:
            _ENGINES[key] = LocalEngine()
    return _ENGINES[key]


@contextmanager
def session(*, engine: str = "local", address: str | None = None, workers: int | None = None,
            store: ShardStore | None = None, sample_root: Path | None = None, progress: bool = False) -> Iterator[Session]:
    s = Session(engine=get_engine(engine, address=address, workers=workers), store=store, sample_root=sample_root,
                progress=progress)
    try:
        start = getattr(s.engine, "start", None)
        if start is not None:  # workers start now, while the driver loads and fits, not at the first stage
            start()
        with activate(s):  # AuditContext.samples / .features and score_set hand their work to it
            yield s
    finally:
        close = getattr(s.engine, "close", None)
        if close is not None:  # the run's workers (Ray actors) stop with it
            close()


