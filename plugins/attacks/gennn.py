"""Generated nearest neighbour ("full black-box" GAN-Leaks; Chen et al. 2020) on a diffusion model.

Signal: draw ``n_samples`` images from the model through its sampling interface; an image's
score is minus the mean squared pixel distance to its nearest generated sample. A model that
reproduces its training images generates members (or images very close to them), so members
find a near sample; an image the model never saw does not.

Samples: the audit's own (``prepare`` asks the audit context for ``n_samples`` samples with
``steps`` and ``sampler``: the nearest-neighbour replication detector's defaults, so both
read one set of samples, drawn once and cached on disk by model fingerprint, sampler, steps,
seed and n). Used outside an audit (``fit`` without ``prepare``), the samples are drawn in
``fit`` with the run seed. Latent text models are sampled with the empty prompt, as a user
without captions would, and compared in pixels (the runner's latents are decoded). A
protected or rejection-sampled model is sampled the way it serves samples
(``draw_samples``): what a user of that service receives.

Direction (``two_sided``, default): chosen on the calibration split (``direction_``: +1 when
members are closer to the samples, as for a memorising model; -1 when a mitigation steers
samples away from members so that members are the images *farther* from every sample, which
an attacker who knows the mitigation exploits). Nothing else is fitted.

Threat model: black box (generated images only). Queries: ``n_samples`` x ``steps`` sampler
steps once per audit, shared by every audited image (``queries_per_image`` divides the
total by the number of audited images once prepared, and is ``steps`` per generated sample
before, as for the ``nn`` detector; the cache makes a second use free).

Differences from the literature: Chen et al. also calibrate the distance with a reference
model trained on other data (needs a second model) and use a learned perceptual distance
next to L2; we use the plain pixel L2, which the oracle and fixture tests calibrate against
the null control, and no reference model. Its power is bounded by coverage: a member that
none of the ``n_samples`` samples reproduces looks like a non-member, so raise ``n_samples``
for large training sets.
"""

from __future__ import annotations

from privaudit.api import InstanceOf, Interval, MembershipAttack, Options, store_params
from privaudit.plugins.attacks._blackbox import GeneratedSamples
from privaudit.plugins.attacks._common import calibration_auc


class GeneratedNearestNeighbourAttack(GeneratedSamples, MembershipAttack):
    """Black-box: distance from an image to its nearest of N generated samples."""

    name = "gen-nn"
    id = "PA-MIA-008"
    threat_model = "black-box"
    requires = ("sampling",)
    adaptive = True  # cheap (reads the audit's cached samples) and two-sided: a mitigation-aware attacker runs it
    references = ("Chen et al., GAN-Leaks: A Taxonomy of Membership Inference Attacks against Generative Models, "
                  "CCS 2020",)

    parameter_constraints = {"n_samples": [Interval(int, 1, 1_000_000)], "steps": [Interval(int, 1, 10_000)],
                             "sampler": [Options("ddim", "ddpm")], "two_sided": [InstanceOf(bool)]}

    def __init__(self, *, n_samples: int = 256, steps: int = 50, sampler: str = "ddim", two_sided: bool = True):
        store_params(self, locals())

    def fit(self, denoiser, *, members, holdout, seed):
        self.ensure_samples(denoiser, seed)
        self.direction_ = 1.0
        if self.two_sided and members is not None and holdout is not None and len(members) and len(holdout):
            auc = calibration_auc(self.distance(denoiser, members).neg(), self.distance(denoiser, holdout).neg())
            self.direction_ = 1.0 if auc >= 0.5 else -1.0
        return self

    def score(self, denoiser, x0, *, noise):
        return -getattr(self, "direction_", 1.0) * self.distance(denoiser, x0)
