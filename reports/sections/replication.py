"""The replication and quality sections (``replication.j2``): each copy detector's criteria, plots,
closest pairs and most-copied members (images only as the redaction step re-encoded them), the
quality detectors, and results of plugins of other kinds."""

from __future__ import annotations

from typing import Any

from privaudit.reports import svg
from privaudit.reports.fmt import (
    details_of,
    fmt_metric,
    fmt_scalar,
    hist_series,
    is_ok,
    not_ok,
    num,
    plugins_of,
    section_of,
)

ROLE_NAMES = {"sample": "generated", "generated": "generated", "member": "training", "diff": "difference"}
SERIES_NAMES = {"samples": "generated samples", "holdout": "holdout (real, unseen)",
                "background": "member background (nearest other member)", "members": "member background"}


def _safe_src(v: Any) -> str | None:
    """Only images the redaction step re-encoded reach an ``src``: never a URL from the results."""
    return v if isinstance(v, str) and v.startswith("data:image/png;base64,") else None


def _pairs(d: dict) -> list[dict]:
    out = []
    for p in d.get("pairs") or []:
        if not isinstance(p, dict):
            continue
        imgs = []
        for key, value in p.items():
            if key.endswith("_png") or key.endswith("_image"):
                role = key.rsplit("_", 1)[0]
                imgs.append({"role": role, "name": ROLE_NAMES.get(role, role.replace("_", " ")), "src": _safe_src(value)})
        crit = p.get("criteria") if isinstance(p.get("criteria"), dict) else {}
        out.append({"sample": p.get("sample"), "member_id": p.get("member_id", ""), "copy": p.get("copy"),
                    "distance": num(p.get("distance")), "similarity": num(p.get("similarity")), "images": imgs,
                    "flagged_by": [str(k) for k, v in crit.items() if v is True],
                    "duplicated": bool(p.get("member_duplicated"))})
    return out


def _criteria(p: dict, d: dict) -> tuple[list[dict], set[str]]:
    """Rows of the criteria table from ``details.criteria`` summaries (and their metrics), and the metric
    names they cover; empty when the detector does not describe its criteria."""
    rows, covered = [], set()
    ms = p.get("metrics") or {}
    for i, c in enumerate([c for c in d.get("criteria") or [] if isinstance(c, dict)]):
        metric_name = str(c.get("metric") or "")
        base = metric_name.removesuffix("_fraction")
        frac = ms.get(metric_name) if metric_name in ms else {"value": c.get("fraction"), "ci": c.get("ci")}
        fpr = ms.get(f"{base}_holdout_fpr") or {"value": c.get("holdout_fpr"), "ci": c.get("holdout_fpr_ci")}
        covered |= {metric_name, f"{base}_holdout_fpr"}
        f, h = fmt_metric("x_fraction", frac), fmt_metric("x_fraction", fpr)
        rows.append({"name": str(c.get("name", "")), "rule": str(c.get("rule", "")), "headline": i == 0,
                     "calibrated": bool(c.get("calibrated")), "reference": str(c.get("reference") or ""),
                     "fraction": f, "holdout": h, "flagged": c.get("flagged"), "n": c.get("n"),
                     "holdout_flagged": c.get("holdout_flagged"), "holdout_n": c.get("holdout_n"),
                     "note": str(c.get("note") or "")})
    return rows, covered


def _replication_plots(p: dict, d: dict, criteria: list[dict]) -> tuple[list, list[dict]]:
    """Histograms found in ``details`` (any {"edges", series...} dict) and percentile tables."""
    plots, tables, seen = [], [], []
    thr = num(d.get("threshold"))
    cos_thr = next((num(c.get("threshold")) for c in d.get("criteria") or []
                    if isinstance(c, dict) and c.get("name") == "cosine"), None)
    for key, h in d.items():
        hs = hist_series(h)
        if not hs:
            continue
        edges, series = hs
        # a histogram whose series another one already drew (same edges, same counts) adds nothing
        if any(edges == e and all(any(s["counts"] == t["counts"] for t in ss) for s in series) for e, ss in seen):
            continue
        seen.append((edges, series))
        xlabel = str(h.get("x") or key.replace("_", " "))
        space = str(d.get("feature_space") or d.get("features") or "")
        if "distance" in xlabel and space and space not in xlabel:  # a distance without its space has no unit
            xlabel += f" (L2, {space} features)"
        for s_ in series:
            s_["label"] = SERIES_NAMES.get(s_["label"], s_["label"] if s_["label"] != "counts" else xlabel)
        markers = []
        if "similar" in key + xlabel and cos_thr is not None and edges[0] <= cos_thr <= edges[-1]:
            markers.append({"x": cos_thr, "label": "cosine threshold"})
        elif "distance" in key + xlabel and thr is not None and edges[0] <= thr <= edges[-1]:
            markers.append({"x": thr, "label": "copy threshold"})
        direction = ("further right = closer to a training image" if "similar" in key + xlabel
                     else "further left = closer to a training image" if "distance" in key + xlabel else "")
        plots.append(svg.histogram(
            edges, series, title=f"{p.get('name')}: {xlabel}", xlabel=xlabel, markers=markers, width=560, height=290,
            desc=f"Histogram of {xlabel} for " + ", ".join(s_["label"] for s_ in series)
                 + (f"; {direction}." if direction else ".")))
    for key, v in d.items():
        if (key.endswith("_percentiles") or key == "nearest_distance") and isinstance(v, dict) \
                and isinstance(v.get("percentiles"), list):
            ps = v["percentiles"]
            rows = [{"label": SERIES_NAMES.get(k, k.replace("_", " ")), "cells": [fmt_scalar(num(x)) for x in vals]}
                    for k, vals in v.items() if k != "percentiles" and isinstance(vals, list) and len(vals) == len(ps)]
            if rows:
                tables.append({"name": key.removesuffix("_percentiles").replace("_", " "),
                               "cols": [f"p{x:g}" if isinstance(x, (int, float)) else str(x) for x in ps], "rows": rows})
                if key == "nearest_distance" and not plots:  # older results: no histograms, draw the percentiles
                    strip = [{"label": SERIES_NAMES.get(k, k), "values": vals} for k, vals in v.items()
                             if k != "percentiles" and isinstance(vals, list) and len(vals) == len(ps)]
                    plots.append(svg.percentile_strip(
                        strip, ps, title=f"{p.get('name')}: distance to the nearest member",
                        xlabel=f"distance to the nearest member ({d.get('features', 'feature')} space)",
                        markers=[{"x": thr, "label": "copy threshold"}] if thr is not None else []))
    return plots, tables


def replication_view(scan: dict, *, redact: str) -> dict:
    dets = [p for p in plugins_of(scan) if section_of(p) == "replication"]
    out = []
    for p in [p for p in dets if is_ok(p)]:
        d = details_of(p)
        ms = p.get("metrics") or {}
        q = num(d.get("false_positive_rate"))
        criteria, covered = _criteria(p, d)
        metrics = []
        for k, m in ms.items():
            if k in covered:
                continue
            fm = fmt_metric(k, m)
            if k == "copy_fraction" and q is not None:
                fm["help"] = (f"samples closer to a member than {1 - q:.0%} of real unseen images are "
                              f"(false-positive rate about {q:.0%} by construction)")
            metrics.append(fm)
        plots, pct_tables = _replication_plots(p, d, criteria)
        dup = d.get("member_duplicates") if isinstance(d.get("member_duplicates"), dict) else None
        skip = (*KNOWN_LISTS, "nearest_distance", "member_duplicates")
        extra = {k: fmt_scalar(v) for k, v in d.items()
                 if k not in skip and not k.endswith("_percentiles") and hist_series(v) is None and k != "background_hist"}
        most = []
        for m in d.get("most_copied") or []:
            if isinstance(m, dict):
                src = _safe_src(next((v for k, v in m.items() if k.endswith("_png")), None))
                most.append({"member_id": m.get("member_id", ""), "count": m.get("count"), "src": src,
                             "duplicated": bool(m.get("member_duplicated"))})
        out.append({"name": p.get("name"), "id": p.get("id", ""), "threat_model": p.get("threat_model", ""),
                    "severity": p.get("severity", "info"), "finding": p.get("finding", ""), "metrics": metrics,
                    "criteria": criteria, "examples": _examples(d), "lists": _lists(d), "feature_space": str(d.get("feature_space") or d.get("features") or ""),
                    "params": p.get("params") or {}, "plots": plots, "pct_tables": pct_tables, "pairs": _pairs(d),
                    "most_copied": most, "duplicates": _duplicates_view(dup), "extra": extra,
                    "rules": d.get("rules") or [], "queries": p.get("queries_per_image"), "seconds": p.get("seconds"),
                    "references": p.get("references") or []})
    return {"run": bool(dets), "detectors": out, "skipped": not_ok(dets), "redact": redact}


KNOWN_LISTS = ("pairs", "most_copied", "criteria", "examples", "rules")


def _examples(d: dict) -> list[dict]:
    """``details.examples`` (e.g. prompt-level copies): text fields plus every image (one or a list per key)."""
    out = []
    for e in d.get("examples") or []:
        if not isinstance(e, dict):
            continue
        images, fields = [], []
        for k, v in e.items():
            if k.endswith("_png"):
                role = k.removesuffix("_png").replace("_", " ")
                for src in v if isinstance(v, list) else [v]:
                    images.append({"role": role, "src": _safe_src(src)})
            elif not isinstance(v, (dict, list)):
                fields.append((k.replace("_", " "), fmt_scalar(v)))
        out.append({"fields": fields, "images": images})
    return out


def _lists(d: dict) -> list[dict]:
    """Other lists of records a detector reports (e.g. top-scoring prompts), as tables of their scalar fields."""
    out = []
    for k, v in d.items():
        if k in KNOWN_LISTS or not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            continue
        rows = [{c: x for c, x in r.items() if not c.endswith("_png") and not isinstance(x, (dict, list))} for r in v[:20]]
        cols = list(dict.fromkeys(c for r in rows for c in r))
        if cols:
            out.append({"name": k.replace("_", " "), "cols": cols, "rows": [[fmt_scalar(r.get(c)) for c in cols] for r in rows],
                        "more": max(0, len(v) - 20)})
    return out


def _duplicates_view(dup: dict | None) -> dict | None:
    if not dup:
        return None
    groups = [" = ".join(str(x) for x in g) for g in dup.get("exact_groups") or [] if isinstance(g, list)]
    near = [f"{n.get('member_id')} ~ {n.get('nearest_member_id')} (distance {fmt_scalar(num(n.get('distance')))})"
            for n in dup.get("near") or [] if isinstance(n, dict)]
    return {"n_exact": dup.get("n_exact", 0), "n_near": dup.get("n_near", 0), "rule": str(dup.get("rule") or ""),
            "groups": groups, "near": near, "checked": dup.get("checked_near"),
            "expected": dup.get("near_expected_by_chance")}


def quality_view(scan: dict) -> dict:
    qs = [p for p in plugins_of(scan) if section_of(p) == "quality"]
    rows = [{"name": p.get("name"), "metrics": [fmt_metric(k, m) for k, m in (p.get("metrics") or {}).items()],
             "finding": p.get("finding", ""),
             "extra": {k: fmt_scalar(v) for k, v in details_of(p).items() if not isinstance(v, (list, dict)) and k != "rules"}}
            for p in qs if is_ok(p)]
    return {"run": bool(qs), "rows": rows, "skipped": not_ok(qs)}


def other_view(scan: dict) -> list[dict]:
    return [{"name": p.get("name"), "kind": p.get("kind"), "status": p.get("status"), "reason": p.get("reason", ""),
             "finding": p.get("finding", ""),
             "metrics": [fmt_metric(k, m) for k, m in (p.get("metrics") or {}).items()]}
            for p in plugins_of(scan) if section_of(p) == "other"]
