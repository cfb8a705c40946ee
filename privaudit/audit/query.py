"""``privaudit query``: a data owner's question, "was my collection used to train this model?".

Loads the model (optionally a LoRA adapter on its base, or a full fine-tune with its base),
scores the suspect and holdout images with each selected attack (and, with a base, each gray-box
attack's base-calibrated score), runs the data checks (duplicates, blind baseline) and the
dataset-inference test of ``privaudit.audit.dataset_inference``, and writes ``--out`` like a scan:
results.json (the test, its ``p_value``, the p-value curve, per-image p-values), scores.csv and
a report a data owner can read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from privaudit.api import AuditContext, AuditSettings, MembershipAttack, ReplicationDetector, capabilities_of
from privaudit.api.registry import Registry
from privaudit.audit import dataset_inference as di
from privaudit.audit.calibration import calibration_slope
from privaudit.audit.risk import Risk, per_image_risk
from privaudit.audit.runner import CALIBRATED, check_plan, load_scan_target
from privaudit.audit.runs import bind_run, data_fingerprints, engine_session, manifest, run_folder
from privaudit.audit.scoring import score_set
from privaudit.data.checks import run_checks
from privaudit.data.sets import ImageSet, load_checked
from privaudit.io.errors import InputError, PluginError
from privaudit.io.results import SCHEMA_VERSION
from privaudit.model.latent import fit_inputs, image_shape_of

VERDICTS = {
    "used": "The suspect images score as training images: evidence that this collection (or images very like it) "
            "was used to train the model.",
    "not_shown": "No evidence that the collection was used: its images score like images the model never saw. "
                 "Absence of evidence is not proof of absence (a weak attack, too few images, or a model that "
                 "memorised little can all hide use).",
    "shifted": "Inconclusive: the suspect images (or their captions) differ in distribution from the holdout without any "
               "model (a blind baseline on the images or on the captions separates them), so a difference in scores may "
               "come from that shift rather than from training. Use holdout images from the same source as the suspect "
               "images, captioned the same way.",
    "too_few": "Too few suspect images for a set test: only per-image p-values are reported.",
}


SHIFT_CHECKS = ("blind_baseline", "caption_baseline")  # either makes the answer "shifted"


def query(*, model_dir: str | Path, suspect: str | Path, holdout: str | Path, out: str | Path,
          settings: AuditSettings, lora: str | Path | None = None, base: str | Path | None = None,
          device: str = "auto", allow_pickle: bool = False, dtype: str = "auto", alpha: float = 0.01,
          repeats: int = 5, plugins_dir: str | Path | None = None, argv: list[str] | None = None) -> dict:
    """Run the dataset-inference query and write ``out``; returns the results."""
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha}: must lie strictly between 0 and 1")
    if repeats < 1:
        raise InputError(f"--repeats {repeats}: must be at least 1")
    with run_folder(out, resume=settings.resume):
        start = time.perf_counter()
        registry = Registry.build(plugins_dir=plugins_dir)
        check_plan(registry, settings)
        if Path(suspect).exists() and Path(suspect).resolve() == Path(holdout).resolve():
            raise InputError(f"{holdout}: --holdout is the same as --suspect; the holdout must hold images the model "
                             "never saw")
        den, info, base_den = load_scan_target(model_dir, lora=lora, base=base, device=device,
                                               allow_pickle=allow_pickle, dtype=dtype)
        c, h, w = image_shape_of(den)
        sus = load_checked(suspect, name="suspect", channels=c, size=(h, w))  # every image read now: a bad
        hold = load_checked(holdout, name="holdout", channels=c, size=(h, w))  # file fails before any work
        if len(hold) < 8:
            raise InputError(f"{hold.source}: holdout holds {len(hold)} image(s); at least 8 are needed")
        data = data_fingerprints(sus, hold, None)
        with engine_session(Path(out), settings=settings) as run:  # sharded, resumable, local or on Ray
            bind_run(run, Path(out), settings=settings, denoiser=den, data=data, registry=registry,
                     extra={"kind": "query", "base": None if base_den is None else base_den.fingerprint})
            res = _query(den, base_den, sus, hold, registry=registry, settings=settings, alpha=alpha, repeats=repeats)
        results = {"schema_version": SCHEMA_VERSION, "kind": "query",
                   "target": {**info.__dict__, "schedule": info.scheduler_class}, **res}
        results["manifest"] = manifest(argv=argv, device=den.device, settings=settings, info=info, data=data,
                                       registry=registry, seconds=time.perf_counter() - start)
        results["manifest"]["engine"] = run.describe()
        results["data"] = data
        write_query(out, results)
        return results


def _query(den, base_den, sus, hold, *, registry: Registry, settings: AuditSettings, alpha: float,
           repeats: int) -> dict:
    s = settings
    caps = capabilities_of(den)
    # a text model is scored with each image's caption: suspect captions unlike the holdout's shift scores too
    checks = run_checks(sus, hold, seed=s.seed, captions="text" in caps and s.prompt == "caption") if len(sus) >= 2 else []
    dups = next((ch for ch in checks if ch.name == "exact_duplicates"), None)
    if dups is not None and dups.details["count"] >= len(hold):
        raise InputError(f"{hold.source}: every holdout image is also a suspect image ({sus.source})")
    can_test = len(sus) >= di.MIN_SUSPECT
    sf, st = di.split_halves(len(sus), seed=s.seed) if can_test else (np.zeros(0, int), np.arange(len(sus)))
    hf, ht = di.split_halves(len(hold), seed=s.seed + 1)
    cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    attacks: list[dict] = []
    kw: dict[str, Any] = dict(batch_size=s.batch_size, seed=s.seed, prompt=s.prompt, progress=s.progress)
    for name in s.attacks:
        attack = registry.create(name, kind="attack", **s.plugin_params.get(name, {}))
        assert isinstance(attack, MembershipAttack)
        row: dict[str, Any] = {"name": name, "threat_model": attack.threat_model,
                               "queries_per_image": float(attack.queries_per_image()) * (2 if base_den else 1)}
        if missing := attack.missing(caps):
            attacks.append({**row, "status": "skipped", "reason": f"target lacks {', '.join(missing)}"})
            continue
        try:
            if len(sf) >= 2:  # the attack's own settings (e.g. timestep) from the fit halves only
                fit_den, fm, fh, _, _ = fit_inputs(den, sus, sf, hold, hf, prompt=s.prompt)
                attack.fit(fit_den, members=fm, holdout=fh, seed=s.seed)
            ss = score_set(attack, den, sus, label="suspect", **kw)
            sh = score_set(attack, den, hold, label="holdout", **kw)
            got = {name: (ss, sh)}
            if base_den is not None and attack.threat_model == "gray-box":
                bs = score_set(attack, base_den, sus, label="suspect (base)", **kw)
                bh = score_set(attack, base_den, hold, label="holdout (base)", **kw)
                beta = calibration_slope(sh[hf], bh[hf])  # fitted on holdout-fit only
                got[name + CALIBRATED] = (ss - beta * bs, sh - beta * bh)
        except (InputError, PluginError):
            raise
        except Exception as e:  # one broken attack must not lose the others
            attacks.append({**row, "status": "error", "reason": f"{e.__class__.__name__}: {e}"})
            continue
        for col, (a, b) in got.items():
            bad = int((~np.isfinite(a)).sum() + (~np.isfinite(b)).sum())
            if bad:
                attacks.append({**row, "name": col, "status": "error", "reason": f"{bad} scores are NaN or infinite"})
                continue
            cols[col] = (a, b)
            auc = float(np.mean(a[st][:, None] > b[ht][None, :]) + 0.5 * np.mean(a[st][:, None] == b[ht][None, :]))
            attacks.append({**row, "name": col, "status": "ok", "auc_test_halves": round(auc, 6)})
    if not cols:
        raise InputError("no attack produced usable scores for this model: nothing to test "
                         f"({'; '.join(a['name'] + ': ' + a.get('reason', '') for a in attacks)})")
    names = tuple(cols)
    fs = np.stack([cols[n][0] for n in names], 1)
    fh = np.stack([cols[n][1] for n in names], 1)
    shifted = any(ch.name in SHIFT_CHECKS and not ch.ok for ch in checks)
    test = curve = None
    if can_test:
        t = di.dataset_test(fs, fh, features=names, seed=s.seed, splits=(sf, st, hf, ht))
        test = t.to_json()
        curve = di.pvalue_curve(fs[sf], fs[st], fh[hf], fh[ht], alpha=alpha, repeats=repeats, seed=s.seed)
    per_image = di.per_image_pvalues(fs, fh[hf], fh[ht])
    if shifted:
        verdict = "shifted"
    elif test is None:
        verdict = "too_few"
    else:
        verdict = "used" if test["p_value"] < alpha else "not_shown"
    split = np.full(len(sus), "test", dtype=object)
    split[sf] = "fit"
    hsplit = np.full(len(hold), "test", dtype=object)
    hsplit[hf] = "fit"
    scores = pd.DataFrame({"image_id": list(sus.ids) + list(hold.ids),
                           "set": ["suspect"] * len(sus) + ["holdout"] * len(hold),
                           "split": list(split) + list(hsplit),
                           **{n: np.r_[cols[n][0], cols[n][1]] for n in names},
                           "p_value": np.r_[per_image, np.full(len(hold), np.nan)]})
    order = np.argsort(per_image)
    # the checks speak of members and holdout; here the first set is the suspect images
    checks_json = [{**ch.to_json(), "message": ch.message.replace("members", "suspect images")} for ch in checks]
    detectors, tables = copy_evidence(den, sus, hold, registry=registry, settings=s)
    as_members = scores.assign(set=scores["set"].replace({"suspect": "member"}),
                               split=np.where((scores["set"] == "holdout") & (scores["split"] == "fit"),
                                              "calibration", "evaluation"))
    risk = per_image_risk(member_ids=list(sus.ids), scores=as_members, attacks=list(names), member_tables=tables)
    return {"checks": checks_json, "attacks": attacks, "detectors": detectors,
            "images": image_answers(risk, n_holdout_test=len(ht), n_attacks=len(names)),
            "test": test, "curve": curve, "alpha": alpha,
            "verdict": {"level": verdict, "used": verdict == "used", "message": VERDICTS[verdict],
                        "p_value": None if test is None else test["p_value"]},
            "p_value": None if test is None else test["p_value"],
            "per_image": {"warning": di.PER_IMAGE_WARNING, "combination": "mean z-score on holdout-fit",
                          "n_holdout_test": int(len(ht)),
                          "lowest": [{"image_id": sus.ids[i], "p_value": float(per_image[i])} for i in order[:20]]},
            "sizes": {"suspect": len(sus), "holdout": len(hold)}, "scores": scores}


def copy_evidence(den, sus: ImageSet, hold: ImageSet, *, registry: Registry,
                  settings: AuditSettings) -> tuple[list[dict], dict[str, pd.DataFrame]]:
    """Run the replication detectors (``settings.detectors``) with the suspect images as the members: does the
    model generate copies of them? Returns (one summary per detector, their per-image tables)."""
    ctx = AuditContext(denoiser=den, members=sus, holdout=hold, registry=registry, settings=settings)
    caps = capabilities_of(den)
    rows: list[dict] = []
    tables: dict[str, pd.DataFrame] = {}
    for name in settings.detectors:
        det = registry.create(name, kind="detector", **settings.plugin_params.get(name, {}))
        assert isinstance(det, ReplicationDetector)
        if missing := det.missing(caps):
            rows.append({"name": name, "status": "skipped", "reason": f"target lacks {', '.join(missing)}"})
            continue
        try:
            out = det.detect(ctx)
        except (InputError, PluginError):
            raise
        except Exception as e:  # copies unknown: said so, never read as "not copied"
            rows.append({"name": name, "status": "error", "reason": f"{e.__class__.__name__}: {e}"})
            continue
        rows.append({"name": name, "status": "ok", "finding": out.finding, "threat_model": det.threat_model,
                     "queries_per_image": float(det.queries_per_image())})
        if out.members is not None:
            tables[name] = out.members
    return rows, tables


def image_answers(risk: Risk, *, n_holdout_test: int, n_attacks: int) -> dict:
    """Per suspect image: copied?, how it scores against unseen images, duplicates among the suspects; and
    what so few images can show."""
    t = risk.table
    rows = []
    for r in t.to_dict("records"):
        pct = {k.removesuffix("_percentile"): r[k] for k in t if k.endswith("_percentile")}
        rows.append({"image_id": r["member_id"], "level": r["level"], "reason": r["reason"],
                     "copies": int(r["cluster_copies"]), "chance_copies": float(r["chance_copies"]),
                     "copied": r["level"] == "high" and r["cluster_copies"] > 0,
                     "closest_distance": None if pd.isna(r.get("closest_distance")) else float(r["closest_distance"]),
                     "copy_radius": None if pd.isna(r.get("copy_radius")) else float(r["copy_radius"]),
                     "percentiles": {k: None if pd.isna(v) else float(v) for k, v in pct.items()},
                     "membership_p": None if pd.isna(r["membership_p"]) else float(r["membership_p"])})
    floor = 1.0 / (n_holdout_test + 1)
    note = (f"With {n_holdout_test} unseen test images the smallest p-value one image can reach is {floor:.2g} per "
            f"attack ({min(1.0, floor * max(n_attacks, 1)):.2g} after correcting for {n_attacks} attacks): a single "
            "image's score can say 'unusual for an unseen image', rarely 'certainly trained on'. A generated copy is "
            "direct evidence; its absence is not proof: the model may memorise an image without reproducing it in "
            "the samples drawn here.")
    return {"rows": rows, "copied": sum(r["copied"] for r in rows), "note": note, "sentence": risk.summary["sentence"]}


def write_query(out: str | Path, results: dict) -> Path:
    """results.json, scores.csv and report.html, published with one rename (as a scan's run folder)."""
    from privaudit.audit.runs import check_out
    from privaudit.io.files import atomic_dir, csv_safe, write_json, write_text
    from privaudit.reports import render_html

    out = check_out(out)
    body = {k: v for k, v in results.items() if k != "scores"}
    body["outputs"] = {"scores": "scores.csv"}
    html = render_html(body)
    with atomic_dir(out, hint="choose a new or empty --out") as stage:
        write_text(stage / "scores.csv", csv_safe(results["scores"]).to_csv(index=False))
        write_json(stage / "results.json", body)
        write_text(stage / "report.html", html)
    return out
