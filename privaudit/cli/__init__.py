"""Command line: ``privaudit scan | mitigate | report | plugins | demo | fixture``.

Exit codes: 0 clean, 1 a finding at or above ``--fail-on``, 2 usage or input error,
3 runtime error. Human messages go to stderr; the report path to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from privaudit import __version__
from privaudit.io.errors import EXIT_FINDINGS, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, InputError, PrivauditError
from privaudit.io.results import SEVERITIES


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (``privaudit: error: ...``), exit 2, like every other input error."""

    def error(self, message: str):
        where = self.prog.removeprefix("privaudit").strip()
        self.exit(EXIT_USAGE, f"privaudit: error: {where + ': ' if where else ''}{message}\n")


def _threads(value: str) -> int:
    n = int(value) if value.strip().isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number of threads >= 1")
    return n


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds: unsigned 32-bit


def _seed(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number from 0 to {SEED_MAX}")
    return n


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _param(value: str) -> tuple[str, str, object]:
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


def _default_out(kind: str) -> Path:
    return Path("privaudit-runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _add_threads(p: argparse.ArgumentParser, *, default: int | None = None) -> None:
    what = "1: the built-in models are tiny" if default == 1 else "torch's choice"
    p.add_argument("--threads", type=_threads, default=default,
                   help=f"torch CPU threads (default: {what}); 1 is often fastest for small models on a busy machine")


def _add_audit_args(p: argparse.ArgumentParser, *, detectors: tuple[str, ...] = ("nn",),
                    attacks: tuple[str, ...] = ("loss",)) -> None:
    _add_threads(p)
    p.add_argument("--attacks", type=_csv, default=attacks,
                   help=f"comma-separated attack plugins (default: {','.join(attacks)})")
    p.add_argument("--detectors", type=_csv, default=None,
                   help=f"comma-separated detector plugins (default: {','.join(detectors)}, plus the prompt-level "
                        "detectors of a text-to-image target)")
    p.set_defaults(default_detectors=detectors)
    p.add_argument("--param", type=_param, action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="a plugin parameter, e.g. nn.n_samples=512 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="the networks' dtype (auto: float32 on the CPU, float16 for latent models on CUDA); "
                        "attack statistics stay float32")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled (.bin/.ckpt) weights: they can run code")
    p.add_argument("--plugins-dir", type=Path, help="folder of drop-in plugin .py files; they are imported, "
                   "i.e. their code runs with your permissions: use only files you trust")
    p.add_argument("--reference", type=Path, help="never-trained-on images for feature extractors (optional)")
    p.add_argument("--seed", type=_seed, default=0, help="seed for data splits, attack noise and sampling (default: 0)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--prompt", choices=("caption", "empty"), default="caption",
                   help="text-conditional models: condition attacks on each image's caption or the empty prompt "
                        "(default: caption)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where scoring and sampling run: this process (default) or a Ray cluster (pip install "
                        "'privaudit[ray]'); results are the same")
    p.add_argument("--ray-address", metavar="auto|ADDR", help="--engine ray: join this cluster (auto: the one "
                   "started with `ray start --head`; default: start Ray on this machine)")
    p.add_argument("--workers", type=int, help="--engine ray: actors (default: one per GPU, else one per CPU)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR "
                   "(same model, data and settings): finished shards are reused, only the rest is computed")
    p.add_argument("--delta", type=float, default=1e-5,
                   help="delta of the empirical epsilon lower bound eps_hat (default: 1e-5)")
    p.add_argument("--randomized-membership", action="store_true",
                   help="members were assigned at random from one pool (canaries): eps_hat is then a DP lower "
                        "bound; without it, eps_hat is reported as distinguishability")


def _settings(a: argparse.Namespace):
    from privaudit.audit.runner import AuditSettings

    params: dict[str, dict] = {}
    for plugin, key, value in a.param:
        params.setdefault(plugin, {})[key] = value
    if a.engine != "ray" and (a.ray_address or a.workers is not None):
        raise InputError(f"--{'ray-address' if a.ray_address else 'workers'}: needs --engine ray")
    if a.workers is not None and a.workers < 1:
        raise InputError(f"--workers {a.workers}: must be at least 1")
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
    near = path
    while not near.exists() and near != near.parent:
        near = near.parent
    if not near.is_dir():
        raise InputError(f"--cache-dir {path}: {near} is a file; the cache folder cannot be created under it")
    if not os.access(near, os.W_OK | os.X_OK):
        raise InputError(f"--cache-dir {path}: {near} is not writable")


MIN_SPLIT = 2  # images in each calibration and evaluation split (membership metrics need 2 of each set)


def _check_sets(a: argparse.Namespace) -> None:
    """Set sizes against ``--calibration-fraction`` and ``--fpr``, before any model work (the sets are
    counted, not decoded)."""
    from privaudit.data.sets import load_images
    from privaudit.stats.metrics import calibration_split

    sizes = {}
    for name in ("members", "holdout"):
        path = getattr(a, name)
        n = sizes[name] = len(load_images(path, name=name))
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
    if a.fpr:
        _check_fpr(a, sizes["holdout"])


def _check_fpr(a: argparse.Namespace, holdout_count: int) -> None:
    n_eval = holdout_count - int(round(holdout_count * a.calibration_fraction))
    for f in a.fpr:
        if not 0 < f < 1:
            raise InputError(f"--fpr {f}: must lie strictly between 0 and 1")
        if n_eval * f < 1:
            raise InputError(f"{a.holdout}: holdout evaluation split has {n_eval} images; FPR {f:g} needs at least "
                             f"{int(-(-1 // f))} (holdout of about {int(-(-1 // f) / (1 - a.calibration_fraction))})")


def _exit_for(results: dict, fail_on: str) -> int:
    if any(p["status"] == "error" for p in results["plugins"]):
        for p in results["plugins"]:
            if p["status"] == "error":
                print(f"privaudit: plugin {p['name']} failed: {p['reason']}", file=sys.stderr)
        return EXIT_RUNTIME
    from privaudit.io.verdict import fails

    if fails(results["verdict"]["level"], fail_on):
        return EXIT_FINDINGS
    return EXIT_OK


def _fmt_metric(key: str, m: dict) -> str:
    """``key=value [lo, hi]``; counts as integers; ``(indicative)`` where the set is too small to resolve it."""
    from privaudit.reports.fmt import metric_info

    v, ci = m["value"], m.get("ci")
    whole = metric_info(key)[2] == "count" and float(v).is_integer()
    text = f"{key}={int(v)}" if whole else f"{key}={v:.3f}"
    if ci and not whole and None not in ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text + (" (indicative)" if m.get("reliable") is False else "")


def _summary(results: dict, out: Path) -> None:
    v = results["verdict"]
    print(f"verdict: {v['level']}  (metric=value [95% interval])", file=sys.stderr)
    for p in results["plugins"]:
        ms = ", ".join(_fmt_metric(k, m) for k, m in p["metrics"].items() if m["value"] is not None)
        print(f"  {p['name']:<10} {p['status']:<8} {p['severity']:<9} {ms}{p['reason']}", file=sys.stderr)
    eps = results.get("epsilon")
    if isinstance(eps, dict):
        print(f"  eps_hat {eps['value']:.2f} (delta {eps['delta']:g}, {eps['attack']}): {eps['label']}", file=sys.stderr)
    for w in v["warnings"]:
        print(f"  warning: {w}", file=sys.stderr)
    print(out / "report.html")


def _out(a: argparse.Namespace, kind: str) -> Path:
    """The run folder: --out, or the folder --resume continues (both given: they must agree)."""
    if a.resume is not None:
        if a.out is not None and Path(a.out).resolve() != Path(a.resume).resolve():
            raise InputError(f"--resume {a.resume}: resumes into its own folder; drop --out {a.out} or make them equal")
        if not Path(a.resume).is_dir():
            raise InputError(f"{a.resume}: --resume needs the folder of an earlier run")
        return Path(a.resume)
    return a.out or _default_out(kind)


def cmd_scan(a: argparse.Namespace) -> int:
    from privaudit.audit.runner import scan

    settings = _settings(a)
    _check_sets(a)
    out = _out(a, "scan")
    results = scan(model_dir=a.model_dir, members=a.members, holdout=a.holdout, out=out, settings=settings,
                   device=a.device, allow_pickle=a.allow_pickle, plugins_dir=a.plugins_dir, reference=a.reference,
                   argv=sys.argv, redact=a.redact, dtype=a.dtype, lora=a.lora, base=a.base)
    _summary(results, Path(out))
    return _exit_for(results, a.fail_on)


def cmd_report(a: argparse.Namespace) -> int:
    from privaudit.io.files import write_text
    from privaudit.reports import render_html

    def read(run: Path) -> dict:
        f = run / "results.json"
        if not f.exists():
            raise InputError(f"{run}: no results.json (not a privaudit run folder)")
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{f}: invalid JSON ({e.msg} at line {e.lineno})") from None
        except (RecursionError, UnicodeDecodeError) as e:
            raise InputError(f"{f}: unreadable JSON ({e.__class__.__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("plugins", []), list):
            raise InputError(f"{f}: not a privaudit results file (expected an object with a plugins list)")
        return data

    results = read(a.run_dir)
    baseline = read(a.baseline) if a.baseline else None
    own = a.run_dir / "report.html"
    if a.out is not None and not _is_own_report(a.out, own):
        _check_report_out(a.out, run=a.run_dir)
        html = render_html(results, baseline=baseline, redact=a.redact)
        try:
            write_text(a.out, html)
        except OSError as e:
            raise InputError(f"--out {a.out}: cannot write the report here ({e.strerror or e.__class__.__name__})") from None
        print(a.out)
        return EXIT_OK
    _rewrite_run_report(a, load=lambda: read(a.run_dir), baseline=baseline, only_html=a.out is not None)
    print(own)
    return EXIT_OK


def _is_own_report(out: Path, own: Path) -> bool:
    return out.parent.resolve() == own.parent.resolve() and out.name == own.name


def _check_report_out(out: Path, *, run: Path) -> None:
    """``report --out FILE`` never lands inside a run folder (RUN, or any folder up the tree holding a
    privaudit manifest) and never replaces a file that is not a privaudit HTML report: exit 2 naming it."""
    from privaudit.io.ownership import MANIFEST

    if not str(out) or str(out) in (".", ".."):
        raise InputError(f"--out {str(out)!r}: give the HTML file to write")
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give the HTML file to write")
    target = out.parent.resolve() / out.name
    for folder in (target.parent, *target.parent.parents):
        if folder == run.resolve() or (folder / MANIFEST).is_file():
            raise InputError(f"--out {out}: inside the run folder {folder}; privaudit writes there only its own "
                             f"report.html (omit --out, or write the file outside the run folder)")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file; the report cannot be written under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {parent} is not writable")
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise InputError(f"--out {out}: not a regular file; give a new file or a report privaudit wrote")
    if out.exists():
        try:
            with open(out, "rb") as f:
                head = f.read(4096).decode("utf-8", "replace").lower()
        except OSError as e:
            raise InputError(f"--out {out}: unreadable ({e.strerror or e.__class__.__name__})") from None
        if not (head.lstrip().startswith("<!doctype html>") and "<title>privaudit " in head):
            raise InputError(f"--out {out}: exists and is not a privaudit HTML report; choose a new file")


def _rewrite_run_report(a: argparse.Namespace, *, load: Callable[[], dict], baseline: dict | None,
                        only_html: bool) -> None:
    """Re-render RUN/report.html (and with ``--redact blur|omit``, without ``--out``, every file of the run)
    under the run folder's lock, so it cannot interleave with a scan publishing into the same folder (exit 2
    while one holds it); the run's ownership manifest is updated with what was rewritten."""
    from privaudit.io.files import write_text
    from privaudit.io.ownership import MANIFEST, add_to_manifest, folder_lock, listed, refresh_manifests
    from privaudit.reports import render_html

    run = a.run_dir
    own = run / "report.html"
    with folder_lock(run, wait=False, busy=f"{run}: a privaudit run is writing to this folder; try again when it "
                                           "has finished"):
        results = load()  # read again under the lock: a run may have published just before it
        has_manifest = (run / MANIFEST).is_file()
        if has_manifest and (own.exists() or own.is_symlink()) and not listed(run, "report.html"):
            raise InputError(f"{own}: not written by privaudit (no entry in {run / MANIFEST}); "
                             "write the report elsewhere with --out FILE")
        if own.is_symlink() or (own.exists() and not own.is_file()):
            raise InputError(f"{own}: not a regular file; write the report elsewhere with --out FILE")
        if a.redact != "thumbnails" and not only_html:  # the folder is what gets shared: every file in it
            from privaudit.reports.images import redact_run

            redact_run(run, mode=a.redact, render=lambda r, b, m: render_html(r, baseline=b, redact=m))
        write_text(own, render_html(results, baseline=baseline, redact=a.redact))
        refresh_manifests(run)
        if has_manifest:
            add_to_manifest(run, "report.html")


def cmd_plugins(a: argparse.Namespace) -> int:
    """A table of every plugin, then each one's one-line description and parameters with their defaults."""
    from privaudit.api.registry import Registry

    reg = Registry.build(plugins_dir=a.plugins_dir)
    rows = [("name", "id", "kind", "threat model", "queries/img", "requires", "origin")]
    described = []
    for r in reg:
        p = r.cls()
        rows.append((r.name, r.cls.id, r.kind, r.cls.threat_model, f"{p.queries_per_image():g}",
                     ",".join(r.cls.requires) or "-", r.origin))
        params = ", ".join(f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v, default=str)}"
                           for k, v in p.get_params().items())
        described.append((r.name, r.cls.summary().replace("``", ""), params))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for name, doc, params in described:
        print(f"\n{name}: {doc or '(no description)'}")
        print(f"  parameters: {params or 'none'}  (set with --param {name}.KEY=VALUE)")
    return EXIT_OK


FIXTURES = ("digits", "digits-text", "digits-v", "digits-flow", "digits-lora")


def cmd_fixture(a: argparse.Namespace) -> int:
    from functools import partial

    from privaudit.fixtures import digits, digits_lora, digits_text, digits_variants

    builders: dict[str, Callable[..., Path]] = {"digits": digits.build, "digits-text": digits_text.build,
                                                "digits-lora": digits_lora.build,
                **{name: partial(digits_variants.build, name=name) for name in digits_variants.VARIANTS}}
    if a.name not in builders:
        raise InputError(f"fixture {a.name!r}: unknown; available: {', '.join(builders)}")
    if not a.out.strip():  # Path("") is "."; checked before anything is created
        raise InputError(f"--out {a.out!r}: empty; give the folder to build the fixture in")
    out = builders[a.name](out=Path(a.out), progress=not a.quiet)
    print(out)
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from privaudit.audit.runner import AuditSettings, default_cache_dir, scan
    from privaudit.fixtures import digits

    start = time.perf_counter()
    fixture = digits.build(out=default_cache_dir() / "fixtures" / "digits", progress=not a.quiet)
    print(f"built-in target ready in {time.perf_counter() - start:.1f}s: {fixture}", file=sys.stderr)
    out = a.out or _default_out("demo")
    settings = AuditSettings(attacks=a.attacks, detectors=a.detectors, progress=not a.quiet)
    results = scan(model_dir=fixture / "model", members=fixture / "members", holdout=fixture / "holdout",
                   out=out, settings=settings, device=a.device, reference=fixture / "reference", argv=sys.argv)
    _summary(results, Path(out))
    if a.mitigate:
        from privaudit.mitigation.flow import mitigate

        # the guard is cached by model, data and parameters: a second demo reuses it
        mit = mitigate(model_dir=fixture / "model", members=fixture / "members", holdout=fixture / "holdout",
                       out=Path(out) / "mitigate", method=a.mitigate, settings=AuditSettings(
                           attacks=a.mitigate_attacks or a.attacks, detectors=tuple(dict.fromkeys((*a.detectors, "quality"))),
                           progress=not a.quiet),
                       device=a.device, reference=fixture / "reference", argv=sys.argv)
        from privaudit.io.ownership import write_manifest

        if Path(out).is_dir():  # the scan's folder now also holds mitigate/: both are privaudit's
            write_manifest(Path(out))
        _mitigation_summary(mit, Path(out) / "mitigate")
    print(f"demo finished in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return EXIT_OK


def _mitigation_summary(results: dict, out: Path) -> None:
    v = results.get("verdict") or {}
    if v:
        print(f"verdict: {v.get('before', '?')} (raw model) -> {v['level']} (protected {results['method']} pipeline)",
              file=sys.stderr)
        for f in v.get("fired", [])[:6]:
            print(f"  {f['level']:<9} {f['plugin']}: {f['text']}", file=sys.stderr)
    for w in results["warnings"]:
        print(f"  warning: {w}", file=sys.stderr)
    for f in results["findings"]:
        print(f"  {f}", file=sys.stderr)
    print(f"  protected pipeline: {results['protected']}", file=sys.stderr)
    print(out / "report.html")


def cmd_mitigate(a: argparse.Namespace) -> int:
    from privaudit.audit.runner import run_folder
    from privaudit.mitigation.flow import mitigate

    settings = _settings(a)
    _check_sets(a)
    params = dict(settings.plugin_params.get(a.method, {}))  # --param METHOD.key=value
    if a.alpha is not None:
        params["alpha"] = a.alpha
    if a.scale is not None:
        params["scale"] = a.scale
    out = _out(a, "mitigate")
    with run_folder(out, resume=settings.resume):  # checked and locked before any work
        results = mitigate(model_dir=a.model_dir, members=a.members, holdout=a.holdout, out=out, method=a.method,
                           params=params, settings=settings, device=a.device, reference=a.reference, sweep=a.sweep,
                           allow_pickle=a.allow_pickle, plugins_dir=a.plugins_dir, argv=sys.argv, redact=a.redact,
                           dtype=a.dtype)
    _mitigation_summary(results, Path(out))
    return _exit_for({**results["after"], "verdict": results["verdict"]}, a.fail_on)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="privaudit", description=(
        "Audit a diffusers model for training-data privacy risk (membership inference, replication) and mitigate it. "
        "Exit codes: 0 clean, 1 a finding at or above --fail-on (or an inconclusive verdict), 2 usage or input "
        "error, 3 runtime error."))
    ap.add_argument("--version", action="version", version=f"privaudit {__version__}")
    ap.add_argument("--debug", action="store_true", help="on an error, print the full message and traceback "
                    "(default: one line)")
    sub = ap.add_subparsers(dest="command", required=True)

    model_help = "a local diffusers pipeline folder (model_index.json, unet/, scheduler/)"
    p = sub.add_parser("scan", help="audit a diffusers pipeline folder")
    p.add_argument("model_dir", type=Path, help=model_help)
    p.add_argument("--members", type=Path, required=True, help="training images: folder or .npy/.npz")
    p.add_argument("--holdout", type=Path, required=True, help="images never trained on, same distribution")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/scan-<time>)")
    p.add_argument("--lora", type=Path, help="a LoRA adapter (.safetensors file, or a diffusers / peft adapter folder) "
                   "to load onto MODEL_DIR, the base; the adapted model is audited and the base calibrates each "
                   "gray-box attack")
    p.add_argument("--base", type=Path, help="the base model a full fine-tune MODEL_DIR started from: each gray-box "
                   "attack also reports score(fine-tune) - score(base)")
    _add_audit_args(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("mitigate", help="protect a model (e.g. CPSample) and audit it before and after")
    p.add_argument("model_dir", type=Path, help=model_help + ": the raw model to protect")
    p.add_argument("--method", default="cpsample", help="mitigation plugin (default: cpsample)")
    p.add_argument("--members", type=Path, required=True, help="training images: folder or .npy/.npz")
    p.add_argument("--holdout", type=Path, required=True, help="images never trained on, same distribution")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/mitigate-<time>)")
    p.add_argument("--alpha", type=float, help="CPSample gate: guide where the guard's confidence exceeds 1 - alpha, "
                   "alpha in (0, 0.5]")
    p.add_argument("--scale", type=float, help="CPSample guidance scale (>= 0; 0 turns guidance off)")
    p.add_argument("--sweep", action="store_true", help="also audit the method's sweep (e.g. alpha x scale) and "
                   "recommend a setting")
    # a protected model is judged as served: black-box attacks (images only) beside the gray-box loss
    _add_audit_args(p, detectors=("nn", "quality"), attacks=("loss", "rediffuse", "gen-nn"))
    p.set_defaults(func=cmd_mitigate)

    p = sub.add_parser("report", help="re-render a run's report from its results.json")
    p.add_argument("run_dir", type=Path, help="a run folder written by scan, mitigate or demo")
    p.add_argument("--baseline", type=Path, help="another run folder to compare against")
    p.add_argument("--redact", choices=("thumbnails", "blur", "omit"), default="thumbnails",
                   help="thumbnails (default) re-renders report.html only; blur or omit also rewrite every file of "
                        "the run folder (results.json, CSVs, before/ and after/) with images redacted")
    p.add_argument("--out", type=Path, help="write the HTML here instead of RUN_DIR/report.html; nothing in "
                   "RUN_DIR changes")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plugins", help="list installed plugins, their descriptions and parameters")
    p.add_argument("--plugins-dir", type=Path, help="folder of drop-in plugin .py files; they are imported, "
                   "i.e. their code runs with your permissions: use only files you trust")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("fixture", help="build a built-in target (no download)")
    p.add_argument("name", choices=FIXTURES, help="which built-in target")
    p.add_argument("--out", type=str, required=True, help="folder to write model/, members/, holdout/ ... into")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # measured beside two busy processes on 2 cores: 47 ms a training step with 1 thread, 1588 ms with 2
    _add_threads(p, default=1)
    p.set_defaults(func=cmd_fixture)

    p = sub.add_parser("demo", help="build the built-in digits target, audit it, write a report")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/demo-<time>)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda")
    # The demo shows everything built in: every pixel-model attack and both image detectors.
    p.add_argument("--attacks", type=_csv, default=("loss", "secmi", "pia", "pian", "sima", "gsa", "rediffuse", "gen-nn"),
                   help="comma-separated attack plugins (default: loss,secmi,pia,pian,sima,gsa,rediffuse,gen-nn)")
    p.add_argument("--detectors", type=_csv, default=("nn", "quality"),
                   help="comma-separated detector plugins (default: nn,quality)")
    # The before/after audit runs the scan's attacks: a verdict judged on fewer attacks than the scan's could read
    # "low" while the scan shows leakage the mitigation never faced.
    p.add_argument("--mitigate-attacks", type=_csv, default=None,
                   help="attacks for the before/after audit of the mitigation (default: the same as --attacks)")
    p.add_argument("--mitigate", default="cpsample", help="mitigation to demonstrate after the scan (default: cpsample)")
    p.add_argument("--no-mitigate", dest="mitigate", action="store_const", const=None, help="scan only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(p, default=1)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("query", help="was my data used? test a suspect image set against never-seen images")
    p.add_argument("model_dir", type=Path, help=model_help)
    p.add_argument("--suspect", type=Path, required=True, help="the images you suspect were trained on")
    p.add_argument("--holdout", type=Path, required=True,
                   help="images of the same source the model certainly never saw (at least 8)")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/query-<time>)")
    p.add_argument("--lora", type=Path, help="a LoRA adapter to load onto MODEL_DIR (as scan --lora)")
    p.add_argument("--base", type=Path, help="the base model of a full fine-tune MODEL_DIR (as scan --base)")
    p.add_argument("--attacks", type=_csv, default=("loss", "pia", "secmi"),
                   help="comma-separated attack plugins whose scores are combined (default: loss,pia,secmi)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="a plugin parameter (repeatable)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level of the answer (default: 0.01)")
    p.add_argument("--repeats", type=int, default=5, help="draws per set size in the p-value curve (default: 5)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"), help="the networks' dtype")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled (.bin/.ckpt) weights: they can run code")
    p.add_argument("--plugins-dir", type=Path, help="folder of drop-in plugin .py files (their code runs)")
    p.add_argument("--seed", type=_seed, default=0, help="seed for the splits and attack noise (default: 0)")
    p.add_argument("--batch-size", type=int, default=128, help="images per model call (default: 128)")
    p.add_argument("--prompt", choices=("caption", "empty"), default="caption",
                   help="text-conditional models: condition attacks on captions or the empty prompt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(p)
    p.set_defaults(func=cmd_query)
    for sp in sub.choices.values():  # --debug also after the command; the top-level default stands
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return ap


def cmd_query(a: argparse.Namespace) -> int:
    from privaudit.audit.query import query
    from privaudit.audit.runner import AuditSettings

    params: dict[str, dict] = {}
    for plugin, key, value in a.param:
        params.setdefault(plugin, {})[key] = value
    settings = AuditSettings(attacks=a.attacks, detectors=(), plugin_params=params, seed=a.seed,
                             batch_size=a.batch_size, progress=not a.quiet, prompt=a.prompt)
    out = a.out or _default_out("query")
    r = query(model_dir=a.model_dir, suspect=a.suspect, holdout=a.holdout, out=out, settings=settings, lora=a.lora,
              base=a.base, device=a.device, allow_pickle=a.allow_pickle, dtype=a.dtype, alpha=a.alpha,
              repeats=a.repeats, plugins_dir=a.plugins_dir, argv=sys.argv)
    v = r["verdict"]
    p = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
    reach = (r.get("curve") or {}).get("smallest_n_below_alpha")
    print(f"answer: {v['level']}  p = {p}  (smallest set reaching p < {a.alpha:g}: {reach or 'none'})", file=sys.stderr)
    print(f"  {v['message']}", file=sys.stderr)
    print(Path(out) / "report.html")
    return EXIT_OK


def raise_on_signals() -> None:
    """SIGTERM/SIGHUP raise KeyboardInterrupt like Ctrl-C, so every ``finally`` and cleanup runs
    (temporary run and fixture folders are removed, locks released)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)


def _report_error(e: BaseException, *, debug: bool, text: str) -> None:
    """One line on stderr (the first line of the message); ``--debug``: the whole message and the traceback,
    the errors it was raised from included."""
    if debug:
        import traceback

        traceback.print_exception(e, file=sys.stderr)
        return
    lines = text.strip().splitlines() or [e.__class__.__name__]
    whole = len(lines) == 1 and isinstance(e, PrivauditError) and e.__cause__ is None
    more = "" if whole else " (--debug shows the full message)"
    print(f"privaudit: error: {lines[0]}{more}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console command (not a caller embedding main, e.g. a test session)
        raise_on_signals()
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    threads = None
    if getattr(a, "threads", None):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(a.threads)
    try:
        with warnings.catch_warnings():
            # NaN-related numpy/torch RuntimeWarnings would print multi-line noise; results say what broke
            warnings.simplefilter("ignore", RuntimeWarning)
            return a.func(a)
    except PrivauditError as e:
        _report_error(e, debug=a.debug, text=str(e))
        return e.exit_code
    except Exception as e:  # a bug or an unforeseen failure: exit 3 (runtime), never 1 (the findings code)
        _report_error(e, debug=a.debug, text=f"{e.__class__.__name__}: {e}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("privaudit: interrupted", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if threads is not None:  # a caller embedding main keeps its own setting
            import torch

            torch.set_num_threads(threads)
