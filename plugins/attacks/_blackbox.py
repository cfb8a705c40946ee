"""Helpers shared by the black-box attacks: what the sampling interface returns, as images.

A black-box attacker sends and receives images. The runner hands attacks images in the
model's own space (scaled latents for latent text models, with a ``ConditionedDenoiser``
bound to the batch's captions); these helpers take them back to pixels, run the model's own
sampler on a batch (classifier-free guidance for text models) and measure per-image
distances, so every black-box attack compares what a served model would return.
``GeneratedSamples`` is the part the attacks on generated samples (gen-nn, gen-radius) share: one
set of samples per audit and an image's distance to its nearest one.
"""

from __future__ import annotations

import torch

from privaudit.model.denoiser import cond_tile, denoise
from privaudit.model.latent import ConditionedDenoiser, latent_of


def to_pixels(denoiser, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from the model's space: decoded latents for latent models, else ``x`` itself."""
    lat = latent_of(denoiser)
    return x.float() if lat is None else lat.decode(x).float()


def text_conditioning(denoiser, n: int):
    """(cond, uncond) rows for ``n`` rows of a text model's bound view, or (None, None) for others."""
    lat = latent_of(denoiser)
    if lat is None:
        return None, None
    cond = denoiser.conditioning(n)  # a ConditionedDenoiser: the batch's captions (or the empty prompt)
    if cond is None:
        return None, None
    return cond, cond_tile(lat.prompt_embeddings([""]), n)


@torch.no_grad()
def run_sampler(denoiser, x: torch.Tensor, *, scheduler, timesteps, guidance_scale: float,
                generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Step ``x`` through ``timesteps`` of ``scheduler`` with the model's own sampling rule: its ``eps``
    (a protected model's guard included) and, for text models, classifier-free guidance with
    ``guidance_scale`` on the rows' captions. ``generators``: one per row for stochastic samplers."""
    cond, uncond = text_conditioning(denoiser, len(x))
    kw = {"generator": generators} if generators is not None else None
    if cond is None or guidance_scale == 1.0:
        return denoise(denoiser, x, scheduler=scheduler, cond=cond, timesteps=timesteps, step_kwargs=kw)
    return denoise(denoiser, x, scheduler=scheduler, cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                   timesteps=timesteps, step_kwargs=kw)


def sq_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared pixel difference (rows of ``a`` against the same rows of ``b``)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def nearest_sq_distance(x: torch.Tensor, pool: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
    """Per row of ``x``: the mean squared pixel difference to its nearest image in ``pool``."""
    xf = x.float().flatten(1)
    d = xf.shape[1]
    out = torch.full((len(x),), float("inf"))
    for s in range(0, len(pool), chunk):
        p = pool[s:s + chunk].float().flatten(1).to(xf.device)
        dist = torch.cdist(xf, p).pow(2).min(1).values.cpu() / d
        out = torch.minimum(out, dist)
    return out


class GeneratedSamples:
    """Mixin for attacks that compare images with ``n_samples`` generated samples (``steps``, ``sampler``: the
    attack's parameters). ``prepare`` takes the audit's cached samples (``ctx.samples``; the ``nn`` detector's
    defaults, so one sampling serves them all); outside an audit ``ensure_samples(denoiser, seed)`` samples in ``fit``.
    ``distance`` is an image's mean squared pixel distance to its nearest sample."""

    n_samples: int
    steps: int
    sampler: str

    def queries_per_image(self) -> float:
        # prepared: the sampling spread over the audited images; before: per generated sample, as the nn detector
        return float(getattr(self, "queries_", self.steps))

    def prepare(self, ctx) -> None:
        self._samples = ctx.samples(n=self.n_samples, steps=self.steps, sampler=self.sampler)
        n_images = len(ctx.members) + len(ctx.holdout)
        self.queries_ = self.n_samples * self.steps / max(1, n_images)

    def ensure_samples(self, denoiser, seed: int) -> None:
        """The samples: the audit's (prepared), else drawn here seeded by the run; never NaN or infinite."""
        if getattr(self, "_samples", None) is None:  # outside an audit: draw them here, seeded by the run
            base = denoiser
            while isinstance(base, ConditionedDenoiser):  # sample the model, not a view bound to a batch
                base = base.inner()
            self._samples = base.draw_samples(n=self.n_samples, steps=self.steps, sampler=self.sampler, seed=seed)
        if not torch.isfinite(self._samples).all():
            raise ValueError("the model generated samples with NaN or infinite pixels")

    def distance(self, denoiser, x0: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_samples", None) is None:
            raise RuntimeError(f"{getattr(self, 'name', type(self).__name__)}: fit() (or prepare()) must run before "
                               "score()")
        return nearest_sq_distance(to_pixels(denoiser, x0).cpu(), self._samples)


@torch.no_grad()
def closest_prompted(denoiser, x0: torch.Tensor, noise, variants: list, *, k: int, steps: int,
                     guidance_scale: float, tag: str) -> torch.Tensor:
    """Per image of a text model's bound view: the negated mean squared pixel distance to its closest
    generation over every conditioning variant (each a (b, ...) conditioning of the batch's rows, e.g.
    rewritten captions) and ``k`` draws per variant (DDIM, ``steps``, guidance ``guidance_scale``), each
    draw's initial noise from the image's own ``noise`` stream (tagged by variant and draw)."""
    from privaudit.model.denoiser import sampling_scheduler

    model = denoiser.inner() if isinstance(denoiser, ConditionedDenoiser) else denoiser
    b = len(x0)
    ref = to_pixels(denoiser, x0).cpu().repeat(k, *[1] * (x0.ndim - 1))
    best = torch.full((b,), float("inf"))
    for v, cond in enumerate(variants):
        sched = sampling_scheduler(model, "ddim", steps)
        z = noise.randn((k * b, *x0.shape[1:]), tag=f"{tag}-{v}", device=x0.device)  # row j*b+i: image i, draw j
        view = ConditionedDenoiser(model, cond=cond, prompt="caption")
        out = run_sampler(view, z * float(sched.init_noise_sigma), scheduler=sched, timesteps=None,
                          guidance_scale=guidance_scale)
        d = sq_distance(to_pixels(denoiser, out).cpu(), ref).view(k, b).min(0).values
        best = torch.minimum(best, d)
    return -best


class PromptVariants:
    """Mixin for prompt-copy attacks that try several conditionings of each image's caption (``_variants``:
    a list of (b, ...) conditionings, the caption's own first) and keep the closest of ``k`` generations for
    each: parameters ``k``, ``tries``, ``steps``, ``guidance_scale``; ``name`` tags the noise."""

    name: str
    k: int
    tries: int
    steps: int
    guidance_scale: float

    def queries_per_image(self) -> float:
        return float((self.tries + 1) * self.k * self.steps * (2 if self.guidance_scale != 1.0 else 1))

    def score(self, denoiser, x0, *, noise):
        from privaudit.plugins.attacks._common import image_chunks

        if latent_of(denoiser) is None:
            raise ValueError(f"{self.name} needs a text-conditional model")
        return torch.cat([closest_prompted(d, x, n, self._variants(d, x, n), k=self.k, steps=self.steps,
                                           guidance_scale=self.guidance_scale, tag=self.name)
                          for d, x, n in image_chunks(denoiser, x0, noise, size=64)])

    def _variants(self, denoiser, x0: torch.Tensor, noise) -> list:
        raise NotImplementedError
