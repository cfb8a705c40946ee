"""The privacy/quality frontier of a mitigation sweep: targets, the recommended setting, per-family summaries,
Pareto fronts compared at matched quality, and the run's findings in words."""

from __future__ import annotations

import numpy as np

from privaudit.mitigation.summary import privacy_key
from privaudit.mitigation.targets import DEFAULT_TARGETS, Target, check, meets, parse_targets

# The default targets (``--target`` overrides them): see privaudit.mitigation.targets.
DEFAULT = parse_targets(DEFAULT_TARGETS)
COPY_TARGET = next(t.bound for t in DEFAULT if t.name == "copies")


COST_TOLERANCE = 0.2  # relative spread of repeated sampling-time ratios measured on a shared CPU
QUALITY_PREFERENCE = ("frechet_distance", "precision")  # lower FD is better; higher precision is better


def meets_targets(metrics: dict, targets: tuple[Target, ...] = DEFAULT) -> bool:
    """Every target measured and met (the membership target on the black-box two-sided AUC where a
    black-box attack ran); a number that was not measured never counts as met."""
    return meets(metrics, targets)


def _quality_key(rows: list[dict]) -> str | None:
    return next((k for k in QUALITY_PREFERENCE if all(k in r["metrics"] for r in rows)), None)


def _with_cost(r: dict) -> dict:
    """A row's metrics with its measured sampling-time ratio (the ``cost`` target reads it)."""
    m = dict(r.get("metrics") or {})
    if isinstance(r.get("sampling_ratio"), (int, float)):
        m.setdefault("sampling_ratio", float(r["sampling_ratio"]))
    return m


def recommend(rows: list[dict], targets: tuple[Target, ...] = DEFAULT) -> int | None:
    """Index of the recommended setting: the cheapest (measured sampling-time ratio, ratios within
    ``COST_TOLERANCE`` of the cheapest counting as equal) among those that meet every target, better
    quality then lower black-box AUC breaking ties; None when no setting
    meets them all (never a silent pick of one that misses: ``misses`` says by how much each falls short)."""
    ok = [i for i, r in enumerate(rows) if meets(_with_cost(r), targets)]
    if not ok:
        return None
    okr = [rows[i] for i in ok]
    q = "quality_ratio" if all("quality_ratio" in r["metrics"] for r in okr) else _quality_key(okr)  # the target's measure
    qual = (lambda r: _cost(r, q)) if q else (lambda r: 0.0)
    auc = lambda r: r["metrics"].get(privacy_key(r["metrics"]), 1.0)
    cost = lambda i: float(rows[i].get("sampling_ratio") or 1.0)
    # Sampling times are wall-clock: settings within COST_TOLERANCE of the cheapest are equally cheap
    # (on digits-few, rejection at quantile 0.2 timed 1.57x and at 0.05 1.72x though it rejects more).
    limit = min(map(cost, ok)) * (1 + COST_TOLERANCE)
    cheap = [i for i in ok if cost(i) <= limit]
    return min(cheap, key=lambda i: (qual(rows[i]), auc(rows[i]), cost(i)))


def closest(rows: list[dict]) -> int | None:
    """The setting nearest the copy target when none need meet every target (a family's pick, shown as
    such, never as a recommendation): the best quality among those meeting the copy target (lower
    two-sided AUC breaking ties), else the fewest copies."""
    if not rows:
        return None
    q = _quality_key(rows)
    qual = (lambda r: _cost(r, q)) if q else (lambda r: 0.0)
    auc = lambda r: r["metrics"].get(privacy_key(r["metrics"]), 1.0)
    ok = [i for i, r in enumerate(rows) if r["metrics"].get("copy_fraction", 1.0) <= COPY_TARGET]
    if ok:
        return min(ok, key=lambda i: (qual(rows[i]), auc(rows[i])))
    return min(range(len(rows)), key=lambda i: (rows[i]["metrics"].get("copy_fraction", 1.0), qual(rows[i])))


def misses(rows: list[dict], targets: tuple[Target, ...] = DEFAULT) -> list[dict]:
    """Per method (``family`` of the main settings): does any setting meet every target, and if not, which
    bound stops it and by how much. For each target, the best value any of its settings reached and its
    miss; ``nearest``: the setting with the smallest total miss (each miss relative to its bound), with
    the targets it still misses. A target never measured is named as such."""
    out = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        fr = [r for r in rows if r["family"] == fam]
        checks = [check(_with_cost(r), targets) for r in fr]
        per = []
        for j, t in enumerate(targets):
            vals = [c[j]["value"] for c in checks if c[j]["value"] is not None]
            best = (min(vals) if t.op == "<=" else max(vals)) if vals else None
            per.append({"target": str(t), "label": t.label, "best": best,
                        "met_by_some": best is not None and t.met(best),
                        "miss": None if best is None else round(t.miss(best), 6)})
        total = lambda c: sum(float("inf") if x["met"] is None else x["miss"] / max(abs(t.bound), 1e-3)
                              for x, t in zip(c, targets))
        k = min(range(len(fr)), key=lambda i: total(checks[i]))
        ok = [i for i, c in enumerate(checks) if all(x["met"] is True for x in c)]
        out.append({"family": fam, "settings": len(fr), "meeting_all": len(ok), "per_target": per,
                    "nearest": fr[k]["name"],
                    "nearest_misses": [{"target": x["target"], "value": x["value"], "miss": x["miss"]}
                                       for x in checks[k] if x["met"] is not True]})
    return out


def decision_text(rec: dict | None, miss: list[dict], targets: tuple[Target, ...]) -> str:
    """The recommendation in one sentence: the setting, or "none" and what stops each method."""
    goal = ", ".join(str(t) for t in targets)
    if rec is not None:
        return (f"recommended: {rec['name']} ({rec['family']}), the cheapest setting that meets every target "
                f"({goal}); sampling time x{float(rec.get('sampling_ratio') or 1):.2f}")
    parts = []
    for m in miss:
        stop = "; ".join(f"{x['target']} (best {_v(x['best'])}, short by {_v(x['miss'])})" if x["best"] is not None
                         else f"{x['target']} (not measured)" for x in m["per_target"] if not x["met_by_some"])
        if not stop:  # each bound met by some setting, never all by one
            stop = "no single setting meets them together; nearest " + m["nearest"] + " misses " + \
                   "; ".join(f"{x['target']} (got {_v(x['value'])})" for x in m["nearest_misses"])
        parts.append(f"{m['family']}: {stop}")
    return f"none: no setting meets every target ({goal}). " + " | ".join(parts)


def _v(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def family_summary(rows: list[dict]) -> list[dict]:
    """Per family of "main" sweep settings (e.g. two gate rules of one mitigation): how it trades copies,
    quality and leakage. For each family, among its settings that meet the copy target, the one the
    recommendation rule would pick, with its black-box two-sided AUC and its gate leak (two-sided
    gray-box AUC); and the family's lowest gate leak at that copy target. Lets a user see whether
    one rule dominates another at matched copies."""
    out = []
    fams = list(dict.fromkeys(r["family"] for r in rows))
    for fam in fams:
        fr = [r for r in rows if r["family"] == fam]
        ok = [r for r in fr if r["metrics"].get("copy_fraction", 1.0) <= COPY_TARGET]
        pick = closest(fr)
        best = fr[pick] if pick is not None else None
        leaks = [r["metrics"]["gray_box_auc_two_sided"] for r in ok if "gray_box_auc_two_sided" in r["metrics"]]
        m = best["metrics"] if best else {}
        out.append({"family": fam, "settings": len(fr), "meet_copy_target": len(ok),
                    "pick": best["name"] if best else None, "pick_copy_fraction": m.get("copy_fraction"),
                    "pick_quality": next((m[k] for k in QUALITY_PREFERENCE if k in m), None),
                    "quality_metric": next((k for k in QUALITY_PREFERENCE if k in m), None),
                    "pick_black_box_auc_two_sided": m.get("black_box_auc_two_sided"),
                    "pick_gate_leak": m.get("gray_box_auc_two_sided"),
                    "lowest_gate_leak_at_copy_target": min(leaks) if leaks else None})
    return out


def _cost(r: dict, q: str) -> float:
    """Quality as a cost (lower is better) for metric ``q``."""
    return r["metrics"][q] if q == "frechet_distance" else -r["metrics"][q]


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(quality cost, copies) points -> the frontier: cost ascending, copies strictly falling."""
    front: list[tuple[float, float]] = []
    for c, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((c, y))
    return front


def frontier_at(front: list[tuple[float, float]], x: float) -> float:
    """Fewest copies at quality cost x: linear between frontier points (a per-sample mix of two
    settings gets exactly the mixed copy fraction), flat beyond the last one."""
    if x <= front[0][0]:
        return front[0][1]
    for (c0, y0), (c1, y1) in zip(front, front[1:]):
        if c0 <= x <= c1:
            return y1 if c1 == c0 else y0 + (y1 - y0) * (x - c0) / (c1 - c0)
    return front[-1][1]


def matched_quality(main: list[dict], placebo: list[dict], *, anchor: dict | None = None, tol: float = 0.02) -> dict | None:
    """Copies at matched quality: the two privacy/quality frontiers compared where both were measured.

    Each family's frontier is the Pareto front of its settings (fewest copies for a given
    quality), ``anchor`` (the unprotected model) a point of both. The fronts are compared at
    every measured quality level inside the overlap of the two families' ranges; the
    mitigation "beats" the placebo when it never has more copies there (beyond ``tol``,
    sampling noise at a few hundred samples) and fewer on average by more than ``tol``.
    """
    q = _quality_key([*main, *placebo, *([anchor] if anchor else [])])
    rows_m = [r for r in main if "copy_fraction" in r["metrics"]] + ([anchor] if anchor else [])
    rows_p = [r for r in placebo if "copy_fraction" in r["metrics"]] + ([anchor] if anchor else [])
    if q is None or len(rows_m) < 2 or len(rows_p) < 2:
        return None
    pm = [(_cost(r, q), r["metrics"]["copy_fraction"]) for r in rows_m]
    pp = [(_cost(r, q), r["metrics"]["copy_fraction"]) for r in rows_p]
    fm, fp = pareto(pm), pareto(pp)
    lo, hi = max(fm[0][0], fp[0][0]), min(max(c for c, _ in pm), max(c for c, _ in pp))
    grid = sorted({c for c, _ in fm + fp if lo <= c <= hi})
    sign = 1 if q == "frechet_distance" else -1
    points = [{"quality": round(sign * x, 4), "mitigation_copy_fraction": round(frontier_at(fm, x), 4),
               "placebo_copy_fraction": round(frontier_at(fp, x), 4)} for x in grid]
    diffs = np.array([p["placebo_copy_fraction"] - p["mitigation_copy_fraction"] for p in points])
    if len(diffs) == 0:
        verdict = "no overlap"
    elif (diffs >= -tol).all() and diffs.mean() > tol:
        verdict = "beats"
    elif (diffs <= tol).all() and diffs.mean() < -tol:
        verdict = "worse"
    elif np.abs(diffs).max() <= tol:
        verdict = "no difference"
    else:
        verdict = "mixed"
    return {"quality_metric": q, "overlap": [round(sign * lo, 4), round(sign * hi, 4)], "points": points,
            "mean_copy_advantage": round(float(diffs.mean()), 4) if len(diffs) else None, "verdict": verdict,
            "beats_placebo": verdict == "beats", "tolerance": tol,
            "note": (f"Pareto fronts of copy fraction against {q} (linear between measured settings), compared at "
                     "each measured quality level where both families were measured; the unprotected model is a "
                     "point of both")}


def fmt_value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def findings_of(method: str, controls: list[dict], sweep: list[dict], matched: dict | None, white: list[dict],
                targets: tuple[Target, ...] = DEFAULT) -> list[str]:
    by = {c["family"]: c for c in controls}
    none, ours = by.get("none"), by.get(method)
    out = []
    if none and ours:
        m0, m1 = none["metrics"], ours["metrics"]
        out.append(f"{method}: copy fraction {fmt_value(m0.get('copy_fraction'))} -> {fmt_value(m1.get('copy_fraction'))}; "
                   f"membership AUC on the served model {fmt_value(m0.get('membership_auc'))} -> {fmt_value(m1.get('membership_auc'))} "
                   f"(two-sided, an attacker may reverse the score: {fmt_value(m0.get('membership_auc_two_sided'))} -> {fmt_value(m1.get('membership_auc_two_sided'))}); "
                   f"Frechet distance {fmt_value(m0.get('frechet_distance'))} -> {fmt_value(m1.get('frechet_distance'))}; "
                   f"sampling time x{ours['sampling_ratio']:.2f}.")
        if "black_box_auc" in m1 or "black_box_auc" in m0:
            out.insert(0, f"{method}, black box (what the served model faces): membership AUC "
                          f"{fmt_value(m0.get('black_box_auc'))} -> {fmt_value(m1.get('black_box_auc'))} (two-sided "
                          f"{fmt_value(m0.get('black_box_auc_two_sided'))} -> {fmt_value(m1.get('black_box_auc_two_sided'))}), "
                          f"TPR at 1% FPR {fmt_value(m0.get('black_box_tpr_at_fpr_0.01'))} -> "
                          f"{fmt_value(m1.get('black_box_tpr_at_fpr_0.01'))}, copy fraction "
                          f"{fmt_value(m0.get('copy_fraction'))} -> {fmt_value(m1.get('copy_fraction'))}.")
        if "gray_box_auc_two_sided" in m1:
            out.append(f"{method} gate leak (two-sided gray-box AUC of the protected noise prediction; what leaked "
                       f"weights expose): {fmt_value(m1['gray_box_auc_two_sided'])} (raw model "
                       f"{fmt_value(m0.get('gray_box_auc_two_sided'))}).")
        unmet = [c for c in check(_with_cost(ours), targets) if c["met"] is not True]
        if unmet:
            out.append(f"{method} at these settings misses the target(s) " +
                       ", ".join(f"{c['target']} ({c['label']}: " + ("not measured)" if c["value"] is None
                                                                      else f"got {c['value']:.3f})") for c in unmet) + ".")
    for c in controls:
        if c["family"] in ("none", method):
            continue
        m = c["metrics"]
        out.append(f"control {c['name']}: copy fraction {fmt_value(m.get('copy_fraction'))}, membership AUC "
                   f"{fmt_value(m.get('membership_auc'))}, Frechet distance {fmt_value(m.get('frechet_distance'))}, "
                   f"sampling time x{c['sampling_ratio']:.2f}.")
    placebo = next((c for c in controls if c.get("role") == "placebo"), None)  # declared by the mitigation
    if ours and placebo and "copy_fraction" in ours["metrics"] and "copy_fraction" in placebo["metrics"]:
        a, b = ours["metrics"]["copy_fraction"], placebo["metrics"]["copy_fraction"]
        q = _quality_key([ours, placebo])
        qa, qb = (ours["metrics"].get(q), placebo["metrics"].get(q)) if q else (None, None)
        out.append(f"At the same settings {method} leaves {a:.3f} copies and the placebo {b:.3f}" +
                   (f" ({q} {qa:.3f} vs {qb:.3f})" if q else "") +
                   (": the placebo does as well, so at these settings the effect is not specific to the training set."
                    if b <= a else "."))
    if matched:
        m = matched
        words = {"beats": "beats the placebo: fewer copies at the same quality",
                 "worse": "does NOT beat the placebo: the placebo leaves fewer copies at the same quality",
                 "no difference": "does NOT beat the placebo: the same copies at the same quality",
                 "mixed": "does NOT consistently beat the placebo: fewer copies at some quality levels, more at others",
                 "no overlap": "cannot be compared with the placebo: their sweeps reach no common quality"}
        out.append(f"At matched quality ({m['quality_metric']} {m['overlap'][0]:.3g} to {m['overlap'][1]:.3g}, "
                   f"{len(m['points'])} levels) {method} {words[m['verdict']]}"
                   + (f" (mean copy-fraction advantage {m['mean_copy_advantage']:+.3f})." if m["points"] else ".")
                   + (" At this scale guidance removes copies mostly by perturbing samples, not by steering away "
                      "from members specifically." if m["verdict"] in ("worse", "no difference", "mixed") else ""))
    rec = next((r for r in sweep if r.get("recommended")), None)
    if rec:
        out.append(f"recommended setting: {rec['name']} (copy fraction {fmt_value(rec['metrics'].get('copy_fraction'))}, "
                   f"meets every target: {', '.join(str(t) for t in targets)}).")
    elif any(r.get("role") == "main" for r in sweep):
        out.append("no setting of the sweep meets every target (" + ", ".join(str(t) for t in targets) +
                   "): nothing is recommended; the frontier shows what each method reaches.")
    for w in white:
        out.append(f"white-box {w['attack']}: AUC {fmt_value(w['before_auc'])} before, {fmt_value(w['after_auc'])} after "
                   f"({'unchanged: the raw weights bypass the mitigation' if w['unchanged'] else 'changed'}).")
    return out
