"""A run folder: checked before any work, written in a stage and published whole with its ownership manifest,
its unfinished shards kept in .partial for --resume, and the run's manifest (argv, versions, data)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from privaudit import __version__
from privaudit.api import AuditSettings, default_cache_dir
from privaudit.api.registry import Registry
from privaudit.data.sets import ImageSet
from privaudit.io.errors import InputError
from privaudit.io.exports import write_exports
from privaudit.io.files import csv_safe, existing_ancestor, publish_dir, write_json, write_text

# PARTIAL: an unfinished run's finished shards (privaudit.audit.engine): kept for --resume, gone once the run is written
from privaudit.io.ownership import PARTIAL, check_replaceable, folder_lock, remove_stale_siblings
from privaudit.model.denoiser import Denoiser
from privaudit.model.target import ModelInfo

# settings that change results (the engine, workers, progress bars and caches do not)
_RESULT_SETTINGS = ("attacks", "detectors", "plugin_params", "seed", "batch_size", "calibration_fraction", "n_boot",
                    "prompt", "follow_target", "epsilon_delta", "randomized_membership")



def manifest(*, argv: list[str] | None, device: torch.device, settings: AuditSettings, info: ModelInfo | None,
             data: dict, registry: Registry, seconds: float) -> dict:
    import diffusers
    import faiss
    import sklearn

    used = set(settings.attacks) | set(settings.detectors)
    return {
        "argv": list(argv) if argv is not None else sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"privaudit": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "faiss": faiss.__version__, "pandas": pd.__version__},
        "platform": platform.platform(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "seed": settings.seed, "calibration_fraction": settings.calibration_fraction, "n_boot": settings.n_boot,
        "model": None if info is None else info.__dict__,
        "data": data,
        "plugins": {r.name: r.origin for r in registry if r.name in used},
        "seconds": round(seconds, 2),
    }


def check_out(out: str | Path, *, resume: bool = False) -> Path:
    """``--out`` must be a folder we may write: fails (exit 2) before any work, naming the path."""
    out = Path(out)
    if out.name in ("", ".", ".."):  # the stage, lock and swap are named after it and sit beside it
        out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is a file, not a folder")
    parent = existing_ancestor(out.parent)
    if not parent.is_dir():
        raise InputError(f"{parent}: is a file; --out {out} cannot be created under it")
    # replaced only when empty or provably privaudit's (privaudit.io.ownership): exit 2 naming the first foreign file
    check_replaceable(out, resume=resume)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{out}: cannot write the run folder here ({e.strerror or e.__class__.__name__})") from None
    return out


@contextmanager
def run_folder(out: str | Path, *, resume: bool = False) -> Iterator[Path]:
    """Check ``out`` and hold a lock on it for the whole run: a second run into it fails with exit 2.
    Hidden siblings a killed publish left (``.OUT.*.partial``, ``.OUT.*.old``) are removed when privaudit
    provably wrote them, one line each on stderr."""
    out = check_out(out, resume=resume)
    with folder_lock(out, wait=False, busy=f"{out}: another privaudit run is writing to this folder"):
        remove_stale_siblings(out)
        yield out


def write_run(out: str | Path, results: dict, *, baseline: dict | None = None, redact: str = "thumbnails") -> Path:
    """Write results.json, scores.csv, per-detector tables and report.html into a fresh hidden folder
    beside ``out`` and publish it with one rename: ``out`` holds one whole run, never a mix of two
    (an unfinished run's shards in ``out/.partial`` go with the folder it replaces)."""
    from privaudit.reports import render_html
    from privaudit.reports.images import redact_images

    out = check_out(out)
    body = {k: v for k, v in results.items() if k not in ("scores", "tables")}
    body["outputs"] = {"scores": "scores.csv", **{k: f"{k}.csv" for k in results.get("tables", {})}}
    html = render_html(body, baseline=baseline, redact=redact)  # render first: a failure writes nothing
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        write_text(stage / "scores.csv", csv_safe(results["scores"]).to_csv(index=False))
        for name, table in results.get("tables", {}).items():
            write_text(stage / f"{name}.csv", csv_safe(table).to_csv(index=False))
        write_json(stage / "results.json", redact_images(body, mode=redact))  # no more training images than the report
        write_exports(stage, body)  # summary.json, junit.xml: for CI
        write_text(stage / "report.html", html)
        publish_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


@contextmanager
def engine_session(out: Path, *, settings: AuditSettings) -> Iterator[Any]:
    """The run's engine (``settings.engine``, ``privaudit.audit.engine``) for everything inside; ``bind_run``
    then gives it the run folder's shard store. Fails without a shard written: no trace of the run."""
    from privaudit.audit.engines import session

    out = Path(out)
    existed = out.exists()
    cache = Path(settings.cache_dir or default_cache_dir())
    try:
        with session(engine=settings.engine, address=settings.ray_address, workers=settings.workers,
                     sample_root=cache / "samples" / "shards", progress=settings.progress) as run:
            yield run
    except BaseException:
        if run_store_empty(out):  # nothing worth resuming
            remove_partial(out)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def remove_partial(out: Path) -> None:
    """Remove the run's shard folder when privaudit provably wrote all of it (else it stays, untouched)."""
    from privaudit.io.ownership import partial_problem

    if partial_problem(Path(out) / PARTIAL) is None:
        shutil.rmtree(Path(out) / PARTIAL, ignore_errors=True)


def run_store_empty(out: Path) -> bool:
    return not any((Path(out) / PARTIAL / "shards").glob("*/*/*.npz"))


def bind_run(run: Any, out: Path, *, settings: AuditSettings, denoiser: Denoiser, data: dict, registry: Registry,
             extra: dict | None = None) -> None:
    """Give the session the shard store of ``out``, tagged with a key of everything that determines the
    results (model, data, result settings, plugins), so ``--resume`` reuses only shards of this run."""
    from privaudit.audit.engine import SHARD_BATCHES, open_store, run_key

    description = {"privaudit": __version__, "model": denoiser.fingerprint, "data": data,
                   "settings": {k: getattr(settings, k) for k in _RESULT_SETTINGS},
                   "plugins": {r.name: r.origin for r in registry}, "shard_batches": SHARD_BATCHES, **(extra or {})}
    run.store = open_store(Path(out), run_key=run_key(description), resume=settings.resume, description=description)


def data_fingerprints(members: ImageSet, holdout: ImageSet, reference: ImageSet | None) -> dict:
    return {"members": members.fingerprint(), "holdout": holdout.fingerprint(),
            **({"reference": reference.fingerprint()} if reference is not None else {})}
