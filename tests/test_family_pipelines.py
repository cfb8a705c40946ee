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
