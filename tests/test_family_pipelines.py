"""Every latent family a user would audit, end to end on tiny random-weight pipelines (built offline):
the adapter chosen by network class, a scan with every attack and ``nn``, ``mitigate --method
cpsample``, and the protected folder loading with ``DiffusionPipeline.from_pretrained`` and sampling
in a fresh process. Random weights: the numbers mean nothing; the plumbing is what is tested."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import plugin

ADAPTER = {"sdxl": "SDXLDenoiser", "dit": "DiTDenoiser", "pixart": "PixArtDenoiser", "sd3": "SD3Denoiser",
           "flux": "FluxDenoiser"}
ATTACKS = ("loss", "secmi", "pia", "pian", "sima", "gsa")
SMALL = {"nn": {"n_samples": 8, "steps": 3}, "gsa": {"n_timesteps": 2}, "loss": {"timesteps": (100, 200), "k": 1}}


@pytest.fixture(scope="session", params=list(ADAPTER))
def family(request, digits_text_target, tmp_path_factory) -> tuple[str, Path]:
    import family_pipelines

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return request.param, family_pipelines.build(request.param, digits_text_target,
                                                     tmp_path_factory.mktemp(request.param))
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
def test_family_scans_with_every_attack_mitigates_and_ships(family, tmp_path):
    from privaudit.audit.runner import AuditSettings, scan
    from privaudit.mitigation.flow import mitigate
    from privaudit.model.target import load_target

    name, folder = family
    den, info, _ = load_target(folder / "model", device="cpu")
    assert type(den).__name__ == ADAPTER[name]
    assert info.prediction_type == ("flow" if name in ("sd3", "flux") else "epsilon")
    settings = AuditSettings(attacks=ATTACKS, detectors=("nn",), progress=False, n_boot=10, plugin_params=SMALL)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = scan(model_dir=folder / "model", members=folder / "members", holdout=folder / "holdout",
                   out=tmp_path / "scan", settings=settings, device="cpu")
        assert {p["name"]: p["status"] for p in res["plugins"]} == {p: "ok" for p in (*ATTACKS, "nn")}, \
            [(p["name"], p["reason"]) for p in res["plugins"] if p["status"] != "ok"]
        mit = mitigate(model_dir=folder / "model", members=folder / "members", holdout=folder / "holdout",
                       out=tmp_path / "mit", method="cpsample",
                       params={"placebo": False, "rejection": False, "max_steps": 10, "max_unseen_gate": None},
                       settings=AuditSettings(attacks=("loss",), detectors=("nn",), progress=False, n_boot=10,
                                              plugin_params=SMALL), device="cpu", log=lambda msg: None)
    finally:
        torch.set_num_threads(n)
    assert plugin(mit["after"], "loss")["status"] == "ok"
    prompt = "3" if name == "dit" else "a handwritten digit three, sample kavo"
    code = ("import privaudit.plugins.mitigations.cpsample\nfrom diffusers import DiffusionPipeline\n"
            f"p = DiffusionPipeline.from_pretrained({str(tmp_path / 'mit' / 'protected')!r})\n"
            "d = p.as_denoiser(device='cpu')\n"
            f"imgs = p([{prompt!r}], num_inference_steps=2, output_type='np').images\n"
            "import numpy as np\nprint(type(d.inner()).__name__, imgs.shape[0], bool(np.isfinite(imgs).all()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == [ADAPTER[name], "1", "True"], done.stdout


def test_unsupported_denoisers_are_refused_naming_the_families(tmp_path):
    from diffusers import DanceDiffusionPipeline, DDPMScheduler, UNet1DModel

    from privaudit.cli import main

    torch.manual_seed(0)
    unet = UNet1DModel(sample_size=16, in_channels=2, out_channels=2, block_out_channels=(8, 8, 8),
                       down_block_types=("DownBlock1D", "DownBlock1D", "AttnDownBlock1D"),
                       up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
                       mid_block_type="UNetMidBlock1D", extra_in_channels=16, use_timestep_embedding=False)
    DanceDiffusionPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "m", safe_serialization=True)
    (tmp_path / "d").mkdir()
    err = tmp_path / "err"
    with open(err, "w") as f:
        old, sys.stderr = sys.stderr, f
        try:
            code = main(["scan", str(tmp_path / "m"), "--members", str(tmp_path / "d"), "--holdout", str(tmp_path / "d"),
                         "--out", str(tmp_path / "out"), "--quiet"])
        finally:
            sys.stderr = old
    msg = err.read_text()
    assert code == 2, msg
    assert "UNet1DModel is not supported" in msg and "SD3Transformer2DModel" in msg and "DiTTransformer2DModel" in msg


SHIFTS = {"sd3": ({"shift": 3.0}, {"use_dynamic_shifting": True}),
          "flux": ({"use_dynamic_shifting": True, "max_shift": 3.0}, {"shift": 1.0})}


@pytest.mark.parametrize("family", list(SHIFTS), indirect=True)
def test_flow_families_sample_where_their_own_pipeline_does(family):
    """SD3 and Flux are sampled at the noise levels their diffusers pipeline visits: the scheduler's
    ``shift``, or the dynamic shift for the image's token count (with Flux's explicit sigmas),
    read from what the pipeline itself set on its scheduler."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from privaudit.model.denoiser import sampling_scheduler
    from privaudit.model.target import load_pipeline, load_target

    name, folder = family
    for extra in SHIFTS[name]:
        pipe = load_pipeline(folder / "model", device=torch.device("cpu"))
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **extra)
        pipe.set_progress_bar_config(disable=True)
        den, _, _ = load_target(folder / "model", device="cpu")
        den.flow_scheduler = pipe.scheduler
        size = den.image_shape[-1]
        steps = 6
        pipe("a handwritten digit three", num_inference_steps=steps, height=size, width=size, output_type="latent",
             generator=torch.Generator().manual_seed(0))
        visited = pipe.scheduler.sigmas[:-1].double()
        ts = sampling_scheduler(den, "ddim", steps).timesteps
        assert len(ts) == steps, extra
        spacing = 1 / (den.num_train_timesteps + 1)  # the audit's grid: the nearest point lies within it
        assert torch.allclose(den.sigmas[ts].double(), visited, atol=spacing), (extra, den.sigmas[ts], visited)
        uniform = torch.from_numpy(np.linspace(1.0, 1 / steps, steps)) if name == "flux" else None
        if "shift" not in extra or extra["shift"] != 1.0:  # the config took effect: not the unshifted grid
            plain = FlowMatchEulerDiscreteScheduler()
            plain.set_timesteps(steps)
            base = uniform if uniform is not None else plain.sigmas[:-1].double()
            assert (visited - base.double()).abs().max() > 0.02, extra


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"], indirect=True)
def test_transformer_loras_load_as_peft_folders_and_diffusers_files(family, tmp_path):
    """LoRA on the transformer families: an adapter on SD3's or Flux's transformer, saved as a peft folder
    and as diffusers' LoRA file, loads through ``--lora`` to the same adapted model (which is not the base);
    PixArt, whose pipeline diffusers gives no LoRA loader, is refused in one line."""
    import json

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from privaudit.io.errors import InputError
    from privaudit.model.target import load_lora_target, load_pipeline, load_target

    name, folder = family
    if name == "pixart":
        save_file({"transformer.x.lora_A.weight": torch.zeros(2, 2)}, str(tmp_path / "a.safetensors"))
        with pytest.raises(InputError, match="diffusers loads no LoRA adapter into PixArtAlphaPipeline"):
            load_lora_target(folder / "model", tmp_path / "a.safetensors", device="cpu")
        return
    pipe = load_pipeline(folder / "model", device=torch.device("cpu"))
    net = pipe.transformer
    net.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    for n, p in net.named_parameters():
        if ".lora_B." in n:
            torch.nn.init.normal_(p, std=0.5)  # peft starts B at zero (no change): make the adapter act
    layers = get_peft_model_state_dict(net)
    (tmp_path / "peft").mkdir()
    save_file({"base_model.model." + k: v.contiguous() for k, v in layers.items()},
              str(tmp_path / "peft" / "adapter_model.safetensors"))
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    # diffusers' file format loads with alpha = rank: fold peft's lora_alpha / r = 2 into B
    type(pipe).save_lora_weights(tmp_path / "diffusers", transformer_lora_layers={
        k: (2 * v if ".lora_B." in k else v) for k, v in layers.items()}, safe_serialization=True)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    outs, counts = [], []
    for adapter in (tmp_path / "peft", tmp_path / "diffusers"):
        den, info, _ = load_lora_target(folder / "model", adapter, device="cpu")
        counts.append(info.lora_layers)
        outs.append(den.eps(x, 500, den.prompt_embeddings(["a handwritten digit one", ""])))
    base, _, _ = load_target(folder / "model", device="cpu")
    plain = base.eps(x, 500, base.prompt_embeddings(["a handwritten digit one", ""]))
    assert counts[0] == counts[1] and counts[0]["transformer"] == sum(".lora_A." in k for k in layers)
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(plain, outs[0], atol=1e-3)
    if name == "sd3":  # diffusers 0.42 converts no kohya layout for SD3: one line that says so
        stem = "lora_unet_joint_blocks_0_x_block_attn_proj"
        save_file({f"{stem}.lora_down.weight": torch.randn(4, 16), f"{stem}.lora_up.weight": torch.randn(16, 4),
                   f"{stem}.alpha": torch.tensor(4.0)}, str(tmp_path / "kohya-sd3.safetensors"))
        with pytest.raises(InputError, match="no converter from this kohya layout for StableDiffusion3Pipeline"):
            load_lora_target(folder / "model", tmp_path / "kohya-sd3.safetensors", device="cpu")


@pytest.mark.parametrize("family", ["flux"], indirect=True)
def test_a_kohya_flux_lora_loads_into_the_transformer(family, tmp_path):
    """Most shared Flux LoRAs are kohya files in Black Forest Labs' block names (``lora_unet_double_blocks_0_
    img_attn_qkv``, ...): diffusers converts them onto the transformer; the result is the adapter written by
    hand in diffusers' names (fused qkv split into to_q / to_k / to_v, alpha / rank folded in)."""
    from safetensors.torch import save_file

    from privaudit.model.target import load_lora_target

    _, folder = family
    g = torch.Generator().manual_seed(0)
    r, d = 4, 16  # rank; the tiny transformer's inner dimension (2 heads x 8)
    w = {k: torch.randn(shape, generator=g) * 0.3 for k, shape in
         {"qkv_down": (r, d), "qkv_up": (3 * d, r), "proj_down": (r, d), "proj_up": (d, r),
          "lin2_down": (r, d + 4 * d), "lin2_up": (d, r)}.items()}
    alpha = torch.tensor(2.0 * r)  # scale alpha / rank = 2
    kohya = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": w["qkv_down"],
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": w["qkv_up"],
             "lora_unet_double_blocks_0_img_attn_qkv.alpha": alpha,
             "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": w["proj_down"],
             "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": w["proj_up"],
             "lora_unet_double_blocks_0_img_attn_proj.alpha": alpha,
             "lora_unet_single_blocks_0_linear2.lora_down.weight": w["lin2_down"],
             "lora_unet_single_blocks_0_linear2.lora_up.weight": w["lin2_up"],
             "lora_unet_single_blocks_0_linear2.alpha": alpha}
    save_file({k: v.clone() for k, v in kohya.items()}, str(tmp_path / "kohya.safetensors"))
    block, single = "transformer.transformer_blocks.0.attn.", "transformer.single_transformer_blocks.0."
    mine = {f"{block}to_out.0.lora_A.weight": 2 * w["proj_down"], f"{block}to_out.0.lora_B.weight": w["proj_up"],
            f"{single}proj_out.lora_A.weight": 2 * w["lin2_down"], f"{single}proj_out.lora_B.weight": w["lin2_up"]}
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        mine[f"{block}{part}.lora_A.weight"] = 2 * w["qkv_down"]
        mine[f"{block}{part}.lora_B.weight"] = w["qkv_up"][i * d:(i + 1) * d]
    save_file({k: v.contiguous() for k, v in mine.items()}, str(tmp_path / "mine.safetensors"))
    x = torch.randn(2, 4, 4, 4, generator=g)
    outs = []
    for f in ("kohya.safetensors", "mine.safetensors"):
        den, info, _ = load_lora_target(folder / "model", tmp_path / f, device="cpu")
        assert info.lora_layers == {"transformer": len({k.split(".lora_")[0] for k in mine})}, info.lora_layers
        outs.append(den.eps(x, 500, den.prompt_embeddings(["a handwritten digit one", ""])))
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("family", ["sdxl"], indirect=True)
def test_an_sdxl_kohya_lora_applies_both_text_encoders(family, tmp_path):
    """An SDXL kohya file with layers in both text encoders (``lora_te1_``, ``lora_te2_``, written by diffusers'
    converter from peft adapters on kohya's default modules) loads both: the run's target counts each
    encoder's layers and the prompt embeddings are the adapted encoders'."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, inject_adapter_in_model
    from safetensors.torch import save_file

    from privaudit.model.target import load_lora_target, load_pipeline, load_target

    _, folder = family
    pipe = load_pipeline(folder / "model", device=torch.device("cpu"))
    torch.manual_seed(0)
    state, counts = {}, {}
    for comp in ("text_encoder", "text_encoder_2"):
        te = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=[
            "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]), getattr(pipe, comp))
        layers = {f"{comp}.{k.replace('.default', '')}": v for k, v in te.state_dict().items() if "lora_" in k}
        counts[comp] = len(layers) // 2
        state.update(convert_state_dict_to_kohya(layers))
    assert any(k.startswith("lora_te1_") for k in state) and any(k.startswith("lora_te2_") for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "sdxl-te.safetensors"))
    got, info, _ = load_lora_target(folder / "model", tmp_path / "sdxl-te.safetensors", device="cpu")
    assert info.lora_layers == counts
    adapted = type(got).from_pipeline(pipe, device="cpu").prompt_embeddings(["a handwritten digit one"])  # peft's own
    base, _, _ = load_target(folder / "model", device="cpu")
    mine, plain = got.prompt_embeddings(["a handwritten digit one"]), base.prompt_embeddings(["a handwritten digit one"])
    for key in ("emb", "pooled"):
        torch.testing.assert_close(mine[key], adapted[key], rtol=0, atol=0)
        assert not torch.allclose(mine[key], plain[key])
