"""The verdict section (``verdict.j2``): the answer in one line, what to do, why in plain words, the
rules that fired; for a mitigation run, the protected model's own verdict and what leaking its weights
would expose. The rules table itself is shown in ``provenance.j2`` ("How the verdict is decided").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from privaudit.io.verdict import judged_level
from privaudit.reports.fmt import LEVELS, auc_of, details_of, is_ok, metric, num, plugins_of, section_of, tpr1


@dataclass(frozen=True)
class Rules:
    """The severity rules of this privaudit version (``html`` reads them from the core): rows and text."""
    rows: tuple[dict, ...]
    text: str


ANSWERS = {
    "critical": "Not safe to release.",
    "high": "Not safe to release without mitigation.",
    "medium": "Release only after review: some leakage was measured.",
    "low": "No leakage found by these tests.",
    "info": "Not determined: no test produced a result.",
    "inconclusive": "Inconclusive: the tests could not judge this model.",
}

TODO = {
    "critical": "Do not publish the weights or a sampling service built on them. Mitigate (for example "
                "“privaudit mitigate --method cpsample”, deduplicating the training data, training for fewer "
                "steps, or differentially private training) and audit again.",
    "high": "Do not publish as is. Mitigate (for example “privaudit mitigate --method cpsample”) and audit again; "
            "the evidence below shows which test fired.",
    "medium": "Review the evidence below with the data owner before release; a larger holdout set gives tighter "
              "intervals; consider mitigation.",
    "low": "Keep this report with the release record and audit again after any further training or fine-tuning. "
           "A low result means these tests, at this budget, found nothing; it is not a proof of privacy.",
    "info": "Check the run: every test was skipped or failed (see the sections below).",
    "inconclusive": "Do not treat this as a pass. A test's evidence was unusable (see why below: e.g. the model "
                    "produced NaN or infinite values); fix the model or data and audit again.",
}

# What to do when the audited model is already the protected one (mitigating it again is not the advice).
MITIGATED_TODO = {
    "critical": "Do not release the protected pipeline: it still leaks by the rules above. Try the stronger settings of "
                "the sweep, deduplicate the training data or retrain with fewer steps, then audit again.",
    "high": "Do not release the protected pipeline as is: it still leaks by the rules above. Choose a stronger "
            "setting (see the sweep) or another mitigation, and audit again.",
    "medium": "Review the evidence below with the data owner before releasing the protected pipeline; a larger "
              "holdout set gives tighter intervals.",
    "low": "Release only the protected pipeline as a service and keep the raw weights private (the protected folder "
           "holds them unchanged); keep this report with the release record and audit again after any change.",
    "info": "Check the run: every test was skipped or failed (see the sections below).",
    "inconclusive": "Do not treat this as a pass: a test of the protected model failed or its evidence was unusable "
                    "(see why below); fix the cause and audit again.",
}

MITIGATED_ANSWERS = {
    "critical": "Not safe to release, even protected.",
    "high": "Not safe to release: the protection is not enough.",
}

THREAT_WORDS = {
    "white-box": "has the model's weights and can compute gradients",
    "gray-box": "can query the model's noise predictions (anyone holding the released weights can)",
    "black-box": "only sees images the model generates",
}


def plain_why(scan: dict) -> list[str]:
    """Sentences a non-specialist can follow: the strongest membership attack, each copy detector."""
    out: list[str] = [f"{p.get('name', '?')} could not judge this model: {details_of(p)['inconclusive']}."
                      for p in plugins_of(scan) if details_of(p).get("inconclusive")]
    attacks = [p for p in plugins_of(scan) if is_ok(p) and section_of(p) == "membership" and tpr1(p) is not None]
    if attacks:
        p = max(attacks, key=lambda a: (tpr1(a) or 0, auc_of(a) or 0))
        e = ((scan or {}).get("ensemble") or {}).get("metrics") or {}
        named = (e.get("tpr_at_fpr_0.01") or {}).get("attack") if isinstance(e.get("tpr_at_fpr_0.01"), dict) else None
        p = next((a for a in attacks if a.get("name") == named and tpr1(a) == tpr1(p)), p)  # the ensemble's pick
        t, auc = tpr1(p) or 0.0, auc_of(p)
        who = THREAT_WORDS.get(str(p.get("threat_model")), "can query the model")
        n = f" (the strongest of {len(attacks)})" if len(attacks) > 1 else ""
        auc_txt = f"; AUC {auc:.2f}, where 0.50 is guessing" if auc is not None else ""
        if t >= 0.03 or p.get("severity") in ("medium", "high", "critical"):
            out.append(f"Someone who {who} can tell which images were used for training: the {p['name']} attack{n} "
                       f"picks out {t:.0%} of training images while wrongly flagging only 1 in 100 images the model "
                       f"never saw (guessing would pick out 1%{auc_txt}).")
        else:
            out.append(f"Membership: the {p['name']} attack{n} picks out {t:.1%} of training images at 1 false alarm "
                       f"in 100, close to the 1% of guessing{auc_txt}: no evidence that an outsider can tell which "
                       "images were used for training.")
    for p in plugins_of(scan):
        if not (is_ok(p) and section_of(p) == "replication"):
            continue
        cf = metric((p.get("metrics") or {}).get("copy_fraction")).get("value")
        if cf is None:
            continue
        d, params = details_of(p), p.get("params") or {}
        n = params.get("n_samples")
        q = num(d.get("false_positive_rate")) or 0.0  # the criterion's false-positive rate (nominal or measured)
        nominal = num(params.get("quantile")) or q
        mc = d.get("most_copied") or []
        distinct = num(d.get("copied_members", (p.get("metrics") or {}).get("copied_members")))
        if distinct is None and len(mc) < 20:
            distinct = len(mc)
        distinct = None if distinct is None else int(distinct)
        of_n = f" of {n}" if n else ""
        if cf > max(2 * q, 0.02) or p.get("severity") in ("medium", "high", "critical"):
            # a count of 0 beside a non-zero copy fraction means the detector did not attribute its copies to
            # members (e.g. prompt-level copies): say nothing rather than contradict the fraction
            who = (f"; {distinct} different training images were reproduced" if distinct
                   else "; at least 20 different training images were reproduced" if mc and distinct is None else "")
            out.append(f"The model hands back its training images: {cf:.0%}{of_n} images it generated are near-copies of a "
                       f"training image, closer than {1 - nominal:.0%} of genuinely new images ever come{who}.")
        else:
            out.append(f"Copies: {cf:.1%}{of_n} generated images are as close to a training image as only {q:.1%} of "
                       "genuinely new images are, about what chance gives: no evidence of copying.")
    for c in (scan or {}).get("checks") or []:
        if isinstance(c, dict) and c.get("ok") is False:
            out.append(f"Caution about the data: {c.get('message', '')}")
    return out


def rules_table(stored_text: str | None, *, rules: Rules) -> dict:
    """The documented severity rules: structured from the code, and as recorded by the run."""
    current = (rules.text or "").strip()
    stored = (stored_text or "").strip()
    return {"rows": rules.rows or [], "text": stored or current, "matches": not stored or stored == current}


def verdict_view(scan: dict, *, rules: Rules) -> dict:
    v = scan.get("verdict") if isinstance(scan.get("verdict"), dict) else {}
    level, problems = judged_level(v, scan.get("plugins"))  # no verdict, or failed tests: never a calm badge
    said = {f"{p.get('name', '?')}: {details_of(p)['inconclusive']}" for p in plugins_of(scan)
            if details_of(p).get("inconclusive")}  # plain_why says these in its own words
    fired = []
    for p in plugins_of(scan):
        for rule in details_of(p).get("rules") or []:
            fired.append({"level": p.get("severity", "info"), "plugin": p.get("name", "?"), "text": str(rule),
                          "area": section_of(p)})
    if not any("rules" in details_of(p) for p in plugins_of(scan)):  # another writer: use the verdict's own list
        fired = [{"level": level, "plugin": "", "text": str(r), "area": ""} for r in v.get("reasons") or []]
    fired.sort(key=lambda f: -(LEVELS.index(f["level"]) if f["level"] in LEVELS else -1))
    todo = (MITIGATED_TODO if scan.get("mitigated") else TODO)  # a protected model is not told to mitigate
    return {"level": level, "answer": ANSWERS.get(level, ANSWERS["info"]), "todo": todo.get(level, todo["info"]),
            "why": [f"{p}." for p in problems if p not in said] + plain_why(scan), "fired": fired,
            "warnings": [str(w) for w in v.get("warnings") or []],
            "rules": rules_table(v.get("rules"), rules=rules), "scale": LEVELS, "basis": "", "if_weights_leak": None,
            "caveats": []}


def mitigated_verdict_view(r: dict, v: dict) -> dict:
    """A mitigation run's verdict: its own level and rules (both score directions, every headline number)."""
    mv = r["verdict"]
    level, _ = judged_level(mv, (r.get("after") or {}).get("plugins") if isinstance(r.get("after"), dict) else None)
    fired = _fired(mv.get("fired"))
    # rules a one-sided scan cannot see (a reversed score, a headline number) join "Why" when they raised the
    # level of their area above what the scan's own rules found; the "no evidence" sentence of that area goes
    rank = lambda lv: LEVELS.index(lv) if lv in LEVELS else -1
    scan_level = {a: max((rank(str(p.get("severity"))) for p in plugins_of(r.get("after")) if is_ok(p)
                          and section_of(p) == a), default=-1) for a in ("membership", "replication")}
    extra = [f for f in fired if (f["plugin"] == "headline" or f["text"].startswith("score reversed"))
             and rank(f["level"]) > scan_level.get(f["area"], -1)][:2]
    why = v["why"]
    if mv.get("basis") == "black-box" and isinstance(r.get("after"), dict):  # the headline reads black-box evidence
        served = [p for p in plugins_of(r["after"]) if p.get("kind") == "detector" or p.get("threat_model") == "black-box"]
        why = plain_why({**r["after"], "plugins": served, "ensemble": None})
    if extra:
        areas = {f["area"] for f in extra}
        quiet = {"membership": "Membership: ", "replication": "Copies: "}
        why = [w for w in why if not any(w.startswith(quiet[a]) for a in areas if a in quiet)]
        why = [("The protected model still leaks (headline number): " if f["plugin"] == "headline" else
                f"The protected model still leaks ({f['plugin']} attack): ") + f["text"] + "." for f in extra] + why
    leak = mv.get("if_weights_leak") if isinstance(mv.get("if_weights_leak"), dict) else None
    basis = str(mv.get("basis") or "")
    return {**v, "level": level, "answer": MITIGATED_ANSWERS.get(level, ANSWERS.get(level, ANSWERS["info"])),
            "todo": MITIGATED_TODO.get(level, MITIGATED_TODO["info"]),
            "fired": fired if basis == "black-box" else (fired or v["fired"]), "why": why, "basis": basis,
            # the level is leakage only: what must be said beside it (quality collapsed, a target missed)
            "caveats": [str(c) for c in mv.get("caveats") or []],
            "if_weights_leak": ({"level": str(leak.get("level") or "info"), "text": str(leak.get("text") or ""),
                                 "fired": _fired(leak.get("fired"))[:6]} if leak else None)}


def _fired(items: Any) -> list[dict]:
    """Rules that fired, as a mitigation run recorded them, every field as text."""
    return [{"level": str(f.get("level", "info")), "plugin": str(f.get("plugin", "")), "text": str(f.get("text", "")),
             "area": str(f.get("area", ""))} for f in items or [] if isinstance(f, dict)]
