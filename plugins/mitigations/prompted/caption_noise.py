"""``caption-noise``: Gaussian noise on the prompt embedding at sampling time (Somepalli et al.).

Somepalli et al. ("Understanding and Mitigating Copying in Diffusion Models", NeurIPS 2023) find
that copying is driven by the exact caption and weaken it at inference by perturbing the caption:
Gaussian noise on the text embedding (GNI), random token replacement or addition (RT), random
numbers, repeated words. privaudit implements the embedding-level perturbation: each mitigated
prompt row ``e`` (B, L, D) becomes ``e + sigma * std(e) * N(0, I)`` (``std(e)``: the row's own
standard deviation, so ``sigma`` is scale-free), drawn afresh for every generated image (seeded by
the image's initial noise: reproducible, yet a prompt asked twice gets two perturbations).

Why the embedding and not the text: the sampling loop and a served ``prompt_embeds`` interface see
embeddings, so a text-level rule (RT) would leave an embedding-level query unprotected; GNI acts on
whatever reaches the sampler. The paper reports RT as stronger than GNI at equal CLIP score on
LAION-fine-tuned SD; ``sigma`` here is the knob of the same trade-off (more noise: fewer copies,
less prompt fidelity). Defaults: ``sigma`` 0.5 (the sweep covers 0.5-4).

Sampling cost: none beyond the gate (about 1.0x). Carries nothing.
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, Options, SequenceOf, store_params
from privaudit.plugins.detectors._prompt_signals import SIGNALS
from privaudit.plugins.mitigations.prompted.mitigation import PromptMitigation
from privaudit.plugins.mitigations.prompted.rule import PromptRule, check_embeddings, embedding_rows, row_generators


class CaptionNoiseRule(PromptRule):
    method = "caption-noise"

    def __init__(self, *, sigma: float = 0.5):
        super().__init__(sigma=float(sigma))

    def condition(self, lat, cond, flags, *, x, t):
        e = embedding_rows(cond, self.method)
        if not flags.any() or self.params["sigma"] == 0:
            return cond
        gens = row_generators(x, salt=0x6E1)
        noise = torch.stack([torch.randn(tuple(e.shape[1:]), generator=g) for g in gens]).to(e.device, e.dtype)
        scale = e.flatten(1).std(1).view(-1, 1, 1)
        noisy = e + self.params["sigma"] * scale * noise
        return torch.where(flags.to(e.device).view(-1, 1, 1), noisy, e)

    def describe(self) -> str:
        return f"sigma={self.params['sigma']:g}"


class CaptionNoise(PromptMitigation):
    """Caption noise: Gaussian noise on the prompt embedding of each generation (Somepalli et al. 2023)."""

    name = "caption-noise"
    id = "PA-MIT-004"
    cost = "about 1.0x (one embedding perturbation per image; the gate adds 2 x gate_seeds evaluations per prompt with the default signal)"
    references = ("Somepalli et al., Understanding and Mitigating Copying in Diffusion Models, NeurIPS 2023",)
    parameter_constraints = {"sigma": [Interval(float, 0, None)], "gated": [Options(True, False)],
                             "gate_fpr": [Interval(float, 0, 1, closed="neither")],
                             "gate_seeds": [Interval(int, 1, 64)], "gate_signal": [Options(*SIGNALS)], "sweep_sigmas": [SequenceOf(Interval(float, 0, None))]}

    def __init__(self, *, sigma: float = 0.5, gated: bool = True, gate_fpr: float = 0.05, gate_seeds: int = 4, gate_signal: str = "magnitude",
                 sweep_sigmas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)):
        store_params(self, locals())

    def rule_params(self) -> dict:
        return {"sigma": float(self.sigma)}

    def sweep_settings(self) -> list[dict]:
        return [{"sigma": float(s)} for s in self.sweep_sigmas]

    def check_model(self, ctx) -> None:
        check_embeddings(ctx, self.name)
