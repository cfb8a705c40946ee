"""A torchvision architecture with weights from a local file, as a feature extractor.

``arch`` names any model ``torchvision.models.get_model`` knows (``resnet50``,
``vit_b_16``, ``convnext_tiny``, ...); it is built with ``weights=None`` (torchvision never
downloads here) and loaded from ``weights``: a ``.safetensors`` file or a PyTorch state
dict (``.pt``/``.pth``, read with ``weights_only=True``, optionally under a
``"state_dict"`` key). Loading is strict: a key mismatch is an error naming the keys.

By default the classification head is removed (``fc``, ``classifier`` or ``heads``
becomes the identity), so features are the penultimate activations (2048-d for
ResNet-50); ``head=True`` keeps the logits. Inputs: images in [0, 1] resized to ``size``
and normalised with ImageNet ``mean``/``std``; grey images are repeated to three channels.

torchvision is an optional dependency, imported only when this extractor is used; without
it the extractor fails with a clear message (``pip install torchvision`` matching torch).
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

HEADS = ("fc", "classifier", "heads", "head")


def load_state_dict(path) -> dict:
    """A state dict from ``.safetensors`` or a (weights-only) torch file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects beyond tensors, corrupt files
        raise InputError(f"{path}: not a weights-only state dict ({e.__class__.__name__}: {str(e)[:120]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


class TorchvisionFeatures(FeatureExtractor):
    """A torchvision architecture + local weights file (safetensors/state dict) as features."""

    name = "torchvision"
    id = "PA-FEAT-003"

    parameter_constraints = {
        "arch": [InstanceOf(str)], "weights": [None, InstanceOf(str)], "size": [None, Interval(int, 1, 4096)],
        "head": [InstanceOf(bool)], "channels": [Options(1, 3)],
        "mean": [SequenceOf(Interval(float, None, None))], "std": [SequenceOf(Interval(float, 0, None, closed="neither"))],
        "batch_size": [Interval(int, 1, None)], "device": [InstanceOf(str)],
    }

    def __init__(self, *, arch: str = "resnet50", weights: str | None = None, size: int | None = 224,
                 head: bool = False, channels: int = 3, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, batch_size: int = 128, device: str = "auto"):
        store_params(self, locals())

    def fit(self, *, reference=None) -> "TorchvisionFeatures":
        path = existing_file(self.weights, plugin=self.name, param="weights", what="a .safetensors or state-dict file")
        try:
            import torchvision
        except ImportError:
            raise InputError(f"{self.name}: torchvision is not installed; `pip install torchvision` matching "
                             f"torch {torch.__version__}, or export the model to TorchScript and use "
                             f"the torchscript extractor") from None
        try:
            model = torchvision.models.get_model(self.arch, weights=None)
        except ValueError:
            raise InputError(f"{self.name}.arch: unknown architecture {self.arch!r} in torchvision "
                             f"{torchvision.__version__}") from None
        missing, unexpected = _load(model, load_state_dict(path))
        if missing or unexpected:
            raise InputError(f"{path}: weights do not fit {self.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if not self.head:
            for attr in HEADS:
                if isinstance(getattr(model, attr, None), torch.nn.Module):
                    setattr(model, attr, torch.nn.Identity())
                    break
        self.device_ = resolve_device(self.device)
        self.model_ = model.to(self.device_).eval().requires_grad_(False)
        return self

    def transform(self, x: torch.Tensor) -> np.ndarray:
        if not hasattr(self, "model_"):
            self.fit()
        prep = lambda b: self.model_(preprocess(b, size=self.size, channels=self.channels, mean=self.mean, std=self.std))
        return embed(prep, x, batch_size=self.batch_size, device=self.device_)


def _load(model: torch.nn.Module, state: dict) -> tuple[list[str], list[str]]:
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)
