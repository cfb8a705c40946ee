"""What every protected diffusers pipeline of privaudit's mitigations shares: offline registration, the
unconditional sampling loop and the output conversion.

Registration (``register_with_diffusers``). diffusers resolves ``model_index.json``'s plain string
``_class_name`` as an attribute of the ``diffusers`` package, and loads a component ``[module, class]``
of another library only when the calling process already imported that module. A mitigation package's
``__init__`` therefore imports its pipeline module, which calls ``register_with_diffusers`` and imports
its components' modules: after ``import privaudit.plugins.mitigations.<method>`` (the plugin registry
does it) ``DiffusionPipeline.from_pretrained(DIR)`` resolves the protected pipeline offline, with no
code and no pickles in the folder. Without the import diffusers fails with "module diffusers has no
attribute ...Pipeline" rather than silently loading an unprotected pipeline.

Sampling (``initial_noise`` + ``run_sampler``) follows ``DDPMPipeline`` step for step (initial noise
from the caller's generator with ``randn_tensor``, the pipeline's own scheduler, its ``step`` with the
generator and, for DDIM, ``eta``), with the noise prediction taken from a privaudit ``Denoiser``, so a
protection that lives in ``Denoiser.eps`` survives any scheduler and step count the caller picks.
Flow-matching schedulers (no ``alphas_cumprod``) are sampled with DDIM in the model's VP-equivalent
view, which is their Euler sampler (``privaudit.model.flow``).
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from privaudit.model.denoiser import Denoiser, denoise, sampling_scheduler


def register_with_diffusers(cls: type) -> None:
    """Make ``DiffusionPipeline.from_pretrained`` resolve ``_class_name: cls.__name__``: diffusers looks
    pipeline classes up as attributes of the ``diffusers`` package, so no code ships in the folder."""
    import diffusers

    if vars(diffusers).get(cls.__name__) is not cls:
        setattr(diffusers, cls.__name__, cls)


def finish_output(pipe: DiffusionPipeline, image: torch.Tensor, *, output_type: str | None, return_dict: bool):
    """Images in [0, 1] -> the output diffusers pipelines return ("pt", "np" or "pil")."""
    if output_type not in ("pt", "latent"):
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "pil":
            image = pipe.numpy_to_pil(image)
    pipe.maybe_free_model_hooks()
    return ImagePipelineOutput(images=image) if return_dict else (image,)


def initial_noise(unet, n: int, *, generator: torch.Generator | list[torch.Generator] | None,
                  device: torch.device) -> torch.Tensor:
    """x_T for ``n`` images of the UNet's shape, drawn as ``DDPMPipeline`` draws it."""
    cfg = unet.config
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    shape = (n, cfg.in_channels, *size)
    if device.type == "mps":  # randn is not reproducible on mps
        return randn_tensor(shape, generator=generator, dtype=unet.dtype).to(device)
    return randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)


def run_sampler(pipe: DiffusionPipeline, den: Denoiser, x: torch.Tensor, *,
                generator: torch.Generator | list[torch.Generator] | None, num_inference_steps: int,
                eta: float = 0.0) -> torch.Tensor:
    """Step ``x`` (x_T) through the pipeline's scheduler with ``den.eps``; images in [-1, 1] (unclamped)."""
    if hasattr(pipe.scheduler, "alphas_cumprod"):
        sched = pipe.scheduler
        sched.set_timesteps(num_inference_steps)
    else:
        sched = sampling_scheduler(den, "ddim", num_inference_steps)
    params = inspect.signature(sched.step).parameters
    step_kwargs: dict = {"generator": generator} if "generator" in params else {}
    if "eta" in params:
        step_kwargs["eta"] = eta
    with pipe.progress_bar(total=len(sched.timesteps)) as bar:
        return denoise(den, x * sched.init_noise_sigma, scheduler=sched, step_kwargs=step_kwargs,
                       on_step=lambda _: bar.update())
