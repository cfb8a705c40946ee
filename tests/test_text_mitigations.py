"""Sampling-time text-to-image mitigations (caption-noise, cfg-delay, embed-min, attn-rescale), their prompt
gate, the adaptive prompt attacks, prompt fidelity, and the mitigation flow on the text fixture."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from privaudit.data.sets import load_images
from privaudit.io.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread

pytest.importorskip("transformers")

METHODS = {  # a setting strong enough to see on the tiny fixture (the sweep covers the range)
    "caption-noise": {"sigma": 4.0},
    "cfg-delay": {"early_scale": -5.0, "transition": 0.5},
    "embed-min": {"steps": 10, "lr": 0.5, "target": None},
    "attn-rescale": {"c": 1e5},
}


@pytest.fixture(scope="module")
def text_sets(digits_text_target):
    t = digits_text_target
    return SimpleNamespace(members=load_images(t / "members", name="members"),
                           holdout=load_images(t / "holdout", name="holdout"),
                           reference=load_images(t / "reference", name="reference"))


@pytest.fixture(scope="module")
def gate_cal(digits_text_denoiser, text_sets):
    from privaudit.plugins.mitigations.prompted.gate import calibrate

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return calibrate(digits_text_denoiser, unseen=list(text_sets.reference.captions)[:200],
                         members=list(text_sets.members.captions), fpr=0.05, n_seeds=4, seed=0)
    finally:
        torch.set_num_threads(n)


def mitigated(den, method: str, threshold: float | None, **params):
    import privaudit.plugins.mitigations.prompted  # noqa: F401 (registers the rules)
    from privaudit.plugins.mitigations.prompted.denoiser import MitigatedTextDenoiser
    from privaudit.plugins.mitigations.prompted.gate import PromptGate
    from privaudit.plugins.mitigations.prompted.rule import RULES

    return MitigatedTextDenoiser(base=den, rule=RULES[method](**(params or METHODS[method])),
                                 gate=PromptGate(threshold=threshold, n_seeds=4, seed=0))


def test_gate_is_calibrated_on_unseen_captions_and_flags_memorised_ones(digits_text_denoiser, gate_cal, text_sets):
    from privaudit.plugins.mitigations.prompted.gate import PromptGate, is_empty

    den = digits_text_denoiser
    # the recall depends on the build (0.66 and 0.34 on two builds of the fixture): far above the 5% it is held to
    assert gate_cal["unseen_flag_rate"] <= 0.06 and gate_cal["member_flag_rate"] >= 0.25, gate_cal
    gate = PromptGate(threshold=gate_cal["threshold"], n_seeds=4, seed=0)
    held = gate.flags(den, den.prompt_embeddings(list(text_sets.holdout.captions))).float().mean().item()
    assert held <= 0.15  # the evaluation holdout, never used for the threshold
    rows = den.prompt_embeddings(["", text_sets.members.captions[0], ""])
    assert is_empty(den, rows).tolist() == [True, False, True]
    assert PromptGate(threshold=None).flags(den, rows).tolist() == [False, True, False]  # ungated: every prompt
    assert gate.scores(den, rows)[0] == 0  # the empty prompt has no text-conditional part


@pytest.mark.parametrize("method", sorted(METHODS))
def test_mitigation_changes_memorised_prompts_and_leaves_unflagged_ones_alone(method, digits_text_denoiser, gate_cal,
                                                                               text_sets):
    """Gated: a memorised prompt's generations move away from its training image; a prompt the gate does not
    flag is generated bit for bit as the raw model generates it."""
    from privaudit.model.latent import generate
    from privaudit.plugins.mitigations.prompted.gate import PromptGate

    den = digits_text_denoiser
    gate = PromptGate(threshold=gate_cal["threshold"], n_seeds=4, seed=0)
    mf = gate.flags(den, den.prompt_embeddings(list(text_sets.members.captions))).numpy()
    hf = gate.flags(den, den.prompt_embeddings(list(text_sets.holdout.captions))).numpy()
    flagged = [text_sets.members.captions[i] for i in np.flatnonzero(mf)[:8]]
    plain = [text_sets.holdout.captions[i] for i in np.flatnonzero(~hf)[:8]]
    mit = mitigated(den, method, gate_cal["threshold"])
    gen = lambda d, p: generate(d, p, n_per_prompt=2, steps=10, guidance_scale=7.5, seed=0)
    assert torch.equal(gen(mit, plain), gen(den, plain))
    own = text_sets.members.tensor(np.flatnonzero(mf)[:8]).repeat_interleave(2, 0)
    dist = lambda x: (x - own).pow(2).flatten(1).mean(1).mean().item()
    raw_d, mit_d = dist(gen(den, flagged)), dist(gen(mit, flagged))
    assert mit_d > raw_d + 0.05, (method, raw_d, mit_d)
    assert mit.stats()["gated_rows"] > 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_protected_folder_round_trips_through_from_pretrained(method, digits_text_target, digits_text_denoiser,
                                                              gate_cal, tmp_path):
    from diffusers import DiffusionPipeline

    import privaudit.plugins.mitigations.prompted  # noqa: F401
    from privaudit.model.latent import generate
    from privaudit.model.target import load_target
    from privaudit.plugins.mitigations.prompted.gate import PromptGate
    from privaudit.plugins.mitigations.prompted.pipeline import PromptMitigatedPipeline

    _, _, raw_pipe = load_target(digits_text_target / "model", device="cpu")
    gate = PromptGate(threshold=gate_cal["threshold"], n_seeds=4, seed=0)
    pipe = PromptMitigatedPipeline.from_text_pipeline(raw_pipe, method=method, params=METHODS[method], gate=gate)
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(loaded).__name__ == "PromptMitigatedPipeline" and loaded.config.method == method
    den, info, _ = load_target(tmp_path / "p", device="cpu")  # what privaudit audits is what ships
    direct = mitigated(digits_text_denoiser, method, gate_cal["threshold"])
    assert den.fingerprint == direct.fingerprint and info.text_conditional
    caps = ["a handwritten digit one", "a handwritten digit seven"]
    assert torch.equal(generate(den, caps, steps=5, seed=1), generate(direct, caps, steps=5, seed=1))
    g = lambda: torch.Generator().manual_seed(0)
    a = loaded(caps, num_inference_steps=4, output_type="np", generator=g()).images
    b = loaded(prompt_embeds=den.inner().prompt_embeddings(caps), num_inference_steps=4, output_type="np",
               generator=g()).images
    assert a.shape == (2, 8, 8, 1) and np.allclose(a, b)  # prompt_embeds are served through the same rule


def test_a_fresh_process_loads_a_protected_folder(digits_text_target, gate_cal, tmp_path):
    import subprocess
    import sys

    from privaudit.model.target import load_target
    from privaudit.plugins.mitigations.prompted.gate import PromptGate
    from privaudit.plugins.mitigations.prompted.pipeline import PromptMitigatedPipeline

    _, _, raw_pipe = load_target(digits_text_target / "model", device="cpu")
    PromptMitigatedPipeline.from_text_pipeline(raw_pipe, method="cfg-delay", params=METHODS["cfg-delay"],
                                               gate=PromptGate(threshold=gate_cal["threshold"])
                                               ).save_pretrained(tmp_path / "p", safe_serialization=True)
    code = ("import privaudit.plugins.mitigations.prompted\nfrom diffusers import DiffusionPipeline\n"
            f"p = DiffusionPipeline.from_pretrained({str(tmp_path / 'p')!r})\n"
            "print(type(p).__name__, len(p(['a handwritten digit one'], num_inference_steps=2).images))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-2:] == ["PromptMitigatedPipeline", "1"], done.stderr[-2000:]
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["method"] == "cfg-delay" and not list((tmp_path / "p").rglob("*.bin"))  # safetensors and JSON only


def test_adaptive_prompt_attacks_beat_plain_prompt_copy_on_a_gated_mitigation(digits_text_denoiser, gate_cal,
                                                                              text_sets):
    """A gated caption-noise model: plain prompt copy falls (0.54-0.72 on two builds of the fixture), but
    paraphrases and perturbed embeddings slip under the gate and bring the copies back. On the raw model the adaptive attacks lose nothing."""
    from sklearn.metrics import roc_auc_score

    from privaudit.model.latent import attack_inputs
    from privaudit.model.noise import Noise
    from privaudit.plugins.attacks.promptcopy import PromptCopyAttack
    from privaudit.plugins.attacks.promptcopy_embed import PromptCopyEmbedAttack
    from privaudit.plugins.attacks.promptcopy_paraphrase import PromptCopyParaphraseAttack

    def auc(model, attack) -> float:
        s = []
        for images in (text_sets.members, text_sets.holdout):
            idx = np.arange(32)
            x = images.tensor(idx)
            view, z = attack_inputs(model, images, idx, x)
            s.append(attack.score(view, z, noise=Noise.for_images(x, seed=0, stream=attack.name)).numpy())
        return roc_auc_score(np.r_[np.ones(32), np.zeros(32)], np.r_[s[0], s[1]])

    mit = mitigated(digits_text_denoiser, "caption-noise", gate_cal["threshold"])
    plain = auc(mit, PromptCopyAttack(k=2, steps=10))
    embed = auc(mit, PromptCopyEmbedAttack(k=2, steps=10))
    para = auc(mit, PromptCopyParaphraseAttack(k=2, steps=10))
    assert plain < 0.8 and embed > plain + 0.1 and para > plain + 0.1, (plain, embed, para)
    assert auc(digits_text_denoiser, PromptCopyParaphraseAttack(k=2, steps=10)) == 1.0


def test_paraphrase_drops_and_swaps_words_but_never_empties_a_caption():
    from privaudit.plugins.attacks.promptcopy_paraphrase import paraphrase

    g = torch.Generator().manual_seed(0)
    outs = [paraphrase("a handwritten digit seven, sample kavo", g, p_drop=0.5, p_swap=1.0) for _ in range(50)]
    assert all(o.strip() for o in outs) and len(set(outs)) > 10
    assert paraphrase("one", g, p_drop=1.0, p_swap=1.0) == "one"
    assert paraphrase("a b c", g, p_drop=0.0, p_swap=0.0) == "a b c"


def test_prompt_fidelity_reads_the_prompted_class(digits_text_denoiser, text_sets):
    from test_text import _Ctx

    from privaudit.plugins.detectors.fidelity import NUMBER_WORDS, PromptFidelityDetector, caption_classes

    words = NUMBER_WORDS.split(",")
    assert caption_classes(["a digit seven", "one or two", "nothing"], words).tolist() == [7, -1, -1]
    det = PromptFidelityDetector(n_prompts=16, steps=10)
    ctx = lambda d: _Ctx(denoiser=d, members=text_sets.members, holdout=text_sets.holdout,
                         reference=text_sets.reference, seed=0, progress=False, settings=SimpleNamespace(n_boot=50))
    raw = det.detect(ctx(digits_text_denoiser))
    assert raw.metrics["prompt_fidelity_members"].value >= 0.8 and raw.metrics["classifier_accuracy"].value >= 0.85
    assert raw.details["n_fidelity"] == 64
    broken = det.detect(ctx(mitigated(digits_text_denoiser, "caption-noise", None, sigma=4.0)))  # ungated, heavy
    assert broken.metrics["prompt_fidelity"].value < raw.metrics["prompt_fidelity"].value - 0.3
    none = PromptFidelityDetector(classes="cat,dog").detect(ctx(digits_text_denoiser))
    assert not none.metrics and "too few" in none.finding


def test_quality_ratio_is_the_worse_of_precision_and_prompt_fidelity():
    from privaudit.mitigation.summary import quality_ratio

    def res(precision: float, fidelity: float | None) -> dict:
        plugins = [{"status": "ok", "metrics": {"precision": {"value": precision}}, "details": {"n_generated": 100}}]
        if fidelity is not None:
            plugins.append({"status": "ok", "metrics": {"prompt_fidelity": {"value": fidelity}},
                            "details": {"n_fidelity": 100}})
        return {"plugins": plugins}

    q = quality_ratio(res(0.8, 0.3), res(0.8, 0.9))
    assert q["measure"] == "prompt fidelity" and q["ratio"] == pytest.approx(1 / 3, abs=1e-3)
    assert set(q["measures"]) == {"precision", "prompt fidelity"} and q["measures"]["precision"]["ratio"] == 1.0
    assert quality_ratio(res(0.4, None), res(0.8, None))["measure"] == "precision"


def test_method_all_runs_the_methods_that_fit_the_model():
    from privaudit.api.registry import Registry
    from privaudit.mitigation.flow import fitting_methods

    reg = Registry.build()
    plugins = {r.name: reg.create(r.name, kind="mitigation") for r in reg if r.kind == "mitigation"}
    text = fitting_methods(plugins, model_dir="m", kind="text", every=True)
    pixel = fitting_methods(plugins, model_dir="m", kind="pixel", every=True)
    assert {"caption-noise", "cfg-delay", "embed-min", "attn-rescale", "cpsample"} <= set(text)
    assert "rejection" not in text and "caption-noise" not in pixel and {"rejection", "cpsample"} <= set(pixel)
    with pytest.raises(InputError, match="--method rejection protects pixel models; this one is a text model"):
        fitting_methods({"rejection": plugins["rejection"]}, model_dir="m", kind="text", every=False)


def test_text_mitigation_refuses_a_pixel_model(digits_target, tmp_path):
    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigate

    settings = AuditSettings(attacks=("loss",), detectors=(), progress=False, n_boot=20)
    with pytest.raises(InputError, match="--method cfg-delay protects text models; this one is a pixel model"):
        mitigate(model_dir=digits_target / "model", members=digits_target / "members",
                 holdout=digits_target / "holdout", out=tmp_path / "m", method="cfg-delay", settings=settings,
                 device="cpu", log=lambda m: None)
    assert not (tmp_path / "m" / "protected").exists()


def test_mitigate_sweeps_gated_and_ungated_settings_on_the_text_fixture(digits_text_target, tmp_path):
    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigate

    settings = AuditSettings(attacks=("prompt-copy",), detectors=("promptcopy", "fidelity"), progress=False, n_boot=50,
                             plugin_params={"promptcopy": {"n_prompts": 8, "n_per_prompt": 4, "steps": 10},
                                            "fidelity": {"n_prompts": 8, "steps": 10},
                                            "prompt-copy": {"steps": 10}, "prompt-copy-embed": {"steps": 10, "tries": 1},
                                            "prompt-copy-paraphrase": {"steps": 10, "tries": 1},
                                            "cfg-delay": {"sweep_points": [[-5.0, 0.5]]}},
                             follow_target=False)
    res = mitigate(model_dir=digits_text_target / "model", members=digits_text_target / "members",
                   holdout=digits_text_target / "holdout", reference=digits_text_target / "reference",
                   out=tmp_path / "mit", method="cfg-delay", settings=settings, device="cpu", sweep=True,
                   log=lambda m: None)
    assert {r["family"] for r in res["sweep"]} == {"cfg-delay (gated)", "cfg-delay (ungated)"}
    names = {p["name"] for p in res["after"]["plugins"] if p["status"] == "ok"}
    assert {"prompt-copy", "prompt-copy-embed", "prompt-copy-paraphrase", "fidelity"} <= names  # adaptive ones added
    gate = res["details"]["gate"]
    assert gate["gated"] and gate["captions_from"] == "reference" and gate["member_flag_rate"] >= 0.25
    row = res["controls"][1]
    assert row["quality"]["measure"] in ("precision", "prompt fidelity") and "prompt fidelity" in row["quality"]["measures"]
    assert row["timing"]["prompted"] and 0 < row["metrics"]["gate_rate"] < 1
    ungated = next(r for r in res["sweep"] if r["family"] == "cfg-delay (ungated)")
    assert ungated["metrics"]["gate_rate"] == 1.0
    assert res["decision"]["text"] and res["verdict"]["level"] in ("critical", "high", "medium", "low", "inconclusive")
    summary = json.loads((tmp_path / "mit" / "summary.json").read_text())
    assert summary and (tmp_path / "mit" / "report.html").exists()
    assert Path(res["protected"]).joinpath("README.md").read_text().count("cfg-delay") >= 1
