"""Load a local diffusers pipeline folder as an audit target, offline and pickle-free."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from privaudit.io.errors import InputError
from privaudit.io.files import sha256_file
from privaudit.model.denoiser import Denoiser, ProvidesDenoiser, UNetDenoiser, resolve_device, resolve_dtype

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
    adapter: str = ""  # a LoRA adapter loaded onto the pipeline (``--lora``): its path
    base: str = ""  # the base model a fine-tune is calibrated against (``--lora`` / ``--base``): its path
    lora_layers: dict[str, int] = field(default_factory=dict)  # ``--lora``: LoRA layers loaded, per component


def weight_files(model_dir: Path) -> list[Path]:
    """Weight files under ``model_dir``, following symlinked component folders (a cycle is an error)."""
    import os

    found, seen = [], set()
    for root, dirs, files in os.walk(model_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            raise InputError(f"{root}: symbolic link cycle in the model folder")
        seen.add(real)
        dirs.sort()
        found += [Path(root) / f for f in files if Path(f).suffix in PICKLE_SUFFIXES | SAFE_SUFFIXES]
    return sorted(found)


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
    spec = _read_json(index)
    if not isinstance(spec, dict):
        raise InputError(f"{index}: expected a JSON object")
    files = weight_files(model_dir)
    pickled = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    safe_dirs = {p.parent for p in files if p.suffix in SAFE_SUFFIXES}
    unsafe_only = [p for p in pickled if p.parent not in safe_dirs]
    if unsafe_only and not allow_pickle:
        raise InputError(f"{unsafe_only[0]}: pickled weights can run arbitrary code when loaded; "
                         "convert to safetensors or pass --allow-pickle if you trust this file")
    if not files:
        raise InputError(f"{model_dir}: no weight files (.safetensors) in the pipeline folder")
    for name in spec:
        _check_component_config(model_dir / name)
    _check_denoiser_class(spec, index=index)
    return spec


def _check_denoiser_class(spec: dict, *, index: Path) -> None:
    """A diffusers denoising network without an adapter here (e.g. Flux's) is refused before diffusers
    builds it; a class of another library may belong to a pipeline that provides its own denoiser."""
    for key in ("unet", "transformer"):
        entry = spec.get(key)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers"):
            continue
        if entry[1] not in ADAPTERS:
            raise InputError(f"{index}: denoiser {key} {entry[1]} is not supported; supported: "
                             f"{', '.join(ADAPTERS)}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except (RecursionError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable JSON ({e.__class__.__name__})") from None


def _check_component_config(folder: Path) -> None:
    """Sizes in a component's config are checked before diffusers allocates anything from them."""
    cfg_file = next((folder / f for f in ("config.json", "scheduler_config.json") if (folder / f).is_file()), None)
    if cfg_file is None:
        return
    cfg = _read_json(cfg_file)
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_file}: expected a JSON object")
    n = cfg.get("num_train_timesteps")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1_000_000):
        raise InputError(f"{cfg_file}: num_train_timesteps is {n!r}; expected an integer from 1 to 1000000")
    channels = cfg.get("block_out_channels")
    if channels is None:
        return
    if (not isinstance(channels, list) or not channels
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels)):
        raise InputError(f"{cfg_file}: block_out_channels is {channels!r}; expected a list of positive integers")
    # The widest block holds at least one 3x3 convolution of c_max -> c_max channels: the weight files
    # must be at least that large (1 byte a parameter), else the config would allocate memory the model lacks.
    needed = 9 * max(channels) ** 2
    held = sum(p.stat().st_size for p in weight_files(folder))
    if needed > held:
        raise InputError(f"{cfg_file}: block_out_channels {channels} needs at least {needed:,} parameters, "
                         f"but the weight files hold {held:,} bytes")


def load_pipeline(model_dir: str | Path, *, device: torch.device, allow_pickle: bool = False, dtype: str = "auto"):
    """``DiffusionPipeline.from_pretrained`` offline; safetensors unless pickles are allowed; networks in
    ``dtype`` (``resolve_dtype``)."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    spec = check_pipeline_folder(model_dir, allow_pickle=allow_pickle)
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    if any(isinstance(v, list) and v and v[0] == "transformers" for v in spec.values()):
        _quiet_transformers(Path(model_dir))
    # components saved as absent ([null, null], e.g. SD3 without its T5 encoder) are passed as None
    absent = {k: None for k, v in spec.items() if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=None if allow_pickle else True, **absent)
    except (OSError, ValueError, KeyError, AttributeError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InputError(f"{model_dir}: could not load the diffusers pipeline: {first}") from None
    check_complete_weights(pipe, model_dir=Path(model_dir))
    return pipe.to(device, resolve_dtype(dtype, device=device, latent="vae" in spec))


def _component_file(model_dir: Path, name: str) -> Path:
    """The weight file of component ``name`` (its folder when it has several)."""
    files = weight_files(model_dir / name) if (model_dir / name).is_dir() else []
    return files[0] if len(files) == 1 else model_dir / name


def check_complete_weights(pipe, *, model_dir: Path) -> None:
    """A tensor missing from a weight file is left on the meta device by diffusers (and fails later as "Cannot
    copy out of meta tensor"): name the file and the first missing tensor instead."""
    for name, component in getattr(pipe, "components", {}).items():
        if not isinstance(component, torch.nn.Module):
            continue
        tensors = [*component.named_parameters(), *component.named_buffers()]
        missing = [pname for pname, t in tensors if t.is_meta]
        if missing:
            raise InputError(f"{_component_file(model_dir, name)}: tensor {missing[0]} is missing "
                             f"({len(missing)} of {len(tensors)} missing); the weights do not match {name}/config.json")


def check_finite_weights(pipe, *, model_dir: Path) -> None:
    """NaN/inf weights make every score and distance NaN/inf, which must never read as "no leakage"."""
    for name, component in getattr(pipe, "components", {}).items():
        if not isinstance(component, torch.nn.Module):
            continue
        for pname, t in component.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError(f"{_component_file(model_dir, name)}: weights contain NaN or infinite values "
                                 f"(tensor {pname})")


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
        from privaudit.model.flow import FlowDenoiser

        return FlowDenoiser(net=net, flow_scheduler=scheduler, device=device)
    return UNetDenoiser(unet=net, scheduler=scheduler, device=device)


def _conditional_unet(pipe, net, scheduler, device, model_dir: str) -> Denoiser:
    """SD 1.x/2.x, or SDXL when the UNet takes added text/time conditions."""
    from privaudit.model.families import SDXLDenoiser
    from privaudit.model.latent import LatentTextDenoiser

    if is_flow(scheduler):
        raise InputError(f"{model_dir}: a text-conditional UNet with a flow-matching scheduler is not supported")
    if getattr(net.config, "addition_embed_type", None) == "text_time":
        return SDXLDenoiser.from_pipeline(pipe, device=device, model_dir=model_dir)
    return LatentTextDenoiser.from_pipeline(pipe, device=device, model_dir=model_dir)


def _family(name: str):
    def adapter(pipe, net, scheduler, device, model_dir: str) -> Denoiser:
        import privaudit.model.families as F

        return getattr(F, name).from_pipeline(pipe, device=device, model_dir=model_dir)

    return adapter


# The adapter for each diffusers denoising network class: (pipeline, network, scheduler, device, folder) -> Denoiser.
ADAPTERS = {
    "UNet2DModel": lambda pipe, net, sched, device, folder: pixel_denoiser(net, sched, device=device),
    "UNet2DConditionModel": _conditional_unet,
    "DiTTransformer2DModel": _family("DiTDenoiser"),
    "PixArtTransformer2DModel": _family("PixArtDenoiser"),
    "SD3Transformer2DModel": _family("SD3Denoiser"),
    "FluxTransformer2DModel": _family("FluxDenoiser"),
}
FAMILIES = {
    "UNet2DModel": "pixel DDPM/DDIM-family (epsilon, v_prediction, sample) or flow matching",
    "UNet2DConditionModel": "Stable Diffusion 1.x/2.x and SDXL: VAE latents, CLIP text encoders (epsilon, v_prediction)",
    "DiTTransformer2DModel": "DiT: class labels, learned variance",
    "PixArtTransformer2DModel": "PixArt: T5 text encoder with attention mask, learned variance",
    "SD3Transformer2DModel": "Stable Diffusion 3: CLIP-L, CLIP-G and optional T5, flow matching",
    "FluxTransformer2DModel": "Flux: CLIP pooled + T5, packed latents, embedded guidance, flow matching",
}


def load_target(model_dir: str | Path, *, device: str = "auto", allow_pickle: bool = False,
                dtype: str = "auto") -> tuple[Denoiser, ModelInfo, object]:
    """Returns (denoiser, info, pipeline); ``dtype`` as ``--dtype`` (``resolve_dtype``)."""
    dev = resolve_device(device)
    model_dir = Path(model_dir)
    pipe = load_pipeline(model_dir, device=dev, allow_pickle=allow_pickle, dtype=dtype)
    check_finite_weights(pipe, model_dir=model_dir)
    den = denoiser_from_pipeline(pipe, device=dev, model_dir=model_dir)
    return den, _info(model_dir, pipe, den), pipe


def _info(model_dir: Path, pipe, den: Denoiser) -> ModelInfo:
    from privaudit.model.latent import image_shape_of, latent_of

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
        latent_shape=den.sample_shape if image_shape != den.sample_shape else None,
        text_conditional=latent_of(den) is not None,
        prediction_type="flow" if is_flow(getattr(pipe, "scheduler", None)) else den.prediction_type,
        dtype=str(next(den.white_box.parameters()).dtype).removeprefix("torch.") if den.white_box is not None else "",
    )
    return info


# ---------------------------------------------------------------------------- LoRA adapters (--lora)

LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
LORA_PICKLES = ("pytorch_lora_weights.bin", "adapter_model.bin")


def lora_weight_file(adapter: str | Path, *, allow_pickle: bool = False) -> Path:
    """The weight file of a LoRA adapter given as a file or a diffusers / peft adapter folder."""
    path = Path(adapter)
    if not path.exists():
        raise InputError(f"{path}: --lora adapter does not exist")
    if path.is_dir():
        found = [path / n for n in LORA_FILES if (path / n).is_file()]
        if not found:
            pickles = [path / n for n in LORA_PICKLES if (path / n).is_file()]
            if pickles and allow_pickle:
                found = pickles
            elif pickles:
                raise InputError(f"{pickles[0]}: pickled weights can run arbitrary code when loaded; "
                                 "convert to safetensors or pass --allow-pickle if you trust this file")
            else:
                others = sorted(p.name for p in path.glob("*.safetensors"))
                if len(others) == 1:
                    found = [path / others[0]]
                else:
                    raise InputError(f"{path}: no LoRA weights in the adapter folder (expected "
                                     f"{' or '.join(LORA_FILES)}{'; found several .safetensors' if others else ''})")
        path = found[0]
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InputError(f"{path}: pickled weights can run arbitrary code when loaded; "
                         "convert to safetensors or pass --allow-pickle if you trust this file")
    if path.suffix not in SAFE_SUFFIXES | (PICKLE_SUFFIXES if allow_pickle else set()):
        raise InputError(f"{path}: a LoRA adapter must be a .safetensors file or an adapter folder")
    return path


def _peft_to_diffusers(state: dict, *, config: Path, component: str = "unet") -> dict:
    """A peft ``save_pretrained`` state dict of the denoising network (``base_model.model.<module>.lora_A.weight``)
    as diffusers' LoRA format (``<component>.<module>.lora_A.weight``, component ``unet`` or ``transformer``),
    scaled so that lora_alpha / r is kept."""
    cfg = _read_json(config) if config.is_file() else {}
    r, alpha = (cfg.get("r"), cfg.get("lora_alpha")) if isinstance(cfg, dict) else (None, None)
    out = {}
    for k, v in state.items():
        name = k.removeprefix("base_model.model.")
        if isinstance(r, int) and isinstance(alpha, (int, float)) and r > 0 and name.endswith(".lora_B.weight"):
            v = v * (float(alpha) / r)  # diffusers loads with alpha = rank (scale 1): fold the scale into B
        out[f"{component}.{name}"] = v
    return out


def check_peft(adapter: str | Path) -> None:
    """diffusers loads LoRA adapters through peft: without it the adapter file is not to blame."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise InputError(f"--lora {adapter}: loading a LoRA adapter needs peft, which is not installed; "
                         "install it with: pip install 'privaudit[lora]'")


def load_lora(pipe, adapter: str | Path, *, allow_pickle: bool = False) -> Path:
    """Load a LoRA adapter onto ``pipe`` (diffusers' ``load_lora_weights``, peft backend); returns its file."""
    file = lora_weight_file(adapter, allow_pickle=allow_pickle)
    check_peft(adapter)
    if not hasattr(pipe, "load_lora_weights"):
        raise InputError(f"{adapter}: diffusers loads no LoRA adapter into {type(pipe).__name__} (it does for "
                         "Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux pipelines); merge the adapter into the "
                         "weights and audit the full fine-tune instead")
    component = _network_component(pipe)
    try:
        if file.suffix in SAFE_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        if not state:
            raise InputError(f"{file}: the LoRA file holds no tensors")
        if any(k.startswith("base_model.model.") for k in state):  # a peft adapter folder
            state = _peft_to_diffusers(state, config=file.parent / "adapter_config.json", component=component)
        for k, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError(f"{file}: LoRA weights contain NaN or infinite values (tensor {k})")
        state = _one_naming(state)
        _quietly(pipe.load_lora_weights, state)
    except InputError:
        raise
    except Exception as e:  # diffusers / peft / safetensors raise many types for a wrong or corrupt file
        raise InputError(f"{file}: could not load the LoRA adapter: {_lora_problem(str(e), e)}") from e
    _check_all_loaded(pipe, state, file, component=component)
    return file


def _network_component(pipe) -> str:
    """The pipeline's denoising network: ``unet`` (Stable Diffusion class) or ``transformer`` (SD3, Flux, ...)."""
    return "unet" if isinstance(getattr(pipe, "unet", None), torch.nn.Module) else "transformer"


def _quietly(fn, *args):
    """Run ``fn`` with diffusers' and peft's logging muted: a failed load logs the whole torch message
    (one line per mismatched layer) before raising it; the error names what matters (``--debug``: all)."""
    import contextlib
    import io
    import logging

    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return fn(*args)
    finally:
        dlogging.set_verbosity(level)


def _lora_problem(message: str, e: Exception) -> str:
    """One line: the first mismatched layer with both shapes (torch's message lists every layer), else the
    message's first line."""
    import re

    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    size = next((ln for ln in lines if ln.startswith("size mismatch for ")), None)
    if size:
        m = re.match(r"size mismatch for (\S+): copying a param with shape (.+?) from checkpoint, "
                     r"the shape in current model is (.+?)\.?$", size)
        n = sum(ln.startswith("size mismatch for ") for ln in lines)
        what = (f"layer {m[1]} has shape {m[2]} in the adapter, {m[3]} in the model" if m else size)
        return f"{what.replace('torch.Size', '')} ({n} layer(s) mismatched); the adapter does not fit this model"
    return (lines[0] if lines else e.__class__.__name__)[:300]


def _one_naming(state: dict) -> dict:
    """Diffusers' converter writes attention layers as ``lora.down`` / ``lora.up`` and others as ``lora_A`` /
    ``lora_B``; diffusers then loads a file mixing both as if it had one naming, dropping the rest. Use peft's
    names throughout (the same tensors)."""
    if not any(".lora.down." in k or ".lora.up." in k for k in state):
        return state
    return {k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v for k, v in state.items()}


LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}


def lora_layers(pipe) -> dict[str, int]:
    """The LoRA layers a pipeline holds, per component (what ``--lora`` loaded, reported in the run's target)."""
    out = {}
    for c in LORA_COMPONENTS:
        mod = getattr(pipe, c, None)
        if isinstance(mod, torch.nn.Module):
            n = len({name.split(".lora_A.")[0] for name, _ in mod.named_parameters() if ".lora_A." in name})
            if n:
                out[c] = n
    return out


def _kohya_modules(state: dict) -> dict[str, set[str]]:
    """Kohya / A1111 single-file LoRA keys (``lora_unet_...``, ``lora_te_...``): module names per component."""
    out: dict[str, set[str]] = {}
    for k in state:
        for prefix, comp in KOHYA_PREFIXES.items():
            if k.startswith(prefix) and k.endswith(".lora_down.weight"):
                out.setdefault(comp, set()).add(k[len(prefix):].removesuffix(".lora_down.weight"))
    return out


def _check_all_loaded(pipe, state: dict, file: Path, *, component: str = "unet") -> None:
    """Every layer the adapter names must have received its LoRA weights (diffusers only warns): the denoising
    network's layers (``component``: unet or transformer) by name for diffusers / peft keys; for kohya keys,
    the layers per component (UNet and text encoders) by count, naming the first that found no module where
    the file uses diffusers' module names."""
    loaded = lora_layers(pipe)
    for comp, names in _kohya_modules(state).items():
        comp = component if comp == "unet" else comp  # lora_unet_ names the denoising network, a transformer in Flux
        mod = getattr(pipe, comp, None)
        have = {n.split(".lora_A.")[0].replace(".", "_") for n, _ in mod.named_parameters() if ".lora_A." in n} \
            if isinstance(mod, torch.nn.Module) else set()
        if loaded.get(comp, 0) < len(names):
            odd = sorted(names - have)
            example = f" (e.g. {odd[0]})" if odd else ""
            why = "the adapter does not fit this model"
            if comp == "transformer" and not loaded.get(comp):  # nothing at all: often a layout diffusers cannot read
                why += (f", or diffusers has no converter from this kohya layout for {type(pipe).__name__} "
                        "(convert the file to diffusers' or peft's LoRA format)")
            raise InputError(f"{file}: {len(names) - loaded.get(comp, 0)} of {len(names)} {comp} LoRA layers did not "
                             f"load{example}; {why}")
    if not loaded:  # in no component (an adapter of text-encoder layers only is fine)
        raise InputError(f"{file}: no LoRA layer of this adapter matches the model's network")
    net = getattr(pipe, component, None)
    if not isinstance(net, torch.nn.Module):
        return
    prefix = component + "."
    wanted = {k.removeprefix(prefix).split(".lora_A.")[0] for k in state if k.startswith(prefix) and ".lora_A." in k}
    got = {n.split(".lora_A.")[0] for n, _ in net.named_parameters() if ".lora_A." in n}
    missing = sorted(wanted - got)
    if missing:
        raise InputError(f"{file}: {len(missing)} of {len(wanted)} LoRA layers did not load (e.g. {missing[0]}); "
                         "the adapter does not fit this model")


def load_lora_target(model_dir: str | Path, adapter: str | Path, *, device: str = "auto", allow_pickle: bool = False,
                     dtype: str = "auto") -> tuple[Denoiser, ModelInfo, object]:
    """``load_target`` of the base pipeline with a LoRA adapter loaded onto it."""
    dev = resolve_device(device)
    model_dir = Path(model_dir)
    lora_weight_file(adapter, allow_pickle=allow_pickle)  # a bad adapter fails before the pipeline loads
    check_peft(adapter)
    pipe = load_pipeline(model_dir, device=dev, allow_pickle=allow_pickle, dtype=dtype)
    check_finite_weights(pipe, model_dir=model_dir)
    file = load_lora(pipe, adapter, allow_pickle=allow_pickle)
    pipe.to(dev)
    den = denoiser_from_pipeline(pipe, device=dev, model_dir=model_dir)
    info = _info(model_dir, pipe, den)
    info = ModelInfo(**{**info.__dict__, "adapter": str(Path(adapter).resolve()), "lora_layers": lora_layers(pipe),
                        "weights_sha256": {**info.weights_sha256, f"lora:{file.name}": sha256_file(file)}})
    return den, info, pipe


class _AdaptersOff:
    """Mixin of ``adapter_free_view``: each noise prediction and prompt encoding runs with the adapter
    layers switched off (then back on: the adapted model shares the networks). Calls nest (``eps``
    encodes string prompts), so only the outermost switches."""

    _adapter_layers: list = []
    _off_depth: int = 0
    _adapted: Any = None

    @contextmanager
    def _adapters_off(self):
        self._off_depth += 1
        if self._off_depth == 1:
            for layer in self._adapter_layers:
                layer.enable_adapters(False)
        try:
            yield
        finally:
            self._off_depth -= 1
            if self._off_depth == 0:
                for layer in self._adapter_layers:
                    layer.enable_adapters(True)
                    for p in layer.parameters():  # peft marks enabled adapter weights trainable; keep them frozen
                        p.requires_grad_(False)

    def __reduce__(self):  # pickled (e.g. shipped to a Ray actor) as "this adapted model, adapters off"
        return adapter_free_view, (self._adapted,)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        with self._adapters_off():
            return super().eps(x_t, t, cond)  # type: ignore[misc]

    def _encode(self, prompts: list[str]):
        with self._adapters_off():
            return super()._encode(prompts)  # type: ignore[misc]


def adapter_free_view(den: Denoiser) -> Denoiser:
    """``den`` (a model with a LoRA adapter loaded) as its base model, without a second copy of the base
    weights: the same networks with every adapter layer switched off for each call (PEFT layers return
    their base layer's output exactly), a prompt-embedding cache of its own (text-encoder LoRA layers
    change the embeddings), its own fingerprint, and no white box (gradient attacks would differentiate
    the adapted network). Used for the base-calibrated scores of ``--lora`` audits."""
    import copy
    import hashlib

    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = [m for m in vars(den).values() if isinstance(m, torch.nn.Module)]
    modules += [m for m in (getattr(den, "encoders", None) or {}).values() if isinstance(m, torch.nn.Module)]
    layers = list({id(layer): layer for m in modules for layer in m.modules() if isinstance(layer, BaseTunerLayer)}.values())
    view: Any = copy.copy(den)
    cls = type(den)
    view.__class__ = type(f"{cls.__name__}WithoutAdapter", (_AdaptersOff, cls), {"__module__": __name__})
    view._adapter_layers = layers
    view._off_depth = 0
    view._adapted = den
    view._prompt_cache = {}
    view.white_box = None
    view._fingerprint = hashlib.sha256(f"{den.fingerprint}:adapters-off".encode()).hexdigest()
    return view
