"""The audit flow: load target -> data checks -> run plugins -> collect results -> write run.

``audit`` runs selected plugins against any Denoiser (raw or protected) and returns the
results; ``scan`` wraps it with loading and writing, which is what ``privaudit scan`` does.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from privaudit.api import AuditContext, AuditSettings, ReplicationDetector, capabilities_of
from privaudit.api.registry import Registry
from privaudit.audit.calibration import CALIBRATED, base_calibrated, calibration_summary
from privaudit.audit.ensemble import ensemble_view
from privaudit.audit.epsilon import epsilon_summary
from privaudit.audit.risk import Risk, per_image_risk
from privaudit.audit.runs import bind_run, data_fingerprints, engine_session, manifest, run_folder, write_run
from privaudit.audit.scoring import result_of, run_attack
from privaudit.data.checks import run_checks
from privaudit.data.sets import ImageSet, load_checked
from privaudit.io.errors import Inconclusive, InputError, PluginError
from privaudit.io.images import png_data_uri

# PARTIAL: an unfinished run's finished shards (privaudit.audit.engine): kept for --resume, gone once the run is written
from privaudit.io.results import SCHEMA_VERSION, PluginResult
from privaudit.io.verdict import (
    RULES_TEXT,
    evidence_problems,
    membership_severity,
    metrics_problem,
    overall,
    per_image_severity,
    replication_severity,
)
from privaudit.model.denoiser import Denoiser
from privaudit.model.latent import image_shape_of
from privaudit.model.target import ModelInfo, load_target
from privaudit.stats.metrics import calibration_split

# capabilities every target is assumed to have for the default plugins; others pick extra detectors
_GENERIC_CAPS = {"sampling", "white_box"}


def target_detectors(registry: Registry, caps: set[str], *, chosen: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Detectors that need a capability beyond sampling/white-box (e.g. "text") which this target has
    (those that declare ``follows_target``)."""
    return tuple(r.name for r in registry if r.kind == "detector" and r.name not in chosen
                 and getattr(r.cls, "follows_target", True)
                 and set(r.cls.requires) - _GENERIC_CAPS and set(r.cls.requires) <= caps)


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
    member_tables: dict[str, pd.DataFrame] = {}
    detectors = settings.detectors
    if settings.follow_target:
        detectors += target_detectors(registry, caps, chosen=detectors)
    plan = [(n, "attack") for n in settings.attacks] + [(n, "detector") for n in detectors]
    plugins = [(registry.create(n, kind=k, **settings.plugin_params.get(n, {})), k) for n, k in plan]
    for plugin, kind in plugins:
        missing = plugin.missing(caps)
        if missing:
            results.append(result_of(plugin, "skipped", reason=f"target lacks {', '.join(missing)}"))
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
                res = result_of(plugin, "ok", metrics=out.metrics, severity=severity, finding=out.finding,
                              details={"rules": rules, **out.details})
                if out.table is not None:
                    tables[plugin.name] = out.table
                if out.members is not None:
                    member_tables[plugin.name] = out.members
        except (InputError, PluginError):
            raise
        except Inconclusive as e:  # unusable evidence: this plugin cannot say "low"
            res = result_of(plugin, "ok", severity="info", finding=f"{plugin.name} could not judge this model: {e}",
                          details={"inconclusive": str(e)})
        except Exception as e:  # one broken plugin must not lose the others' results
            res = result_of(plugin, "error", reason=f"{e.__class__.__name__}: {e}",
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
                cal = dataclasses.replace(result_of(plugin, "error", reason=f"{e.__class__.__name__}: {e}",
                                                  details={"traceback": traceback.format_exc(limit=8)}),
                                          name=plugin.name + CALIBRATED, id=plugin.id + "+base")
            if cal is not None:
                results.append(dataclasses.replace(cal, seconds=round(time.perf_counter() - start, 3)))
    extra = {"base_calibration": calibration_summary([r.to_json() for r in results])} if base is not None else {}
    ensemble = ensemble_view([r.to_json() for r in results])
    risk = at_risk(members, scores, results, member_tables, ensemble)
    if risk is not None:
        tables["at_risk"] = risk.table
    return {**extra, "checks": [c.to_json() for c in checks], "plugins": [r.to_json() for r in results],
            "ensemble": ensemble, "epsilon": epsilon_summary([r.to_json() for r in results]),
            "at_risk": None if risk is None else risk.summary,
            "verdict": verdict(results, checks, at_risk=None if risk is None else risk.summary),
            "scores": scores, "tables": tables, "sampling_seconds": ctx.sample_seconds}


def at_risk(members: ImageSet, scores: pd.DataFrame, results: list[PluginResult],
            member_tables: dict[str, pd.DataFrame], ensemble: dict) -> Risk | None:
    """The per-image risk table (``privaudit.audit.risk``) from the attacks' scores and the detectors'
    per-member tables, the top rows with member thumbnails; None when no plugin gave per-image evidence."""
    attacks = [r.name for r in results if r.kind == "attack" and r.status == "ok" and r.name in scores]
    if not attacks and not member_tables:
        return None
    risk = per_image_risk(member_ids=list(members.ids), scores=scores, attacks=attacks,
                          member_tables=member_tables, ensemble=ensemble)
    pos = {m: i for i, m in enumerate(members.ids)}
    top = risk.summary["top"]
    if top:
        for row, img in zip(top, members.uint8([pos[r["member_id"]] for r in top])):
            row["member_png"] = png_data_uri(img, scale=max(1, 64 // max(img.shape[-2:])))
    return risk


def _detector_severity(plugin: ReplicationDetector, out) -> tuple[str, list[str]]:
    """The rule set the detector declares (``severity_rules``) applied to its metrics."""
    if plugin.severity_rules == "membership":  # e.g. memorised-prompt detection (AUC)
        return membership_severity(out.metrics)
    if plugin.severity_rules == "none":
        return "info", []
    return replication_severity(out.metrics, false_positive_rate=float(out.details.get("false_positive_rate", 0.0)))


def verdict(results: list[PluginResult], checks, *, at_risk: dict | None = None) -> dict:
    """The worst severity; failed plugins and unusable or missing evidence make it inconclusive
    (``privaudit.io.verdict.overall``), each listed as a reason. ``at_risk`` (the per-image summary): a
    member reproduced beyond chance raises the level to at least high, whatever the averages say."""
    ok = [r for r in results if r.status == "ok"]
    problems = evidence_problems([r.to_json() for r in results])
    per_image, image_rules = per_image_severity(at_risk)
    level = overall([r.severity for r in ok] + [per_image], problems)
    reasons = ([f"{r.name}: {rule}" for r in ok for rule in r.details.get("rules", [])]
               + [f"per image: {rule}" for rule in image_rules] + problems)
    warnings = [c.message for c in checks if not c.ok]
    return {"level": level, "reasons": reasons, "warnings": warnings, "rules": RULES_TEXT}


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
    ``model_dir``, or a full fine-tune ``model_dir`` with its ``base``. A full fine-tune's base is loaded
    separately; a LoRA's base is a view of the same networks with the adapter layers switched off
    (``adapter_free_view``), so its answers never pass through the adapter and no second copy is held."""
    from privaudit.model.target import adapter_free_view, load_lora_target

    if lora is not None and base is not None:
        raise InputError(f"{base}: --base is for a full fine-tune; with --lora the base is MODEL_DIR ({model_dir})")
    if lora is not None:
        den, info, _ = load_lora_target(model_dir, lora, device=device, allow_pickle=allow_pickle, dtype=dtype)
        # the base is the same networks with the adapter switched off: its weights are not loaded twice
        return den, dataclasses.replace(info, base=info.path), adapter_free_view(den)
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


def scan_results(res: dict, *, info: ModelInfo, data: dict, settings: AuditSettings, registry: Registry,
                 argv: list[str] | None, device: torch.device, seconds: float) -> dict:
    """An audit's results as a scan run: schema version, target, the results, manifest and data provenance."""
    body = {"schema_version": SCHEMA_VERSION, "kind": "scan", "target": {**asdict(info), "schedule": info.scheduler_class},
            **res}
    body["manifest"] = manifest(argv=argv, device=device, settings=settings, info=info, data=data, registry=registry,
                                seconds=seconds)
    body["data"] = data
    return body
