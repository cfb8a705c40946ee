"""The model layer: ``Denoiser``, the one adapter every attack, detector and mitigation uses.

Noise convention (see ARCHITECTURE.md): x_t = a_t x0 + s_t eps with a_t = sqrt(abar_t) and
s_t = sqrt(1 - abar_t) (``alphas_cumprod`` of the DDPM/DDIM-family scheduler). Whatever the network
predicts, ``Denoiser.eps`` returns the noise: the scheduler config's ``prediction_type`` is
converted here (``to_eps``), never in an attack, and a learned variance (2C output channels)
is split off. ``native`` converts a noise prediction back to the network's own output type,
so a sampler that steps the model's own scheduler stays correct for every prediction type
(a mitigation adds its guidance in eps, then converts back).

A CPSample-protected model is a Denoiser too (eps plus its guidance term), so every attack
audits raw and protected models with the same code, and ``denoise`` below is the one
sampling loop (unconditional, or prompted with classifier-free guidance) that the audit,
the detectors and the protected pipelines all step through.

Hooks are declared on ``Denoiser`` with defaults (subclasses override what they have):
``draw_samples`` (a denoiser may bring its own sampler, e.g. rejection sampling),
``reset_counts`` (zero usage counters), ``sampling_timesteps(steps)`` (the grid a model's own
sampler visits, where it is not the DDIM/DDPM stride: flow models' shifted schedules), ``conditioning(n)`` (per-row conditioning a gradient
attack passes to ``white_box``), ``inner()`` (the denoiser a wrapper wraps), ``fingerprint``
(identity for caches), ``white_box`` (the raw network as ``f(x_t, t[, cond]) -> eps`` where
weights are visible; None otherwise). Pipelines that know their own Denoiser (protected
pipelines) inherit ``ProvidesDenoiser``.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from typing import Any, Callable, Mapping

import numpy as np
import torch

from privaudit.model.noise import sample_generators

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# ---------------------------------------------------------------------------- devices and identity

def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" picks CUDA when present; an explicit "cuda" without a GPU is a usage error."""
    from privaudit.io.errors import InputError

    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device}: choose auto, cpu or cuda")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, *, device: torch.device, latent: bool) -> torch.dtype:
    """--dtype: "auto" is float32 on the CPU and for pixel models, float16 for latent models on CUDA.

    Networks run in this dtype; inputs are cast to it and outputs back to the caller's dtype, so
    attacks' statistics are accumulated in float32 whatever the network computes in."""
    from privaudit.io.errors import InputError

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" and latent else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def run_in(net: torch.nn.Module, x: torch.Tensor, *args, **kwargs):
    """``net(x, ...)`` with ``x`` (and tensor keyword arguments) cast to the network's dtype; the output's
    ``.sample`` (or the output) cast back to ``x``'s dtype. No casts when the dtypes agree."""
    dt = next((p.dtype for p in net.parameters()), x.dtype)  # a parameter-free (closed-form) net: as given
    if dt == x.dtype:
        out = net(x, *args, **kwargs)
        return getattr(out, "sample", out)
    cast = lambda v: v.to(dt) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
    kwargs = {k: ({kk: cast(vv) for kk, vv in v.items()} if isinstance(v, dict) else cast(v)) for k, v in kwargs.items()}
    out = net(x.to(dt), *args, **kwargs)
    return getattr(out, "sample", out).to(x.dtype)


def state_sha256(modules: Mapping[str, torch.nn.Module | None], *extra: torch.Tensor | np.ndarray) -> str:
    """sha256 over modules' state dicts (names and float32 bytes) and extra arrays; device independent."""
    h = hashlib.sha256()
    for prefix, mod in modules.items():
        if mod is None:
            continue
        for k, v in sorted(mod.state_dict().items()):
            h.update(f"{prefix}.{k}".encode() if prefix else k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    for arr in extra:
        a = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- per-row conditioning
# Conditioning is a tensor with one row per image (SD's prompt embeddings) or a dict of such tensors
# (SDXL: embeddings, pooled embeddings, size ids; DiT: class labels; ...): every helper maps over it.

def cond_map(fn: Callable[[torch.Tensor], torch.Tensor], cond: Any) -> Any:
    return {k: fn(v) for k, v in cond.items()} if isinstance(cond, dict) else fn(cond)


def cond_rows(cond: Any) -> int:
    return len(next(iter(cond.values()))) if isinstance(cond, dict) else len(cond)


def cond_cat(conds: list) -> Any:
    if isinstance(conds[0], dict):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


def cond_stack(rows: list) -> Any:
    if isinstance(rows[0], dict):
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    return torch.stack(rows)


def cond_tile(cond: Any, n: int) -> Any:
    """Conditioning for B rows tiled to ``n`` = k * B rows in block order (as ``x.repeat(k, ...)``)."""
    b = cond_rows(cond)
    if b == n:
        return cond
    if b == 1:
        return cond_map(lambda e: e.expand(n, *e.shape[1:]), cond)
    if b and n % b == 0:
        return cond_map(lambda e: e.repeat(n // b, *[1] * (e.ndim - 1)), cond)
    raise ValueError(f"conditioning for {b} rows cannot be tiled to a batch of {n} rows "
                     "(attacks must stack repeats of a batch in block order, x.repeat(k, ...))")


_WHITE_BOX_SHA: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def audited_parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a white-box attack differentiates: a LoRA fine-tune's adapter weights only (parameter
    names with ``lora_``: what the fine-tune trained), else every parameter."""
    params: dict[str, torch.Tensor] = dict(module.named_parameters())
    lora = {k: v for k, v in params.items() if "lora_" in k}
    return lora or params


def white_box_sha256(module: torch.nn.Module) -> str:
    """sha256 of a white-box network's weights, computed once per module object."""
    if module not in _WHITE_BOX_SHA:
        _WHITE_BOX_SHA[module] = state_sha256({"": module})
    return _WHITE_BOX_SHA[module]


# ---------------------------------------------------------------------------- the noise convention

def signal_noise(alphas_cumprod: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor):
    """(a_t, s_t) for timestep ``t``: Python floats for a scalar ``t`` (no host-device transfer),
    else tensors shaped to broadcast over ``like`` (B, ...)."""
    if isinstance(t, (int, np.integer)) or (isinstance(t, torch.Tensor) and t.ndim == 0):
        abar = float(alphas_cumprod[int(t)])
        return math.sqrt(abar), math.sqrt(1 - abar)
    assert isinstance(t, torch.Tensor)
    ab = alphas_cumprod.to(like.device)[t.to(like.device).long()].to(like.dtype).view(-1, *[1] * (like.ndim - 1))
    return ab.sqrt(), (1 - ab).sqrt()


def add_noise(x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = a_t x0 + s_t eps (``t`` a scalar or one timestep per row)."""
    a, s = signal_noise(alphas_cumprod, t, x0)
    return a * x0 + s * eps


def to_eps(out: torch.Tensor, x_t: torch.Tensor, a, s, prediction_type: str) -> torch.Tensor:
    """The network's output -> the noise. v = a eps - s x0, so eps = a v + s x_t; x0: (x_t - a x0) / s."""
    if out.shape[1] == 2 * x_t.shape[1]:  # learned variance: the first C channels are the prediction
        out = out[:, : x_t.shape[1]]
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return a * out + s * x_t
    if prediction_type == "sample":
        return (x_t - a * out) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def from_eps(eps: torch.Tensor, x_t: torch.Tensor, a, s, prediction_type: str) -> torch.Tensor:
    """The inverse of ``to_eps``: a noise prediction in the network's own output type."""
    if prediction_type == "epsilon":
        return eps
    x0 = (x_t - s * eps) / a
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def prediction_type_of(scheduler) -> str:
    kind = str(getattr(scheduler, "config", {}).get("prediction_type", "epsilon") or "epsilon")
    if kind not in PREDICTION_TYPES:
        from privaudit.io.errors import InputError

        raise InputError(f"scheduler prediction_type {kind!r} is not supported; expected one of {PREDICTION_TYPES}")
    return kind


class EpsNetwork(torch.nn.Module):
    """A raw network as ``f(x_t, t, cond=None) -> eps`` (what white-box attacks differentiate).

    ``call(net, x_t, t, cond)`` runs the network and returns its raw output; the output is
    converted to the noise by ``prediction_type``. The network is a submodule, so the
    parameters are exactly the network's.
    """

    def __init__(self, net: torch.nn.Module, *, alphas_cumprod: torch.Tensor, prediction_type: str,
                 call: Callable | None = None):
        super().__init__()
        self.net = net
        self.prediction_type = prediction_type
        self._acp = alphas_cumprod.detach().float()  # plain attribute: not a parameter or buffer
        self._call = call or (lambda net, x, t, cond: run_in(net, x, t))

    def forward(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        out = self._call(self.net, x_t, t, cond)
        out = getattr(out, "sample", out)
        if self.prediction_type == "epsilon" and out.shape[1] == x_t.shape[1]:
            return out
        t = torch.as_tensor(t, device=x_t.device)
        a, s = signal_noise(self._acp, t if t.ndim else t.expand(len(x_t)), x_t)
        return to_eps(out, x_t, a, s, self.prediction_type)


# ---------------------------------------------------------------------------- Denoiser

class Denoiser:
    """What attacks and samplers need from a diffusion model (see the module docstring).

    Attributes every denoiser sets: ``device``; ``sample_shape`` (C, H, W) where the network
    works; ``alphas_cumprod`` (T,) float32 on the CPU; ``scheduler`` (a diffusers scheduler,
    the sampling config source); ``white_box`` (or None); ``prediction_type`` of the network.
    Subclasses implement ``eps``.
    """

    device: torch.device
    sample_shape: tuple[int, int, int]
    alphas_cumprod: torch.Tensor
    scheduler: Any
    white_box: torch.nn.Module | None = None
    prediction_type: str = "epsilon"
    _fingerprint: str | None = None

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def scales(self, t: int) -> tuple[float, float]:
        """(a_t, s_t) of the noise convention x_t = a_t x0 + s_t eps at timestep ``t``, as host floats."""
        a, s = signal_noise(self.alphas_cumprod, int(t), self.alphas_cumprod)
        return float(a), float(s)

    def native(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """A noise prediction converted to the network's own output type (for its scheduler's ``step``)."""
        if self.prediction_type == "epsilon":
            return eps
        a, s = signal_noise(self.alphas_cumprod, t, x_t)
        return from_eps(eps, x_t, a, s, self.prediction_type)

    def sampling_timesteps(self, steps: int) -> list[int] | None:
        """The strictly decreasing timesteps a ``steps``-step sampler of this model visits, when its
        own scheduler visits other noise levels than DDIM's fixed stride (a flow model's shifted
        grid, ``privaudit.model.flow``); None (the default) keeps the stride. Wrappers need not
        override it: ``sampling_scheduler`` asks the models they wrap."""
        return None

    def inner(self) -> "Denoiser | None":
        """The denoiser this one wraps (a protected model's raw model), None for a model itself."""
        return None

    def conditioning(self, n: int) -> torch.Tensor | None:
        """Per-row conditioning of a batch of ``n`` rows that ``white_box`` takes as its third argument."""
        return None

    def query_fingerprint(self) -> str:
        """Identity of what gray-box queries (``eps``) return: the fingerprint, unless a wrapper serves
        another model's noise predictions unchanged (rejection sampling), then that model's."""
        return self.fingerprint

    def draw_samples(self, *, n: int, steps: int = 50, sampler: str = "ddim", seed: int = 0, batch_size: int = 256,
                     progress: bool = False) -> torch.Tensor:
        """``n`` images in [-1, 1]; override to serve samples another way (e.g. rejection sampling)."""
        return sample(self, n=n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size, progress=progress)

    def reset_counts(self) -> None:
        """Zero usage counters (a protected model counts guided rows); nothing by default."""

    #: True when ``guide`` differs from plain classifier-free guidance, so ``denoise`` takes the guided
    #: path (both branches) even at guidance scale 1
    custom_guidance: bool = False

    def served_conditioning(self, cond: Any, *, x: torch.Tensor, t: int) -> Any:
        """The prompt rows a sampling run actually uses, given the run's initial noise ``x`` and first
        timestep ``t``: what a sampling-time text mitigation does to a prompt (perturb its embedding,
        optimise it away from a memorised image). The conditional rows only; the unconditional
        branch is never changed. Identity by default."""
        return cond

    def guide(self, eu: torch.Tensor, ec: torch.Tensor, *, t: int, scale: float, cond: Any) -> torch.Tensor:
        """Classifier-free guidance from the unconditional and conditional noise predictions at timestep
        ``t``: eu + scale (ec - eu) by default; a mitigation may change it per row and step (``cond``: the
        run's conditional rows, as ``served_conditioning`` returned them)."""
        return eu + scale * (ec - eu)

    @property
    def fingerprint(self) -> str:
        """Identity for caches: by default a hash of the white-box weights and the schedule."""
        if self._fingerprint is None:
            self._fingerprint = state_sha256({"": self.white_box}, self.alphas_cumprod,
                                             np.frombuffer(type(self).__name__.encode(), np.uint8))
        return self._fingerprint

    @fingerprint.setter
    def fingerprint(self, value: str) -> None:
        self._fingerprint = value


def latent_of(denoiser, depth: int = 8) -> Any:  # a LatentTextDenoiser (latent.py) or None
    """The latent model inside ``denoiser`` (itself or a wrapper's ``inner()``), else None: the model
    whose samples are latents to decode (``privaudit.model.latent.LatentTextDenoiser`` and its families)."""
    for _ in range(depth):
        if denoiser is None or getattr(denoiser, "in_latent_space", False):
            return denoiser
        denoiser = denoiser.inner()
    return None


class ProvidesDenoiser:
    """Mixin for pipelines that know their own ``Denoiser`` (e.g. protected pipelines)."""

    def as_denoiser(self, *, device: torch.device | str | None = None) -> Denoiser:
        raise NotImplementedError


class UNetDenoiser(Denoiser):
    """A diffusers ``UNet2DModel`` (any DDPM/DDIM-family scheduler, any prediction type) as a Denoiser."""

    def __init__(self, *, unet: torch.nn.Module, scheduler, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().float().cpu()
        self.prediction_type = prediction_type_of(scheduler)
        cfg: Any = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.sample_shape = (int(cfg.in_channels), int(size), int(size))
        self.white_box = EpsNetwork(self.unet, alphas_cumprod=self.alphas_cumprod, prediction_type=self.prediction_type)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        tt = torch.as_tensor(t, device=self.device)
        if tt.ndim == 0:
            tt = tt.expand(len(x_t))
        out = run_in(self.unet, x_t, tt)
        if self.prediction_type == "epsilon" and out.shape[1] == x_t.shape[1]:
            return out
        a, s = signal_noise(self.alphas_cumprod, t if not isinstance(t, torch.Tensor) or t.ndim == 0 else tt, x_t)
        return to_eps(out, x_t, a, s, self.prediction_type)


def reference_alphas_cumprod() -> torch.Tensor:
    """The schedule the literature's timestep defaults are given on: DDPM's linear betas
    (1e-4 to 0.02, T = 1000; Ho et al. 2020). t = 200 there: abar 0.656, SNR 1.91."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


def scale_t(denoiser: Denoiser, t: int, reference: int = 1000) -> int:
    """A literature timestep ``t`` (given on DDPM's 1000-step linear schedule) mapped onto the
    denoiser's schedule by equal signal-to-noise ratio abar / (1 - abar), not by index: t = 200
    means the noise level SNR 1.91 on any schedule (a cosine, scaled-linear or flow schedule
    reaches it at another index). On the reference schedule itself this is the identity.
    ``reference`` (the number of steps ``t`` is given for) is kept for callers of 0.1."""
    ref = reference_alphas_cumprod()
    t_ref = max(0, min(len(ref) - 1, round(t * len(ref) / reference)))
    target = math.log(float(ref[t_ref] / (1 - ref[t_ref])))
    acp = denoiser.alphas_cumprod.double().clamp(1e-12, 1 - 1e-12)
    log_snr = (acp / (1 - acp)).log()
    return int((log_snr - target).abs().argmin())


def noised(denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
    """x_t = a_t x0 + s_t eps on the denoiser's schedule."""
    return add_noise(x0, t, eps, denoiser.alphas_cumprod)


# ---------------------------------------------------------------------------- sampling

SAMPLERS = ("ddim", "ddpm")


def sampling_scheduler(denoiser: Denoiser, sampler: str, steps: int):
    """A fresh diffusers scheduler of the sampler's class, configured like the model's (same schedule).

    Where the model (or the model a wrapper wraps) names its own grid (``Denoiser.sampling_timesteps``),
    the sampler steps on that grid: DDPM through diffusers' custom timesteps, DDIM through
    ``GridDDIMScheduler``; otherwise on diffusers' default spacing for ``steps``."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from privaudit.model.grid_ddim import GridDDIMScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose {' or '.join(SAMPLERS)}")
    grid = _own_grid(denoiser, steps)
    if grid is None:
        sched = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(denoiser.scheduler.config)
        sched.set_timesteps(steps)
    elif sampler == "ddim":
        sched = GridDDIMScheduler.from_config(denoiser.scheduler.config)
        sched.set_grid(grid)
    else:
        sched = DDPMScheduler.from_config(denoiser.scheduler.config)
        sched.set_timesteps(timesteps=grid)
    return sched


def _own_grid(denoiser: Denoiser, steps: int, depth: int = 8) -> list[int] | None:
    den: Denoiser | None = denoiser
    for _ in range(depth):  # a wrapper (protected, conditioned, adapter-free) samples on its model's grid
        if den is None:
            return None
        own = getattr(den, "sampling_timesteps", None)  # duck-typed denoisers (third-party plugins) may lack it
        grid = own(steps) if own is not None else None
        if grid is not None:
            return grid
        den = den.inner() if hasattr(den, "inner") else None
    return None


def denoise(denoiser: Denoiser, x: torch.Tensor, *, scheduler, cond: Any = None, uncond: Any = None,
            guidance_scale: float = 1.0, timesteps=None, step_kwargs: dict | None = None,
            on_eps: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """The one sampling loop: step ``x`` through ``scheduler``'s timesteps with ``denoiser.eps``.

    With ``uncond`` and ``guidance_scale != 1``, classifier-free guidance
    eps = eps(uncond) + w (eps(cond) - eps(uncond)) on a doubled batch; ``on_eps(t, eu, ec)``
    sees both branches (memorised-prompt detection reads their difference); the combination is
    ``denoiser.guide`` and the prompt rows pass ``denoiser.served_conditioning`` once per run, the two
    hooks a sampling-time text mitigation overrides. Guidance inside
    ``denoiser.eps`` (a protected model) applies to both branches and so survives classifier-free
    guidance exactly once. The prediction is converted to the network's own output type before
    the scheduler steps (``Denoiser.native``). ``timesteps``: a prefix of the scheduler's to stop early.
    """
    kw = step_kwargs or {}
    steps = scheduler.timesteps if timesteps is None else timesteps
    if cond is not None and len(steps):  # a sampling-time text mitigation acts on the prompt rows here
        cond = denoiser.served_conditioning(cond, x=x, t=int(steps[0]))
    plain = not getattr(denoiser, "custom_guidance", False)
    for t in steps:
        if uncond is None or (guidance_scale == 1.0 and on_eps is None and plain):
            e = denoiser.eps(scheduler.scale_model_input(x, t), int(t), cond)
        else:
            inp = scheduler.scale_model_input(torch.cat([x, x]), t)
            eu, ec = denoiser.eps(inp, int(t), cond_cat([uncond, cond])).chunk(2)
            if on_eps is not None:
                on_eps(t, eu, ec)
            e = denoiser.guide(eu, ec, t=int(t), scale=guidance_scale, cond=cond)
        x = scheduler.step(denoiser.native(e, x, int(t)), t, x, **kw).prev_sample
        if on_step is not None:
            on_step(len(x))
    return x


@torch.no_grad()
def sample(denoiser: Denoiser, *, n: int, steps: int = 50, sampler: str = "ddim", seed: int = 0,
           batch_size: int = 256, progress: bool = False, first: int = 0) -> torch.Tensor:
    """Draw ``n`` images in [-1, 1] from any Denoiser, seeded per sample.

    Sample ``i`` comes from its own generator keyed by (seed, i) (``privaudit.model.noise``), for its
    initial noise and, with "ddpm", every step's noise: it is the same image whatever
    ``batch_size`` is or which worker draws it. ``first``: the index of the first sample (a shard of a
    larger set: ``first=k`` gives samples k .. k + n - 1 of the set).
    ``sampler``: "ddim" (eta 0, deterministic given the initial noise) or "ddpm".
    Uses the denoiser's scheduler config, so the schedule matches training. Guidance
    inside ``denoiser.eps`` (a protected model) may enable gradients itself. Latent models
    (``privaudit.model.latent``) are sampled in latent space with the empty prompt and decoded.
    """
    from privaudit.io.progress import progress_bar

    sched = sampling_scheduler(denoiser, sampler, steps)
    lat = latent_of(denoiser)
    out = []
    bar = progress_bar(total=n * len(sched.timesteps), desc=f"sampling ({sampler}, {steps} steps)", disable=not progress,
               unit="img-step")
    for start in range(0, n, batch_size):
        gens = sample_generators(seed, first + start, min(batch_size, n - start))
        x = torch.stack([torch.randn(denoiser.sample_shape, generator=g) for g in gens]).to(denoiser.device)
        # DDPM steps draw their noise row by row from the same generators (diffusers' randn_tensor takes a list)
        x = denoise(denoiser, x, scheduler=sched, step_kwargs={"generator": gens} if sampler == "ddpm" else None,
                    on_step=bar.update)
        out.append((x if lat is None else lat.decode(x)).clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(out)
