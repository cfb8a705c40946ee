"""The ``rejection`` mitigation: serve the raw model's samples minus its copies (``RejectionPipeline``).

1. a ``MemberBank`` takes the members' pixels; its radius is the ``quantile`` (default 0.01) of
   never-trained-on images' nearest-member pixel distances: ``--reference`` when given (images the
   audits never evaluate on; ``privaudit mitigate`` sets a seeded quarter of the holdout aside when it
   is not), else the holdout itself (then the radius is fitted to the evaluation images; ``details``
   says which);
2. ``DIR/protected`` is a ``RejectionPipeline`` (unet, scheduler, members, ``max_factor``), saved
   atomically with a model card and loaded back with ``load_target``: what is audited is what ships;
3. a probe draw (``probe_samples`` raw DDIM-50 samples, the run's seed) measures the acceptance rate
   and so the expected draws per served sample, 1 / acceptance: the sampling cost.

What it protects: black-box copies (the served samples), at the sampling cost above; gray-box and
white-box numbers are the raw model's (the served noise prediction is the raw model's). Where the
model copies more often than 1 / ``max_factor`` of the time, the budget runs out and some served
images are the least copy-like rejects: the after-audit's copy fraction shows it, the probe warns.

``sweep`` audits one setting per ``sweep_quantiles`` value (the radius is the privacy knob: a larger
quantile rejects samples farther from members, at more draws per served sample). Where the unprotected
model's audit listed members at risk (``ctx.at_risk``: reproduced, duplicated or singled out), it also
audits **targeted** settings (family ``rejection-targeted``): a bank of the at-risk members only, its
radius calibrated the same way on that bank. The frontier then compares targeted with uniform
protection: targeted rejects only near the exposed images (fewer redraws) and carries only their
pixels, but leaves a copy of a member the audit did not flag unfiltered.

Threat model: the folder carries the training set (``members/``): keep it server-side.
"""

from __future__ import annotations

from privaudit.api import (
    Interval,
    Mitigation,
    MitigationOutput,
    SequenceOf,
    Variant,
    store_params,
)
from privaudit.model.denoiser import sample

PROBE_STEPS = 50  # the audits' default sampling (DDIM, 50 steps)


class Rejection(Mitigation):
    """Rejection sampling: redraw every generated image closer to a member than unseen images are."""

    name = "rejection"
    id = "PA-MIT-002"
    threat_model = "black-box"
    carries = "the members' pixels (the training set itself)"
    carries_training_data = True
    models = ("pixel",)
    references = ("Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023 "
                  "(the nearest-neighbour copy criterion)",
                  "Somepalli et al., Diffusion Art or Digital Forgery? Investigating Data Replication in Diffusion "
                  "Models, CVPR 2023")

    parameter_constraints = {
        "quantile": [Interval(float, 0, 1, closed="neither")],
        "max_factor": [Interval(float, 1, None)],
        "sweep_quantiles": [SequenceOf(Interval(float, 0, 1, closed="neither"))],
        "probe_samples": [Interval(int, 1, None)],
    }

    def __init__(self, *, quantile: float = 0.01, max_factor: float = 10.0,
                 sweep_quantiles: tuple[float, ...] = (0.001, 0.01, 0.05, 0.2), probe_samples: int = 64):
        store_params(self, locals())

    def apply(self, ctx):
        from privaudit.plugins.mitigations.memberbank import (
            MemberBank,
            calibrate,
            model_card,
            pixel_unet,
            save_and_load,
        )
        from privaudit.plugins.mitigations.rejection.pipeline import RejectionPipeline

        self.validate()
        unet, scheduler = pixel_unet(ctx, self.name)
        bank = MemberBank.from_images(ctx.members).to(ctx.device)
        cal = calibrate(ctx, bank)
        radius = cal.radius(self.quantile)
        bank.register_to_config(radius=radius, quantile=float(self.quantile), calibration=cal.describe())
        pipe = RejectionPipeline(unet=unet, scheduler=scheduler, members=bank, max_factor=self.max_factor)
        card = model_card(title="Rejection-sampled diffusion pipeline", cls="RejectionPipeline",
                          package="privaudit.plugins.mitigations.rejection",
                          rule="Every generated image closer to a member than the radius is redrawn, up to max_factor "
                               "draws per image",
                          settings=f"radius {radius:.4g} in pixel L2, the {self.quantile:g} quantile of {cal.role} "
                                   f"images' nearest-member distances; max_factor={self.max_factor:g}")
        folder, denoiser = save_and_load(ctx, pipe, card=card)
        self.calibration_ = cal
        # the probe: raw samples, as the first round of a served draw sees them
        raw = sample(denoiser.base, n=self.probe_samples, steps=PROBE_STEPS, seed=ctx.seed)
        self.probe_distances_ = denoiser.test.bank.distances(raw)
        probe = self._probe(radius)
        warnings = []
        draws = probe["expected_draws_per_served_sample"]
        if draws is None or draws > self.max_factor:
            warnings.append(f"the probe accepted {probe['accepted']} of {probe['samples']} raw samples: "
                            f"{'no' if draws is None else f'about {draws:g}'} draws per served sample would be needed "
                            f"for no copies, beyond max_factor={self.max_factor:g}; the budget runs out and some served "
                            "images are the least copy-like rejects (the after-audit's copy fraction counts them)")
        details = {
            "radius": round(radius, 6), "quantile": self.quantile, "feature_space": "pixels (L2, flattened, [-1, 1])",
            "calibration_set": cal.describe(), "members": len(ctx.members), "max_factor": self.max_factor,
            "probe": probe, "expected_draws_per_served_sample": draws,
            "carries": self.carries, "carries_training_data": True,
            "feature_space_note": "the audit's nn detector may measure copies in another feature space "
                                  "(--param nn.features=...): rejection works in pixels so the served pipeline "
                                  "needs nothing but itself",
        }
        return MitigationOutput(
            protected_dir=folder, denoiser=denoiser, params=self.get_params(), details=details,
            details_title="Rejection sampling", warnings=warnings, probe=_acceptance_probe(denoiser),
            limits=[
                "The protected folder carries the training images themselves (members/): publishing it publishes the "
                "training set. Keep it server-side.",
                "Only served samples are filtered: the noise prediction is the raw model's, so gray-box and white-box "
                "membership numbers are unchanged.",
                f"Sampling cost: about {draws if draws is not None else 'unbounded'} draws per served sample on this "
                f"model (probe of {probe['samples']} raw samples), capped at max_factor={self.max_factor:g}.",
                "Copies are judged in pixel L2: a near copy that differs in pixels (shifted, recoloured) passes.",
            ])

    def _probe(self, radius: float) -> dict:
        d = self.probe_distances_
        accepted = int((d >= radius).sum())
        rate = accepted / len(d)
        return {"samples": int(len(d)), "steps": PROBE_STEPS, "sampler": "ddim", "accepted": accepted,
                "acceptance_rate": round(rate, 4),
                "expected_draws_per_served_sample": round(1.0 / rate, 2) if accepted else None}

    def sweep(self, ctx, output) -> list:
        """One setting per ``sweep_quantiles`` value (its own radius on the same calibration distances)."""
        from privaudit.plugins.mitigations.rejection.denoiser import BankCopyTest, RejectionSampledDenoiser

        den = output.denoiser
        bank, sha = den.test.bank, den.test.bank_sha256
        out = []
        for q in self.sweep_quantiles:
            r = self.calibration_.radius(q)
            v = RejectionSampledDenoiser(base=den.base, test=BankCopyTest(bank, radius=r, bank_sha256=sha),
                                         max_factor=self.max_factor, base_fingerprint=den.base_fingerprint)
            out.append(Variant(name=f"rejection quantile={q:g}", family="rejection", role="main",
                               params={"quantile": q, "radius": round(r, 6)}, denoiser=v, probe=_acceptance_probe(v),
                               description="rejection sampling with the radius at this quantile",
                               details={"probe": self._probe(r)}))
        return out + self._targeted(ctx, den)

    def _targeted(self, ctx, den) -> list:
        """The same quantiles with a bank of the at-risk members only (none when nobody is at risk)."""
        import numpy as np

        from privaudit.plugins.mitigations.memberbank import MemberBank, calibrate
        from privaudit.plugins.mitigations.rejection.denoiser import BankCopyTest, RejectionSampledDenoiser

        risky = set(ctx.at_risk)
        idx = np.array([i for i, m in enumerate(ctx.members.ids) if m in risky], dtype=np.int64)
        if not len(idx) or len(idx) == len(ctx.members):
            return []
        bank = MemberBank.from_images(ctx.members.subset(idx)).to(ctx.device)
        cal = calibrate(ctx, bank)
        out = []
        for q in self.sweep_quantiles:
            r = cal.radius(q)
            v = RejectionSampledDenoiser(base=den.base, test=BankCopyTest(bank, radius=r), max_factor=self.max_factor,
                                         base_fingerprint=den.base_fingerprint)
            out.append(Variant(name=f"rejection at-risk quantile={q:g}", family="rejection-targeted", role="main",
                               params={"quantile": q, "radius": round(r, 6), "scope": f"{len(idx)} at-risk members"},
                               denoiser=v, probe=_acceptance_probe(v),
                               description=f"rejection near the {len(idx)} members at risk only (targeted)"))
        return out


def _acceptance_probe(den):
    """Metrics on a served draw: its acceptance rate and the places filled with rejects."""
    def probe(samples) -> dict:
        s = den.stats_ or {}
        return {"acceptance_rate": s.get("acceptance_rate"),
                "filled_with_copies": int(s.get("filled_with_copies", 0))}
    return probe
