"""``PromptRule``: what a sampling-time text mitigation does, as the hooks of the one sampling loop.

``privaudit.model.denoiser.denoise`` (the loop every audit, detector and protected pipeline steps
through) calls three hooks of the served denoiser (``MitigatedTextDenoiser``), which hands them to
its rule with the gate's per-row decision ``flags`` (True: this prompt row is mitigated):

- ``condition(lat, cond, flags, x=, t=)``: once per sampling run, the conditional prompt rows
  (embeddings, one row per image) given the run's initial noise ``x`` and first timestep ``t``;
- ``guide(eu, ec, flags, t=, scale=, T=)``: each step's classifier-free guidance from the
  unconditional and conditional noise predictions (``T``: training timesteps);
- ``eps(lat, x_t, t, rows, flags)``: the network call itself (None: the model's own).

A rule is a plain object whose ``params`` are JSON scalars: the protected pipeline stores
``method`` and ``params`` in ``model_index.json`` and rebuilds the rule from ``RULES`` (each rule
module registers its class on import) when ``from_pretrained`` loads the folder.
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import torch

RULES: dict[str, type["PromptRule"]] = {}


class PromptRule:
    """Base rule: plain classifier-free guidance, prompts unchanged (what a subclass overrides)."""

    method: ClassVar[str] = ""
    custom_guidance: ClassVar[bool] = False  # guide() differs from plain guidance

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.method:
            RULES[cls.method] = cls

    def __init__(self, **params: Any):
        self.params = dict(params)

    def condition(self, lat, cond: Any, flags: torch.Tensor, *, x: torch.Tensor, t: int) -> Any:
        return cond

    def guide(self, eu: torch.Tensor, ec: torch.Tensor, flags: torch.Tensor, *, t: int, scale: float,
              T: int) -> torch.Tensor:
        return eu + scale * (ec - eu)

    def eps(self, lat, x_t: torch.Tensor, t: torch.Tensor, rows: Any, flags: torch.Tensor) -> torch.Tensor | None:
        return None

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


def embedding_rows(cond: Any, what: str) -> torch.Tensor:
    """The prompt embeddings (B, L, D) of conditioning rows; a family whose conditioning is several
    tensors (SDXL's pooled embeddings, ...) is refused with one line rather than half-protected."""
    if not isinstance(cond, torch.Tensor) or cond.ndim != 3:
        from privaudit.api import InputError

        raise InputError(f"{what} acts on prompt embeddings (B, L, D), as Stable Diffusion 1.x/2.x condition their "
                         f"UNet; this pipeline's conditioning is {type(cond).__name__}")
    return cond


def row_generators(x: torch.Tensor, salt: int) -> list[torch.Generator]:
    """One generator per row, seeded by the row's own initial noise (crc32 of its bytes) and ``salt``:
    a sampling-time perturbation is fresh for every draw, yet the same draw gives the same image in
    any batch, shard or process (as the audits' per-sample seeding requires)."""
    xs = x.detach().float().cpu().contiguous()
    return [torch.Generator().manual_seed((zlib.crc32(xs[i].numpy().tobytes()) << 16) ^ salt) for i in range(len(xs))]


def check_embeddings(ctx, what: str) -> None:
    """Refuse, before anything is saved, a model whose prompt conditioning is not one embedding tensor."""
    from privaudit.model.latent import latent_of

    embedding_rows(latent_of(ctx.denoiser).prompt_embeddings(["a"]), what)
