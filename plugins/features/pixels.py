"""Pixel features: the image itself, flattened (values in [-1, 1]).

The default feature space for replication: exact and near-exact copies are closest here.
"""

from __future__ import annotations

import numpy as np
import torch

from privaudit.api import FeatureExtractor


class PixelFeatures(FeatureExtractor):
    """Raw pixels, flattened."""

    name = "pixels"
    id = "PA-FEAT-001"

    parameter_constraints: dict = {}  # no parameters

    def __init__(self):
        pass

    def transform(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().flatten(1).float().cpu().numpy()
