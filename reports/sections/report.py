"""The whole report (``report.html.j2``): its header, the section order, and ``build``, which turns a
run's results into what every section shows; each section's own module prepares its part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privaudit.reports import svg
from privaudit.reports.fmt import DECLARED, declared_specs, fmt_scalar, is_ok, plugins_of, section_of, short
from privaudit.reports.images import BLUR_FRACTION, THUMB_PX
from privaudit.reports.sections.comparison import comparison_view
from privaudit.reports.sections.membership import membership_view
from privaudit.reports.sections.mitigation import mitigation_view
from privaudit.reports.sections.provenance import GENERIC_LIMITS, limits_view, provenance_view
from privaudit.reports.sections.replication import other_view, quality_view, replication_view
from privaudit.reports.sections.risk import risk_view
from privaudit.reports.sections.verdict import Rules, mitigated_verdict_view, verdict_view


def header_view(r: dict, scan: dict) -> dict:
    t = scan.get("target") if isinstance(scan.get("target"), dict) else {}
    man = r.get("manifest") if isinstance(r.get("manifest"), dict) else scan.get("manifest") or {}
    model = man.get("model") if isinstance(man.get("model"), dict) else {}
    t = {**model, **t}
    weights = t.get("weights_sha256") or {}
    data = scan.get("data") or man.get("data") or {}
    data_rows = [{"name": k, "path": d.get("path", ""), "count": d.get("count"), "sha256": str(d.get("sha256") or ""),
                  "shape": "x".join(str(s) for s in d.get("shape") or [])}
                 for k, d in data.items() if isinstance(d, dict)]
    res = t.get("resolution")
    return {
        "model_path": (t.get("path") or "unknown model") + (f" + LoRA {t['adapter']}" if t.get("adapter") else "")
                      + (f" (base model {t['base']})" if t.get("base") and not t.get("adapter") else ""),
        "pipeline": t.get("pipeline_class") or "n/a",
        "resolution": f"{res}x{res}" if isinstance(res, int) else fmt_scalar(res) or "n/a",
        "channels": t.get("channels"), "scheduler": t.get("schedule") or t.get("scheduler_class") or "n/a",
        "timesteps": t.get("num_train_timesteps"),
        "weights": [{"file": f, "sha256": h, "short": short(h),
                     "part": Path(f).parts[0] if len(weights) > 1 and Path(f).parts else ""}
                    for f, h in weights.items()],
        "data": data_rows, "created": man.get("created", "unknown date"),
        "run_version": (man.get("versions") or {}).get("privaudit", "unknown"), "device": man.get("device", ""),
    }


def build(r: dict, *, baseline: dict | None, redact: str, version: str, rules: Rules) -> dict:
    """What ``report.html.j2`` renders for ``r`` (and its ``baseline``); ``rules``: this version's verdict rules."""
    svg.reset_ids()
    DECLARED.clear()
    DECLARED.update(declared_specs(r, r.get("before"), r.get("after"), baseline))
    kind = r.get("kind") or ("mitigation" if "before" in r and "after" in r else "scan")
    if kind == "mitigation":
        scan = r.get("after") if isinstance(r.get("after"), dict) else {}
        scans = [s for s in (r.get("before"), r.get("after")) if isinstance(s, dict)]
    else:
        scan, scans = r, [r]
    ctx: dict[str, Any] = {"kind": kind, "version": version, "redact": redact, "thumb_px": THUMB_PX,
                           "blur_pct": int(BLUR_FRACTION * 100)}
    errors: list[str] = []

    def guard(name: str, fn, fallback):
        # a malformed part of the results must not cost the whole report (write_run renders before writing)
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - reported in the page, never hidden
            errors.append(f"{name}: {e.__class__.__name__}: {e}")
            return fallback

    empty_scan: dict = {}
    ctx["header"] = guard("header", lambda: header_view(r, scan), header_view({}, empty_scan))
    ctx["verdict"] = guard("verdict", lambda: verdict_view(scan, rules=rules), verdict_view(empty_scan, rules=rules))
    if kind == "mitigation" and isinstance(r.get("verdict"), dict):
        ctx["verdict"] = guard("verdict", lambda: mitigated_verdict_view(r, ctx["verdict"]), ctx["verdict"])
    ctx["mitigation"] = guard("before/after", lambda: mitigation_view(r), None) if kind == "mitigation" else None
    ctx["before_verdict"] = (guard("before verdict", lambda: verdict_view(r["before"], rules=rules), None)
                             if kind == "mitigation" and isinstance(r.get("before"), dict) else None)
    ctx["baseline"] = None
    ctx["baseline_ignored"] = False
    if baseline is not None:
        if kind == "mitigation" or baseline.get("kind") == "mitigation":
            ctx["baseline_ignored"] = True
        else:
            ctx["baseline"] = guard("baseline comparison",
                                    lambda: comparison_view(baseline, r, labels=("baseline run", "this run")), None)
    ctx["risk"] = guard("members at risk", lambda: risk_view(scan, redact=redact), None)
    ctx["membership"] = guard("membership", lambda: membership_view(scan), membership_view(empty_scan))
    ctx["replication"] = guard("replication", lambda: replication_view(scan, redact=redact),
                               replication_view(empty_scan, redact=redact))
    ctx["quality"] = guard("quality", lambda: quality_view(scan), quality_view(empty_scan))
    ctx["other"] = guard("other results", lambda: other_view(scan), [])
    ctx["limits"] = guard("limits", lambda: limits_view(r, scans), list(GENERIC_LIMITS))
    ctx["provenance"] = guard("provenance", lambda: provenance_view(r, scans), provenance_view({}, []))
    ctx["tested"] = guard("summary", lambda: tested_summary(scan), [])
    ctx["render_errors"] = errors
    sections = [("verdict", "Verdict")]
    if ctx["mitigation"]:
        sections.append(("before-after", "Before and after mitigation"))
    if ctx["baseline"]:
        sections.append(("comparison", "Comparison with the baseline run"))
    if ctx["risk"]:
        sections.append(("risk", "Members at risk"))
    sections += [("membership", "Membership inference"), ("replication", "Replication"), ("quality", "Quality")]
    if ctx["other"]:
        sections.append(("other", "Other results"))
    sections += [("rules", "How the verdict is decided"), ("limits", "Limits"), ("provenance", "Provenance")]
    ctx["sections"] = sections
    return ctx


def tested_summary(scan: dict) -> list[str]:
    out = []
    data = scan.get("data") or {}
    m, h = (data.get("members") or {}).get("count"), (data.get("holdout") or {}).get("count")
    if m is not None and h is not None:
        out.append(f"{m} training images (members) and {h} images the model never saw (holdout)")
    att = [p for p in plugins_of(scan) if section_of(p) == "membership"]
    if att:
        ok = [p.get("name") for p in att if is_ok(p)]
        out.append(f"{len(ok)} of {len(att)} membership attacks ran: {', '.join(map(str, ok)) or 'none'}")
    for p in plugins_of(scan):
        if section_of(p) == "replication" and is_ok(p):
            n = (p.get("params") or {}).get("n_samples")
            out.append(f"copy detection ({p.get('name')}) on {n if n is not None else 'the'} generated images")
    return out
