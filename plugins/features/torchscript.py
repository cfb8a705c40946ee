"""Any local TorchScript image model as a feature extractor.

Loads ``path`` with ``torch.jit.load`` (no download, no pickle: TorchScript archives hold
code and weights, not arbitrary Python objects) and embeds images batch by batch. The
model receives ``(n, channels, size, size)`` float tensors normalised with ``mean`` and
``std`` from images in [0, 1]; a tuple/dict output contributes its first tensor, flattened.

Copy detection with SSCD (Pizzi et al., "A Self-Supervised Descriptor for Image Copy
Detection", CVPR 2022), as Somepalli et al. (CVPR 2023) use it: point ``path`` at a
downloaded ``sscd_disc_mixup.torchscript.pt``, set ``size=288`` (ImageNet ``mean``/``std``,
the defaults), and read the ``nn`` detector's cosine criterion at threshold 0.5::

    privaudit scan ... --param nn.features=torchscript \
        --param nn.feature_params='{"path": "sscd_disc_mixup.torchscript.pt", "size": 288}' \
        --param nn.cosine_threshold=0.5

Features are returned raw; the detector L2-normalises them for its cosine criterion.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from privaudit.api import FeatureExtractor, InputError, InstanceOf, Interval, Options, SequenceOf, store_params
from privaudit.plugins.features._image_model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    embed,
    existing_file,
    preprocess,
    resolve_device,
)


class TorchScriptFeatures(FeatureExtractor):
    """A local TorchScript image model (e.g. SSCD) as features; never downloads."""

    name = "torchscript"
    id = "PA-FEAT-002"
    references = ("Pizzi et al., A Self-Supervised Descriptor for Image Copy Detection, CVPR 2022",)

    parameter_constraints = {
        "path": [None, InstanceOf(str)], "size": [None, Interval(int, 1, 4096)], "channels": [None, Options(1, 3)],
        "mean": [SequenceOf(Interval(float, None, None))], "std": [SequenceOf(Interval(float, 0, None, closed="neither"))],
        "batch_size": [Interval(int, 1, None)], "device": [InstanceOf(str)],
    }

    def __init__(self, *, path: str | None = None, size: int | None = None, channels: int | None = 3,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 batch_size: int = 128, device: str = "auto"):
        store_params(self, locals())

    def fit(self, *, reference=None) -> "TorchScriptFeatures":
        path = existing_file(self.path, plugin=self.name, param="path", what="a TorchScript model file")
        self.device_ = resolve_device(self.device)
        try:
            self.model_ = torch.jit.load(str(path), map_location=self.device_).eval()
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise InputError(f"{path}: {self.name}.path is not a loadable TorchScript model ({first})") from None
        return self

    def transform(self, x: torch.Tensor) -> np.ndarray:
        if not hasattr(self, "model_"):
            self.fit()
        prep = lambda b: self.model_(preprocess(b, size=self.size, channels=self.channels, mean=self.mean, std=self.std))
        return embed(prep, x, batch_size=self.batch_size, device=self.device_)
