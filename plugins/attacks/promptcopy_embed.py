"""Prompt copy from perturbed caption embeddings: the adaptive form of ``prompt-copy`` against prompt gates.

"Finding Dori" (Jain et al., 2025: memorisation in text-to-image models is less local than assumed)
shows that after an inference-time mitigation has been applied to a memorised prompt, embeddings
near it still bring the training image back. An attacker who can submit prompt embeddings
(diffusers pipelines, privaudit's protected ones included, accept ``prompt_embeds``; an open text
encoder gives them for any caption) generates ``k`` images from the caption's embedding and from
``tries`` perturbations of it, ``e + delta * std(e) * N(0, I)`` (``std(e)``: the row's own; seeded
per image and try), and scores the negated mean squared pixel distance to the closest generation.
The unperturbed embedding is always among the tries. A gated mitigation re-scores each perturbed
embedding: the attack measures what slips under the gate.

Threat model: black box with an embedding interface (``prompt_embeds`` in, images out); adaptive
(``privaudit mitigate`` adds it to every audit). Queries per image: ``(tries + 1) * k * steps * 2``.
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, MembershipAttack, store_params
from privaudit.plugins.attacks._blackbox import PromptVariants


class PromptCopyEmbedAttack(PromptVariants, MembershipAttack):
    """Black-box (embeddings in), adaptive, text models: prompt copy from perturbed caption embeddings."""

    name = "prompt-copy-embed"
    id = "PA-MIA-011"
    threat_model = "black-box"
    requires = ("sampling", "text")
    adaptive = True
    references = ("Jain et al., Finding Dori: Memorization in Text-to-Image Diffusion Models Is Less Local Than "
                  "Assumed, 2025",
                  "Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023")
    parameter_constraints = {"k": [Interval(int, 1, 256)], "tries": [Interval(int, 0, 64)],
                             "delta": [Interval(float, 0, None)], "steps": [Interval(int, 1, 1000)],
                             "guidance_scale": [Interval(float, 0, 100)]}

    def __init__(self, *, k: int = 2, tries: int = 3, delta: float = 0.1, steps: int = 25, guidance_scale: float = 7.5):
        store_params(self, locals())

    def _variants(self, denoiser, x0, noise) -> list:
        e = denoiser.conditioning(len(x0))
        if not isinstance(e, torch.Tensor):
            raise ValueError("prompt-copy-embed perturbs prompt embeddings (B, L, D); this family's conditioning is "
                             f"{type(e).__name__}")
        scale = e.flatten(1).std(1).view(-1, *[1] * (e.ndim - 1))
        return [e] + [e + self.delta * scale * noise.randn(tuple(e.shape), tag=f"prompt-copy-embed-{r}",
                                                            device=e.device).to(e.dtype) for r in range(self.tries)]
