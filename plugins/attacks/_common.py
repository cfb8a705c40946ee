"""Helpers shared by attack plugins."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def randn(shape, *, generator: torch.Generator, device) -> torch.Tensor:
    """Noise drawn on the CPU generator, so scores do not depend on the device."""
    return torch.randn(tuple(shape), generator=generator).to(device)


def calibration_auc(member_scores: torch.Tensor, holdout_scores: torch.Tensor) -> float:
    m, h = member_scores.detach().cpu().numpy(), holdout_scores.detach().cpu().numpy()
    return float(roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(h))], np.r_[m, h]))
