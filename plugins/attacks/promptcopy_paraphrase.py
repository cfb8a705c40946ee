"""Prompt copy with paraphrased captions: the adaptive form of ``prompt-copy`` against prompt-gated mitigations.

A text mitigation that acts only on prompts its detector flags (or that perturbs the exact caption)
can be walked around by asking the same thing in other words: a memorised image is often triggered
by a few of its caption's tokens, not by the whole caption (Webster, "A Reproducible Extraction of
Training Images from Diffusion Models", 2023; Wen et al. ICLR 2024 trace memorisation to trigger
tokens). For each audited image this attack generates ``k`` images from its own caption and from
``tries`` rewrites of it, each word dropped with probability ``p_drop`` (never all of them) and then
two adjacent words swapped with probability ``p_swap`` (seeded per image and rewrite), and scores
the negated mean squared pixel distance to the closest generation over all of them. The original
caption is always among the tries, so on a model it cannot fool the attack is at least as strong
as ``prompt-copy`` with the same draws.

Threat model: black box (prompts in, images out; the caption must be known), adaptive (``privaudit
mitigate`` adds it to every audit). Queries per image: ``(tries + 1) * k * steps * 2``.
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, MembershipAttack, store_params
from privaudit.model.latent import latent_of
from privaudit.plugins.attacks._blackbox import PromptVariants


def paraphrase(caption: str, gen: torch.Generator, *, p_drop: float, p_swap: float) -> str:
    """Token dropout then an adjacent swap, drawn from ``gen``."""
    words = caption.split()
    if len(words) < 2:
        return caption
    keep = [w for w in words if float(torch.rand((), generator=gen)) >= p_drop]
    if not keep:
        keep = [words[int(torch.randint(len(words), (), generator=gen))]]
    if len(keep) >= 2 and float(torch.rand((), generator=gen)) < p_swap:
        i = int(torch.randint(len(keep) - 1, (), generator=gen))
        keep[i], keep[i + 1] = keep[i + 1], keep[i]
    return " ".join(keep)


class PromptCopyParaphraseAttack(PromptVariants, MembershipAttack):
    """Black-box, adaptive, text models: prompt copy over the caption and paraphrases of it; closest generation."""

    name = "prompt-copy-paraphrase"
    id = "PA-MIA-012"
    threat_model = "black-box"
    requires = ("sampling", "text")
    adaptive = True
    references = ("Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023",
                  "Wen et al., Detecting, Explaining, and Mitigating Memorization in Diffusion Models, ICLR 2024 "
                  "(trigger tokens)")
    parameter_constraints = {"k": [Interval(int, 1, 256)], "tries": [Interval(int, 0, 64)],
                             "p_drop": [Interval(float, 0, 1, closed="left")], "p_swap": [Interval(float, 0, 1)],
                             "steps": [Interval(int, 1, 1000)], "guidance_scale": [Interval(float, 0, 100)]}

    def __init__(self, *, k: int = 2, tries: int = 3, p_drop: float = 0.25, p_swap: float = 0.5, steps: int = 25,
                 guidance_scale: float = 7.5):
        store_params(self, locals())

    def _variants(self, denoiser, x0, noise) -> list:
        caps = getattr(denoiser, "captions", None)
        if caps is None:
            raise ValueError("prompt-copy-paraphrase needs the images' captions (a view from attack_inputs)")
        lat = latent_of(denoiser)
        gens = [noise.generator(i, tag="paraphrase") for i in range(len(x0))]
        return [denoiser.conditioning(len(x0))] + [
            lat.prompt_embeddings([paraphrase(c, g, p_drop=self.p_drop, p_swap=self.p_swap) for c, g in zip(caps, gens)])
            for _ in range(self.tries)]
