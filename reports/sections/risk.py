"""Which members are at risk (``risk.j2``): the per-image table of ``privaudit.audit.risk``, its worst case in
one sentence, the duplicates a data team should remove, and the top rows with thumbnails (obeying ``--redact``)."""

from __future__ import annotations

from typing import Any

from privaudit.reports.fmt import fmt_scalar
from privaudit.reports.sections.replication import _safe_src

DEDUP_ADVICE = ("Duplicated images are the ones diffusion models memorise (Carlini et al. 2023: nearly every image "
                "extracted from Stable Diffusion appears many times in its training data; Somepalli et al. 2023): "
                "deduplicate the training set before the next training run.")


def risk_view(scan: dict, *, redact: str) -> dict | None:
    a = scan.get("at_risk")
    if not isinstance(a, dict):
        return None
    rows = []
    for r in a.get("top") or []:
        if not isinstance(r, dict):
            continue
        pct = [v for k, v in r.items() if k.endswith("_percentile") and isinstance(v, (int, float))]
        rows.append({"member_id": str(r.get("member_id", "")), "level": str(r.get("level", "")),
                     "reason": str(r.get("reason", "")), "copies": r.get("cluster_copies", r.get("copies")),
                     "duplicates": r.get("duplicates"), "percentile": fmt_scalar(max(pct)) if pct else "n/a",
                     "src": None if redact == "omit" else _safe_src(r.get("member_png"))})
    ci = a.get("reproduced_ci") or [None, None]
    tpr: Any = a.get("tpr_at_fpr_0.001") if isinstance(a.get("tpr_at_fpr_0.001"), dict) else None
    return {
        "sentence": str(a.get("sentence", "")), "rule": str(a.get("rule", "")), "rows": rows,
        "n_members": a.get("n_members"), "n_distinct": a.get("n_distinct"), "n_at_risk": a.get("n_at_risk"),
        "n_reproduced": a.get("n_reproduced"), "ci": f"{ci[0]:.1%}-{ci[1]:.1%}" if None not in ci else "",
        "n_duplicated_files": a.get("n_duplicated_files", 0), "n_clusters": a.get("n_duplicate_clusters", 0),
        "n_singled_out": a.get("n_singled_out", 0), "n_watch": a.get("n_watch", 0),
        "dedup": DEDUP_ADVICE if a.get("n_duplicated_files") else "",
        "tpr": None if tpr is None else {"attack": tpr.get("attack"), "value": fmt_scalar(tpr.get("value")),
                                         "note": tpr.get("note") or ""},
        "thumbs": any(r["src"] for r in rows), "redact": redact,
    }
