"""Closed-form denoisers: test oracles that need no trained network.

Both are ``Denoiser``s (``privaudit.model.denoiser``): they have ``alphas_cumprod``, ``sample_shape``,
``device``, a diffusers ``scheduler`` (so ``privaudit.model.denoiser.sample`` draws from them),
``eps(x_t, t)`` and ``white_box = None`` (there are no weights, so white-box plugins skip them).

With x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, the optimal (minimum mean squared error)
noise prediction for a data distribution p(x0) is

    eps*(x_t, t) = (x_t - sqrt(abar_t) E[x0 | x_t]) / sqrt(1 - abar_t).

- ``EmpiricalOracle(train)``: p(x0) is the empirical distribution of a finite training set
  x_1..x_N, so E[x0 | x_t] = sum_i w_i x_i with w = softmax_i(-||x_t - sqrt(abar_t) x_i||^2 /
  (2 (1 - abar_t))). This is what a diffusion model converges to when trained to zero loss:
  it memorises perfectly, its samples are training images, and every membership attack
  should separate its training set from anything else.
- ``GaussianOracle(images)``: p(x0) = N(mu, Sigma), fitted to an image set with Ledoit-Wolf
  shrinkage (so Sigma is well conditioned even with fewer images than pixels). Then
  eps*(x_t, t) = sqrt(1 - abar_t) (abar_t Sigma + (1 - abar_t) I)^-1 (x_t - sqrt(abar_t) mu).
  Fitted to images disjoint from both members and holdout, it memorises nothing: every
  membership attack must be at chance on it.

Both compute in float64 (the posterior weights at small t are sharp) and return the input's
dtype. Images are (N, C, H, W) float tensors in the model's range ([-1, 1]) or ``ImageSet``s.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from privaudit.io.errors import InputError
from privaudit.model.denoiser import Denoiser


def _as_images(images, name: str) -> torch.Tensor:
    from privaudit.data.sets import ImageSet

    if isinstance(images, ImageSet):
        images = images.tensor()
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}"
        raise InputError(f"{name}: expected a float tensor (N, C, H, W) or an ImageSet, got {got}")
    if len(images) < 2:
        raise InputError(f"{name}: needs at least 2 images, got {len(images)}")
    if not torch.isfinite(images).all():
        raise InputError(f"{name}: images contain NaN or infinite values")
    return images.detach()


class _ClosedFormDenoiser(Denoiser):
    """Schedule, sampling config and the eps <-> E[x0 | x_t] conversion shared by the oracles."""

    white_box = None

    def __init__(self, *, sample_shape: tuple[int, ...], scheduler=None, device: torch.device | str = "cpu"):
        from diffusers import DDPMScheduler

        # Default: the DDPM linear schedule (beta 1e-4..0.02, T = 1000), as in the built-in target.
        self.scheduler = scheduler if scheduler is not None else DDPMScheduler(num_train_timesteps=1000)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.detach().float().cpu()
        c, h, w = (int(s) for s in sample_shape)
        self.sample_shape = (c, h, w)
        self.device = torch.device(device)
        self._acp64 = self.scheduler.alphas_cumprod.detach().double().to(self.device)

    def _abar(self, t, n: int) -> torch.Tensor:
        """abar_t as a float64 (n, 1) column for scalar or per-sample integer ``t``."""
        t = torch.as_tensor(t, device=self.device)
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise InputError(f"t: timesteps must be integers, got {t.flatten()[:4].tolist()}")
        t = t.long().expand(n) if t.ndim == 0 else t.long()
        if t.shape != (n,):
            raise InputError(f"t: expected a scalar or {n} timesteps, got shape {tuple(t.shape)}")
        if int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise InputError(f"t: timesteps must lie in [0, {self.num_train_timesteps - 1}], "
                             f"got {int(t.min())}..{int(t.max())}")
        return self._acp64[t].unsqueeze(1)

    def _flat(self, x_t: torch.Tensor) -> torch.Tensor:
        if tuple(x_t.shape[1:]) != self.sample_shape:
            raise InputError(f"x_t: expected images shaped (B, {', '.join(map(str, self.sample_shape))}), "
                             f"got {tuple(x_t.shape)}")
        return x_t.reshape(len(x_t), -1).to(self.device, torch.float64)

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """E[x0 | x_t], shaped like ``x_t``."""
        x = self._flat(x_t)
        return self._posterior_mean(x, self._abar(t, len(x))).view_as(x_t).to(x_t.dtype)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        """The optimal noise prediction (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar)."""
        x = self._flat(x_t)
        a = self._abar(t, len(x))
        out = self._eps(x, a)
        return out.view(x_t.shape).to(device=x_t.device, dtype=x_t.dtype)

    def _eps(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (x - a.sqrt() * self._posterior_mean(x, a)) / (1 - a).sqrt()

    def _posterior_mean(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _digest(self, *arrays: torch.Tensor) -> str:
        h = hashlib.sha256(type(self).__name__.encode())
        for arr in (*arrays, self._acp64):
            h.update(np.ascontiguousarray(arr.detach().cpu().numpy()).tobytes())
        return h.hexdigest()


class EmpiricalOracle(_ClosedFormDenoiser):
    """The optimal denoiser of a finite training set: memorises it perfectly.

    ``train``: the training images (N, C, H, W) in [-1, 1] (or an ``ImageSet``).
    ``scheduler``: any diffusers scheduler with ``alphas_cumprod`` (default DDPM, T = 1000).
    ``chunk_size``: training images handled per step of the streaming softmax, which bounds
    memory at batch x chunk_size (large training sets never form a full weight matrix).
    """

    def __init__(self, train, *, scheduler=None, device: torch.device | str = "cpu", chunk_size: int = 4096):
        x = _as_images(train, "train")
        super().__init__(sample_shape=tuple(x.shape[1:]), scheduler=scheduler, device=device)
        if chunk_size < 1:
            raise InputError(f"chunk_size: must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.train_ = x.reshape(len(x), -1).to(self.device, torch.float64)
        self.train_sq_ = self.train_.pow(2).sum(1)
        self.fingerprint = self._digest(self.train_)

    def _posterior_mean(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # logit_i = -||x - sqrt(a) x_i||^2 / (2 (1 - a)); the ||x||^2 term is common to all i and drops
        # out of the softmax. Streaming log-sum-exp over chunks of the training set.
        sa, var2 = a.sqrt(), 2 * (1 - a)
        run_max = torch.full((len(x), 1), -torch.inf, dtype=x.dtype, device=x.device)
        total = torch.zeros((len(x), 1), dtype=x.dtype, device=x.device)
        acc = torch.zeros_like(x)
        for s in range(0, len(self.train_), self.chunk_size):
            tr, sq = self.train_[s:s + self.chunk_size], self.train_sq_[s:s + self.chunk_size]
            logits = (2 * sa * (x @ tr.T) - a * sq) / var2
            new_max = torch.maximum(run_max, logits.max(1, keepdim=True).values)
            scale, w = (run_max - new_max).exp(), (logits - new_max).exp()
            total = total * scale + w.sum(1, keepdim=True)
            acc = acc * scale + w @ tr
            run_max = new_max
        return acc / total

    def weights(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Posterior weights P(x0 = x_i | x_t), (B, N): which training image each x_t comes from."""
        x = self._flat(x_t)
        a = self._abar(t, len(x))
        logits = (2 * a.sqrt() * (x @ self.train_.T) - a * self.train_sq_) / (2 * (1 - a))
        return logits.softmax(1)


class GaussianOracle(_ClosedFormDenoiser):
    """The optimal denoiser for a Gaussian fitted (with shrinkage) to ``images``: memorises nothing.

    ``images``: the images the Gaussian is fitted to (N, C, H, W) in [-1, 1] (or an ``ImageSet``);
    use a set disjoint from the members and holdout you audit.
    ``shrinkage``: ``"ledoit-wolf"`` (default, sklearn ``LedoitWolf``) or a float in [0, 1]
    (sklearn ``ShrunkCovariance``).
    Fitted attributes: ``mean_`` (D,), ``covariance_`` (D, D), ``eigenvalues_`` (D,),
    ``eigenvectors_`` (D, D), all float64.
    """

    def __init__(self, images, *, shrinkage: str | float = "ledoit-wolf", scheduler=None,
                 device: torch.device | str = "cpu"):
        from sklearn.covariance import LedoitWolf, ShrunkCovariance

        x = _as_images(images, "images")
        super().__init__(sample_shape=tuple(x.shape[1:]), scheduler=scheduler, device=device)
        flat = x.reshape(len(x), -1).double().cpu().numpy()
        if shrinkage == "ledoit-wolf":
            est = LedoitWolf().fit(flat)
        elif isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1:
            est = ShrunkCovariance(shrinkage=float(shrinkage)).fit(flat)
        else:
            raise InputError(f"shrinkage: expected 'ledoit-wolf' or a number in [0, 1], got {shrinkage!r}")
        self.shrinkage = shrinkage
        cov = (est.covariance_ + est.covariance_.T) / 2
        lam, vec = np.linalg.eigh(cov)
        as_t = lambda v: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, torch.float64)
        self.mean_, self.covariance_ = as_t(est.location_), as_t(cov)
        self.eigenvalues_, self.eigenvectors_ = as_t(np.clip(lam, 0, None)), as_t(vec)
        self.fingerprint = self._digest(self.mean_, self.covariance_)

    def _eps(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # sqrt(1 - a) (a Sigma + (1 - a) I)^-1 (x - sqrt(a) mu), in Sigma's eigenbasis (no 0/0 at small t).
        r = (x - a.sqrt() * self.mean_) @ self.eigenvectors_
        return (r * (1 - a).sqrt() / (a * self.eigenvalues_ + (1 - a))) @ self.eigenvectors_.T

    def _posterior_mean(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # mu + sqrt(a) Sigma (a Sigma + (1 - a) I)^-1 (x - sqrt(a) mu)
        r = (x - a.sqrt() * self.mean_) @ self.eigenvectors_
        return self.mean_ + (r * a.sqrt() * self.eigenvalues_ / (a * self.eigenvalues_ + (1 - a))) @ self.eigenvectors_.T
