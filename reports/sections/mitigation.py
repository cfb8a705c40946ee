"""The mitigation section (``mitigation.j2``): headline gains and costs, threat models, controls,
the sweep and its trade-off plots, the placebo at matched quality, the guard and the limits."""

from __future__ import annotations

from typing import Any

from privaudit.reports import svg
from privaudit.reports.fmt import (
    METRIC_INFO,
    fmt_metric,
    fmt_scalar,
    fmt_value,
    is_ok,
    judge,
    metric,
    metric_info,
    num,
    plugins_of,
    section_of,
    short,
    with_ci,
)
from privaudit.reports.sections.comparison import comparison_view


def _flat(entry: dict) -> dict[str, float]:
    """Numeric values of a sweep/control entry, its ``metrics`` folded in (Metric dicts -> value)."""
    out: dict[str, float] = {}
    for k, v in entry.items():
        if k == "metrics" and isinstance(v, dict):
            for mk, mv in v.items():
                n = num(mv)
                if n is not None:
                    out[mk] = n
        elif not isinstance(v, bool):
            n = num(v)
            if n is not None:
                out[k] = n
    return out


PRIVACY_KEYS = ("copy_fraction", "membership_auc_two_sided", "membership_auc", "auc", "loss_auc")
QUALITY_KEYS = ("frechet_distance", "fd", "precision", "recall", "quality")


def _pick(keys: list[str], preferred: tuple[str, ...], contains: tuple[str, ...]) -> str | None:
    for k in preferred:
        if k in keys:
            return k
    return next((k for k in keys for c in contains if c in k), None)


def _table(entries: list[dict], *, skip: tuple[str, ...] = ()) -> dict:
    """A list of dicts -> columns + formatted cells; ``metrics`` sub-dicts become columns."""
    cols: list[str] = []
    rows = []
    for e in entries:
        flat: dict[str, Any] = {}
        for k, v in e.items():
            if k in skip:
                continue
            if k == "metrics" and isinstance(v, dict):
                flat.update(v)
            else:
                flat[k] = v
        cols += [c for c in flat if c not in cols]
        rows.append(flat)
    known = lambda c: c in METRIC_INFO or c.startswith("tpr_at_fpr_") or c.endswith(("_auc", "_fraction"))
    labels = {c: metric_info(c)[0] if known(c) else c.replace("_", " ") for c in cols}
    cells = []
    for r in rows:
        line = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, dict) and "value" in v:
                line.append(with_ci(fmt_metric(c, v)))
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and known(c):
                line.append(fmt_metric(c, v)["text"])
            else:
                line.append(fmt_scalar(v))
        cells.append(line)
    return {"cols": [labels[c] for c in cols], "rows": cells}


def _worst(scan: dict, key: str, area: str) -> dict | None:
    """The strongest plugin's value of ``key`` in ``area`` (highest = most leakage, lowest for quality)."""
    vals = [(metric((p.get("metrics") or {}).get(key))["value"], p) for p in plugins_of(scan)
            if is_ok(p) and section_of(p) == area and key in (p.get("metrics") or {})]
    vals = [(v, p) for v, p in vals if v is not None]
    if not vals:
        return None
    v, p = max(vals, key=lambda t: t[0])
    return {"value": v, "plugin": p.get("name")}


def _change(key: str, area: str, label: str, b: float | None, a: float | None, *, kind: str | None = None) -> dict:
    """A headline row: ``key`` before -> after, judged by its declared direction."""
    kind = kind or metric_info(key)[2]
    word, cls = judge(key, area, b, a)
    return {"key": key, "label": label, "before": fmt_value(b, kind), "after": fmt_value(a, kind), "word": word,
            "cls": cls, "values": (b, a)}


def headline_deltas(before: dict, after: dict) -> list[dict]:
    """The few numbers a reviewer wants first: copies, the strongest attack, quality; before -> after."""
    out = []
    for key, area, label in (("copy_fraction", "replication", "generated images that copy a training image"),
                             ("tpr_at_fpr_0.01", "membership", "training images identified at 1% false alarms "
                                                               "(strongest attack)"),
                             ("auc", "membership", "membership AUC (strongest attack; 0.5 is guessing)"),
                             ("frechet_distance", "quality", "Frechet distance to real images (lower is better)")):
        b, a = _worst(before, key, area), _worst(after, key, area)
        if b is None and a is None:
            continue
        out.append(_change(key, area, label, b and b["value"], a and a["value"]))
    return out


def _setting_label(s: dict, i: int) -> str:
    if s.get("name"):
        return str(s["name"])
    return ", ".join(f"{k}={fmt_scalar(s[k])}" for k in ("alpha", "scale", "s") if k in s) or f"setting {i}"


def tradeoff_plots(sweep: list[dict], controls: list[dict]) -> list:
    """One plot per privacy measure the sweep reports (copies; membership AUC), against quality."""
    flats, cflats = [_flat(s) for s in sweep], [_flat(c) for c in controls]
    keys = list(dict.fromkeys(k for f in flats + cflats for k in f))
    x = _pick(keys, QUALITY_KEYS, ("frechet", "quality", "precision", "recall"))
    if x is None:
        return []
    # a measure the sweep itself reports (else the controls'), so the plot shows the settings
    core = flats or cflats
    have = lambda k: all(k in f for f in core)
    ys = [k for k in ("copy_fraction",) if have(k)]
    ys += [k for k in ("membership_auc_two_sided", "membership_auc") if have(k)][:1]
    if not ys:
        y = _pick(keys, PRIVACY_KEYS, ("copy", "auc"))
        ys = [y] if y else []
    plots = []
    for y in ys:
        pts = [{"x": f.get(x), "y": f.get(y), "label": _setting_label(s, i), "number": i,
                "series": str(s.get("family") or "sweep"), "recommended": bool(s.get("recommended"))}
               for i, (s, f) in enumerate(zip(sweep, flats), 1)]
        pts += [{"x": f.get(x), "y": f.get(y), "label": str(c.get("name", "control")), "series": None}
                for c, f in zip(controls, cflats)]
        plot = svg.tradeoff(pts, xlabel=metric_info(x)[0], ylabel=metric_info(y)[0],
                            title=f"Trade-off: {metric_info(y)[0]} against {metric_info(x)[0]}")
        if plot:
            plots.append(plot)
    return plots


CONTROL_ORDER = ("copy_fraction", "at_risk_reproduced", "at_risk_black_box_auc_two_sided", "black_box_auc", "black_box_auc_two_sided", "black_box_tpr_at_fpr_0.01",
                 "gray_box_auc_two_sided", "membership_auc", "membership_auc_two_sided", "white_box_auc",
                 "frechet_distance", "precision", "recall")

# Threat models, as a mitigation report groups them: who the attacker is, and how a protected model answers.
THREAT_ROWS = (
    ("black-box", "black_box", "gets only images from the served model (sampling / variation API)",
     "the served pipeline, guard included: the headline for a protected model"),
    ("gray-box", "gray_box", "queries noise predictions at chosen timesteps (holding the weights allows it)",
     "reads through the guard: the protected noise prediction, whose gate can itself leak (the gate leak)"),
    ("white-box", "white_box", "holds the raw network and its gradients",
     "reads past the guard: the raw weights a sampling-time mitigation leaves unchanged"),
)


def threat_table(controls: list[dict]) -> dict | None:
    """Membership evidence grouped by threat model, before (no mitigation) and after (protected)."""
    if len(controls) < 2:
        return None
    m0, m1 = ((c.get("metrics") or {}) for c in controls[:2])
    rows = []
    for tm, key, who, reads in THREAT_ROWS:
        auc_key = "white_box_auc" if key == "white_box" else f"{key}_auc"
        vals = [m0.get(auc_key), m1.get(auc_key), m0.get(f"{key}_auc_two_sided"), m1.get(f"{key}_auc_two_sided"),
                m0.get(f"{key}_tpr_at_fpr_0.01"), m1.get(f"{key}_tpr_at_fpr_0.01")]
        if all(v is None for v in vals):
            rows.append([tm, who, "not run", "", "", reads])
            continue
        f = lambda v, kind="num": fmt_value(num(v), kind) if v is not None else "n/a"
        rows.append([tm, who, f"{f(vals[0])} → {f(vals[1])}", f"{f(vals[2])} → {f(vals[3])}",
                     f"{f(vals[4], 'pct')} → {f(vals[5], 'pct')}", reads])
    return {"cols": ["threat model", "the attacker", "AUC before → after", "two-sided AUC before → after",
                     "TPR @ 1% FPR before → after", "what the protected model shows this attacker"], "rows": rows}


def controls_table(controls: list[dict]) -> dict:
    """One row per way of serving the model: name and description, then the headline numbers, then the rest."""
    keys = list(dict.fromkeys(k for c in controls for k in (c.get("metrics") or {})))
    cols = [k for k in CONTROL_ORDER if k in keys] + [k for k in keys if k not in CONTROL_ORDER]
    rows = []
    for c in controls:
        ms = c.get("metrics") or {}
        cells = []
        for k in cols:
            cells.append(with_ci(fmt_metric(k, ms[k])) if k in ms else "")
        time_ = [fmt_value(num(c.get("sampling_seconds")), "num") + " s" if num(c.get("sampling_seconds")) is not None else "",
                 fmt_value(num(c.get("sampling_ratio")), "ratio") if num(c.get("sampling_ratio")) is not None else ""]
        rows.append({"name": str(c.get("name", "")), "description": str(c.get("description") or ""),
                     "cells": cells, "time": " ".join(t for t in time_ if t),
                     "verdict": str(c.get("verdict") or ""), "leak": str(c.get("verdict_if_weights_leak") or "")})
    return {"cols": [metric_info(k)[0] for k in cols], "rows": rows}


def matched_view(m: dict) -> dict:
    """The placebo comparison at matched quality: its reading in words and the compared points as a table."""
    q = str(m.get("quality_metric") or "quality")
    ql = metric_info(q)[0]
    overlap = m.get("overlap") if isinstance(m.get("overlap"), list) else []
    kv = {"quality measure": ql, "quality range compared": " to ".join(fmt_scalar(x) for x in overlap) or "n/a",
          "reading": str(m.get("verdict") or "n/a"), "beats placebo": fmt_scalar(m.get("beats_placebo")),
          "mean copy-fraction advantage over the placebo": fmt_scalar(m.get("mean_copy_advantage")),
          "tolerance": fmt_scalar(m.get("tolerance"))}
    points = [p for p in m.get("points") or [] if isinstance(p, dict)]
    table = {"cols": [ql, "copies, mitigation", "copies, placebo"],
             "rows": [[fmt_scalar(p.get("quality")), fmt_value(num(p.get("mitigation_copy_fraction")), "pct"),
                       fmt_value(num(p.get("placebo_copy_fraction")), "pct")] for p in points]}
    return {"kv": kv, "table": table if points else None, "note": str(m.get("note") or "")}


def _headline(before: dict, after: dict, controls: list[dict], mv: dict) -> list[dict]:
    """Privacy gain and quality cost, before -> after: black-box numbers first (a served model faces them),
    the protected model judged in both score directions, the quality cost always named."""
    headline = headline_deltas(before, after)
    rev = mv.get("reversed") if isinstance(mv.get("reversed"), dict) else {}
    flipped = [metric((m or {}).get("tpr_at_fpr_0.01"))["value"] for m in rev.values() if isinstance(m, dict)]
    flipped = [v for v in flipped if v is not None]
    for h in headline:  # the protected model is judged in both score directions: so is its headline TPR
        if h["key"] == "tpr_at_fpr_0.01" and flipped and h["values"][1] is not None and max(flipped) > h["values"][1]:
            b, a = h["values"][0], max(flipped)
            word, cls = judge("tpr_at_fpr_0.01", "membership", b, a)
            h.update(after=fmt_value(a, "pct") + " (score reversed)", word=word, cls=cls)
    if len(controls) >= 2:  # the two-sided AUC the verdict also judges replaces the one-sided one
        b2, a2 = (num((c.get("metrics") or {}).get("membership_auc_two_sided")) for c in controls[:2])
        if b2 is not None or a2 is not None:
            headline = [h for h in headline if h["key"] != "auc"]
            headline.insert(min(2, len(headline)), _change(
                "membership_auc_two_sided", "membership",
                "membership AUC, two-sided (an attacker may reverse a score; 0.5 is guessing)", b2, a2, kind="num"))
    if not any("Frechet" in h["label"] for h in headline):  # the cost side must never silently vanish
        headline.append({"key": "frechet_distance", "label": "quality (Frechet distance): not measured; add the quality detector "
                                  "(--detectors nn,quality) to see what the protection costs",
                         "before": "n/a", "after": "n/a", "word": "", "cls": ""})
    if len(controls) >= 2:  # a served model faces black-box attackers: their numbers lead
        m0, m1 = ((c.get("metrics") or {}) for c in controls[:2])
        lead = []
        for key, label in (("black_box_auc_two_sided", "black-box membership AUC, two-sided (images only: what the "
                                                       "served model faces; 0.5 is guessing)"),
                           ("black_box_tpr_at_fpr_0.01", "training images a black-box attacker identifies at 1% "
                                                         "false alarms")):
            b, a = num(m0.get(key)), num(m1.get(key))
            if b is None and a is None:
                continue
            lead.append(_change(key, "membership", label, b, a))
        n_risk = num(m0.get("at_risk_members"))
        if n_risk:  # protection measured where the risk is (after the black-box lead): the members exposed before
            n = int(n_risk)
            lead += [_change("at_risk_reproduced", "replication",
                                f"of the {n} image(s) at risk before mitigation, those still reproduced",
                                num(m0.get("at_risk_reproduced")), num(m1.get("at_risk_reproduced")), kind="count"),
                        _change("at_risk_copies", "replication", "samples copying an image at risk",
                                num(m0.get("at_risk_copies")), num(m1.get("at_risk_copies")), kind="count"),
                        *([_change("at_risk_black_box_auc_two_sided", "membership",
                                   "black-box membership AUC of the images at risk, two-sided",
                                   num(m0.get(k)), num(m1.get(k)), kind="num")]
                          if (k := "at_risk_black_box_auc_two_sided") in m0 or k in m1 else [])]
        headline = lead + headline
    return headline


def _families(fams: list[dict]) -> dict:
    """Each mitigation family of the sweep: how many settings meet the copy target, and its pick."""
    return {"cols": ["family", "settings meeting the copy target", "its pick", "copies", "quality",
                     "black-box AUC, two-sided", "gate leak", "lowest gate leak at the copy target"],
            "rows": [[str(f.get("family")), f"{f.get('meet_copy_target')} of {f.get('settings')}",
                      str(f.get("pick") or "none"), fmt_value(num(f.get("pick_copy_fraction")), "pct"),
                      (f"{metric_info(str(f.get('quality_metric')))[0]} "
                       f"{fmt_value(num(f.get('pick_quality')), 'num')}" if f.get("quality_metric") else "n/a"),
                      fmt_value(num(f.get("pick_black_box_auc_two_sided")), "num"),
                      fmt_value(num(f.get("pick_gate_leak")), "num"),
                      fmt_value(num(f.get("lowest_gate_leak_at_copy_target")), "num")] for f in fams]}


def mitigation_view(r: dict) -> dict:
    before = r.get("before") if isinstance(r.get("before"), dict) else {}
    after = r.get("after") if isinstance(r.get("after"), dict) else {}
    controls = [c for c in r.get("controls") or [] if isinstance(c, dict)]
    sweep = [s for s in r.get("sweep") or [] if isinstance(s, dict)]
    details = r.get("details", r.get("guard"))  # "guard": results written by privaudit 0.1
    guard = details if isinstance(details, dict) else {}
    recommended = next(((i, s) for i, s in enumerate(sweep, 1) if s.get("recommended")), None)
    sweep_table = _table(sweep, skip=("quality", "caveats"))
    if sweep:
        sweep_table["cols"] = ["#"] + sweep_table["cols"]
        sweep_table["rows"] = [[str(i)] + row for i, row in enumerate(sweep_table["rows"], 1)]
    timing = next((c.get("timing") for c in controls if isinstance(c.get("timing"), dict)), None)
    matched = r.get("matched_quality") if isinstance(r.get("matched_quality"), dict) else None
    if recommended:
        sweep_table["highlight"] = recommended[0] - 1
    white = [w for w in r.get("white_box") or [] if isinstance(w, dict)]
    comparison = comparison_view(before, after, labels=("before (no mitigation)", "after (protected)"))
    mv = r.get("verdict") if isinstance(r.get("verdict"), dict) else {}
    if mv.get("level"):  # the mitigation's own verdict (both score directions, headline numbers), not the scan's
        comparison["after_level"] = str(mv["level"])
    headline = _headline(before, after, controls, mv)
    leak = r.get("gate_leak") if isinstance(r.get("gate_leak"), dict) else None
    fams = [f for f in r.get("sweep_families") or [] if isinstance(f, dict)]
    weights = r.get("weights") if isinstance(r.get("weights"), dict) else {}
    same = weights.get("sha256") if isinstance(weights.get("sha256"), dict) else {}
    return {"method": r.get("method", "unknown"), "headline": headline,
            "threats": threat_table(controls), "families": _families(fams) if fams else None,
            "gate_leak": ({"value": fmt_value(num(leak.get("value")), "num"),
                           "before": fmt_value(num(leak.get("before")), "num"),
                           "black_box": fmt_value(num(leak.get("black_box")), "num") if leak.get("black_box") is not None
                           else "not measured", "note": str(leak.get("note") or "")} if leak else None),
            "raw_weights": [{"file": f, "short": short(h), "sha256": str(h)} for f, h in same.items()],
            "params": {k: fmt_scalar(v) if v is not None else "none" for k, v in (r.get("params") or {}).items()},
            "comparison": comparison,
            "controls": controls_table(controls), "has_controls": bool(controls),
            "timing": ", ".join(f"{k} {fmt_scalar(v)}" for k, v in timing.items()) if timing else "",
            "sweep": sweep_table, "has_sweep": bool(sweep), "tradeoffs": tradeoff_plots(sweep, controls),
            "recommended": ({"number": recommended[0], "label": _setting_label(recommended[1], recommended[0]),
                             "numbers": {k: fmt_scalar(v) for k, v in _flat(recommended[1]).items()}}
                            if recommended else None),
            "targets": _targets(r.get("targets")),
            "frontier": frontier_view(r["frontier"]) if isinstance(r.get("frontier"), dict) else None,
            "decision": str((r.get("decision") or {}).get("text") or "") if isinstance(r.get("decision"), dict) else "",
            "matched": matched_view(matched) if matched else None,
            "white_box": _table(white) if white else None,
            "guard": {k.replace("_", " "): fmt_scalar(v) for k, v in guard.items()},
            "details_title": str(r.get("details_title") or ("Guard classifier" if "guard" in r
                                                             else "What the mitigation trained")),
            "findings": [str(x) for x in r.get("findings") or []],
            "warnings": [str(x) for x in r.get("warnings") or []],
            "protected": str(r.get("protected") or ""),
            "limits": [str(x) for x in r.get("limits") or []]}


def _targets(t: Any) -> dict[str, str]:
    """Targets as label -> "op bound" (results before 0.3 stored {metric key: upper bound})."""
    if isinstance(t, dict):
        return {metric_info(k)[0]: f"<= {fmt_scalar(v)}" for k, v in t.items()}
    return {str(x.get("label") or x.get("name")): f"{x.get('op', '<=')} {fmt_scalar(x.get('bound'))}"
            for x in t or [] if isinstance(x, dict)}


def _copy_radius(c: float | None) -> float:
    """Marker radius for a copy fraction: 3 px at none, 11 px when every sample copies."""
    return 3.0 if c is None else 3.0 + 8.0 * max(0.0, min(1.0, float(c)))


def frontier_view(f: dict) -> dict:
    """Several methods on one privacy/quality chart, their summary table, and the decision."""
    pts = [p for p in f.get("points") or [] if isinstance(p, dict)]
    numbered = [p for p in pts if p.get("role") in ("main", "placebo")]
    plot_pts = []
    for i, p in enumerate(numbered, 1):
        plot_pts.append({"x": num(p.get("quality_ratio")), "y": num(p.get("black_box_auc_two_sided")),
                         "label": str(p.get("name")), "number": i, "series": str(p.get("series") or "sweep"),
                         "recommended": bool(p.get("recommended")), "r": _copy_radius(num(p.get("copy_fraction")))})
    for p in pts:
        if p.get("role") not in ("main", "placebo"):
            plot_pts.append({"x": num(p.get("quality_ratio")), "y": num(p.get("black_box_auc_two_sided")),
                             "label": str(p.get("name")), "series": None, "r": _copy_radius(num(p.get("copy_fraction")))})
    chart = svg.tradeoff(plot_pts, xlabel="quality ratio (vs the unprotected model, the worse of precision and prompt fidelity; 1 = unchanged)",
                         ylabel="worst black-box AUC, two-sided",
                         title="Every method on one frontier (marker size: copy fraction)")
    f2 = lambda v, kind="num": fmt_value(num(v), kind) if num(v) is not None else "n/a"
    table = {"cols": ["#", "setting", "method", "quality ratio", "black-box AUC, two-sided", "copy fraction",
                      "sampling time", "recommended"],
             "rows": [[str(i), str(p.get("name")), str(p.get("method") or ""), f2(p.get("quality_ratio")),
                       f2(p.get("black_box_auc_two_sided")), f2(p.get("copy_fraction"), "pct"),
                       f2(p.get("sampling_ratio"), "ratio"), "yes" if p.get("recommended") else ""]
                      for i, p in enumerate(numbered, 1)]}
    methods = {"cols": ["method", "copies before → after", "worst black-box AUC, two-sided (attack)",
                        "quality ratio [95% CI]", "sampling time", "settings meeting every target",
                        "verdict as served", "the served pipeline carries"], "rows": []}
    for m in f.get("methods") or []:
        if not isinstance(m, dict):
            continue
        q = m.get("quality") if isinstance(m.get("quality"), dict) else None
        w = m.get("worst_black_box_attack") if isinstance(m.get("worst_black_box_attack"), dict) else {}
        methods["rows"].append([
            str(m.get("method")), f"{f2(m.get('copies_before'), 'pct')} → {f2(m.get('copies_after'), 'pct')}",
            f"{f2(m.get('black_box_auc_two_sided_after'))} ({w.get('attack', 'n/a')}"
            + (f", {f2(w['queries_per_image'], 'count')} queries per image" if isinstance(w.get("queries_per_image"), (int, float))
               else "") + ")",
            (f"{f2(q.get('ratio'))} [{f2((q.get('ci') or [None, None])[0])}, {f2((q.get('ci') or [None, None])[1])}]"
             + (f" ({q['measure']})" if q.get("measure") else "") if q else "not measured"),
            f2(m.get("sampling_ratio"), "ratio"), f"{m.get('settings_meeting_targets', 0)} of {m.get('settings', 0)}",
            str(m.get("headline") or m.get("verdict") or ""),
            str(m.get("carries") or "nothing beyond the model")
            + (" (training data: keep it server-side)" if m.get("carries_training_data") else "")])
    misses = {"cols": ["method", "target", "best any setting reached", "short by"],
              "rows": [[str(m.get("family")), str(x.get("target")), f2(x.get("best")), f2(x.get("miss"))]
                       for m in f.get("misses") or [] if isinstance(m, dict)
                       for x in m.get("per_target") or [] if isinstance(x, dict) and not x.get("met_by_some")]}
    return {"chart": chart, "table": table, "methods": methods, "misses": misses if misses["rows"] else None,
            "decision": str(f.get("decision") or ""), "targets": ", ".join(str(t) for t in f.get("targets") or []),
            "note": str(f.get("note") or ""), "detail": str(f.get("shown_in_detail") or "")}
