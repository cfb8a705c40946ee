"""A Hugging Face model-card privacy section from a privaudit run (``privaudit report RUN --model-card OUT.md``,
``privaudit scan ... --model-card OUT.md``), so a release can carry its audit.

The card is built and parsed with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData`` (offline: nothing
is sent to the Hub): YAML metadata with the tags ``privaudit`` and ``privacy-audit`` and a ``privaudit``
block (version, run kind, verdict overall and per threat model, each attack's AUC and TPR at 1% FPR with
its threat model and query cost, the copy fraction, the members at risk, the mitigation applied, the
report's path), then a short markdown summary of the same. A run whose evidence failed says
"inconclusive", never "low", exactly as its report does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privaudit.io.verdict import SEVERITIES, worst

THREATS = ("black-box", "gray-box", "white-box")


def _value(m: Any) -> float | None:
    v = m.get("value") if isinstance(m, dict) else m
    return round(float(v), 4) if isinstance(v, (int, float)) and v == v else None


def _scan_of(results: dict) -> dict:
    """The audit the card describes: a mitigation run's protected model (its after-audit), else the scan."""
    return results.get("after") if results.get("kind") == "mitigation" and isinstance(results.get("after"), dict) \
        else results


def card_metadata(results: dict, *, report: str | None = None) -> dict:
    """The ``privaudit`` metadata block of the card."""
    scan = _scan_of(results)
    plugins = [p for p in scan.get("plugins") or [] if isinstance(p, dict)]
    attacks = [{"name": p.get("name"), "threat_model": p.get("threat_model"),
                "auc": _value((p.get("metrics") or {}).get("auc")),
                "tpr_at_fpr_0.01": _value((p.get("metrics") or {}).get("tpr_at_fpr_0.01")),
                "queries_per_image": p.get("queries_per_image"), "status": p.get("status")}
               for p in plugins if p.get("kind") == "attack"]
    copies = [v for p in plugins if p.get("status") == "ok"
              and (v := _value((p.get("metrics") or {}).get("copy_fraction"))) is not None]
    verdict = results.get("verdict") if isinstance(results.get("verdict"), dict) else {}
    by_threat = verdict.get("by_threat_model") if isinstance(verdict.get("by_threat_model"), dict) else None
    if by_threat is None:  # a scan: the worst judged plugin per threat model
        by_threat = {}
        for tm in THREATS:
            levels = [str(p.get("severity")) for p in plugins if p.get("threat_model") == tm
                      and p.get("status") == "ok" and p.get("severity") in SEVERITIES]
            if levels:
                by_threat[tm] = worst(levels)
    at_risk = scan.get("at_risk") if isinstance(scan.get("at_risk"), dict) else {}
    versions = ((results.get("manifest") or {}).get("versions") or {})
    return {
        "version": versions.get("privaudit"), "kind": results.get("kind", "scan"),
        "verdict": verdict.get("level", "inconclusive"), "verdict_by_threat_model": by_threat,
        "attacks": attacks, "copy_fraction": max(copies) if copies else None,
        "members_at_risk": at_risk.get("n_at_risk"), "members_reproduced": at_risk.get("n_reproduced"),
        "members": at_risk.get("n_members"),
        "mitigation": results.get("method") if results.get("kind") == "mitigation" else None,
        "report": report,
    }


def model_card(results: dict, *, report: str | None = None):
    """A ``huggingface_hub.ModelCard`` holding the privacy section (metadata and markdown)."""
    from huggingface_hub import ModelCard, ModelCardData

    meta = card_metadata(results, report=report)
    data = ModelCardData(tags=["privaudit", "privacy-audit"], privaudit=meta)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    q = lambda v: f"{v:g}" if isinstance(v, (int, float)) else "n/a"
    rows = "\n".join(f"| {a['name']} | {a['threat_model']} | {fmt(a['auc'])} | {fmt(a['tpr_at_fpr_0.01'])} | "
                     f"{q(a['queries_per_image'])} |" for a in meta["attacks"] if a["status"] == "ok")
    threats = ", ".join(f"{k}: **{v}**" for k, v in meta["verdict_by_threat_model"].items()) or "none judged"
    lines = [
        "## Privacy audit (privaudit)", "",
        f"Verdict: **{meta['verdict']}** ({threats}).",
    ]
    if meta["mitigation"]:
        lines.append(f"Mitigation applied: `{meta['mitigation']}`; the numbers below are the protected model's.")
    copies = "not measured" if meta["copy_fraction"] is None else f"{meta['copy_fraction']:.1%}"
    lines += [f"Generated samples that copy a training image: {copies}."]
    if meta["members"] is not None:
        lines.append(f"Training images at risk: {fmt(meta['members_at_risk'])} of {meta['members']} "
                     f"({fmt(meta['members_reproduced'])} reproduced by the model).")
    if rows:
        lines += ["", "| attack | threat model | AUC | TPR at 1% FPR | queries per image |", "|---|---|---|---|---|", rows]
    lines += ["", f"Audited with privaudit {meta['version'] or ''}".rstrip() + "."
              + (f" Full report: [{report}]({report})." if report else "")]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return card


def write_model_card(results: dict, out: Path, *, report: str | None = None) -> Path:
    """Write the card to ``out`` atomically (a one-line InputError when it cannot be written)."""
    from privaudit.io.errors import InputError
    from privaudit.io.files import write_text

    text = str(model_card(results, report=report))
    try:
        write_text(Path(out), text)
    except OSError as e:
        raise InputError(f"--model-card {out}: cannot write here ({e.strerror or e.__class__.__name__})") from None
    return Path(out)
