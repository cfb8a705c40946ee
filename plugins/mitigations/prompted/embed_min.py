"""``embed-min``: minimise the text-conditional noise prediction by gradient steps on the prompt embedding.

Wen et al. ("Detecting, Explaining, and Mitigating Memorization in Diffusion Models", ICLR 2024):
a memorised prompt shows a large text-conditional noise prediction at the first step,
``||eps(x_T, e) - eps(x_T, "")||``; at inference they lower it by a few Adam steps on the prompt
embedding ``e`` (the generation's own initial noise ``x_T``, the first timestep), stopping once it
falls below a target loss, then sample with the adjusted embedding. Here: ``steps`` Adam steps
(learning rate ``lr``) on the mitigated rows, each row stopping once its magnitude is at or below
``target`` (set by the plugin to the gate's threshold: the unseen captions' ``1 - gate_fpr``
quantile, i.e. "as unremarkable as a prompt never trained on"). Their step size and target loss
are tuned for SD 1.4 (a public reimplementation defaults to a learning rate of 0.1); here the
learning rate defaults to 0.05 and the target is calibrated per model instead (``stop_at_target=False``: always ``steps`` steps). Because the stopping rule is itself a
detector, the ungated variant changes few unseen prompts as well (a row already below the target
takes no step). The sweep: 20 steps at learning rates 0.05 and 0.5 with the stop, and 0.5 without.

Sampling cost: ``steps`` forward and backward passes of the network per mitigated image, on top of
sampling (2 x sampling steps evaluations): measured in the sweep's sampling ratio. Carries nothing.
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, Options, SequenceOf, store_params
from privaudit.model.denoiser import cond_tile
from privaudit.plugins.detectors._prompt_signals import SIGNALS
from privaudit.plugins.mitigations.prompted.mitigation import PromptMitigation
from privaudit.plugins.mitigations.prompted.rule import PromptRule, check_embeddings, embedding_rows


class EmbedMinRule(PromptRule):
    method = "embed-min"

    def __init__(self, *, steps: int = 10, lr: float = 0.05, target: float | None = None):
        super().__init__(steps=int(steps), lr=float(lr), target=None if target is None else float(target))

    def condition(self, lat, cond, flags, *, x, t):
        e = embedding_rows(cond, self.method)
        idx = torch.nonzero(flags, as_tuple=False).flatten().to(e.device)
        if not len(idx) or self.params["steps"] == 0:
            return cond
        xx = x[idx].to(lat.device)
        target = self.params["target"]
        with torch.enable_grad():
            eu = lat.eps(xx, t, cond_tile(lat.prompt_embeddings([""]), len(idx))).detach()
            p = e[idx].detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([p], lr=self.params["lr"])
            live = torch.ones(len(idx), dtype=torch.bool, device=e.device)
            for _ in range(self.params["steps"]):
                mag = (lat.eps(xx, t, p) - eu).flatten(1).norm(dim=1)
                if target is not None:
                    live &= mag.detach() > target
                if not live.any():
                    break
                opt.zero_grad()
                (mag * live).sum().backward()
                with torch.no_grad():  # a row that reached the target keeps its embedding
                    p.grad *= live.view(-1, 1, 1)
                opt.step()
        out = e.clone()
        out[idx] = p.detach().to(e.dtype)
        return out

    def describe(self) -> str:
        stop = "" if self.params["target"] is None else " stop@target"
        return f"steps={self.params['steps']} lr={self.params['lr']:g}{stop}"


class EmbedMin(PromptMitigation):
    """Prompt-embedding minimisation of the text-conditional noise prediction (Wen et al. 2024)."""

    name = "embed-min"
    id = "PA-MIT-006"
    cost = ("steps forward+backward network passes per mitigated image on top of sampling; measured as the sampling "
            "ratio")
    references = ("Wen et al., Detecting, Explaining, and Mitigating Memorization in Diffusion Models, ICLR 2024",)
    parameter_constraints = {"steps": [Interval(int, 0, 1000)], "lr": [Interval(float, 0, None, closed="neither")],
                             "gated": [Options(True, False)], "gate_fpr": [Interval(float, 0, 1, closed="neither")],
                             "gate_seeds": [Interval(int, 1, 64)], "gate_signal": [Options(*SIGNALS)], "stop_at_target": [Options(True, False)],
                             "sweep_points": [SequenceOf(SequenceOf(Interval(float, 0, None)))]}

    def __init__(self, *, steps: int = 10, lr: float = 0.05, stop_at_target: bool = True, gated: bool = True,
                 gate_fpr: float = 0.05, gate_seeds: int = 4, gate_signal: str = "magnitude",
                 sweep_points: tuple[tuple[float, float, float], ...] = ((20, 0.05, 1), (20, 0.5, 1), (20, 0.5, 0))):
        store_params(self, locals())

    def _target(self) -> float | None:
        cal = getattr(self, "calibration_", None)
        return None if cal is None else float(cal["threshold"])

    def rule_params(self) -> dict:
        return {"steps": int(self.steps), "lr": float(self.lr),
                "target": self._target() if self.stop_at_target else None}

    def sweep_settings(self) -> list[dict]:
        """(steps, learning rate, stop at the target: 1 or 0) per setting."""
        return [{"steps": int(s), "lr": float(lr), "target": self._target() if stop else None}
                for s, lr, stop in self.sweep_points]

    def check_model(self, ctx) -> None:
        check_embeddings(ctx, self.name)
