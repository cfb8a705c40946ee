"""``CPSampleTextPipeline``: CPSample protection for text-to-image latent pipelines (Stable Diffusion class).

Components: the original ``vae``, ``text_encoder``, ``tokenizer``, ``unet``
(``UNet2DConditionModel``, untouched) and ``scheduler``, plus ``guard``: a
``GuardClassifier`` on noised *latents* (conditioned on the timestep, not on the prompt:
it recognises a member's latent whatever it was asked for), trained on the members'
VAE latents exactly as the pixel guard is trained on pixels. ``alpha`` and ``scale`` are
stored in ``model_index.json``. Everything is safetensors + JSON.

Sampling (``__call__``) is Stable Diffusion's loop: prompts -> CLIP embeddings, latents
from the generator, classifier-free guidance ``eps("") + w (eps(prompt) - eps(""))`` with
the noise prediction of ``as_denoiser()`` (a ``ProtectedDenoiser`` over a
``LatentTextDenoiser``), so the guard's guidance acts in latent space; the additive
guard term is the same on both branches and survives classifier-free guidance exactly
once. Then the VAE decodes. With ``scale=0`` it is the unprotected pipeline.

Loading offline works as for ``CPSamplePipeline`` (see ``pipeline.py``): importing
``privaudit.plugins.mitigations.cpsample`` registers the class with diffusers::

    import privaudit.plugins.mitigations.cpsample  # registers the pipeline classes
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("run/protected")
    images = pipe(["a handwritten digit seven, sample kavo"], num_images_per_prompt=4).images
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from privaudit.model.denoiser import ProvidesDenoiser, cond_tile, denoise, sampling_scheduler
from privaudit.plugins.mitigations.cpsample.guard import GuardClassifier  # noqa: F401 (registers the component module)
from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser
from privaudit.plugins.mitigations.pipelines import finish_output, register_with_diffusers

# every latent family's components (privaudit.model.families); those a family lacks are None
COMPONENTS = ("unet", "transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
              "tokenizer_3")


class CPSampleTextPipeline(DiffusionPipeline, ProvidesDenoiser):
    """Conditional latent generation (text prompts, or class labels for DiT) with CPSample guidance.

    Parameters: ``vae`` (``AutoencoderKL``), ``scheduler``, ``guard`` (``GuardClassifier`` on latents),
    the raw model's own network and encoders (``unet`` or ``transformer``, ``text_encoder``,
    ``tokenizer``, ... as its family has them; the others None), ``alpha`` (gate), ``scale``
    (guidance scale s) and, for DiT, ``labels`` (class name -> id).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = list(COMPONENTS)

    def __init__(self, vae, scheduler, guard, unet=None, text_encoder=None, tokenizer=None, transformer=None,
                 text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None, alpha: float = 0.25,
                 scale: float = 30.0, labels: dict | None = None, gate: str = "hard", gate_width: float = 0.05):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              guard=guard, transformer=transformer, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self.register_to_config(alpha=float(alpha), scale=float(scale), labels=dict(labels or {}), gate=str(gate),
                                gate_width=float(gate_width))
        self.labels = dict(labels or {})

    @classmethod
    def from_text_pipeline(cls, pipe, *, guard, alpha: float, scale: float, gate: str = "hard",
                           gate_width: float = 0.05) -> "CPSampleTextPipeline":
        """Protect a loaded latent pipeline (Stable Diffusion, SDXL, DiT, PixArt, SD3) with a trained latent guard."""
        parts = {c: getattr(pipe, c, None) for c in COMPONENTS}
        return cls(vae=pipe.vae, scheduler=pipe.scheduler, guard=guard, alpha=alpha, scale=scale,
                   labels=getattr(pipe, "labels", None), gate=gate, gate_width=gate_width, **parts)

    def as_denoiser(self, *, device: torch.device | str | None = None, alpha: float | None = None,
                    scale: float | None = None) -> ProtectedDenoiser:
        """The protected latent noise prediction as a privaudit ``Denoiser`` (what ``privaudit scan`` audits)."""
        from privaudit.model.target import ADAPTERS

        dev = torch.device(device) if device is not None else self._execution_device
        net = self.unet if self.unet is not None else self.transformer
        base = ADAPTERS[type(net).__name__](self, net, self.scheduler, dev, "protected pipeline")
        return ProtectedDenoiser(base=base, guard=self.guard, alpha=self.config.alpha if alpha is None else alpha,
                                 scale=self.config.scale if scale is None else scale,
                                 gate=self.config.get("gate", "hard"), gate_width=self.config.get("gate_width", 0.05))

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = "", num_images_per_prompt: int = 1, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, generator: torch.Generator | list[torch.Generator] | None = None,
                 eta: float = 0.0, output_type: str | None = "pil", return_dict: bool = True,
                 alpha: float | None = None, scale: float | None = None):
        """Generate ``num_images_per_prompt`` protected images for each prompt (prompt-major order).

        ``alpha`` / ``scale`` override the saved guard settings for this call; ``guidance_scale``
        is classifier-free guidance (1 turns it off); ``output_type``: "pil", "np", "pt" or "latent".
        """
        den = self.as_denoiser(alpha=alpha, scale=scale)
        lat = den.inner()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        rows = [p for p in prompts for _ in range(num_images_per_prompt)]
        cond = lat.prompt_embeddings(rows)
        empty = cond_tile(lat.prompt_embeddings([""]), len(rows))
        shape = (len(rows), *lat.sample_shape)
        latents = randn_tensor(shape, generator=generator, device=den.device, dtype=torch.float32)
        if lat.flow:  # flow matching: DDIM in the model's VP-equivalent view is its Euler sampler (privaudit.model.flow)
            sched = sampling_scheduler(lat, "ddim", num_inference_steps)
        else:
            sched = self.scheduler
            sched.set_timesteps(num_inference_steps, device=den.device)
        latents = latents * sched.init_noise_sigma
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
        if "eta" in inspect.signature(sched.step).parameters:
            step_kwargs["eta"] = eta
        with self.progress_bar(total=len(sched.timesteps)) as bar:
            latents = denoise(den, latents, scheduler=sched, cond=cond, uncond=empty,
                              guidance_scale=guidance_scale, step_kwargs=step_kwargs, on_step=lambda _: bar.update())
        image = latents if output_type == "latent" else (lat.decode(latents) / 2 + 0.5).clamp(0, 1)
        return finish_output(self, image, output_type=output_type, return_dict=return_dict)


register_with_diffusers(CPSampleTextPipeline)
