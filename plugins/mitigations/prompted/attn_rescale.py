"""``attn-rescale``: more cross-attention on the beginning token, less on the prompt's trigger tokens.

Ren et al. ("Unveiling and Mitigating Memorization in Text-to-image Diffusion Models through Cross
Attention", ECCV 2024) observe that memorised prompts concentrate cross-attention on a few prompt
tokens while the beginning (BOS) token's share collapses, and mitigate at inference by rescaling
the attention logits so the beginning token regains weight (factor 1.25 by default in a public
reimplementation of their attention processor), which dilutes the trigger tokens. Here: in every cross-attention layer of the UNet, for the
mitigated rows, the beginning token's attention weight is multiplied by ``c`` before the softmax
renormalises (``log c`` added to its logit, through diffusers' own ``encoder_attention_mask``
bias, so every attention processor honours it); ``c = 1`` is the raw model. Ren et al. also mask
the prompt's trailing summary tokens during training-time mitigation: not done here. Defaults:
``c`` 1.25 (theirs); the sweep goes to large factors, since a tiny model's attention may need more.

Needs a UNet with cross-attention (``UNet2DConditionModel``: Stable Diffusion 1.x/2.x, SDXL);
transformer families are refused with one line. Changes the network call itself, so the gray-box
view of the protected pipeline changes too. Sampling cost: about 1.0x. Carries nothing.
"""

from __future__ import annotations

import math

import torch

from privaudit.api import InputError, Interval, Options, SequenceOf, store_params
from privaudit.model.denoiser import latent_of, run_in, signal_noise, to_eps
from privaudit.plugins.detectors._prompt_signals import SIGNALS
from privaudit.plugins.mitigations.prompted.mitigation import PromptMitigation
from privaudit.plugins.mitigations.prompted.rule import PromptRule, check_embeddings, embedding_rows

MASK_BIAS = 10000.0  # diffusers turns encoder_attention_mask m into the additive bias (m - 1) * 10000


class AttnRescaleRule(PromptRule):
    method = "attn-rescale"

    def __init__(self, *, c: float = 1.25):
        super().__init__(c=float(c))

    def eps(self, lat, x_t, t, rows, flags):
        e = embedding_rows(rows, self.method)
        mask = torch.ones(e.shape[:2], device=e.device, dtype=torch.float32)
        mask[flags.to(e.device), 0] = 1.0 + math.log(self.params["c"]) / MASK_BIAS
        out = run_in(lat.net, x_t, t, encoder_hidden_states=e, encoder_attention_mask=mask)
        if lat.prediction_type == "epsilon" and out.shape[1] == x_t.shape[1]:
            return out
        a, s = signal_noise(lat.alphas_cumprod, t, x_t)
        return to_eps(out, x_t, a, s, lat.prediction_type)

    def describe(self) -> str:
        return f"c={self.params['c']:g}"


class AttnRescale(PromptMitigation):
    """Cross-attention rescaling towards the beginning token (Ren et al., ECCV 2024)."""

    name = "attn-rescale"
    id = "PA-MIT-007"
    cost = "about 1.0x (the same network calls with an attention bias; the gate adds 2 x gate_seeds evaluations per prompt with the default signal)"
    references = ("Ren et al., Unveiling and Mitigating Memorization in Text-to-image Diffusion Models through Cross "
                  "Attention, ECCV 2024",)
    parameter_constraints = {"c": [Interval(float, 0, None, closed="neither")], "gated": [Options(True, False)],
                             "gate_fpr": [Interval(float, 0, 1, closed="neither")], "gate_seeds": [Interval(int, 1, 64)], "gate_signal": [Options(*SIGNALS)],
                             "sweep_factors": [SequenceOf(Interval(float, 0, None, closed="neither"))]}

    def __init__(self, *, c: float = 1.25, gated: bool = True, gate_fpr: float = 0.05, gate_seeds: int = 4, gate_signal: str = "magnitude",
                 sweep_factors: tuple[float, ...] = (1.25, 1e3, 1e5)):
        store_params(self, locals())

    def rule_params(self) -> dict:
        return {"c": float(self.c)}

    def sweep_settings(self) -> list[dict]:
        return [{"c": float(c)} for c in self.sweep_factors]

    def check_model(self, ctx) -> None:
        net = getattr(latent_of(ctx.denoiser), "net", None)
        if type(net).__name__ != "UNet2DConditionModel":
            raise InputError(f"{ctx.model_dir}: attn-rescale rescales a UNet's cross-attention (UNet2DConditionModel); "
                             f"this pipeline's denoiser is {type(net).__name__}")
        check_embeddings(ctx, self.name)
