"""Sample quality: Fréchet distance and precision/recall between generated and holdout images.

Mitigations trade privacy for quality, so the report needs a quality number measured the
same way before and after. Both metrics compare generated samples (``ctx.samples``, the
same defaults as ``nn`` so the cached samples are shared) with real holdout images in a
feature space given by a ``FeatureExtractor`` plugin:

- ``features="auto"`` (default): ``digits`` (a small CNN trained on the never-member
  ``--reference`` images: a classifier when the reference folder has ``labels.csv``, as
  the built-in digits fixture does, else an autoencoder) when a reference set is given,
  else ``pixels``. Any extractor works, e.g. ``torchscript`` with a local Inception file.
- **Fréchet distance** (Heusel et al., NeurIPS 2017): ``|mu_g - mu_r|^2 + tr(S_g + S_r -
  2 (S_g S_r)^(1/2))`` between Gaussians fitted to the two feature sets. It is called FID
  only when the features are Inception-v3 pool features; here it is ``frechet_distance``
  and the feature space is stated beside it. It is biased upwards at small n, so a
  real-vs-real baseline at the same n (reference vs holdout, or two holdout halves) is
  reported beside it: a model cannot be expected to score below that.
- **Precision / recall** (Kynkäänniemi et al., "Improved Precision and Recall Metric for
  Assessing Generative Models", NeurIPS 2019): each real feature vector gets a ball whose
  radius is the distance to its ``k``-th (3rd) nearest real neighbour; precision is the
  fraction of generated samples inside some real ball (fidelity), recall the fraction of
  real images inside some generated ball (coverage). Copies of a few members score high
  precision and low recall.

Confidence intervals: Fréchet distance by the delete-a-group jackknife (each set cut into
``jackknife_groups`` seeded groups, the distance recomputed without each group; normal
interval, clamped at 0), when the feature dimension is at most ``max_ci_dim``. Not the
bootstrap: resampling with replacement duplicates points, which shrinks the covariances'
effective sample size and inflates the distance (on the digits target the bootstrap median
was twice the estimate), so percentile intervals would not even contain it. Precision and
recall: Wilson intervals over the evaluated points with the manifold held fixed
(resampling would put duplicate points in the balls' k-NN radii).

Threat model: black box (samples only). Queries: ``steps`` denoiser calls per generated image.
"""

from __future__ import annotations

import numpy as np

from privaudit.api import (
    DetectorOutput,
    InstanceOf,
    Interval,
    Metric,
    MetricSpec,
    Options,
    ReplicationDetector,
    proportion_ci,
    search,
    store_params,
)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (n, d) and ``b`` (m, d)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise, as pytorch-fid does
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (exact, faiss)."""
    nb = search(x, x, k=min(k + 1, len(x)), method="exact")
    return nb.distances[:, -1]


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
    """For each point: does some ball (centre, radius) contain it? Exact, chunked pairwise distances."""
    p, c = np.asarray(points, np.float32), np.asarray(centres, np.float32)
    c2, r2 = (c ** 2).sum(1), np.asarray(radii, np.float32) ** 2
    out = np.zeros(len(p), bool)
    for s in range(0, len(p), chunk):
        q = p[s : s + chunk]
        d2 = (q ** 2).sum(1)[:, None] + c2[None] - 2 * q @ c.T
        out[s : s + chunk] = (d2 <= r2[None] + 1e-6).any(1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-point indicators (fake in real manifold, real in fake manifold), Kynkäänniemi et al. 2019."""
    return coverage(fake, real, knn_radii(real, k)), coverage(real, fake, knn_radii(fake, k))


class QualityDetector(ReplicationDetector):
    """Sample quality: Fréchet distance and k-NN precision/recall against holdout images (not FID unless Inception)."""

    name = "quality"
    id = "PA-QUAL-001"
    severity_rules = "none"  # quality is reported beside the risk, never a risk level itself
    metric_specs = (
        MetricSpec("frechet_distance", "Frechet distance", "quality", "low", "number",
                   "between generated and held-out images in the stated feature space (not FID unless the features "
                   "are Inception's); lower is closer"),
        MetricSpec("frechet_distance_real_baseline", "Frechet distance, real vs real", "quality", None, "number",
                   "two sets of real images at the same size: the floor a model cannot be expected to beat"),
        MetricSpec("precision", "precision", "quality", "high", "rate",
                   "share of generated images inside the real-image manifold (k-NN estimate)"),
        MetricSpec("recall", "recall", "quality", "high", "rate",
                   "share of real images inside the generated-image manifold (k-NN estimate)"),
    )
    references = (
        "Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, NeurIPS 2017",
        "Kynkäänniemi et al., Improved Precision and Recall Metric for Assessing Generative Models, NeurIPS 2019",
    )

    parameter_constraints = {
        "n_samples": [Interval(int, 2, 10_000_000)], "steps": [Interval(int, 1, 10_000)],
        "sampler": [Options("ddim", "ddpm")], "features": [InstanceOf(str)], "feature_params": [None, InstanceOf(dict)],
        "k": [Interval(int, 1, None)], "jackknife_groups": [Interval(int, 2, None)], "max_ci_dim": [Interval(int, 1, None)],
        "holdout_limit": [Interval(int, 1, None)], "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, n_samples: int = 256, steps: int = 50, sampler: str = "ddim", features: str = "auto",
                 feature_params: dict | None = None, k: int = 3, jackknife_groups: int = 20, max_ci_dim: int = 512,
                 holdout_limit: int = 10_000, batch_size: int = 512):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(self.steps)

    def _features_name(self, ctx) -> str:
        if self.features != "auto":
            return self.features
        return "digits" if ctx.reference is not None and "digits" in ctx.registry else "pixels"

    def _embed(self, ctx, extractor, images, *, label: str) -> np.ndarray:
        """Features of a whole set (ImageSet or tensor) through ``ctx.features``: an engine stage."""
        return ctx.features(extractor, images, label=label, batch_size=self.batch_size)

    def _fd_ci(self, a: np.ndarray, b: np.ndarray, fd: float, rng) -> tuple[float, float] | None:
        g = self.jackknife_groups
        if a.shape[1] > self.max_ci_dim or g < 2 or min(len(a), len(b)) < 2 * g:
            return None
        var = 0.0
        for which in (0, 1):  # each set's groups, the other set whole
            x = (a, b)[which]
            groups = np.array_split(rng.permutation(len(x)), g)
            vals = np.array([frechet_distance(*((np.delete(x, grp, 0), b) if which == 0 else (a, np.delete(x, grp, 0))))
                             for grp in groups])
            var += (g - 1) / g * ((vals - vals.mean()) ** 2).sum()
        half = 1.96 * float(np.sqrt(var))
        return max(0.0, fd - half), fd + half

    def detect(self, ctx) -> DetectorOutput:
        rng = np.random.default_rng(ctx.seed)
        fname = self._features_name(ctx)
        extractor = ctx.feature(fname, **(self.feature_params or {}))
        samples = ctx.samples(n=self.n_samples, steps=self.steps, sampler=self.sampler)
        hold_idx = np.arange(len(ctx.holdout))
        if len(hold_idx) > self.holdout_limit:
            hold_idx = np.sort(rng.choice(len(hold_idx), self.holdout_limit, replace=False))
        fake = self._embed(ctx, extractor, samples, label="samples")
        real = self._embed(ctx, extractor, ctx.holdout.subset(hold_idx), label="holdout")
        space = extractor.describe()

        fd = frechet_distance(fake, real)
        prec, rec = precision_recall(real, fake, k=self.k)
        # real-vs-real baseline at the generated set's size: the floor a model can reach
        if ctx.reference is not None:
            ref_idx = np.sort(rng.choice(len(ctx.reference), min(len(fake), len(ctx.reference)), replace=False))
            base_a, base_b, base_sets = self._embed(ctx, extractor, ctx.reference.subset(ref_idx), label="reference"), real, "reference vs holdout"
        else:
            half = rng.permutation(len(real))
            base_a, base_b = real[half[: len(real) // 2]], real[half[len(real) // 2 :]]
            base_sets = "holdout half vs holdout half"
        base_fd = frechet_distance(base_a, base_b)
        base_p, base_r = precision_recall(base_b, base_a, k=self.k)

        note = f"features: {space}; not FID unless the features are Inception's"
        metrics = {
            "frechet_distance": Metric(fd, self._fd_ci(fake, real, fd, rng), note=note + "; jackknife interval"),
            "precision": Metric(float(prec.mean()), proportion_ci(int(prec.sum()), len(prec)),
                                note=f"k={self.k}; Wilson interval, manifold fixed"),
            "recall": Metric(float(rec.mean()), proportion_ci(int(rec.sum()), len(rec)),
                             note=f"k={self.k}; Wilson interval, manifold fixed"),
            "frechet_distance_real_baseline": Metric(base_fd, note=f"{base_sets}, n={len(base_a)}/{len(base_b)}"),
        }
        fitted = {k: v for k, v in vars(extractor).items()
                  if k.endswith("_") and not k.startswith("_") and isinstance(v, (int, float, str))}
        details = {
            "features": fname, "feature_space": space, "feature_dim": int(real.shape[1]), "fitted": fitted,
            "n_generated": len(fake), "n_real": len(real), "k": self.k,
            "frechet_distance_note": "Fréchet distance in the stated feature space; called FID only with Inception-v3 features",
            "real_baseline": {"sets": base_sets, "n": [len(base_a), len(base_b)], "frechet_distance": base_fd,
                              "precision": float(base_p.mean()), "recall": float(base_r.mean())},
        }
        finding = (f"Fréchet distance {fd:.3g} between {len(fake)} generated and {len(real)} holdout images in "
                   f"{space} (not FID; real-vs-real baseline {base_fd:.3g}); precision {prec.mean():.2f}, "
                   f"recall {rec.mean():.2f} (k={self.k}; real-vs-real {base_p.mean():.2f}/{base_r.mean():.2f}).")
        return DetectorOutput(metrics=metrics, finding=finding, details=details)
