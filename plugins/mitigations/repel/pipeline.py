"""``RepelPipeline``: a diffusers pipeline that samples with dissimilarity guidance (``denoiser.py``) on.

Components: ``unet`` (the untouched ``UNet2DModel``), ``scheduler`` (any diffusers noise scheduler) and
``members`` (``MemberBank``: the members' pixels, the radius and its quantile); ``strength`` and the
radius per noise level (``radius_timesteps``, ``radius_schedule``; ``schedule.py``) in ``model_index.json``. Safetensors + JSON only; loads offline after
``import privaudit.plugins.mitigations.repel`` (``pipelines.py`` explains why)::

    import privaudit.plugins.mitigations.repel  # registers RepelPipeline
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("run/protected")
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images

``__call__`` follows ``DDPMPipeline`` step for step with the noise prediction from ``as_denoiser()``.
The protection lives in ``eps``, so a swapped scheduler (``DDIMScheduler.from_config(...)``) or
another ``num_inference_steps`` keeps it; with ``strength=0`` it reproduces the unprotected pipeline
bit for bit.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline

from privaudit.model.denoiser import ProvidesDenoiser
from privaudit.model.target import pixel_denoiser
from privaudit.plugins.mitigations.memberbank import MemberBank  # noqa: F401 (registers the component module)
from privaudit.plugins.mitigations.pipelines import finish_output, initial_noise, register_with_diffusers, run_sampler
from privaudit.plugins.mitigations.repel.denoiser import RepelDenoiser


class RepelPipeline(DiffusionPipeline, ProvidesDenoiser):
    """Unconditional image generation with predicted images near a member repelled to the copy radius.

    Parameters: ``unet`` (``UNet2DModel``), ``scheduler`` (``DDPMScheduler``, ``DDIMScheduler``, ...),
    ``members`` (``MemberBank``), ``strength`` (1: to the radius; > 1 overshoots; 0: off), ``radius_timesteps`` /
    ``radius_schedule`` (the radius per noise level, interpolated in t; empty: the bank's radius everywhere).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, members, strength: float = 1.0, radius_timesteps: list | None = None,
                 radius_schedule: list | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, members=members)
        self.register_to_config(strength=float(strength), radius_timesteps=[int(t) for t in radius_timesteps or []],
                                radius_schedule=[float(r) for r in radius_schedule or []])

    def as_denoiser(self, *, device: torch.device | str | None = None, strength: float | None = None,
                    radius: float | None = None) -> RepelDenoiser:
        """The repelled noise prediction as a privaudit ``Denoiser`` (what ``privaudit scan`` audits)."""
        dev = torch.device(device) if device is not None else self._execution_device
        base = pixel_denoiser(self.unet, self.scheduler, device=dev)
        schedule = (tuple(self.config.get("radius_timesteps") or ()), tuple(self.config.get("radius_schedule") or ()))
        return RepelDenoiser(base=base, bank=self.members, radius=radius, schedule=schedule if radius is None else None,
                             strength=self.config.strength if strength is None else strength)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 50, eta: float = 0.0, output_type: str | None = "pil",
                 return_dict: bool = True, strength: float | None = None):
        """Generate ``batch_size`` images; ``strength`` overrides the saved value for this call.

        ``eta`` is passed to schedulers that take it (DDIM); ``output_type``: "pil", "np" or "pt".
        """
        den = self.as_denoiser(strength=strength)
        x = initial_noise(self.unet, batch_size, generator=generator, device=den.device)
        x = run_sampler(self, den, x, generator=generator, num_inference_steps=num_inference_steps, eta=eta)
        self.last_counts_ = {"rows": den.calls_, "repelled": den.repelled_, "steps": den.steps_,
                             "steps_repelled": den.steps_repelled_}
        return finish_output(self, (x / 2 + 0.5).clamp(0, 1), output_type=output_type, return_dict=return_dict)


register_with_diffusers(RepelPipeline)
