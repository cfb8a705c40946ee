"""Two runs side by side (the ``comparison`` macro of ``comparison.j2``): a mitigation's before and
after, or a scan against a baseline scan; every metric of every plugin with its delta."""

from __future__ import annotations

from privaudit.reports.fmt import fmt_metric, judge, metric, plugins_of, section_of, short, with_ci


def comparison_view(before: dict, after: dict, *, labels: tuple[str, str]) -> dict:
    """Every metric of every plugin in either run, side by side with its delta."""
    rows = []
    bp = {p.get("name"): p for p in plugins_of(before)}
    ap = {p.get("name"): p for p in plugins_of(after)}
    for name in list(dict.fromkeys([*bp, *ap])):
        b, a = bp.get(name, {}), ap.get(name, {})
        area = section_of(a or b)
        keys = list(dict.fromkeys([*(b.get("metrics") or {}), *(a.get("metrics") or {})]))
        if not keys:
            rows.append({"plugin": name, "area": area, "label": "status", "before": b.get("status", "absent"),
                         "after": a.get("status", "absent"), "delta": "", "word": "", "cls": "", "overlap": False})
        for k in keys:
            mb, ma = (b.get("metrics") or {}).get(k), (a.get("metrics") or {}).get(k)
            fb, fa = fmt_metric(k, mb), fmt_metric(k, ma)
            vb, va = fb["value"], fa["value"]
            kind = fb["kind"]
            delta = ""
            if vb is not None and va is not None:
                dv = va - vb
                delta = (f"{dv * 100:+.1f} pts" if kind == "pct" else f"{dv:+.0f}" if kind == "count" else f"{dv:+.3f}")
            word, cls = judge(k, area, vb, va)
            cb, ca = metric(mb)["ci"], metric(ma)["ci"]
            overlap = bool(cb and ca and cb[0] <= ca[1] and ca[0] <= cb[1]) and word in ("better", "worse")
            rows.append({"plugin": name, "area": area, "label": fb["label"] if mb is not None else fa["label"],
                         "before": with_ci(fb) if mb is not None else "not run",
                         "after": with_ci(fa) if ma is not None else "not run",
                         "delta": delta, "word": word, "cls": cls, "overlap": overlap})
    lb = str((before.get("verdict") or {}).get("level", "info"))
    la = str((after.get("verdict") or {}).get("level", "info"))
    notes = []
    if _weights(before) and _weights(after) and _weights(before) != _weights(after):
        notes.append("The two runs audited different model weights (sha256 differs).")
    for name in ("members", "holdout"):
        hb, ha = ((before.get("data") or {}).get(name) or {}).get("sha256"), ((after.get("data") or {}).get(name) or {}).get("sha256")
        if hb and ha and hb != ha:
            notes.append(f"The {name} data differ between the runs (sha256 {short(hb)} vs {short(ha)}): "
                         "numbers are not directly comparable.")
    return {"labels": labels, "before_level": lb, "after_level": la, "rows": rows, "notes": notes,
            "before_created": ((before.get("manifest") or {}).get("created")) or "",
            "after_created": ((after.get("manifest") or {}).get("created")) or ""}


def _weights(scan: dict) -> dict:
    return (scan.get("target") or {}).get("weights_sha256") or {}
