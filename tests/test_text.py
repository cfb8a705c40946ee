"""Text-conditional latent targets: fixture, loading, captions, attacks, prompt-level detectors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import plugin

from privaudit.data.sets import ImageSet, load_images
from privaudit.io.errors import InputError
from privaudit.model.noise import Noise

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread

pytest.importorskip("transformers")


def text_scan(target: Path, out: Path, *, members: str = "members", attacks=("loss",), detectors=(),
              params=None, prompt: str = "caption") -> dict:
    from privaudit.audit.runner import AuditSettings, scan

    settings = AuditSettings(attacks=tuple(attacks), detectors=tuple(detectors), plugin_params=params or {},
                             progress=False, n_boot=200, prompt=prompt)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test thread setting
    try:
        return scan(model_dir=target / "model", members=target / members, holdout=target / "holdout", out=out,
                    settings=settings, device="cpu")
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def text_member_scan(digits_text_target, tmp_path_factory) -> dict:
    """Every attack family plus the prompt-level detectors on the memorising text target."""
    return text_scan(digits_text_target, tmp_path_factory.mktemp("text-scan"),
                     attacks=("loss", "pia", "sima", "gsa"), detectors=("memprompt", "promptcopy", "nn"),
                     params={"nn": {"n_samples": 64}, "promptcopy": {"n_prompts": 16}})


@pytest.fixture(scope="session")
def text_null_scan(digits_text_target, tmp_path_factory) -> dict:
    """Never-seen captioned digits as members: nothing may be flagged."""
    return text_scan(digits_text_target, tmp_path_factory.mktemp("text-null"), members="null",
                     attacks=("loss",), detectors=("memprompt",))


# ---------------------------------------------------------------------------- fixture and data

def test_fixture_is_a_captioned_stable_diffusion_folder(digits_text_target):
    model = digits_text_target / "model"
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    weights = [p for p in model.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert (model / "tokenizer" / "vocab.json").exists() and (model / "tokenizer" / "merges.txt").exists()
    sets = {n: load_images(digits_text_target / n, name=n) for n in ("members", "holdout", "null")}
    for s in sets.values():
        assert len(s.captions) == len(s) and all(c.startswith("a handwritten digit ") for c in s.captions)
    all_caps = [c for s in sets.values() for c in s.captions]
    assert len(set(all_caps)) == len(all_caps)  # every caption names one image
    # the id word is random, not split-ordered: members' ids are not the alphabetically first ones
    ids = sorted(c.rsplit(" ", 1)[1] for c in all_caps)
    member_ids = {c.rsplit(" ", 1)[1] for c in sets["members"].captions}
    assert member_ids != set(ids[: len(member_ids)])


def test_tokenizer_keeps_caption_words_whole(digits_text_denoiser, digits_text_target):
    tok = digits_text_denoiser.tokenizer
    caps = load_images(digits_text_target / "members", name="m").captions
    words = {w for c in caps for w in c.replace(",", " , ").split()}
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in words)


def test_captions_from_metadata_csv_subset_and_errors(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "metadata.csv").write_text("file_name,text\nim2.png,two\nim0.png,zero\nim1.png,\"one, again\"\n")
    s = load_images(tmp_path, name="members")
    assert s.captions == ("zero", "one, again", "two")
    assert s.subset([2, 0]).captions == ("two", "zero")
    assert "captions_sha256" in s.fingerprint()
    (tmp_path / "metadata.csv").write_text("file_name,text\nim0.png,zero\nim1.png,one\n")
    with pytest.raises(InputError, match="im2.png: no caption"):
        load_images(tmp_path, name="members")
    (tmp_path / "metadata.csv").write_text("file_name,class\nim0.png,0\n")
    with pytest.raises(InputError, match="needs a file_name column and one of text"):
        load_images(tmp_path, name="members")
    (tmp_path / "metadata.csv").unlink()
    assert load_images(tmp_path, name="members").captions == ()
    arr = np.zeros((2, 1, 8, 8), np.uint8)
    assert ImageSet.from_array(arr, name="a", captions=["x", "y"]).captions == ("x", "y")


def _save_as_dataset(images: ImageSet, out: Path) -> Path:
    """Write an image set the way a `datasets` user would: Image + text columns, save_to_disk."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    pil = [Image.fromarray(a[0]) for a in images.uint8()]
    ds = datasets.Dataset.from_dict({"image": pil, "text": list(images.captions)}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(out))
    return out


def test_saved_dataset_loads_like_its_image_folder(digits_text_target, tmp_path):
    folder = load_images(digits_text_target / "members", name="members")
    saved = load_images(_save_as_dataset(folder, tmp_path / "ds"), name="members", channels=1, size=8)
    assert len(saved) == len(folder) and saved.captions == folder.captions
    assert np.array_equal(saved.uint8(), folder.uint8()) and np.array_equal(saved.uint8([3, 1]), folder.uint8([3, 1]))
    assert saved.ids[0] == "ds[0]" and saved.fingerprint()["count"] == len(folder)
    assert saved.subset([2]).captions == folder.captions[2:3]


def test_scan_accepts_saved_datasets(digits_text_target, tmp_path):
    """A `datasets` folder works wherever an image folder does, captions included."""
    from privaudit.cli import main

    m = _save_as_dataset(load_images(digits_text_target / "members", name="m"), tmp_path / "members")
    h = _save_as_dataset(load_images(digits_text_target / "holdout", name="h").subset(range(64)), tmp_path / "holdout")
    out = tmp_path / "run"
    code = main(["scan", str(digits_text_target / "model"), "--members", str(m), "--holdout", str(h), "--out", str(out),
                 "--attacks", "loss", "--detectors", "", "--device", "cpu", "--quiet", "--bootstrap", "20"])
    res = json.loads((out / "results.json").read_text())
    loss = plugin(res, "loss")
    assert code in (0, 1) and loss["status"] == "ok" and loss["details"]["conditioning"]["prompt"] == "captions"
    assert loss["metrics"]["auc"]["value"] >= 0.9


# ---------------------------------------------------------------------------- loading and the denoiser

def test_latent_denoiser_encodes_conditions_and_tiles(digits_text_denoiser, digits_text_target):
    from privaudit.model.denoiser import cond_tile as tile
    from privaudit.model.latent import LatentTextDenoiser

    den = digits_text_denoiser
    assert isinstance(den, LatentTextDenoiser) and den.text_conditional
    assert den.sample_shape == (4, 4, 4) and den.image_shape == (1, 8, 8)
    members = load_images(digits_text_target / "members", name="members")
    x = members.tensor()
    z = den.encode(x)
    assert z.shape == (len(x), 4, 4, 4)
    rec_err = (den.decode(z) - x).flatten(1).norm(dim=1)
    between = torch.cdist(x.flatten(1), x.flatten(1)).fill_diagonal_(float("inf")).min(1).values
    assert (rec_err < between / 3).all()  # the VAE round trip stays far closer than any other digit
    caps = list(members.captions[:3])
    with torch.no_grad():
        zt = torch.randn((3, *den.sample_shape), generator=torch.Generator().manual_seed(0))
        e_list = den.eps(zt, 500, caps)
        e_emb = den.eps(zt, 500, den.prompt_embeddings(caps))
        e_none, e_empty = den.eps(zt, 500), den.eps(zt, 500, "")
        e_tiled = den.eps(zt.repeat(2, 1, 1, 1), 500, caps)
    assert torch.allclose(e_list, e_emb) and torch.equal(e_none, e_empty)
    assert torch.allclose(e_tiled[3:], e_list, atol=1e-5)
    assert not torch.allclose(e_list, e_none, atol=1e-3)
    with pytest.raises(ValueError, match="cannot be tiled"):
        tile(den.prompt_embeddings(caps), 4)


def test_fit_view_conditions_each_set_by_its_rows(digits_text_denoiser, digits_text_target):
    from privaudit.model.latent import fit_inputs

    den = digits_text_denoiser
    m = load_images(digits_text_target / "members", name="members")
    h = load_images(digits_text_target / "holdout", name="holdout")
    view, zm, zh, cal_m, cal_h = fit_inputs(den, m, np.arange(16), h, np.arange(64))
    assert len(cal_m) == 16 and len(cal_h) == 63 and np.gcd(16, 63) == 1  # coprime: no ambiguous batch
    with torch.no_grad():
        a = view.eps(zm.repeat(4, 1, 1, 1), 300)[:16]
        b = den.eps(zm, 300, list(m.captions[:16]))
        c = view.eps(zh, 300)
        d = den.eps(zh, 300, list(h.captions[:63]))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(c, d, atol=1e-5)


def test_pixel_models_pass_through_unchanged():
    from privaudit.model.latent import attack_inputs, latent_of
    from privaudit.testing.oracles import EmpiricalOracle

    x = torch.rand(4, 1, 8, 8) * 2 - 1
    oracle = EmpiricalOracle(x)
    assert latent_of(oracle) is None
    xb = x[:2]
    den, y = attack_inputs(oracle, ImageSet.from_array(np.zeros((4, 1, 8, 8), np.uint8), name="m"), [0, 1], xb)
    assert den is oracle and y is xb


def test_gsa_takes_gradients_at_each_images_caption(digits_text_denoiser, digits_text_target):
    """White-box GSA on a text model: per-image gradients at the image's own caption (vmapped),
    equal to a plain autograd computation image by image, and unlike the empty prompt's."""
    from privaudit.model.latent import attack_inputs
    from privaudit.plugins.attacks.gsa import GSAAttack

    members = load_images(digits_text_target / "members", name="m")
    view, z = attack_inputs(digits_text_denoiser, members, [0, 1], members.tensor([0, 1]))
    attack = GSAAttack(n_timesteps=2)
    noise = Noise.for_images(z, seed=0)
    got = attack.features(view, z, noise=noise, cond=view.conditioning(2))
    empty = attack.features(view, z, noise=noise)
    ts = torch.tensor(attack.timesteps(view))
    a = view.alphas_cumprod[ts].view(-1, 1, 1, 1)
    eps = noise.randn((2, len(ts), *z.shape[1:]), tag="gsa")
    unet = digits_text_denoiser.unet
    params = [p for p in unet.parameters()]
    for i in range(2):
        x_t = a.sqrt() * z[i] + (1 - a).sqrt() * eps[i]
        emb = view.conditioning(2)[i:i + 1].expand(len(ts), -1, -1)
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            loss = (unet(x_t, ts, encoder_hidden_states=emb).sample - eps[i]).pow(2).mean()
            grads = torch.autograd.grad(loss, params)
            for p in params:
                p.requires_grad_(False)
        np.testing.assert_allclose(got[i], [g.norm().item() for g in grads], rtol=2e-3, atol=1e-7)
    assert not np.allclose(got, empty, rtol=1e-2)


def test_fixture_cli_reuses_the_cached_build(digits_text_target, capsys):
    from privaudit.cli import main

    assert main(["fixture", "digits-text", "--out", str(digits_text_target), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(digits_text_target)


# ---------------------------------------------------------------------------- audits on the fixture

def test_attacks_run_on_the_conditional_model(text_member_scan, text_null_scan):
    for name in ("loss", "pia", "sima", "gsa"):
        p = plugin(text_member_scan, name)
        assert p["status"] == "ok", p["reason"]
        assert p["details"]["conditioning"]["prompt"] == "captions"
    assert plugin(text_member_scan, "loss")["metrics"]["auc"]["value"] >= 0.9
    assert plugin(text_member_scan, "pia")["metrics"]["auc"]["value"] >= 0.9
    assert plugin(text_null_scan, "loss")["metrics"]["auc"]["value"] < 0.8
    assert text_member_scan["target"]["text_conditional"] is True
    assert list(text_member_scan["target"]["latent_shape"]) == [4, 4, 4]


def test_memorised_prompts_are_detected(text_member_scan, text_null_scan):
    p = plugin(text_member_scan, "memprompt")
    assert p["status"] == "ok", p["reason"]
    assert p["metrics"]["auc"]["value"] >= 0.9
    assert p["severity"] in ("high", "critical")
    null = plugin(text_null_scan, "memprompt")
    assert null["metrics"]["auc"]["value"] < 0.75  # unseen captions vs unseen captions: chance


def test_prompt_level_copies_and_diversity(text_member_scan):
    p = plugin(text_member_scan, "promptcopy")
    assert p["status"] == "ok", p["reason"]
    m = p["metrics"]
    assert m["copy_fraction"]["value"] >= 0.5  # memorised captions return their training images
    assert m["own_copy_fraction"]["value"] >= 0.5
    assert m["mean_diversity"]["value"] < 0.5 * m["holdout_diversity"]["value"]  # mode collapse
    assert m["collapsed_prompt_fraction"]["value"] >= 0.5
    assert p["details"]["examples"] and p["details"]["examples"][0]["generations_png"][0].startswith("data:image/png")
    nn = plugin(text_member_scan, "nn")  # unconditional samples, decoded from latents
    assert nn["status"] == "ok", nn["reason"]


def test_empty_prompt_mode_and_written_run(digits_text_target, tmp_path):
    res = text_scan(digits_text_target, tmp_path / "run", attacks=("loss",), prompt="empty")
    loss = plugin(res, "loss")
    assert loss["status"] == "ok" and loss["details"]["conditioning"]["prompt"] == "empty prompt"
    assert (tmp_path / "run" / "results.json").exists() and (tmp_path / "run" / "report.html").exists()


def test_prompt_detectors_skip_pixel_models():
    from privaudit.api.registry import Registry
    from privaudit.audit.runner import AuditSettings, audit
    from privaudit.testing.oracles import EmpiricalOracle

    x = np.random.default_rng(0).integers(0, 255, (8, 1, 8, 8), dtype=np.uint8)
    m, h = ImageSet.from_array(x[:4], name="m"), ImageSet.from_array(x[4:], name="h")
    res = audit(denoiser=EmpiricalOracle(m), members=m, holdout=h, registry=Registry.build(),
                settings=AuditSettings(attacks=(), detectors=("memprompt", "promptcopy"), progress=False, n_boot=10))
    for p in res["plugins"]:
        assert p["status"] == "skipped" and "text" in p["reason"]


# ---------------------------------------------------------------------------- detector internals

def test_prompt_file_with_and_without_labels(digits_text_denoiser, digits_text_target, tmp_path):
    from privaudit.plugins.detectors.memprompt import MemorisedPromptDetector, read_prompt_file

    lines = (digits_text_target / "prompts.tsv").read_text().splitlines()
    pos = [ln for ln in lines if ln.endswith("\t1")][:8]
    neg = [ln for ln in lines if ln.endswith("\t0")][:8]
    f = tmp_path / "p.tsv"
    f.write_text("# memorised?\n" + "\n".join(pos + neg) + "\n\n")
    prompts, y = read_prompt_file(f)
    assert len(prompts) == 16 and y.tolist() == [1] * 8 + [0] * 8
    ctx = SimpleNamespace(denoiser=digits_text_denoiser, seed=0, progress=False, settings=SimpleNamespace(n_boot=50))
    out = MemorisedPromptDetector(prompts=str(f), n_steps=3, steps=20, n_seeds=2).detect(ctx)
    assert out.metrics["auc"].value >= 0.8 and len(out.table) == 16
    g = tmp_path / "plain.txt"
    g.write_text("\n".join(p.split("\t")[0] for p in pos[:3]) + "\n")
    out = MemorisedPromptDetector(prompts=str(g), n_steps=2, steps=20, n_seeds=2).detect(ctx)
    assert "auc" not in out.metrics and sorted(out.table["rank"]) == [1, 2, 3]
    bad = tmp_path / "bad.tsv"
    bad.write_text("a prompt\t1\nanother\n")
    with pytest.raises(InputError, match="bad.tsv:2"):
        read_prompt_file(bad)
    bad.write_text("a prompt\tmaybe\n")
    with pytest.raises(InputError, match="label 'maybe'"):
        read_prompt_file(bad)


def test_max_clique_is_exact():
    from privaudit.plugins.detectors.promptcopy import max_clique

    adj = np.zeros((7, 7), bool)
    for a, b in [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (4, 5), (3, 5), (2, 4), (2, 5)]:
        adj[a, b] = adj[b, a] = True
    assert max_clique(adj) == 4  # {2, 3, 4, 5}
    assert max_clique(np.zeros((3, 3), bool)) == 1
    assert max_clique(np.ones((5, 5), bool)) == 5


# ---------------------------------------------------------------------------- CPSample on latents

class _Ctx(SimpleNamespace):
    def feature(self, name):
        from privaudit.plugins.features.pixels import PixelFeatures

        return PixelFeatures()

    def features(self, extractor, images, *, label, batch_size=None):
        from privaudit.api.stages import transform_batches

        return transform_batches(extractor, images, batch_size=batch_size or 128)


def test_cpsample_on_latents_raises_diversity_and_lowers_copies(digits_text_denoiser, digits_text_target, tmp_path):
    from privaudit.model.target import load_target
    from privaudit.plugins.detectors.promptcopy import PromptReplicationDetector
    from privaudit.plugins.mitigations.cpsample.guard import guard_for
    from privaudit.plugins.mitigations.cpsample.text_pipeline import CPSampleTextPipeline
    from privaudit.plugins.mitigations.cpsample.train import evaluate_guard, random_labels, train_guard

    den = digits_text_denoiser
    m = load_images(digits_text_target / "members", name="members")
    h = load_images(digits_text_target / "holdout", name="holdout")
    ref = load_images(digits_text_target / "reference", name="reference")
    torch.manual_seed(0)
    guard = guard_for(den.unet.config, block_out_channels=(16, 32))  # sized for the 4x4x4 latents
    assert guard.config.in_channels == 4 and guard.config.sample_size == 4
    train = lambda g, **kw: train_guard(g, members=den.encode(m.tensor()), labels=torch.from_numpy(random_labels(len(m), seed=0)),
                                        alphas_cumprod=den.alphas_cumprod, nonmembers=den.encode(ref.tensor()),
                                        nonmember_weight=1.0, max_steps=3000, target_accuracy=0.97, fit_t=0.2, alpha=0.4,
                                        seed=0, progress=False, **kw)
    stats = train(guard)
    assert stats.reached_target and stats.reached_specificity and stats.unseen_gate_rate <= 0.05
    # stopping on member accuracy alone leaves a guard whose gate fires on unseen latents too
    torch.manual_seed(0)
    early = guard_for(den.unet.config, block_out_channels=(16, 32))
    early_stats = train(early, max_unseen_gate=None)
    assert early_stats.steps < stats.steps and early_stats.unseen_gate_rate is None
    z_h = den.encode(h.tensor())
    gate = lambda g: evaluate_guard(g, z_h, None, alphas_cumprod=den.alphas_cumprod, alpha=0.4, seed=3).gate_rate["t0-99"]
    assert gate(guard) < 0.15 and gate(early) > gate(guard) + 0.2
    pipe = CPSampleTextPipeline(vae=den.vae, text_encoder=den.text_encoder, tokenizer=den.tokenizer, unet=den.unet,
                                scheduler=den.scheduler, guard=guard, alpha=0.4, scale=100.0)
    pipe.save_pretrained(tmp_path / "protected", safe_serialization=True)
    protected, info, loaded = load_target(tmp_path / "protected", device="cpu")  # what ships is what is audited
    assert type(loaded).__name__ == "CPSampleTextPipeline" and info.text_conditional and info.resolution == 8
    images = loaded(list(m.captions[:2]), num_images_per_prompt=2, num_inference_steps=5, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (4, 8, 8, 1) and 0 <= images.min() and images.max() <= 1

    detector = PromptReplicationDetector(n_prompts=12, unseen_prompts=False, n_per_prompt=6, steps=20)
    ctx = lambda d: _Ctx(denoiser=d, members=m, holdout=h, seed=0, progress=False, settings=SimpleNamespace(n_boot=50))
    before, after = detector.detect(ctx(den)).metrics, detector.detect(ctx(protected)).metrics
    assert after["mean_diversity"].value > 2 * before["mean_diversity"].value
    assert after["copy_fraction"].value < before["copy_fraction"].value - 0.3
    assert protected.guided_ > 0


def test_mitigate_runs_on_the_text_fixture(digits_text_target, tmp_path):
    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigate

    settings = AuditSettings(attacks=("loss",), detectors=("promptcopy",), progress=False, n_boot=50,
                             plugin_params={"promptcopy": {"n_prompts": 8, "unseen_prompts": False, "n_per_prompt": 4,
                                                           "steps": 10}})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = mitigate(model_dir=digits_text_target / "model", members=digits_text_target / "members",
                       holdout=digits_text_target / "holdout", out=tmp_path / "mit", method="cpsample",
                       params={"placebo": False, "rejection": False, "max_steps": 1500},
                       settings=settings, device="cpu", log=lambda msg: None)
    finally:
        torch.set_num_threads(n)
    before, after = plugin(res["before"], "promptcopy"), plugin(res["after"], "promptcopy")
    assert before["status"] == after["status"] == "ok"
    assert after["metrics"]["mean_diversity"]["value"] > before["metrics"]["mean_diversity"]["value"]
    index = json.loads((tmp_path / "mit" / "protected" / "model_index.json").read_text())
    assert index["_class_name"] == "CPSampleTextPipeline" and index["text_encoder"][0] == "transformers"
    assert (tmp_path / "mit" / "report.html").exists()
    # the model card's loading recipe works in a fresh process (the class is registered by the package import)
    import subprocess
    import sys

    code = ("import privaudit.plugins.mitigations.cpsample\nfrom diffusers import DiffusionPipeline\n"
            f"p = DiffusionPipeline.from_pretrained({str(tmp_path / 'mit' / 'protected')!r})\n"
            "print(type(p).__name__, len(p(['a handwritten digit one'], num_inference_steps=2).images))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-2:] == ["CPSampleTextPipeline", "1"], done.stderr[-2000:]
