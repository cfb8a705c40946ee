"""Argument types and the checks every command makes before any work (seeds, threads, data sets and their
calibration split, the cache folder, FPR levels), and the audit settings built from them."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from privaudit.io.errors import InputError
from privaudit.io.files import existing_ancestor
from privaudit.io.results import SEVERITIES


def _threads(value: str) -> int:
    n = int(value) if value.strip().isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number of threads >= 1")
    return n


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds: unsigned 32-bit


def seed_arg(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number from 0 to {SEED_MAX}")
    return n


def csv_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def plugin_param(value: str) -> tuple[str, str, object]:
    """``plugin.key=value`` (value parsed as JSON when it can be)."""
    try:
        lhs, raw = value.split("=", 1)
        plugin, key = lhs.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--param {value!r}: expected PLUGIN.KEY=VALUE") from None
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = raw
    return plugin, key, tuple(parsed) if isinstance(parsed, list) else parsed


def default_out(kind: str) -> Path:
    return Path("privaudit-runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def add_threads(p: argparse.ArgumentParser, *, default: int | None = None) -> None:
    what = "1: the built-in models are tiny" if default == 1 else "torch's choice"
    p.add_argument("--threads", type=_threads, default=default,
                   help=f"torch CPU threads (default: {what}); 1 is often fastest for small models on a busy machine")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--engine, --ray-address, --workers, --resume: the same for every command that scores (scan, mitigate, query)."""
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where scoring and sampling run: this process (default) or a Ray cluster (pip install "
                        "'privaudit[ray]'); results are the same")
    p.add_argument("--ray-address", metavar="auto|ADDR", help="--engine ray: join this cluster (auto: the one "
                   "started with `ray start --head`; default: start Ray on this machine)")
    p.add_argument("--workers", type=int, help="--engine ray: actors (default: one per GPU, else one per CPU)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR "
                   "(same model, data and settings): finished shards are reused, only the rest is computed")


def check_engine_args(a: argparse.Namespace) -> None:
    if a.engine != "ray" and (a.ray_address or a.workers is not None):
        raise InputError(f"--{'ray-address' if a.ray_address else 'workers'}: needs --engine ray")
    if a.workers is not None and a.workers < 1:
        raise InputError(f"--workers {a.workers}: must be at least 1")


def add_audit_args(p: argparse.ArgumentParser, *, detectors: tuple[str, ...] = ("nn",),
                    attacks: tuple[str, ...] = ("loss",)) -> None:
    add_threads(p)
    p.add_argument("--attacks", type=csv_list, default=attacks,
                   help=f"comma-separated attack plugins (default: {','.join(attacks)})")
    p.add_argument("--detectors", type=csv_list, default=None,
                   help=f"comma-separated detector plugins (default: {','.join(detectors)}, plus the prompt-level "
                        "detectors of a text-to-image target)")
    p.set_defaults(default_detectors=detectors)
    p.add_argument("--param", type=plugin_param, action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="a plugin parameter, e.g. nn.n_samples=512 (repeatable)")
    p.add_argument("--revision", help="with a Hub id (ORG/NAME) as MODEL_DIR: the branch, tag or commit to read from "
                   "the local Hugging Face cache (default: main; nothing is downloaded)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="the networks' dtype (auto: float32 on the CPU, float16 for latent models on CUDA); "
                        "attack statistics stay float32")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled (.bin/.ckpt) weights: they can run code")
    p.add_argument("--plugins-dir", type=Path, help="folder of drop-in plugin .py files; they are imported, "
                   "i.e. their code runs with your permissions: use only files you trust")
    p.add_argument("--reference", type=Path, help="never-trained-on images for feature extractors (optional)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed for data splits, attack noise and sampling (default: 0)")
    p.add_argument("--batch-size", type=int, default=128, help="images per model call (default: 128)")
    p.add_argument("--calibration-fraction", type=float, default=0.5,
                   help="share of members and holdout used to fit thresholds and timesteps; the rest is evaluated "
                        "(default: 0.5)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals (default: 1000)")
    p.add_argument("--fpr", type=float, action="append", default=[],
                   help="an FPR level you need resolved; error if the holdout split is too small for it")
    p.add_argument("--fail-on", choices=SEVERITIES[1:] + ("never",), default="never",
                   help="exit 1 when the verdict is at or above this level (default: never)")
    p.add_argument("--redact", choices=("thumbnails", "blur", "omit"), default="thumbnails",
                   help="how the report and results.json show training images (default: thumbnails)")
    p.add_argument("--cache-dir", type=Path, help="sample cache (default: $PRIVAUDIT_CACHE or ~/.cache/privaudit)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no stage lines")
    p.add_argument("--log-json", action="store_true", help="progress as one JSON object per stage on stderr (for "
                   "pipelines); without it, bars on a terminal and one plain line per stage elsewhere (CI logs)")
    p.add_argument("--prompt", choices=("caption", "empty"), default="caption",
                   help="text-conditional models: condition attacks on each image's caption or the empty prompt "
                        "(default: caption)")
    add_engine_args(p)
    p.add_argument("--delta", type=float, default=1e-5,
                   help="delta of the empirical epsilon lower bound eps_hat (default: 1e-5)")
    p.add_argument("--randomized-membership", action="store_true",
                   help="members were assigned at random from one pool (canaries): eps_hat is then a DP lower "
                        "bound; without it, eps_hat is reported as distinguishability")


def settings_of(a: argparse.Namespace):
    from privaudit.audit.runner import AuditSettings

    params: dict[str, dict] = {}
    for plugin, key, value in a.param:
        params.setdefault(plugin, {})[key] = value
    check_engine_args(a)
    if not 0 < a.calibration_fraction < 1:
        raise InputError(f"--calibration-fraction {a.calibration_fraction}: must lie strictly between 0 and 1")
    if a.cache_dir is not None:
        _check_cache_dir(a.cache_dir)
    return AuditSettings(attacks=a.attacks, detectors=a.default_detectors if a.detectors is None else a.detectors,
                         follow_target=a.detectors is None, plugin_params=params, seed=a.seed,
                         batch_size=a.batch_size, calibration_fraction=a.calibration_fraction,
                         n_boot=a.bootstrap, progress=not a.quiet, cache_dir=a.cache_dir,
                         prompt=a.prompt, epsilon_delta=a.delta, randomized_membership=a.randomized_membership,
                         engine=a.engine, ray_address=a.ray_address, workers=a.workers, resume=a.resume is not None)


def _check_cache_dir(path: Path) -> None:
    """``--cache-dir`` must be a folder privaudit can create or write: checked before any work."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--cache-dir {path}: exists and is a file, not a folder")
    near = existing_ancestor(path)
    if not near.is_dir():
        raise InputError(f"--cache-dir {path}: {near} is a file; the cache folder cannot be created under it")
    if not os.access(near, os.W_OK | os.X_OK):
        raise InputError(f"--cache-dir {path}: {near} is not writable")


MIN_SPLIT = 2  # images in each calibration and evaluation split (membership metrics need 2 of each set)


def check_sets(a: argparse.Namespace) -> None:
    """Set sizes against ``--calibration-fraction`` and ``--fpr``, before any model work (the sets are
    counted, not decoded)."""
    from privaudit.data.sets import load_images
    from privaudit.stats.metrics import calibration_split

    sizes = {}
    for name in ("members", "holdout"):
        path = getattr(a, name)
        try:
            n = sizes[name] = len(load_images(path, name=name))
        except InputError:  # missing or empty: reported by the run in its own order (settings, model, data)
            continue
        if n < 4:
            continue  # the loader's own check names it (at least 4 images)
        try:
            n_cal, n_ev = (len(s) for s in calibration_split(n, fraction=a.calibration_fraction, seed=a.seed))
        except ValueError:  # a split rounded to nothing (scikit-learn floors the calibration share)
            n_cal = int(n * a.calibration_fraction)
            n_ev = n - n_cal
        if min(n_cal, n_ev) < MIN_SPLIT:
            raise InputError(f"--calibration-fraction {a.calibration_fraction:g}: splits the {n} {name} images "
                             f"({path}) into {n_cal} for calibration and {n_ev} for evaluation; each needs at "
                             f"least {MIN_SPLIT}")
    if a.fpr and "holdout" in sizes:
        _check_fpr(a, sizes["holdout"])


def _check_fpr(a: argparse.Namespace, holdout_count: int) -> None:
    n_eval = holdout_count - int(round(holdout_count * a.calibration_fraction))
    for f in a.fpr:
        if not 0 < f < 1:
            raise InputError(f"--fpr {f}: must lie strictly between 0 and 1")
        if n_eval * f < 1:
            raise InputError(f"{a.holdout}: holdout evaluation split has {n_eval} images; FPR {f:g} needs at least "
                             f"{int(-(-1 // f))} (holdout of about {int(-(-1 // f) / (1 - a.calibration_fraction))})")
