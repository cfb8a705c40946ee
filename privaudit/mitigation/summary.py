"""The numbers a mitigation run compares across variants, read from one audit's plugin results: per-threat-model
membership AUCs (one- and two-sided), TPR at 1% FPR, copy fractions, quality; white-box rows and shipped weights."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def _value(m: Any) -> float | None:
    v = m.get("value") if isinstance(m, dict) else m
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def summarize(results: dict) -> dict:
    """The numbers compared across variants, from one audit's plugin results (by metric name)."""
    out: dict[str, float] = {}
    served: list[float] = []
    white: list[float] = []
    two_sided: list[float] = []
    by_threat: dict[str, dict[str, list[float]]] = {}
    copies: dict[str, float] = {}
    for p in results["plugins"]:
        if p["status"] != "ok":
            continue
        m = p["metrics"]
        auc = _value(m.get("auc"))
        if p["kind"] == "attack" and auc is not None:  # an AUC that is null (not finite) compares nothing
            out[f"{p['name']}_auc"] = auc
            (white if p["threat_model"] == "white-box" else served).append(auc)
            cands = [auc] + [float(v) for v in ((p.get("details") or {}).get("fitted") or {}).get("sweep_", {}).values()
                             if isinstance(v, (int, float))]
            two_sided.append(max(max(c, 1 - c) for c in cands))
            tm = by_threat.setdefault(THREAT_KEYS.get(p["threat_model"], "other"), {"auc": [], "two": [], "tpr": []})
            tm["auc"].append(auc)
            tm["two"].append(two_sided[-1])
            if (tpr := _value(m.get("tpr_at_fpr_0.01"))) is not None:
                tm["tpr"].append(tpr)
                if p["threat_model"] == "black-box":  # each black-box attack's TPR: what the served model concedes
                    out[f"{p['name']}_tpr_at_fpr_0.01"] = tpr
        if (cf := _value(m.get("copy_fraction"))) is not None:
            copies[p["name"]] = cf
        if (div := _value(m.get("mean_diversity"))) is not None:
            out[f"{p['name']}_mean_diversity"] = div
        for key in ("frechet_distance", "precision", "recall"):
            if key not in out and (v := _value(m.get(key))) is not None:
                out[key] = v
    if copies:
        # several detectors (unconditional samples, per-prompt generations): each one's, and the
        # worst as the headline, so no way of asking the model hides its copies
        out["copy_fraction"] = max(copies.values())
        if len(copies) > 1:
            out.update({f"{name}_copy_fraction": v for name, v in copies.items()})
    if served:
        out["membership_auc"] = max(served)
    if white:
        out["white_box_auc"] = max(white)
    if two_sided:
        out["membership_auc_two_sided"] = max(two_sided)
    for key, tm in by_threat.items():  # per threat model: what a served model faces vs what leaked weights expose
        if key == "other":
            continue
        out[f"{key}_auc_two_sided"] = max(tm["two"])
        if key != "white_box":
            out[f"{key}_auc"] = max(tm["auc"])
        if tm["tpr"]:
            out[f"{key}_tpr_at_fpr_0.01"] = max(tm["tpr"])
    return {k: round(v, 6) for k, v in out.items() if v is not None}


def _rate_counts(results: dict, metric: str, n_key: str) -> tuple[int, int] | None:
    """(hits, trials) of the first ok plugin reporting rate ``metric`` over ``details[n_key]`` trials: the
    quality detector's precision (``n_generated``), the fidelity detector's prompt fidelity (``n_fidelity``)."""
    for p in results["plugins"]:
        v = _value((p.get("metrics") or {}).get(metric)) if p["status"] == "ok" else None
        n = (p.get("details") or {}).get(n_key)
        if v is not None and isinstance(n, int) and n > 0:
            return int(round(v * n)), n
    return None


QUALITY_NOTES = {
    "precision": "precision of the served samples (fraction inside the real holdout images' k-NN manifold in the "
                 "quality detector's feature space) over the unprotected model's; Katz 95% interval",
    "prompt fidelity": "prompt fidelity of the served generations (a classifier's accuracy against the class each "
                       "prompt names) over the unprotected model's; Katz 95% interval",
}


def quality_ratio(results: dict, base: dict) -> dict | None:
    """Quality relative to the unprotected model, each measure over the unprotected model's on the same detector
    and sample count with its Katz 95% interval: precision (the fraction of samples inside the real images' k-NN
    manifold) and, for text models, prompt fidelity (``fidelity``: generations showing the prompted class). The
    worse ratio is the quality (``measure`` names it; ``measures`` holds both). 1.0 = unchanged; None where
    neither was measured on both."""
    from privaudit.stats.metrics import ratio_ci

    found: dict[str, dict] = {}
    for measure, metric, n_key in (("precision", "precision", "n_generated"),
                                   ("prompt fidelity", "prompt_fidelity", "n_fidelity")):
        a, b = _rate_counts(results, metric, n_key), _rate_counts(base, metric, n_key)
        if a is None or b is None or b[0] == 0:
            continue
        r, lo, hi = ratio_ci(a[0], a[1], b[0], b[1])
        found[measure] = {"ratio": round(r, 4), "ci": [round(lo, 4), round(hi, 4)], "measure": measure,
                          "before": round(b[0] / b[1], 4), "after": round(a[0] / a[1], 4), "n": [a[1], b[1]],
                          "note": QUALITY_NOTES[measure]}
    if not found:
        return None
    worst = min(found.values(), key=lambda q: float(q["ratio"]))
    return {**worst, "measures": {k: {kk: v[kk] for kk in ("ratio", "ci", "before", "after")} for k, v in found.items()}}


# summary keys per threat model: "black_box_auc", "gray_box_auc_two_sided" (the gate leak of a protected model), ...
THREAT_KEYS = {"black-box": "black_box", "gray-box": "gray_box", "white-box": "white_box"}


def privacy_key(metrics: dict) -> str:
    """The membership number a served setting is judged on: the black-box two-sided AUC where a black-box
    attack ran (what a served model faces), else the two-sided AUC over every attack on the served model."""
    return "black_box_auc_two_sided" if "black_box_auc_two_sided" in metrics else "membership_auc_two_sided"


def white_box_rows(before: dict, after: dict) -> list[dict]:
    rows = []
    b = {p["name"]: p for p in before["plugins"] if p["status"] == "ok" and p["threat_model"] == "white-box"}
    for p in after["plugins"]:
        if p["name"] in b and p["status"] == "ok" and "auc" in p["metrics"]:
            ba, aa = _value(b[p["name"]]["metrics"]["auc"]), _value(p["metrics"]["auc"])
            rows.append({"attack": p["name"], "before_auc": ba, "after_auc": aa,
                         "unchanged": ba is not None and aa is not None and abs(ba - aa) < 1e-9})
    return rows


def same_weights(before: dict, after: dict) -> dict:
    """The raw and protected folders' network weights by file: a sampling-time mitigation ships the raw UNet."""
    b, a = before["target"].get("weights_sha256") or {}, after["target"].get("weights_sha256") or {}
    same = sorted(f for f in b if a.get(f) == b[f])
    return {"same_files": same, "sha256": {f: b[f] for f in same}, "raw_weights_shipped": bool(same)}


def at_risk_ids(results: dict) -> list[str]:
    """The member files an audit lists as at risk (its ``at_risk`` table), in rank order."""
    t = (results.get("tables") or {}).get("at_risk")
    return [] if t is None else [str(m) for m in t.loc[t["at_risk"], "member_id"]]


def at_risk_metrics(results: dict, ids: list[str]) -> dict:
    """Numbers on the members at risk before mitigation (``ids``), from another audit of the same data:
    ``at_risk_reproduced`` (of them, the distinct images still reproduced), ``at_risk_copies`` (generated
    samples copying one of them, over every detector) and ``at_risk_black_box_auc_two_sided`` (the worst
    black-box attack's two-sided AUC of their scores against the evaluation holdout)."""
    from sklearn.metrics import roc_auc_score

    t = (results.get("tables") or {}).get("at_risk")
    if t is None:
        return {}
    if not ids:  # nobody was at risk: nothing left to protect
        return {"at_risk_members": 0.0, "at_risk_reproduced": 0.0, "at_risk_copies": 0.0}
    mine = t[t["member_id"].astype(str).isin(set(ids))]
    out: dict[str, float] = {
        "at_risk_members": float(mine["duplicate_cluster"].nunique()),
        "at_risk_reproduced": float(mine.loc[mine["level"] == "high", "duplicate_cluster"].nunique()),
        "at_risk_copies": float(mine["copies"].sum())}
    s = results.get("scores")
    black = [p["name"] for p in results.get("plugins", []) if p.get("kind") == "attack" and p.get("status") == "ok"
             and p.get("threat_model") == "black-box"]
    if s is not None and black:
        ev = s.get("split", pd.Series("evaluation", index=s.index)) == "evaluation"
        hold = s[(s["set"] == "holdout") & ev]
        risky = s[(s["set"] == "member") & s["image_id"].astype(str).isin(set(ids))]
        aucs = []
        for a in black:
            x = np.r_[risky[a].to_numpy(float), hold[a].to_numpy(float)]
            y = np.r_[np.ones(len(risky)), np.zeros(len(hold))]
            ok = np.isfinite(x)
            if len(set(y[ok])) == 2:
                auc = float(roc_auc_score(y[ok], x[ok]))
                aucs.append(max(auc, 1 - auc))
        if aucs:
            out["at_risk_black_box_auc_two_sided"] = max(aucs)
    return {k: round(v, 6) for k, v in out.items()}
