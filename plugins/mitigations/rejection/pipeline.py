"""``RejectionPipeline``: a diffusers pipeline that serves the raw model's samples minus its copies.

Components: ``unet`` (the untouched ``UNet2DModel``), ``scheduler`` (any diffusers noise scheduler)
and ``members`` (``MemberBank``: the members' pixels and the copy radius); ``max_factor`` in
``model_index.json``. Safetensors + JSON only; loads offline after
``import privaudit.plugins.mitigations.rejection`` (``pipelines.py`` explains why)::

    import privaudit.plugins.mitigations.rejection  # registers RejectionPipeline
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("run/protected")
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images

``__call__`` samples as ``DDPMPipeline`` does (same initial noise from the same generator, the
pipeline's own scheduler), then redraws every place whose sample lies closer to a member than the
bank's radius, from the same generator (a list of generators: each place redraws from its own), until
every place holds a non-copy or ``max_factor`` x ``batch_size`` samples have been drawn. Places still
open then get their least copy-like reject; ``last_draw_`` records what happened (drawn, accepted,
filled places) and a warning is logged. A model that copies nothing returns exactly ``DDPMPipeline``'s
images. ``as_denoiser()`` is the same rule as a privaudit ``Denoiser`` (``denoiser.py``), what
``privaudit scan`` audits.
"""

from __future__ import annotations

import math

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging

from privaudit.model.denoiser import ProvidesDenoiser
from privaudit.model.target import pixel_denoiser
from privaudit.plugins.mitigations.memberbank import MemberBank  # noqa: F401 (registers the component module)
from privaudit.plugins.mitigations.pipelines import finish_output, initial_noise, register_with_diffusers, run_sampler
from privaudit.plugins.mitigations.rejection.denoiser import BankCopyTest, RejectionSampledDenoiser

logger = logging.get_logger(__name__)


class RejectionPipeline(DiffusionPipeline, ProvidesDenoiser):
    """Unconditional image generation with post-hoc rejection of copies of training images.

    Parameters: ``unet`` (``UNet2DModel``), ``scheduler`` (``DDPMScheduler``, ``DDIMScheduler``, ...),
    ``members`` (``MemberBank``: members' pixels and the copy radius), ``max_factor`` (draws allowed
    per requested image).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, members, max_factor: float = 10.0):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, members=members)
        self.register_to_config(max_factor=float(max_factor))
        self.last_draw_: dict = {}

    def as_denoiser(self, *, device: torch.device | str | None = None, radius: float | None = None,
                    max_factor: float | None = None) -> RejectionSampledDenoiser:
        """The rejection-sampled model as a privaudit ``Denoiser``: ``eps`` the raw model's, ``draw_samples``
        rejecting copies (what ``privaudit scan`` audits)."""
        dev = torch.device(device) if device is not None else self._execution_device
        base = pixel_denoiser(self.unet, self.scheduler, device=dev)
        return RejectionSampledDenoiser(base=base, test=BankCopyTest(self.members, radius=radius),
                                        max_factor=self.config.max_factor if max_factor is None else max_factor)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 50, eta: float = 0.0, output_type: str | None = "pil",
                 return_dict: bool = True, max_factor: float | None = None):
        """Generate ``batch_size`` images none of which lies within the bank's radius of a member, unless
        the budget of ``max_factor`` x ``batch_size`` draws runs out (then ``last_draw_["filled"]`` > 0).

        ``eta`` is passed to schedulers that take it (DDIM); ``output_type``: "pil", "np" or "pt".
        """
        gens = generator if isinstance(generator, list) else None
        if gens is not None and len(gens) != batch_size:
            raise ValueError(f"got {len(gens)} generators for a batch of {batch_size}: pass one per image")
        factor = float(self.config.max_factor if max_factor is None else max_factor)
        budget = max(batch_size, math.ceil(factor * batch_size))
        den = self.as_denoiser()
        radius = self.members.radius
        out: torch.Tensor | None = None
        best = torch.full((batch_size,), -math.inf, device=den.device)  # distance of each place's best reject
        open_ = torch.arange(batch_size)
        drawn = rounds = 0
        while len(open_) and drawn < budget:
            places = open_[: budget - drawn]
            g = [gens[int(j)] for j in places] if gens is not None else generator
            x = run_sampler(self, den.base, initial_noise(self.unet, len(places), generator=g, device=den.device),
                            generator=g, num_inference_steps=num_inference_steps, eta=eta).clamp(-1, 1)
            if out is None:  # the first round draws every place (budget >= batch_size)
                out = torch.empty_like(x)
            d = self.members.nearest(x)[0].to(den.device)
            ok = d >= radius
            at = places.to(den.device)
            # a place keeps an accepted sample, else its farthest reject so far (what fills it if the budget runs out)
            take = ok | (d > best[at])
            out[at[take]] = x[take]
            best[at] = torch.where(ok, math.inf, torch.maximum(d, best[at]))
            open_ = torch.cat([places[~ok.cpu()], open_[len(places):]])
            drawn += len(places)
            rounds += 1
        assert out is not None
        filled = len(open_)
        self.last_draw_ = {"requested": batch_size, "drawn": drawn, "accepted": batch_size - filled, "filled": filled,
                           "rounds": rounds, "budget": budget, "radius": radius,
                           "acceptance_rate": round((batch_size - filled) / max(drawn, 1), 4)}
        if filled:
            logger.warning(f"rejection budget ({factor:g} x {batch_size} draws) ran out: {filled} of {batch_size} "
                           "images are the least copy-like rejects, within the copy radius of a member")
        return finish_output(self, (out / 2 + 0.5).clamp(0, 1), output_type=output_type, return_dict=return_dict)


register_with_diffusers(RejectionPipeline)
