"""PFAMI: probabilistic fluctuation membership inference (Fu et al. 2023).

Signal: a model that memorised an image puts it at a local maximum of its likelihood, so slightly
perturbed neighbours of a member are *less* likely than the member itself, by more than for an
unseen image. The denoising loss stands in for the negative log-likelihood. Per image and attack
timestep t: ``L(x, t) = ||eps - eps_theta(sqrt(abar_t) x + sqrt(1 - abar_t) eps, t)||^2`` (mean
over the image), the same for each neighbour ``x_s`` (centre crop to ``round-down(s * size)``
pixels per side, resized back bilinearly with antialiasing, for each strength ``s``), and the
fluctuation ``F_t = mean_s (L(x_s, t) - L(x, t)) / L(x, t)``. Score: the mean of ``F_t`` over the
timesteps; higher = member-like (the premise fixes the direction). Text models are perturbed in
latent space and conditioned on each image's caption without guidance, as the authors' Stable
Diffusion pipeline does.

Authors' code (read for its definitions): CopyMark (caradryanl/CopyMark,
``pfami_pipeline_stable_diffusion.py``, the suite's PFAMI for Stable Diffusion): strengths 10 values
from 0.95 to 0.7, timesteps 50, 100, ..., 500 (their list 0-450 shifted by 50), one noise draw per
timestep and a fresh one per neighbour, the summed squared error, score ``sum_t mean_s (L - L_s) / L``
(lower = member); MIA-Gen (wjfu99/MIA-Gen, the authors' DDPM code): the same crop, timesteps 0-450,
``(L_s - L) / L`` averaged over timesteps (higher = member). Reported: CopyMark on SD 1.5 (LAION
members vs COCO) AUC 0.587, TPR 0.212 at 1% FPR; CLiD's paper on SD 1.4 fine-tuned on MS-COCO, AUC
0.604 (real-world fine-tune) and 0.986 (over-trained). Where ours differs: the loss is a mean, not
a sum (a constant factor), and one noise draw per timestep is shared by the image and all its
neighbours (common random numbers: the difference measures the perturbation, not the draw);
``k`` draws per timestep are averaged (default 1, theirs).

Threat model: gray box (noise predictions at chosen timesteps). Queries per image:
``len(timesteps) * (len(strengths) + 1) * k`` (110 with the defaults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from privaudit.api import Interval, MembershipAttack, Noise, SequenceOf, store_params
from privaudit.plugins.attacks._common import FIT_CHUNK, eps_at, image_chunks, mapped_timesteps, noise_to

STRENGTHS = tuple(round(0.95 - 0.25 * i / 9, 4) for i in range(10))  # 0.95 ... 0.7, CopyMark's


def crop_resize(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Centre crop to ``int(strength * size)`` pixels per side, resized back (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, int(h * strength)), max(1, int(w * strength))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    return F.interpolate(crop.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True).to(x.dtype)


class PFAMIAttack(MembershipAttack):
    """Gray-box: how much the denoising loss rises at cropped-and-resized neighbours of an image."""

    name = "pfami"
    id = "PA-MIA-014"
    threat_model = "gray-box"
    references = ("Fu et al., A Probabilistic Fluctuation based Membership Inference Attack for Diffusion Models, "
                  "arXiv 2308.12143",)

    parameter_constraints = {"strengths": [SequenceOf(Interval(float, 0, 1, closed="neither"))],
                             "timesteps": [SequenceOf(Interval(int, 0, 999))], "k": [Interval(int, 1, 64)]}

    def __init__(self, *, strengths: tuple[float, ...] = STRENGTHS,
                 timesteps: tuple[int, ...] = tuple(range(50, 501, 50)), k: int = 1):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(len(self.timesteps) * (len(self.strengths) + 1) * self.k)

    def fit(self, denoiser, *, members, holdout, seed):
        return self  # nothing to calibrate: the direction is the method's premise

    def score(self, denoiser, x0, *, noise):
        size = max(1, FIT_CHUNK // (len(self.strengths) + 1))
        return torch.cat([self._fluctuation(d, x, n) for d, x, n in image_chunks(denoiser, x0, noise, size=size)])

    @torch.no_grad()
    def _fluctuation(self, denoiser, x0: torch.Tensor, noise: Noise) -> torch.Tensor:
        b, m = len(x0), len(self.strengths) + 1
        x = torch.cat([x0] + [crop_resize(x0, s) for s in self.strengths])  # block j: neighbour j (0: the image)
        total = torch.zeros(b, dtype=torch.float64, device=x0.device)
        ts = mapped_timesteps(denoiser, self.timesteps)
        for t in ts:
            for draw in range(self.k):
                eps = noise.randn(x0.shape, tag=("pfami", t, draw), device=x0.device).repeat(m, *[1] * (x0.ndim - 1))
                loss = (eps_at(denoiser, noise_to(denoiser, x, t, eps), t) - eps).pow(2).flatten(1).mean(1)
                loss = loss.double().view(m, b)
                total += ((loss[1:] - loss[0]) / loss[0].clamp_min(1e-12)).mean(0)
        return (total / (len(ts) * self.k)).float()
