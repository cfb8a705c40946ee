"""Closed-form oracle denoisers: exact formulas, and the behaviour tests rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privaudit.io.errors import InputError
from privaudit.model.denoiser import Denoiser, noised, sample
from privaudit.testing.oracles import EmpiricalOracle, GaussianOracle


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """sklearn digits in [-1, 1], (N, 1, 8, 8), seeded order."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images).float().div(8).sub(1).unsqueeze(1)
    return x[torch.from_numpy(np.random.default_rng(0).permutation(len(x)))]


def test_both_are_denoisers_without_white_box(digits):
    for oracle in (EmpiricalOracle(digits[:32]), GaussianOracle(digits[100:])):
        assert isinstance(oracle, Denoiser)
        assert oracle.white_box is None and oracle.sample_shape == (1, 8, 8)
        assert len(oracle.alphas_cumprod) == 1000 and oracle.alphas_cumprod.dtype == torch.float32
        assert oracle.fingerprint and oracle.eps(digits[:3], 10).shape == (3, 1, 8, 8)


def test_empirical_oracle_matches_the_softmax_formula(digits):
    train, x0 = digits[:20], digits[20:26]
    oracle = EmpiricalOracle(train, chunk_size=7)  # several chunks exercise the streaming softmax
    t = torch.tensor([0, 5, 50, 200, 600, 999])
    x_t = noised(oracle, x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)))
    a = oracle.scheduler.alphas_cumprod.double().numpy()[t.numpy()][:, None]
    xf, tr = x_t.flatten(1).double().numpy(), train.flatten(1).double().numpy()
    d2 = ((xf[:, None, :] - np.sqrt(a)[:, :, None] * tr[None]) ** 2).sum(-1)  # (B, N)
    logits = -d2 / (2 * (1 - a))
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    mean = w @ tr
    eps = (xf - np.sqrt(a) * mean) / np.sqrt(1 - a)
    np.testing.assert_allclose(oracle.weights(x_t, t).numpy(), w, atol=1e-9)
    np.testing.assert_allclose(oracle.posterior_mean(x_t, t).flatten(1).double().numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(oracle.eps(x_t, t).flatten(1).double().numpy(), eps, rtol=1e-4, atol=1e-4)


def test_empirical_oracle_memorises(digits):
    train = digits[:16]
    oracle = EmpiricalOracle(train)
    # A noised training image is denoised back to itself, and its noise recovered.
    eps = torch.randn(train.shape, generator=torch.Generator().manual_seed(1))
    x_t = noised(oracle, train, 100, eps)
    assert torch.allclose(oracle.posterior_mean(x_t, 100), train, atol=1e-4)
    assert torch.allclose(oracle.eps(x_t, 100), eps, atol=1e-3)
    # Its samples are training images.
    s = sample(oracle, n=8, steps=25, seed=0)
    nearest = torch.cdist(s.flatten(1), train.flatten(1)).min(1).values / math.sqrt(64)
    assert (nearest < 1e-3).all()


def test_gaussian_oracle_matches_the_gaussian_formula(digits):
    from sklearn.covariance import LedoitWolf

    fit, x_t = digits[300:], digits[:5] + 0.1
    oracle = GaussianOracle(fit)
    lw = LedoitWolf().fit(fit.flatten(1).double().numpy())
    mu, cov = lw.location_, lw.covariance_
    np.testing.assert_allclose(oracle.covariance_.numpy(), cov, atol=1e-10)
    for t in (0, 30, 400):
        a = float(oracle.scheduler.alphas_cumprod[t])
        cov_t = a * cov + (1 - a) * np.eye(64)
        r = x_t.flatten(1).double().numpy() - math.sqrt(a) * mu
        eps = math.sqrt(1 - a) * np.linalg.solve(cov_t, r.T).T
        mean = mu + math.sqrt(a) * (cov @ np.linalg.solve(cov_t, r.T)).T
        np.testing.assert_allclose(oracle.eps(x_t, t).flatten(1).double().numpy(), eps, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(oracle.posterior_mean(x_t, t).flatten(1).double().numpy(), mean, rtol=1e-4, atol=1e-4)


def test_gaussian_oracle_is_the_mmse_denoiser_of_its_own_gaussian(digits):
    oracle = GaussianOracle(digits[300:])
    gen = torch.Generator().manual_seed(2)
    lam, vec = oracle.eigenvalues_.float(), oracle.eigenvectors_.float()
    x0 = (oracle.mean_.float() + (torch.randn(4000, 64, generator=gen) * lam.sqrt()) @ vec.T).view(-1, 1, 8, 8)
    t = 300
    a = float(oracle.alphas_cumprod[t])
    eps = torch.randn(x0.shape, generator=gen)
    mse = (oracle.eps(noised(oracle, x0, t, eps), t) - eps).pow(2).flatten(1).sum(1).mean().item()
    expected = float((a * lam / (a * lam + 1 - a)).sum())  # trace of the posterior error covariance
    assert mse == pytest.approx(expected, rel=0.05)


def test_gaussian_oracle_does_not_memorise(digits):
    oracle = GaussianOracle(digits[300:])
    s = sample(oracle, n=16, steps=25, seed=0)
    nearest = torch.cdist(s.flatten(1), digits[300:].flatten(1)).min(1).values / math.sqrt(64)
    assert (nearest > 0.1).all()


def test_custom_schedule_and_shrinkage(digits):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2")
    oracle = GaussianOracle(digits[300:], shrinkage=0.3, scheduler=sched)
    assert len(oracle.alphas_cumprod) == 200
    assert oracle.eps(digits[:2], 199).shape == (2, 1, 8, 8)
    assert EmpiricalOracle(digits[:8], scheduler=sched).eps(digits[:2], torch.tensor([0, 199])).isfinite().all()


def test_bad_inputs_are_clear_errors(digits):
    oracle = EmpiricalOracle(digits[:8])
    with pytest.raises(InputError, match="train"):
        EmpiricalOracle(digits[0])
    with pytest.raises(InputError, match="images"):
        GaussianOracle(digits[:1])
    with pytest.raises(InputError, match="shrinkage"):
        GaussianOracle(digits[:50], shrinkage="oas")
    with pytest.raises(InputError, match=r"t: timesteps must lie in \[0, 999\]"):
        oracle.eps(digits[:2], 1000)
    with pytest.raises(InputError, match="x_t"):
        oracle.eps(torch.zeros(2, 3, 8, 8), 1)
