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
   the privacy/quality frontier and the decision (``frontier.recommend``: the cheapest setting (ratios within ``COST_TOLERANCE`` tie), by
   measured sampling-time ratio, that meets every ``--target``; else *none*, never a silent pick,
   with ``frontier.misses``: per family, the bound that stops it and by how much), and, where the
   sweep has a ``placebo`` family, the two families' Pareto fronts compared at matched quality
   (``matched_quality``). A target that was never measured (no quality detector) is never met.
   Several methods (``--method a,b`` or ``all``): each runs 1-5 (sweep implied) with the same
   seeds, audits and controls into ``DIR/<method>/``, sharing ``DIR/before``; every method's
   settings are judged on one frontier (``_frontier_results``), the recommended setting's method
   fills the top-level block (else the first method's), and ``frontier`` holds the methods table,
   the chart's points, the recommendation and the misses. The audits add every installed
   ``adaptive`` attack (an attacker who knows a mitigation is there) unless ``adaptive=False``.

6. **verdict** (``mitigation_verdict``), judged by threat model: every membership and replication
   number the report shows is put through the rules (the after-audit's rules, the same rules on
   each attack's reversed score, the headline two-sided AUC per threat model and the copy
   fraction). The protected model's level is the black-box one (black-box attacks and replication
   detectors: what a served model faces) when a black-box attack ran, else the worst of all;
   ``if_weights_leak`` is the worst of all, gray-box and white-box included, labelled as such.
   ``gate_leak``: the protected model's two-sided gray-box AUC (the guard's gate seen from outside).
   ``caveats`` (``verdict.caveats_of``) stand beside the level in the ``headline``: a quality that
   collapsed (interval below half the raw model's) or misses its target, a quality never measured
   when a target asks for it, and every missed target: a calm level never hides them.

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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from privaudit.api import (
    AuditSettings,
    Mitigation,
    MitigationContext,
    MitigationOutput,
    capabilities_of,
    default_cache_dir,
)
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
from privaudit.io.progress import announce
from privaudit.io.results import SCHEMA_VERSION
from privaudit.mitigation.frontier import (
    DEFAULT,
    decision_text,
    family_summary,
    findings_of,
    fmt_value,
    matched_quality,
    meets_targets,
    misses,
    recommend,
)
from privaudit.mitigation.summary import (
    at_risk_ids,
    at_risk_metrics,
    privacy_key,
    quality_ratio,
    same_weights,
    summarize,
    white_box_rows,
)
from privaudit.mitigation.targets import parse_targets
from privaudit.mitigation.verdict import gate_leak, mitigation_verdict
from privaudit.model.denoiser import Denoiser, ProvidesDenoiser
from privaudit.model.latent import image_shape_of, latent_of
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
                  batch_size: int, prompts: list[str] | None = None) -> tuple[torch.Tensor, float]:
    """Draw ``n`` samples (uncached, through the denoiser's ``draw_samples``) and time it. With ``prompts``
    (a text model), ``n`` prompted generations instead (DDIM, guidance 7.5): a text mitigation acts on
    prompts, so its cost shows only there."""
    from privaudit.model.latent import generate

    denoiser.reset_counts()
    if denoiser.device.type == "cuda":
        torch.cuda.synchronize(denoiser.device)
    start = time.perf_counter()
    if prompts:
        x = generate(denoiser, [prompts[i % len(prompts)] for i in range(n)], steps=steps, guidance_scale=7.5,
                     seed=seed, batch_size=batch_size)
    else:
        x = denoiser.draw_samples(n=n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size, progress=False)
    if denoiser.device.type == "cuda":
        torch.cuda.synchronize(denoiser.device)
    return x, time.perf_counter() - start


# ---------------------------------------------------------------------------- the verdict


# ---------------------------------------------------------------------------- the flow


class _Auditor:
    """Audits variants with one set of data and settings; collects comparable rows. The first row
    (the unprotected model) is the base of every row's sampling-time and quality ratio."""

    def __init__(self, *, members, holdout, reference, registry, settings, timing: dict, seed: int, targets):
        self.members, self.holdout, self.reference = members, holdout, reference
        self.registry, self.settings, self.timing, self.seed = registry, settings, timing, seed
        self.targets = targets
        self.base_seconds: float | None = None
        self.base_res: dict | None = None
        self.at_risk: list[str] = []
        # text models are timed on prompted generations: member and holdout captions, alternating
        caps = [c for pair in zip(members.captions, holdout.captions) for c in pair]
        self.prompts: list[str] | None = caps or None

    def audit(self, denoiser) -> dict:
        return audit(denoiser=denoiser, members=self.members, holdout=self.holdout, registry=self.registry,
                     settings=self.settings, reference=self.reference)

    def row(self, *, name: str, description: str, family: str, params: dict, res: dict, denoiser,
            probe=None, details=None, role: str = "control", method: str | None = None) -> dict:
        n = min(64, self.timing["n"])
        prompts = self.prompts if latent_of(denoiser) is not None else None
        x, secs = timed_samples(denoiser, n=n, steps=self.timing["steps"], sampler=self.timing["sampler"],
                                seed=self.seed, batch_size=self.settings.batch_size * 2, prompts=prompts)
        metrics = summarize(res)
        if probe is not None:
            metrics.update(probe(x))
        if self.base_seconds is None:
            self.base_seconds, self.base_res = secs, res
            self.at_risk = at_risk_ids(res)  # every variant is also judged on the members at risk before
        metrics.update(at_risk_metrics(res, self.at_risk))
        quality = quality_ratio(res, self.base_res) if self.base_res is not None else None
        if quality is not None:
            metrics["quality_ratio"] = quality["ratio"]
        det = details() if callable(details) else dict(details or {})
        ratio = round(secs / max(self.base_seconds, 1e-9), 3)
        # each way of serving the model judged as the protected one is: black-box headline, weights-leak line
        v = mitigation_verdict(before={"verdict": {"level": "n/a"}}, after_res=res,
                               row={"metrics": metrics, "quality": quality, "sampling_ratio": ratio},
                               settings=self.settings, targets=self.targets)
        return {"name": name, "description": description, "family": family, "role": role, "params": params,
                "method": method, "metrics": metrics, "quality": quality,
                "sampling_seconds": round(secs, 3), "sampling_ratio": ratio,
                "timing": {"n": n, "steps": self.timing["steps"], "sampler": self.timing["sampler"],
                           "prompted": prompts is not None},
                "verdict": v["level"], "verdict_basis": v["basis"], "caveats": v["caveats"],
                "verdict_if_weights_leak": v["if_weights_leak"]["level"], "details": det}


def resolve_methods(registry: Registry, method: str) -> list[str]:
    """``--method``: one mitigation, several joined by commas, or ``all`` (every installed one, in the
    registry's order); each checked to be an installed mitigation before any work."""
    if str(method).strip() == "all":
        names = [r.name for r in registry if r.kind == "mitigation"]
        if not names:
            raise InputError("--method all: no mitigation plugin is installed")
        return names
    names = [m.strip() for m in str(method).split(",") if m.strip()]
    if not names:
        raise InputError(f"--method {method!r}: name a mitigation, several joined by commas, or all")
    if len(set(names)) != len(names):
        raise InputError(f"--method {method!r}: a method is named twice")
    for m in names:
        registry.get(m, kind="mitigation")
    return names


def fitting_methods(plugins: dict[str, Mitigation], *, model_dir, kind: str, every: bool) -> dict[str, Mitigation]:
    """The methods that protect this kind of model ("pixel" or "text", ``Mitigation.models``): with ``all`` the
    others are left out; a method named explicitly that does not fit is a one-line error."""
    fit = {m: p for m, p in plugins.items() if kind in type(p).models}
    wrong = [m for m in plugins if m not in fit]
    if wrong and not every:
        raise InputError(f"{model_dir}: --method {wrong[0]} protects {' and '.join(type(plugins[wrong[0]]).models)} "
                         f"models; this one is a {kind} model")
    if not fit:
        raise InputError(f"{model_dir}: no installed mitigation protects {kind} models")
    return fit


def adaptive_attacks(registry: Registry, settings: AuditSettings, *, caps: set[str] | None = None) -> tuple[str, ...]:
    """The selected attacks plus every installed adaptive one (``MembershipAttack.adaptive``: what an attacker
    who knows a sampling-time mitigation runs) that the target can answer (``caps``: its capabilities; a text
    attack is not added for a pixel model), so every audit of the run, before and after, has them."""
    extra = [r.name for r in registry if r.kind == "attack" and getattr(r.cls, "adaptive", False)
             and (caps is None or set(r.cls.requires) <= caps)]
    return tuple(dict.fromkeys((*settings.attacks, *extra)))


def mitigate(*, model_dir: str | Path, members: str | Path, holdout: str | Path, out: str | Path, method: str,
             params: dict | None = None, settings: AuditSettings, device: str = "auto",
             reference: str | Path | None = None, sweep: bool = False, allow_pickle: bool = False,
             plugins_dir: str | Path | None = None, argv: list[str] | None = None, redact: str = "thumbnails",
             log: Callable[[str], None] | None = None, dtype: str = "auto", targets: str | None = None,
             adaptive: bool = True) -> dict:
    """``privaudit mitigate``: returns the mitigation results written to ``out``. Its audits and sampling
    run on the chosen engine, sharded and resumable (``--resume``); the guard trains in this process.
    ``out`` is written in place: a previous run there (provably privaudit's, else exit 2) is cleared first,
    and the ownership manifest is written last.

    ``method``: one mitigation plugin, several joined by commas, or ``all``: with more than one, each
    runs its sweep with the same seeds, sample counts and controls, into ``out/<method>/``, and the run
    recommends the cheapest setting that meets ``targets`` (``privaudit.mitigation.targets``; default
    ``DEFAULT_TARGETS``), or says that none does. ``params`` (one method only) are its parameters; with
    several, each method's come from ``settings.plugin_params`` (``--param METHOD.key=value``).
    ``adaptive``: add every installed adaptive attack to every audit (``adaptive_attacks``)."""
    tgt = parse_targets(targets) if targets is not None else DEFAULT
    if not settings.resume:
        clear_owned(out)
    with engine_session(Path(out), settings=settings) as run:
        results = _mitigate(run, model_dir=model_dir, members=members, holdout=holdout, out=out, method=method,
                            params=params, settings=settings, device=device, reference=reference, sweep=sweep,
                            allow_pickle=allow_pickle, plugins_dir=plugins_dir, argv=argv, redact=redact, log=log,
                            dtype=dtype, targets=tgt, adaptive=adaptive)
    remove_partial(Path(out))  # finished: its shards are no longer needed
    write_manifest(Path(out))  # last: the whole folder is now provably privaudit's
    return results


def _mitigate(run, *, model_dir: str | Path, members: str | Path, holdout: str | Path, out: str | Path, method: str,
              params: dict | None, settings: AuditSettings, device: str, reference: str | Path | None, sweep: bool,
              allow_pickle: bool, plugins_dir: str | Path | None, argv: list[str] | None, redact: str,
              log: Callable[[str], None] | None, dtype: str, targets: tuple, adaptive: bool) -> dict:
    say = log or (lambda msg: announce(msg) if settings.progress else None)
    start = time.perf_counter()
    out = Path(out)
    registry = Registry.build(plugins_dir=plugins_dir)
    names = resolve_methods(registry, method)
    multi = len(names) > 1
    if params and multi:
        raise InputError(f"--method {method}: parameters for several methods go in --param METHOD.key=value")
    check_plan(registry, settings)
    plugins: dict[str, Mitigation] = {}
    for m in names:  # validated: fails before any work
        plugin = registry.create(m, kind="mitigation", **(params if params and not multi
                                                          else settings.plugin_params.get(m, {})))
        assert isinstance(plugin, Mitigation)
        plugins[m] = plugin
    raw, info, pipe = load_target(model_dir, device=device, allow_pickle=allow_pickle, dtype=dtype)
    if isinstance(pipe, ProvidesDenoiser):
        raise InputError(f"{model_dir}: already a protected pipeline ({type(pipe).__name__}); mitigate the raw model")
    plugins = fitting_methods(plugins, model_dir=model_dir, kind="text" if latent_of(raw) is not None else "pixel",
                              every=str(method).strip() == "all")
    names = list(plugins)
    multi = len(names) > 1
    if adaptive:
        settings = replace(settings, attacks=adaptive_attacks(registry, settings, caps=capabilities_of(raw)))
    mem, hold = load_data(members, holdout, shape=image_shape_of(raw))
    ref = load_checked(reference, name="reference", channels=info.channels, size=info.resolution) if reference else None
    split_note = None
    if ref is None:  # the guard needs never-trained-on images: a seeded part of the holdout the audits never use
        hold, ref, split_note = split_reference(hold, seed=settings.seed)
    data = data_fingerprints(mem, hold, ref)
    if split_note:
        data["reference_from_holdout"] = split_note
    bind_run(run, out, settings=settings, denoiser=raw, data=data, registry=registry,
             extra={"mitigation": method, "params": params or {}, "sweep": sweep or multi,
                    "targets": [str(t) for t in targets]})
    common: dict[str, Any] = dict(settings=settings, registry=registry, argv=argv, device=raw.device)

    say("mitigate: auditing the raw model (before)")
    t0 = time.perf_counter()
    before_res = audit(denoiser=raw, members=mem, holdout=hold, registry=registry, settings=settings, reference=ref)
    before = scan_results(before_res, info=info, data=data, seconds=time.perf_counter() - t0, **common)
    auditor = _Auditor(members=mem, holdout=hold, reference=ref, registry=registry, settings=settings,
                       timing=_sampling_config(before), seed=settings.seed, targets=targets)
    base_row = auditor.row(name="no mitigation", family="none", params={}, res=before_res, denoiser=raw,
                           description="the raw model as trained")
    shared: dict[str, Any] = dict(model_dir=model_dir, pipe=pipe, raw=raw, mem=mem, hold=hold, ref=ref, registry=registry,
                  settings=settings, auditor=auditor, before=before, base_row=base_row, common=common, data=data,
                  say=say, targets=targets, redact=redact, split_note=split_note, argv=argv, info=info)
    blocks = [_run_method(m, plugins[m], out=out / m if multi else out, sweep=sweep or multi, **shared)
              for m in names]

    if not multi:
        results = blocks[0]
    else:
        results = _frontier_results(blocks, method=method, targets=targets, base_row=base_row, before=before)
    results["manifest"] = {**manifest(argv=argv, device=raw.device, settings=settings, info=info, data=data,
                                      registry=registry, seconds=time.perf_counter() - start),
                           "mitigation": [{"name": b["method"], "origin": registry.get(b["method"]).origin,
                                           "apply_seconds": b["apply_seconds"]} for b in blocks]
                           if multi else {"name": names[0], "origin": registry.get(names[0]).origin,
                                          "apply_seconds": blocks[0]["apply_seconds"]},
                           "engine": run.describe()}
    results["data"] = data
    write_run(out / "before", before, redact=redact)
    for b in blocks:
        after = b.pop("_after")
        where = out / b["method"] if multi else out
        # the after-run is an audit of an already mitigated model: its report must not advise mitigating it
        write_run(where / "after", {**after, "mitigated": {"method": b["method"]}}, baseline=before, redact=redact)
        if multi:  # each method's own full report beside its protected pipeline
            _write_report(where, {**b, "manifest": results["manifest"], "data": data}, before=before, after=after,
                          redact=redact, exports=False)
    after_scan = results.pop("_after_ref", None) or results["after"]
    _write_report(out, results, before=before, after=after_scan, redact=redact)
    return results


def _run_method(method: str, mitigation: Mitigation, *, out: Path, sweep: bool, model_dir, pipe, raw, mem, hold, ref,
                registry, settings, auditor: _Auditor, before: dict, base_row: dict, common: dict, data: dict, say,
                targets: tuple, redact: str, split_note, argv, info) -> dict:
    """One method: apply, audit the protected pipeline (after), its controls and (with ``sweep``) its
    settings; its verdict. Returns its results block (``_after``: the after scan, written by the caller)."""
    ctx = MitigationContext(model_dir=Path(model_dir), pipeline=pipe, denoiser=raw, members=mem, holdout=hold,
                            reference=ref, out=out, registry=registry, settings=settings, device=raw.device,
                            cache_dir=Path(settings.cache_dir or default_cache_dir()), seed=settings.seed,
                            progress=settings.progress, at_risk=tuple(auditor.at_risk))
    say(f"mitigate: applying {method}")
    t0 = time.perf_counter()
    result: MitigationOutput = mitigation.apply(ctx)
    apply_seconds = time.perf_counter() - t0
    for w in result.warnings:
        say(f"mitigate: warning: {w}")

    say(f"mitigate: auditing the protected model ({method}, after)")
    t0 = time.perf_counter()
    _, pinfo, _ = load_target(result.protected_dir, device=str(raw.device))
    after_res = auditor.audit(result.denoiser)
    after = scan_results(after_res, info=pinfo, data=data, seconds=time.perf_counter() - t0, **common)
    controls = [base_row,
                auditor.row(name=method, family=method, role="main", params=_scalar_params(result.params),
                            res=after_res, denoiser=result.denoiser, probe=result.probe, method=method,
                            description="the protected pipeline as saved in protected/ and loaded back")]
    for v in result.controls:
        say(f"mitigate: auditing control: {v.name}")
        res = auditor.audit(v.denoiser)
        controls.append(auditor.row(name=v.name, description=v.description, family=v.family, params=v.params, res=res,
                                    denoiser=v.denoiser, probe=v.probe, details=v.details, role=v.role, method=method))

    sweep_rows: list[dict] = []
    matched = None
    families: list[dict] = []
    if sweep:
        variants = mitigation.sweep(ctx, result)
        for i, v in enumerate(variants, 1):
            say(f"mitigate: {method} sweep {i}/{len(variants)}: {v.name}")
            res = auditor.audit(v.denoiser)
            row = auditor.row(name=v.name, description=v.description, family=v.family, params=v.params, res=res,
                              denoiser=v.denoiser, probe=v.probe, details=v.details, method=method)
            sweep_rows.append({"name": row["name"], "family": row["family"], "role": v.role, "method": method,
                               **row["params"], "metrics": row["metrics"], "quality": row["quality"],
                               "sampling_seconds": row["sampling_seconds"], "sampling_ratio": row["sampling_ratio"],
                               "verdict": row["verdict"], "caveats": row["caveats"],
                               "meets_targets": meets_targets({**row["metrics"], "sampling_ratio": row["sampling_ratio"]},
                                                              targets),
                               "recommended": False})
        main = [r for r in sweep_rows if r["role"] == "main"]
        best = recommend(main, targets)
        if best is not None:
            main[best]["recommended"] = True
        placebo = [r for r in sweep_rows if r["role"] == "placebo"]
        matched = matched_quality([r for r in main if r["family"] == controls[1]["family"]] or main, placebo,
                                  anchor=controls[0])
        families = family_summary(main) if len({r["family"] for r in main}) > 1 else []

    white = white_box_rows(before, after)
    findings = findings_of(method, controls, sweep_rows, matched, white, targets)
    for f in families:
        findings.append(f"sweep family {f['family']}: {f['meet_copy_target']} of {f['settings']} settings meet the copy "
                        f"target; its pick {f['pick']}: copy fraction {fmt_value(f['pick_copy_fraction'])}, "
                        f"{f['quality_metric'] or 'quality'} {fmt_value(f['pick_quality'])}, black-box AUC (two-sided) "
                        f"{fmt_value(f['pick_black_box_auc_two_sided'])}, gate leak {fmt_value(f['pick_gate_leak'])}; lowest gate "
                        f"leak at the copy target {fmt_value(f['lowest_gate_leak_at_copy_target'])}.")
    verdict = mitigation_verdict(before=before, after_res=after_res, row=controls[1], settings=settings,
                                 targets=targets)
    leak = gate_leak(controls[0], controls[1])
    cls = type(mitigation)
    carries = [f"The served pipeline carries {cls.carries}."] if cls.carries else []
    if cls.carries_training_data:
        carries.append("What it carries holds the training data itself: anyone who gets the protected folder gets "
                       "the members. Keep the pipeline server-side (serve images, never the folder).")
    decision = None
    if sweep:
        rec = next((r for r in sweep_rows if r["recommended"]), None)
        decision = {"recommended": _rec_entry(rec), "misses": misses([r for r in sweep_rows if r["role"] == "main"],
                                                                    targets) if rec is None else [],
                    "text": decision_text(rec, misses([r for r in sweep_rows if r["role"] == "main"], targets), targets)
                    if [r for r in sweep_rows if r["role"] == "main"] else "no sweep settings"}
    return {
        "schema_version": SCHEMA_VERSION, "kind": "mitigation", "method": method,
        "params": _scalar_params(result.params),
        "protected": str(result.protected_dir),
        "before": _body(before), "after": _body(after),
        "controls": controls, "sweep": sweep_rows, "matched_quality": matched, "white_box": white, "gate_leak": leak,
        "sweep_families": families,
        "details": result.details, "details_title": result.details_title,
        "targets": [{"name": t.name, "key": t.key, "op": t.op, "bound": t.bound, "label": t.label} for t in targets],
        "decision": decision, "findings": findings,
        "warnings": ([split_note["message"]] if split_note else []) + list(result.warnings),
        "limits": list(GENERIC_LIMITS) + carries + list(result.limits), "verdict": verdict,
        "carries": cls.carries, "carries_training_data": cls.carries_training_data,
        "weights": same_weights(before, after), "apply_seconds": round(apply_seconds, 2),
        "_after": after,
    }


def _rec_entry(rec: dict | None) -> dict | None:
    if rec is None:
        return None
    return {"name": rec["name"], "method": rec.get("method"), "family": rec["family"],
            "params": {k: v for k, v in rec.items() if k not in _ROW_KEYS},
            "metrics": rec["metrics"], "quality": rec.get("quality"), "sampling_ratio": rec["sampling_ratio"],
            "verdict": rec.get("verdict"), "caveats": rec.get("caveats", [])}


_ROW_KEYS = ("name", "family", "role", "method", "metrics", "quality", "sampling_seconds", "sampling_ratio", "verdict",
             "caveats", "meets_targets", "recommended")


def _frontier_results(blocks: list[dict], *, method: str, targets: tuple, base_row: dict, before: dict) -> dict:
    """Several methods on one frontier: every method's settings judged on the same targets; the cheapest
    setting that meets them all is recommended, else "none" with what stops each method. The top-level
    results are those of the recommended setting's method (else the first method), with the frontier beside."""
    main = [r for b in blocks for r in b["sweep"] if r["role"] == "main"]
    for r in main:
        r["recommended"] = False
    best = recommend(main, targets)
    rec = main[best] if best is not None else None
    if rec is not None:
        rec["recommended"] = True
    miss = misses(main, targets) if rec is None else []
    text = decision_text(rec, misses(main, targets), targets)
    primary = next((b for b in blocks if rec is not None and b["method"] == rec["method"]), blocks[0])
    methods = []
    for b in blocks:
        row = b["controls"][1]
        m = row["metrics"]
        methods.append({
            "method": b["method"], "protected": b["protected"], "report": f"{b['method']}/report.html",
            "carries": b["carries"], "carries_training_data": b["carries_training_data"],
            "copies_before": base_row["metrics"].get("copy_fraction"), "copies_after": m.get("copy_fraction"),
            "black_box_auc_two_sided_before": base_row["metrics"].get("black_box_auc_two_sided"),
            "black_box_auc_two_sided_after": m.get("black_box_auc_two_sided"),
            "worst_black_box_attack": _worst_black_box(b["after"]),
            "quality": row.get("quality"), "sampling_ratio": row["sampling_ratio"],
            "verdict": b["verdict"]["level"], "headline": b["verdict"]["headline"],
            "settings": len([r for r in b["sweep"] if r["role"] == "main"]),
            "settings_meeting_targets": sum(1 for r in b["sweep"] if r["role"] == "main" and r["meets_targets"]),
            "apply_seconds": b["apply_seconds"]})
    points = [{"name": r["name"], "series": r["family"], "method": r.get("method"), "role": r.get("role", "control"),
               "quality_ratio": r["metrics"].get("quality_ratio"),
               "black_box_auc_two_sided": r["metrics"].get(privacy_key(r["metrics"])),
               "copy_fraction": r["metrics"].get("copy_fraction"), "sampling_ratio": r["sampling_ratio"],
               "recommended": bool(r.get("recommended"))}
              for b in blocks for r in [*b["controls"][1:], *b["sweep"]]]
    points.insert(0, {"name": "no mitigation", "series": None, "method": None, "role": "control",
                      "quality_ratio": base_row["metrics"].get("quality_ratio"),
                      "black_box_auc_two_sided": base_row["metrics"].get(privacy_key(base_row["metrics"])),
                      "copy_fraction": base_row["metrics"].get("copy_fraction"), "sampling_ratio": 1.0,
                      "recommended": False})
    verdict = dict(primary["verdict"])
    if rec is None:  # the decision is part of the headline: no setting of any method meets the targets
        verdict["caveats"] = list(verdict["caveats"]) + [text]
        verdict["headline"] = f"{verdict['level']} ({verdict['basis']}): but " + "; ".join(verdict["caveats"])
    frontier = {"methods": methods, "targets": [str(t) for t in targets], "points": points,
                "recommendation": _rec_entry(rec), "misses": miss, "decision": text,
                "shown_in_detail": primary["method"],
                "note": ("each method's sweep ran with the same seeds, sample counts and audits; x: quality ratio "
                         "(precision, and on text models prompt fidelity, relative to the unprotected model: the worse of "
                         "the two), y: worst black-box membership AUC, two-sided "
                         "(adaptive attacks included), marker size: copy fraction")}
    out = {k: v for k, v in primary.items() if k != "_after"}
    out.update(method=",".join(b["method"] for b in blocks), methods=[b["method"] for b in blocks],
               controls=[base_row] + [c for b in blocks for c in b["controls"][1:]],
               sweep=[r for b in blocks for r in b["sweep"]], frontier=frontier, verdict=verdict,
               decision={"recommended": _rec_entry(rec), "misses": miss, "text": text},
               warnings=list(dict.fromkeys(w for b in blocks for w in b["warnings"])),
               findings=[text] + [f for b in blocks for f in b["findings"]],
               _after_ref=primary["_after"])
    out["method_detail"] = primary["method"]
    return out


def _worst_black_box(scan: dict) -> dict | None:
    """The black-box attack with the highest two-sided AUC on the protected model: {"attack", "auc_two_sided",
    "queries_per_image"} (its query cost, as the attack declares it)."""
    best = None
    for p in scan.get("plugins") or []:
        if p.get("status") != "ok" or p.get("kind") != "attack" or p.get("threat_model") != "black-box":
            continue
        v = ((p.get("metrics") or {}).get("auc") or {}).get("value")
        if v is None:
            continue
        cands = [v] + [float(x) for x in ((p.get("details") or {}).get("fitted") or {}).get("sweep_", {}).values()
                       if isinstance(x, (int, float))]
        two = max(max(c, 1 - c) for c in cands)
        if best is None or two > best["auc_two_sided"]:
            best = {"attack": p["name"], "auc_two_sided": round(two, 4),
                    "queries_per_image": p.get("queries_per_image")}
    return best


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


def _write_report(out: Path, results: dict, *, before: dict, after: dict, redact: str, exports: bool = True) -> None:
    from privaudit.reports import render_html
    from privaudit.reports.images import redact_images

    try:
        html = render_html(results, redact=redact)
    except Exception as e:  # a renderer without mitigation support: fall back to after-vs-before, and say so
        results["warnings"].append(f"mitigation report rendering failed ({e.__class__.__name__}: {e}); "
                                   "report.html shows the after audit against the before audit")
        html = render_html(_body(after), baseline=_body(before), redact=redact)
    write_json(out / "results.json", redact_images(results, mode=redact))
    if exports:
        write_exports(out, results)  # summary.json, junit.xml: the protected model's verdict, for CI
    write_text(out / "report.html", html)
