"""Classifier-protected noise prediction: the CPSample sampling rule as a ``Denoiser``.

For x_t at timestep t, with guard probability p = sigmoid(c_phi(x_t, t)):

- the gate is on where the guard is confident, max(p, 1 - p) > 1 - alpha (x_t is near
  a member the guard recognises);
- there the less likely label y~ = [p < 1/2] is taken and
  eps_hat = eps_theta(x_t, t) - scale * sqrt(1 - abar_t) * grad_x log p_phi(y~ | x_t, t),
  classifier guidance (Dhariwal & Nichol 2021) towards the label the guard doubts, which
  pushes x_t to where the guard cannot tell which member it is, i.e. away from members;
- elsewhere eps_hat = eps_theta(x_t, t), bit for bit.

(Kazdan et al., ICLR 2025, arXiv 2409.07025; this exact form is privaudit's
reconstruction.)

``gate="soft"`` (privaudit's remedy for the gate leak): guidance everywhere, its strength
following the guard's confidence, w = sigmoid((max(p, 1 - p) - (1 - alpha)) / gate_width),
eps_hat = eps_theta - w * scale * sqrt(1 - abar_t) * grad. Near members (confidence well above
1 - alpha) it acts like the hard gate; elsewhere the guidance fades smoothly instead of
switching on or off, so the served noise prediction has no step at the gate's edge for an
outside observer to find. The hard gate is the default; ``privaudit mitigate --sweep`` measures
both (copies, quality, black-box AUC and the gate leak, the two-sided gray-box AUC).

Only the guard is differentiated, never the UNet (its output is computed without a graph),
and only the gated rows' log-probabilities enter the backward pass; rows where the gate is
off get eps_theta unchanged (``torch.where``). Cost per call: one UNet forward, one guard
forward (with its graph) on the batch, and one guard backward when any row is gated, so
the overhead is at most 1 + cost(guard fwd + bwd) / cost(UNet fwd), and about
1 + cost(guard fwd) / cost(UNet fwd) on steps where the gate is off everywhere. The only
device-to-host sync is the gate count that decides whether a backward pass is needed.
Works with any sampler that calls ``eps`` (DDIM, DDPM).

Threat model: the protection exists only in what this object serves (gray box: noise
predictions; black box: samples). ``white_box`` is the raw UNet, deliberately: an
attacker holding the weights bypasses the guard, and white-box attacks show that.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from privaudit.model.denoiser import Denoiser, state_sha256

GATES = ("hard", "soft")


class ProtectedDenoiser(Denoiser):
    """A Denoiser serving eps_hat: the base model's noise prediction plus guard guidance.

    ``calls_`` / ``guided_`` count rows seen and rows guided, ``steps_`` / ``steps_guided_``
    calls and calls with a backward pass (for the benchmark); ``reset_counts()`` zeroes them.
    """

    def __init__(self, *, base: Denoiser, guard: torch.nn.Module, alpha: float, scale: float,
                 base_fingerprint: str | None = None, guard_sha256: str | None = None, gate: str = "hard",
                 gate_width: float = 0.05):
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if not gate_width > 0:
            raise ValueError(f"gate_width must be > 0, got {gate_width!r}")
        self.gate = gate
        self.gate_width = float(gate_width)
        self.base = base
        self.device = base.device
        self.guard = guard.to(self.device).float().eval().requires_grad_(False)  # float32 whatever the UNet runs in
        self.alpha = float(alpha)
        self.scale = float(scale)
        self.scheduler = base.scheduler
        self.alphas_cumprod = base.alphas_cumprod
        self.sample_shape = base.sample_shape
        self.prediction_type = base.prediction_type  # eps is converted back to it for the scheduler's step
        self.white_box = base.white_box  # the raw UNet: the stated limit
        self._acp = self.alphas_cumprod.to(self.device)
        self._base_fingerprint = base_fingerprint
        self._guard_sha256 = guard_sha256
        self.reset_counts()

    @property
    def guard_sha256(self) -> str:
        if self._guard_sha256 is None:
            self._guard_sha256 = state_sha256({"": self.guard})
        return self._guard_sha256

    @property
    def base_fingerprint(self) -> str:
        if self._base_fingerprint is None:
            self._base_fingerprint = self.base.fingerprint
        return self._base_fingerprint

    @property
    def fingerprint(self) -> str:
        """Sample-cache identity: base model, guard weights, alpha and scale (computed on first use)."""
        gate = "" if self.gate == "hard" else f"|gate={self.gate}|width={self.gate_width!r}"  # hard: keys of 0.2
        return hashlib.sha256(f"cpsample|{self.base_fingerprint}|{self.guard_sha256}|alpha={self.alpha!r}|"
                              f"scale={self.scale!r}{gate}".encode()).hexdigest()

    def inner(self) -> Denoiser:
        return self.base

    def reset_counts(self) -> None:
        self.calls_ = 0  # rows seen
        self.guided_ = 0  # rows guided
        self.steps_ = 0  # calls
        self.steps_guided_ = 0  # calls with at least one guided row (a backward pass)

    def with_params(self, *, alpha: float | None = None, scale: float | None = None, gate: str | None = None,
                    gate_width: float | None = None) -> "ProtectedDenoiser":
        """The same base and guard with another alpha / scale / gate (for sweeps); shares the modules."""
        return ProtectedDenoiser(base=self.base, guard=self.guard, alpha=self.alpha if alpha is None else alpha,
                                 scale=self.scale if scale is None else scale,
                                 base_fingerprint=self.base_fingerprint, guard_sha256=self.guard_sha256,
                                 gate=self.gate if gate is None else gate,
                                 gate_width=self.gate_width if gate_width is None else gate_width)

    def confidence(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """max(p, 1 - p) of the guard, shape (B,), no gradients."""
        t = self._t(t, len(x_t))
        with torch.no_grad():
            return torch.sigmoid(self.guard(x_t.float(), t).abs())

    def _t(self, t: torch.Tensor | int, n: int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        return t.expand(n) if t.ndim == 0 else t

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        e = self.base.eps(x_t, t, cond)
        if self.scale == 0.0:
            return e  # exactly the raw prediction: no guard call at all
        t = self._t(t, len(x_t))
        with torch.enable_grad():
            # one guard forward (with its graph) serves both the gate and the gradient
            xg = x_t.detach().float().requires_grad_(True)
            logit = self.guard(xg, t)
            lg = logit.detach()
            conf = torch.sigmoid(lg.abs())
            gate = conf > 1.0 - self.alpha
            if self.gate == "soft":  # strength follows confidence; rows far below the threshold get ~0
                weight = torch.sigmoid((conf - (1.0 - self.alpha)) / self.gate_width)
                gate = weight > 1e-3
            n_gated = int(gate.sum())  # the one host sync: is a backward pass needed at all?
            self.calls_ += len(x_t)
            self.guided_ += n_gated
            self.steps_ += 1
            self.steps_guided_ += n_gated > 0
            if n_gated == 0:
                return e
            # log p(y~ | x_t): y~ is the label the guard currently finds less likely; gated rows only
            flip = torch.where(lg > 0, -1.0, 1.0)
            (grad,) = torch.autograd.grad((F.logsigmoid(flip * logit) * gate).sum(), xg)
        shape = (-1, *[1] * (x_t.ndim - 1))
        shift = self.scale * (1.0 - self._acp[t]).sqrt().view(shape) * grad
        if self.gate == "soft":
            shift = shift * weight.view(shape)
        return torch.where(gate.view(shape), e - shift.to(e.dtype), e)
