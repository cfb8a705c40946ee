"""``PromptMitigatedPipeline``: a text-to-image pipeline served with a sampling-time mitigation.

Components: the raw model's own, untouched (``vae``, ``scheduler``, ``unet`` or ``transformer``,
``text_encoder``, ``tokenizer``, ... as its family has them; the others None). ``model_index.json``
stores the rule (``method``, ``params``) and the gate (``gate_threshold``: null for the ungated
rule, ``gate_seeds``, ``gate_seed``, ``gate_signal``). Everything is safetensors + JSON: no code, no pickles.

Sampling (``__call__``) is Stable Diffusion's loop through ``privaudit.model.denoiser.denoise`` with
``as_denoiser()`` (a ``MitigatedTextDenoiser``), so the served images are exactly what the audits
measured. ``prompt_embeds`` may be passed instead of prompts (as diffusers pipelines accept them):
the rule and the gate act on them too.

Loading offline: importing ``privaudit.plugins.mitigations.prompted`` registers the class (and
every rule) with diffusers::

    import privaudit.plugins.mitigations.prompted  # registers PromptMitigatedPipeline
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
from privaudit.plugins.mitigations.pipelines import finish_output, register_with_diffusers
from privaudit.plugins.mitigations.prompted.denoiser import MitigatedTextDenoiser
from privaudit.plugins.mitigations.prompted.gate import PromptGate
from privaudit.plugins.mitigations.prompted.rule import RULES

COMPONENTS = ("unet", "transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
              "tokenizer_3")


class PromptMitigatedPipeline(DiffusionPipeline, ProvidesDenoiser):
    """Text-to-image generation with a sampling-time mitigation rule behind a memorised-prompt gate."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = list(COMPONENTS)

    def __init__(self, vae, scheduler, unet=None, text_encoder=None, tokenizer=None, transformer=None,
                 text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None, method: str = "",
                 params: dict | None = None, gate_threshold: float | None = None, gate_seeds: int = 2,
                 gate_seed: int = 0, gate_signal: str = "magnitude", labels: dict | None = None):
        super().__init__()
        self.register_modules(vae=vae, scheduler=scheduler, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                              text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self.register_to_config(method=str(method), params=dict(params or {}),
                                gate_threshold=None if gate_threshold is None else float(gate_threshold),
                                gate_seeds=int(gate_seeds), gate_seed=int(gate_seed), gate_signal=str(gate_signal), labels=dict(labels or {}))
        self.labels = dict(labels or {})

    @classmethod
    def from_text_pipeline(cls, pipe, *, method: str, params: dict, gate: PromptGate) -> "PromptMitigatedPipeline":
        parts = {c: getattr(pipe, c, None) for c in COMPONENTS}
        return cls(vae=pipe.vae, scheduler=pipe.scheduler, method=method, params=params, gate_threshold=gate.threshold,
                   gate_seeds=gate.n_seeds, gate_seed=gate.seed, gate_signal=gate.signal, labels=getattr(pipe, "labels", None), **parts)

    def as_denoiser(self, *, device: torch.device | str | None = None) -> MitigatedTextDenoiser:
        """The served noise prediction and sampling rule as a privaudit ``Denoiser`` (what ``privaudit scan`` audits)."""
        from privaudit.api import InputError
        from privaudit.model.target import ADAPTERS

        method = self.config.method
        if method not in RULES:
            raise InputError(f"{self.name_or_path or 'pipeline'}: model_index.json names the text mitigation {method!r}, "
                             f"which this privaudit does not have (known: {', '.join(sorted(RULES))})")
        dev = torch.device(device) if device is not None else self._execution_device
        net = self.unet if self.unet is not None else self.transformer
        base = ADAPTERS[type(net).__name__](self, net, self.scheduler, dev, "protected pipeline")
        gate = PromptGate(threshold=self.config.gate_threshold, n_seeds=self.config.gate_seeds,
                          seed=self.config.gate_seed, signal=self.config.get("gate_signal", "magnitude"))
        return MitigatedTextDenoiser(base=base, rule=RULES[method](**self.config.params), gate=gate)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = "", num_images_per_prompt: int = 1, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, generator: torch.Generator | list[torch.Generator] | None = None,
                 eta: float = 0.0, output_type: str | None = "pil", return_dict: bool = True,
                 prompt_embeds: torch.Tensor | None = None):
        """Generate ``num_images_per_prompt`` mitigated images per prompt (prompt-major order); ``prompt_embeds``
        (B, L, D) instead of prompts. ``output_type``: "pil", "np", "pt" or "latent"."""
        den = self.as_denoiser()
        lat = den.inner()
        if prompt_embeds is not None:
            cond = prompt_embeds.to(den.device).repeat_interleave(num_images_per_prompt, 0)
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            cond = lat.prompt_embeddings([p for p in prompts for _ in range(num_images_per_prompt)])
        n = len(cond)
        latents = randn_tensor((n, *lat.sample_shape), generator=generator, device=den.device, dtype=torch.float32)
        if lat.flow:  # flow matching: DDIM in the model's VP-equivalent view is its Euler sampler
            sched = sampling_scheduler(lat, "ddim", num_inference_steps)
        else:
            sched = self.scheduler
            sched.set_timesteps(num_inference_steps, device=den.device)
        latents = latents * sched.init_noise_sigma
        params = inspect.signature(sched.step).parameters
        step_kwargs: dict = {"generator": generator} if "generator" in params else {}
        if "eta" in params:
            step_kwargs["eta"] = eta
        with self.progress_bar(total=len(sched.timesteps)) as bar:
            latents = denoise(den, latents, scheduler=sched, cond=cond, uncond=cond_tile(lat.prompt_embeddings([""]), n),
                              guidance_scale=guidance_scale, step_kwargs=step_kwargs, on_step=lambda _: bar.update())
        image = latents if output_type == "latent" else (lat.decode(latents) / 2 + 0.5).clamp(0, 1)
        return finish_output(self, image, output_type=output_type, return_dict=return_dict)


register_with_diffusers(PromptMitigatedPipeline)
