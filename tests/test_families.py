"""Model families where the noise convention can go wrong: v-prediction and flow matching.

Memorising fixtures (``privaudit.fixtures.digits_variants``: the digits target retrained to
predict v, or a flow-matching velocity) must be flagged by every gray-box attack, their null
controls must stay quiet, and a flow model built from a closed-form oracle must give every
attack exactly the oracle's own scores."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, plugin, run_scan

from privaudit.model.denoiser import denoise, sample
from privaudit.model.noise import Noise

FLAGGING = ("loss", "secmi", "pia", "sima")


def _variant(name: str) -> Path:
    from privaudit.fixtures import digits_variants

    cache = Path(os.environ.get("PRIVAUDIT_TEST_CACHE", REPO / ".pytest_cache" / "privaudit"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny UNet: extra threads only synchronise on a busy machine
    try:
        return digits_variants.build(out=cache / name, name=name, progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session", params=["digits-v", "digits-flow"])
def variant_target(request) -> Path:
    return _variant(request.param)


@pytest.mark.slow
def test_variant_models_load_with_their_convention(variant_target):
    from privaudit.model.flow import FlowDenoiser
    from privaudit.model.target import load_target

    den, info, pipe = load_target(variant_target / "model", device="cpu")
    if variant_target.name == "digits-flow":
        assert isinstance(den, FlowDenoiser) and "FlowMatch" in info.scheduler_class
    else:
        assert den.prediction_type == "v_prediction"
    # diffusers' own pipeline samples the folder too (its loop steps the folder's scheduler)
    img = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (2, 8, 8, 1)


@pytest.mark.slow
def test_memorising_variants_are_flagged_and_their_nulls_are_quiet(variant_target, tmp_path):
    res = run_scan(variant_target, tmp_path / "scan", attacks=FLAGGING, detectors=("nn",))
    for name in FLAGGING:
        auc = plugin(res, name)["metrics"]["auc"]["value"]
        assert auc >= 0.95, (variant_target.name, name, auc)
    assert plugin(res, "nn")["metrics"]["copy_fraction"]["value"] >= 0.5
    null = run_scan(variant_target, tmp_path / "null", members="null", attacks=FLAGGING, detectors=())
    for name in FLAGGING:
        auc = plugin(null, name)["metrics"]["auc"]["value"]
        assert abs(auc - 0.5) <= 0.1, (variant_target.name, "null", name, auc)


class _OracleVelocity(torch.nn.Module):
    """The flow-matching velocity u = eps - x0 of a closed-form oracle, fed (x_flow, sigma * T)."""

    def __init__(self, oracle, sigmas: torch.Tensor):
        super().__init__()
        self.oracle, self.sigmas = oracle, sigmas.double()
        c, h, w = oracle.sample_shape
        self.config = SimpleNamespace(in_channels=c, sample_size=h)

    def forward(self, x_flow, timestep):
        T = len(self.sigmas)
        sig = torch.as_tensor(timestep, dtype=torch.float64) / T
        t = (self.sigmas[None] - sig[:, None]).abs().argmin(1)  # the grid index of this sigma
        s, x = sig.view(-1, 1, 1, 1), x_flow.double()  # float64: eps divides by sigma (1e-3 at t = 0)
        c = ((1 - s) ** 2 + s ** 2).sqrt()
        x0 = self.oracle.posterior_mean(x / c, t).double()  # the oracle in its VP view at the same SNR
        eps = (x - (1 - s) * x0) / s
        return SimpleNamespace(sample=(eps - x0).to(x_flow.dtype))


def test_a_flow_model_scores_as_its_vp_oracle(digits_target):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from privaudit.api.registry import Registry
    from privaudit.data.sets import load_images
    from privaudit.model.denoiser import sampling_scheduler
    from privaudit.model.flow import FlowDenoiser, flow_grid, sigmas_of, vp_scheduler
    from privaudit.testing.oracles import GaussianOracle

    # float64 throughout: this checks the conversions, not float32 conditioning (eps of a flow model at
    # sigma = 1e-3 is a small difference of O(1) terms, which float32 resolves to about 1e-4)
    members = load_images(digits_target / "members", name="members").tensor(range(16)).double()
    holdout = load_images(digits_target / "holdout", name="holdout").tensor(range(16)).double()
    sigmas, acp = flow_grid(1000)
    acp = vp_scheduler(acp).alphas_cumprod  # the schedule as a sampler computes it, and its sigmas:
    sigmas = sigmas_of(acp)  # what the flow adapter uses
    # a smooth closed-form model (the memorising oracle's posterior switches sharply between members,
    # where float32 rounding of the two views decides which member wins)
    reference = load_images(digits_target / "reference", name="reference").tensor(range(300))
    vp = GaussianOracle(reference, scheduler=vp_scheduler(acp))
    flow = FlowDenoiser(net=_OracleVelocity(vp, sigmas), flow_scheduler=FlowMatchEulerDiscreteScheduler())
    assert torch.allclose(flow.alphas_cumprod, vp.alphas_cumprod)
    reg = Registry.build()
    for name in ("loss", "secmi", "pia", "pian", "sima", "pfami"):  # gray-box: all of them, through eps
        scores = []
        for den in (vp, flow):
            attack = reg.create(name, kind="attack")
            attack.fit(den, members=members[:8], holdout=holdout[:8], seed=0)
            both = torch.cat([members, holdout])
            scores.append(attack.score(den, both, noise=Noise.for_images(both, seed=5)))
        assert torch.allclose(scores[0].double(), scores[1].double(), rtol=1e-4, atol=1e-6), name
    # sampling: the flow model's own grid (``sampling_timesteps``), stepped the same way in both views
    sched = sampling_scheduler(flow, "ddim", 10)
    z = torch.randn(4, *flow.sample_shape, generator=torch.Generator().manual_seed(3))

    def draw(den):
        return denoise(den, z.clone(), scheduler=sched).clamp(-1, 1)

    a, b = draw(vp), draw(flow)
    assert torch.allclose(a, b, atol=1e-3)
    # CPSample's guidance is added in eps: the same guard steers both views to the same samples
    from privaudit.plugins.mitigations.cpsample.guard import guard_for
    from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser

    torch.manual_seed(0)
    guard = guard_for(SimpleNamespace(sample_size=8, in_channels=1), block_out_channels=(8, 8))
    pa = ProtectedDenoiser(base=vp, guard=guard, alpha=0.5, scale=30.0)
    pb = ProtectedDenoiser(base=flow, guard=guard, alpha=0.5, scale=30.0)
    ga, gb = draw(pa), draw(pb)
    assert not torch.allclose(ga, a, atol=1e-2) and torch.allclose(ga, gb, atol=1e-3)
    assert sampling_scheduler(pb, "ddim", 10).timesteps.tolist() == sched.timesteps.tolist()  # wrappers: the model's grid


class _ToyVelocity(torch.nn.Module):
    """A smooth velocity field that depends on the noise level, so the grid a sampler visits shows."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(sample_size=4, in_channels=2)

    def forward(self, x, t):
        s = (t.float() / 1000).view(-1, 1, 1, 1)
        return torch.tanh(3 * x) * (1 + 4 * s) - 0.5 * x * torch.cos(6 * s)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_models_sample_as_their_own_euler_sampler_with_its_shift(shift):
    """A flow model is sampled at the sigmas its own ``FlowMatchEulerDiscreteScheduler`` visits
    (the config's ``shift`` applied), and DDIM in the VP view on that grid is diffusers' Euler
    loop on the same sigmas."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from privaudit.model.denoiser import sampling_scheduler
    from privaudit.model.flow import FlowDenoiser
    from privaudit.model.noise import sample_generators

    steps = 12
    den = FlowDenoiser(net=_ToyVelocity(), flow_scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    ts = sampling_scheduler(den, "ddim", steps).timesteps
    own = FlowMatchEulerDiscreteScheduler(shift=shift)
    own.set_timesteps(steps)
    assert len(ts) == steps
    assert torch.allclose(den.sigmas[ts].double(), own.sigmas[:-1].double(), atol=1 / (den.num_train_timesteps + 1))
    assert sampling_scheduler(den, "ddpm", steps).timesteps.tolist() == ts.tolist()
    ours = sample(den, n=3, steps=steps, seed=4)

    # diffusers' own Euler loop at the sigmas visited, from the same initial noise (x_flow = c x_vp)
    euler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    euler.set_timesteps(sigmas=den.sigmas[ts].numpy())
    z = torch.stack([torch.randn(den.sample_shape, generator=g) for g in sample_generators(4, 0, 3)])
    s0 = float(den.sigmas[ts[0]])
    x = z * ((1 - s0) ** 2 + s0 ** 2) ** 0.5
    for t in euler.timesteps:
        x = euler.step(den.net(x, t.expand(len(x))), t, x).prev_sample
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-4)
    # and the grid matters: DDIM's fixed stride (the unshifted, leading grid) draws other images
    stride = DDIMScheduler.from_config(den.scheduler.config)
    stride.set_timesteps(steps)
    other = denoise(den, z.clone(), scheduler=stride).clamp(-1, 1)
    assert (other - ours).abs().max() > 1e-3  # ten times the tolerance above


def _as_prediction(src: Path, dst: Path, kind: str) -> Path:
    """A copy of a pipeline folder whose scheduler declares another prediction type (weights unchanged)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg_file = dst / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["prediction_type"] = kind
    cfg_file.write_text(json.dumps(cfg))
    return dst


ALL_ATTACKS = ("loss", "secmi", "pia", "pian", "sima", "gsa")


@pytest.mark.slow
def test_sd_class_v_prediction_scans_mitigates_and_ships(digits_text_target, tmp_path):
    """SD 2.x-style (v-prediction) latent text model: every attack and nn run, cpsample protects it,
    and the protected folder loads with diffusers and samples with the v convention."""
    import subprocess
    import sys

    from privaudit.audit.runner import AuditSettings, scan
    from privaudit.mitigation.flow import mitigate
    from privaudit.model.target import load_target

    model = _as_prediction(digits_text_target / "model", tmp_path / "model-v", "v_prediction")
    den, _, _ = load_target(model, device="cpu")
    assert den.prediction_type == "v_prediction"
    settings = AuditSettings(attacks=ALL_ATTACKS, detectors=("nn",), progress=False, n_boot=20,
                             plugin_params={"nn": {"n_samples": 16, "steps": 5}, "gsa": {"n_timesteps": 2}})
    res = scan(model_dir=model, members=digits_text_target / "members", holdout=digits_text_target / "holdout",
               out=tmp_path / "scan", settings=settings, device="cpu")
    assert {p["name"]: p["status"] for p in res["plugins"]} == {n: "ok" for n in (*ALL_ATTACKS, "nn")}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mitigate(model_dir=model, members=digits_text_target / "members", holdout=digits_text_target / "holdout",
                 out=tmp_path / "mit", method="cpsample", params={"placebo": False, "rejection": False, "max_steps": 20},
                 settings=AuditSettings(attacks=("loss",), detectors=("nn",), progress=False, n_boot=20,
                                        plugin_params={"nn": {"n_samples": 16, "steps": 5}}),
                 device="cpu", log=lambda msg: None)
    finally:
        torch.set_num_threads(n)
    code = ("import privaudit.plugins.mitigations.cpsample\nfrom diffusers import DiffusionPipeline\n"
            f"p = DiffusionPipeline.from_pretrained({str(tmp_path / 'mit' / 'protected')!r})\n"
            "d = p.as_denoiser(device='cpu')\n"
            "print(d.prediction_type, len(p(['a handwritten digit one'], num_inference_steps=2).images))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-2:] == ["v_prediction", "1"], done.stderr[-2000:]


@pytest.mark.slow
def test_flow_model_mitigates_and_its_protected_pipeline_samples(tmp_path):
    """A flow-matching pixel model through cpsample: the protected folder loads and samples in the
    VP-equivalent view (its Euler sampler)."""
    import numpy as np
    from diffusers import DiffusionPipeline

    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigate
    from privaudit.model.flow import FlowDenoiser

    target = _variant("digits-flow")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = mitigate(model_dir=target / "model", members=target / "members", holdout=target / "holdout",
                       out=tmp_path / "mit", method="cpsample", params={"placebo": False, "rejection": False,
                                                                        "max_steps": 200},
                       settings=AuditSettings(attacks=("loss",), detectors=("nn",), progress=False, n_boot=20,
                                              plugin_params={"nn": {"n_samples": 32, "steps": 10}}),
                       device="cpu", reference=target / "reference", log=lambda msg: None)
    finally:
        torch.set_num_threads(n)
    assert plugin(res["after"], "loss")["status"] == "ok"
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "mit" / "protected"))
    assert isinstance(pipe.as_denoiser(device="cpu").inner(), FlowDenoiser)
    img = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (2, 8, 8, 1) and np.isfinite(img).all()
