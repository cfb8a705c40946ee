"""``CPSamplePipeline``: a diffusers pipeline that samples with CPSample protection on.

Components: ``unet`` (the untouched ``UNet2DModel``), ``scheduler`` (any diffusers noise
scheduler, e.g. DDPM or DDIM) and ``guard`` (``GuardClassifier``); ``alpha`` and ``scale``
are stored in ``model_index.json``. Everything is safetensors + JSON: no pickles.

Loading offline. diffusers resolves a pipeline folder in two steps, both read from
``model_index.json``:

1. the pipeline class: a plain string ``_class_name`` is looked up as an attribute of the
   ``diffusers`` package; a ``[file, class]`` pair (or ``custom_pipeline=``) loads a ``.py``
   file from the folder, which diffusers refuses without ``trust_remote_code=True``;
2. each component ``[library, class]``: ``diffusers``/``transformers`` classes are imported,
   any other library only if the calling process already imported it (diffusers >= 0.3x
   will not import a module just because a folder names it).

privaudit therefore ships no code in the folder (``privaudit.plugins.mitigations.pipelines``,
shared by every mitigation's pipeline): importing this module (which
``privaudit``'s plugin registry does, and so does ``import privaudit.plugins.mitigations.cpsample``)
adds ``CPSamplePipeline`` to the ``diffusers`` namespace and puts the guard's module in
``sys.modules``, after which the plain call works::

    import privaudit.plugins.mitigations.cpsample  # registers the pipeline class
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("run/protected")
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images

Without that import diffusers fails with "module diffusers has no attribute CPSamplePipeline"
rather than silently loading an unprotected pipeline.

Sampling (``__call__``) follows ``DDPMPipeline`` step for step (same initial noise from the
same generator, same scheduler calls), with the noise prediction taken from
``as_denoiser()`` (``ProtectedDenoiser``); with ``scale=0`` it reproduces the unprotected
pipeline bit for bit.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from privaudit.model.denoiser import ProvidesDenoiser, denoise, sampling_scheduler
from privaudit.model.target import pixel_denoiser
from privaudit.plugins.mitigations.cpsample.guard import GuardClassifier  # noqa: F401 (registers the component module)
from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser
from privaudit.plugins.mitigations.pipelines import finish_output, register_with_diffusers


class CPSamplePipeline(DiffusionPipeline, ProvidesDenoiser):
    """Unconditional image generation with CPSample classifier protection.

    Parameters: ``unet`` (``UNet2DModel``), ``scheduler`` (``DDPMScheduler``,
    ``DDIMScheduler``, ...), ``guard`` (``GuardClassifier``), ``alpha`` (gate: guide where
    the guard's confidence max(p, 1 - p) exceeds 1 - alpha), ``scale`` (guidance scale s),
    ``gate`` ("hard", or "soft": strength following confidence, ``gate_width`` wide; ``protected.py``).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, guard, alpha: float = 0.4, scale: float = 100.0, gate: str = "hard",
                 gate_width: float = 0.05):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, guard=guard)
        self.register_to_config(alpha=float(alpha), scale=float(scale), gate=str(gate), gate_width=float(gate_width))

    def as_denoiser(self, *, device: torch.device | str | None = None, alpha: float | None = None,
                    scale: float | None = None) -> ProtectedDenoiser:
        """The protected noise prediction as a privaudit ``Denoiser`` (what ``privaudit scan`` audits)."""
        dev = torch.device(device) if device is not None else self._execution_device
        base = pixel_denoiser(self.unet, self.scheduler, device=dev)
        return ProtectedDenoiser(base=base, guard=self.guard,
                                 alpha=self.config.alpha if alpha is None else alpha,
                                 scale=self.config.scale if scale is None else scale,
                                 gate=self.config.get("gate", "hard"), gate_width=self.config.get("gate_width", 0.05))

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 50, eta: float = 0.0, output_type: str | None = "pil",
                 return_dict: bool = True, alpha: float | None = None, scale: float | None = None):
        """Generate ``batch_size`` protected images.

        ``eta`` is passed to schedulers that take it (DDIM); ``alpha`` / ``scale`` override
        the saved values for this call. ``output_type``: "pil", "np" or "pt".
        """
        den = self.as_denoiser(alpha=alpha, scale=scale)
        cfg = self.unet.config
        size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
        shape = (batch_size, cfg.in_channels, *size)
        device = den.device
        if device.type == "mps":  # randn is not reproducible on mps
            image = randn_tensor(shape, generator=generator, dtype=self.unet.dtype).to(device)
        else:
            image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        if hasattr(self.scheduler, "alphas_cumprod"):
            sched = self.scheduler
            sched.set_timesteps(num_inference_steps)
        else:  # flow matching: DDIM in the model's VP-equivalent view is its Euler sampler (privaudit.model.flow)
            sched = sampling_scheduler(den, "ddim", num_inference_steps)
        step_kwargs = {"generator": generator}
        if "eta" in inspect.signature(sched.step).parameters:
            step_kwargs["eta"] = eta
        with self.progress_bar(total=len(sched.timesteps)) as bar:
            # eps_theta plus the guard's guidance where it is confident, converted to the UNet's own output type
            image = denoise(den, image, scheduler=sched, step_kwargs=step_kwargs, on_step=lambda _: bar.update())
        return finish_output(self, (image / 2 + 0.5).clamp(0, 1), output_type=output_type, return_dict=return_dict)


register_with_diffusers(CPSamplePipeline)
