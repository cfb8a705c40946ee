"""SimA: single-query score-based membership inference (Rao, Qu & Moyer, 2025).

Signal: the model's noise prediction at the clean image, eps_theta(x0, t), at a small t.
The optimal denoiser's output points from x0 towards a kernel-weighted mean of nearby
training images, so its norm is small where x0 is (close to) a training image. The score is
``-sum |eps_theta(x0, t)|^p``.

Timestep: the candidates in ``timesteps`` (default 0, 20, ..., 100 on a 1000-step schedule,
mapped onto the model's; the authors' grid for DDPMs) are swept on the calibration split only
and the best calibration AUC is used on the evaluation split (``timestep_``; the sweep is in
``sweep_``). p = 4 as in the authors' code. Deterministic: no noise is drawn.

Threat model: gray box (noise predictions at chosen timesteps). Queries per image: 1 at
scoring time (the sweep spends one per candidate on calibration images only).
Differences from the paper: the authors report the best timestep chosen on the evaluation
data; we choose it on the calibration split. The Monte-Carlo variant SimA-MC (averaging over
noised copies) is not implemented.
"""

from __future__ import annotations

import torch

from privaudit.api import InputError, Interval, MembershipAttack, SequenceOf, store_params
from privaudit.model.denoiser import scale_t
from privaudit.plugins.attacks._common import eps_at, lp_distance, sweep_timestep


class SimAAttack(MembershipAttack):
    """SimA: p-norm of the noise predicted at the clean image, one query, calibrated small t."""

    name = "sima"
    id = "PA-MIA-005"
    threat_model = "gray-box"
    references = ("Rao, Qu & Moyer, Score-based Membership Inference on Diffusion Models, arXiv 2509.25003, 2025",)

    parameter_constraints = {"timesteps": [Interval(int, 0, 999), SequenceOf(Interval(int, 0, 999))],
                             "p": [Interval(float, 0, 64, closed="right")]}

    def __init__(self, *, timesteps: tuple[int, ...] = (0, 20, 40, 60, 80, 100), p: float = 4.0):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return 1.0

    def _signal(self, denoiser, x0: torch.Tensor, t: int) -> torch.Tensor:
        with torch.no_grad():
            return -lp_distance(eps_at(denoiser, x0, t), p=self.p)

    def _check(self) -> None:
        if not (isinstance(self.p, (int, float)) and self.p > 0):
            raise InputError(f"sima: p must be a positive number, got {self.p!r}")
        ts = (self.timesteps,) if isinstance(self.timesteps, int) else tuple(self.timesteps)
        if not ts or not all(isinstance(t, int) and 0 <= t < 1000 for t in ts):
            raise InputError(f"sima: timesteps must be integers in [0, 999] (1000-step scale), got {self.timesteps!r}")

    def fit(self, denoiser, *, members, holdout, seed):
        self._check()
        ts = (self.timesteps,) if isinstance(self.timesteps, int) else self.timesteps
        self.timestep_, self.sweep_ = sweep_timestep(
            denoiser, ts, lambda x, t: self._signal(denoiser, x, t), members=members, holdout=holdout)
        return self

    def score(self, denoiser, x0, *, noise):
        t = getattr(self, "timestep_", None)
        if t is None:  # unfitted: the smallest candidate
            self._check()
            t = scale_t(denoiser, min((self.timesteps,) if isinstance(self.timesteps, int) else self.timesteps))
        return self._signal(denoiser, x0, t)
