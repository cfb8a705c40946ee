"""Distance to the protection radius: an adaptive black-box attack on sampling-time mitigations.

Signal: d(x) = root mean squared pixel distance from image x to its nearest of ``n_samples``
generated samples (gen-nn's distance, square-rooted so the radius reads in pixel units: 0.1 is an
average difference of 0.1 on the [-1, 1] scale). Score = -|d(x) - r|: images at distance r
from the nearest sample are member-like. The radius r is fitted on the calibration split only:
of ``n_radii`` evenly spaced quantiles of the calibration distances (members and holdout
together, minimum and maximum included), the one whose score has the highest calibration AUC.

Why: a sampling-time mitigation (a guard that steers samples away from members, rejection of
samples near a member, repulsion) empties each member's neighbourhood up to roughly its
protection radius, and no further: the samples that would have copied a member land just
outside it. Members then pile up at distance ~r from their nearest sample, while images the
model never saw spread on both sides of r (nearer, where the model generates freely; farther, in
regions it rarely visits). A monotone score on d (gen-nn, either direction) splits that spread
in two and can land at chance; a band around r does not. With r at the minimum (or the
maximum) calibration distance the score is gen-nn's (plus or minus d), so gen-radius falls
back to gen-nn's signal on a model without mitigation (members are the close images).

Direction: the band's two ends already hold both of gen-nn's directions (r at the smallest
calibration distance: members nearer; at the largest: members farther), so the default
(``two_sided=False``) is already two-sided in gen-nn's sense. ``two_sided=True`` also admits the
inverted band (``direction_`` -1: members on both sides of r, non-members at r), for a mitigation that over-corrects in ways the attacker cannot predict.
Choice: a band fits calibration noise more freely than a monotone score, and an inverted band
more freely still, so the simplest kind (monotone, band, inverted band) whose best calibration
AUC is within one Hanley-McNeil standard error of the best of all is kept, the smallest r among
equals. The inverted band still costs something on an unmitigated model: on the memorising
oracle (64 members, 32 + 32 calibration images, one member that no sample reproduced) it won
calibration 0.994 to 0.975 and reached 0.94 AUC on evaluation where gen-nn reaches 1.00
(``two_sided=False``: 1.00), which is why it is off by default. Fitted (``details.fitted``):
``radius_``, ``radius_quantile_`` (its quantile of the calibration distances), ``calibration_auc_`` (of the chosen score, with its
direction) and ``direction_``.

Samples and cost (as gen-nn, whose samples it shares: the audit's cached samples with the ``nn``
detector's defaults, ``n_samples`` 256, ``steps`` 50, ``sampler`` ddim; drawn in ``fit`` with
the run seed outside an audit): ``n_samples`` x ``steps`` sampler steps once per audit, shared
by every audited image; fitting computes ``n_radii`` (33) calibration AUCs on distances already
computed. A protected or rejection-sampled model is sampled the way it serves samples
(``draw_samples``).

Threat model: black box (generated images only), from an attacker who knows that a
sampling-time mitigation is in place (``adaptive``: ``privaudit mitigate`` runs it in every
audit). It is privaudit's own attack, not from the literature; the distance-to-generated-samples
signal it builds on is GAN-Leaks' (Chen et al. 2020, see gen-nn). Like gen-nn its power is
bounded by coverage: a member near which the model generates nothing looks like a far holdout.
"""

from __future__ import annotations

import math

import torch

from privaudit.api import InputError, InstanceOf, Interval, MembershipAttack, Options, auc_interval, store_params
from privaudit.plugins.attacks._blackbox import GeneratedSamples
from privaudit.plugins.attacks._common import calibration_auc

_ONE_SE = math.erf(1 / math.sqrt(2))  # the level of a +-1 standard error normal interval (0.683)


class GeneratedRadiusAttack(GeneratedSamples, MembershipAttack):
    """Black-box, adaptive: closeness of an image's nearest-sample distance to a radius fitted on calibration."""

    name = "gen-radius"
    id = "PA-MIA-010"
    threat_model = "black-box"
    requires = ("sampling",)
    adaptive = True

    parameter_constraints = {"n_samples": [Interval(int, 1, 1_000_000)], "steps": [Interval(int, 1, 10_000)],
                             "sampler": [Options("ddim", "ddpm")], "two_sided": [InstanceOf(bool)],
                             "n_radii": [Interval(int, 2, 10_000)]}

    def __init__(self, *, n_samples: int = 256, steps: int = 50, sampler: str = "ddim", two_sided: bool = False,
                 n_radii: int = 33):
        store_params(self, locals())

    def _rms_distance(self, denoiser, x0) -> torch.Tensor:
        return self.distance(denoiser, x0).clamp_min(0).sqrt()

    def fit(self, denoiser, *, members, holdout, seed):
        self.ensure_samples(denoiser, seed)
        if members is None or holdout is None or not len(members) or not len(holdout):
            raise InputError("gen-radius: fit needs calibration members and holdout images to choose the radius")
        dm, dh = self._rms_distance(denoiser, members).double(), self._rms_distance(denoiser, holdout).double()
        qs = torch.linspace(0, 1, self.n_radii, dtype=torch.float64)
        radii = torch.quantile(torch.cat([dm, dh]), qs)
        cands = []  # (calibration AUC, radius, quantile, direction), smallest r first
        for q, r in zip(qs.tolist(), radii.tolist()):
            auc = calibration_auc(-(dm - r).abs(), -(dh - r).abs())
            cands += [(auc, r, q, 1.0)] + ([(1.0 - auc, r, q, -1.0)] if self.two_sided else [])
        best = max(cands, key=lambda c: c[0])  # the first of equals: the smallest r, members at r
        # a band fits calibration noise more freely than a monotone score, and an inverted band (members on both
        # sides of r) more freely still: keep the simplest kind whose best is within one standard error of the best
        lo, _ = auc_interval(best[0], len(dm), len(dh), level=_ONE_SE)
        tiers = (lambda c: c[2] in (0.0, 1.0), lambda c: c[3] > 0, lambda c: True)  # monotone (gen-nn's), band, any
        chosen = next(t for t in (max((c for c in cands if tier(c)), key=lambda c: c[0]) for tier in tiers)
                      if t[0] >= lo)
        self.calibration_auc_, self.radius_, self.radius_quantile_, self.direction_ = chosen
        return self

    def score(self, denoiser, x0, *, noise):
        if not hasattr(self, "radius_"):
            raise RuntimeError("gen-radius: fit() must run before score()")
        return -self.direction_ * (self._rms_distance(denoiser, x0) - self.radius_).abs()
