"""The membership-inference section (``membership.j2``): every attack's numbers, ROC and score
histograms, the attack ensemble, eps_hat, base-model calibration and the data checks."""

from __future__ import annotations

import re
from typing import Any

from privaudit.reports import svg
from privaudit.reports.fmt import (
    auc_of,
    details_of,
    fmt_metric,
    fmt_scalar,
    hist_series,
    is_ok,
    metric_info,
    not_ok,
    num,
    plugins_of,
    section_of,
    tpr1,
)

MEMBERSHIP_ROWS = ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "balanced_accuracy")

# What attacks fit on the calibration split (attributes ending in "_"), in words.
FITTED_INFO = {"timestep_": "timestep chosen", "sweep_": "calibration AUC at each candidate timestep",
               "classifier_": "classifier", "threshold_": "threshold", "direction_": "score direction"}


def fitted_view(fitted: dict) -> dict[str, str]:
    """Fitted attributes with human labels; a model object's repr becomes its class name, never a dump."""
    out = {}
    for k, v in fitted.items():
        label = FITTED_INFO.get(k, k.rstrip("_").replace("_", " "))
        if isinstance(v, str) and re.match(r"^[A-Za-z_][\w.]*\(", v):
            out[label] = f"a fitted {v.split('(', 1)[0]} (parameters in results.json)"
        elif isinstance(v, dict) and k == "sweep_":
            out[label] = "; ".join(f"t={tk}: {fmt_scalar(tv)}" for tk, tv in list(v.items())[:24])
        else:
            out[label] = fmt_scalar(v)
    return out


def membership_view(scan: dict) -> dict:
    attacks = [p for p in plugins_of(scan) if section_of(p) == "membership"]
    ok = sorted([p for p in attacks if is_ok(p)], key=lambda a: -((tpr1(a) or 0) + 1e-3 * (auc_of(a) or 0)))
    rows, curves, hists, n_holdout = [], [], [], None
    for p in ok:
        ms = p.get("metrics") or {}
        keys = [k for k in MEMBERSHIP_ROWS if k in ms] + [k for k in ms if k not in MEMBERSHIP_ROWS]
        d = details_of(p)
        split = d.get("split") or {}
        ev = split.get("evaluation") if isinstance(split.get("evaluation"), list) else None
        if ev and len(ev) == 2:
            n_holdout = max(n_holdout or 0, int(ev[1]))
        fitted = d.get("fitted") if isinstance(d.get("fitted"), dict) else {}
        rows.append({"name": p.get("name"), "id": p.get("id", ""), "threat_model": p.get("threat_model", ""),
                     "queries": p.get("queries_per_image"), "severity": p.get("severity", "info"),
                     "metrics": [fmt_metric(k, ms[k]) for k in keys], "finding": p.get("finding", ""),
                     "rules": d.get("rules") or [], "split": ev, "seconds": p.get("seconds"),
                     "fitted": fitted_view(fitted),
                     "references": p.get("references") or [], "params": p.get("params") or {}})
        roc = d.get("roc")
        if isinstance(roc, dict) and isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list):
            auc = auc_of(p)
            curves.append({"label": f"{p.get('name')} (AUC {auc:.2f})" if auc is not None else str(p.get("name")),
                           "fpr": roc["fpr"], "tpr": roc["tpr"]})
        hs = hist_series(d.get("histogram"))
        if hs:
            edges, series = hs
            names = {"members": "members (trained on)", "holdout": "holdout (never seen)"}
            for s in series:
                s["label"] = names.get(s["label"], s["label"])
            thr = num(d.get("threshold"))
            markers = [{"x": thr, "label": "threshold"}] if thr is not None and edges[0] <= thr <= edges[-1] else []
            hists.append({"name": p.get("name"), "svg": svg.histogram(
                edges, series, title=f"{p.get('name')}: attack scores, members vs holdout",
                xlabel="attack score (higher = more member-like)", markers=markers,
                desc=f"Distribution of the {p.get('name')} attack's scores on evaluation members and holdout images; "
                     "well separated distributions mean the attack tells them apart.")})
    cols = list(dict.fromkeys(m["key"] for row in rows for m in row["metrics"]))
    for row in rows:  # align every row on the same columns; a metric one attack lacks is a blank cell
        have = {m["key"]: m for m in row["metrics"]}
        row["metrics"] = [have.get(k) for k in cols]
    ensemble = scan.get("ensemble")
    return {"run": bool(attacks), "rows": rows, "cols": [metric_info(k)[0] for k in cols], "skipped": not_ok(attacks), "ensemble": ensemble_view(ensemble),
            "roc": svg.roc_loglog(curves, n_holdout=n_holdout) if curves else None, "hists": hists,
            "n_holdout_eval": n_holdout, "checks": checks_view(scan), "epsilon": epsilon_view(attacks, scan.get("epsilon")),
            "calibration": calibration_view(scan.get("base_calibration"))}


def epsilon_view(attacks: list[dict], summary: Any) -> dict | None:
    """eps_hat per attack (privaudit.audit.epsilon) with its label: a DP lower bound or distinguishability."""
    rows = []
    for p in attacks:
        e = details_of(p).get("epsilon")
        if not is_ok(p) or not isinstance(e, dict) or num(e.get("value")) is None:
            continue
        counts = e.get("counts") if isinstance(e.get("counts"), list) and len(e["counts"]) == 4 else None
        rows.append({"name": p.get("name"), "value": f"{num(e.get('value')):.2f}",
                     "tpr": fmt_scalar(e.get("tpr_lower")), "fpr": fmt_scalar(e.get("fpr_upper")),
                     "counts": f"{counts[0]}/{counts[1]} members, {counts[2]}/{counts[3]} holdout" if counts else "",
                     "label": str(e.get("label") or "")})
    if not rows:
        return None
    s = summary if isinstance(summary, dict) else {}
    return {"rows": rows, "delta": fmt_scalar(s.get("delta")), "confidence": fmt_scalar(s.get("confidence")),
            "dp": bool(s.get("randomized_membership")), "label": str(s.get("label") or rows[0]["label"]),
            "best": f"{num(s.get('value')):.2f}" if num(s.get("value")) is not None else None,
            "attack": str(s.get("attack") or ""), "note": str(s.get("note") or "")}


def calibration_view(c: Any) -> dict | None:
    """Raw vs base-calibrated attacks side by side (a fine-tune audited against its base model)."""
    if not isinstance(c, dict) or not isinstance(c.get("pairs"), list):
        return None
    rows = [{"attack": str(r.get("attack")), "raw_auc": fmt_scalar(r.get("raw_auc")),
             "cal_auc": fmt_scalar(r.get("calibrated_auc")), "raw_tpr": fmt_scalar(r.get("raw_tpr_at_fpr_0.01")),
             "cal_tpr": fmt_scalar(r.get("calibrated_tpr_at_fpr_0.01")), "base_auc": fmt_scalar(r.get("base_auc"))}
            for r in c["pairs"] if isinstance(r, dict)]
    return {"rows": rows, "base": str(c.get("base") or ""), "note": str(c.get("note") or "")}


def ensemble_view(e: Any) -> dict | None:
    """The attack suite's worst-case view, rendered generically: metrics, per-level rows, or key/values."""
    if not isinstance(e, dict) or not e:
        return None
    out: dict = {"note": str(e.get("description") or e.get("note") or ""), "metrics": [], "rows": [], "kv": [],
                 "strongest": []}
    ms = e.get("metrics")
    if isinstance(ms, dict) and all(isinstance(m, dict) and "attack" in m for m in ms.values()):
        # privaudit.audit.ensemble: the strongest attack per metric, with its own interval and cost
        for k, m in ms.items():
            tied = [str(t) for t in m.get("tied") or [] if t != m.get("attack")]
            out["strongest"].append({**fmt_metric(k, m), "attack": str(m.get("attack")),
                                     "threat_model": str(m.get("threat_model") or ""),
                                     "queries": m.get("queries_per_image"), "tied": tied})
    elif isinstance(ms, dict):
        out["metrics"] = [fmt_metric(k, m) for k, m in ms.items()]
    for k, v in e.items():
        if k in ("metrics", "description", "note"):
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(c for x in v for c in x))
            out["rows"].append({"name": k, "cols": cols, "data": [[fmt_scalar(x.get(c)) for c in cols] for x in v]})
        elif isinstance(v, dict) and all(isinstance(x, dict) and "value" in x for x in v.values()):
            out["metrics"] += [fmt_metric(kk, m) | {"label": f"{k}: {metric_info(kk)[0]}"} for kk, m in v.items()]
        else:
            out["kv"].append((k, fmt_scalar(v)))
    return out


def checks_view(scan: dict) -> list[dict]:
    out = []
    for c in scan.get("checks") or []:
        if not isinstance(c, dict):
            continue
        d = c.get("details") if isinstance(c.get("details"), dict) else {}
        extra = []
        if "auc" in d:
            extra.append(f"blind AUC {fmt_metric('auc', d['auc'])['text']}")
        if "model" in d:
            extra.append(str(d["model"]))
        if d.get("count"):
            pairs = d.get("pairs") or []
            extra.append("pairs: " + "; ".join(" / ".join(str(x) for x in pr) for pr in pairs[:10])
                         + (" ..." if len(pairs) > 10 else ""))
        out.append({"name": str(c.get("name", "")).replace("_", " "), "ok": c.get("ok") is not False,
                    "message": c.get("message", ""), "extra": extra})
    return out
