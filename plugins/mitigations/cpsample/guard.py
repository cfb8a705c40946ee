"""The CPSample guard classifier: a small time-conditioned CNN c_phi(x_t, t) -> one logit.

It predicts a member's fixed random label y_i ~ Bernoulli(1/2) from a noised copy of the
member, p(y = 1 | x_t, t) = sigmoid(c_phi(x_t, t)) (Kazdan et al., "CPSample: Classifier
Protected Sampling for Guarding Training Data During Diffusion", ICLR 2025,
arXiv 2409.07025). Labels carry no concept, so the classifier can only be right by
recognising individual members: it is confident near a member and should be uncertain
elsewhere. Sampling steers away from wherever it is confident (see ``protected.py``).

Architecture: a sinusoidal timestep embedding (diffusers ``Timesteps`` +
``TimestepEmbedding``), ``conv_in``, then per level ``layers_per_block`` residual blocks
(GroupNorm, SiLU, 3x3 conv, plus a per-channel shift from the time embedding) and a 2x2
average pool, then global average pooling and a linear head. It is a diffusers
``ModelMixin``/``ConfigMixin``, so it saves as ``config.json`` +
``diffusion_pytorch_model.safetensors`` and loads as a pipeline component.

``lipschitz=True`` wraps every conv and linear layer in spectral normalisation, bounding
how fast the logit can change with the input (one of the member-specificity options
measured in ``mitigation.py``).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 (diffusers resolves component loaders by this name)
from torch import nn


def _maybe_sn(layer: nn.Module, on: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if on else layer


class _Block(nn.Module):
    """Residual block whose features are shifted per channel by the time embedding."""

    def __init__(self, c_in: int, c_out: int, temb: int, groups: int, sn: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = _maybe_sn(nn.Conv2d(c_in, c_out, 3, padding=1), sn)
        self.time = _maybe_sn(nn.Linear(temb, c_out), sn)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = _maybe_sn(nn.Conv2d(c_out, c_out, 3, padding=1), sn)
        self.skip = nn.Identity() if c_in == c_out else _maybe_sn(nn.Conv2d(c_in, c_out, 1), sn)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.time(self.act(temb))[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class GuardClassifier(ModelMixin, ConfigMixin):
    """Time-conditioned binary classifier on noised images (one logit per image)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, sample_size: int = 32, block_out_channels: tuple[int, ...] = (32, 64),
                 layers_per_block: int = 1, norm_num_groups: int = 8, num_train_timesteps: int = 1000,
                 lipschitz: bool = False):
        super().__init__()
        c0 = block_out_channels[0]
        temb = 4 * c0
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, temb)
        self.conv_in = _maybe_sn(nn.Conv2d(in_channels, c0, 3, padding=1), lipschitz)
        blocks, pools, c = [], [], c0
        size = sample_size
        for level, c_out in enumerate(block_out_channels):
            for j in range(layers_per_block):
                blocks.append(_Block(c if j == 0 else c_out, c_out, temb, norm_num_groups, lipschitz))
            c = c_out
            # downsample between levels while the feature map is larger than 2x2
            last = level == len(block_out_channels) - 1
            pools.append(not last and size > 2)
            size = size // 2 if pools[-1] else size
        self.blocks = nn.ModuleList(blocks)
        self._pools = pools
        self.norm_out = nn.GroupNorm(min(norm_num_groups, c), c)
        self.head = _maybe_sn(nn.Linear(c, 1), lipschitz)
        self.act = nn.SiLU()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Logit of p(y = 1 | x_t, t), shape (B,). ``t``: integer timesteps, scalar or (B,)."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(len(x_t))
        temb = self.time_embedding(self.time_proj(t).to(x_t.dtype))
        h = self.conv_in(x_t)
        per_level = self.config.layers_per_block
        for i, block in enumerate(self.blocks):
            h = block(h, temb)
            if (i + 1) % per_level == 0 and self._pools[i // per_level]:
                h = nn.functional.avg_pool2d(h, 2)
        h = self.act(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h).squeeze(1)


def guard_for(unet_config, *, block_out_channels: tuple[int, ...], layers_per_block: int = 1,
              num_train_timesteps: int = 1000, lipschitz: bool = False) -> GuardClassifier:
    """A guard shaped for the UNet's images (channels, resolution)."""
    size = unet_config.sample_size if isinstance(unet_config.sample_size, int) else unet_config.sample_size[0]
    groups = min(8, *block_out_channels)
    return GuardClassifier(in_channels=unet_config.in_channels, sample_size=size,
                           block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                           norm_num_groups=groups, num_train_timesteps=num_train_timesteps, lipschitz=lipschitz)
