"""The ``privaudit query`` report (``query.html.j2``): was this collection used to train the model?"""

from __future__ import annotations

from privaudit.reports.fmt import fmt_scalar, num


def query_view(r: dict) -> dict:
    """What the ``privaudit query`` report shows (results of ``privaudit.audit.query``)."""
    t = r.get("target") if isinstance(r.get("target"), dict) else {}
    test = r.get("test") if isinstance(r.get("test"), dict) else None
    curve = r.get("curve") if isinstance(r.get("curve"), dict) else None
    v = r.get("verdict") if isinstance(r.get("verdict"), dict) else {}
    pi = r.get("per_image") if isinstance(r.get("per_image"), dict) else {}
    fmt_p = lambda p: "n/a" if num(p) is None else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")
    sizes = r.get("sizes") if isinstance(r.get("sizes"), dict) else {}
    return {
        "model": str(t.get("path", "?")), "adapter": str(t.get("adapter") or ""), "base": str(t.get("base") or ""),
        "n_suspect": sizes.get("suspect", "?"), "n_holdout": sizes.get("holdout", "?"),
        "verdict_level": str(v.get("level", "?")), "message": str(v.get("message", "")),
        "p_value": fmt_p(test.get("p_value")) if test else None, "auc": fmt_scalar(test.get("auc")) if test else "",
        "alpha": fmt_scalar(r.get("alpha")),
        "curve": [{"n": p.get("n_suspect"), "p": fmt_p(p.get("median_p")), "draws": len(p.get("p_values") or [])}
                  for p in (curve or {}).get("points") or [] if isinstance(p, dict)],
        "reach": (curve or {}).get("smallest_n_below_alpha"),
        "attacks": [{"name": a.get("name"), "status": a.get("status"), "threat_model": a.get("threat_model", ""),
                     "queries": fmt_scalar(a.get("queries_per_image")), "auc": fmt_scalar(a.get("auc_test_halves")),
                     "reason": a.get("reason", "")} for a in r.get("attacks") or [] if isinstance(a, dict)],
        "checks": [c for c in r.get("checks") or [] if isinstance(c, dict)],
        "warning": str(pi.get("warning", "")), "n_holdout_test": pi.get("n_holdout_test", "?"),
        "per_image": [{"image_id": x.get("image_id"), "p": fmt_p(x.get("p_value"))}
                      for x in pi.get("lowest") or [] if isinstance(x, dict)],
        "images": _images(r.get("images")),
        "detectors": [{"name": str(d.get("name", "?")), "status": str(d.get("status", "?")),
                       "finding": str(d.get("finding") or ""), "reason": str(d.get("reason") or "")}
                      for d in r.get("detectors") or [] if isinstance(d, dict)],
    }


def _images(im) -> dict | None:
    """Per suspect image: copied?, percentile per attack, the reason (``privaudit.audit.query.image_answers``)."""
    if not isinstance(im, dict):
        return None
    rows = []
    for x in im.get("rows") or []:
        if not isinstance(x, dict):
            continue
        pct = x.get("percentiles") if isinstance(x.get("percentiles"), dict) else {}
        rows.append({"image_id": str(x.get("image_id", "")), "level": str(x.get("level", "")),
                     "copied": "yes" if x.get("copied") else "no", "copies": fmt_scalar(x.get("copies")),
                     "chance": fmt_scalar(x.get("chance_copies")),
                     "percentiles": ", ".join(f"{k} {fmt_scalar(v)}" for k, v in pct.items()),
                     "reason": str(x.get("reason", ""))})
    return {"rows": rows[:50], "more": max(0, len(rows) - 50), "note": str(im.get("note", "")),
            "sentence": str(im.get("sentence", ""))}
