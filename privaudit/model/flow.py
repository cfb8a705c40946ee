"""Flow-matching models (``FlowMatchEulerDiscreteScheduler``: SD3, Flux, ...) as Denoisers.

A flow model is trained on x_t = (1 - sigma) x0 + sigma eps and predicts the velocity
u = eps - x0; then eps = x_t + (1 - sigma) u and x0 = x_t - sigma u. Every attack and CPSample
reasons in the variance-preserving (VP) convention x = sqrt(abar) x0 + sqrt(1 - abar) eps of
``privaudit.model.denoiser``, and any (a, s) schedule is a VP schedule after dividing x by
c = sqrt(a^2 + s^2): x / c = (a / c) x0 + (s / c) eps. So a flow model is presented through its
*VP-equivalent view*: index t on a grid sigma_t = (t + 1) / (T + 1), t = 0..T-1 (T the
scheduler's ``num_train_timesteps``; sigma = 1 itself is left out, where x carries no signal and
the VP form divides by zero), with

    abar_t = (1 - sigma_t)^2 / ((1 - sigma_t)^2 + sigma_t^2)   (the same signal-to-noise ratio),
    eps(x_vp, t) = x_flow + (1 - sigma_t) u(x_flow, sigma_t T),   x_flow = c_t x_vp.

A deterministic DDIM step in the VP view is exactly the flow model's Euler step (both move
to a_next x0_hat + s_next eps_hat), so ``privaudit.model.denoiser.sample`` draws from a flow model
with DDIM on the VP-equivalent betas (``scheduler``, built here); ``ddpm`` gives ancestral
sampling on the same schedule. The samplers visit the noise levels the model's own sampler
visits (``flow_sampling_timesteps``): diffusers' ``FlowMatchEulerDiscreteScheduler`` built from
the model's scheduler config sets its sigmas as the family's pipeline asks (its ``shift``, SD3's
3.0; or the resolution-dependent dynamic shift ``mu`` Flux computes from the image's token count,
with Flux's explicit sigmas), and each sigma is taken to the nearest point of the VP grid
(spacing 1 / (T + 1)); DDIM then steps that non-uniform grid (``privaudit.model.grid_ddim``).
The network is fed ``sigma * T``, the timestep diffusers' flow pipelines pass.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from privaudit.model.denoiser import Denoiser, run_in, signal_noise


def flow_grid(num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, VP-equivalent alphas_cumprod), both (T,) float32, sigma ascending with t."""
    T = int(num_train_timesteps)
    sig = torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)
    acp = (1 - sig) ** 2 / ((1 - sig) ** 2 + sig ** 2)
    return sig.float(), acp.float()


def sigmas_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The flow sigma with the same signal-to-noise ratio as each abar: (1 - sigma) / sigma = sqrt(SNR).

    Used so the sigma fed to the network matches the float32 ``alphas_cumprod`` the attacks and
    samplers use exactly (near sigma = 0, 1 - abar ~ sigma^2 is only resolved to a few percent)."""
    acp = alphas_cumprod.double()
    return (1 / (1 + (acp / (1 - acp)).sqrt())).float()


def shift_mu(config, image_seq_len: int, *, default_max_shift: float = 1.15) -> float:
    """The dynamic shift ``mu`` diffusers' Flux and SD3 pipelines compute for ``image_seq_len`` image
    tokens from the scheduler config (their ``calculate_shift``; its defaults differ only in
    ``max_shift``: Flux 1.15, SD3 1.16)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return float(calculate_shift(int(image_seq_len), config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", default_max_shift)))


def flow_sampling_timesteps(flow_scheduler, steps: int, *, grid_sigmas: torch.Tensor, mu: float | None = None,
                            sigmas=None) -> list[int]:
    """The VP-view timesteps (indices into ``grid_sigmas``, strictly decreasing) at the sigmas the
    model's own Euler sampler visits in ``steps`` steps: a ``FlowMatchEulerDiscreteScheduler`` from
    the model's config, ``set_timesteps(steps, mu=..., sigmas=...)`` as the pipeline calls it (its
    ``shift``, dynamic shift, terminal stretch and sigma conversions all applied by diffusers).
    Each sigma goes to the nearest grid point; two that meet there are visited once."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sched = FlowMatchEulerDiscreteScheduler.from_config(flow_scheduler.config)
    if sched.config.get("use_dynamic_shifting") and mu is None:
        raise ValueError("this flow scheduler shifts by resolution (use_dynamic_shifting): pass mu")
    if sched.config.get("invert_sigmas"):
        raise ValueError("inverted flow schedules (invert_sigmas) are not supported")
    kw: dict[str, Any] = {"mu": mu} if mu is not None else {}
    if sigmas is not None:
        sched.set_timesteps(sigmas=sigmas, **kw)
    else:
        sched.set_timesteps(int(steps), **kw)
    visited = sched.sigmas[:-1].double()  # the last entry is the terminal sigma the final step lands on
    grid = grid_sigmas.double()
    idx = (grid[None, :] - visited[:, None]).abs().argmin(1).tolist()
    return sorted(set(idx), reverse=True)


def vp_scheduler(alphas_cumprod: torch.Tensor):
    """A DDPM scheduler whose ``alphas_cumprod`` are the given ones (the VP-equivalent schedule):
    the config source ``sample`` builds DDIM / DDPM samplers from."""
    from diffusers import DDPMScheduler

    acp = alphas_cumprod.double()
    betas = 1 - acp / torch.cat([torch.ones(1, dtype=acp.dtype), acp[:-1]])
    return DDPMScheduler(num_train_timesteps=len(acp), trained_betas=betas.clamp(0, 0.999999).tolist(),
                         clip_sample=False, prediction_type="epsilon")


class FlowEpsNetwork(torch.nn.Module):
    """A flow network as ``f(x_vp, t, cond=None) -> eps`` in the VP-equivalent view (for white-box attacks)."""

    def __init__(self, net: torch.nn.Module, *, sigmas: torch.Tensor, alphas_cumprod: torch.Tensor,
                 call: Callable | None = None):
        super().__init__()
        self.net = net
        self._sig, self._acp = sigmas, alphas_cumprod  # plain attributes: not parameters
        self._call = call or (lambda net, x, t, cond: run_in(net, x, t))

    def forward(self, x_vp: torch.Tensor, t, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_vp.device)
        t = t.expand(len(x_vp)) if t.ndim == 0 else t
        return flow_eps(self.net, x_vp, t, cond, sigmas=self._sig, alphas_cumprod=self._acp, call=self._call)


def flow_eps(net, x_vp: torch.Tensor, t: torch.Tensor, cond: Any, *, sigmas: torch.Tensor,
             alphas_cumprod: torch.Tensor, call: Callable) -> torch.Tensor:
    """eps for VP-view inputs ``x_vp`` at grid indices ``t`` (B,): the network's velocity converted."""
    a, s = signal_noise(alphas_cumprod, t, x_vp)
    # a = (1 - sigma) / c and s = sigma / c, so c = 1 / (a + s) and 1 - sigma = a c: no 1 - sigma from a
    # rounded sigma (near sigma = 1 that cancels to a few digits, and x0 = (x - s eps) / a multiplies the
    # error by 1 / a, 1000 at the first step of a grid that starts at sigma = 0.999)
    c = 1 / (a + s)
    x_flow = c * x_vp
    u = call(net, x_flow, sigmas.to(x_vp.device)[t.long()] * len(sigmas), cond)
    u = getattr(u, "sample", u)
    if u.shape[1] == 2 * x_vp.shape[1]:  # learned variance
        u = u[:, : x_vp.shape[1]]
    return x_flow + (a * c) * u


class FlowDenoiser(Denoiser):
    """A pixel-space flow-matching network (e.g. ``UNet2DModel`` with ``FlowMatchEulerDiscreteScheduler``)
    in the VP-equivalent view (see the module docstring)."""

    def __init__(self, *, net: torch.nn.Module, flow_scheduler, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.flow_scheduler = flow_scheduler
        self.scheduler = vp_scheduler(flow_grid(flow_scheduler.config.num_train_timesteps)[1])
        # the schedule as the sampler's scheduler computes it (float32), and the sigmas that match it
        self.alphas_cumprod = self.scheduler.alphas_cumprod.detach().float().cpu()
        self.sigmas = sigmas_of(self.alphas_cumprod)
        cfg: Any = net.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.sample_shape = (int(cfg.in_channels), int(size), int(size))
        self.white_box = FlowEpsNetwork(self.net, sigmas=self.sigmas, alphas_cumprod=self.alphas_cumprod)

    def sampling_timesteps(self, steps: int) -> list[int]:
        """The noise levels the model's own scheduler visits (its ``shift``; a dynamic shift for the
        image's pixel count, as a pipeline would pass it), on the VP grid."""
        cfg = self.flow_scheduler.config
        mu = shift_mu(cfg, self.sample_shape[1] * self.sample_shape[2]) if cfg.get("use_dynamic_shifting") else None
        return flow_sampling_timesteps(self.flow_scheduler, steps, grid_sigmas=self.sigmas, mu=mu)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        tt = torch.as_tensor(t, device=self.device)
        tt = tt.expand(len(x_t)) if tt.ndim == 0 else tt
        return flow_eps(self.net, x_t, tt, cond, sigmas=self.sigmas, alphas_cumprod=self.alphas_cumprod,
                        call=lambda net, x, ts, c: run_in(net, x, ts))
