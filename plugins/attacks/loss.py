"""Denoising-loss membership attack ("NA"; Matsumoto, Miura & Yanai 2023; Hu & Pang 2023).

Signal: the noise-prediction error ``||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2``,
averaged over ``k`` noise draws; members have lower error, so the score is its negation.

Timestep: the candidates in ``timesteps`` (given on a 1000-step schedule and mapped onto the
model's) are swept on the calibration split only, and the one with the best calibration
AUC is used on the evaluation split (``timestep_``; the sweep is kept in ``sweep_``).
Pass a single timestep to skip the sweep.

Threat model: gray box (noise predictions at chosen timesteps). Queries per image:
``k`` at scoring time, all ``k`` draws in one batched forward pass (the sweep spends ``k``
per candidate on calibration images only).

Differences from the literature: Matsumoto et al. evaluate one noise draw per image at each
of several timesteps and report the best timestep on the evaluation data (Matsumoto et al.: t = 200
for DDPMs); we average ``k = 4`` draws (less noisy scores) and pick the timestep on the
calibration split, so the reported numbers are not tuned on themselves.
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, MembershipAttack, Noise, SequenceOf, store_params
from privaudit.model.denoiser import scale_t
from privaudit.plugins.attacks._common import calibration_auc, eps_at, image_chunks, noise_to


class LossAttack(MembershipAttack):
    """Denoising loss at a calibrated timestep, averaged over k noise draws."""

    name = "loss"
    id = "PA-MIA-001"
    threat_model = "gray-box"
    references = ("Matsumoto et al., Membership Inference Attacks against Diffusion Models, SPW 2023",)

    parameter_constraints = {"timesteps": [SequenceOf(Interval(int, 0, 999))], "k": [Interval(int, 1, 1024)]}

    def __init__(self, *, timesteps: tuple[int, ...] = (50, 100, 200, 300, 500), k: int = 4):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(self.k)

    def _loss(self, denoiser, x0: torch.Tensor, t: int, noise: Noise) -> torch.Tensor:
        """Per-image loss, a bounded number of images per model pass (the timestep sweep sees a whole
        calibration set)."""
        return torch.cat([self._loss_chunk(d, x, t, n) for d, x, n in image_chunks(denoiser, x0, noise)])

    def _loss_chunk(self, denoiser, x0: torch.Tensor, t: int, noise: Noise) -> torch.Tensor:
        b = len(x0)
        x = x0.repeat(self.k, *[1] * (x0.ndim - 1))  # all k draws in one forward pass
        eps = noise.randn(x.shape, tag=t, device=x.device)  # row j*b+i: image i, draw j
        with torch.no_grad():
            err = (eps_at(denoiser, noise_to(denoiser, x, t, eps), t) - eps).pow(2).flatten(1).mean(1)
        return err.view(self.k, b).mean(0)

    def fit(self, denoiser, *, members, holdout, seed):
        ts = sorted({scale_t(denoiser, t) for t in self.timesteps})
        if len(ts) == 1:
            self.timestep_, self.sweep_ = ts[0], {}
            return self
        nm, nh = (Noise.for_images(x, seed=seed, stream="loss/fit") for x in (members, holdout))
        self.sweep_ = {t: calibration_auc(-self._loss(denoiser, members, t, nm), -self._loss(denoiser, holdout, t, nh))
                       for t in ts}
        self.timestep_ = max(self.sweep_, key=self.sweep_.get)
        return self

    def score(self, denoiser, x0, *, noise):
        t = getattr(self, "timestep_", None)
        if t is None:
            t = scale_t(denoiser, self.timesteps[0])
        return -self._loss(denoiser, x0, t, noise)
