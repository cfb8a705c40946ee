"""``privaudit mitigate``: audit, apply a mitigation plugin, audit again, with controls and a sweep.

The flow, for any ``Mitigation`` plugin chosen with ``--method`` (core knows none by name):

1. **before**: ``runner.audit`` on the raw model's Denoiser (every selected attack and
   detector; seeds from the settings);
2. ``mitigation.apply(ctx)`` -> ``MitigationOutput``: the protected pipeline folder
   (``DIR/protected``), its Denoiser (loaded back from that folder: what is audited is what
   ships), details of what was trained, and *controls*: other ways of serving the model
   (``Variant``: a Denoiser, possibly with its own ``draw_samples`` sampler) that show
   whether the effect is real (e.g. a placebo) or cheaper to get (e.g. rejection sampling);
3. **after**: the same audit on the protected Denoiser: the gray-box view a user of the
   protected pipeline has. White-box attacks read ``denoiser.white_box``, the raw network,
   so their numbers stay unchanged: that is the mitigation's stated limit, shown, not hidden;
4. **controls** audited the same way, side by side with no mitigation and the mitigation,
   each with copy fraction, membership AUC on the served denoiser, quality and sampling
   time (measured in this process on the same sample count, steps and seed);
5. ``--sweep``: ``mitigation.sweep(ctx, output)`` variants (e.g. alpha x scale), each audited;
   the privacy/quality frontier, the recommended setting (``recommend``: the best quality
   among settings that meet the privacy targets, else among those that meet the copy target,
   else the fewest copies), and, where the sweep has a ``placebo`` family, the two families'
   Pareto fronts compared at matched quality (``matched_quality``).

6. **verdict** (``mitigation_verdict``), judged by threat model: every membership and replication
   number the report shows is put through the rules (the after-audit's rules, the same rules on
   each attack's reversed score, the headline two-sided AUC per threat model and the copy
   fraction). The protected model's level is the black-box one (black-box attacks and replication
   detectors: what a served model faces) when a black-box attack ran, else the worst of all;
   ``if_weights_leak`` is the worst of all, gray-box and white-box included, labelled as such.
   ``gate_leak``: the protected model's two-sided gray-box AUC (the guard's gate seen from outside).

Writes ``DIR/before/`` and ``DIR/after/`` (results.json, scores.csv, report.html, exactly as
``scan``), ``DIR/results.json`` (``kind: "mitigation"``; shape below), ``DIR/summary.json``,
``DIR/junit.xml`` (``privaudit.io.exports``) and ``DIR/report.html``::

    {"schema_version", "kind": "mitigation", "method", "params", "before": <scan results>,
     "after": <scan results>, "controls": [{"name", "description", "family", "params",
     "metrics": {...}, "sampling_seconds", "sampling_ratio", "details"}], "sweep": [{"name",
     "family", <params>, "metrics", "sampling_seconds", "meets_targets", "recommended"}],
     "matched_quality": {...} | null, "white_box": [...], "details": {...}, "details_title": str, "targets": {...},
     "findings": [str], "warnings": [str], "limits": [str], "manifest": {...},
     "verdict": {"level", "basis", "before", "fired": [{"level", "plugin", "area", "threat_model", "text"}],
     "if_weights_leak": {"level", "fired", "text"}, "by_threat_model": {...}, "reversed": {...},
     "reasons", "warnings", "rules"}, "gate_leak": {"value", "before", "black_box", "note"} | null,
     "weights": {"same_files", "sha256", "raw_weights_shipped"}}
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from privaudit.api import AuditSettings, Mitigation, MitigationContext, MitigationOutput, Variant, default_cache_dir  # noqa: F401 (MitigationContext, Variant, MitigationOutput: re-exported)
from privaudit.api.registry import Registry
from privaudit.audit.runner import (
    audit,
    bind_run,
    check_plan,
    data_fingerprints,
    engine_session,
    load_data,
    manifest,
    remove_partial,
    scan_results,
    write_run,
)
from privaudit.data.sets import ImageSet, load_checked
from privaudit.io.errors import InputError
from privaudit.io.exports import write_exports
from privaudit.io.files import write_json, write_text
from privaudit.io.ownership import clear_owned, write_manifest
from privaudit.io.results import SCHEMA_VERSION
from privaudit.model.denoiser import Denoiser, ProvidesDenoiser
from privaudit.model.latent import image_shape_of
from privaudit.model.target import load_target

# What the issue asks a mitigation to reach on the built-in target; used to pick the recommended setting.
TARGETS = {"copy_fraction": 0.02, "membership_auc_two_sided": 0.6}
TARGET_LABELS = {"copy_fraction": "copy fraction", "membership_auc_two_sided": "two-sided membership AUC",
                 "black_box_auc_two_sided": "two-sided black-box membership AUC"}
QUALITY_PREFERENCE = ("frechet_distance", "precision")  # lower FD is better; higher precision is better

GENERIC_LIMITS = (
    "Protection holds only while the raw model weights stay private: white-box attacks read the raw network and "
    "see through any sampling-time mitigation.",
    "Black-box numbers (attacks through the sampling interface, replication detectors) are what a served model "
    "faces and make the headline verdict; they hold only while the model is served (images out), never shipped.",
    "Gray-box numbers query the protected noise prediction (guard included), an access that only holding the "
    "weights gives: they belong to the 'if the weights leak' line, where the guard's gate itself can tell members "
    "apart (the gate leak). An attacker who knows the mitigation may invert a score, so membership AUC is also "
    "reported two-sided, max(AUC, 1 - AUC).",
)


# ---------------------------------------------------------------------------- summaries


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


# summary keys per threat model: "black_box_auc", "gray_box_auc_two_sided" (the gate leak of a protected model), ...
THREAT_KEYS = {"black-box": "black_box", "gray-box": "gray_box", "white-box": "white_box"}


def privacy_key(metrics: dict) -> str:
    """The membership number a served setting is judged on: the black-box two-sided AUC where a black-box
    attack ran (what a served model faces), else the two-sided AUC over every attack on the served model."""
    return "black_box_auc_two_sided" if "black_box_auc_two_sided" in metrics else "membership_auc_two_sided"


def _sampling_config(results: dict) -> dict:
    """Steps, sampler and n of the detectors' sampling (for a like-for-like timing run)."""
    for p in results["plugins"]:
        prm = p.get("params") or {}
        if p["kind"] == "detector" and "steps" in prm and "sampler" in prm:
            return {"steps": int(prm["steps"]), "sampler": str(prm["sampler"]), "n": int(prm.get("n_samples", 64))}
    return {"steps": 50, "sampler": "ddim", "n": 64}


def timed_samples(denoiser: Denoiser, *, n: int, steps: int, sampler: str, seed: int,
                  batch_size: int) -> tuple[torch.Tensor, float]:
    """Draw ``n`` samples (uncached, through the denoiser's ``draw_samples``) and time it."""
    denoiser.reset_counts()
    if denoiser.device.type == "cuda":
        torch.cuda.synchronize(denoiser.device)
    start = time.perf_counter()
    x = denoiser.draw_samples(n=n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size, progress=False)
    if denoiser.device.type == "cuda":
        torch.cuda.synchronize(denoiser.device)
    return x, time.perf_counter() - start


# ---------------------------------------------------------------------------- the verdict


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


def mitigation_verdict(*, before: dict, after_res: dict, row: dict, settings: AuditSettings) -> dict:
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
    """
    from privaudit.io.verdict import (
        AUC_HIGH,
        COPY_CRITICAL,
        COPY_HIGH,
        RULES_TEXT,
        evidence_problems,
        overall,
        worst,
    )

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
    return {"level": level, "basis": basis, "before": before["verdict"]["level"], "fired": shown,
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


# ---------------------------------------------------------------------------- the flow


class _Auditor:
    """Audits variants with one set of data and settings; collects comparable rows."""

    def __init__(self, *, members, holdout, reference, registry, settings, timing: dict, seed: int):
        self.members, self.holdout, self.reference = members, holdout, reference
        self.registry, self.settings, self.timing, self.seed = registry, settings, timing, seed
        self.base_seconds: float | None = None

    def audit(self, denoiser) -> dict:
        return audit(denoiser=denoiser, members=self.members, holdout=self.holdout, registry=self.registry,
                     settings=self.settings, reference=self.reference)

    def row(self, *, name: str, description: str, family: str, params: dict, res: dict, denoiser,
            probe=None, details=None, role: str = "control") -> dict:
        n = min(64, self.timing["n"])
        x, secs = timed_samples(denoiser, n=n, steps=self.timing["steps"], sampler=self.timing["sampler"],
                                seed=self.seed, batch_size=self.settings.batch_size * 2)
        metrics = summarize(res)
        if probe is not None:
            metrics.update(probe(x))
        if self.base_seconds is None:
            self.base_seconds = secs
        det = details() if callable(details) else dict(details or {})
        # each way of serving the model judged as the protected one is: black-box headline, weights-leak line
        v = mitigation_verdict(before={"verdict": {"level": "n/a"}}, after_res=res, row={"metrics": metrics},
                               settings=self.settings)
        return {"name": name, "description": description, "family": family, "role": role, "params": params,
                "metrics": metrics,
                "sampling_seconds": round(secs, 3), "sampling_ratio": round(secs / max(self.base_seconds, 1e-9), 3),
                "timing": {"n": n, "steps": self.timing["steps"], "sampler": self.timing["sampler"]},
                "verdict": v["level"], "verdict_basis": v["basis"],
                "verdict_if_weights_leak": v["if_weights_leak"]["level"], "details": det}


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


def mitigate(*, model_dir: str | Path, members: str | Path, holdout: str | Path, out: str | Path, method: str,
             params: dict | None = None, settings: AuditSettings, device: str = "auto",
             reference: str | Path | None = None, sweep: bool = False, allow_pickle: bool = False,
             plugins_dir: str | Path | None = None, argv: list[str] | None = None, redact: str = "thumbnails",
             log: Callable[[str], None] | None = None, dtype: str = "auto") -> dict:
    """``privaudit mitigate``: returns the mitigation results written to ``out``. Its audits and sampling
    run on the chosen engine, sharded and resumable (``--resume``); the guard trains in this process.
    ``out`` is written in place: a previous run there (provably privaudit's, else exit 2) is cleared first,
    and the ownership manifest is written last."""
    if not settings.resume:
        clear_owned(out)
    with engine_session(Path(out), settings=settings) as run:
        results = _mitigate(run, model_dir=model_dir, members=members, holdout=holdout, out=out, method=method,
                            params=params, settings=settings, device=device, reference=reference, sweep=sweep,
                            allow_pickle=allow_pickle, plugins_dir=plugins_dir, argv=argv, redact=redact, log=log,
                            dtype=dtype)
    remove_partial(Path(out))  # finished: its shards are no longer needed
    write_manifest(Path(out))  # last: the whole folder is now provably privaudit's
    return results


def _mitigate(run, *, model_dir: str | Path, members: str | Path, holdout: str | Path, out: str | Path, method: str,
              params: dict | None, settings: AuditSettings, device: str, reference: str | Path | None, sweep: bool,
              allow_pickle: bool, plugins_dir: str | Path | None, argv: list[str] | None, redact: str,
              log: Callable[[str], None] | None, dtype: str) -> dict:
    say = log or (lambda msg: print(msg, file=sys.stderr) if settings.progress else None)
    start = time.perf_counter()
    out = Path(out)
    registry = Registry.build(plugins_dir=plugins_dir)
    check_plan(registry, settings)
    mitigation = registry.create(method, kind="mitigation", **(params or {}))  # validated: fails before any work
    assert isinstance(mitigation, Mitigation)
    raw, info, pipe = load_target(model_dir, device=device, allow_pickle=allow_pickle, dtype=dtype)
    if isinstance(pipe, ProvidesDenoiser):
        raise InputError(f"{model_dir}: already a protected pipeline ({type(pipe).__name__}); mitigate the raw model")
    mem, hold = load_data(members, holdout, shape=image_shape_of(raw))
    ref = load_checked(reference, name="reference", channels=info.channels, size=info.resolution) if reference else None
    split_note = None
    if ref is None:  # the guard needs never-trained-on images: a seeded part of the holdout the audits never use
        hold, ref, split_note = split_reference(hold, seed=settings.seed)
    data = data_fingerprints(mem, hold, ref)
    if split_note:
        data["reference_from_holdout"] = split_note
    bind_run(run, out, settings=settings, denoiser=raw, data=data, registry=registry,
             extra={"mitigation": method, "params": params or {}, "sweep": sweep})
    common: dict[str, Any] = dict(settings=settings, registry=registry, argv=argv, device=raw.device)

    say("mitigate: auditing the raw model (before)")
    t0 = time.perf_counter()
    before_res = audit(denoiser=raw, members=mem, holdout=hold, registry=registry, settings=settings, reference=ref)
    before = scan_results(before_res, info=info, data=data, seconds=time.perf_counter() - t0, **common)

    ctx = MitigationContext(model_dir=Path(model_dir), pipeline=pipe, denoiser=raw, members=mem, holdout=hold,
                            reference=ref, out=out, registry=registry, settings=settings, device=raw.device,
                            cache_dir=Path(settings.cache_dir or default_cache_dir()), seed=settings.seed,
                            progress=settings.progress)
    say(f"mitigate: applying {method}")
    t0 = time.perf_counter()
    result: MitigationOutput = mitigation.apply(ctx)
    apply_seconds = time.perf_counter() - t0
    for w in result.warnings:
        say(f"mitigate: warning: {w}")

    say("mitigate: auditing the protected model (after)")
    t0 = time.perf_counter()
    _, pinfo, _ = load_target(result.protected_dir, device=str(raw.device))
    after_res = audit(denoiser=result.denoiser, members=mem, holdout=hold, registry=registry, settings=settings,
                      reference=ref)
    after = scan_results(after_res, info=pinfo, data=data, seconds=time.perf_counter() - t0, **common)

    auditor = _Auditor(members=mem, holdout=hold, reference=ref, registry=registry, settings=settings,
                       timing=_sampling_config(before), seed=settings.seed)
    controls = [auditor.row(name="no mitigation", family="none", params={}, res=before_res, denoiser=raw,
                            description="the raw model as trained"),
                auditor.row(name=method, family=method, role="main", params=_scalar_params(result.params), res=after_res,
                            denoiser=result.denoiser, probe=result.probe,
                            description="the protected pipeline as saved in protected/ and loaded back")]
    for v in result.controls:
        say(f"mitigate: auditing control: {v.name}")
        res = auditor.audit(v.denoiser)
        controls.append(auditor.row(name=v.name, description=v.description, family=v.family, params=v.params, res=res,
                                    denoiser=v.denoiser, probe=v.probe, details=v.details, role=v.role))

    sweep_rows: list[dict] = []
    matched = None
    families: list[dict] = []
    if sweep:
        variants = mitigation.sweep(ctx, result)
        for i, v in enumerate(variants, 1):
            say(f"mitigate: sweep {i}/{len(variants)}: {v.name}")
            res = auditor.audit(v.denoiser)
            row = auditor.row(name=v.name, description=v.description, family=v.family, params=v.params, res=res,
                              denoiser=v.denoiser, probe=v.probe, details=v.details)
            sweep_rows.append({"name": row["name"], "family": row["family"], "role": v.role, **row["params"], "metrics": row["metrics"],
                               "sampling_seconds": row["sampling_seconds"], "sampling_ratio": row["sampling_ratio"],
                               "meets_targets": meets_targets(row["metrics"]), "recommended": False,
                               "_params": row["params"]})
        main = [r for r in sweep_rows if r["role"] == "main"]
        best = recommend(main)
        if best is not None:
            main[best]["recommended"] = True
        placebo = [r for r in sweep_rows if r["role"] == "placebo"]
        matched = matched_quality([r for r in main if r["family"] == controls[1]["family"]] or main, placebo,
                                  anchor=controls[0])
        families = family_summary(main) if len({r["family"] for r in main}) > 1 else []
        for r in sweep_rows:
            r.pop("_params")

    white = _white_box(before, after)
    findings = _findings(method, controls, sweep_rows, matched, white)
    for f in families:
        findings.append(f"sweep family {f['family']}: {f['meet_copy_target']} of {f['settings']} settings meet the copy "
                        f"target; its pick {f['pick']}: copy fraction {_fmt(f['pick_copy_fraction'])}, "
                        f"{f['quality_metric'] or 'quality'} {_fmt(f['pick_quality'])}, black-box AUC (two-sided) "
                        f"{_fmt(f['pick_black_box_auc_two_sided'])}, gate leak {_fmt(f['pick_gate_leak'])}; lowest gate "
                        f"leak at the copy target {_fmt(f['lowest_gate_leak_at_copy_target'])}.")
    verdict = mitigation_verdict(before=before, after_res=after_res, row=controls[1], settings=settings)
    leak = gate_leak(controls[0], controls[1])
    results = {
        "schema_version": SCHEMA_VERSION, "kind": "mitigation", "method": method,
        "params": _scalar_params(result.params),
        "protected": str(result.protected_dir),
        "before": _body(before), "after": _body(after),
        "controls": controls, "sweep": sweep_rows, "matched_quality": matched, "white_box": white, "gate_leak": leak,
        "sweep_families": families,
        "details": result.details, "details_title": result.details_title, "targets": TARGETS, "findings": findings,
        "warnings": ([split_note["message"]] if split_note else []) + list(result.warnings),
        "limits": list(GENERIC_LIMITS) + list(result.limits), "verdict": verdict,
        "weights": _same_weights(before, after),
    }
    results["manifest"] = {**manifest(argv=argv, device=raw.device, settings=settings, info=info, data=data,
                                      registry=registry, seconds=time.perf_counter() - start),
                           "mitigation": {"name": method, "origin": registry.get(method).origin,
                                          "apply_seconds": round(apply_seconds, 2)},
                           "engine": run.describe()}
    results["data"] = data
    write_run(out / "before", before, redact=redact)
    # the after-run is an audit of an already mitigated model: its report must not advise mitigating it
    write_run(out / "after", {**after, "mitigated": {"method": method}}, baseline=before, redact=redact)
    _write_report(out, results, before=before, after=after, redact=redact)
    return results


REFERENCE_FRACTION = 0.25  # of the holdout, set aside for the guard when no --reference is given


def split_reference(holdout: ImageSet, *, seed: int) -> tuple[ImageSet, ImageSet, dict]:
    """(evaluation holdout, reference, note): a seeded ``REFERENCE_FRACTION`` of the holdout becomes the
    guard's never-trained-on reference; every audit (before, after, controls) uses only the rest."""
    n = len(holdout)
    n_ref = int(round(n * REFERENCE_FRACTION))
    if n - n_ref < 4 or n_ref < 2:
        raise InputError(f"{holdout.source}: holdout of {n} images is too small to set aside a reference for the "
                         "guard and still evaluate; pass never-trained-on images with --reference")
    order = np.random.default_rng([seed, 0x5EF]).permutation(n)
    ref_idx, eval_idx = np.sort(order[:n_ref]), np.sort(order[n_ref:])
    note = {"reference_images": int(n_ref), "evaluation_holdout_images": int(n - n_ref), "seed": seed,
            "reference_ids_sha256": hashlib.sha256("\n".join(holdout.ids[i] for i in ref_idx).encode()).hexdigest(),
            "message": (f"no --reference was given: {n_ref} of the {n} holdout images (seeded) were set aside as the "
                        f"guard's never-trained-on reference; every audit here evaluates on the other {n - n_ref} "
                        "holdout images, so intervals are wider than with the full holdout")}
    return holdout.subset(eval_idx), holdout.subset(ref_idx, name="reference"), note


def _body(scan: dict) -> dict:
    return {k: v for k, v in scan.items() if k not in ("scores", "tables")}


def _scalar_params(params: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()
            if isinstance(v, (int, float, str, bool, tuple, list)) or v is None}


def _white_box(before: dict, after: dict) -> list[dict]:
    rows = []
    b = {p["name"]: p for p in before["plugins"] if p["status"] == "ok" and p["threat_model"] == "white-box"}
    for p in after["plugins"]:
        if p["name"] in b and p["status"] == "ok" and "auc" in p["metrics"]:
            ba, aa = _value(b[p["name"]]["metrics"]["auc"]), _value(p["metrics"]["auc"])
            rows.append({"attack": p["name"], "before_auc": ba, "after_auc": aa,
                         "unchanged": ba is not None and aa is not None and abs(ba - aa) < 1e-9})
    return rows


def _same_weights(before: dict, after: dict) -> dict:
    """The raw and protected folders' network weights by file: a sampling-time mitigation ships the raw UNet."""
    b, a = before["target"].get("weights_sha256") or {}, after["target"].get("weights_sha256") or {}
    same = sorted(f for f in b if a.get(f) == b[f])
    return {"same_files": same, "sha256": {f: b[f] for f in same}, "raw_weights_shipped": bool(same)}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _findings(method: str, controls: list[dict], sweep: list[dict], matched: dict | None, white: list[dict]) -> list[str]:
    by = {c["family"]: c for c in controls}
    none, ours = by.get("none"), by.get(method)
    out = []
    if none and ours:
        m0, m1 = none["metrics"], ours["metrics"]
        out.append(f"{method}: copy fraction {_fmt(m0.get('copy_fraction'))} -> {_fmt(m1.get('copy_fraction'))}; "
                   f"membership AUC on the served model {_fmt(m0.get('membership_auc'))} -> {_fmt(m1.get('membership_auc'))} "
                   f"(two-sided, an attacker may reverse the score: {_fmt(m0.get('membership_auc_two_sided'))} -> {_fmt(m1.get('membership_auc_two_sided'))}); "
                   f"Frechet distance {_fmt(m0.get('frechet_distance'))} -> {_fmt(m1.get('frechet_distance'))}; "
                   f"sampling time x{ours['sampling_ratio']:.2f}.")
        if "black_box_auc" in m1 or "black_box_auc" in m0:
            out.insert(0, f"{method}, black box (what the served model faces): membership AUC "
                          f"{_fmt(m0.get('black_box_auc'))} -> {_fmt(m1.get('black_box_auc'))} (two-sided "
                          f"{_fmt(m0.get('black_box_auc_two_sided'))} -> {_fmt(m1.get('black_box_auc_two_sided'))}), "
                          f"TPR at 1% FPR {_fmt(m0.get('black_box_tpr_at_fpr_0.01'))} -> "
                          f"{_fmt(m1.get('black_box_tpr_at_fpr_0.01'))}, copy fraction "
                          f"{_fmt(m0.get('copy_fraction'))} -> {_fmt(m1.get('copy_fraction'))}.")
        if "gray_box_auc_two_sided" in m1:
            out.append(f"{method} gate leak (two-sided gray-box AUC of the protected noise prediction; what leaked "
                       f"weights expose): {_fmt(m1['gray_box_auc_two_sided'])} (raw model "
                       f"{_fmt(m0.get('gray_box_auc_two_sided'))}).")
        goals = {"copy_fraction": TARGETS["copy_fraction"], privacy_key(m1): TARGETS["membership_auc_two_sided"]}
        unmet = [k for k, v in goals.items() if k in m1 and m1[k] > v]
        if unmet:
            out.append(f"{method} at these settings misses the target(s) " +
                       ", ".join(f"{TARGET_LABELS.get(k, k)} <= {goals[k]} (got {m1[k]:.3f})" for k in unmet) + ".")
    for c in controls:
        if c["family"] in ("none", method):
            continue
        m = c["metrics"]
        out.append(f"control {c['name']}: copy fraction {_fmt(m.get('copy_fraction'))}, membership AUC "
                   f"{_fmt(m.get('membership_auc'))}, Frechet distance {_fmt(m.get('frechet_distance'))}, "
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
        out.append(f"recommended setting: {rec['name']} (copy fraction {_fmt(rec['metrics'].get('copy_fraction'))}, "
                   f"{'meets' if rec['meets_targets'] else 'does not meet'} the targets).")
    for w in white:
        out.append(f"white-box {w['attack']}: AUC {_fmt(w['before_auc'])} before, {_fmt(w['after_auc'])} after "
                   f"({'unchanged: the raw weights bypass the mitigation' if w['unchanged'] else 'changed'}).")
    return out


def _write_report(out: Path, results: dict, *, before: dict, after: dict, redact: str) -> None:
    from privaudit.reports import render_html
    from privaudit.reports.images import redact_images

    try:
        html = render_html(results, redact=redact)
    except Exception as e:  # a renderer without mitigation support: fall back to after-vs-before, and say so
        results["warnings"].append(f"mitigation report rendering failed ({e.__class__.__name__}: {e}); "
                                   "report.html shows the after audit against the before audit")
        html = render_html(_body(after), baseline=_body(before), redact=redact)
    write_json(out / "results.json", redact_images(results, mode=redact))
    write_exports(out, results)  # summary.json, junit.xml: the protected model's verdict, for CI
    write_text(out / "report.html", html)
