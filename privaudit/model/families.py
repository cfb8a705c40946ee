"""Latent model families beyond Stable Diffusion 1.x/2.x: one adapter each, on ``LatentTextDenoiser``.

Each adapter says how prompts become per-row conditioning (``_encode``: a tensor or a dict of
tensors with one row per prompt) and how its network is called (``_forward``); the base class
does the rest (VAE latents, the noise convention, flow matching's VP-equivalent view, caching,
conditioned views for attacks). Families, as diffusers builds them:

- **SDXL** (``UNet2DConditionModel`` with ``addition_embed_type="text_time"``): two CLIP encoders,
  their penultimate hidden states concatenated; the second encoder's pooled (projected) output
  and the size/crop ``time_ids`` (original size, crop 0, target size: the image size) as added
  conditions; the empty prompt is all zeros when the pipeline's ``force_zeros_for_empty_prompt``.
- **DiT** (``DiTTransformer2DModel``): class labels. A "prompt" is the class: its id ("207") or a
  label name of the pipeline's ``id2label`` ("golden retriever"); the empty prompt is the null
  class (id ``num_embeds_ada_norm``, the one classifier-free guidance uses). Learned variance:
  2C output channels, the first C used. Captions come from a ``label`` column in
  ``metadata.jsonl`` (or ``text``).
- **PixArt** (``PixArtTransformer2DModel``): a T5 encoder with an attention mask; learned variance.
- **SD3** (``SD3Transformer2DModel``, flow matching): CLIP-L and CLIP-G penultimate hidden states
  (concatenated, zero-padded to the T5 width) followed by T5's, and the two CLIP encoders'
  pooled outputs; without ``text_encoder_3`` (a supported way to run SD3) the T5 part is zeros.
- **Flux** (``FluxTransformer2DModel``, flow matching): CLIP's pooled output and T5's last hidden
  states (``max_sequence_length`` 512, or the tokenizer's limit); latents packed into 2x2 patches
  with their position ids, as ``FluxPipeline`` does; the network is fed sigma (timestep / 1000).
  A guidance-distilled model (``guidance_embeds``, FLUX.1-dev) gets the embedded guidance
  ``guidance`` (FluxPipeline's default 3.5) in every call. The latent size is the VAE's
  ``sample_size`` over its scale factor (the transformer has none); the VAE's ``shift_factor``
  applies. privaudit's samplers add classifier-free guidance with the audit's ``guidance_scale``
  (FluxPipeline's ``true_cfg_scale``; the distilled pipeline's default is none: pass
  ``guidance_scale=1`` to a plugin to sample as it does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from privaudit.io.errors import InputError
from privaudit.model.denoiser import run_in
from privaudit.model.latent import LatentTextDenoiser


def _missing(pipe, names: tuple[str, ...], model_dir: str, family: str) -> None:
    missing = [c for c in names if getattr(pipe, c, None) is None]
    if missing:
        raise InputError(f"{model_dir}: {family} pipeline lacks {', '.join(missing)}")


def _clip(tokenizer, encoder, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states (B, L, D), the output's first item: pooled / projected embeds)."""
    length = int(min(tokenizer.model_max_length, encoder.config.max_position_embeddings))
    ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]


class SDXLDenoiser(LatentTextDenoiser):
    """Stable Diffusion XL: two CLIP encoders, pooled text embeddings and size ``time_ids``."""

    def __init__(self, *, pipe, device: torch.device | str):
        self._setup(net=pipe.unet, vae=pipe.vae, scheduler=pipe.scheduler, device=device,
                    encoders={"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2})
        self.tokenizer, self.tokenizer_2 = pipe.tokenizer, pipe.tokenizer_2
        self.zero_empty = bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", True))

    @classmethod
    def from_pipeline(cls, pipe, *, device: torch.device | str, model_dir: str = "") -> "SDXLDenoiser":
        _missing(pipe, ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
                 model_dir, "SDXL")
        return cls(pipe=pipe, device=device)

    def _encode(self, prompts: list[str]):
        h1, _ = _clip(self.tokenizer, self.encoders["text_encoder"], prompts, self.device)
        h2, pooled = _clip(self.tokenizer_2, self.encoders["text_encoder_2"], prompts, self.device)
        emb = torch.cat([h1, h2], -1)
        if self.zero_empty:  # as the SDXL pipeline encodes the empty (negative) prompt
            empty = torch.tensor([p == "" for p in prompts], device=self.device)
            emb = torch.where(empty[:, None, None], torch.zeros_like(emb), emb)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        h, w = self.image_shape[1:]
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=emb.dtype, device=self.device).expand(len(prompts), -1)
        return {"emb": emb, "pooled": pooled, "time_ids": time_ids}

    def _forward(self, net, x_t, t, cond):
        return run_in(net, x_t, t, encoder_hidden_states=cond["emb"],
                      added_cond_kwargs={"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]})


class DiTDenoiser(LatentTextDenoiser):
    """DiT: class-conditional transformer with a learned variance; prompts are class ids or label names."""

    def __init__(self, *, pipe, device: torch.device | str):
        self._setup(net=pipe.transformer, vae=pipe.vae, scheduler=pipe.scheduler, device=device, encoders={})
        self.labels = {str(k).lower(): int(v) for k, v in (getattr(pipe, "labels", None) or {}).items()}
        self.null_class = int(pipe.transformer.config.num_embeds_ada_norm)

    @classmethod
    def from_pipeline(cls, pipe, *, device: torch.device | str, model_dir: str = "") -> "DiTDenoiser":
        _missing(pipe, ("transformer", "vae", "scheduler"), model_dir, "DiT")
        return cls(pipe=pipe, device=device)

    def class_id(self, prompt: str) -> int:
        p = prompt.strip()
        if p == "":
            return self.null_class
        if p.isdigit() and int(p) < self.null_class:
            return int(p)
        if p.lower() in self.labels:
            return self.labels[p.lower()]
        raise InputError(f"DiT class {prompt!r}: not a class id below {self.null_class} nor a label of the pipeline")

    def _encode(self, prompts: list[str]):
        return torch.tensor([self.class_id(p) for p in prompts], dtype=torch.long, device=self.device)

    def _forward(self, net, x_t, t, cond):
        return run_in(net, x_t, t, class_labels=cond)


class PixArtDenoiser(LatentTextDenoiser):
    """PixArt-alpha/sigma: T5 encoder with an attention mask, transformer with a learned variance."""

    def __init__(self, *, pipe, device: torch.device | str, max_length: int = 120):
        self._setup(net=pipe.transformer, vae=pipe.vae, scheduler=pipe.scheduler, device=device,
                    encoders={"text_encoder": pipe.text_encoder})
        self.tokenizer = pipe.tokenizer
        self.max_length = int(min(max_length, getattr(pipe.tokenizer, "model_max_length", max_length)))

    @classmethod
    def from_pipeline(cls, pipe, *, device: torch.device | str, model_dir: str = "") -> "PixArtDenoiser":
        _missing(pipe, ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"), model_dir, "PixArt")
        return cls(pipe=pipe, device=device)

    def _encode(self, prompts: list[str]):
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        t5 = self.encoders["text_encoder"]
        assert t5 is not None  # checked by from_pipeline
        return {"emb": t5(ids, attention_mask=mask)[0], "mask": mask}

    def _forward(self, net, x_t, t, cond):
        return run_in(net, x_t, encoder_hidden_states=cond["emb"], encoder_attention_mask=cond["mask"], timestep=t,
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None})


class SD3Denoiser(LatentTextDenoiser):
    """Stable Diffusion 3: three text encoders (T5 optional), pooled projections, flow matching."""

    def __init__(self, *, pipe, device: torch.device | str, t5_length: int = 256):
        self._setup(net=pipe.transformer, vae=pipe.vae, scheduler=pipe.scheduler, device=device,
                    encoders={"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2,
                              "text_encoder_3": getattr(pipe, "text_encoder_3", None)})
        self.tokenizer, self.tokenizer_2 = pipe.tokenizer, pipe.tokenizer_2
        self.tokenizer_3 = getattr(pipe, "tokenizer_3", None)
        self.joint_dim = int(pipe.transformer.config.joint_attention_dim)
        self.t5_length = int(min(t5_length, getattr(self.tokenizer_3, "model_max_length", t5_length) or t5_length))

    @classmethod
    def from_pipeline(cls, pipe, *, device: torch.device | str, model_dir: str = "") -> "SD3Denoiser":
        _missing(pipe, ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                        "scheduler"), model_dir, "SD3")
        return cls(pipe=pipe, device=device)

    def _encode(self, prompts: list[str]):
        h1, p1 = _clip(self.tokenizer, self.encoders["text_encoder"], prompts, self.device)
        h2, p2 = _clip(self.tokenizer_2, self.encoders["text_encoder_2"], prompts, self.device)
        clip = torch.cat([h1, h2], -1)
        clip = F.pad(clip, (0, self.joint_dim - clip.shape[-1]))
        if self.encoders["text_encoder_3"] is not None and self.tokenizer_3 is not None:
            ids = self.tokenizer_3(prompts, padding="max_length", max_length=self.t5_length, truncation=True,
                                   add_special_tokens=True, return_tensors="pt").input_ids.to(self.device)
            t5 = self.encoders["text_encoder_3"](ids)[0]
        else:  # SD3 without its T5 encoder: zeros, as diffusers' pipeline does
            t5 = torch.zeros((len(prompts), self.t5_length, self.joint_dim), dtype=clip.dtype, device=self.device)
        return {"emb": torch.cat([clip, t5], -2), "pooled": torch.cat([p1, p2], -1)}

    def _forward(self, net, x_t, t, cond):
        return run_in(net, x_t, encoder_hidden_states=cond["emb"], pooled_projections=cond["pooled"], timestep=t)


class FluxDenoiser(LatentTextDenoiser):
    """Flux: CLIP pooled + T5 conditioning, packed latents with position ids, embedded guidance, flow matching."""

    def __init__(self, *, pipe, device: torch.device | str, guidance: float = 3.5, t5_length: int = 512):
        vae = pipe.vae
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        size = int(vae.config.sample_size if isinstance(vae.config.sample_size, int) else vae.config.sample_size[0])
        latent = size // factor
        if latent % 2:
            raise InputError(f"Flux packs 2x2 latent patches: the VAE's sample_size {size} gives {latent} latent "
                             "pixels per side, which is odd")
        self._setup(net=pipe.transformer, vae=vae, scheduler=pipe.scheduler, device=device,
                    encoders={"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2},
                    latent_shape=(int(vae.config.latent_channels), latent, latent))
        self.tokenizer, self.tokenizer_2 = pipe.tokenizer, pipe.tokenizer_2
        self.t5_length = int(min(t5_length, getattr(self.tokenizer_2, "model_max_length", t5_length) or t5_length))
        self.guidance = float(guidance) if pipe.transformer.config.guidance_embeds else None
        self.T = int(pipe.scheduler.config.num_train_timesteps)

    @classmethod
    def from_pipeline(cls, pipe, *, device: torch.device | str, model_dir: str = "") -> "FluxDenoiser":
        _missing(pipe, ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                        "scheduler"), model_dir, "Flux")
        return cls(pipe=pipe, device=device)

    def flow_timestep_args(self, steps: int) -> dict[str, Any]:
        """As ``FluxPipeline``: sigmas linspace(1, 1/steps) unless the config asks for its own
        (``use_flow_sigmas``), and the dynamic shift for the packed token count."""
        from privaudit.model.flow import shift_mu

        cfg = self.flow_scheduler.config
        h, w = self.sample_shape[1:]
        kw: dict[str, Any] = {"mu": shift_mu(cfg, (h // 2) * (w // 2))}
        if not cfg.get("use_flow_sigmas"):
            kw["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        return kw

    def _encode(self, prompts: list[str]):
        clip: Any = self.encoders["text_encoder"]
        t5: Any = self.encoders["text_encoder_2"]
        length = int(min(self.tokenizer.model_max_length, clip.config.max_position_embeddings))
        ids = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        ids2 = self.tokenizer_2(prompts, padding="max_length", max_length=self.t5_length, truncation=True,
                                return_tensors="pt").input_ids.to(self.device)
        return {"emb": t5(ids2)[0], "pooled": clip(ids).pooler_output}

    def _forward(self, net, x_t, t, cond):
        b, c, h, w = x_t.shape
        packed = x_t.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=x_t.device)
        img_ids[..., 1] += torch.arange(h // 2, device=x_t.device)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=x_t.device)[None, :]
        dt = next(net.parameters()).dtype
        kw = {"timestep": (t.float() / self.T).to(dt), "pooled_projections": cond["pooled"].to(dt),
              "encoder_hidden_states": cond["emb"].to(dt), "img_ids": img_ids.view(-1, 3).to(dt),
              "txt_ids": torch.zeros(cond["emb"].shape[1], 3, device=x_t.device, dtype=dt), "return_dict": False}
        if self.guidance is not None:
            kw["guidance"] = torch.full((b,), self.guidance, device=x_t.device, dtype=dt)
        out = net(hidden_states=packed.to(dt), **kw)[0].to(x_t.dtype)
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
