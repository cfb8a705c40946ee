"""Structural black-box membership inference: SSIM of an image and its noised-and-denoised reconstruction.

Li et al. ("Unveiling Structural Memorization: Structural Membership Inference Attack for
Text-to-Image Diffusion Models", ACM MM 2024) observe that a model keeps the *structure* of the
images it was trained on through the early, high-SNR part of the diffusion process, and measure it
with SSIM rather than a pixel distance. Here: everything is ``rediffuse``'s (noise the image to a
timestep t with ``k`` draws, let the model's own sampler denoise each back, average the
reconstructions; t, k and, two-sided, the direction chosen on the calibration split only), except
the comparison: ``1 - SSIM(reconstruction, image)`` in pixels (``_ssim.py``: scikit-image's
default window, 7 x 7 uniform, sample covariances, data range 2 for images in [-1, 1]); higher SSIM
= member-like.

Authors' code (MM2024submission2850/StructualMIA, ``scripts/mia.py``, read for its definitions):
deterministic DDIM *inversion* of the image to t = 100 (two steps of 50), the inverted latent decoded
directly (no denoising), SSIM from scikit-image with ``data_range=1`` on [-1, 1] data, colour.
Reported (5000 + 5000 images, 512 px): LDM AUC 0.930, TPR 0.575 at 1% FPR; SD v1-1 AUC 0.920,
TPR 0.512; AUC is flat for t in 50-200 and falls from t = 300. Where ours differs: the
reconstruction is what a variation endpoint returns (forward noise, the model's sampler back to
t = 0: black box), not a decoded inversion (which needs the noise predictions: gray box); the
timestep is swept over ``timesteps`` (default 50, 100, 200: their flat range) on the calibration
split; the data range is the images' true range.

Threat model: black box (images in, images out). Queries per image: ``k`` x the sampler steps from
t to 0 (twice that for text models with classifier-free guidance).
"""

from __future__ import annotations

import torch

from privaudit.api import store_params
from privaudit.plugins.attacks._ssim import ssim
from privaudit.plugins.attacks.rediffuse import ReDiffuseAttack


class SSIMReDiffuseAttack(ReDiffuseAttack):
    """Black-box: SSIM between an image and the model's reconstruction of it from a calibrated timestep."""

    name = "ssim-rediffuse"
    id = "PA-MIA-013"
    references = ("Li et al., Unveiling Structural Memorization: Structural Membership Inference Attack for "
                  "Text-to-Image Diffusion Models, ACM MM 2024",)

    def __init__(self, *, timesteps: tuple[int, ...] = (50, 100, 200), draws: tuple[int, ...] = (1, 2),
                 steps: int = 20, sampler: str = "ddim", guidance_scale: float = 5.0, two_sided: bool = True):
        store_params(self, locals())

    def distance(self, reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim(reconstruction, image)
