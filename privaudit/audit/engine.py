"""Engines: where per-image scoring, sampling and feature extraction run, and the shards that make a run resumable.

The audit's fitted steps (attack ``fit`` on the calibration split, feature extractor ``fit``,
thresholds, nearest-neighbour search, metrics, bootstrap, report) always run in the driver
process. The per-item work in between is cut into fixed contiguous **shards** and handed to an
**engine**, one stage per kind of work:

- ``scores`` (``ScoreWork``): per-image scores of a fitted attack (``privaudit.audit.scoring.score_set``);
- ``samples`` (``SampleWork``): generated samples, each seeded by its index (``AuditContext.samples``);
- ``features`` (``FeatureWork``): a fitted feature extractor's embedding of an image set or of
  samples (``AuditContext.features``, what detectors call), one detector batch per shard, keyed
  by the extractor's identity (class, parameters, fitted state: ``extractor_key``) and the images.

Engines:

- ``local`` (the default): shard after shard in this process;
- ``ray`` (``privaudit.audit.ray_engine``, imported only when chosen): Ray Data ``map_batches``
  stages with a callable class, one actor per GPU (CPU actors otherwise); the model and the
  fitted attack (or the fitted extractor) are shipped once per actor.

Results do not depend on the engine: a shard is a whole number of the run's batches (so every
batch has the same images whatever ran it) and every random draw is keyed by image content or
sample index (``privaudit.model.noise``). A shard's output is written atomically as soon as it is
finished, tagged with the run's key (a hash of everything that determines the results: model,
data, settings; not the engine), so a run that dies resumes with only its unfinished shards.

Where shards live: scores and features under the run folder, ``RUN/.partial/shards/<stage>/<key>/<shard>.npz``,
until the run is written (its results replace the folder, shards included). Generated samples
are images, so they are never written into the run folder: their shards live in the sample
cache (``--cache-dir``) beside the whole-set sample cache.

Cost: each stage records its wall time, the model queries spent (forward rows through the
model's networks, counted with forward hooks in whichever process ran the shard), and how many
shards were computed or reused; the manifest lists them with the engine, workers and devices.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from privaudit.api.stages import transform_batches
from privaudit.audit.work import FeatureWork, SampleWork, ScoreWork, Work, extractor_key
from privaudit.io.errors import InputError

SHARD_BATCHES = 1  # batches per scoring shard: a shard is a whole number of the run's batches
SHARD_FORMAT = 1


# ---------------------------------------------------------------------------- engines
class LocalEngine:
    """Shard after shard in this process (the default)."""

    name = "local"

    def describe(self) -> dict:
        return {"name": "local", "workers": 1, "devices": ["this process"]}

    def map(self, work: Work, items: Iterable[tuple[int, Callable[[], dict]]]) -> Iterator[tuple[int, np.ndarray, int]]:
        work.setup(None)
        work.start_counting()
        try:
            for i, make in items:
                before = work.queries()
                out = work.run(make())
                yield i, out, work.queries() - before
        finally:
            work.stop_counting()


# ---------------------------------------------------------------------------- shard store
def _save_npz(path: Path, **arrays: Any) -> None:
    """Write ``arrays`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardStore:
    """Finished shards of one run: ``root/<stage>/<key>/<index>.npz`` holding the output, the queries it
    cost and the run key it was computed for. ``root/run.json`` names the run key."""

    def __init__(self, root: Path, *, run_key: str, ledger: Any = None):
        # ledger (privaudit.io.ownership.Ledger): a run folder's shards are recorded as written, so a later run
        # deletes ``.partial`` only when every file in it is one of them
        self.root, self.run_key, self.ledger = Path(root), run_key, ledger

    def path(self, stage: str, key: str, index: int) -> Path:
        return self.root / stage / key / f"{index:06d}.npz"

    def load(self, stage: str, key: str, index: int) -> tuple[np.ndarray, int] | None:
        p = self.path(stage, key, index)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                if str(z["run_key"]) != self.run_key:
                    return None
                return z["data"], int(z["queries"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # unreadable (damaged): computed again
            return None

    def save(self, stage: str, key: str, index: int, data: np.ndarray, queries: int) -> None:
        arrays = dict(data=data, queries=np.int64(queries), run_key=np.str_(self.run_key), format=np.int64(SHARD_FORMAT))
        if self.ledger is None:
            _save_npz(self.path(stage, key, index), **arrays)
            return

        def write(tmp: Path) -> None:
            with open(tmp, "xb") as f:
                np.savez(f, **arrays)

        self.ledger.write(self.path(stage, key, index), write)


def _fits(out: np.ndarray, *, rows: int, unit_shape: tuple[int, ...] | None) -> bool:
    """A stored shard fits its work unit: ``rows`` numeric rows, each of ``unit_shape`` when given."""
    return (out.ndim >= 1 and out.shape[0] == rows and (out.dtype.kind in "fiub")
            and (unit_shape is None or tuple(out.shape[1:]) == tuple(unit_shape)))


def open_store(run_dir: Path, *, run_key: str, resume: bool, description: dict) -> ShardStore:
    """The shard store of the run folder ``run_dir`` (``RUN/.partial/shards``).

    A fresh run starts with no shards; ``resume`` keeps those of an interrupted run and refuses,
    naming both keys, when they were written for another run.
    """
    from privaudit.io.ownership import Ledger, partial_problem, remove_owned

    run_dir = Path(run_dir)
    partial = run_dir / ".partial"
    root = partial / "shards"
    if not resume:  # only what privaudit provably wrote there is deleted (privaudit.io.ownership)
        remove_owned(partial, hint="choose a new or empty --out")
    else:
        if not (root / "run.json").is_file():
            raise InputError(f"{run_dir}: --resume: no shards of an unfinished run here (expected {root}/run.json); "
                             "a finished run has nothing to resume; run without --resume to start afresh")
        if problem := partial_problem(partial, resume=True):
            raise InputError(f"{problem}; --resume continues only shards privaudit wrote")
        try:
            old = json.loads((root / "run.json").read_text())["run_key"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{root / 'run.json'}: unreadable; run without --resume to start afresh") from None
        if old != run_key:
            raise InputError(f"{run_dir}: --resume: its shards belong to another run (run key {old[:12]}, this run "
                             f"{run_key[:12]}): the model, data or settings differ; run without --resume")
    ledger = Ledger(partial, keep=resume)
    text = json.dumps({"run_key": run_key, "format": SHARD_FORMAT, "run": description}, indent=2, default=str) + "\n"
    ledger.write(root / "run.json", lambda tmp: tmp.write_text(text))
    return ShardStore(root, run_key=run_key, ledger=ledger)


def run_key(description: dict) -> str:
    """The key shards are tagged with: a hash of everything that determines the results."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- session
@dataclass
class StageCost:
    units: int = 0
    shards: int = 0
    reused: int = 0
    queries: int = 0
    reused_queries: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"items": self.units, "shards": self.shards, "shards_reused": self.reused, "queries": self.queries,
                "queries_reused": self.reused_queries, "seconds": round(self.seconds, 3)}


@dataclass
class Session:
    """An engine and (for a run with a folder) its shard store, active while an audit runs."""

    engine: Any
    store: ShardStore | None = None
    sample_root: Path | None = None
    progress: bool = False
    costs: dict[str, StageCost] = field(default_factory=dict)

    @property
    def queries(self) -> int:
        """Model queries spent in this session (shards reused from an earlier run cost none)."""
        return sum(c.queries for c in self.costs.values())

    def describe(self) -> dict:
        return {**self.engine.describe(), "stages": {k: c.to_json() for k, c in self.costs.items()},
                "queries": self.queries}

    def run(self, work: Work, *, label: str, key: str, sizes: Sequence[int], make: Callable[[int], dict],
            store: ShardStore | None, unit_shape: tuple[int, ...] | None = None) -> list[np.ndarray]:
        """Outputs of every shard (in shard order): finished shards are read back, the rest computed by
        the engine and each written as soon as it arrives. One progress bar across all workers.

        A finished shard is reused only when it fits its work unit: one numeric row per item and each
        row of ``unit_shape`` (when not given: the shape the computed shards have); one that does not
        (written by another version, or tampered with) is computed again, like a damaged one."""
        from privaudit.io.progress import progress_bar

        cost = self.costs.setdefault(label, StageCost())
        start = time.perf_counter()
        outs: dict[int, np.ndarray] = {}
        reused: dict[int, int] = {}  # shard -> the queries it cost when it was computed
        if store is not None:
            for i in range(len(sizes)):
                got = store.load(work.stage, key, i)
                if got is not None and _fits(got[0], rows=int(sizes[i]), unit_shape=unit_shape):
                    outs[i], reused[i] = got
        todo = [i for i in range(len(sizes)) if i not in outs]
        with progress_bar(total=int(sum(sizes)), initial=int(sum(sizes[i] for i in outs)), desc=label,
                          unit=work.unit, disable=not self.progress, leave=False) as bar:
            while True:
                for i, out, queries in self.engine.map(work, ((i, (lambda i=i: make(i))) for i in todo)):
                    if store is not None:
                        store.save(work.stage, key, i, out, queries)
                    outs[i] = out
                    cost.queries += queries
                    cost.shards += 1
                    bar.update(int(sizes[i]))
                # rows of unknown shape: every shard must agree with the computed ones (or, all reused, shard 0's)
                ref = next((outs[i].shape[1:] for i in todo), outs[0].shape[1:] if outs else ())
                todo = [i for i in reused if outs[i].shape[1:] != ref]
                if not todo:
                    break
                for i in todo:
                    del outs[i], reused[i]
                    bar.update(-int(sizes[i]))
        cost.reused += len(reused)
        cost.reused_queries += sum(reused.values())
        cost.units += int(sum(sizes))
        cost.seconds += time.perf_counter() - start
        return [outs[i] for i in range(len(sizes))]

    def score(self, attack, denoiser, images, *, batch_size: int, seed: int, label: str, prompt: str) -> np.ndarray:
        size = batch_size * SHARD_BATCHES
        n = len(images)
        bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
        key = hashlib.sha256(repr((
            attack.name, type(attack).__module__, sorted((k, repr(v)) for k, v in attack.get_params().items()),
            denoiser.fingerprint, images.source, hashlib.sha256("|".join(images.ids).encode()).hexdigest(),
            batch_size, size, seed, prompt)).encode()).hexdigest()[:24]

        def make(i: int) -> dict:
            idx = np.arange(*bounds[i])
            item: dict[str, Any] = {"pixels": np.ascontiguousarray(images.uint8(idx))}
            if images.captions:
                item["captions"] = np.array([images.captions[j] for j in idx], dtype=str)
            return item

        work = ScoreWork(attack=attack, denoiser=denoiser, batch_size=batch_size, seed=seed, prompt=prompt)
        outs = self.run(work, label=f"scores:{attack.name}:{label}", key=f"{attack.name}-{key}",
                        sizes=[b - a for a, b in bounds], make=make, store=self.store, unit_shape=())
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros(0, dtype=np.float32)

    def features(self, extractor, images, *, batch_size: int, label: str) -> np.ndarray:
        """Features of ``images`` (an ImageSet or a tensor in [-1, 1]) as float32 (n, d), in shards of
        ``batch_size`` images, keyed by the fitted extractor's identity and the images (their source and ids,
        or their content when they have no files: in-memory arrays, generated samples)."""
        n = len(images)
        size = batch_size * SHARD_BATCHES
        bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
        if n == 0:
            return transform_batches(extractor, images, batch_size=batch_size)
        if isinstance(images, torch.Tensor):
            x = np.ascontiguousarray(images.detach().cpu().float().numpy())
            what = ("tensor", x.shape, hashlib.sha256(x.tobytes()).hexdigest())
            make = lambda i: {"pixels": x[bounds[i][0]:bounds[i][1]]}  # noqa: E731
        else:
            if images.source == "<array>":  # no files: the pixels are the identity
                what = ("array", images.shape, hashlib.sha256(np.ascontiguousarray(images.uint8()).tobytes()).hexdigest())
            else:
                what = ("set", images.source, hashlib.sha256("|".join(images.ids).encode()).hexdigest())
            make = lambda i: {"pixels": np.ascontiguousarray(images.uint8(np.arange(*bounds[i])))}  # noqa: E731
        key = hashlib.sha256(repr((extractor_key(extractor), what, batch_size, size)).encode()).hexdigest()[:24]
        outs = self.run(FeatureWork(extractor=extractor, batch_size=batch_size),
                        label=f"features:{extractor.name}:{label}", key=f"{extractor.name}-{key}",
                        sizes=[b - a for a, b in bounds], make=make, store=self.store)
        return np.concatenate(outs).astype(np.float32, copy=False)

    def samples(self, denoiser, *, n: int, steps: int, sampler: str, seed: int, batch_size: int,
                key: str) -> torch.Tensor:
        from privaudit.model.latent import image_shape_of

        bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        store = None if self.sample_root is None else ShardStore(self.sample_root, run_key=key)
        work = SampleWork(denoiser=denoiser, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size)
        outs = self.run(work, label=f"samples:{sampler}-{steps}", key=key, sizes=[b - a for a, b in bounds],
                        make=lambda i: {"start": np.int64(bounds[i][0]), "count": np.int64(bounds[i][1] - bounds[i][0])},
                        store=store, unit_shape=tuple(image_shape_of(denoiser)))  # decoded: image shape
        return torch.from_numpy(np.concatenate(outs)) if outs else torch.zeros((0, *denoiser.sample_shape))
