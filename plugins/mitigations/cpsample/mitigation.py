"""The ``cpsample`` mitigation: train a guard, save a protected pipeline, build the controls.

CPSample (Kazdan et al., "CPSample: Classifier Protected Sampling for Guarding Training
Data During Diffusion", ICLR 2025, arXiv 2409.07025):

1. every member gets a fixed random label (seeded; ``DIR/guard/labels.csv``);
2. a small time-conditioned classifier (``guard.py``) learns the labels from noised
   members (``train.py``), early-stopped at ``target_accuracy`` on members at low noise
   (t < ``fit_t`` * T); the run reports its accuracy by noise band, on members and on
   holdout images (where, with random labels, it is 1/2 in expectation whatever the guard
   learned, so the report also gives its confidence and gate rate there);
3. sampling steers away from wherever the guard is confident (``protected.py``);
4. ``DIR/protected`` is a diffusers pipeline folder (``pipeline.py``) that
   ``DiffusionPipeline.from_pretrained`` loads and ``privaudit scan`` audits.

Member specificity (privaudit's addition, measured). A classifier that memorised random
labels is confident on unseen images too, so guidance fires everywhere and a placebo guard
(random labels on holdout images) removes copies as well as the real one. Three choices
are on by default because they are what made the guard member-specific:

- ``nonmember_weight`` (1): the guard is also trained towards p = 1/2 on never-trained-on
  images (``--reference``, never the evaluation holdout);
- ``lipschitz`` (True): spectral normalisation of every layer, bounding how fast the
  logit can change with the input, so guidance gradients are smoother;
- ``max_unseen_gate`` (0.05): training stops only when, besides fitting the members, the
  gate at ``alpha`` fires on at most 5% of held-aside reference images at low noise
  (``train.py``); otherwise it runs to ``max_steps`` and the run warns with the rate reached.

Measured on the built-in digits target (64 members, 16/32-channel guard, 256 DDIM-50
samples, Frechet distance in the ``quality`` detector's feature space; each recipe with
``privaudit mitigate --sweep``, its placebo on the same alpha x scale grid; "advantage" is
the placebo's minus CPSample's copy fraction along the two Pareto fronts at matched
quality, ``privaudit.mitigation.flow.matched_quality``):

=====================================  ==================  ==================  =========
recipe                                 confidence t<100    gate rate t<100     advantage
                                       members / holdout   (alpha 0.1) m / h
=====================================  ==================  ==================  =========
members only (the paper's)             0.50 / 0.43         0.98 / 0.75         -0.12
+ p = 1/2 on reference (weight 1)      0.46 / 0.15         0.91 / 0.04          0.00
+ p = 1/2 on reference (weight 3)      0.44 / 0.08         0.85 / 0.02         -0.02
+ weight 1 + spectral norm             0.45 / 0.12         0.92 / 0.05         +0.18
+ stop on unseen gate (default)        0.48 / 0.08         0.97 / 0.03         +0.28
=====================================  ==================  ==================  =========

(Grids: the first two recipes' placebos were swept at alpha 0.25 only, scales 3-100; the others on the full grid.)
The last two beat their placebo at every matched quality level. On 8x8 digits the default
stopping rule is not met (real unseen digits lie as close to the members as the members
to each other): the guard trains its 3000 steps and still gates 26% of holdout digits at
alpha 0.4 (3% at alpha 0.1), and the run says so. At the defaults, alpha 0.4 and scale 100,
the copy fraction fell from 0.961 to 0.004 and the gray-box ``loss`` AUC from 1.000 to 0.610,
but the two-sided AUC is 0.879 (the guided noise prediction makes members look *less* like
members: the gate itself leaks), at a large quality cost (Frechet distance 33 -> 112); the
placebo at the same setting left 0.281 copies at Frechet distance 81. The sweep recommends
alpha 0.25, scale 100: 0.020 copies at Frechet distance 53. On the text fixture's 4x4x4
latents the rule is met (2300 steps; holdout gate at alpha 0.4: 4% against 100% of members)
where stopping on member accuracy alone (100 steps) gated 53% of holdout latents.

Judged in its own threat model (black box: images only; ``privaudit mitigate`` on the digits
target with ``--attacks loss,rediffuse,gen-nn``, defaults alpha 0.4, scale 100): copies 0.957 ->
0.000 and ``gen-nn`` AUC 0.98 -> 0.63, but ``rediffuse`` (a variation API) reaches AUC 0.89 on the
protected pipeline with its score reversed (chosen on the calibration split): the guard pushes
noised members away from themselves, so members come back *farther* than unseen digits. The gray-box
gate leak is 0.91. So on this fixture the hard gate leaks through the served pipeline too, and the
verdict stays "high". The soft gate (below), swept on the same grid (alpha 0.25/0.4 x scale
30/100, gate width 0.05), did not do better: at the copy target it left 0.004 copies at Frechet
distance 190 (hard: 0.000 at 119), gate leak 0.90 (hard 0.91), black-box two-sided AUC 0.89
(hard 0.89). The hard gate stays the default. On the text fixture (digits-text, same defaults,
``--attacks loss,rediffuse,gen-nn,prompt-copy``) the served pipeline still copies (0.996 -> 0.629)
and ``prompt-copy`` (generate with the member's own caption) keeps AUC 1.00 and TPR 1.00 at 1%
FPR: the verdict stays "critical"; gate leak 0.96.

The gate (``gate``): "hard" (the paper's rule, default) guides only where the guard's
confidence exceeds 1 - alpha; "soft" guides everywhere with a strength following the guard's
confidence (``gate_width``; ``protected.py``), an attempt to make the gate less
member-specific from outside. ``sweep_gates`` sweeps both on the same grid, so the report
compares copies, quality, black-box AUC and the gate leak (two-sided gray-box AUC) per gate.

Controls returned for the side-by-side table: a *placebo* guard (same recipe and
settings, random labels on holdout images instead of members: if it protects as well, the
effect is not specific to the training set) and post-hoc *rejection sampling*
(``privaudit.plugins.mitigations.rejection.denoiser``; the ``rejection`` mitigation serves it as a
pipeline). ``sweep`` returns the alpha x scale grid for the trade-off plot,
and the placebo on the same grid, so copies can be compared at matched quality.

Trained guards are cached by (UNet weights, member and non-member pixels, every
training parameter, seed) under ``<cache>/guards``, so a second run reuses them.

Threat model: the protection exists only in what the protected pipeline serves; the raw
UNet (and the guard, which recognises members) must stay private.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from privaudit.api import (
    InputError,
    InstanceOf,
    Interval,
    Mitigation,
    MitigationOutput,
    Options,
    PrivauditError,
    SequenceOf,
    Variant,
    atomic_dir,
    store_params,
    write_json,
    write_text,
)
from privaudit.model.denoiser import add_noise
from privaudit.model.latent import latent_of, to_model_space

RECIPE_VERSION = 2  # bump when training changes, so cached guards are not reused


class GuardShortfallError(PrivauditError):
    """The guard missed its accuracy or specificity target within its step budget (``on_shortfall="error"``)."""


class CPSample(Mitigation):
    """CPSample: a guard classifier that memorised random member labels steers sampling away from members."""

    name = "cpsample"
    id = "PA-MIT-001"
    threat_model = "gray-box"
    carries = "a guard classifier that recognises members (trained on random labels of the training images)"
    references = ("Kazdan et al., CPSample: Classifier Protected Sampling for Guarding Training Data During "
                  "Diffusion, ICLR 2025 (arXiv 2409.07025)",
                  "Dhariwal & Nichol, Diffusion Models Beat GANs on Image Synthesis, NeurIPS 2021 (classifier guidance)")

    parameter_constraints = {
        "alpha": [Interval(float, 0, 0.5, closed="right")], "scale": [Interval(float, 0, None)],
        "nonmember_weight": [Interval(float, 0, None)], "lipschitz": [InstanceOf(bool)],
        "block_out_channels": [SequenceOf(Interval(int, 1, 4096))], "layers_per_block": [Interval(int, 1, 16)],
        "max_steps": [Interval(int, 1, None)], "batch_size": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, 1, closed="right")], "target_accuracy": [Interval(float, 0, 1, closed="right")],
        "fit_t": [Interval(float, 0, 1, closed="right")], "max_unseen_gate": [None, Interval(float, 0, 1)],
        "on_shortfall": [Options("warn", "error")], "seed": [None, Interval(int, 0, None)],
        "placebo": [InstanceOf(bool)], "rejection": [InstanceOf(bool)],
        "rejection_max_factor": [Interval(float, 1, None)], "rejection_features": [InstanceOf(str)],
        "sweep_alphas": [SequenceOf(Interval(float, 0, 0.5, closed="right"))],
        "sweep_scales": [SequenceOf(Interval(float, 0, None))],
        "gate": [Options("hard", "soft")], "gate_width": [Interval(float, 0, 1, closed="right")],
        "sweep_gates": [SequenceOf(Options("hard", "soft"))],
    }

    def __init__(self, *, alpha: float = 0.4, scale: float = 100.0, nonmember_weight: float = 1.0,
                 lipschitz: bool = True, block_out_channels: tuple[int, ...] = (16, 32), layers_per_block: int = 1,
                 max_steps: int = 3000, batch_size: int = 128, lr: float = 2e-3, target_accuracy: float = 0.97,
                 fit_t: float = 0.2, max_unseen_gate: float | None = 0.05, on_shortfall: str = "warn", seed: int | None = None, placebo: bool = True,
                 rejection: bool = True, rejection_max_factor: float = 10.0, rejection_features: str = "pixels",
                 sweep_alphas: tuple[float, ...] = (0.1, 0.25, 0.4, 0.5),
                 sweep_scales: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0), gate: str = "hard",
                 gate_width: float = 0.05, sweep_gates: tuple[str, ...] = ("hard", "soft")):
        store_params(self, locals())

    def recipe(self) -> str:
        parts = ["random labels on members"]
        if self.nonmember_weight > 0:
            parts.append(f"p = 1/2 on never-trained-on images (weight {self.nonmember_weight:g})")
        if self.lipschitz:
            parts.append("spectral normalisation")
        return " + ".join(parts)

    # ------------------------------------------------------------------ guard training (cached)

    def _guard(self, ctx, *, images, role: str, seed: int, nonmembers):
        """Train (or load from cache) a guard on ``images`` with seeded random labels."""
        from privaudit.plugins.mitigations.cpsample.guard import GuardClassifier, guard_for
        from privaudit.plugins.mitigations.cpsample.train import TrainStats, random_labels, train_guard
        labels = random_labels(len(images), seed=seed)
        train_params = {k: v for k, v in self.get_params().items()
                        if k in ("nonmember_weight", "lipschitz", "block_out_channels", "layers_per_block", "max_steps",
                                 "batch_size", "lr", "target_accuracy", "fit_t", "alpha", "max_unseen_gate")}
        digest = hashlib.sha256()
        digest.update(json.dumps({"recipe": RECIPE_VERSION, "seed": seed, **train_params}, sort_keys=True,
                                 default=list).encode())
        digest.update(ctx.denoiser.fingerprint.encode())
        for s in (images, nonmembers):
            digest.update(("|".join(s.content_hashes()) if s is not None else "none").encode())
        key = digest.hexdigest()[:32]
        folder = Path(ctx.cache_dir) / "guards" / key
        if (folder / "train.json").exists():
            guard = GuardClassifier.from_pretrained(folder, use_safetensors=True)
            stats = TrainStats(**json.loads((folder / "train.json").read_text()))
            cached = True
        else:
            torch.manual_seed(seed)
            c, size = ctx.denoiser.sample_shape[0], ctx.denoiser.sample_shape[-1]  # what the model samples (latents)
            shape = SimpleNamespace(in_channels=c, sample_size=size)  # not the network's config: Flux packs latents
            guard = guard_for(shape, block_out_channels=tuple(self.block_out_channels),
                              layers_per_block=self.layers_per_block, num_train_timesteps=len(ctx.denoiser.alphas_cumprod),
                              lipschitz=self.lipschitz).to(ctx.device)
            # latent models (privaudit.model.latent): the guard learns the members' VAE latents
            x = to_model_space(ctx.denoiser, images.tensor(device=ctx.device))
            nm = to_model_space(ctx.denoiser, nonmembers.tensor(device=ctx.device)) if nonmembers is not None else None
            stats = train_guard(guard, members=x, labels=torch.from_numpy(labels), alphas_cumprod=ctx.denoiser.alphas_cumprod,
                                nonmembers=nm, nonmember_weight=self.nonmember_weight if nm is not None else 0.0,
                                max_steps=self.max_steps, batch_size=self.batch_size, lr=self.lr,
                                target_accuracy=self.target_accuracy, fit_t=self.fit_t, alpha=self.alpha,
                                max_unseen_gate=self.max_unseen_gate, seed=seed, progress=ctx.progress)
            with atomic_dir(folder) as tmp:
                guard.save_pretrained(tmp, safe_serialization=True)
                write_json(tmp / "train.json", stats.__dict__)
            cached = False
        guard = guard.to(ctx.device).eval().requires_grad_(False)
        return guard, labels, stats, cached, key

    def _check_shortfall(self, stats, role: str) -> str | None:
        msgs = []
        if not stats.reached_target:
            msgs.append(f"{role} guard reached train accuracy {stats.fit_accuracy:.3f} (members, t < {self.fit_t:g} T), "
                        f"below its target {self.target_accuracy:.3f}, within max_steps={self.max_steps}: it recognises "
                        "members less reliably, so protection is weaker than configured (raise max_steps or "
                        "block_out_channels)")
        if not stats.reached_specificity:
            msgs.append(f"{role} guard's gate still fires on {stats.unseen_gate_rate:.0%} of held-aside never-trained-on "
                        f"images (t < {self.fit_t:g} T, alpha {self.alpha:g}; stopping asks for at most "
                        f"{self.max_unseen_gate:.0%}) after max_steps={self.max_steps}: guidance will also move samples "
                        "that copy nothing; a smaller alpha gates more selectively (--sweep shows the trade-off)")
        if not msgs:
            return None
        if self.on_shortfall == "error" and role == "CPSample":
            raise GuardShortfallError("; ".join(msgs))
        return "; ".join(msgs)

    # ------------------------------------------------------------------ the mitigation

    def apply(self, ctx):
        from privaudit.model.target import load_target
        from privaudit.plugins.mitigations.cpsample.pipeline import CPSamplePipeline
        from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser
        from privaudit.plugins.mitigations.rejection.denoiser import FeatureCopyTest, RejectionSampledDenoiser

        self.validate()
        unet, scheduler = _network(ctx.pipeline), getattr(ctx.pipeline, "scheduler", None)
        text = latent_of(ctx.denoiser) is not None
        if unet is None or (type(unet).__name__ != "UNet2DModel" and not text):
            raise InputError(f"{ctx.model_dir}: cpsample protects UNet2DModel and text-to-image latent pipelines; "
                             f"this one's denoiser is {type(unet).__name__}")
        if len(ctx.members) < 4:
            raise InputError(f"{ctx.members.source}: cpsample needs at least 4 members to train a guard, got {len(ctx.members)}")
        seed = ctx.seed if self.seed is None else self.seed
        warnings: list[str] = []
        nonmembers = ctx.reference if self.nonmember_weight > 0 else None
        if self.nonmember_weight > 0 and ctx.reference is None:
            warnings.append("no --reference images were given, so the guard was trained on members only (the "
                            "paper's recipe): it is confident on unseen images too, and guidance then perturbs "
                            "samples that copy nothing; pass never-trained-on images with --reference")
        start = time.perf_counter()
        guard, labels, stats, cached, key = self._guard(ctx, images=ctx.members, role="cpsample", seed=seed,
                                                       nonmembers=nonmembers)
        if msg := self._check_shortfall(stats, "CPSample"):
            warnings.append(msg)
        guard_dir = Path(ctx.out) / "guard"
        rows = ["member_id,content_sha256,label"] + [f"{i},{h},{int(y)}" for i, h, y in
                                                     zip(ctx.members.ids, ctx.members.content_hashes(), labels)]
        write_text(guard_dir / "labels.csv", "\n".join(_csv_safe(r) for r in rows) + "\n")

        # the protected pipeline, saved and loaded back: what is audited is what ships
        protected_dir = Path(ctx.out) / "protected"
        if text:  # Stable Diffusion class: guard on latents, a pipeline whose __call__ takes prompts
            from privaudit.plugins.mitigations.cpsample.text_pipeline import CPSampleTextPipeline

            pipe = CPSampleTextPipeline.from_text_pipeline(ctx.pipeline, guard=guard, alpha=self.alpha, scale=self.scale,
                                                           gate=self.gate, gate_width=self.gate_width)
        else:
            pipe = CPSamplePipeline(unet=unet, scheduler=scheduler, guard=guard, alpha=self.alpha, scale=self.scale,
                                    gate=self.gate, gate_width=self.gate_width)
        with atomic_dir(protected_dir) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            write_text(tmp / "README.md", _model_card(self, text=text))
        denoiser, _, _ = load_target(protected_dir, device=str(ctx.device))
        report = self._guard_report(ctx, guard, labels, stats, cached, key, seed, denoiser)
        report["seconds_total"] = round(time.perf_counter() - start, 2)

        controls = []
        if self.placebo:
            # as many holdout images as there are members, so the placebo's task is as hard as the guard's
            pick = np.random.default_rng([seed, 0x91AC]).permutation(len(ctx.holdout))[:len(ctx.members)]
            pguard, _, pstats, pcached, _ = self._guard(ctx, images=ctx.holdout.subset(np.sort(pick)), role="placebo",
                                                       seed=seed + 1, nonmembers=nonmembers)
            if msg := self._check_shortfall(pstats, "placebo"):
                warnings.append(msg)
            self.placebo_guard_ = pguard
            placebo = ProtectedDenoiser(base=denoiser.base, guard=pguard, alpha=self.alpha, scale=self.scale,
                                        base_fingerprint=denoiser.base_fingerprint, gate=self.gate,
                                        gate_width=self.gate_width)
            controls.append(Variant(
                name="placebo guard", family="placebo", role="placebo", params={"alpha": self.alpha, "scale": self.scale},
                description=("the same guard recipe, size and settings, trained with random labels on as many holdout "
                             "images as there are members, instead of the members: protection it also gives is not "
                             "specific to the training set"),
                denoiser=placebo, probe=_confidence_probe(placebo),
                details={"guard_training": {"steps": pstats.steps, "seconds": pstats.seconds,
                                            "fit_accuracy": pstats.fit_accuracy, "cached": pcached}}))
        if self.rejection:
            extractor = ctx.feature(self.rejection_features)
            test = FeatureCopyTest(members=ctx.members, holdout=ctx.holdout, extractor=extractor,
                                   features=self.rejection_features)
            rej = RejectionSampledDenoiser(base=denoiser.base, test=test, max_factor=self.rejection_max_factor,
                                           base_fingerprint=denoiser.base_fingerprint)
            controls.append(Variant(
                name="rejection sampling", family="rejection", role="control", params={"max_factor": self.rejection_max_factor},
                description=("post-hoc: generate with the raw model, drop samples closer to a member than 99% of real "
                             "unseen images are (the audit's own copy criterion, so its copy fraction is 0 by "
                             "construction unless the budget runs out), resample; the served noise prediction is the raw "
                             "model's, so gray-box membership numbers are the unprotected ones"),
                denoiser=rej, details=lambda r=rej: {"rejection": max(r.draws_, key=lambda d: d["requested"], default={}),
                                                     "rejection_draws": list(r.draws_)}))
        self.guard_ = guard
        return MitigationOutput(
            protected_dir=protected_dir, denoiser=denoiser, params=self.get_params(), details=report,
            details_title="Guard classifier",
            controls=controls, warnings=warnings, probe=_confidence_probe(denoiser),
            limits=[
                "The guard classifier recognises members (that is how it works): its confidence alone separates members "
                f"from holdout with AUC {report['membership_oracle_auc']:.3f}. Ship the protected folder only where its "
                "weights stay private, exactly like the raw UNet's.",
                "The guard needs the training set to be trained, and retraining when the training set changes.",
                f"alpha and scale trade privacy for quality; this run used alpha={self.alpha:g}, scale={self.scale:g} "
                "(--sweep shows the frontier).",
                "The guidance term is privaudit's reconstruction of CPSample's rule, not the "
                "authors' code; guard recipe: " + self.recipe() + ".",
            ])

    def _guard_report(self, ctx, guard, labels, stats, cached, key, seed, denoiser) -> dict:
        from sklearn.metrics import roc_auc_score

        from privaudit.plugins.mitigations.cpsample.train import band_names, evaluate_guard, random_labels

        acp = ctx.denoiser.alphas_cumprod
        ev = lambda x, y: evaluate_guard(guard, x, y, alphas_cumprod=acp, alpha=self.alpha, seed=seed + 11)
        space = lambda s: to_model_space(ctx.denoiser, s.tensor()).cpu()  # latents for latent models
        mem = ev(space(ctx.members), torch.from_numpy(labels))
        # holdout with its own random labels: accuracy is 1/2 in expectation whatever the guard learned
        hold = ev(space(ctx.holdout), torch.from_numpy(random_labels(len(ctx.holdout), seed=seed + 2)))
        ref = ev(space(ctx.reference), None) if ctx.reference is not None else None
        # the guard as a membership test: mean confidence at low noise
        low = band_names(len(acp))[0]
        conf_m = _per_image_confidence(guard, space(ctx.members), acp, seed)
        conf_h = _per_image_confidence(guard, space(ctx.holdout), acp, seed)
        oracle = float(roc_auc_score(np.r_[np.ones(len(conf_m)), np.zeros(len(conf_h))], np.r_[conf_m, conf_h]))
        n_guard = sum(p.numel() for p in guard.parameters())
        n_unet = sum(p.numel() for p in _network(ctx.pipeline).parameters())
        return {
            "recipe": self.recipe(),
            "architecture": f"time-conditioned CNN, channels {tuple(self.block_out_channels)}, "
                            f"{self.layers_per_block} block(s) per level" + (", spectral norm" if self.lipschitz else ""),
            "parameters": n_guard, "unet_parameters": n_unet, "size_vs_unet": round(n_guard / n_unet, 4),
            "labels": {"seed": seed, "members": len(labels), "label_1": int(labels.sum()), "file": "guard/labels.csv"},
            "steps": stats.steps, "seconds": stats.seconds, "cached": cached, "cache_key": key,
            "target_accuracy": self.target_accuracy, "fit_band": f"t < {round(self.fit_t * len(acp))}",
            "fit_accuracy": stats.fit_accuracy, "reached_target": stats.reached_target,
            "unseen_gate_rate": stats.unseen_gate_rate, "max_unseen_gate": self.max_unseen_gate,
            "reached_specificity": stats.reached_specificity,
            "final_loss": stats.final_loss,
            "train_accuracy_by_band": mem.accuracy,
            "holdout_accuracy_by_band": hold.accuracy,
            "holdout_accuracy_note": "holdout images get their own random labels: accuracy near 0.5 is expected; "
                                     "confidence and gate rate show whether the guard is member-specific",
            "confidence_members": mem.confidence, "confidence_holdout": hold.confidence,
            **({"confidence_reference": ref.confidence} if ref is not None else {}),
            "gate_rate_members": mem.gate_rate, "gate_rate_holdout": hold.gate_rate,
            "low_noise_band": low,
            "membership_oracle_auc": round(oracle, 4),
            "sha256": denoiser.guard_sha256,
        }

    # ------------------------------------------------------------------ sweep

    def sweep(self, ctx, output) -> list:
        """alpha x scale with the trained guard, and the placebo on the same grid (the matched-quality check)."""

        den = output.denoiser
        out = []
        for g in dict.fromkeys(self.sweep_gates):
            for a in self.sweep_alphas:
                for s in self.sweep_scales:
                    v = den.with_params(alpha=a, scale=s, gate=g, gate_width=self.gate_width)
                    family = "cpsample" if g == "hard" else f"cpsample {g} gate"
                    out.append(Variant(name=f"{family} alpha={a:g} scale={s:g}", family=family, role="main",
                                       params={"alpha": a, "scale": s, "gate": g}, denoiser=v, probe=_confidence_probe(v),
                                       description=f"CPSample with the trained guard at this setting ({g} gate)"))
        pguard = getattr(self, "placebo_guard_", None)
        if pguard is not None:
            from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser

            for a in self.sweep_alphas:
                for s in self.sweep_scales:
                    v = ProtectedDenoiser(base=den.base, guard=pguard, alpha=a, scale=s,
                                          base_fingerprint=den.base_fingerprint, gate=self.gate,
                                          gate_width=self.gate_width)
                    out.append(Variant(name=f"placebo alpha={a:g} scale={s:g}", family="placebo", role="placebo",
                                       params={"alpha": a, "scale": s}, denoiser=v, probe=_confidence_probe(v),
                                       description="placebo guard (random labels on holdout) at this setting"))
        return out


def _network(pipe):
    """The pipeline's denoising network: its ``unet`` or (DiT, PixArt, SD3) its ``transformer``."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)


def _csv_safe(row: str) -> str:
    return row.replace("\n", " ")


@torch.no_grad()
def _per_image_confidence(guard, x: torch.Tensor, acp: torch.Tensor, seed: int, draws: int = 4) -> np.ndarray:
    """Mean |p - 1/2| per image over ``draws`` noisings with t < T/10 (the guard used as a membership test)."""
    device = next(guard.parameters()).device
    gen = torch.Generator().manual_seed(seed + 29)
    hi = max(1, len(acp) // 10)
    out = torch.zeros(len(x))
    for _ in range(draws):
        t = torch.randint(0, hi, (len(x),), generator=gen)
        eps = torch.randn(x.shape, generator=gen)
        xt = add_noise(x, t, eps, acp).to(device)
        out += (torch.sigmoid(guard(xt, t.to(device))) - 0.5).abs().cpu()
    return (out / draws).numpy()


def _confidence_probe(den):
    """Metrics on generated samples: the guard's mean confidence on them (at t = 0)."""
    def probe(samples: torch.Tensor) -> dict:
        c = den.confidence(to_model_space(den, samples.to(den.device)), 0)
        return {"guard_confidence_on_samples": round(float((c - 0.5).mean()), 4),
                "guided_fraction": round(den.guided_ / max(den.calls_, 1), 4)}
    return probe


def _model_card(m: CPSample, *, text: bool = False) -> str:
    components = (("`vae`, `text_encoder`, `tokenizer`, " if text else "")
                  + "`unet` (the original model, untouched), `scheduler`, `guard` (a small time-conditioned classifier "
                  + ("on VAE latents " if text else "") + "that memorised random labels of the training images)")
    cls, call = (("CPSampleTextPipeline", 'pipe(["a prompt"], num_images_per_prompt=4).images') if text else
                 ("CPSamplePipeline", "pipe(batch_size=4).images"))
    return f"""# CPSample-protected diffusion pipeline (written by privaudit)

Components: {components}.
Sampling steers away from wherever the guard is confident (alpha={m.alpha:g}, scale={m.scale:g}).

Load it offline, without pickles, after importing privaudit's plugin (it registers the
pipeline class with diffusers; no code is stored in this folder):

```python
import privaudit.plugins.mitigations.cpsample  # registers {cls}
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("path/to/protected")
images = {call}
```

Audit it like any model: `privaudit scan path/to/protected --members ... --holdout ...`.

Limits: protection exists only in what this pipeline serves. Anyone holding these
weights can sample the raw `unet` without the guard, and the `guard` itself recognises
training images: keep this folder as private as the training data.
"""
