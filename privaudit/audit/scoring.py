"""Scoring one attack on one image set (shards, progress, a per-run memo), running it to a plugin result
(metrics with intervals, thresholds fitted on the calibration split, epsilon), and the result record itself."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from privaudit.api import AuditContext, AuditSettings
from privaudit.audit.epsilon import epsilon_details
from privaudit.data.sets import ImageSet
from privaudit.io.errors import Inconclusive

# PARTIAL: an unfinished run's finished shards (privaudit.audit.engine): kept for --resume, gone once the run is written
from privaudit.io.results import PluginResult
from privaudit.io.verdict import (
    membership_severity,
    metrics_problem,
)
from privaudit.model.denoiser import Denoiser, white_box_sha256
from privaudit.model.latent import conditioning_details, fit_inputs
from privaudit.stats.metrics import calibration_split, membership_metrics, roc_points, threshold_at_balanced


def score_set(attack, denoiser: Denoiser, images: ImageSet, *, batch_size: int, seed: int, label: str,
              prompt: str = "caption", progress: bool = False) -> np.ndarray:
    """Per-image scores of ``images``: in this process, or through the engine of the running audit
    (``privaudit.audit.engine``: sharded, resumable, possibly on Ray); the scores are the same either way."""
    from privaudit.api.stages import active_stages
    from privaudit.audit.work import score_batches
    from privaudit.io.progress import progress_bar

    run = active_stages()
    if run is not None:
        return run.score(attack, denoiser, images, batch_size=batch_size, seed=seed, label=label, prompt=prompt)
    with progress_bar(total=len(images), desc=f"{attack.name}: scoring {label}", unit="img", disable=not progress,
                      leave=False) as bar:
        return score_batches(attack, denoiser, images, batch_size=batch_size, seed=seed, prompt=prompt,
                             on_batch=bar.update)


# An attack's result depends only on what it can query: the weights (white box) or the noise predictions
# (gray box), the data and the settings. Mitigation runs audit several ways of serving one model, and
# most leave one of these unchanged (a sampling-time mitigation keeps the raw weights; rejection sampling
# serves the raw noise predictions): such an attack is computed once per process and its result reused.
_ATTACK_MEMO: dict[str, tuple[PluginResult, np.ndarray]] = {}


def _memo_key(attack, denoiser: Denoiser, members: ImageSet, holdout: ImageSet, s: AuditSettings) -> str | None:
    if attack.threat_model == "white-box" and denoiser.white_box is not None:
        model = "white-box:" + white_box_sha256(denoiser.white_box)
    elif attack.threat_model == "gray-box" and denoiser.white_box is not None:  # weights, so a real fingerprint
        model = "gray-box:" + denoiser.query_fingerprint()
    else:
        return None  # black-box attacks sample: their result depends on how the model is served
    parts = (attack.name, type(attack).__module__, repr(sorted(attack.get_params().items(), key=lambda kv: kv[0])),
             model, members.source, "|".join(members.ids), holdout.source, "|".join(holdout.ids), s.seed,
             s.batch_size, s.calibration_fraction, s.n_boot, s.prompt)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def run_attack(attack, *, denoiser: Denoiser, members: ImageSet, holdout: ImageSet, settings: AuditSettings,
               scores: pd.DataFrame, ctx: AuditContext | None = None) -> PluginResult:
    key = _memo_key(attack, denoiser, members, holdout, settings)
    if key is not None and key in _ATTACK_MEMO:
        res, column = _ATTACK_MEMO[key]
        scores[attack.name] = column
        return res
    if ctx is not None:
        attack.prepare(ctx)
    res = _run_attack(attack, denoiser=denoiser, members=members, holdout=holdout, settings=settings, scores=scores)
    if key is not None:
        _ATTACK_MEMO[key] = (res, scores[attack.name].to_numpy().copy())
    return res


def _run_attack(attack, *, denoiser: Denoiser, members: ImageSet, holdout: ImageSet, settings: AuditSettings,
                scores: pd.DataFrame) -> PluginResult:
    s = settings
    cal_m, ev_m = calibration_split(len(members), fraction=s.calibration_fraction, seed=s.seed)
    cal_h, ev_h = calibration_split(len(holdout), fraction=s.calibration_fraction, seed=s.seed + 1)
    fit_den, fit_m, fit_h, _, _ = fit_inputs(denoiser, members, cal_m, holdout, cal_h, prompt=s.prompt)
    attack.fit(fit_den, members=fit_m, holdout=fit_h, seed=s.seed)
    kw: dict[str, Any] = dict(batch_size=s.batch_size, seed=s.seed, prompt=s.prompt, progress=s.progress)
    sm = score_set(attack, denoiser, members, label="members", **kw)
    sh = score_set(attack, denoiser, holdout, label="holdout", **kw)
    bad = int((~np.isfinite(sm)).sum() + (~np.isfinite(sh)).sum())
    if bad:
        raise Inconclusive(f"{bad} of {len(sm) + len(sh)} membership scores are NaN or infinite")
    threshold = threshold_at_balanced(np.r_[np.ones(len(cal_m)), np.zeros(len(cal_h))], np.r_[sm[cal_m], sh[cal_h]])
    metrics = membership_metrics(sm[ev_m], sh[ev_h], threshold=threshold, n_boot=s.n_boot, seed=s.seed)
    if problem := metrics_problem(metrics):
        raise Inconclusive(problem)
    scores[attack.name] = np.r_[sm, sh]
    severity, rules = membership_severity(metrics)
    auc, tpr = metrics["auc"], metrics["tpr_at_fpr_0.01"]
    assert auc.ci is not None  # membership_metrics always gives intervals
    finding = (f"{attack.name} separates members from holdout with AUC {auc.value:.3f} "
               f"(95% CI {auc.ci[0]:.3f}-{auc.ci[1]:.3f}) and TPR {tpr.value:.3f} at 1% FPR "
               f"on {len(ev_m)} members / {len(ev_h)} holdout images not used for calibration.")
    fitted = {k: _jsonable(v) for k, v in vars(attack).items() if k.endswith("_") and not k.startswith("_")}
    return result_of(attack, "ok", metrics=metrics, severity=severity, finding=finding, details={
        "rules": rules, "threshold": threshold, "fitted": fitted,
        "roc": roc_points(sm[ev_m], sh[ev_h]),
        "histogram": histograms(sm[ev_m], sh[ev_h]),
        "split": {"calibration": [len(cal_m), len(cal_h)], "evaluation": [len(ev_m), len(ev_h)]},
        "epsilon": epsilon_details(sm, sh, cal_m, cal_h, ev_m, ev_h, settings=s),
        **conditioning_details(denoiser, members, prompt=s.prompt)})


def histograms(m: np.ndarray, h: np.ndarray, bins: int = 30) -> dict:
    edges = np.histogram_bin_edges(np.r_[m, h], bins=bins)
    return {"edges": edges.round(6).tolist(), "members": np.histogram(m, edges)[0].tolist(),
            "holdout": np.histogram(h, edges)[0].tolist()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray) and v.size <= 64:
        return v.tolist()
    if isinstance(v, (int, float, str, bool, list, dict, tuple)) or v is None:
        return v
    return repr(v)[:200]


def result_of(plugin, status: str, **kw) -> PluginResult:
    specs = {k: s.to_json() for k, s in plugin.specs().items()}
    if specs and kw.get("details") is not None:  # declared metric specs travel with the results: reports read them
        kw["details"] = {**kw["details"], "metric_specs": specs}
    return PluginResult(name=plugin.name, id=plugin.id, kind=plugin.kind, status=status,
                        threat_model=plugin.threat_model, queries_per_image=float(plugin.queries_per_image()),
                        params={k: _jsonable(v) for k, v in plugin.get_params().items()},
                        references=tuple(plugin.references), **kw)
