"""The limits and provenance sections (``provenance.j2``, which also lays out the verdict's rules):
what the tests cannot show, and how to reproduce the run (command, versions, plugins, manifest)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from privaudit.reports.fmt import fmt_scalar, metric, metric_info, plugins_of

GENERIC_LIMITS = (
    "These tests can show that a model leaks; they cannot prove that it does not. A low verdict means the attacks "
    "listed here, with this query budget and this holdout set, found no leakage.",
    "Membership numbers assume members and holdout come from the same distribution; the blind-baseline check "
    "above tests that, and a positive result makes every membership number suspect.",
    "95% intervals are exact (Clopper-Pearson) for proportions such as TPR and copy fraction, and Hanley-McNeil "
    "widened by the bootstrap for AUC, over the evaluation images; small sets give wide intervals, never a point.",
    "Replication is judged in one feature space: copies that differ in that space (crops, colour changes, style) "
    "may be missed unless a detector with a suitable extractor was run.",
    "This report embeds training images unless rendered with --redact omit (see the notice at the top), and "
    "results.json beside it holds the same images: store and share both like the training data.",
)


def limits_view(r: dict, scans: list[dict]) -> list[str]:
    out = list(GENERIC_LIMITS)
    for s in scans:
        for p in plugins_of(s):
            for k, m in (p.get("metrics") or {}).items():
                mm = metric(m)
                if not mm["reliable"] and mm["note"]:
                    line = f"{p.get('name')}, {metric_info(k)[0]}: {mm['note']}; read it as indicative only."
                    if line not in out:
                        out.append(line)
    for x in r.get("limits") or []:
        if str(x) not in out:
            out.append(str(x))
    return out


def reproduce_command(man: dict) -> str:
    argv = [str(a) for a in man.get("argv") or []]
    if not argv:
        return ""
    exe = Path(argv[0])
    if exe.name == "privaudit" or (exe.name == "__main__.py" and exe.parent.name == "privaudit"):
        argv = ["privaudit", *argv[1:]]
    return shlex.join(argv)


def equivalent_command(scan: dict) -> str:
    """A ``privaudit scan`` command line rebuilt from what a scan recorded (for runs started from Python)."""
    t, data = scan.get("target") or {}, scan.get("data") or {}
    path = lambda k: (data.get(k) or {}).get("path")
    if not (t.get("path") and path("members") and path("holdout")):
        return ""
    man = scan.get("manifest") or {}
    ps = plugins_of(scan)
    argv = ["privaudit", "scan", str(t["path"]), "--members", str(path("members")), "--holdout", str(path("holdout"))]
    if path("reference"):
        argv += ["--reference", str(path("reference"))]
    argv += ["--attacks", ",".join(str(p.get("name")) for p in ps if p.get("kind") == "attack") or "''",
             "--detectors", ",".join(str(p.get("name")) for p in ps if p.get("kind") == "detector") or "''"]
    for p in ps:
        for k, v in (p.get("params") or {}).items():
            argv += ["--param", f"{p.get('name')}.{k}={json.dumps(v, default=str)}"]
    for key, flag in (("seed", "--seed"), ("calibration_fraction", "--calibration-fraction"), ("n_boot", "--bootstrap")):
        if man.get(key) is not None:
            argv += [flag, str(man[key])]
    return shlex.join(argv)


def provenance_view(r: dict, scans: list[dict]) -> dict:
    man = r.get("manifest") if isinstance(r.get("manifest"), dict) else {}
    if not man and scans:
        man = scans[-1].get("manifest") or {}
    plugins = []
    for s in scans:
        for p in plugins_of(s):
            if p.get("name") not in [q["name"] for q in plugins]:
                plugins.append({"name": p.get("name"), "id": p.get("id", ""), "kind": p.get("kind", ""),
                                "origin": (man.get("plugins") or {}).get(p.get("name"), ""),
                                "params": fmt_scalar(p.get("params") or {}),
                                "references": [str(x) for x in p.get("references") or []]})
    command = reproduce_command(man)
    equivalent = ""
    if r.get("kind", "scan") == "scan" and not command.startswith("privaudit "):
        equivalent = equivalent_command(r)
    return {"command": command, "equivalent": equivalent, "argv0": (man.get("argv") or [""])[0] if man.get("argv") else "",
            "versions": man.get("versions") or {}, "seed": man.get("seed"), "device": man.get("device", ""),
            "platform": man.get("platform", ""), "seconds": man.get("seconds"), "plugins": plugins,
            "manifest_json": json.dumps(man, indent=2, default=str, sort_keys=False)}
