"""Helpers shared by the image-model feature extractors: files, devices, preprocessing, batching."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from privaudit.api import InputError
from privaudit.model.denoiser import resolve_device  # noqa: F401 (the extractors' device option: one rule for all)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def existing_file(path: str | Path | None, *, plugin: str, param: str, what: str) -> Path:
    """``path`` as a Path, or a one-line InputError naming the parameter and the problem."""
    if path is None or str(path) == "":
        raise InputError(f"{plugin}.{param}: required ({what}); pass --param {plugin}.{param}=FILE")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p}: {plugin}.{param} ({what}) does not exist")
    if not p.is_file():
        raise InputError(f"{p}: {plugin}.{param} ({what}) is not a file")
    return p


def preprocess(x: torch.Tensor, *, size: int | Sequence[int] | None, channels: int | None,
               mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Images in [-1, 1] (n, C, H, W) -> the model's input: [0, 1], resized, channels matched, normalised.

    One channel is repeated to three (grey -> RGB); three become one by their mean.
    ``mean``/``std`` hold one value or one per channel.
    """
    x = x.float().add(1).div(2)
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise InputError(f"images have {x.shape[1]} channels; the feature model expects {channels}")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != hw:
            x = torch.nn.functional.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    c = x.shape[1]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if m.numel() not in (1, c) or s.numel() not in (1, c):
        raise InputError(f"mean/std have {m.numel()}/{s.numel()} values; images have {c} channels (give 1 or {c})")
    return (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)


def first_tensor(out) -> torch.Tensor:
    """A model's output as one tensor: the first tensor of a tuple/list/dict output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"feature model returned {type(out).__name__}; expected a tensor")


@torch.no_grad()
def embed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, batch_size: int,
          device: torch.device) -> np.ndarray:
    """``fn`` applied batch by batch on ``device``; float32 (n, d) on the CPU."""
    out = []
    for s in range(0, len(x), batch_size):
        f = first_tensor(fn(x[s : s + batch_size].to(device)))
        out.append(f.flatten(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
