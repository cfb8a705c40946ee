"""gen-radius (distance to the protection radius): oracle tests, the case it exists for (members at one
distance from the samples, non-members on both sides of it), its fitted radius, the contract, broken samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import audit_arrays, plugin, to_tensor

from privaudit.api.registry import Registry
from privaudit.io.errors import InputError, PluginError
from privaudit.model.noise import Noise
from privaudit.plugins.attacks._common import calibration_auc
from privaudit.plugins.attacks.gennn import GeneratedNearestNeighbourAttack
from privaudit.plugins.attacks.genradius import GeneratedRadiusAttack
from privaudit.plugins.attacks.rediffuse import ReDiffuseAttack
from privaudit.testing import check_plugin
from privaudit.testing.oracles import EmpiricalOracle, GaussianOracle


def _audit(denoiser, members: np.ndarray, holdout: np.ndarray, attacks=("gen-radius",)) -> dict:
    return audit_arrays(denoiser, members, holdout, attacks=attacks)


def test_contract_and_adaptive_flags():
    check_plugin(GeneratedRadiusAttack)
    assert GeneratedRadiusAttack.threat_model == "black-box" and GeneratedRadiusAttack.requires == ("sampling",)
    # the cheap black-box attacks a mitigation-aware attacker runs; rediffuse (a variation API) is not one of them
    assert GeneratedRadiusAttack.adaptive and GeneratedNearestNeighbourAttack.adaptive and not ReDiffuseAttack.adaptive
    reg = Registry.build()
    assert reg.get("gen-radius", kind="attack").cls is GeneratedRadiusAttack
    ids = [reg.get(n, kind="attack").cls.id for n in ("gen-nn", "gen-radius", "rediffuse")]
    assert len(set(ids)) == 3
    for params in ({"n_radii": 1}, {"n_samples": 0}, {"two_sided": "yes"}):
        with pytest.raises(PluginError, match="gen-radius"):
            reg.create("gen-radius", kind="attack", **params)


def test_separates_the_memorising_oracle(digits_u8):
    res = plugin(_audit(EmpiricalOracle(to_tensor(digits_u8[:64])), digits_u8[:64], digits_u8[64:128]), "gen-radius")
    assert res["status"] == "ok", res.get("reason")
    # 0.94 here: the inverted band fits one member no sample reproduced (module docstring); gen-nn reaches 1.00
    assert res["metrics"]["auc"]["value"] >= 0.9 and res["queries_per_image"] > 0
    assert res["details"]["fitted"]["calibration_auc_"] >= 0.95


def test_without_the_inverted_band_it_is_gen_nn_on_the_memorising_oracle(digits_u8):
    den = EmpiricalOracle(to_tensor(digits_u8[:64]))
    members, holdout = to_tensor(digits_u8[:32]), to_tensor(digits_u8[64:96])
    attack = GeneratedRadiusAttack(two_sided=False).fit(den, members=members, holdout=holdout, seed=0)
    # members are the close ones, so the band sits at the smallest distance: gen-nn's score
    assert (attack.radius_quantile_, attack.direction_, attack.calibration_auc_) == (0.0, 1.0, 1.0)
    x = to_tensor(digits_u8[32:64])
    torch.testing.assert_close(attack.score(den, x, noise=None), -attack._rms_distance(den, x) + attack.radius_)


def test_is_at_chance_on_the_gaussian_oracle(digits_u8):
    res = plugin(_audit(GaussianOracle(to_tensor(digits_u8[700:])), digits_u8[:300], digits_u8[300:600]), "gen-radius")
    assert res["status"] == "ok", res.get("reason")
    assert abs(res["metrics"]["auc"]["value"] - 0.5) <= 0.1


class _FixedSamples:
    """An audit context whose cached samples are given (what ``prepare`` reads)."""

    def __init__(self, samples: torch.Tensor, n_images: int):
        self._x, self.members, self.holdout = samples, range(n_images), range(0)

    def samples(self, *, n, steps, sampler):
        return self._x[:n]


def _at_distance(centres: torch.Tensor, rms: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One image per row of ``rms``: a random centre moved in a random direction to RMS pixel distance ``rms``."""
    c = centres[torch.randint(len(centres), (len(rms),), generator=gen)]
    u = torch.randn(c.shape, generator=gen)
    u = u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * math.sqrt(c[0].numel())
    return c + rms.view(-1, 1, 1, 1) * u


def test_finds_members_at_the_radius_where_a_monotone_distance_cannot():
    # members at exactly r = 0.2 from their nearest sample (pushed just outside a protection radius); non-members
    # half nearer (0.02-0.15), half farther (0.25-0.4): any monotone score on the distance splits them in two
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand((64, 1, 8, 8), generator=gen) * 2 - 1  # ~0.8 RMS apart: each image's nearest is its centre
    members = _at_distance(samples, torch.full((200,), 0.2), gen)
    near = 0.02 + 0.13 * torch.rand(100, generator=gen)
    far = 0.25 + 0.15 * torch.rand(100, generator=gen)
    holdout = _at_distance(samples, torch.cat([near, far])[torch.randperm(200, generator=gen)], gen)
    den = EmpiricalOracle(samples)  # a pixel model: to_pixels leaves the images as they are
    ctx = _FixedSamples(samples, 400)

    radius = GeneratedRadiusAttack(n_samples=64)
    radius.prepare(ctx)
    radius.fit(den, members=members[:100], holdout=holdout[:100], seed=0)
    nn = GeneratedNearestNeighbourAttack(n_samples=64)
    nn.prepare(ctx)
    nn.fit(den, members=members[:100], holdout=holdout[:100], seed=0)
    torch.testing.assert_close(radius._rms_distance(den, members), torch.full((200,), 0.2), rtol=1e-4, atol=1e-5)

    def auc(attack) -> float:  # on the evaluation halves, never seen by fit
        m, h = members[100:], holdout[100:]
        return calibration_auc(attack.score(den, m, noise=Noise.for_images(m, seed=0)),
                               attack.score(den, h, noise=Noise.for_images(h, seed=0)))

    assert auc(radius) >= 0.95 and radius.direction_ == 1.0
    assert 0.15 < radius.radius_ < 0.25
    assert 0.3 <= auc(nn) <= 0.7


def test_radius_is_a_quantile_of_the_calibration_distances_only(digits_u8):
    den = EmpiricalOracle(to_tensor(digits_u8[:32]))
    members, holdout = to_tensor(digits_u8[:16]), to_tensor(digits_u8[32:48])
    attack = GeneratedRadiusAttack(n_samples=32, steps=10, n_radii=5).fit(den, members=members, holdout=holdout, seed=0)
    cal = torch.cat([attack._rms_distance(den, members), attack._rms_distance(den, holdout)]).double()
    assert attack.radius_quantile_ in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert attack.radius_ == pytest.approx(float(torch.quantile(cal, attack.radius_quantile_)))
    s = attack.score(den, members, noise=Noise.for_images(members, seed=0))
    h = attack.score(den, holdout, noise=Noise.for_images(holdout, seed=0))
    assert attack.calibration_auc_ == pytest.approx(calibration_auc(s, h))


def test_needs_calibration_images(digits_u8):
    den = EmpiricalOracle(to_tensor(digits_u8[:16]))
    with pytest.raises(InputError, match="gen-radius.*calibration"):
        GeneratedRadiusAttack(n_samples=8, steps=5).fit(den, members=None, holdout=None, seed=0)


def test_nan_samples_are_a_clear_error(digits_u8):
    class Broken(EmpiricalOracle):
        def eps(self, x_t, t, cond=None):
            return torch.full_like(x_t, float("nan"))

    den = Broken(to_tensor(digits_u8[:20]))
    x = to_tensor(digits_u8[:8])
    with pytest.raises(ValueError, match="NaN or infinite pixels"):
        GeneratedRadiusAttack(n_samples=8, steps=5).fit(den, members=x[:4], holdout=x[4:], seed=0)
    res = _audit(den, digits_u8[:20], digits_u8[20:40])  # in an audit: inconclusive, never a low risk
    p = plugin(res, "gen-radius")
    assert p["status"] == "ok" and p["severity"] == "info" and "could not judge" in p["finding"], p
    assert res["verdict"]["level"] == "inconclusive"
