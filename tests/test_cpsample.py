"""CPSample: guard, protected sampling, protected pipeline, and the mitigate flow on the digits target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ARTIFACTS

from privaudit.data.sets import load_images
from privaudit.io.errors import InputError
from privaudit.model.denoiser import sample

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread

# Small but real settings: one guard of the default recipe, few samples, few bootstrap rounds.
AUDIT = dict(attacks=("loss", "rediffuse", "gen-nn"), detectors=("nn",), n_boot=100, progress=False,
             plugin_params={"nn": {"n_samples": 128}, "gen-nn": {"n_samples": 128},
                            "loss": {"timesteps": (50, 200), "k": 2}})
PARAMS = {"rejection_max_factor": 4.0}


def _settings(**kw):
    from privaudit.audit.runner import AuditSettings

    return AuditSettings(**{**AUDIT, **kw})


@pytest.fixture(scope="module")
def mitigation_run(digits_target, tmp_path_factory):
    """One ``privaudit mitigate`` run (CPSample, default recipe) on the memorising target."""
    from privaudit.mitigation.flow import mitigate

    out = tmp_path_factory.mktemp("mitigate")
    results = mitigate(model_dir=digits_target / "model", members=digits_target / "members",
                       holdout=digits_target / "holdout", reference=digits_target / "reference", out=out,
                       method="cpsample", params=PARAMS, settings=_settings(), device="cpu")
    return out, results


@pytest.fixture(scope="module")
def protected(mitigation_run):
    """The protected pipeline loaded back from disk, and its Denoiser."""
    from privaudit.model.target import load_target

    out, _ = mitigation_run
    den, info, pipe = load_target(out / "protected", device="cpu")
    return den, info, pipe


@pytest.fixture(scope="session")
def copy_criterion(digits_target):
    """The calibrated copy test, in pixels: closer to a member than 99% of holdout images."""
    m = load_images(digits_target / "members", name="members", channels=1, size=8).tensor().flatten(1)
    h = load_images(digits_target / "holdout", name="holdout", channels=1, size=8).tensor().flatten(1)
    thr = float(np.quantile(torch.cdist(h, m).min(1).values.numpy(), 0.01))
    return lambda x: float((torch.cdist(x.flatten(1), m).min(1).values < thr).float().mean())


def test_mitigate_writes_runs_and_comparison(mitigation_run):
    out, r = mitigation_run
    for sub in ("before", "after"):
        body = json.loads((out / sub / "results.json").read_text())
        assert body["kind"] == "scan" and (out / sub / "scores.csv").exists() and (out / sub / "report.html").exists()
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    saved = json.loads((out / "results.json").read_text())
    assert saved["kind"] == "mitigation" and saved["method"] == "cpsample"
    assert {"before", "after", "controls", "sweep", "details", "limits", "manifest", "params"} <= set(saved)
    assert saved["details_title"] == "Guard classifier"  # the mitigation names what it trained; core does not
    names = [c["name"] for c in r["controls"]]
    assert names == ["no mitigation", "cpsample", "placebo guard", "rejection sampling"]
    for c in r["controls"]:
        assert {"copy_fraction", "membership_auc"} <= set(c["metrics"]) and c["sampling_seconds"] > 0
    from privaudit.plugins.mitigations.cpsample import CPSample

    assert r["params"]["alpha"] == CPSample().alpha and r["params"]["scale"] == CPSample().scale
    assert any("white-box" in x for x in r["limits"]) and any("guard" in x for x in r["limits"])
    # the labels file: one fixed label per member, both labels used
    rows = (out / "guard" / "labels.csv").read_text().splitlines()[1:]
    labels = [int(line.rsplit(",", 1)[1]) for line in rows]
    assert len(labels) == 64 and sum(labels) == 32


def test_protection_reduces_copies_and_reports_guard(mitigation_run):
    _, r = mitigation_run
    by = {c["name"]: c["metrics"] for c in r["controls"]}
    assert by["no mitigation"]["copy_fraction"] >= 0.5
    assert by["cpsample"]["copy_fraction"] < by["no mitigation"]["copy_fraction"] - 0.2
    g = r["details"]
    assert g["reached_target"] and g["fit_accuracy"] >= 0.97
    assert g["train_accuracy_by_band"]["t0-99"] >= 0.95
    # member-specific: far more confident on members than on unseen images at low noise
    assert g["confidence_members"]["t0-99"] > g["confidence_holdout"]["t0-99"] + 0.15
    assert g["gate_rate_holdout"]["t0-99"] < g["gate_rate_members"]["t0-99"] - 0.2
    assert 0 < g["size_vs_unet"] < 1
    rej = next(c for c in r["controls"] if c["name"] == "rejection sampling")["details"]["rejection"]
    assert rej["drawn"] >= rej["requested"] and 0 <= rej["acceptance_rate"] <= 1


def test_copies_and_guard_confidence_fall_as_scale_grows(protected, copy_criterion):
    den, _, _ = protected
    copies, conf = [], []
    for s in (0.0, 30.0, 300.0):
        d = den.with_params(scale=s)
        x = sample(d, n=96, steps=25, seed=3)
        copies.append(copy_criterion(x))
        conf.append(float((d.confidence(x, 0) - 0.5).mean()))
    assert copies[0] >= 0.5
    assert copies[1] < copies[0] and copies[2] <= copies[1] + 0.03
    assert conf[1] < conf[0] and conf[2] <= conf[1] + 0.02


def test_scale_zero_reproduces_unprotected_samples_bit_for_bit(protected, digits_denoiser):
    from diffusers import DDPMPipeline

    den, _, pipe = protected
    zero = den.with_params(scale=0.0)
    for sampler in ("ddim", "ddpm"):
        assert torch.equal(sample(zero, n=8, steps=10, sampler=sampler, seed=1),
                           sample(digits_denoiser, n=8, steps=10, sampler=sampler, seed=1))
    raw = DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    a = raw(batch_size=4, generator=torch.Generator().manual_seed(5), num_inference_steps=10, output_type="np").images
    b = pipe(batch_size=4, generator=torch.Generator().manual_seed(5), num_inference_steps=10, output_type="np",
             scale=0.0).images
    assert np.array_equal(a, b)


@pytest.mark.parametrize("scheduler", ["DDPMScheduler", "DDIMScheduler"])
def test_from_pretrained_round_trip_samples_with_protection(mitigation_run, protected, scheduler):
    import diffusers
    from diffusers import DiffusionPipeline

    from privaudit.plugins.mitigations.cpsample.pipeline import CPSamplePipeline

    out, _ = mitigation_run
    _, _, pipe = protected
    loaded = DiffusionPipeline.from_pretrained(out / "protected", local_files_only=True, use_safetensors=True)
    alpha, scale = pipe.config.alpha, pipe.config.scale
    assert isinstance(loaded, CPSamplePipeline) and (loaded.config.alpha, loaded.config.scale) == (alpha, scale)
    assert not any(p.suffix in (".bin", ".pt", ".pkl", ".py") for p in (out / "protected").rglob("*"))
    # the same components assembled in memory sample the same images as the folder loaded back
    memory = CPSamplePipeline(unet=pipe.unet, scheduler=pipe.scheduler, guard=pipe.guard, alpha=alpha, scale=scale)
    for p in (loaded, memory):
        p.scheduler = getattr(diffusers, scheduler).from_config(p.scheduler.config)
        p.set_progress_bar_config(disable=True)
    run = dict(batch_size=6, num_inference_steps=20, output_type="pt")
    a = loaded(generator=torch.Generator().manual_seed(0), **run).images
    b = memory(generator=torch.Generator().manual_seed(0), **run).images
    unprotected = loaded(generator=torch.Generator().manual_seed(0), scale=0.0, **run).images
    assert torch.equal(a, b)
    assert not torch.equal(a, unprotected)  # protection is on in the loaded pipeline's own __call__


def test_scan_audits_the_protected_folder(mitigation_run, digits_target, tmp_path):
    from privaudit.audit.runner import scan

    out, r = mitigation_run
    res = scan(model_dir=out / "protected", members=digits_target / "members", holdout=digits_target / "holdout",
               out=tmp_path, settings=_settings(detectors=()), device="cpu")
    assert res["target"]["pipeline_class"] == "CPSamplePipeline"
    loss = next(p for p in res["plugins"] if p["name"] == "loss")
    # the same protected denoiser, the same seeds: scan reproduces the mitigate run's after-audit number
    after = next(p for p in r["after"]["plugins"] if p["name"] == "loss")
    assert loss["metrics"]["auc"]["value"] == pytest.approx(after["metrics"]["auc"]["value"])


def test_fresh_process_loads_protected_folder_via_cli(mitigation_run, digits_target, tmp_path):
    """A new interpreter: only the plugin registry (no test imports) makes diffusers resolve the pipeline."""
    import subprocess
    import sys

    out, _ = mitigation_run
    cmd = [sys.executable, "-m", "privaudit", "scan", str(out / "protected"), "--members", str(digits_target / "members"),
           "--holdout", str(digits_target / "holdout"), "--out", str(tmp_path / "scan"), "--detectors", "",
           "--param", "loss.timesteps=[50]", "--param", "loss.k=1", "--bootstrap", "50", "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "scan" / "results.json").read_text())
    assert res["target"]["pipeline_class"] == "CPSamplePipeline"


def test_protected_denoiser_contract(protected, digits_denoiser):
    from privaudit.model.denoiser import Denoiser

    den, _, _ = protected
    assert isinstance(den, Denoiser)
    assert den.white_box.net is den.base.unet  # a white-box attacker sees the raw UNet: the stated limit
    assert den.fingerprint != den.with_params(scale=31.0).fingerprint != den.with_params(alpha=0.2).fingerprint
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((16,), 40)
    e_raw, e = digits_denoiser.eps(x, t), den.eps(x, t)
    gate = den.confidence(x, t) > 1 - den.alpha
    assert torch.equal(e[~gate], e_raw[~gate])  # guidance only where the gate is on
    x_ddpm = sample(den, n=8, steps=10, sampler="ddpm", seed=2)
    assert torch.isfinite(x_ddpm).all() and x_ddpm.abs().max() <= 1


@pytest.mark.parametrize("params, match", [
    ({"alpha": 0.0}, r"cpsample: alpha=0.0 is invalid; expected a number in \(0, 0.5\]"),
    ({"alpha": 0.7}, r"cpsample: alpha=0.7 is invalid; expected a number in \(0, 0.5\]"),
    ({"scale": -1.0}, r"cpsample: scale=-1.0 is invalid; expected a number in \[0, inf\)"),
    ({"max_unseen_gate": "none"}, r"cpsample: max_unseen_gate='none' is invalid; expected None or a number"),
])
def test_bad_parameters_fail_before_any_work(digits_target, tmp_path, params, match):
    from privaudit.io.errors import PrivauditError
    from privaudit.mitigation.flow import mitigate

    with pytest.raises(PrivauditError, match=match):
        mitigate(model_dir=digits_target / "model", members=digits_target / "members", holdout=digits_target / "holdout",
                 out=tmp_path, method="cpsample", params=params, settings=_settings(), device="cpu")
    assert not any(tmp_path.iterdir())


def test_cli_rejects_bad_alpha_and_mismatched_members(digits_target, tmp_path, capsys):
    from PIL import Image

    from privaudit.cli import main

    args = [str(digits_target / "model"), "--members", str(digits_target / "members"), "--holdout",
            str(digits_target / "holdout"), "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]
    assert main(["mitigate", *args, "--alpha", "0.9"]) == 2
    assert "alpha=0.9" in capsys.readouterr().err
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(rgb / f"{i}.png")
    args[2] = str(rgb)
    assert main(["mitigate", *args]) == 2
    err = capsys.readouterr().err
    assert str(rgb) in err and "model expects" in err


def test_guard_shortfall_is_an_error_or_a_warning(digits_target, tmp_path):
    from privaudit.mitigation.flow import mitigate
    from privaudit.plugins.mitigations.cpsample import CPSample
    from privaudit.plugins.mitigations.cpsample.mitigation import GuardShortfallError
    from privaudit.plugins.mitigations.cpsample.train import TrainStats

    with pytest.raises(GuardShortfallError, match="below its target"):
        mitigate(model_dir=digits_target / "model", members=digits_target / "members", holdout=digits_target / "holdout",
                 out=tmp_path, method="cpsample", params={"max_steps": 2, "on_shortfall": "error"},
                 settings=_settings(attacks=(), detectors=()), device="cpu")
    short = TrainStats(steps=2, seconds=0.1, final_loss=0.7, fit_accuracy=0.55, reached_target=False, history=[])
    msg = CPSample(max_steps=2)._check_shortfall(short, "CPSample")
    assert "0.550" in msg and "weaker than configured" in msg
    loose = TrainStats(steps=3000, seconds=1.0, final_loss=0.3, fit_accuracy=0.99, reached_target=True, history=[],
                       unseen_gate_rate=0.34, reached_specificity=False)
    msg = CPSample()._check_shortfall(loose, "CPSample")
    assert "fires on 34% of held-aside never-trained-on images" in msg and "alpha 0.4" in msg
    with pytest.raises(GuardShortfallError, match="34%"):
        CPSample(on_shortfall="error")._check_shortfall(loose, "CPSample")


def test_already_protected_model_is_refused(mitigation_run, digits_target, tmp_path):
    from privaudit.mitigation.flow import mitigate

    out, _ = mitigation_run
    with pytest.raises(InputError, match="already a protected pipeline"):
        mitigate(model_dir=out / "protected", members=digits_target / "members", holdout=digits_target / "holdout",
                 out=tmp_path, method="cpsample", settings=_settings(), device="cpu")


def test_summary_headline_is_the_worst_detectors_copy_fraction():
    """A text run has copies of unconditional samples (nn) and of prompted generations
    (promptcopy): the headline is the worse, each is kept, and diversity is carried."""
    from privaudit.mitigation.flow import summarize

    def det(name, cf, **more):
        return {"name": name, "kind": "detector", "status": "ok", "threat_model": "black-box",
                "metrics": {"copy_fraction": {"value": cf}, **more}}

    s = summarize({"plugins": [det("nn", 0.0), det("promptcopy", 0.4, mean_diversity={"value": 2.0})]})
    assert s["copy_fraction"] == 0.4 and s["nn_copy_fraction"] == 0.0 and s["promptcopy_copy_fraction"] == 0.4
    assert s["promptcopy_mean_diversity"] == 2.0
    assert set(summarize({"plugins": [det("nn", 0.1)]})) == {"copy_fraction"}


RANK = ("info", "low", "medium", "high", "critical")


def _implied_levels(saved: dict, method: str, *, black_box_only: bool = False) -> list[tuple[str, str]]:
    """Every level a membership or replication number in results.json reaches by the documented rules,
    re-derived here from the numbers alone (either score direction for the protected model); with
    ``black_box_only``, from the evidence a served model faces (black-box attacks, copy detectors)."""
    from privaudit.io.verdict import AUC_HIGH, COPY_CRITICAL, COPY_HIGH, TPR_CRITICAL, TPR_HIGH

    out = []
    ours = next(c for c in saved["controls"] if c["family"] == method)["metrics"]
    two = ours.get("black_box_auc_two_sided" if black_box_only else "membership_auc_two_sided", 0)
    if two >= AUC_HIGH:
        out.append(("high", f"headline two-sided AUC {two}"))
    cf = ours.get("copy_fraction", 0)
    if cf >= COPY_HIGH:
        out.append(("critical" if cf >= COPY_CRITICAL else "high", f"headline copy fraction {cf}"))
    for p in saved["after"]["plugins"]:
        if p["status"] != "ok" or (black_box_only and p["kind"] == "attack" and p["threat_model"] != "black-box"):
            continue
        m = p["metrics"]
        if "auc" in m:
            auc, (lo, hi) = m["auc"]["value"], m["auc"]["ci"]
            if (auc >= AUC_HIGH and lo > 0.5) or (1 - auc >= AUC_HIGH and 1 - hi > 0.5):
                out.append(("high", f"{p['name']} AUC {auc} (two-sided)"))
        t = m.get("tpr_at_fpr_0.01")
        if t and t["ci"][0] > 0.01:
            if t["value"] >= TPR_CRITICAL:
                out.append(("critical", f"{p['name']} TPR {t['value']}"))
            elif t["value"] >= TPR_HIGH:
                out.append(("high", f"{p['name']} TPR {t['value']}"))
        c = m.get("copy_fraction")
        if c and c["value"] >= COPY_HIGH:
            out.append(("critical" if c["value"] >= COPY_CRITICAL else "high", f"{p['name']} copies {c['value']}"))
    return out


def test_mitigation_verdict_follows_from_every_number_it_shows(mitigation_run):
    out, r = mitigation_run
    saved = json.loads((out / "results.json").read_text())
    v = saved["verdict"]
    assert v["before"] == saved["before"]["verdict"]["level"]
    # judged as served: the black-box evidence sets the level; everything sets the "if the weights leak" line
    assert v["basis"] == "black-box"
    for level, why in _implied_levels(saved, "cpsample", black_box_only=True):
        assert RANK.index(v["level"]) >= RANK.index(level), (v["level"], why)
    leak = v["if_weights_leak"]["level"]
    for level, why in _implied_levels(saved, "cpsample"):
        assert RANK.index(leak) >= RANK.index(level), (leak, why)
    assert RANK.index(leak) >= RANK.index(saved["after"]["verdict"]["level"])  # never below the scan's rules
    assert RANK.index(leak) >= RANK.index(v["level"])
    if v["level"] not in ("low", "info"):
        assert v["fired"] and all(f["level"] in RANK and f["text"] for f in v["fired"])
    html = (out / "report.html").read_text()
    first = html[:html.index('<nav class="toc"')]  # the first screen: verdict box
    assert f'<span class="badge {v["level"]} big">' in first
    # the protected folder holds the raw UNet: said on the first screen, with the sha256 that proves it
    assert saved["weights"]["raw_weights_shipped"]
    unet = next(f for f in saved["weights"]["sha256"] if f.startswith("unet/"))
    assert saved["before"]["target"]["weights_sha256"][unet] == saved["after"]["target"]["weights_sha256"][unet]
    assert "ships the raw model" in first and saved["weights"]["sha256"][unet][:12] in first
    # the quality cost beside the privacy gain (this fixture runs no quality detector: the screen says so)
    assert "Frechet distance" in first and ("not measured" in first) != any(
        "frechet_distance" in c["metrics"] for c in saved["controls"])
    assert "privaudit mitigate --method cpsample" not in first  # no advice to mitigate what already is
    # the black-box headline leads; the weights-leak line and the gate leak are on the first screen
    assert first.index("black-box membership AUC") < first.index("generated images that copy")
    assert "If the weights leak:" in first and "Gate leak:" in first
    assert saved["gate_leak"]["value"] == next(c for c in saved["controls"] if c["family"] == "cpsample")[
        "metrics"]["gray_box_auc_two_sided"]
    after_html = (out / "after" / "report.html").read_text()
    assert "privaudit mitigate --method cpsample" not in after_html[:after_html.index('<nav class="toc"')]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "mitigation-report.html").write_text(html)  # for a reviewer to open


def test_reversed_scores_raise_the_mitigated_verdict():
    """A mitigation that turns members into the least member-like images (AUC near 0) is not 'low'."""
    import pandas as pd

    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigation_verdict

    n = 40
    scores = pd.DataFrame({"image_id": [str(i) for i in range(2 * n)], "set": ["member"] * n + ["holdout"] * n,
                           "loss": np.r_[np.arange(n) * 1.0, np.arange(n) + 100.0]})
    plugin = {"name": "loss", "kind": "attack", "status": "ok", "severity": "low", "metrics": {},
              "details": {"rules": []}, "threat_model": "gray-box"}
    after = {"plugins": [plugin], "scores": scores, "verdict": {"level": "low", "warnings": []}}
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=after, row={"metrics": {}},
                           settings=AuditSettings(n_boot=50))
    assert v["level"] == "critical" and v["fired"][0]["text"].startswith("score reversed")
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res={**after, "scores": None},
                           row={"metrics": {"membership_auc_two_sided": 0.88, "copy_fraction": 0.01}},
                           settings=AuditSettings(n_boot=50))
    assert v["level"] == "high" and "two-sided" in v["fired"][0]["text"]


def test_mitigation_exports_carry_the_protected_verdict(mitigation_run):
    import xml.etree.ElementTree as ET

    out, _ = mitigation_run
    saved = json.loads((out / "results.json").read_text())
    s = json.loads((out / "summary.json").read_text())
    assert (s["kind"], s["verdict"], s["verdict_before"]) == ("mitigation", saved["verdict"]["level"],
                                                              saved["before"]["verdict"]["level"])
    assert s["raw_weights_shipped"] is True and [c["name"] for c in s["served"]][:2] == ["no mitigation", "cpsample"]
    case = next(c for c in ET.parse(out / "junit.xml").getroot() if c.get("name") == "verdict.protected")
    assert (case.find("failure") is not None) == (saved["verdict"]["level"] in ("medium", "high", "critical"))
