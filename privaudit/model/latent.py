"""Latent, conditional models (Stable Diffusion class and the families built on it) as Denoisers,
and conditioned views.

``LatentTextDenoiser`` adapts a ``StableDiffusionPipeline``-style pipeline
(``UNet2DConditionModel`` + ``AutoencoderKL`` + CLIP text encoder and tokenizer + scheduler),
and is the base of SDXL, DiT, PixArt and SD3 (``privaudit.model.families``):

- ``eps(z_t, t, cond)`` is the network's noise prediction in latent space (converted from its
  prediction type; flow-matching families in their VP-equivalent view, ``privaudit.model.flow``);
  ``cond`` is ``None`` or ``""`` (the empty prompt), a prompt, a list of prompts, or
  conditioning rows: prompt embeddings (B, L, D), or a dict of such per-row tensors for
  families with several inputs (pooled embeddings, masks, size ids, class labels).
  Conditioning for B rows is tiled to a batch of k * B rows in block order (``repeat``),
  which is how attacks stack k noise draws of a batch (``x0.repeat(k, ...)``).
- ``sample_shape`` is the latent shape, ``image_shape`` the pixel shape;
  ``encode(x)`` maps images in [-1, 1] to scaled latents (the VAE posterior mode times
  ``scaling_factor``, deterministic), ``decode(z)`` maps back.
- ``white_box`` is the UNet (weights visible); ``fingerprint`` hashes every component.

Attacks stay unchanged: the runner hands them latents and a ``ConditionedDenoiser`` whose
``eps`` binds each batch's captions (``attack_inputs``). Membership attacks on latent
models work in latent space, as the literature does (e.g. PIA and SecMI on Stable
Diffusion), with the image's caption as conditioning, or the empty prompt
(``prompt="empty"``) for an attacker who does not know the captions.

White-box attacks see the view's ``white_box(x_t, t, cond)``: the UNet with the rows'
prompt embeddings, which ``conditioning(n)`` gives for a batch of n rows (GSA vmaps
per-sample gradients over images and their captions); without ``cond``, the empty prompt.

Wrappers such as a CPSample ``ProtectedDenoiser`` return the latent model from ``inner()``;
``latent_of`` finds it, so encoding, decoding and prompt embedding work through them while
``eps`` goes through the wrapper (guidance included).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from privaudit.io.errors import InputError
from privaudit.model.denoiser import (
    Denoiser,
    EpsNetwork,
    cond_map,
    cond_stack,
    cond_tile,
    denoise,
    latent_of,
    prediction_type_of,
    run_in,
    signal_noise,
    state_sha256,
    to_eps,
)

PROMPT_MODES = ("caption", "empty")


class LatentTextDenoiser(Denoiser):
    """A Stable-Diffusion-style pipeline (conditional UNet in a VAE's latent space) as a Denoiser.

    The base of every latent, conditional family (``privaudit.model.families``): a family sets up its
    network and encoders (``_setup``), turns prompts into per-row conditioning (``_encode``: a
    tensor or a dict of tensors, one row per prompt) and calls its network (``_forward``).
    """

    text_conditional = True
    in_latent_space = True  # samples are latents: ``latent_of`` finds this model inside any wrapper
    text_encoder: Any = None  # set by _setup from the family's encoders
    vae: Any  # diffusers AutoencoderKL (its config is read; typed loosely as diffusers' configs are)

    def __init__(self, *, unet: torch.nn.Module, vae: Any, text_encoder: Any, tokenizer,
                 scheduler, device: torch.device | str = "cpu"):
        self._setup(net=unet, vae=vae, scheduler=scheduler, device=device, encoders={"text_encoder": text_encoder})
        self.tokenizer = tokenizer
        self.max_length = int(min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings))

    def _setup(self, *, net: Any, vae: Any, scheduler, device: torch.device | str,
               encoders: dict[str, torch.nn.Module | None], alphas_cumprod: torch.Tensor | None = None,
               prediction_type: str | None = None, latent_shape: tuple[int, int, int] | None = None) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.unet = self.net  # the name SD-class code and 0.1 callers use
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.encoders = {k: (m.to(self.device).eval().requires_grad_(False) if m is not None else None)
                         for k, m in encoders.items()}
        for k, m in self.encoders.items():
            setattr(self, k, m)
        self.flow = "FlowMatch" in type(scheduler).__name__  # flow matching: audited in its VP-equivalent view
        if self.flow:
            from privaudit.model.flow import flow_grid, sigmas_of, vp_scheduler

            self.flow_scheduler = scheduler
            self.scheduler = vp_scheduler(flow_grid(scheduler.config.num_train_timesteps)[1])
            self.alphas_cumprod = self.scheduler.alphas_cumprod.detach().float().cpu()
            self.sigmas = sigmas_of(self.alphas_cumprod)
            self.prediction_type = "epsilon"  # of the VP view; the velocity is converted in eps
        else:
            self.scheduler = scheduler
            acp = scheduler.alphas_cumprod if alphas_cumprod is None else alphas_cumprod
            self.alphas_cumprod = acp.detach().float().cpu()
            self.prediction_type = prediction_type or prediction_type_of(scheduler)
        cfg = net.config
        if latent_shape is None:  # the network's own sample size and channels
            size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
            latent_shape = (int(cfg.in_channels), int(size), int(size))
        self.sample_shape = (int(latent_shape[0]), int(latent_shape[1]), int(latent_shape[2]))
        size = self.sample_shape[-1]
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_shape = (int(vae.config.in_channels), int(size) * self.vae_scale_factor,
                            int(size) * self.vae_scale_factor)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.white_box = self.net  # raw: ConditionedDenoiser wraps it as f(x_t, t, cond) -> eps
        self._prompt_cache: dict[str, object] = {}

    def sampling_timesteps(self, steps: int) -> list[int] | None:
        """A flow model samples on the noise levels its own pipeline visits (``privaudit.model.flow``)."""
        if not self.flow:
            return None
        from privaudit.model.flow import flow_sampling_timesteps

        return flow_sampling_timesteps(self.flow_scheduler, steps, grid_sigmas=self.sigmas,
                                       **self.flow_timestep_args(steps))

    def flow_timestep_args(self, steps: int) -> dict[str, Any]:
        """``set_timesteps`` arguments the family's pipeline passes its flow scheduler (``mu`` for a
        dynamic shift, explicit ``sigmas``): SD3's by default, the dynamic shift from the image's
        patch-token count. Families whose pipelines differ (Flux) override it."""
        cfg = self.flow_scheduler.config
        if not cfg.get("use_dynamic_shifting"):
            return {}
        from privaudit.model.flow import shift_mu

        p = int(getattr(self.net.config, "patch_size", 1) or 1)
        h, w = self.sample_shape[1:]
        return {"mu": shift_mu(cfg, (h // p) * (w // p), default_max_shift=1.16)}

    @classmethod
    def from_pipeline(cls, pipe, *, device: torch.device | str, model_dir: str = "") -> "LatentTextDenoiser":
        missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, c, None) is None]
        if missing:
            raise InputError(f"{model_dir}: text-conditional pipeline lacks {', '.join(missing)}")
        if not hasattr(pipe.scheduler, "alphas_cumprod"):
            raise InputError(f"{model_dir}: scheduler {type(pipe.scheduler).__name__} has no noise schedule")
        return cls(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                   scheduler=pipe.scheduler, device=device)

    @property  # type: ignore[misc]
    def fingerprint(self) -> str:
        """sha256 over all weights (network, VAE, encoders) and the schedule."""
        if self._fingerprint is None:
            self._fingerprint = state_sha256({"unet": self.net, "vae": self.vae, **self.encoders}, self.alphas_cumprod)
        return self._fingerprint

    # ------------------------------------------------------------------ family hooks
    def _encode(self, prompts: list[str]):
        """Conditioning rows for ``prompts``: SD's CLIP last hidden states (B, L, D)."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def _forward(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The network's raw output for a batch and its conditioning rows."""
        return run_in(net, x_t, t, encoder_hidden_states=cond)

    def eps_network(self, net: torch.nn.Module, call) -> torch.nn.Module:
        """``net`` as ``f(x_t, t, cond) -> eps`` (``call(net, x, t, cond)`` gives its raw output)."""
        if self.flow:
            from privaudit.model.flow import FlowEpsNetwork

            return FlowEpsNetwork(net, sigmas=self.sigmas, alphas_cumprod=self.alphas_cumprod, call=call)
        return EpsNetwork(net, alphas_cumprod=self.alphas_cumprod, prediction_type=self.prediction_type, call=call)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def prompt_embeddings(self, prompts: Sequence[str]):
        """Conditioning for ``prompts`` (one row each; a tensor, or a dict of tensors), cached per prompt."""
        prompts = [str(p) for p in prompts]
        todo = sorted({p for p in prompts if p not in self._prompt_cache})
        for s in range(0, len(todo), 256):
            chunk = todo[s:s + 256]
            enc = self._encode(chunk)
            for i, p in enumerate(chunk):
                self._prompt_cache[p] = cond_map(lambda e, i=i: e[i], enc)  # type: ignore[misc]
        if not prompts:  # zero rows shaped like the empty prompt's
            self.prompt_embeddings([""])
            return cond_map(lambda e: e[None][:0], self._prompt_cache[""])
        return cond_stack([self._prompt_cache[p] for p in prompts])

    def condition(self, cond: object, n: int):
        """Conditioning for a batch of ``n`` rows from ``cond`` (see the module docstring)."""
        if cond is None:
            cond = ""
        if isinstance(cond, str):
            return cond_tile(self.prompt_embeddings([cond]), n)
        if isinstance(cond, (torch.Tensor, dict)):
            emb = cond_map(lambda e: e.to(self.device), cond)
        elif isinstance(cond, (list, tuple)) and all(isinstance(c, str) for c in cond):
            emb = self.prompt_embeddings(cond)
        else:
            raise TypeError(f"conditioning must be None, a prompt, a list of prompts or embeddings, got {type(cond).__name__}")
        return cond_tile(emb, n)

    # ------------------------------------------------------------------ denoiser
    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        if t.ndim == 0:
            t = t.expand(len(x_t))
        if self.flow:
            from privaudit.model.flow import flow_eps

            return flow_eps(self.net, x_t, t, self.condition(cond, len(x_t)), sigmas=self.sigmas,
                            alphas_cumprod=self.alphas_cumprod, call=self._forward)
        out = self._forward(self.net, x_t, t, self.condition(cond, len(x_t)))
        if self.prediction_type == "epsilon" and out.shape[1] == x_t.shape[1]:
            return out
        a, s = signal_noise(self.alphas_cumprod, t, x_t)
        return to_eps(out, x_t, a, s, self.prediction_type)

    # ------------------------------------------------------------------ latent space
    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Images in [-1, 1] (n, C, H, W) -> scaled latents (posterior mode; deterministic)."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise InputError(f"images are {tuple(x.shape[1:])}, the VAE expects {self.image_shape}")
        dt = self.vae.dtype
        out = [self.vae.encode(x[s:s + batch_size].to(self.device, dt)).latent_dist.mode().float()
               for s in range(0, len(x), batch_size)]
        z = torch.cat(out) if out else torch.zeros((0, *self.sample_shape), device=self.device)
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Scaled latents -> images clamped to [-1, 1]."""
        dt = self.vae.dtype
        out = [self.vae.decode((z[s:s + batch_size].to(self.device) / self.scaling_factor + self.shift_factor).to(dt))
               .sample.float() for s in range(0, len(z), batch_size)]
        return torch.cat(out).clamp(-1, 1) if out else torch.zeros((0, *self.image_shape), device=self.device)


def image_shape_of(denoiser) -> tuple[int, int, int]:
    """The (C, H, W) of the images a denoiser's model sees: the VAE's for latent models (through wrappers)."""
    lat = latent_of(denoiser)
    return tuple(lat.image_shape) if lat is not None else tuple(denoiser.sample_shape)


def to_model_space(denoiser, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> what the denoiser's network works on: scaled latents for latent models, else ``x``."""
    lat = latent_of(denoiser)
    return x if lat is None else lat.encode(x.to(lat.device))




def conditional_network(lat: LatentTextDenoiser, net: torch.nn.Module, empty) -> torch.nn.Module:
    """The conditional network as ``f(x_t, t, cond=None) -> eps`` for white-box attacks: ``cond`` is the
    rows' conditioning; without it, the empty prompt (``empty``, one row, a plain value the attack does
    not differentiate)."""

    def call(net, sample, timestep, cond):
        return lat._forward(net, sample, timestep, cond_tile(empty if cond is None else cond, sample.shape[0]))

    return lat.eps_network(net, call)


class ConditionedDenoiser(Denoiser):
    """A view of ``denoiser`` whose ``eps(x_t, t)`` uses bound conditioning.

    ``cond``: embeddings (B, L, D) tiled to each call's batch; or, for ``fit`` calls that see
    two image sets with one denoiser, ``by_rows`` maps a set's row count to its embeddings:
    a call with k * n rows gets the set of n rows' conditioning (an ambiguous count is an
    error, never a guess). ``captions``: the bound rows' prompts as text (``attack_inputs`` sets them), for
    attacks that rewrite the prompt; ``captions_by_rows``: the same per set for a ``fit`` view
    (``batch_captions`` reads either). Everything else is the wrapped denoiser's.
    """

    def __init__(self, denoiser, *, cond: torch.Tensor | None = None, by_rows: dict[int, torch.Tensor] | None = None,
                 prompt: str = "caption", captions: Sequence[str] | None = None,
                 captions_by_rows: dict[int, Sequence[str]] | None = None):
        lat = latent_of(denoiser)
        if lat is None:
            raise TypeError("ConditionedDenoiser needs a latent text-conditional denoiser")
        self.denoiser = denoiser
        self.cond = cond
        self.by_rows = by_rows or {}
        self.prompt = prompt
        self.captions = None if captions is None else list(captions)  # the bound rows' prompts as text, when known
        self.captions_by_rows = {k: list(v) for k, v in (captions_by_rows or {}).items()}  # the same for a fit view
        self.custom_guidance = bool(getattr(denoiser, "custom_guidance", False))
        self.device = denoiser.device
        self.alphas_cumprod = denoiser.alphas_cumprod
        self.sample_shape = denoiser.sample_shape
        self.scheduler = denoiser.scheduler
        self.prediction_type = denoiser.prediction_type
        wb = denoiser.white_box
        self.white_box = None if wb is None else conditional_network(lat, wb, lat.prompt_embeddings([""]))

    def __getattr__(self, name: str):  # only called for attributes not set above
        return getattr(self.__dict__["denoiser"], name)

    def inner(self) -> Denoiser:
        return self.denoiser

    @property  # type: ignore[misc]
    def fingerprint(self) -> str:
        return self.denoiser.fingerprint

    def _bound(self, n: int) -> torch.Tensor:
        if self.cond is not None:
            return cond_tile(self.cond, n)
        fits = [m for m in self.by_rows if n % m == 0]  # fit_inputs makes the set sizes coprime
        if len(fits) != 1:
            raise ValueError(f"cannot tell which image set a batch of {n} rows belongs to "
                             f"(sets of {sorted(self.by_rows)} rows); condition the batch explicitly")
        return cond_tile(self.by_rows[fits[0]], n)

    def batch_captions(self, n: int) -> list[str] | None:
        """The prompts of a batch of ``n`` rows as text (tiled like the conditioning), or None when unknown."""
        caps = self.captions
        if caps is None:
            fits = [m for m in self.captions_by_rows if n % m == 0]
            caps = self.captions_by_rows[fits[0]] if len(fits) == 1 else None
        return None if not caps or n % len(caps) else caps * (n // len(caps))

    def conditioning(self, n: int) -> torch.Tensor:
        """The bound prompt embeddings of a batch of ``n`` rows, (n, L, D): what ``white_box``
        takes as its third argument, so gradient attacks condition each image on its caption."""
        return self._bound(n)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        return self.denoiser.eps(x_t, t, self._bound(len(x_t)) if cond is None else cond)

    # a sampling-time mitigation's hooks are the wrapped model's (the view only binds conditioning;
    # ``custom_guidance`` is copied in __init__)
    def served_conditioning(self, cond: Any, *, x: torch.Tensor, t: int) -> Any:
        return self.denoiser.served_conditioning(cond, x=x, t=t)

    def guide(self, eu: torch.Tensor, ec: torch.Tensor, *, t: int, scale: float, cond: Any) -> torch.Tensor:
        return self.denoiser.guide(eu, ec, t=t, scale=scale, cond=cond)


def batch_captions(images, index: Sequence[int] | np.ndarray, prompt: str) -> list[str]:
    """The prompts a batch is conditioned on: its captions, or "" (empty prompt / uncaptioned)."""
    if prompt not in PROMPT_MODES:
        raise InputError(f"prompt conditioning {prompt!r}: choose {' or '.join(PROMPT_MODES)}")
    caps = getattr(images, "captions", ())
    if prompt == "empty" or not caps:
        return [""] * len(index)
    return [caps[int(i)] for i in index]


def attack_inputs(denoiser, images, index: Sequence[int] | np.ndarray, x: torch.Tensor, *, prompt: str = "caption"):
    """(denoiser, x) as an attack should see them: unchanged for pixel models; for latent text
    models, the batch's latents and a view bound to the batch's conditioning."""
    lat = latent_of(denoiser)
    if lat is None:
        return denoiser, x
    caps = batch_captions(images, index, prompt)
    return ConditionedDenoiser(denoiser, cond=lat.prompt_embeddings(caps), prompt=prompt, captions=caps), lat.encode(x)


def fit_inputs(denoiser, members, cal_m: Sequence[int] | np.ndarray, holdout, cal_h: Sequence[int] | np.ndarray, *, prompt: str = "caption"):
    """(denoiser, members x, holdout x) for ``attack.fit`` on the calibration splits.

    Latent text models: latents, and a view that conditions each call by its row count
    (``ConditionedDenoiser.by_rows``). A batch of k * n_m rows must not also be j * n_h rows,
    so the holdout's fitting set is trimmed by its last few calibration images until the two
    sizes are coprime (then k * n_m = j * n_h needs k >= n_h and j >= n_m). Trimmed images
    are left out of fitting only; they are still scored. Returns the index arrays used as the
    4th and 5th items.
    """
    cal_m, cal_h = np.asarray(cal_m), np.asarray(cal_h)
    lat = latent_of(denoiser)
    if lat is None:
        return (denoiser, members.tensor(cal_m, device=denoiser.device),
                holdout.tensor(cal_h, device=denoiser.device), cal_m, cal_h)
    n_h = len(cal_h)
    while n_h > 2 and math.gcd(len(cal_m), n_h) != 1:
        n_h -= 1
    if len(cal_m) < 2 or n_h < 2 or math.gcd(len(cal_m), n_h) != 1:
        raise InputError(f"calibration splits of {len(cal_m)} members and {len(cal_h)} holdout images are too small "
                         "to fit an attack on a text-conditional model")
    cal_h = cal_h[:n_h]
    cm, ch = batch_captions(members, cal_m, prompt), batch_captions(holdout, cal_h, prompt)
    view = ConditionedDenoiser(denoiser, by_rows={len(cal_m): lat.prompt_embeddings(cm), len(cal_h): lat.prompt_embeddings(ch)},
                               prompt=prompt, captions_by_rows={len(cal_m): cm, len(cal_h): ch})
    return view, lat.encode(members.tensor(cal_m)), lat.encode(holdout.tensor(cal_h)), cal_m, cal_h


def conditioning_details(denoiser, members, *, prompt: str) -> dict:
    """What a membership result on a latent text model was conditioned on (empty for pixel models)."""
    if latent_of(denoiser) is None:
        return {}
    used = "captions" if prompt == "caption" and members.captions else "empty prompt"
    return {"conditioning": {"space": f"latent {list(denoiser.sample_shape)}", "prompt": used}}


# ---------------------------------------------------------------------------- generation

@torch.no_grad()
def generate(denoiser, prompts: Sequence[str], *, n_per_prompt: int = 1, steps: int = 25,
             guidance_scale: float = 5.0, seed: int = 0, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """Images in [-1, 1] for each prompt (prompt-major: rows i*n .. i*n+n-1 are prompt i's).

    DDIM (eta 0) with classifier-free guidance: eps = eps("") + w (eps(prompt) - eps("")).
    ``denoiser`` may be a wrapper (CPSample): its ``eps`` is used for both branches, so an
    additive guidance term is applied exactly once to the guided prediction. Seeded per
    (seed, prompt index, draw): a prompt's images do not depend on the other prompts.
    """
    from privaudit.io.progress import progress_bar
    from privaudit.model.denoiser import sampling_scheduler

    lat = latent_of(denoiser)
    if lat is None:
        raise InputError("prompted generation needs a text-conditional latent model")
    sched = sampling_scheduler(denoiser, "ddim", steps)
    rows = [(i, j) for i in range(len(prompts)) for j in range(n_per_prompt)]
    out = []
    bar = progress_bar(total=len(rows) * steps, desc=f"generating ({steps} steps)", disable=not progress,
                       unit="img-step")
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        z = torch.stack([torch.randn(lat.sample_shape, generator=torch.Generator().manual_seed(
            seed * 1_000_003 + i * 9_973 + j)) for i, j in chunk]).to(denoiser.device)
        cond = lat.prompt_embeddings([prompts[i] for i, _ in chunk])
        empty = cond_tile(lat.prompt_embeddings([""]), len(chunk))
        z = denoise(denoiser, z, scheduler=sched, cond=cond, uncond=empty, guidance_scale=guidance_scale,
                    on_step=bar.update)
        out.append(lat.decode(z).cpu())
    bar.close()
    return torch.cat(out) if out else torch.zeros((0, *lat.image_shape))
