"""Prompt fidelity: do a text-to-image model's generations show what the prompt asks for?

A sampling-time mitigation that changes prompts (noise on the embedding, delayed guidance, an
optimised embedding, rescaled attention) can stop copies by no longer following the prompt; the
unconditional quality measure (``quality``) never sees that. This detector generates
``n_per_prompt`` images (DDIM, ``steps`` steps, guidance ``guidance_scale``, seeded per prompt and
draw) for up to ``n_prompts`` member captions and as many holdout captions (seeded subsets), and
asks a classifier whether each generation shows the class its caption names.

Classes: a caption names its class by one of ``classes`` (comma-separated words; by default the
English number words "zero" ... "nine", as the built-in text fixtures caption digits); captions
naming none (or several) are left out. The classifier: multinomial logistic regression
(scikit-learn) on ``features`` (default ``pixels``) of every captioned image never trained on
(``--reference`` and the holdout: a class classifier learns nothing about membership), labelled
by their own captions; its 5-fold cross-validated accuracy is reported (the ceiling fidelity can
be read against).

Metrics: ``prompt_fidelity`` (accuracy over every generation, Wilson interval),
``prompt_fidelity_members`` and ``prompt_fidelity_unseen`` (member and holdout captions).
``privaudit mitigate`` puts the protected model's fidelity over the unprotected one's on the
quality axis beside the distribution measure, and judges the worse of the two.

Threat model: none (a quality measure, never a risk level). Queries: ``2 * steps`` network
evaluations per generated image.
"""

from __future__ import annotations

import re

import numpy as np

from privaudit.api import (
    DetectorOutput,
    InstanceOf,
    Interval,
    Metric,
    MetricSpec,
    ReplicationDetector,
    proportion_ci,
    store_params,
)

NUMBER_WORDS = "zero,one,two,three,four,five,six,seven,eight,nine"


def caption_classes(captions, words: list[str]) -> np.ndarray:
    """The class index each caption names (-1: none or several)."""
    pats = [re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE) for w in words]
    out = np.full(len(captions), -1, dtype=np.int64)
    for i, c in enumerate(captions):
        hits = [k for k, p in enumerate(pats) if p.search(c)]
        if len(hits) == 1:
            out[i] = hits[0]
    return out


class PromptFidelityDetector(ReplicationDetector):
    """Prompt fidelity: a classifier's accuracy on generations against the class the prompt names."""

    name = "fidelity"
    id = "PA-QUAL-002"
    requires = ("sampling", "text")
    severity_rules = "none"
    metric_specs = (
        MetricSpec("prompt_fidelity", "prompt fidelity", "quality", "high", "rate",
                   "generations a classifier assigns to the class their prompt names"),
        MetricSpec("prompt_fidelity_members", "prompt fidelity, member captions", "quality", "high", "rate",
                   "the same for the training captions"),
        MetricSpec("prompt_fidelity_unseen", "prompt fidelity, unseen captions", "quality", "high", "rate",
                   "the same for holdout captions (prompts never trained on)"),
        MetricSpec("classifier_accuracy", "classifier accuracy (real images)", "quality", None, "rate",
                   "5-fold cross-validated accuracy of the classifier on the real images it was trained on"),
    )
    references = ("Hessel et al., CLIPScore: A Reference-free Evaluation Metric for Image Captioning, EMNLP 2021 "
                  "(prompt alignment as the literature measures it; a class classifier is its closed-vocabulary form)",)
    parameter_constraints = {
        "classes": [InstanceOf(str)], "n_prompts": [Interval(int, 1, None)], "n_per_prompt": [Interval(int, 1, 1000)],
        "steps": [Interval(int, 1, 10_000)], "guidance_scale": [Interval(float, 0, 100)], "features": [InstanceOf(str)],
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, classes: str = NUMBER_WORDS, n_prompts: int = 32, n_per_prompt: int = 2, steps: int = 25,
                 guidance_scale: float = 7.5, features: str = "pixels", batch_size: int = 256):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(2 * self.steps)

    def detect(self, ctx) -> DetectorOutput:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score

        from privaudit.model.latent import generate

        words = [w.strip() for w in self.classes.split(",") if w.strip()]
        extractor = ctx.feature(self.features)
        # every captioned image never trained on: the reference and the holdout (a class classifier learns
        # nothing about membership, so the holdout may train it)
        sets = [s for s in (ctx.reference, ctx.holdout) if s is not None and s.captions]
        feats, labels = [], []
        for s in sets:
            y = caption_classes(s.captions, words)
            keep = np.flatnonzero(y >= 0)
            if len(keep):
                feats.append(ctx.features(extractor, s.subset(keep), label=f"fidelity-{s.name}", batch_size=1024))
                labels.append(y[keep])
        y_train = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        counts = np.bincount(y_train[y_train >= 0], minlength=len(words))
        if len(y_train) < 20 or (counts > 0).sum() < 2:
            return DetectorOutput(metrics={}, finding=f"No prompt fidelity: {len(y_train)} captioned never-trained-on "
                                  f"images name one of the classes {', '.join(words[:3])}, ...: too few to train a "
                                  "classifier (--param fidelity.classes=WORD,WORD,...).", details={})
        f_train = np.concatenate(feats)
        clf = LogisticRegression(max_iter=2000)
        folds = int(min(5, counts[counts > 0].min()))
        cv = float(np.mean(cross_val_score(clf, f_train, y_train, cv=folds))) if folds >= 2 else float("nan")
        clf.fit(f_train, y_train)
        train_desc = " and ".join(s.name for s in sets)

        rng = np.random.default_rng(ctx.seed)
        prompts, owner = [], []
        for images, label in ((ctx.members, 1), (ctx.holdout, 0)):
            caps = list(images.captions)
            ok = np.flatnonzero(caption_classes(caps, words) >= 0)
            if len(ok) > self.n_prompts:
                ok = np.sort(rng.choice(ok, self.n_prompts, replace=False))
            prompts += [caps[i] for i in ok]
            owner += [label] * len(ok)
        if not prompts:
            return DetectorOutput(metrics={}, finding="No prompt fidelity: no member or holdout caption names a class.",
                                  details={})
        want = np.repeat(caption_classes(prompts, words), self.n_per_prompt)
        who = np.repeat(np.asarray(owner), self.n_per_prompt)
        x = generate(ctx.denoiser, prompts, n_per_prompt=self.n_per_prompt, steps=self.steps,
                     guidance_scale=self.guidance_scale, seed=ctx.seed, batch_size=self.batch_size,
                     progress=ctx.progress)
        got = clf.predict(ctx.features(extractor, x, label="fidelity-generations", batch_size=1024))
        hit = got == want
        frac = lambda m: Metric(float(m.mean()), proportion_ci(int(m.sum()), len(m)))
        metrics = {"prompt_fidelity": frac(hit), "classifier_accuracy": Metric(cv, note=f"{folds}-fold, real images")}
        if (who == 1).any():
            metrics["prompt_fidelity_members"] = frac(hit[who == 1])
        if (who == 0).any():
            metrics["prompt_fidelity_unseen"] = frac(hit[who == 0])
        finding = (f"{hit.mean():.0%} of {len(hit)} generations show the class their prompt names (a classifier on "
                   f"{self.features} features, {cv:.0%} accurate on real images)")
        if "prompt_fidelity_members" in metrics and "prompt_fidelity_unseen" in metrics:
            finding += (f"; member captions {metrics['prompt_fidelity_members'].value:.0%}, unseen captions "
                        f"{metrics['prompt_fidelity_unseen'].value:.0%}")
        details = {"n_fidelity": int(len(hit)), "n_prompts": len(prompts), "n_per_prompt": self.n_per_prompt,
                   "classes": words, "classifier": f"logistic regression on {self.features} features of "
                   f"{train_desc} ({len(y_train)} images)", "steps": self.steps, "guidance_scale": self.guidance_scale}
        return DetectorOutput(metrics=metrics, finding=finding + ".", details=details)
