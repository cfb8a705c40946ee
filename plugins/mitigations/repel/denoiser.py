"""Dissimilarity guidance in closed form: ``RepelDenoiser`` moves predicted images that sit too close to a
member out to the copy radius, inside the noise prediction.

In the style of anti-memorisation guidance (Chen et al., "Towards Memorization-Free Diffusion Models",
CVPR 2024), whose dissimilarity guidance steps the sample away from its most similar training image
while that similarity exceeds a threshold. privaudit's version needs no gradient and no guidance
scale: it edits the predicted clean image directly. At each sampling step, for x_t at timestep t
(a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t)):

1. x0 = (x_t - s_t eps) / a_t, the model's predicted clean image;
2. m, d: its nearest member and their pixel L2 distance (``MemberBank.nearest``);
3. only where d < r_t, x0 moves away from m along the line through both, to distance
   d' = d + strength * (r - d): x0' = m + (x0 - m) * d' / d (where x0 is the member itself, d = 0, along
   the predicted noise instead);
4. eps' = (x_t - a_t x0') / s_t, converted back to the network's prediction type by the sampling loop
   (``Denoiser.native``), so any scheduler that calls ``eps`` (DDPM, DDIM, any step count) serves it.

Rows with d >= r_t get eps bit for bit (``torch.where``). The radius r_t (``schedule.py``): the
``quantile`` of the nearest-member distances of a Gaussian's posterior-mean predictions for
never-trained-on images noised to t, so a blurry high-noise prediction (an average, close to
everything) is not taken for a copy; at t = 0 it is the copy radius of real images. Without a schedule, one radius at every
level (the bank's).

``strength`` 1 ("distribution matching"): a member's regeneration ends on the radius, where the
closest unseen images already are. ``strength`` < 1 leaves it closer (a partial fix); > 1 overshoots,
which pushes members *farther* from themselves than non-members are and hands membership back to a
black-box attacker who knows the rule (a reversed score), the failure CPSample's guard shows on the
digits fixture (``cpsample/mitigation.py``).

Differences from the paper: no gradient of a similarity network (pixel L2 to a member bank: the
served pipeline needs nothing but itself), no guidance scale schedule, the threshold is a calibrated
quantile rather than a fixed similarity, and the edit is applied to the predicted x0 in closed form.

Cost per ``eps`` call: one nearest-member search of the batch against the bank (one matrix product of
B x N x C*H*W) and one host sync (whether any row is near). Threat model: the protection exists only in
what this object serves; ``white_box`` is the raw UNet, and the bank is the training set itself, so the
folder must stay server-side. The edited eps also tells a gray-box observer where members are (a
member's noised copy gets a noise prediction pointing away from it: the gate leak).
"""

from __future__ import annotations

import hashlib

import torch

from privaudit.model.denoiser import Denoiser, signal_noise, state_sha256


class RepelDenoiser(Denoiser):
    """A Denoiser serving eps' (the base model's noise prediction with near-member predictions repelled).

    ``calls_`` / ``repelled_`` count rows seen and rows repelled, ``steps_`` / ``steps_repelled_`` calls and
    calls with any repelled row; ``reset_counts()`` zeroes them.
    """

    def __init__(self, *, base: Denoiser, bank, strength: float = 1.0, radius: float | None = None,
                 schedule: tuple[tuple[int, ...], tuple[float, ...]] | None = None,
                 base_fingerprint: str | None = None, bank_sha256: str | None = None):
        if not strength >= 0:
            raise ValueError(f"strength must be >= 0, got {strength!r}")
        self.base, self.bank = base, bank
        self.strength = float(strength)
        self.radius = float(bank.radius if radius is None else radius)
        # the radius per noise level (``schedule.py``); None: ``radius`` at every level
        self.schedule = None if not schedule or not schedule[0] else (tuple(int(v) for v in schedule[0]),
                                                                        tuple(float(v) for v in schedule[1]))
        if self.schedule is not None:
            if len(self.schedule[0]) != len(self.schedule[1]) or list(self.schedule[0]) != sorted(set(self.schedule[0])):
                raise ValueError("schedule: timesteps must increase and match the radii one to one")
            self._ts = torch.tensor(self.schedule[0])
            self._radii = torch.tensor(self.schedule[1], dtype=torch.float32)
        self.device = base.device
        self.scheduler = base.scheduler
        self.alphas_cumprod = base.alphas_cumprod
        self.sample_shape = base.sample_shape
        self.prediction_type = base.prediction_type  # eps' is converted back to it for the scheduler's step
        self.white_box = base.white_box  # the raw UNet: the stated limit
        self._base_fingerprint = base_fingerprint
        self._bank_sha256 = bank_sha256
        self.reset_counts()

    @property
    def base_fingerprint(self) -> str:
        if self._base_fingerprint is None:
            self._base_fingerprint = self.base.fingerprint
        return self._base_fingerprint

    @property
    def bank_sha256(self) -> str:
        if self._bank_sha256 is None:
            self._bank_sha256 = state_sha256({"": self.bank})
        return self._bank_sha256

    @property
    def fingerprint(self) -> str:
        """Sample-cache identity: base model, member bank, radius and strength."""
        return hashlib.sha256(f"repel|{self.base_fingerprint}|bank={self.bank_sha256}|radius={self.radius!r}|"
                              f"schedule={self.schedule!r}|strength={self.strength!r}".encode()).hexdigest()

    def inner(self) -> Denoiser:
        return self.base

    def reset_counts(self) -> None:
        self.calls_ = 0  # rows seen
        self.repelled_ = 0  # rows repelled
        self.steps_ = 0  # calls
        self.steps_repelled_ = 0  # calls with at least one repelled row

    def with_params(self, *, strength: float | None = None, radius: float | None = None,
                    schedule: tuple | None = None) -> "RepelDenoiser":
        """The same base and bank with another strength / radius / schedule (for sweeps)."""
        return RepelDenoiser(base=self.base, bank=self.bank, strength=self.strength if strength is None else strength,
                             radius=self.radius if radius is None else radius,
                             schedule=self.schedule if schedule is None else schedule,
                             base_fingerprint=self.base_fingerprint, bank_sha256=self.bank_sha256)

    def radius_at(self, t: torch.Tensor | int, n: int) -> torch.Tensor:
        """The radius for each of ``n`` rows at timestep(s) ``t``, float32 (n,) on the device."""
        if self.schedule is None:
            return torch.full((n,), self.radius, device=self.device)
        from privaudit.plugins.mitigations.repel.schedule import radius_at

        tt = torch.as_tensor(t).reshape(-1).expand(n) if torch.as_tensor(t).ndim == 0 else torch.as_tensor(t)
        return radius_at(self._ts, self._radii, tt.cpu()).to(self.device)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        e = self.base.eps(x_t, t, cond)
        self.calls_ += len(x_t)
        self.steps_ += 1
        r = self.radius_at(t, len(x_t))
        if self.strength == 0.0 or not bool((r > 0).any()):
            return e  # nothing is ever moved: the raw prediction, no search at all
        a, s = signal_noise(self.alphas_cumprod, t, x_t.float())
        xf, ef = x_t.float(), e.float()
        x0 = (xf - s * ef) / a
        d, idx = self.bank.nearest(x0)
        r = r.to(d.device)
        near = d < r
        n_near = int(near.sum())  # the one host sync: is any row near a member?
        if n_near == 0:
            return e
        self.repelled_ += n_near
        self.steps_repelled_ += 1
        shape = (-1, *[1] * (x_t.ndim - 1))
        m = self.bank.members[idx.to(self.bank.members.device)].to(xf.device, torch.float32)
        diff = x0 - m
        # unit direction away from the member; where x0 is the member itself, along the predicted noise
        noise_dir = ef / ef.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        tiny = d <= 1e-6 * r
        unit = torch.where(tiny.view(shape), noise_dir, diff / d.clamp_min(1e-12).view(shape))
        d_new = d + self.strength * (r - d)
        x0_new = m + unit * d_new.view(shape)
        e_new = (xf - a * x0_new) / s
        return torch.where(near.view(shape), e_new.to(e.dtype), e)
