"""``MitigatedTextDenoiser``: a text-to-image model served with a sampling-time rule (``rule.py``) behind a
prompt gate (``gate.py``), as the Denoiser every audit samples and queries.

The wrapper answers the sampling loop's hooks (``privaudit.model.denoiser.denoise``):
``served_conditioning`` and ``guide`` ask the gate which rows are mitigated and hand them to the
rule; ``eps`` lets a rule that changes the network call (attention rescaling) act on its rows.
Everything else is the raw model's: ``inner()`` is the latent model (encoding, decoding and prompt
embedding go through it), ``white_box`` is the raw network (weights that leak see no mitigation).
``flagged_`` / ``rows_`` count the conditional rows the gate let through in sampling runs since
``reset_counts``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from privaudit.model.denoiser import Denoiser, latent_of
from privaudit.plugins.mitigations.prompted.gate import PromptGate
from privaudit.plugins.mitigations.prompted.rule import PromptRule


class MitigatedTextDenoiser(Denoiser):
    def __init__(self, *, base: Denoiser, rule: PromptRule, gate: PromptGate):
        lat = latent_of(base)
        if lat is None:
            raise TypeError("a text mitigation wraps a text-conditional latent model")
        self.base, self.rule, self.gate, self.lat = base, rule, gate, lat
        self.device = base.device
        self.alphas_cumprod = base.alphas_cumprod
        self.sample_shape = base.sample_shape
        self.scheduler = base.scheduler
        self.prediction_type = base.prediction_type
        self.white_box = base.white_box
        self.custom_guidance = rule.custom_guidance  # type: ignore[misc]
        self.flagged_ = 0
        self.rows_ = 0

    def inner(self) -> Denoiser:
        return self.base

    @property  # type: ignore[misc]
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            spec = json.dumps({"method": self.rule.method, "params": self.rule.params,
                               "gate": [self.gate.threshold, self.gate.n_seeds, self.gate.seed]}, sort_keys=True)
            self._fingerprint = hashlib.sha256((self.base.fingerprint + spec).encode()).hexdigest()
        return self._fingerprint

    def reset_counts(self) -> None:
        self.flagged_ = self.rows_ = 0

    def served_conditioning(self, cond: Any, *, x: torch.Tensor, t: int) -> Any:
        flags = self.gate.flags(self.lat, cond)
        self.flagged_ += int(flags.sum())
        self.rows_ += len(flags)
        return self.rule.condition(self.lat, cond, flags, x=x, t=t)

    def guide(self, eu: torch.Tensor, ec: torch.Tensor, *, t: int, scale: float, cond: Any) -> torch.Tensor:
        if not self.rule.custom_guidance:
            return eu + scale * (ec - eu)
        flags = self.gate.flags(self.lat, cond)
        return self.rule.guide(eu, ec, flags, t=t, scale=scale, T=self.num_train_timesteps)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        if type(self.rule).eps is PromptRule.eps:  # the rule leaves the network call alone
            return self.base.eps(x_t, t, cond)
        rows = self.lat.condition(cond, len(x_t))
        flags = self.gate.flags(self.lat, rows)
        if not flags.any():
            return self.base.eps(x_t, t, rows)
        tt = torch.as_tensor(t, device=self.device)
        out = self.rule.eps(self.lat, x_t, tt if tt.ndim else tt.expand(len(x_t)), rows, flags)
        return self.base.eps(x_t, t, rows) if out is None else out

    def stats(self) -> dict:
        return {"gated_rows": self.flagged_, "conditional_rows": self.rows_,
                "gate_rate": round(self.flagged_ / self.rows_, 4) if self.rows_ else None}
