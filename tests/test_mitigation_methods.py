"""The member-bank mitigations: ``rejection`` (post-hoc rejection of copies) and ``repel`` (dissimilarity guidance).

Oracles (closed-form denoisers, no training): a memoriser's copies fall under both; a model that memorises
nothing is served (almost) unchanged. Pipelines: a tiny random UNet, saved and loaded back offline,
sampled with protection on under another scheduler and step count. Hostile inputs fail with one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import privaudit.plugins.mitigations.rejection  # noqa: F401 (registers RejectionPipeline)
import privaudit.plugins.mitigations.repel  # noqa: F401 (registers RepelPipeline)
from privaudit.io.errors import InputError, PluginError
from privaudit.model.denoiser import sample
from privaudit.plugins.mitigations.memberbank import MemberBank, calibrate_radius
from privaudit.plugins.mitigations.rejection import Rejection
from privaudit.plugins.mitigations.rejection.denoiser import BankCopyTest, RejectionSampledDenoiser
from privaudit.plugins.mitigations.repel import Repel
from privaudit.plugins.mitigations.repel.denoiser import RepelDenoiser
from privaudit.plugins.mitigations.repel.schedule import level_distances
from privaudit.testing import check_plugin
from privaudit.testing.oracles import EmpiricalOracle, GaussianOracle

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth 1x8x8 images in [-1, 1] (4x4 noise upsampled)."""
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(x, size=8, mode="bilinear", align_corners=False).clamp(-1, 1)


@pytest.fixture(scope="module")
def data():
    members, extra, holdout, other = _images(6, 1), _images(10, 2), _images(128, 3), _images(128, 4)
    copy_radius = calibrate_radius(members, holdout, 0.01)  # the nn detector's copy criterion, in pixels
    return {"members": members, "extra": extra, "holdout": holdout, "other": other, "copy_radius": copy_radius}


def _copies(x: torch.Tensor, data) -> float:
    return float((MemberBank.from_images(data["members"]).nearest(x)[0] < data["copy_radius"]).float().mean())


def _repel(base, data, *, quantile: float, strength: float = 1.0) -> RepelDenoiser:
    bank = MemberBank.from_images(data["members"], radius=calibrate_radius(data["members"], data["holdout"], quantile),
                                  quantile=quantile)
    lv = level_distances(base.alphas_cumprod, bank, data["holdout"], levels=16)
    return RepelDenoiser(base=base, bank=bank, strength=strength, schedule=(lv.timesteps, tuple(lv.radii(quantile))))


def _rejection(base, data, *, quantile: float = 0.01, max_factor: float = 4.0) -> RejectionSampledDenoiser:
    bank = MemberBank.from_images(data["members"])
    r = calibrate_radius(bank, data["holdout"], quantile)
    return RejectionSampledDenoiser(base=base, test=BankCopyTest(bank, radius=r), max_factor=max_factor)


# ---------------------------------------------------------------------------- oracles


def test_memoriser_copies_fall_under_both_methods(data):
    # trained on the members and 10 other images: about 6 in 16 samples copy a member
    base = EmpiricalOracle(torch.cat([data["members"], data["extra"]]))
    raw = sample(base, n=64, steps=20, seed=1)
    assert _copies(raw, data) >= 0.25
    rej = _rejection(base, data)
    served = rej.draw_samples(n=64, steps=20, seed=1)
    assert _copies(served, data) == 0.0 and rej.stats_["filled_with_copies"] == 0
    assert rej.stats_["drawn"] > 64 and rej.stats_["acceptance_rate"] < 0.8
    rep = _repel(base, data, quantile=0.05)
    repelled = sample(rep, n=64, steps=20, seed=1)
    assert _copies(repelled, data) < _copies(raw, data) / 4
    assert rep.repelled_ > 0 and torch.isfinite(repelled).all()


def test_perfect_memoriser_exhausts_the_rejection_budget_and_says_so(data):
    rej = _rejection(EmpiricalOracle(data["members"]), data, max_factor=2.0)
    served = rej.draw_samples(n=16, steps=10, seed=0)
    s = rej.stats_
    assert s["exhausted"] and s["filled_with_copies"] == 16 and s["drawn"] == 32 and len(served) == 16


def test_model_that_memorises_nothing_is_served_unchanged(data):
    base = GaussianOracle(data["other"])
    raw = sample(base, n=64, steps=20, seed=1)
    rej = _rejection(base, data)
    served = rej.draw_samples(n=64, steps=20, seed=1)
    same = (served == raw).flatten(1).all(1).float().mean()
    assert rej.stats_["acceptance_rate"] >= 0.9 and same >= 0.9  # accepted samples keep their places
    rep = _repel(base, data, quantile=0.01)
    repelled = sample(rep, n=64, steps=20, seed=1)
    assert rep.repelled_ / rep.calls_ < 0.05
    changed = (repelled != raw).flatten(1).any(1)
    assert changed.float().mean() <= 0.2 and float((repelled - raw).abs().max()) < 0.5


def test_rows_outside_the_radius_get_eps_bit_for_bit(data):
    base = EmpiricalOracle(torch.cat([data["members"], data["extra"]]))
    rep = _repel(base, data, quantile=0.05)
    x_t = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((32,), 30)
    e, e_raw = rep.eps(x_t, t), base.eps(x_t, t)
    a, s = rep.scales(30)
    d, idx = rep.bank.nearest((x_t - s * e_raw) / a)
    far = d >= rep.radius_at(t, 32)
    assert far.any() and (~far).any()
    assert torch.equal(e[far], e_raw[far]) and not torch.equal(e[~far], e_raw[~far])
    # strength 1: a near row's predicted x0 lands on the radius around the member it was near
    d_new = ((x_t - s * e) / a - rep.bank.members[idx]).flatten(1).norm(dim=1)
    assert torch.allclose(d_new[~far], rep.radius_at(t, 32)[~far], atol=1e-3)
    assert torch.equal(rep.with_params(strength=0.0).eps(x_t, t), e_raw)


# ---------------------------------------------------------------------------- pipelines


def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()


def _raw(unet, scheduler, *, steps: int, seed: int, n: int = 6) -> np.ndarray:
    """The unprotected pipeline's images ("np", [0, 1])."""
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                output_type="np").images


def _to_model(images_np) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images_np)).permute(0, 3, 1, 2) * 2 - 1


@pytest.mark.parametrize("method", ["rejection", "repel"])
def test_pipeline_round_trip_keeps_protection_under_another_scheduler(method, tmp_path):
    from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline

    from privaudit.plugins.mitigations.rejection.pipeline import RejectionPipeline
    from privaudit.plugins.mitigations.repel.pipeline import RepelPipeline

    unet, ddpm = _tiny_unet(), DDPMScheduler(num_train_timesteps=1000)
    ddim = DDIMScheduler.from_config(ddpm.config)
    # the members are the raw model's own DDIM samples at this seed: unprotected, it serves exact copies
    raw = _to_model(_raw(unet, ddim, steps=7, seed=3))
    bank = MemberBank.from_images(raw, radius=0.5, quantile=0.05)
    if method == "rejection":
        pipe = RejectionPipeline(unet=unet, scheduler=ddpm, members=bank, max_factor=5.0)
    else:
        lv = level_distances(ddpm.alphas_cumprod, bank, _images(64, 9), levels=8)
        radii = [max(r, 0.5) for r in lv.radii(0.05)]  # at least 0.5 at every level: the copies are exact
        pipe = RepelPipeline(unet=unet, scheduler=ddpm, members=bank, strength=1.0,
                             radius_timesteps=list(lv.timesteps), radius_schedule=radii)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert not any(p.suffix in (".bin", ".pt", ".pkl", ".py") for p in tmp_path.rglob("*"))
    loaded = DiffusionPipeline.from_pretrained(tmp_path, local_files_only=True, use_safetensors=True)
    assert type(loaded) is type(pipe) and torch.equal(loaded.members.members, raw)
    assert loaded.members.radius == 0.5
    loaded.scheduler = DDIMScheduler.from_config(loaded.scheduler.config)  # swapped scheduler, another step count
    loaded.set_progress_bar_config(disable=True)
    out = _to_model(loaded(batch_size=6, generator=torch.Generator().manual_seed(3), num_inference_steps=7,
                           output_type="np").images)
    d = bank.nearest(out)[0]
    if method == "rejection":
        assert loaded.last_draw_["drawn"] > 6 and bool((d >= 0.5).all()) == (loaded.last_draw_["filled"] == 0)
        assert loaded.last_draw_["accepted"] > 0
    else:
        assert bool((d > 0.4).all()), d  # every copy moved out to about the radius (pixel quantisation aside)
    # the Denoiser view (what privaudit scan audits) carries the same rule
    den = loaded.as_denoiser(device="cpu")
    assert isinstance(den, RejectionSampledDenoiser if method == "rejection" else RepelDenoiser)
    assert den.white_box.net is loaded.unet


def test_rejection_pipeline_without_copies_equals_ddpm_pipeline(tmp_path):
    from diffusers import DDPMScheduler

    from privaudit.plugins.mitigations.rejection.pipeline import RejectionPipeline

    unet, sched = _tiny_unet(), DDPMScheduler(num_train_timesteps=1000)
    raw = _raw(unet, sched, steps=5, seed=1)
    far = MemberBank.from_images(-torch.ones(2, 1, 8, 8), radius=1e-3)
    pipe = RejectionPipeline(unet=unet, scheduler=sched, members=far)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=6, generator=torch.Generator().manual_seed(1), num_inference_steps=5, output_type="np").images
    assert np.array_equal(out, raw) and pipe.last_draw_["drawn"] == 6


# ---------------------------------------------------------------------------- hostile inputs and contracts


def test_nan_and_empty_members_are_input_errors(data):
    bad = data["members"].clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match="1 of 6 images contain NaN"):
        MemberBank.from_images(bad)
    with pytest.raises(InputError, match="no images"):
        MemberBank.from_images(torch.zeros(0, 1, 8, 8))
    with pytest.raises(InputError, match="no images"):
        calibrate_radius(data["members"], torch.zeros(0, 1, 8, 8), 0.01)
    with pytest.raises(InputError, match=r"range \[-1, 1\]"):
        MemberBank.from_images(data["members"] * 3)
    with pytest.raises(InputError, match=r"quantile must lie in \(0, 1\)"):
        calibrate_radius(data["members"], data["holdout"], 1.5)


@pytest.mark.parametrize("cls, params, match", [
    (Rejection, {"quantile": 1.5}, r"rejection: quantile=1.5 is invalid"),
    (Rejection, {"quantile": 0.0}, r"rejection: quantile=0.0 is invalid"),
    (Rejection, {"max_factor": 0.5}, r"rejection: max_factor=0.5 is invalid"),
    (Repel, {"quantile": -0.1}, r"repel: quantile=-0.1 is invalid"),
    (Repel, {"strength": 0.0}, r"repel: strength=0.0 is invalid"),
    (Repel, {"sweep_quantiles": (0.05, 1.0)}, r"repel: sweep_quantiles"),
])
def test_out_of_range_parameters_are_refused(cls, params, match):
    from privaudit.api.registry import Registry

    with pytest.raises(PluginError, match=match):
        Registry.build().create(cls.name, kind="mitigation", **params)


@pytest.mark.parametrize("cls", [Rejection, Repel])
def test_plugin_contract(cls):
    check_plugin(cls)
    assert cls.carries_training_data and "training set" in cls.carries


def test_latent_targets_are_refused_with_a_clear_message(tmp_path):
    from types import SimpleNamespace

    class Latent:
        in_latent_space = True

        def inner(self):
            return None

    ctx = SimpleNamespace(pipeline=SimpleNamespace(unet=SimpleNamespace(), scheduler=object()), denoiser=Latent(),
                          model_dir=tmp_path)
    from privaudit.plugins.mitigations.memberbank import pixel_unet

    with pytest.raises(InputError, match="repel protects pixel UNet2DModel pipelines for now"):
        pixel_unet(ctx, "repel")
