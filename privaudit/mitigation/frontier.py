"""The privacy/quality frontier of a mitigation sweep: targets, the recommended setting, per-family summaries,
Pareto fronts compared at matched quality, and the run's findings in words."""

from __future__ import annotations

import numpy as np

from privaudit.mitigation.summary import privacy_key

# What the issue asks a mitigation to reach on the built-in target; used to pick the recommended setting.
TARGETS = {"copy_fraction": 0.02, "membership_auc_two_sided": 0.6}


TARGET_LABELS = {"copy_fraction": "copy fraction", "membership_auc_two_sided": "two-sided membership AUC",
                 "black_box_auc_two_sided": "two-sided black-box membership AUC"}


QUALITY_PREFERENCE = ("frechet_distance", "precision")  # lower FD is better; higher precision is better


def meets_targets(metrics: dict, targets: dict = TARGETS) -> bool:
    """The copy target, and the membership target on ``privacy_key`` (black-box where measured)."""
    checks = {"copy_fraction": targets.get("copy_fraction")}
    if "membership_auc_two_sided" in targets:
        checks[privacy_key(metrics)] = targets["membership_auc_two_sided"]
    return all(metrics.get(k) is None or v is None or metrics[k] <= v for k, v in checks.items()) \
        and "copy_fraction" in metrics


def _quality_key(rows: list[dict]) -> str | None:
    return next((k for k in QUALITY_PREFERENCE if all(k in r["metrics"] for r in rows)), None)


def recommend(rows: list[dict]) -> int | None:
    """Index of the recommended setting, in tiers: the best quality among settings meeting every
    target; else the best quality among those meeting the copy target (the lower two-sided AUC
    breaking ties); else the fewest copies."""
    if not rows:
        return None
    q = _quality_key(rows)
    qual = (lambda r: _cost(r, q)) if q else (lambda r: 0.0)
    auc = lambda r: r["metrics"].get(privacy_key(r["metrics"]), 1.0)
    for ok in ([i for i, r in enumerate(rows) if meets_targets(r["metrics"])],
               [i for i, r in enumerate(rows) if r["metrics"].get("copy_fraction", 1.0) <= TARGETS["copy_fraction"]]):
        if ok:
            return min(ok, key=lambda i: (qual(rows[i]), auc(rows[i])))
    return min(range(len(rows)), key=lambda i: (rows[i]["metrics"].get("copy_fraction", 1.0), qual(rows[i])))


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
        ok = [r for r in fr if r["metrics"].get("copy_fraction", 1.0) <= TARGETS["copy_fraction"]]
        pick = recommend(fr)
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


def findings_of(method: str, controls: list[dict], sweep: list[dict], matched: dict | None, white: list[dict]) -> list[str]:
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
        goals = {"copy_fraction": TARGETS["copy_fraction"], privacy_key(m1): TARGETS["membership_auc_two_sided"]}
        unmet = [k for k, v in goals.items() if k in m1 and m1[k] > v]
        if unmet:
            out.append(f"{method} at these settings misses the target(s) " +
                       ", ".join(f"{TARGET_LABELS.get(k, k)} <= {goals[k]} (got {m1[k]:.3f})" for k in unmet) + ".")
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
                   f"{'meets' if rec['meets_targets'] else 'does not meet'} the targets).")
    for w in white:
        out.append(f"white-box {w['attack']}: AUC {fmt_value(w['before_auc'])} before, {fmt_value(w['after_auc'])} after "
                   f"({'unchanged: the raw weights bypass the mitigation' if w['unchanged'] else 'changed'}).")
    return out
