"""Fine-tune audits on the digits-lora fixture: --lora / --base, base-model calibration, eps_hat in the scan,
and `privaudit query` (dataset inference) with its acceptance checks."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binom

from privaudit.audit.runner import AuditSettings, scan
from privaudit.cli import main
from privaudit.io.errors import InputError

pytestmark = pytest.mark.slow
ATTACKS = ("loss", "pia")


def _settings(**kw):
    return AuditSettings(attacks=kw.pop("attacks", ATTACKS), detectors=(), progress=False, n_boot=100, **kw)


def _plugin(results, name):
    return next(p for p in results["plugins"] if p["name"] == name)


def _auc(m, h):
    m, h = np.asarray(m), np.asarray(h)
    return float((m[:, None] > h[None, :]).mean() + 0.5 * (m[:, None] == h[None, :]).mean())


@pytest.fixture(scope="module")
def lora_scan(digits_lora_target, tmp_path_factory):
    t = digits_lora_target
    return scan(model_dir=t / "base", lora=t / "lora", members=t / "members", holdout=t / "holdout",
                out=tmp_path_factory.mktemp("lora") / "run", settings=_settings(), device="cpu")


@pytest.fixture(scope="module")
def lora_null_scan(digits_lora_target, tmp_path_factory):
    t = digits_lora_target
    return scan(model_dir=t / "base", lora=t / "lora", members=t / "null", holdout=t / "holdout",
                out=tmp_path_factory.mktemp("lora-null") / "run", settings=_settings(), device="cpu")


def test_fixture_layout(digits_lora_target, digits_text_target):
    t = digits_lora_target
    meta = json.loads((t / "fixture.json").read_text())
    assert meta["sizes"] == {"members": 32, "holdout": 128, "null": 64}
    assert (t / "lora" / "pytorch_lora_weights.safetensors").is_file() and (t / "merged" / "model_index.json").is_file()

    def captions(folder):
        return {json.loads(line)["text"] for line in (folder / "metadata.jsonl").read_text().splitlines()}

    # the fine-tune's sets are disjoint, and none of its images trained the base (captions name one image each)
    sets = {n: captions(t / n) for n in ("members", "holdout", "null")}
    assert [len(v) for v in sets.values()] == [32, 128, 64]
    assert not (sets["members"] & sets["holdout"]) and not (sets["members"] & sets["null"])
    assert not (sets["members"] | sets["holdout"] | sets["null"]) & captions(digits_text_target / "members")


def test_lora_acceptance_base_blind_adapted_memorises(lora_scan):
    s = lora_scan["scores"]
    m, h = s[s.set == "member"], s[s.set == "holdout"]
    # the base model never saw the fine-tune's members: chance, on every image
    assert abs(_auc(m["loss (base)"], h["loss (base)"]) - 0.5) <= 0.1
    # the adapted model memorised them
    assert _plugin(lora_scan, "loss")["metrics"]["auc"]["value"] >= 0.9
    assert lora_scan["target"]["adapter"].endswith("lora") and lora_scan["target"]["base"]
    assert any(k.startswith("lora:") for k in lora_scan["target"]["weights_sha256"])


def test_null_control_is_quiet(lora_null_scan):
    for p in lora_null_scan["plugins"]:
        assert p["status"] == "ok"
        assert p["metrics"]["auc"]["ci"][0] < 0.5 < p["metrics"]["auc"]["ci"][1] + 0.1, p["name"]
    assert lora_null_scan["verdict"]["level"] in ("info", "low")


def test_calibrated_attacks_reported_beside_raw(lora_scan):
    names = [p["name"] for p in lora_scan["plugins"]]
    assert names == ["loss", "loss (base-calibrated)", "pia", "pia (base-calibrated)"]
    s = lora_scan["scores"]
    for a in ATTACKS:
        cal = _plugin(lora_scan, f"{a} (base-calibrated)")
        beta = cal["details"]["fitted"]["beta"]
        assert 0 <= beta <= 1
        # calibrated = fine-tuned - beta * base, per image
        np.testing.assert_allclose(s[f"{a} (base-calibrated)"], s[a] - beta * s[f"{a} (base)"], rtol=1e-4, atol=1e-4)
        assert cal["queries_per_image"] == 2 * _plugin(lora_scan, a)["queries_per_image"]
        assert "auc" in cal["details"]["base_only"]
    pairs = {p["attack"]: p for p in lora_scan["base_calibration"]["pairs"]}
    assert set(pairs) == set(ATTACKS) and all(p["calibrated_tpr_at_fpr_0.01"] is not None for p in pairs.values())
    # the ensemble ranks raw and calibrated attacks together
    assert set(lora_scan["ensemble"]["metrics"]["auc"]["by_attack"]) == set(names)


def test_epsilon_in_every_scan(lora_scan, lora_null_scan):
    eps = lora_scan["epsilon"]
    assert eps["value"] > 1.0 and eps["label"].startswith("distinguishability") and not eps["randomized_membership"]
    for p in lora_scan["plugins"]:
        e = p["details"]["epsilon"]
        assert e["delta"] == 1e-5 and len(e["counts"]) == 4
    assert lora_null_scan["epsilon"]["value"] < 1.0


def test_full_finetune_with_base_matches_lora(digits_lora_target, lora_scan, tmp_path):
    t = digits_lora_target
    r = scan(model_dir=t / "merged", base=t / "base", members=t / "members", holdout=t / "holdout",
             out=tmp_path / "run", settings=_settings(attacks=("loss",), randomized_membership=True, epsilon_delta=0.0),
             device="cpu")
    np.testing.assert_allclose(r["scores"]["loss"], lora_scan["scores"]["loss"], atol=1e-3)
    assert r["target"]["base"].endswith("base") and not r["target"]["adapter"]
    assert r["epsilon"]["randomized_membership"] and r["epsilon"]["label"].startswith("DP lower bound")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Base-model calibration" in html and "Empirical epsilon" in html and "A lower bound on the training" in html


def test_gsa_takes_adapter_gradients_only(digits_lora_target):
    from privaudit.model.denoiser import audited_parameters
    from privaudit.model.target import load_lora_target, load_target

    den, _, _ = load_lora_target(digits_lora_target / "base", digits_lora_target / "lora", device="cpu")
    names = list(audited_parameters(den.white_box))
    assert names and all("lora_" in n for n in names)
    base, _, _ = load_target(digits_lora_target / "base", device="cpu")
    assert len(audited_parameters(base.white_box)) == len(list(base.white_box.parameters()))


def test_peft_adapter_folder_loads_like_diffusers_file(digits_lora_target, tmp_path):
    from safetensors.torch import load_file, save_file

    from privaudit.model.target import load_lora_target, load_target

    t = digits_lora_target
    state = load_file(str(t / "lora" / "pytorch_lora_weights.safetensors"))
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    save_file({"base_model.model." + k.removeprefix("unet."): v for k, v in state.items()},
              str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 16, "peft_type": "LORA"}))
    import torch

    from privaudit.model.latent import latent_of

    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    outs = []
    for adapter in (t / "lora", peft_dir, t / "lora" / "pytorch_lora_weights.safetensors"):
        den, _, _ = load_lora_target(t / "base", adapter, device="cpu")
        lat = latent_of(den)
        cond = lat.prompt_embeddings(["a handwritten digit one"] * 2)
        with torch.no_grad():
            outs.append(lat.net(x, torch.tensor([100, 100]), cond).sample)
    base, _, _ = load_target(t / "base", device="cpu")
    with torch.no_grad():
        plain = latent_of(base).net(x, torch.tensor([100, 100]), cond).sample
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])
    assert not torch.allclose(plain, outs[0], atol=1e-3)  # the adapter changes the network


@pytest.mark.parametrize("case", ["missing", "pickle", "corrupt", "nan", "empty_dir", "both"])
def test_bad_lora_inputs_exit_2(digits_lora_target, tmp_path, capsys, case):
    import torch
    from safetensors.torch import save_file

    t = digits_lora_target
    extra = []
    if case == "missing":
        lora = tmp_path / "nope.safetensors"
    elif case == "pickle":
        lora = tmp_path / "a.bin"
        torch.save({"x": torch.zeros(1)}, lora)
    elif case == "corrupt":
        lora = tmp_path / "a.safetensors"
        lora.write_bytes(b"not a safetensors file at all")
    elif case == "nan":
        lora = tmp_path / "n.safetensors"
        from safetensors.torch import load_file

        state = load_file(str(t / "lora" / "pytorch_lora_weights.safetensors"))
        k = next(iter(state))
        state[k] = torch.full_like(state[k], float("nan"))
        save_file(state, str(lora))
    elif case == "empty_dir":
        lora = tmp_path / "empty"
        lora.mkdir()
    else:
        lora = t / "lora"
        extra = ["--base", str(t / "base")]
    out = tmp_path / "out"
    rc = main(["scan", str(t / "base"), "--lora", str(lora), *extra, "--members", str(t / "members"), "--holdout",
               str(t / "holdout"), "--out", str(out), "--attacks", "loss", "--detectors", "", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("privaudit: error: "), err
    assert not out.exists()


def test_base_of_another_family_is_refused(digits_lora_target, digits_target, tmp_path):
    t = digits_lora_target
    with pytest.raises(InputError, match="--base does not match"):
        scan(model_dir=t / "merged", base=digits_target / "model", members=t / "members", holdout=t / "holdout",
             out=tmp_path / "run", settings=_settings(attacks=("loss",)), device="cpu")


# ---------------------------------------------------------------------------- privaudit query

def _query(t, suspect, out, **kw):
    from privaudit.audit.query import query

    return query(model_dir=t / "base", lora=t / "lora", suspect=suspect, holdout=t / "holdout", out=out,
                 settings=_settings(**kw), device="cpu", repeats=3)


def test_query_members_are_found_from_few_images(digits_lora_target, tmp_path):
    r = _query(digits_lora_target, digits_lora_target / "members", tmp_path / "q")
    assert r["p_value"] < 1e-3 and r["verdict"]["level"] == "used"
    assert r["curve"]["smallest_n_below_alpha"] is not None and r["curve"]["smallest_n_below_alpha"] <= 32
    saved = json.loads((tmp_path / "q" / "results.json").read_text())
    assert saved["p_value"] == pytest.approx(r["p_value"]) and saved["curve"]["points"]
    html = (tmp_path / "q" / "report.html").read_text()
    assert "Was this collection used" in html and "Per-image p-values" in html


def test_query_null_pvalues_over_seeds(digits_lora_target, lora_null_scan):
    """Never-seen images as suspects: over many random suspect/holdout splits of real model scores, the test
    rejects at alpha 0.05 about 5% of the time."""
    from privaudit.audit.dataset_inference import dataset_test

    s = lora_null_scan["scores"]
    feats = s[list(ATTACKS) + [f"{a} (base-calibrated)" for a in ATTACKS]].to_numpy()
    rng = np.random.default_rng(0)
    ps = []
    for seed in range(60):
        perm = rng.permutation(len(feats))  # null and holdout images are exchangeable: the model saw neither
        ps.append(dataset_test(feats[perm[:32]], feats[perm[32:]], seed=seed).p_value)
    ps = np.array(ps)
    assert (ps < 0.05).sum() <= binom.ppf(0.999, 60, 0.05)
    assert 0.3 < np.median(ps) < 0.7


def test_query_null_set_is_not_reported_used(digits_lora_target, tmp_path):
    r = _query(digits_lora_target, digits_lora_target / "null", tmp_path / "q", attacks=("loss",))
    assert r["verdict"]["level"] == "not_shown" and r["p_value"] > 0.01


def test_query_shifted_suspects_caught_by_blind_baseline(digits_lora_target, tmp_path):
    t = digits_lora_target
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for f in sorted((t / "null").glob("*.png")):  # another "scanner": inverted, brighter strokes
        a = np.asarray(Image.open(f).convert("L"), dtype=np.float64)
        Image.fromarray(np.clip(255 - a * 0.6, 0, 255).astype(np.uint8)).save(shifted / f.name)
    shutil.copy(t / "null" / "metadata.jsonl", shifted / "metadata.jsonl")
    r = _query(t, shifted, tmp_path / "q", attacks=("loss",))
    assert r["verdict"]["level"] == "shifted" and not r["verdict"]["used"]
    assert "blind baseline" in r["verdict"]["message"]


def test_query_one_image_gets_a_rank_pvalue_and_a_warning(digits_lora_target, tmp_path, capsys):
    t = digits_lora_target
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(t / "members" / "members_0000.png", one)
    line = json.loads((t / "members" / "metadata.jsonl").read_text().splitlines()[0])
    (one / "metadata.jsonl").write_text(json.dumps(line) + "\n")
    rc = main(["query", str(t / "base"), "--lora", str(t / "lora"), "--suspect", str(one), "--holdout",
               str(t / "holdout"), "--attacks", "loss", "--out", str(tmp_path / "q"), "--quiet"])
    assert rc == 0
    r = json.loads((tmp_path / "q" / "results.json").read_text())
    assert r["verdict"]["level"] == "too_few" and r["p_value"] is None and r["test"] is None
    (img,) = r["per_image"]["lowest"]
    n = r["per_image"]["n_holdout_test"]
    assert 1 / (n + 1) <= img["p_value"] <= 1 and "cannot prove" in r["per_image"]["warning"]


@pytest.mark.parametrize("case", ["same", "small_holdout", "alpha", "unknown_attack"])
def test_bad_query_inputs_exit_2(digits_lora_target, tmp_path, capsys, case):
    t = digits_lora_target
    suspect, holdout, extra = t / "members", t / "holdout", []
    if case == "same":
        holdout = suspect
    elif case == "small_holdout":
        holdout = tmp_path / "few"
        holdout.mkdir()
        for f in sorted((t / "holdout").glob("*.png"))[:5]:
            shutil.copy(f, holdout)
    elif case == "alpha":
        extra = ["--alpha", "0"]
    else:
        extra = ["--attacks", "nosuch"]
    out = tmp_path / "q"
    rc = main(["query", str(t / "base"), "--lora", str(t / "lora"), "--suspect", str(suspect), "--holdout",
               str(holdout), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("privaudit: error: "), err
    assert not out.exists()


def test_query_report_rerenders(digits_lora_target, tmp_path):
    r = _query(digits_lora_target, digits_lora_target / "members", tmp_path / "q", attacks=("loss",))
    (tmp_path / "q" / "report.html").unlink()
    assert main(["report", str(tmp_path / "q")]) == 0
    assert f"{r['p_value']:.2g}" in (tmp_path / "q" / "report.html").read_text()


def test_gsa_on_a_lora_uses_one_feature_per_adapter_tensor(digits_lora_target, tmp_path):
    from privaudit.model.denoiser import audited_parameters
    from privaudit.model.target import load_lora_target

    t = digits_lora_target
    r = scan(model_dir=t / "base", lora=t / "lora", members=t / "members", holdout=t / "holdout", out=tmp_path / "run",
             settings=_settings(attacks=("gsa",), plugin_params={"gsa": {"n_timesteps": 2}}), device="cpu")
    gsa = _plugin(r, "gsa")
    assert gsa["status"] == "ok", gsa.get("reason")
    den, _, _ = load_lora_target(t / "base", t / "lora", device="cpu")
    assert gsa["details"]["fitted"]["n_features_"] == len(audited_parameters(den.white_box))
    assert not any(p["name"].startswith("gsa (") for p in r["plugins"])  # white-box: no base-calibrated variant


def test_broken_base_scoring_keeps_the_raw_result(digits_lora_target, tmp_path, monkeypatch):
    import privaudit.audit.calibration as calibration  # base scores are taken there

    t = digits_lora_target
    real = calibration.score_set

    def flaky(attack, denoiser, images, *, label, **kw):
        if "(base)" in label:
            raise RuntimeError("base model fell over")
        return real(attack, denoiser, images, label=label, **kw)

    monkeypatch.setattr(calibration, "score_set", flaky)
    r = scan(model_dir=t / "base", lora=t / "lora", members=t / "members", holdout=t / "holdout", out=tmp_path / "run",
             settings=_settings(attacks=("loss",), seed=3), device="cpu")
    assert _plugin(r, "loss")["status"] == "ok"
    cal = _plugin(r, "loss (base-calibrated)")
    assert cal["status"] == "error" and "base model fell over" in cal["reason"]


def test_a_kohya_single_file_lora_scores_as_its_peft_folder(digits_lora_target, tmp_path):
    """The layout most shared LoRAs use (``lora_unet_...`` keys, written here with diffusers' own converter from
    the fixture's adapter) loads through diffusers' ``load_lora_weights`` to the same model; a layer that fits
    nothing is one line naming it."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    from privaudit.io.errors import InputError
    from privaudit.model.target import load_lora_target

    t = digits_lora_target
    kohya = convert_state_dict_to_kohya(load_file(str(t / "lora" / "pytorch_lora_weights.safetensors")))
    assert all(k.startswith("lora_unet_") for k in kohya)
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    a, ia, _ = load_lora_target(t / "base", t / "lora", device="cpu")
    b, ib, _ = load_lora_target(t / "base", tmp_path / "kohya.safetensors", device="cpu")
    assert ia.lora_layers == ib.lora_layers and ib.lora_layers["unet"] > 0
    x = torch.randn((3, *a.sample_shape), generator=torch.Generator().manual_seed(0))
    emb = a.prompt_embeddings(["a handwritten digit one", "a handwritten digit two", ""])
    assert torch.equal(a.eps(x, 400, emb), b.eps(x, 400, emb))
    stem = next(k for k in kohya if k.endswith("proj_in.lora_down.weight")).removesuffix(".lora_down.weight")
    moved = stem.replace("down_blocks_0", "down_blocks_7")
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        kohya[moved + suffix] = kohya.pop(stem + suffix)
    save_file(kohya, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match=r"1 of \d+ unet LoRA layers did not load \(e\.g\. down_blocks_7_"):
        load_lora_target(t / "base", tmp_path / "bad.safetensors", device="cpu")


def test_a_kohya_lora_with_text_encoder_layers_applies_them(digits_lora_target, tmp_path):
    """A kohya file with UNet and text-encoder layers (written by diffusers' converter from PEFT adapters on the
    modules kohya's trainer adapts: attention projections and MLP) loads both: the run's target counts the
    text-encoder layers, the prompt embeddings are the adapted encoder's, and the base view (for base-calibrated
    scores) embeds prompts without them. (diffusers 0.42 infers the text-encoder keys' type from an attention
    output layer: a file without out_proj fails to load, reported as one line.)"""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, inject_adapter_in_model
    from safetensors.torch import load_file, save_file

    from privaudit.model.target import adapter_free_view, load_lora_target, load_target

    t = digits_lora_target
    base, _, _ = load_target(t / "base", device="cpu")
    _, _, pipe = load_target(t / "base", device="cpu")  # another copy: its text encoder gets a PEFT adapter
    torch.manual_seed(0)
    te = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                                            init_lora_weights=False), pipe.text_encoder)
    te_state = {f"text_encoder.{k.replace('.default', '')}": v for k, v in te.state_dict().items() if "lora_" in k}
    ids = pipe.tokenizer(["a handwritten digit one", ""], padding="max_length", return_tensors="pt",
                         max_length=pipe.tokenizer.model_max_length).input_ids
    with torch.no_grad():
        adapted = te(ids)[0]
    kohya = {**convert_state_dict_to_kohya(load_file(str(t / "lora" / "pytorch_lora_weights.safetensors"))),
             **convert_state_dict_to_kohya(te_state)}
    assert any(k.startswith("lora_te") for k in kohya) and any(k.startswith("lora_unet_") for k in kohya)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(tmp_path / "kohya-te.safetensors"))
    den, info, _ = load_lora_target(t / "base", tmp_path / "kohya-te.safetensors", device="cpu")
    _, unet_only, _ = load_lora_target(t / "base", t / "lora", device="cpu")
    assert info.lora_layers == {**unet_only.lora_layers, "text_encoder": len(te_state) // 2}
    torch.testing.assert_close(den.prompt_embeddings(["a handwritten digit one", ""]), adapted, rtol=0, atol=0)
    off = adapter_free_view(den).prompt_embeddings(["a handwritten digit one", ""])
    torch.testing.assert_close(off, base.prompt_embeddings(["a handwritten digit one", ""]), rtol=0, atol=0)
    assert not torch.allclose(off, adapted)
    # A1111's SD 1.x layout: lora_te_text_model_encoder_... (transformers 4's CLIP module names; diffusers'
    # converter writes lora_te1_ and, under transformers 5, no text_model_)
    a1111 = {(k if k.startswith("lora_unet_") else "lora_te_text_model_" + k.removeprefix("lora_te1_")
              .removeprefix("text_model_")): v for k, v in kohya.items()}
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in a1111)
    save_file({k: v.contiguous() for k, v in a1111.items()}, str(tmp_path / "a1111.safetensors"))
    den2, info2, _ = load_lora_target(t / "base", tmp_path / "a1111.safetensors", device="cpu")
    assert info2.lora_layers == info.lora_layers
    torch.testing.assert_close(den2.prompt_embeddings(["a handwritten digit one", ""]), adapted, rtol=0, atol=0)


def test_lora_base_is_the_same_networks_with_the_adapter_off(digits_lora_target):
    """--lora's base (for base-calibrated scores) is a view of the adapted model's own networks with the adapter
    layers off: the base's exact answers, its own prompt embeddings, no second copy of the weights."""
    from privaudit.model.target import adapter_free_view, load_lora_target, load_target

    t = digits_lora_target
    den, _, _ = load_lora_target(t / "base", t / "lora", device="cpu")
    view = adapter_free_view(den)
    base, _, _ = load_target(t / "base", device="cpu")
    z = torch.randn(4, *den.sample_shape, generator=torch.Generator().manual_seed(0))
    caps = [json.loads(line)["text"] for line in (t / "members" / "metadata.jsonl").read_text().splitlines()[:4]]
    adapted = den.eps(z, 300, caps)
    for step in (50, 300, 900):
        torch.testing.assert_close(view.eps(z, step, caps), base.eps(z, step, caps), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(den.eps(z, 300, caps), adapted, rtol=0, atol=0)  # the adapter is back on for den
    assert not torch.allclose(adapted, base.eps(z, 300, caps), atol=1e-4)
    torch.testing.assert_close(view.prompt_embeddings(caps), base.prompt_embeddings(caps))
    assert view.fingerprint not in (den.fingerprint, "") and view.white_box is None
    ptrs = lambda d: {p.data_ptr() for m in (d.net, *d.encoders.values()) for p in m.parameters()}  # noqa: E731
    assert ptrs(view) == ptrs(den)  # one copy of the weights
    assert not any(p.requires_grad for p in den.net.parameters())  # switching the adapter back froze it again
    import pickle

    shipped = pickle.loads(pickle.dumps(view))  # as a Ray actor receives it: the adapted model, adapters off
    torch.testing.assert_close(shipped.eps(z, 300, caps), base.eps(z, 300, caps), rtol=1e-5, atol=1e-6)
    assert shipped.fingerprint == view.fingerprint
