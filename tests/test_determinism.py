"""Results do not depend on how the work is cut: per-image scores and generated samples are the
same for any batch size (every random draw is keyed by image content or sample index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privaudit.api.registry import Registry
from privaudit.audit.scoring import score_set
from privaudit.data.sets import load_images
from privaudit.model.denoiser import sample
from privaudit.model.noise import Noise, seed_of


@pytest.mark.parametrize("name,params", [("loss", {"timesteps": (100,), "k": 3}), ("sima", {}), ("pia", {}),
                                         ("secmi", {}), ("gsa", {"n_timesteps": 2})])
def test_scores_do_not_depend_on_batch_size(name, params, digits_target, digits_denoiser):
    members = load_images(digits_target / "members", name="members").subset(range(10))
    holdout = load_images(digits_target / "holdout", name="holdout").subset(range(10))
    attack = Registry.build().create(name, **params)
    attack.fit(digits_denoiser, members=members.tensor(), holdout=holdout.tensor(), seed=0)
    runs = [score_set(attack, digits_denoiser, members, batch_size=b, seed=3, label="members") for b in (1, 7, 128)]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=1e-4, atol=1e-5)
    reordered = score_set(attack, digits_denoiser, members.subset(range(9, -1, -1)), batch_size=4, seed=3, label="m")
    np.testing.assert_allclose(reordered[::-1], runs[0], rtol=1e-4, atol=1e-5)


def test_scores_do_depend_on_the_seed(digits_target, digits_denoiser):
    members = load_images(digits_target / "members", name="members").subset(range(6))
    attack = Registry.build().create("loss", timesteps=(100,), k=1)
    a, b = (score_set(attack, digits_denoiser, members, batch_size=6, seed=s, label="m") for s in (0, 1))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samples_do_not_depend_on_batch_size(sampler, digits_denoiser):
    runs = [sample(digits_denoiser, n=9, steps=5, sampler=sampler, seed=11, batch_size=b) for b in (1, 7, 128)]
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(runs[0][0], runs[0][1])  # distinct samples, not one seed reused


def test_noise_rows_follow_images():
    x = torch.arange(12.0).view(3, 1, 2, 2)
    full = Noise.for_images(x, seed=0, stream="s").randn((6, 1, 2, 2), tag=5)  # 2 draws x 3 images
    part = Noise.for_images(x[1:], seed=0, stream="s").randn((4, 1, 2, 2), tag=5)
    torch.testing.assert_close(full[[1, 2, 4, 5]], part)
    other_tag = Noise.for_images(x, seed=0, stream="s").randn((3, 1, 2, 2), tag=6)
    assert not torch.allclose(full[:3], other_tag)
    with pytest.raises(ValueError, match="whole number"):
        Noise.for_images(x, seed=0).randn((4, 1, 2, 2))
    assert seed_of(1, "a") == seed_of(1, "a") != seed_of(1, "b")


def test_a_plugin_written_for_the_0_1_api_still_scores_with_a_warning(digits_target, digits_denoiser):
    from privaudit.api import MembershipAttack

    class OldStyle(MembershipAttack):
        """0.1 signature: a per-batch generator instead of per-image noise."""

        name = "old-style"

        def score(self, denoiser, x0, *, generator):
            return x0.flatten(1).mean(1) + torch.randn(len(x0), generator=generator)

    members = load_images(digits_target / "members", name="members").subset(range(6))
    with pytest.warns(DeprecationWarning, match="noise.randn"):
        a = score_set(OldStyle(), digits_denoiser, members, batch_size=3, seed=0, label="m")
    with pytest.warns(DeprecationWarning):
        b = score_set(OldStyle(), digits_denoiser, members, batch_size=3, seed=0, label="m")
    assert a.shape == (6,) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # still seeded: the same run gives the same scores
