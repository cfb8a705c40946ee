"""The subcommands: each cmd_* takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from privaudit.cli.args import check_engine_args, check_sets, default_out, settings_of
from privaudit.io.errors import EXIT_FINDINGS, EXIT_OK, EXIT_RUNTIME, InputError
from privaudit.io.files import existing_ancestor


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
    from privaudit.io.progress import current_mode

    v = results["verdict"]
    if current_mode() == "json":  # --log-json: the verdict is one more JSON object on stderr
        print(json.dumps({"event": "verdict", "level": v["level"], "report": str(out / "report.html"),
                          "plugins": [{"name": p["name"], "status": p["status"], "severity": p["severity"],
                                       "metrics": {k: m["value"] for k, m in p["metrics"].items()}}
                                      for p in results["plugins"]], "warnings": list(v["warnings"])}),
              file=sys.stderr)
        print(out / "report.html")
        return
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
    return a.out or default_out(kind)


def cmd_scan(a: argparse.Namespace) -> int:
    from privaudit.audit.runner import scan

    settings = settings_of(a)
    check_sets(a)
    out = _out(a, "scan")
    results = scan(model_dir=a.model_dir, members=a.members, holdout=a.holdout, out=out, settings=settings,
                   device=a.device, allow_pickle=a.allow_pickle, plugins_dir=a.plugins_dir, reference=a.reference,
                   argv=sys.argv, redact=a.redact, dtype=a.dtype, lora=a.lora, base=a.base)
    _summary(results, Path(out))
    if a.model_card is not None:
        print(_model_card(results, a.model_card, run=Path(out)))
    return _exit_for(results, a.fail_on)


def _model_card(results: dict, card: Path, *, run: Path) -> Path:
    """Write the model-card privacy section, linking the run's report by a path relative to the card."""
    import os

    from privaudit.reports.model_card import write_model_card

    link = os.path.relpath(run / "report.html", start=card.resolve().parent if card.parent.exists() else card.parent)
    return write_model_card(results, card, report=Path(link).as_posix())


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
    if a.model_card is not None:
        print(_model_card(results, a.model_card, run=a.run_dir.resolve()))
        return EXIT_OK
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
    parent = existing_ancestor(target.parent)
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


FIXTURES = ("digits", "digits-text", "digits-v", "digits-flow", "digits-lora", "digits-few", "digits-dup",
            "digits-dup-text")


def cmd_fixture(a: argparse.Namespace) -> int:
    from functools import partial

    from privaudit.fixtures import (
        digits,
        digits_dup,
        digits_dup_text,
        digits_few,
        digits_lora,
        digits_text,
        digits_variants,
    )

    builders: dict[str, Callable[..., Path]] = {"digits": digits.build, "digits-text": digits_text.build,
                                                "digits-lora": digits_lora.build, "digits-few": digits_few.build,
                                                "digits-dup": digits_dup.build, "digits-dup-text": digits_dup_text.build,
                **{name: partial(digits_variants.build, name=name) for name in digits_variants.VARIANTS}}
    if a.name not in builders:
        raise InputError(f"fixture {a.name!r}: unknown; available: {', '.join(builders)}")
    if not a.out.strip():  # Path("") is "."; checked before anything is created
        raise InputError(f"--out {a.out!r}: empty; give the folder to build the fixture in")
    out = builders[a.name](out=Path(a.out), progress=not a.quiet)
    print(out)
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from privaudit.api import default_cache_dir
    from privaudit.audit.runner import AuditSettings, scan
    from privaudit.fixtures import digits

    start = time.perf_counter()
    fixture = digits.build(out=default_cache_dir() / "fixtures" / "digits", progress=not a.quiet)
    print(f"built-in target ready in {time.perf_counter() - start:.1f}s: {fixture}", file=sys.stderr)
    out = a.out or default_out("demo")
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
        shown = results.get("method_detail") or results["method"]
        print(f"verdict: {v.get('before', '?')} (raw model) -> {v['level']} (protected {shown} pipeline)",
              file=sys.stderr)
        for c in v.get("caveats") or []:
            print(f"  but: {c}", file=sys.stderr)
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
    from privaudit.mitigation.targets import parse_targets

    settings = settings_of(a)
    check_sets(a)
    if a.target is not None:
        parse_targets(a.target)  # a bad --target fails before any work
    several = a.method.strip() == "all" or "," in a.method
    if several and (a.alpha is not None or a.scale is not None):
        raise InputError(f"--method {a.method}: --alpha/--scale set cpsample alone; with several methods use "
                         "--param cpsample.alpha=VALUE")
    params = {} if several else dict(settings.plugin_params.get(a.method, {}))  # --param METHOD.key=value
    if a.alpha is not None:
        params["alpha"] = a.alpha
    if a.scale is not None:
        params["scale"] = a.scale
    out = _out(a, "mitigate")
    with run_folder(out, resume=settings.resume):  # checked and locked before any work
        results = mitigate(model_dir=a.model_dir, members=a.members, holdout=a.holdout, out=out, method=a.method,
                           params=params, settings=settings, device=a.device, reference=a.reference, sweep=a.sweep,
                           allow_pickle=a.allow_pickle, plugins_dir=a.plugins_dir, argv=sys.argv, redact=a.redact,
                           dtype=a.dtype, targets=a.target, adaptive=a.adaptive)
    _mitigation_summary(results, Path(out))
    return _exit_for({**results["after"], "verdict": results["verdict"]}, a.fail_on)


def cmd_query(a: argparse.Namespace) -> int:
    from privaudit.audit.query import query
    from privaudit.audit.runner import AuditSettings

    params: dict[str, dict] = {}
    for plugin, key, value in a.param:
        params.setdefault(plugin, {})[key] = value
    check_engine_args(a)
    settings = AuditSettings(attacks=a.attacks, detectors=a.detectors, plugin_params=params, seed=a.seed,
                             batch_size=a.batch_size, progress=not a.quiet, prompt=a.prompt, engine=a.engine,
                             ray_address=a.ray_address, workers=a.workers, resume=a.resume is not None)
    out = _out(a, "query")
    r = query(model_dir=a.model_dir, suspect=a.suspect, holdout=a.holdout, out=out, settings=settings, lora=a.lora,
              base=a.base, device=a.device, allow_pickle=a.allow_pickle, dtype=a.dtype, alpha=a.alpha,
              repeats=a.repeats, plugins_dir=a.plugins_dir, argv=sys.argv)
    v = r["verdict"]
    p = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
    reach = (r.get("curve") or {}).get("smallest_n_below_alpha")
    print(f"answer: {v['level']}  p = {p}  (smallest set reaching p < {a.alpha:g}: {reach or 'none'})", file=sys.stderr)
    print(f"  {v['message']}", file=sys.stderr)
    for img in r["images"]["rows"][:5]:
        print(f"  {img['image_id']}: {img['level']}: {img['reason']}", file=sys.stderr)
    print(Path(out) / "report.html")
    return EXIT_OK
