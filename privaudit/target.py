"""Load a local diffusers pipeline folder as an audit target, offline and pickle-free."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from privaudit.denoiser import Denoiser, ProvidesDenoiser, UNetDenoiser, resolve_device, resolve_dtype
from privaudit.errors import InputError
from privaudit.io import sha256_file

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
SAFE_SUFFIXES = {".safetensors"}


@dataclass(frozen=True)
class ModelInfo:
    path: str
    pipeline_class: str
    resolution: int
    channels: int
    num_train_timesteps: int
    scheduler_class: str
    weights_sha256: dict[str, str] = field(default_factory=dict)
    latent_shape: tuple[int, int, int] | None = None  # latent models: (C, H, W) where the UNet works
    text_conditional: bool = False
    prediction_type: str = "epsilon"  # what the network answers: epsilon, v_prediction, sample or flow
    dtype: str = ""  # the networks' dtype


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES | SAFE_SUFFIXES)


def check_pipeline_folder(model_dir: str | Path, *, allow_pickle: bool = False) -> dict:
    """Validate ``model_dir`` before anything is loaded; returns its model_index.json."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise InputError(f"{model_dir}: model folder does not exist")
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: expected a diffusers pipeline folder, got a file")
    index = model_dir / "model_index.json"
    if not index.exists():
        raise InputError(f"{model_dir}: not a diffusers pipeline folder (no model_index.json)")
    try:
        spec = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{index}: invalid JSON ({e.msg} at line {e.lineno})") from None
    files = weight_files(model_dir)
    pickled = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    safe_dirs = {p.parent for p in files if p.suffix in SAFE_SUFFIXES}
    unsafe_only = [p for p in pickled if p.parent not in safe_dirs]
    if unsafe_only and not allow_pickle:
        raise InputError(f"{unsafe_only[0]}: pickled weights can run arbitrary code when loaded; "
                         "convert to safetensors or pass --allow-pickle if you trust this file")
    if not files:
        raise InputError(f"{model_dir}: no weight files (.safetensors) in the pipeline folder")
    return spec


def load_pipeline(model_dir: str | Path, *, device: torch.device, allow_pickle: bool = False, dtype: str = "auto"):
    """``DiffusionPipeline.from_pretrained`` offline; safetensors unless pickles are allowed; networks in
    ``dtype`` (``resolve_dtype``)."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    spec = check_pipeline_folder(model_dir, allow_pickle=allow_pickle)
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    if any(isinstance(v, list) and v and v[0] == "transformers" for v in spec.values()):
        _quiet_transformers(model_dir)
    # components saved as absent ([null, null], e.g. SD3 without its T5 encoder) are passed as None
    absent = {k: None for k, v in spec.items() if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=None if allow_pickle else True, **absent)
    except (OSError, ValueError, KeyError, AttributeError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InputError(f"{model_dir}: could not load the diffusers pipeline: {first}") from None
    return pipe.to(device, resolve_dtype(dtype, device=device, latent="vae" in spec))


def _quiet_transformers(model_dir: Path) -> None:
    """Text-conditional pipelines load transformers components: it must be installed; its notices are muted."""
    try:
        from transformers.utils import logging as tlogging
    except ImportError:
        raise InputError(f"{model_dir}: this pipeline has transformers components (text encoder, tokenizer); "
                         "install them with: pip install 'privaudit[text]'") from None
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()


def denoiser_from_pipeline(pipe, *, device: torch.device, model_dir: str | Path) -> Denoiser:
    """The pipeline's own Denoiser hook if it has one (protected pipelines), else its UNet."""
    if isinstance(pipe, ProvidesDenoiser):
        return pipe.as_denoiser(device=device)
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    scheduler = getattr(pipe, "scheduler", None)
    name = type(net).__name__
    if net is None or scheduler is None:
        raise InputError(f"{model_dir}: pipeline {type(pipe).__name__} has no denoising network + scheduler to audit")
    if name not in ADAPTERS:
        raise InputError(f"{model_dir}: denoiser {name} is not supported; supported families: "
                         + "; ".join(f"{k} ({v})" for k, v in FAMILIES.items()))
    if not hasattr(scheduler, "alphas_cumprod") and not is_flow(scheduler):
        raise InputError(f"{model_dir}: scheduler {type(scheduler).__name__} has neither a noise schedule "
                         "(alphas_cumprod) nor flow matching sigmas")
    return ADAPTERS[name](pipe, net, scheduler, device, str(model_dir))


def is_flow(scheduler) -> bool:
    """Flow-matching schedulers (SD3, Flux, ...): no alphas_cumprod, sigmas from 1 to 0."""
    return "FlowMatch" in type(scheduler).__name__


def pixel_denoiser(net, scheduler, *, device: torch.device | str) -> Denoiser:
    """A pixel-space network (``UNet2DModel``): DDPM/DDIM-family or flow-matching schedule."""
    if is_flow(scheduler):
        from privaudit.flow import FlowDenoiser

        return FlowDenoiser(net=net, flow_scheduler=scheduler, device=device)
    return UNetDenoiser(unet=net, scheduler=scheduler, device=device)


def _conditional_unet(pipe, net, scheduler, device, model_dir: str) -> Denoiser:
    """SD 1.x/2.x, or SDXL when the UNet takes added text/time conditions."""
    from privaudit.families import SDXLDenoiser
    from privaudit.latent import LatentTextDenoiser

    if is_flow(scheduler):
        raise InputError(f"{model_dir}: a text-conditional UNet with a flow-matching scheduler is not supported")
    if getattr(net.config, "addition_embed_type", None) == "text_time":
        return SDXLDenoiser.from_pipeline(pipe, device=device, model_dir=model_dir)
    return LatentTextDenoiser.from_pipeline(pipe, device=device, model_dir=model_dir)


def _family(name: str):
    def adapter(pipe, net, scheduler, device, model_dir: str) -> Denoiser:
        import privaudit.families as F

        return getattr(F, name).from_pipeline(pipe, device=device, model_dir=model_dir)

    return adapter


# The adapter for each diffusers denoising network class: (pipeline, network, scheduler, device, folder) -> Denoiser.
ADAPTERS = {
    "UNet2DModel": lambda pipe, net, sched, device, folder: pixel_denoiser(net, sched, device=device),
    "UNet2DConditionModel": _conditional_unet,
    "DiTTransformer2DModel": _family("DiTDenoiser"),
    "PixArtTransformer2DModel": _family("PixArtDenoiser"),
    "SD3Transformer2DModel": _family("SD3Denoiser"),
}
FAMILIES = {
    "UNet2DModel": "pixel DDPM/DDIM-family (epsilon, v_prediction, sample) or flow matching",
    "UNet2DConditionModel": "Stable Diffusion 1.x/2.x and SDXL: VAE latents, CLIP text encoders (epsilon, v_prediction)",
    "DiTTransformer2DModel": "DiT: class labels, learned variance",
    "PixArtTransformer2DModel": "PixArt: T5 text encoder with attention mask, learned variance",
    "SD3Transformer2DModel": "Stable Diffusion 3: CLIP-L, CLIP-G and optional T5, flow matching",
}


def load_target(model_dir: str | Path, *, device: str = "auto", allow_pickle: bool = False,
                dtype: str = "auto") -> tuple[Denoiser, ModelInfo, object]:
    """Returns (denoiser, info, pipeline); ``dtype`` as ``--dtype`` (``resolve_dtype``)."""
    dev = resolve_device(device)
    model_dir = Path(model_dir)
    pipe = load_pipeline(model_dir, device=dev, allow_pickle=allow_pickle, dtype=dtype)
    den = denoiser_from_pipeline(pipe, device=dev, model_dir=model_dir)
    from privaudit.latent import image_shape_of, latent_of

    image_shape = image_shape_of(den)
    c, h, _ = image_shape
    info = ModelInfo(
        path=str(model_dir.resolve()),
        pipeline_class=type(pipe).__name__,
        resolution=h,
        channels=c,
        num_train_timesteps=len(den.alphas_cumprod),
        scheduler_class=type(getattr(pipe, "scheduler", den.scheduler)).__name__,
        weights_sha256={str(p.relative_to(model_dir)): sha256_file(p) for p in weight_files(model_dir)},
        latent_shape=tuple(den.sample_shape) if image_shape != den.sample_shape else None,
        text_conditional=latent_of(den) is not None,
        prediction_type="flow" if is_flow(getattr(pipe, "scheduler", None)) else den.prediction_type,
        dtype=str(next(den.white_box.parameters()).dtype).removeprefix("torch.") if den.white_box is not None else "",
    )
    return den, info, pipe
