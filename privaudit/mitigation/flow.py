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
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from privaudit.api import AuditSettings, Mitigation, MitigationContext, MitigationOutput, default_cache_dir
from privaudit.api.registry import Registry
from privaudit.audit.runner import (
    audit,
    bind_run,
    check_plan,
    data_fingerprints,
    engine_session,
    load_data,
    manifest,
    scan_results,
    write_run,
)
from privaudit.audit.runs import remove_partial
from privaudit.data.sets import ImageSet, load_checked
from privaudit.io.errors import InputError
from privaudit.io.exports import write_exports
from privaudit.io.files import write_json, write_text
from privaudit.io.ownership import clear_owned, write_manifest
from privaudit.io.results import SCHEMA_VERSION
from privaudit.mitigation.frontier import (
    TARGETS,
    family_summary,
    findings_of,
    fmt_value,
    matched_quality,
    meets_targets,
    recommend,
)
from privaudit.mitigation.summary import same_weights, summarize, white_box_rows
from privaudit.mitigation.verdict import gate_leak, mitigation_verdict
from privaudit.model.denoiser import Denoiser, ProvidesDenoiser
from privaudit.model.latent import image_shape_of
from privaudit.model.target import load_target

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

    white = white_box_rows(before, after)
    findings = findings_of(method, controls, sweep_rows, matched, white)
    for f in families:
        findings.append(f"sweep family {f['family']}: {f['meet_copy_target']} of {f['settings']} settings meet the copy "
                        f"target; its pick {f['pick']}: copy fraction {fmt_value(f['pick_copy_fraction'])}, "
                        f"{f['quality_metric'] or 'quality'} {fmt_value(f['pick_quality'])}, black-box AUC (two-sided) "
                        f"{fmt_value(f['pick_black_box_auc_two_sided'])}, gate leak {fmt_value(f['pick_gate_leak'])}; lowest gate "
                        f"leak at the copy target {fmt_value(f['lowest_gate_leak_at_copy_target'])}.")
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
        "weights": same_weights(before, after),
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
