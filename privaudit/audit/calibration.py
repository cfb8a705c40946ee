"""Base calibration of a fine-tune's membership scores: each attack scored on the fine-tune and on its base
model, members told apart by the difference (see base_calibrated)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from privaudit.api import AuditSettings
from privaudit.audit.epsilon import epsilon_details
from privaudit.audit.scoring import histograms, result_of, score_set
from privaudit.data.sets import ImageSet
from privaudit.io.errors import Inconclusive

# PARTIAL: an unfinished run's finished shards (privaudit.audit.engine): kept for --resume, gone once the run is written
from privaudit.io.results import PluginResult
from privaudit.io.verdict import (
    membership_severity,
    metrics_problem,
)
from privaudit.model.denoiser import Denoiser
from privaudit.model.latent import fit_inputs
from privaudit.stats.metrics import calibration_split, membership_metrics, roc_points, threshold_at_balanced

CALIBRATED = " (base-calibrated)"


def calibration_slope(finetuned: np.ndarray, base: np.ndarray) -> float:
    """beta in score(fine-tuned) - beta * score(base): the least-squares slope of the fine-tune's scores on the
    base's over never-seen images (calibration holdout), clipped to [0, 1].

    beta = 1 is the plain difference, right when the fine-tune is a small change of the base (a real LoRA
    on a large base model: both models find the same images hard). When the fine-tune moved far from the
    base, the base's per-image scores carry less over and the plain difference mostly adds the base's
    noise. On the digits-lora fixture (whose base memorised 32 other digits, so it is a poor reference)
    the fitted slope is 0.43 for loss and 0.09 for PIA; the plain difference lowered loss' TPR at 1% FPR
    from 1.0 to 0.88 and PIA's AUC from 0.99 to 0.67, the fitted slope kept loss at 1.0 (PIA: 0.81). On a
    weaker adapter (attention-free LoRA, loss AUC 0.88) the fitted slope raised loss' TPR from 0.44 to
    0.69 where the plain difference lowered it to 0.31."""
    f, b = np.asarray(finetuned, float), np.asarray(base, float)
    if len(b) < 2 or not np.var(b) > 0:
        return 1.0
    return float(np.clip(np.cov(f, b)[0, 1] / np.var(b, ddof=1), 0.0, 1.0))


def base_calibrated(attack, raw: PluginResult, *, denoiser: Denoiser, base: Denoiser, members: ImageSet,
                    holdout: ImageSet, settings: AuditSettings, scores: pd.DataFrame) -> PluginResult | None:
    """A gray-box attack calibrated by the base model: score(fine-tuned) - beta * score(base) per image.

    The same fitted attack (same timestep) scores the base with the same per-image noise draws, so the
    difference removes what makes an image easy or hard for any model of this family (LiRA / RMIA's
    reference model, here free). beta (``calibration_slope``, 1 = the plain difference) and the threshold
    are fitted on the calibration split, like any attack's choices."""
    if attack.threat_model != "gray-box" or raw.status != "ok" or raw.details.get("inconclusive"):
        return None
    s = settings
    cal_m, ev_m = calibration_split(len(members), fraction=s.calibration_fraction, seed=s.seed)
    cal_h, ev_h = calibration_split(len(holdout), fraction=s.calibration_fraction, seed=s.seed + 1)
    if not any(k.endswith("_") and not k.startswith("_") for k in vars(attack)):  # its raw result came from the memo
        fit_den, fit_m, fit_h, _, _ = fit_inputs(denoiser, members, cal_m, holdout, cal_h, prompt=s.prompt)
        attack.fit(fit_den, members=fit_m, holdout=fit_h, seed=s.seed)
    kw: dict[str, Any] = dict(batch_size=s.batch_size, seed=s.seed, prompt=s.prompt, progress=s.progress)
    raw_scores = scores[attack.name].to_numpy(dtype=float)
    bm = score_set(attack, base, members, label="members (base)", **kw)
    bh = score_set(attack, base, holdout, label="holdout (base)", **kw)
    fm, fh = raw_scores[:len(members)], raw_scores[len(members):]
    name = attack.name + CALIBRATED
    try:
        if not (np.isfinite(bm).all() and np.isfinite(bh).all()):
            raise Inconclusive(f"{int((~np.isfinite(np.r_[bm, bh])).sum())} base-model scores are NaN or infinite")
        beta = calibration_slope(fh[cal_h], bh[cal_h])
        sm, sh = fm - beta * bm, fh - beta * bh
        threshold = threshold_at_balanced(np.r_[np.ones(len(cal_m)), np.zeros(len(cal_h))], np.r_[sm[cal_m], sh[cal_h]])
        metrics = membership_metrics(sm[ev_m], sh[ev_h], threshold=threshold, n_boot=s.n_boot, seed=s.seed)
        if problem := metrics_problem(metrics):
            raise Inconclusive(problem)
    except Inconclusive as e:
        res = result_of(attack, "ok", severity="info", finding=f"{name} could not judge this model: {e}",
                      details={"inconclusive": str(e)})
        return dataclasses.replace(res, name=name, id=attack.id + "+base")
    base_only = membership_metrics(bm[ev_m], bh[ev_h], n_boot=s.n_boot, seed=s.seed)
    scores[name], scores[attack.name + " (base)"] = np.r_[sm, sh], np.r_[bm, bh]
    severity, rules = membership_severity(metrics)
    auc, tpr = metrics["auc"], metrics["tpr_at_fpr_0.01"]
    assert auc.ci is not None
    finding = (f"{name} (score on this model minus {beta:.2f} x score on the base model, same noise and timesteps) separates "
               f"members from holdout with AUC {auc.value:.3f} (95% CI {auc.ci[0]:.3f}-{auc.ci[1]:.3f}) and TPR "
               f"{tpr.value:.3f} at 1% FPR; the base model alone: AUC {base_only['auc'].value:.3f}.")
    res = result_of(attack, "ok", metrics=metrics, severity=severity, finding=finding, details={
        "rules": rules, "threshold": threshold, "calibrated_by": "base", "raw_attack": attack.name,
        "fitted": {"beta": round(beta, 6)},
        "base_only": {k: m.to_json() for k, m in base_only.items()},
        "roc": roc_points(sm[ev_m], sh[ev_h]), "histogram": histograms(sm[ev_m], sh[ev_h]),
        "split": {"calibration": [len(cal_m), len(cal_h)], "evaluation": [len(ev_m), len(ev_h)]},
        "epsilon": epsilon_details(sm, sh, cal_m, cal_h, ev_m, ev_h, settings=s)})
    # two models are queried per image: the audited one and the base
    return dataclasses.replace(res, name=name, id=attack.id + "+base", queries_per_image=2 * res.queries_per_image)


def calibration_summary(plugins: list[dict]) -> dict:
    """Raw and base-calibrated metrics of each gray-box attack, side by side."""
    by_name = {p["name"]: p for p in plugins if p.get("kind") == "attack" and p.get("status") == "ok"}
    value = lambda p, k: ((p or {}).get("metrics") or {}).get(k, {}).get("value")
    pairs = []
    for name, p in by_name.items():
        raw = by_name.get(p.get("details", {}).get("raw_attack", "")) if name.endswith(CALIBRATED) else None
        if raw is None:
            continue
        base_only = p["details"].get("base_only", {})
        pairs.append({"attack": raw["name"], "raw_auc": value(raw, "auc"), "calibrated_auc": value(p, "auc"),
                      "raw_tpr_at_fpr_0.01": value(raw, "tpr_at_fpr_0.01"),
                      "calibrated_tpr_at_fpr_0.01": value(p, "tpr_at_fpr_0.01"),
                      "base_auc": base_only.get("auc", {}).get("value")})
    return {"pairs": pairs, "note": "The ensemble takes the stronger of each raw and calibrated attack."}
