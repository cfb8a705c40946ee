"""``MemberBank``: the members' pixels and a calibrated copy radius, as a diffusers pipeline component.

What it is. The training images (N, C, H, W, the model's range [-1, 1]) held as a buffer, with the
copy ``radius`` and the ``quantile`` it was calibrated at in its config. It is a diffusers
``ModelMixin``/``ConfigMixin``, so a protected pipeline saves it as ``members/config.json`` +
``members/diffusion_pytorch_model.safetensors`` (no pickles) and ``DiffusionPipeline.from_pretrained``
loads it once this module is imported (the ``rejection`` and ``repel`` packages import it; see
``pipelines.py``). Used by ``rejection`` (post-hoc rejection of copies) and ``repel`` (dissimilarity
guidance).

The bank IS the training set. A pipeline folder that carries it hands every member's pixels to
whoever reads the folder: a leak far worse than any membership attack. Serve from it; never
publish it. Keep the protected folder server-side, as private as the training data itself.

Distance. Pixel L2 over flattened images in [-1, 1]: ``nearest(x)`` returns each row's distance to
its nearest member and that member's index, computed with one matrix product per chunk of
``chunk_size`` members on the bank's device (the nearest index by |x|^2 + |m|^2 - 2 x.m, then the
exact distance to that member recomputed by subtraction, so a near copy is not lost to float32
cancellation). The feature space is pixels on purpose: the served pipeline needs nothing but itself
(no feature extractor to ship or version). The audit's ``nn`` detector may measure copies in another
feature space (``--param nn.features=...``); a sample far from every member in pixels can still be
a copy there (a shifted or recoloured member), and the report's copy fraction is the detector's.

Radius (``calibrate_radius``). The ``quantile`` of real never-trained-on images' nearest-member
pixel distances: the rule of the ``nn`` detector and of the rejection control, so "closer than the
radius" means "closer to a member than all but ``quantile`` of unseen images are", a criterion whose
false-positive rate on unseen images is ``quantile`` in any dimension. Calibrate on images the
audit does not evaluate on (``--reference``), else the holdout the audit scores is also the one the
radius was fitted to.

Cost: memory N x C x H x W float32 (CIFAR-10's 50,000 members: 600 MiB); a query costs one
(B x N) matrix product of width C x H x W.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 (diffusers resolves component loaders by this name)

from privaudit.api import ImageSet, InputError, atomic_dir, write_text


def check_members(x: torch.Tensor, *, name: str = "members") -> torch.Tensor:
    """The members as a finite float32 (N, C, H, W) tensor in [-1, 1], or a one-line ``InputError``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise InputError(f"{name}: expected a float tensor (N, C, H, W) of images in [-1, 1], got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if len(x) == 0:
        raise InputError(f"{name}: no images (a member bank and its calibration need at least one image each)")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{name}: {bad} of {len(x)} images contain NaN or infinite pixels")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
        raise InputError(f"{name}: pixels must lie in the model's range [-1, 1], got {lo:.3g}..{hi:.3g}")
    return x.detach().float()


class MemberBank(ModelMixin, ConfigMixin):
    """The members' pixels (buffer ``members``, (N, C, H, W) in [-1, 1]) and the copy radius in pixel L2.

    Build one with ``MemberBank.from_images(members, radius=..., quantile=...)``; the constructor's
    arguments only size the buffer (what ``from_pretrained`` does before loading the weights)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_members: int = 1, in_channels: int = 3, sample_size: int = 32, radius: float = 0.0,
                 quantile: float = 0.01, calibration: str = ""):
        super().__init__()
        if num_members < 1:
            raise InputError(f"member bank: num_members is {num_members}; a member bank needs at least one member")
        self.register_buffer("members", torch.zeros(num_members, in_channels, sample_size, sample_size))

    @classmethod
    def from_images(cls, members: torch.Tensor | ImageSet, *, radius: float = 0.0, quantile: float = 0.01,
                    calibration: str = "") -> "MemberBank":
        """A bank holding ``members`` (a tensor or an ``ImageSet``); ``radius`` from ``calibrate_radius``."""
        x = check_members(members.tensor() if isinstance(members, ImageSet) else members,
                          name=getattr(members, "source", "members"))
        if x.shape[2] != x.shape[3]:
            raise InputError(f"members: images must be square, got {x.shape[2]}x{x.shape[3]}")
        if not (np.isfinite(radius) and radius >= 0):
            raise InputError(f"member bank: radius must be a finite number >= 0, got {radius!r}")
        bank = cls(num_members=len(x), in_channels=int(x.shape[1]), sample_size=int(x.shape[2]), radius=float(radius),
                   quantile=float(quantile), calibration=str(calibration))
        bank.members.copy_(x)
        return bank.eval().requires_grad_(False)

    @property
    def radius(self) -> float:
        return float(self.config.radius)

    def check_finite(self, where: str) -> None:
        """A loaded bank with NaN/inf pixels would make every distance NaN (never "far from all members")."""
        check_members(self.members, name=where)

    @torch.no_grad()
    def nearest(self, x: torch.Tensor, *, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance, index) of each row's nearest member in pixel L2, float32 and int64 (B,) on ``x``'s device."""
        if tuple(x.shape[1:]) != tuple(self.members.shape[1:]):
            raise InputError(f"member bank: images shaped {tuple(x.shape[1:])} do not match the members' "
                             f"{tuple(self.members.shape[1:])}")
        dev = self.members.device
        q = x.detach().flatten(1).to(dev, torch.float32)
        mem = self.members.flatten(1).float()
        qq = (q * q).sum(1, keepdim=True)
        best = torch.full((len(q),), float("inf"), device=dev)
        index = torch.zeros(len(q), dtype=torch.long, device=dev)
        for s in range(0, len(mem), chunk_size):
            m = mem[s:s + chunk_size]
            d2 = qq - 2.0 * (q @ m.T) + (m * m).sum(1)[None]
            v, i = d2.min(1)
            better = v < best
            best = torch.where(better, v, best)
            index = torch.where(better, i + s, index)
        dist = (q - mem[index]).norm(dim=1)  # exact, by subtraction
        return dist.to(x.device), index.to(x.device)

    def distances(self, images: Iterable[torch.Tensor] | torch.Tensor | ImageSet, *, batch_size: int = 1024) -> np.ndarray:
        """Nearest-member distances of a whole set (a tensor, an ``ImageSet`` or an iterable of batches)."""
        if isinstance(images, ImageSet):
            batches: Iterable[torch.Tensor] = (b for _, b in images.batches(batch_size))
        elif isinstance(images, torch.Tensor):
            batches = images.split(batch_size)
        else:
            batches = images
        out = [self.nearest(b)[0].cpu().numpy() for b in batches]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def calibrate_radius(members: MemberBank | torch.Tensor | ImageSet, holdout: torch.Tensor | ImageSet,
                     quantile: float) -> float:
    """The ``quantile`` of ``holdout`` images' nearest-member pixel distances (``np.quantile``, linear
    interpolation: the rule of the ``nn`` detector and of the rejection control)."""
    if not 0.0 < quantile < 1.0:
        raise InputError(f"radius quantile must lie in (0, 1), got {quantile!r}")
    bank = members if isinstance(members, MemberBank) else MemberBank.from_images(members)
    name = getattr(holdout, "source", "holdout")
    x = check_members(holdout.tensor() if isinstance(holdout, ImageSet) else holdout, name=name)
    return float(np.quantile(bank.distances(x), quantile))


# ---------------------------------------------------------------------------- what the bank's mitigations share


def pixel_unet(ctx, method: str):
    """(unet, scheduler) of a pixel ``UNet2DModel`` target, else a one-line ``InputError``."""
    from privaudit.model.denoiser import latent_of

    unet, scheduler = getattr(ctx.pipeline, "unet", None), getattr(ctx.pipeline, "scheduler", None)
    net = unet if unet is not None else getattr(ctx.pipeline, "transformer", None)
    if latent_of(ctx.denoiser) is not None or type(unet).__name__ != "UNet2DModel" or scheduler is None:
        kind = "a latent (text-to-image) pipeline" if latent_of(ctx.denoiser) is not None else "not a pixel UNet2DModel"
        raise InputError(f"{ctx.model_dir}: {method} protects pixel UNet2DModel pipelines for now; this one's "
                         f"denoiser is {type(net).__name__} ({kind})")
    return unet, scheduler


@dataclass(frozen=True)
class Calibration:
    """Nearest-member pixel distances of the images the radius is calibrated on."""

    role: str  # "reference" or "holdout"
    source: str
    distances: np.ndarray

    def radius(self, quantile: float) -> float:
        return float(np.quantile(self.distances, quantile))

    def describe(self) -> str:
        why = ("never-trained-on images the audits do not evaluate on" if self.role == "reference" else
               "the holdout the audits also evaluate on (no reference set was given): the radius is fitted to the "
               "evaluation images")
        return f"{self.role} ({len(self.distances)} images, {self.source}): {why}"


def calibrate(ctx, bank: MemberBank) -> Calibration:
    """Distances of ``ctx.reference`` (never trained on, never evaluated on) when given, else ``ctx.holdout``."""
    role, images = ("reference", ctx.reference) if ctx.reference is not None else ("holdout", ctx.holdout)
    x = check_members(images.tensor(), name=images.source)
    return Calibration(role=role, source=str(images.source), distances=bank.to(ctx.device).distances(x))


def save_and_load(ctx, pipe, *, card: str):
    """Save ``pipe`` to ``ctx.out/protected`` (atomically, with a README.md model card) and load it back:
    what is audited is what ships. Returns (folder, denoiser)."""
    from privaudit.model.target import load_target

    folder = Path(ctx.out) / "protected"
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_text(tmp / "README.md", card)
    denoiser, _, _ = load_target(folder, device=str(ctx.device))
    return folder, denoiser


def model_card(*, title: str, cls: str, package: str, rule: str, settings: str) -> str:
    """The README.md of a protected folder that carries a member bank."""
    return f"""# {title} (written by privaudit)

Components: `unet` (the original model, untouched), `scheduler`, `members` (a MemberBank: THE TRAINING
IMAGES THEMSELVES, every member's pixels, and the copy radius).
{rule} ({settings}).

KEEP THIS FOLDER SERVER-SIDE. `members/` is the training set: publishing the folder publishes every
training image, and anyone holding the weights can also sample the raw `unet` without protection.
Serve images from it; never ship it.

Load it offline, without pickles, after importing privaudit's plugin (it registers the
pipeline class with diffusers; no code is stored in this folder):

```python
import {package}  # registers {cls}
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("path/to/protected")
images = pipe(batch_size=4).images
```

Audit it like any model: `privaudit scan path/to/protected --members ... --holdout ...`.
"""
