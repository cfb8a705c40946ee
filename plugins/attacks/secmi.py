"""SecMI_stat: step-wise error comparing membership inference (Duan et al., ICML 2023).

Signal: invert x0 deterministically with DDIM (eta = 0) in steps of ``k`` up to
x~ = x~_{t_sec - k}; take one more inverse step to t_sec and one denoising step back to
t_sec - k, giving x^. The model reproduces its own trajectory more faithfully near training
images, so members have a small error ``||x~ - x^||^2``; the score is its negation.

Each DDIM step from s to s' uses the noise the model predicts at the *current* point:
x0_hat = (x_s - sqrt(1 - abar_s) eps_theta(x_s, s)) / sqrt(abar_s),
x_s' = sqrt(abar_s') x0_hat + sqrt(1 - abar_s') eps_theta(x_s, s).
The inversion grid is 0, k, 2k, ... below t_sec (x0 itself sits at t = 0), as in the
authors' code (``ddim_multistep`` over ``range(0, t_sec, k)[1:]``).

Defaults follow the paper for DDPM on CIFAR-10: t_sec = 100, k = 10, given on a 1000-step
schedule and mapped onto the model's. Deterministic: no noise is drawn.

Threat model: gray box (noise predictions at chosen timesteps; no weights, no gradients).
Queries per image: t_sec / k - 1 inversion steps + 1 inverse step + 1 denoising step
= t_sec / k + 1 (11 by default), each a batched UNet forward pass; nothing is fitted.
Differences from the paper: none in the statistic. The paper also trains a small network
on the per-pixel errors (SecMI_NNs); that variant is not implemented.
"""

from __future__ import annotations

import torch

from privaudit.api import InputError, Interval, MembershipAttack, store_params
from privaudit.model.denoiser import scale_t
from privaudit.plugins.attacks._common import ddim_step, eps_at, lp_distance


class SecMIAttack(MembershipAttack):
    """SecMI_stat: error of one DDIM inverse + denoise step after deterministic inversion to t_sec."""

    name = "secmi"
    id = "PA-MIA-002"
    threat_model = "gray-box"
    references = ("Duan et al., Are Diffusion Models Vulnerable to Membership Inference Attacks?, ICML 2023",)

    parameter_constraints = {"t_sec": [Interval(int, 1, 999)], "k": [Interval(int, 1, 999)]}

    def __init__(self, *, t_sec: int = 100, k: int = 10):
        store_params(self, locals())

    def _grid(self, denoiser) -> tuple[list[int], int]:
        """(inversion timesteps 0, k, ... < t_sec, then t_sec), each literature timestep mapped onto
        the denoiser's schedule by equal signal-to-noise ratio (``scale_t``)."""
        if not (isinstance(self.k, int) and isinstance(self.t_sec, int) and 1 <= self.k <= self.t_sec):
            raise InputError(f"secmi: need integers 1 <= k <= t_sec, got k={self.k!r}, t_sec={self.t_sec!r}")
        grid = sorted({scale_t(denoiser, s) for s in range(0, self.t_sec, self.k)})
        top = max(scale_t(denoiser, self.t_sec), grid[-1] + 1)
        return grid, min(top, len(denoiser.alphas_cumprod) - 1)

    def queries_per_image(self) -> float:
        return float(len(range(0, self.t_sec, self.k)) + 1)

    def score(self, denoiser, x0, *, noise):
        grid, top = self._grid(denoiser)
        with torch.no_grad():
            x = x0
            for s, s_next in zip(grid[:-1], grid[1:]):  # DDIM inversion to t_sec - k
                x = ddim_step(denoiser, x, eps_at(denoiser, x, s), s, s_next)
            x_up = ddim_step(denoiser, x, eps_at(denoiser, x, grid[-1]), grid[-1], top)
            x_back = ddim_step(denoiser, x_up, eps_at(denoiser, x_up, top), top, grid[-1])
        return -lp_distance(x, x_back, p=2)
