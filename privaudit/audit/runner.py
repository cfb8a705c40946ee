"""The audit flow: load target -> data checks -> run plugins -> collect results -> write run.

``audit`` runs selected plugins against any Denoiser (raw or protected) and returns the
results; ``scan`` wraps it with loading and writing, which is what ``privaudit scan`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from privaudit import __version__
from privaudit.api import AuditContext, AuditSettings, ReplicationDetector, capabilities_of, default_cache_dir  # noqa: F401 (AuditSettings, AuditContext, default_cache_dir: re-exported)
from privaudit.api.registry import Registry
from privaudit.audit.ensemble import ensemble_view
from privaudit.data.checks import run_checks
from privaudit.data.sets import ImageSet, load_checked
from privaudit.io.errors import Inconclusive, InputError, PluginError
from privaudit.io.exports import write_exports
from privaudit.io.files import csv_safe, publish_dir, write_json, write_text

# PARTIAL: an unfinished run's finished shards (privaudit.audit.engine): kept for --resume, gone once the run is written
from privaudit.io.ownership import PARTIAL, check_replaceable, folder_lock, remove_stale_siblings
from privaudit.io.results import SCHEMA_VERSION, PluginResult
from privaudit.io.verdict import (
    RULES_TEXT,
    evidence_problems,
    membership_severity,
    metrics_problem,
    overall,
    replication_severity,
)
from privaudit.model.denoiser import Denoiser, white_box_sha256
from privaudit.model.latent import conditioning_details, fit_inputs, image_shape_of
from privaudit.model.target import ModelInfo, load_target
from privaudit.stats.metrics import calibration_split, membership_metrics, roc_points, threshold_at_balanced

# capabilities every target is assumed to have for the default plugins; others pick extra detectors
_GENERIC_CAPS = {"sampling", "white_box"}


def target_detectors(registry: Registry, caps: set[str], *, chosen: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Detectors that need a capability beyond sampling/white-box (e.g. "text") which this target has."""
    return tuple(r.name for r in registry if r.kind == "detector" and r.name not in chosen
                 and set(r.cls.requires) - _GENERIC_CAPS and set(r.cls.requires) <= caps)


def score_set(attack, denoiser: Denoiser, images: ImageSet, *, batch_size: int, seed: int, label: str,
              prompt: str = "caption", progress: bool = False) -> np.ndarray:
    """Per-image scores of ``images``: in this process, or through the engine of the running audit
    (``privaudit.audit.engine``: sharded, resumable, possibly on Ray); the scores are the same either way."""
    from tqdm.auto import tqdm

    from privaudit.api.stages import active_stages
    from privaudit.audit.engine import score_batches

    run = active_stages()
    if run is not None:
        return run.score(attack, denoiser, images, batch_size=batch_size, seed=seed, label=label, prompt=prompt)
    with tqdm(total=len(images), desc=f"{attack.name}: scoring {label}", unit="img", disable=not progress,
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
    return _result(attack, "ok", metrics=metrics, severity=severity, finding=finding, details={
        "rules": rules, "threshold": threshold, "fitted": fitted,
        "roc": roc_points(sm[ev_m], sh[ev_h]),
        "histogram": _histograms(sm[ev_m], sh[ev_h]),
        "split": {"calibration": [len(cal_m), len(cal_h)], "evaluation": [len(ev_m), len(ev_h)]},
        "epsilon": epsilon_details(sm, sh, cal_m, cal_h, ev_m, ev_h, settings=s),
        **conditioning_details(denoiser, members, prompt=s.prompt)})


def epsilon_details(sm: np.ndarray, sh: np.ndarray, cal_m: np.ndarray, cal_h: np.ndarray, ev_m: np.ndarray,
                    ev_h: np.ndarray, *, settings: AuditSettings) -> dict:
    """eps_hat (privaudit.audit.epsilon): threshold from the calibration split, bound on the evaluation split."""
    from privaudit.audit.epsilon import empirical_epsilon

    return empirical_epsilon(sm[cal_m], sh[cal_h], sm[ev_m], sh[ev_h], delta=settings.epsilon_delta,
                             randomized=settings.randomized_membership).to_json()


def epsilon_summary(plugins: list[dict]) -> dict | None:
    """The largest eps_hat over the attacks that ran, with its label and caveat (None when no attack gave one)."""
    rows = [(p["details"]["epsilon"], p["name"]) for p in plugins
            if p.get("kind") == "attack" and p.get("status") == "ok" and isinstance(p.get("details", {}).get("epsilon"), dict)]
    if not rows:
        return None
    best, name = max(rows, key=lambda r: r[0]["value"])
    note = (f"largest of {len(rows)} attacks' bounds; each holds with {best['confidence']:.0%} confidence on its own, "
            "so the largest of several is slightly optimistic")
    return {**best, "attack": name, "by_attack": {n: e["value"] for e, n in rows}, "note": note}


def _histograms(m: np.ndarray, h: np.ndarray, bins: int = 30) -> dict:
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


def _result(plugin, status: str, **kw) -> PluginResult:
    specs = {k: s.to_json() for k, s in plugin.specs().items()}
    if specs and kw.get("details") is not None:  # declared metric specs travel with the results: reports read them
        kw["details"] = {**kw["details"], "metric_specs": specs}
    return PluginResult(name=plugin.name, id=plugin.id, kind=plugin.kind, status=status,
                        threat_model=plugin.threat_model, queries_per_image=float(plugin.queries_per_image()),
                        params={k: _jsonable(v) for k, v in plugin.get_params().items()},
                        references=tuple(plugin.references), **kw)


def audit(*, denoiser: Denoiser, members: ImageSet, holdout: ImageSet, registry: Registry,
          settings: AuditSettings, reference: ImageSet | None = None, base: Denoiser | None = None) -> dict:
    """Run checks, attacks and detectors; returns results (JSON-ready) and tables. ``base``: the model a
    fine-tune started from; every gray-box attack then also reports its base-calibrated variant."""
    caps = capabilities_of(denoiser)
    ctx = AuditContext(denoiser=denoiser, members=members, holdout=holdout, registry=registry,
                       settings=settings, reference=reference)
    checks = run_checks(members, holdout, seed=settings.seed, captions="text" in caps and settings.prompt == "caption")
    dups = next((c for c in checks if c.name == "exact_duplicates"), None)
    if dups is not None and dups.details["count"] >= len(holdout):  # nothing left to compare members against
        raise InputError(f"{holdout.source}: every holdout image is also a member ({members.source}); "
                         "the holdout must hold images the model never saw")
    scores = pd.DataFrame({"image_id": list(members.ids) + list(holdout.ids),
                           "set": ["member"] * len(members) + ["holdout"] * len(holdout)})
    cal_m, _ = calibration_split(len(members), fraction=settings.calibration_fraction, seed=settings.seed)
    cal_h, _ = calibration_split(len(holdout), fraction=settings.calibration_fraction, seed=settings.seed + 1)
    split = np.full(len(scores), "evaluation", dtype=object)
    split[cal_m] = "calibration"
    split[len(members) + cal_h] = "calibration"
    scores["split"] = split
    results: list[PluginResult] = []
    tables: dict[str, pd.DataFrame] = {}
    detectors = settings.detectors
    if settings.follow_target:
        detectors += target_detectors(registry, caps, chosen=detectors)
    plan = [(n, "attack") for n in settings.attacks] + [(n, "detector") for n in detectors]
    plugins = [(registry.create(n, kind=k, **settings.plugin_params.get(n, {})), k) for n, k in plan]
    for plugin, kind in plugins:
        missing = plugin.missing(caps)
        if missing:
            results.append(_result(plugin, "skipped", reason=f"target lacks {', '.join(missing)}"))
            continue
        start = time.perf_counter()
        try:
            if kind == "attack":
                res = run_attack(plugin, denoiser=denoiser, members=members, holdout=holdout,
                                 settings=settings, scores=scores, ctx=ctx)
            else:
                assert isinstance(plugin, ReplicationDetector)
                out = plugin.detect(ctx)
                if problem := metrics_problem(out.metrics):
                    raise Inconclusive(problem)
                severity, rules = _detector_severity(plugin, out)
                res = _result(plugin, "ok", metrics=out.metrics, severity=severity, finding=out.finding,
                              details={"rules": rules, **out.details})
                if out.table is not None:
                    tables[plugin.name] = out.table
        except (InputError, PluginError):
            raise
        except Inconclusive as e:  # unusable evidence: this plugin cannot say "low"
            res = _result(plugin, "ok", severity="info", finding=f"{plugin.name} could not judge this model: {e}",
                          details={"inconclusive": str(e)})
        except Exception as e:  # one broken plugin must not lose the others' results
            res = _result(plugin, "error", reason=f"{e.__class__.__name__}: {e}",
                          details={"traceback": traceback.format_exc(limit=8)})
        results.append(PluginResult(**{**res.__dict__, "seconds": round(time.perf_counter() - start, 3)}))
        if base is not None and kind == "attack":
            start = time.perf_counter()
            try:
                cal = base_calibrated(plugin, res, denoiser=denoiser, base=base, members=members, holdout=holdout,
                                      settings=settings, scores=scores)
            except (InputError, PluginError):
                raise
            except Exception as e:  # the raw result stands; the calibrated variant says what broke
                cal = dataclasses.replace(_result(plugin, "error", reason=f"{e.__class__.__name__}: {e}",
                                                  details={"traceback": traceback.format_exc(limit=8)}),
                                          name=plugin.name + CALIBRATED, id=plugin.id + "+base")
            if cal is not None:
                results.append(dataclasses.replace(cal, seconds=round(time.perf_counter() - start, 3)))
    extra = {"base_calibration": calibration_summary([r.to_json() for r in results])} if base is not None else {}
    return {**extra, "checks": [c.to_json() for c in checks], "plugins": [r.to_json() for r in results],
            "ensemble": ensemble_view([r.to_json() for r in results]),
            "epsilon": epsilon_summary([r.to_json() for r in results]),
            "verdict": verdict(results, checks), "scores": scores, "tables": tables,
            "sampling_seconds": ctx.sample_seconds}


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
        res = _result(attack, "ok", severity="info", finding=f"{name} could not judge this model: {e}",
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
    res = _result(attack, "ok", metrics=metrics, severity=severity, finding=finding, details={
        "rules": rules, "threshold": threshold, "calibrated_by": "base", "raw_attack": attack.name,
        "fitted": {"beta": round(beta, 6)},
        "base_only": {k: m.to_json() for k, m in base_only.items()},
        "roc": roc_points(sm[ev_m], sh[ev_h]), "histogram": _histograms(sm[ev_m], sh[ev_h]),
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


def _detector_severity(plugin: ReplicationDetector, out) -> tuple[str, list[str]]:
    """The rule set the detector declares (``severity_rules``) applied to its metrics."""
    if plugin.severity_rules == "membership":  # e.g. memorised-prompt detection (AUC)
        return membership_severity(out.metrics)
    if plugin.severity_rules == "none":
        return "info", []
    return replication_severity(out.metrics, false_positive_rate=float(out.details.get("false_positive_rate", 0.0)))


def verdict(results: list[PluginResult], checks) -> dict:
    """The worst severity; failed plugins and unusable or missing evidence make it inconclusive
    (``privaudit.io.verdict.overall``), each listed as a reason."""
    ok = [r for r in results if r.status == "ok"]
    problems = evidence_problems([r.to_json() for r in results])
    level = overall([r.severity for r in ok], problems)
    reasons = [f"{r.name}: {rule}" for r in ok for rule in r.details.get("rules", [])] + problems
    warnings = [c.message for c in checks if not c.ok]
    return {"level": level, "reasons": reasons, "warnings": warnings, "rules": RULES_TEXT}


def manifest(*, argv: list[str] | None, device: torch.device, settings: AuditSettings, info: ModelInfo | None,
             data: dict, registry: Registry, seconds: float) -> dict:
    import diffusers
    import faiss
    import sklearn

    used = set(settings.attacks) | set(settings.detectors)
    return {
        "argv": list(argv) if argv is not None else sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"privaudit": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "faiss": faiss.__version__, "pandas": pd.__version__},
        "platform": platform.platform(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "seed": settings.seed, "calibration_fraction": settings.calibration_fraction, "n_boot": settings.n_boot,
        "model": None if info is None else info.__dict__,
        "data": data,
        "plugins": {r.name: r.origin for r in registry if r.name in used},
        "seconds": round(seconds, 2),
    }


def check_out(out: str | Path, *, resume: bool = False) -> Path:
    """``--out`` must be a folder we may write: fails (exit 2) before any work, naming the path."""
    out = Path(out)
    if out.name in ("", ".", ".."):  # the stage, lock and swap are named after it and sit beside it
        out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is a file, not a folder")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: is a file; --out {out} cannot be created under it")
    # replaced only when empty or provably privaudit's (privaudit.io.ownership): exit 2 naming the first foreign file
    check_replaceable(out, resume=resume)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{out}: cannot write the run folder here ({e.strerror or e.__class__.__name__})") from None
    return out


@contextmanager
def run_folder(out: str | Path, *, resume: bool = False) -> Iterator[Path]:
    """Check ``out`` and hold a lock on it for the whole run: a second run into it fails with exit 2.
    Hidden siblings a killed publish left (``.OUT.*.partial``, ``.OUT.*.old``) are removed when privaudit
    provably wrote them, one line each on stderr."""
    out = check_out(out, resume=resume)
    with folder_lock(out, wait=False, busy=f"{out}: another privaudit run is writing to this folder"):
        remove_stale_siblings(out)
        yield out


def write_run(out: str | Path, results: dict, *, baseline: dict | None = None, redact: str = "thumbnails") -> Path:
    """Write results.json, scores.csv, per-detector tables and report.html into a fresh hidden folder
    beside ``out`` and publish it with one rename: ``out`` holds one whole run, never a mix of two
    (an unfinished run's shards in ``out/.partial`` go with the folder it replaces)."""
    from privaudit.reports import render_html
    from privaudit.reports.images import redact_images

    out = check_out(out)
    body = {k: v for k, v in results.items() if k not in ("scores", "tables")}
    body["outputs"] = {"scores": "scores.csv", **{k: f"{k}.csv" for k in results.get("tables", {})}}
    html = render_html(body, baseline=baseline, redact=redact)  # render first: a failure writes nothing
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        write_text(stage / "scores.csv", csv_safe(results["scores"]).to_csv(index=False))
        for name, table in results.get("tables", {}).items():
            write_text(stage / f"{name}.csv", csv_safe(table).to_csv(index=False))
        write_json(stage / "results.json", redact_images(body, mode=redact))  # no more training images than the report
        write_exports(stage, body)  # summary.json, junit.xml: for CI
        write_text(stage / "report.html", html)
        publish_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def check_plan(registry: Registry, settings: AuditSettings) -> None:
    """Every selected plugin exists and every ``--param`` names a plugin and a valid value: exit 2
    before anything is loaded."""
    from privaudit.api.params import validate_params

    for n in settings.attacks:
        registry.get(n, kind="attack")
    for n in settings.detectors:
        registry.get(n, kind="detector")
    for n, params in settings.plugin_params.items():
        if n not in registry:
            raise PluginError(f"--param {n}.{next(iter(params), '?')}: no plugin named {n!r}; installed: "
                              f"{', '.join(r.name for r in registry)}")
        validate_params(registry.get(n).cls, params)
    if settings.batch_size < 1:
        raise InputError(f"--batch-size {settings.batch_size}: must be at least 1")
    if settings.n_boot < 1:
        raise InputError(f"--bootstrap {settings.n_boot}: must be at least 1")
    if not 0 <= settings.epsilon_delta < 1:
        raise InputError(f"--delta {settings.epsilon_delta}: must be at least 0 and below 1")
    if settings.engine != "local":  # start or join the cluster now: a bad address fails before any work
        from privaudit.audit.engines import get_engine

        get_engine(settings.engine, address=settings.ray_address, workers=settings.workers)


def check_distinct_sets(members: str | Path, holdout: str | Path) -> None:
    """Members and holdout given as the same path would make every attack look like chance."""
    if Path(members).exists() and Path(members).resolve() == Path(holdout).resolve():
        raise InputError(f"{holdout}: --holdout is the same as --members; the holdout must hold images "
                         "the model never saw")


def load_data(members: str | Path, holdout: str | Path, *, shape: tuple[int, int, int]) -> tuple[ImageSet, ImageSet]:
    check_distinct_sets(members, holdout)
    c, h, w = shape
    m = load_checked(members, name="members", channels=c, size=(h, w))  # every image read now: a bad
    ho = load_checked(holdout, name="holdout", channels=c, size=(h, w))  # file fails before any work
    for s in (m, ho):
        if len(s) < 4:  # each set is split into calibration and evaluation halves
            raise InputError(f"{s.source}: {s.name} holds {len(s)} image(s); at least 4 are needed")
    return m, ho


def scan(*, model_dir: str | Path, members: str | Path, holdout: str | Path, out: str | Path,
         settings: AuditSettings, device: str = "auto", allow_pickle: bool = False,
         plugins_dir: str | Path | None = None, reference: str | Path | None = None,
         argv: list[str] | None = None, redact: str = "thumbnails", dtype: str = "auto",
         lora: str | Path | None = None, base: str | Path | None = None) -> dict:
    """``privaudit scan``: returns the results written to ``out``. ``lora``: an adapter loaded onto
    ``model_dir`` (the base); ``base``: the base model of a full fine-tune ``model_dir``."""
    with run_folder(out, resume=settings.resume):
        return _scan(model_dir=model_dir, members=members, holdout=holdout, out=out, settings=settings, device=device,
                     allow_pickle=allow_pickle, plugins_dir=plugins_dir, reference=reference, argv=argv, redact=redact,
                     dtype=dtype, lora=lora, base=base)


def load_scan_target(model_dir: str | Path, *, lora: str | Path | None, base: str | Path | None, device: str,
                     allow_pickle: bool, dtype: str) -> tuple[Denoiser, ModelInfo, Denoiser | None]:
    """(audited denoiser, its info, the base denoiser or None): a plain model, a LoRA adapter on
    ``model_dir``, or a full fine-tune ``model_dir`` with its ``base``. The base is loaded separately
    (a second copy of the networks), so its answers never pass through the adapter."""
    from privaudit.model.target import load_lora_target

    if lora is not None and base is not None:
        raise InputError(f"{base}: --base is for a full fine-tune; with --lora the base is MODEL_DIR ({model_dir})")
    if lora is not None:
        den, info, _ = load_lora_target(model_dir, lora, device=device, allow_pickle=allow_pickle, dtype=dtype)
        base_den, _, _ = load_target(model_dir, device=device, allow_pickle=allow_pickle, dtype=dtype)
        return den, dataclasses.replace(info, base=info.path), base_den
    den, info, _ = load_target(model_dir, device=device, allow_pickle=allow_pickle, dtype=dtype)
    if base is None:
        return den, info, None
    if Path(base).exists() and Path(base).resolve() == Path(model_dir).resolve():
        raise InputError(f"{base}: --base is MODEL_DIR itself; it must be the model the fine-tune started from")
    base_den, binfo, _ = load_target(base, device=device, allow_pickle=allow_pickle, dtype=dtype)
    for field in ("resolution", "channels", "num_train_timesteps", "latent_shape", "text_conditional", "prediction_type"):
        if getattr(binfo, field) != getattr(info, field):
            raise InputError(f"{base}: --base does not match the audited model ({field}: {getattr(binfo, field)} "
                             f"vs {getattr(info, field)}); it must be the model the fine-tune started from")
    return den, dataclasses.replace(info, base=binfo.path), base_den


def _scan(*, model_dir, members, holdout, out, settings: AuditSettings, device, allow_pickle, plugins_dir, reference,
          argv, redact, dtype, lora=None, base=None) -> dict:
    start = time.perf_counter()
    registry = Registry.build(plugins_dir=plugins_dir)
    check_plan(registry, settings)
    denoiser, info, base_den = load_scan_target(model_dir, lora=lora, base=base, device=device,
                                                allow_pickle=allow_pickle, dtype=dtype)
    mem, hold = load_data(members, holdout, shape=image_shape_of(denoiser))
    ref = load_checked(reference, name="reference", channels=info.channels, size=info.resolution) if reference else None
    data = data_fingerprints(mem, hold, ref)
    with engine_session(Path(out), settings=settings) as run:
        bind_run(run, Path(out), settings=settings, denoiser=denoiser, data=data, registry=registry,
                 extra={"base": None if base_den is None else base_den.fingerprint})
        res = audit(denoiser=denoiser, members=mem, holdout=hold, registry=registry, settings=settings, reference=ref,
                    base=base_den)
    if "base_calibration" in res:
        res["base_calibration"]["base"] = info.base
    # the manifest lists the detectors that actually ran (the target's capabilities may have added some)
    ran = dataclasses.replace(settings, detectors=tuple(p["name"] for p in res["plugins"] if p["kind"] == "detector"))
    results = scan_results(res, info=info, data=data, settings=ran, registry=registry, argv=argv,
                           device=denoiser.device, seconds=time.perf_counter() - start)
    results["manifest"]["engine"] = run.describe()
    write_run(out, results, redact=redact)
    return results


# settings that change results (the engine, workers, progress bars and caches do not)
_RESULT_SETTINGS = ("attacks", "detectors", "plugin_params", "seed", "batch_size", "calibration_fraction", "n_boot",
                    "prompt", "follow_target", "epsilon_delta", "randomized_membership")


@contextmanager
def engine_session(out: Path, *, settings: AuditSettings) -> Iterator[Any]:
    """The run's engine (``settings.engine``, ``privaudit.audit.engine``) for everything inside; ``bind_run``
    then gives it the run folder's shard store. Fails without a shard written: no trace of the run."""
    from privaudit.audit.engines import session

    out = Path(out)
    existed = out.exists()
    cache = Path(settings.cache_dir or default_cache_dir())
    try:
        with session(engine=settings.engine, address=settings.ray_address, workers=settings.workers,
                     sample_root=cache / "samples" / "shards", progress=settings.progress) as run:
            yield run
    except BaseException:
        if run_store_empty(out):  # nothing worth resuming
            remove_partial(out)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def remove_partial(out: Path) -> None:
    """Remove the run's shard folder when privaudit provably wrote all of it (else it stays, untouched)."""
    from privaudit.io.ownership import partial_problem

    if partial_problem(Path(out) / PARTIAL) is None:
        shutil.rmtree(Path(out) / PARTIAL, ignore_errors=True)


def run_store_empty(out: Path) -> bool:
    return not any((Path(out) / PARTIAL / "shards").glob("*/*/*.npz"))


def bind_run(run: Any, out: Path, *, settings: AuditSettings, denoiser: Denoiser, data: dict, registry: Registry,
             extra: dict | None = None) -> None:
    """Give the session the shard store of ``out``, tagged with a key of everything that determines the
    results (model, data, result settings, plugins), so ``--resume`` reuses only shards of this run."""
    from privaudit.audit.engine import SHARD_BATCHES, open_store, run_key

    description = {"privaudit": __version__, "model": denoiser.fingerprint, "data": data,
                   "settings": {k: getattr(settings, k) for k in _RESULT_SETTINGS},
                   "plugins": {r.name: r.origin for r in registry}, "shard_batches": SHARD_BATCHES, **(extra or {})}
    run.store = open_store(Path(out), run_key=run_key(description), resume=settings.resume, description=description)


def data_fingerprints(members: ImageSet, holdout: ImageSet, reference: ImageSet | None) -> dict:
    return {"members": members.fingerprint(), "holdout": holdout.fingerprint(),
            **({"reference": reference.fingerprint()} if reference is not None else {})}


def scan_results(res: dict, *, info: ModelInfo, data: dict, settings: AuditSettings, registry: Registry,
                 argv: list[str] | None, device: torch.device, seconds: float) -> dict:
    """An audit's results as a scan run: schema version, target, the results, manifest and data provenance."""
    body = {"schema_version": SCHEMA_VERSION, "kind": "scan", "target": {**asdict(info), "schedule": info.scheduler_class},
            **res}
    body["manifest"] = manifest(argv=argv, device=device, settings=settings, info=info, data=data, registry=registry,
                                seconds=seconds)
    body["data"] = data
    return body
