"""PIAN: PIA with a normalised proximal initialisation (Kong et al., ICLR 2024).

Same statistic as PIA (``pia``), except that eps0 = eps_theta(x0, 0) is rescaled per image so
that it looks like standard Gaussian noise before x0 is re-noised with it:
eps0 <- eps0 * sqrt(2 / pi) / mean(|eps0|) (sqrt(2 / pi) is E|z| for z ~ N(0, 1)), as in the
authors' code. The model then sees an x_t whose noise has the magnitude it was trained on.
The paper finds PIAN stronger at low FPR on pixel DDPMs but fragile on latent models.

Defaults: t = 200 on a 1000-step schedule (mapped onto the model's), p = 4. Deterministic.

Threat model: gray box. Queries per image: 2 (t = 0, then t); nothing is fitted.
Differences from the paper: as for PIA, one fixed timestep instead of the best of several
chosen on evaluation data.
"""

from __future__ import annotations

import math

import torch

from privaudit.plugins.attacks.pia import PIAAttack


class PIANAttack(PIAAttack):
    """PIAN: PIA with eps_theta(x0, 0) rescaled to the mean magnitude of Gaussian noise."""

    name = "pian"
    id = "PA-MIA-004"

    def _initial_noise(self, eps0: torch.Tensor) -> torch.Tensor:
        scale = eps0.abs().flatten(1).mean(1).clamp_min(torch.finfo(eps0.dtype).tiny)
        return eps0 * (math.sqrt(2 / math.pi) / scale).view(-1, *[1] * (eps0.ndim - 1))
