"""The one adapter every attack uses: ``Denoiser.eps(x_t, t)`` plus the noise schedule.

A CPSample-protected model is a Denoiser too (eps plus its guidance term), so every
attack audits raw and protected models with the same code, and ``sample`` below draws
from either with the same seeded loop.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    """What attacks and samplers need from a diffusion model.

    ``alphas_cumprod``: (T,) float32 tensor on CPU; ``sample_shape``: (C, H, W);
    ``eps``: the noise prediction for integer timesteps ``t`` (scalar or (B,));
    ``scheduler``: a diffusers scheduler config source for sampling;
    ``white_box``: the raw network (``torch.nn.Module``) where weights are visible to
    the attacker, used by gradient-based attacks as ``white_box(x_t, t)``. A conditioned
    view (``privaudit.latent.ConditionedDenoiser``) also has ``conditioning(n)``, the
    per-row conditioning of a batch of n rows, which ``white_box`` takes as a third argument.
    """

    alphas_cumprod: torch.Tensor
    sample_shape: tuple[int, int, int]
    device: torch.device

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor: ...


class UNetDenoiser:
    """A diffusers ``UNet2DModel`` (any scheduler) as a Denoiser."""

    def __init__(self, *, unet: torch.nn.Module, scheduler, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().float().cpu()
        cfg = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.sample_shape = (cfg.in_channels, size, size)
        self.white_box = self.unet

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        if t.ndim == 0:
            t = t.expand(len(x_t))
        return self.unet(x_t, t).sample


def num_train_timesteps(denoiser: Denoiser) -> int:
    return len(denoiser.alphas_cumprod)


def scale_t(denoiser: Denoiser, t: int, reference: int = 1000) -> int:
    """A timestep given for a 1000-step schedule, mapped onto the denoiser's schedule."""
    return max(0, min(num_train_timesteps(denoiser) - 1, round(t * num_train_timesteps(denoiser) / reference)))


def noised(denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    a = denoiser.alphas_cumprod.to(x0.device)[torch.as_tensor(t, device=x0.device)]
    a = a.view(-1, *[1] * (x0.ndim - 1)) if a.ndim else a
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


@torch.no_grad()
def sample(denoiser: Denoiser, *, n: int, steps: int = 50, sampler: str = "ddim", seed: int = 0,
           batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Draw ``n`` images in [-1, 1] from any Denoiser, seeded per batch.

    ``sampler``: "ddim" (eta 0, deterministic given the initial noise) or "ddpm".
    Uses the denoiser's scheduler config, so the schedule matches training. Guidance
    inside ``denoiser.eps`` (a protected model) may enable gradients itself. Latent models
    (``privaudit.latent``) are sampled in latent space with the empty prompt and decoded.
    """
    from diffusers import DDIMScheduler, DDPMScheduler
    from tqdm.auto import tqdm

    from privaudit.latent import latent_of

    cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}.get(sampler)
    if cls is None:
        raise ValueError(f"unknown sampler {sampler!r}; choose ddim or ddpm")
    sched = cls.from_config(denoiser.scheduler.config)
    sched.set_timesteps(steps)
    out = []
    batches = range(0, n, batch_size)
    bar = tqdm(total=n * len(sched.timesteps), desc=f"sampling ({sampler}, {steps} steps)", disable=not progress, unit="img-step")
    for b, start in enumerate(batches):
        gen = torch.Generator(device="cpu").manual_seed(seed * 100_003 + b)
        m = min(batch_size, n - start)
        x = torch.randn((m, *denoiser.sample_shape), generator=gen).to(denoiser.device)
        for t in sched.timesteps:
            eps = denoiser.eps(x, int(t))
            x = sched.step(eps, t, x, generator=gen).prev_sample if sampler == "ddpm" else sched.step(eps, t, x).prev_sample
            bar.update(m)
        lat = latent_of(denoiser)
        out.append((x if lat is None else lat.decode(x)).clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(out)
