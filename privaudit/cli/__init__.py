"""Command line: ``privaudit scan | mitigate | report | plugins | demo | fixture``.

Exit codes: 0 clean, 1 a finding at or above ``--fail-on``, 2 usage or input error,
3 runtime error. Human messages go to stderr; the report path to stdout.
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--seed", type=int, default=0, help="seed for data splits, attack noise and sampling (default: 0)")
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
    return AuditSettings(attacks=a.attacks, detectors=a.default_detectors if a.detectors is None else a.detectors,
                         follow_target=a.detectors is None, plugin_params=params, seed=a.seed,
                         batch_size=a.batch_size, calibration_fraction=a.calibration_fraction,
                         n_boot=a.bootstrap, progress=not a.quiet, cache_dir=a.cache_dir,
                         prompt=a.prompt, epsilon_delta=a.delta, randomized_membership=a.randomized_membership,
                         engine=a.engine, ray_address=a.ray_address, workers=a.workers, resume=a.resume is not None)


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
    from privaudit.audit.verdict import fails

    if fails(results["verdict"]["level"], fail_on):
        return EXIT_FINDINGS
    return EXIT_OK


def _fmt_metric(key: str, m: dict) -> str:
    """``key=value [lo, hi]``; counts as integers; ``(indicative)`` where the set is too small to resolve it."""
    from privaudit.reports.view import metric_info

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
    from privaudit.data.sets import load_images

    settings = _settings(a)
    if a.fpr:
        _check_fpr(a, len(load_images(a.holdout, name="holdout")))
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
    if a.out is not None:
        if a.out.is_dir():
            raise InputError(f"--out {a.out}: is a folder; give the HTML file to write")
        write_text(a.out, render_html(results, baseline=baseline, redact=a.redact))
        print(a.out)
        return EXIT_OK
    out = a.run_dir / "report.html"
    if a.redact != "thumbnails":  # the folder is what gets shared: every file in it, not only the report
        from privaudit.reports.images import redact_run

        redact_run(a.run_dir, mode=a.redact, render=lambda r, b, m: render_html(r, baseline=b, redact=m))
    write_text(out, render_html(results, baseline=baseline, redact=a.redact))
    print(out)
    return EXIT_OK


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
    out = builders[a.name](out=a.out, progress=not a.quiet)
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
    params = dict(settings.plugin_params.get(a.method, {}))  # --param METHOD.key=value
    if a.alpha is not None:
        params["alpha"] = a.alpha
    if a.scale is not None:
        params["scale"] = a.scale
    out = _out(a, "mitigate")
    with run_folder(out):  # checked and locked before any work
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
    p.add_argument("--out", type=Path, required=True, help="folder to write model/, members/, holdout/ ... into")
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
    p.add_argument("--seed", type=int, default=0, help="seed for the splits and attack noise (default: 0)")
    p.add_argument("--batch-size", type=int, default=128, help="images per model call (default: 128)")
    p.add_argument("--prompt", choices=("caption", "empty"), default="caption",
                   help="text-conditional models: condition attacks on captions or the empty prompt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(p)
    p.set_defaults(func=cmd_query)
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
        print(f"privaudit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("privaudit: interrupted", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if threads is not None:  # a caller embedding main keeps its own setting
            import torch

            torch.set_num_threads(threads)
