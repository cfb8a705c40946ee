"""The protected model's verdict, judged by threat model (see mitigation_verdict)."""

from __future__ import annotations

from privaudit.api import AuditSettings


def _flipped_rules(res: dict, settings: AuditSettings) -> tuple[list[dict], dict[str, dict]]:
    """Each attack judged with its score reversed, on the same evaluation split.

    A mitigation can push members to the other side of an attack's threshold (AUC well below
    0.5): an attacker who knows the mitigation reverses the score, so the protected model is
    judged on max(AUC, 1 - AUC) and the TPR of the reversed score too.
    """
    from privaudit.io.verdict import membership_severity
    from privaudit.stats.metrics import calibration_split, membership_metrics

    scores = res.get("scores")
    if scores is None:
        return [], {}
    n_m = int((scores["set"] == "member").sum())
    n_h = len(scores) - n_m
    _, ev_m = calibration_split(n_m, fraction=settings.calibration_fraction, seed=settings.seed)
    _, ev_h = calibration_split(n_h, fraction=settings.calibration_fraction, seed=settings.seed + 1)
    out, metrics = [], {}
    for p in res["plugins"]:
        if p["status"] != "ok" or p["kind"] != "attack" or p["name"] not in scores:
            continue
        s = scores[p["name"]].to_numpy(dtype=float)
        flipped = membership_metrics(-s[:n_m][ev_m], -s[n_m:][ev_h], fpr_levels=(0.01,), n_boot=settings.n_boot,
                                     seed=settings.seed)
        level, rules = membership_severity(flipped)
        metrics[p["name"]] = {k: m.to_json() for k, m in flipped.items()}
        out += [{"level": level, "plugin": p["name"], "area": "membership",
                 "text": f"score reversed (an attacker who knows the mitigation flips it): {r}"} for r in rules]
    return out, metrics


def _threat_of(p: dict) -> str:
    """A plugin result's threat model; detectors read generated samples (black box)."""
    tm = p.get("threat_model")
    return "black-box" if p.get("kind") == "detector" or tm in (None, "n/a") else str(tm)


QUALITY_COLLAPSED = 0.5  # a quality ratio whose whole interval lies below this: the model no longer does its job


def caveats_of(row: dict, targets: tuple | None) -> tuple[list[str], list[dict]]:
    """What the headline must say beside a risk level: quality that collapsed or fell below its target
    (or was never measured), and each stated target the setting misses. Returns (caveats, target checks)."""
    from privaudit.mitigation.targets import check

    out: list[str] = []
    m = dict(row.get("metrics") or {})
    if isinstance(row.get("sampling_ratio"), (int, float)):
        m.setdefault("sampling_ratio", float(row["sampling_ratio"]))
    q = row.get("quality")
    qt = next((t for t in targets or () if t.key == "quality_ratio"), None)
    if isinstance(q, dict) and q.get("ratio") is not None:
        lo, hi = q["ci"]
        words = (f"quality {q['ratio']:.2f}x the unprotected model's [{lo:.2f}, {hi:.2f}] ({q.get('measure', 'precision')} "
                 f"{q['before']:.2f} -> {q['after']:.2f})")
        if hi < QUALITY_COLLAPSED:
            out.append(f"quality collapsed: {words}: the protected model no longer draws what the unprotected one "
                       "drew, so this privacy was bought by destroying the model")
        elif qt is not None and not qt.met(q["ratio"]):
            out.append(f"quality below its target {qt}: {words}")
    elif qt is not None and "quality_ratio" not in m:
        out.append("quality not measured (add the quality detector): the privacy gain cannot be weighed against "
                   "what it costs")
    checks = check(m, tuple(targets or ()))
    unmet = [c for c in checks if c["met"] is not True and c["key"] != "quality_ratio"]
    if unmet:
        out.append("misses " + ", ".join(f"{c['target']} (" + ("not measured" if c["value"] is None
                                                                 else f"got {c['value']:.3g}") + ")" for c in unmet))
    return out, checks


def mitigation_verdict(*, before: dict, after_res: dict, row: dict, settings: AuditSettings,
                       targets: tuple | None = None) -> dict:
    """The protected model's verdict, judged in its own threat model, plus what leaked weights would expose.

    Every rule on every membership and replication number the report shows is evaluated: the
    after-audit's rules (one-sided, as for any scan), the same rules on each attack's reversed
    score, and the thresholds on the protected row's headline numbers (two-sided membership AUC
    per threat model, copy fraction). Each fired rule carries the threat model of its evidence.

    A protected pipeline is served: its users get images, not noise predictions. When at least
    one black-box attack ran, ``level`` is the worst of the black-box evidence (black-box attacks,
    replication detectors, the black-box and copy headlines): the headline. ``if_weights_leak``
    is the worst of everything, gray-box (the protected noise prediction, where the guard's gate
    itself can leak) and white-box (the raw network) included: what an attacker holding the
    weights would see. Without any black-box attack there is no black-box membership evidence,
    so ``level`` is the worst of everything (``basis`` says which). ``verdict["before"]`` is the raw
    model's level; ``verdict["reversed"]`` each attack's metrics with its score reversed.

    The level is about leakage only; ``headline`` never shows it alone when quality collapsed (the
    quality ratio's whole interval below ``QUALITY_COLLAPSED``), fell below a quality target, was not
    measured, or a stated target is missed: ``caveats`` (``caveats_of``) say so, and so do
    summary.json, junit.xml and the report.
    """
    from privaudit.io.verdict import AUC_HIGH, COPY_CRITICAL, COPY_HIGH, RULES_TEXT, evidence_problems, overall, worst

    by_name = {p["name"]: p for p in after_res["plugins"]}
    fired = [{"level": p["severity"], "plugin": p["name"], "text": r, "threat_model": _threat_of(p),
              "area": "membership" if p["kind"] == "attack" else "replication"}
             for p in after_res["plugins"] if p["status"] == "ok" for r in (p.get("details") or {}).get("rules", [])]
    reversed_rules, reversed_metrics = _flipped_rules(after_res, settings)
    fired += [{**f, "threat_model": _threat_of(by_name.get(f["plugin"], {}))} for f in reversed_rules]
    m = row.get("metrics") or {}
    for key, tm, words in (("black_box_auc_two_sided", "black-box", "black-box attacks"),
                           ("gray_box_auc_two_sided", "gray-box", "gray-box attacks (the gate leak)"),
                           ("white_box_auc_two_sided", "white-box", "white-box attacks (the raw weights)")):
        two = m.get(key)
        if two is not None and two >= AUC_HIGH:
            fired.append({"level": "high", "plugin": "headline", "area": "membership", "threat_model": tm,
                          "text": f"two-sided membership AUC of {words} is {two:.2f} (>= {AUC_HIGH:.2f}; "
                                  "max(AUC, 1 - AUC) over attacks and timesteps)"})
    two = m.get("membership_auc_two_sided")
    if two is not None and two >= AUC_HIGH and not any(k in m for k in ("black_box_auc_two_sided",
                                                                          "gray_box_auc_two_sided",
                                                                          "white_box_auc_two_sided")):
        fired.append({"level": "high", "plugin": "headline", "area": "membership", "threat_model": "gray-box",
                      "text": f"two-sided membership AUC is {two:.2f} (>= {AUC_HIGH:.2f}; max(AUC, 1 - AUC) over "
                              "attacks and timesteps)"})
    cf = m.get("copy_fraction")
    if cf is not None and cf >= COPY_HIGH:
        fired.append({"level": "critical" if cf >= COPY_CRITICAL else "high", "plugin": "headline",
                      "area": "replication", "threat_model": "black-box",
                      "text": f"{cf:.1%} of the protected model's samples are copies of members "
                              f"(>= {COPY_CRITICAL if cf >= COPY_CRITICAL else COPY_HIGH:.0%})"})
    from privaudit.io.verdict import per_image_severity

    level_img, image_rules = per_image_severity(after_res.get("at_risk"))  # served samples still copy someone
    fired += [{"level": level_img, "plugin": "per image", "area": "replication", "threat_model": "black-box",
               "text": t} for t in image_rules]
    ok = [p for p in after_res["plugins"] if p["status"] == "ok"]
    black_attacks = [p for p in ok if p["kind"] == "attack" and _threat_of(p) == "black-box"]
    rank = ["info", "low", "medium", "high", "critical"]

    def judge(rules: list[dict], plugins: list[dict]) -> tuple[str, list[dict]]:
        level = worst([f["level"] for f in rules] + [p["severity"] for p in plugins]) if plugins else "info"
        shown = sorted((f for f in rules if f["level"] not in ("low", "info")), key=lambda f: -rank.index(f["level"]))
        return level, shown

    # a failed or unusable after-audit plugin (or none judged at all) must never read as "low": inconclusive
    # unless other evidence found medium or worse, as for a scan
    problems = evidence_problems(after_res["plugins"])
    everything_level, everything = judge(fired, ok)
    everything_level = overall([everything_level], problems)
    if black_attacks:
        basis = "black-box"
        level, shown = judge([f for f in fired if f["threat_model"] == "black-box"],
                             [p for p in ok if _threat_of(p) == "black-box"])
        level = overall([level], problems)
    else:
        basis, level, shown = "every threat model", everything_level, everything
    by_threat = {tm: judge([f for f in fired if f["threat_model"] == tm], [p for p in ok if _threat_of(p) == tm])[0]
                 for tm in ("black-box", "gray-box", "white-box") if any(_threat_of(p) == tm for p in ok)}
    leak_rules = [f for f in everything if f["threat_model"] != "black-box"]
    if_leak = {"level": everything_level, "fired": leak_rules,
               "text": (f"{everything_level} risk for anyone holding the protected folder (the raw network and "
                        "the guard)"
                        + (f", from {', '.join(sorted({f['plugin'] for f in leak_rules}))}" if leak_rules else "")
                        + ". Gray-box attacks query the protected noise prediction, guard included (its gate can "
                          "itself tell members apart); white-box attacks read the raw network, which no sampling-time "
                          "guard changes.")}
    caveats, checks = caveats_of(row, targets)
    return {"level": level, "basis": basis, "before": before["verdict"]["level"], "fired": shown,
            "headline": f"{level} ({basis})" + (": but " + "; ".join(caveats) if caveats else ""),
            "caveats": caveats, "quality": row.get("quality"), "targets": checks,
            "if_weights_leak": if_leak, "by_threat_model": by_threat, "reversed": reversed_metrics,
            "reasons": [f"{f['plugin']}: {f['text']}" for f in shown] + problems,
            "warnings": list(after_res["verdict"].get("warnings", []))
            + ([] if black_attacks else ["no black-box membership attack ran (e.g. --attacks rediffuse,gen-nn): the "
                                         "protected model is judged on every threat model, gray-box included"]),
            "rules": RULES_TEXT}


def gate_leak(before: dict, after: dict) -> dict | None:
    """The gate leak: the two-sided gray-box AUC of the protected model (None without gray-box attacks).

    A sampling-time guard changes the noise prediction only near members; an attacker who can query
    that prediction (the gray-box access that holding the weights gives) sees the change itself, so
    members separate from unseen images even when the guard makes them look *less* member-like. The
    raw model's gray-box two-sided AUC is shown beside it for reference."""
    a = (after.get("metrics") or {}).get("gray_box_auc_two_sided")
    if a is None:
        return None
    return {"value": a, "before": (before.get("metrics") or {}).get("gray_box_auc_two_sided"),
            "black_box": (after.get("metrics") or {}).get("black_box_auc_two_sided"),
            "note": "two-sided gray-box membership AUC of the protected noise prediction (max over gray-box attacks "
                    "and their timesteps of max(AUC, 1 - AUC)); 0.5 means the guard's gate does not tell members "
                    "apart from outside"}
