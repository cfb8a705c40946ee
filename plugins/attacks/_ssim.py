"""SSIM, the structural similarity index (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004), per image.

For images ``a`` and ``b`` with values in a range of width ``data_range`` ``L``: local means,
variances and the covariance in a ``win`` x ``win`` window,
``SSIM = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))`` with
``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``, averaged over the window positions that lie wholly
inside the image and over channels. The window is scikit-image's default (``structural_similarity``,
what the structural attack's authors call): uniform, 7 pixels, sample (co)variances (``n / (n - 1)``);
an image smaller than the window gets the largest odd window that fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0, win: int = 7) -> torch.Tensor:
    """Per-image mean SSIM of rows ``a`` and ``b`` (N, C, H, W); 1 for identical images."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    size = min(win, a.shape[2], a.shape[3])
    size -= 1 - size % 2  # odd

    def mean(x: torch.Tensor) -> torch.Tensor:  # window means at the valid positions, per channel
        return F.avg_pool2d(x, size, stride=1)

    mu_a, mu_b = mean(a), mean(b)
    unbias = size * size / (size * size - 1) if size > 1 else 1.0
    var_a = unbias * (mean(a * a) - mu_a ** 2)
    var_b = unbias * (mean(b * b) - mu_b ** 2)
    cov = unbias * (mean(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()
