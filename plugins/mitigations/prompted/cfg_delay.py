"""``cfg-delay``: no (or opposite) classifier-free guidance early in sampling, full guidance after.

Jain et al. ("Classifier-Free Guidance inside the Attraction Basin May Cause Memorization", CVPR
2025) show that a memorised prompt's trajectory falls into an attraction basin in the first
steps, and that guidance applied there is what pulls it in; guidance applied after the
trajectory has left the basin region keeps the prompt's content without the copy. Their static
transition point: guidance scale 0 (unconditional) for timesteps above 500 of 1000, then the
usual scale (7.5); with opposite guidance, -2 above 650. Here: timesteps ``t >= transition * T``
use ``early_scale``, the rest the caller's scale, on the mitigated rows only. Defaults: the
paper's first setting, ``early_scale`` 0 and ``transition`` 0.5; the sweep adds an earlier
transition point (0.2), their opposite-guidance setting (-2 at 0.65) and a stronger one (-5 at 0.5). Their dynamic
transition point (detecting when the trajectory leaves the basin) is not implemented.

Sampling cost: none (the same two branches per step; about 1.0x). Carries nothing.
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, Options, SequenceOf, store_params
from privaudit.plugins.detectors._prompt_signals import SIGNALS
from privaudit.plugins.mitigations.prompted.mitigation import PromptMitigation
from privaudit.plugins.mitigations.prompted.rule import PromptRule


class CfgDelayRule(PromptRule):
    method = "cfg-delay"
    custom_guidance = True

    def __init__(self, *, early_scale: float = 0.0, transition: float = 0.5):
        super().__init__(early_scale=float(early_scale), transition=float(transition))

    def guide(self, eu, ec, flags, *, t, scale, T):
        if t < self.params["transition"] * T or not flags.any():
            return eu + scale * (ec - eu)
        w = torch.where(flags, torch.tensor(self.params["early_scale"]), torch.tensor(float(scale)))
        return eu + w.to(eu.device, eu.dtype).view(-1, *[1] * (eu.ndim - 1)) * (ec - eu)

    def describe(self) -> str:
        return f"early_scale={self.params['early_scale']:g} transition={self.params['transition']:g}"


class CfgDelay(PromptMitigation):
    """Delayed guidance: no or opposite classifier-free guidance in the early steps (Jain et al. 2025)."""

    name = "cfg-delay"
    id = "PA-MIT-005"
    cost = "about 1.0x (the same two guidance branches per step; the gate adds 2 x gate_seeds evaluations per prompt with the default signal)"
    references = ("Jain et al., Classifier-Free Guidance inside the Attraction Basin May Cause Memorization, "
                  "CVPR 2025",)
    parameter_constraints = {"early_scale": [Interval(float, None, None)],
                             "transition": [Interval(float, 0, 1, closed="both")], "gated": [Options(True, False)],
                             "gate_fpr": [Interval(float, 0, 1, closed="neither")],
                             "gate_seeds": [Interval(int, 1, 64)], "gate_signal": [Options(*SIGNALS)],
                             "sweep_points": [SequenceOf(SequenceOf(Interval(float, None, None)))]}

    def __init__(self, *, early_scale: float = 0.0, transition: float = 0.5, gated: bool = True,
                 gate_fpr: float = 0.05, gate_seeds: int = 4, gate_signal: str = "magnitude",
                 sweep_points: tuple[tuple[float, float], ...] = ((0.0, 0.5), (0.0, 0.2), (-2.0, 0.65), (-5.0, 0.5))):
        store_params(self, locals())

    def rule_params(self) -> dict:
        return {"early_scale": float(self.early_scale), "transition": float(self.transition)}

    def sweep_settings(self) -> list[dict]:
        return [{"early_scale": float(a), "transition": float(b)} for a, b in self.sweep_points]
