"""Nearest-neighbour replication detector: which generated images are copies of members?

Generates ``n_samples`` images (seeded, cached), embeds samples, members and holdout with a
``FeatureExtractor`` plugin (``pixels`` by default) and finds nearest members with faiss
(exact ``IndexFlatL2``; members are added in batches).

Criteria, reported side by side:

- ``copy_fraction`` (headline, calibrated): a sample is a copy when its nearest-member
  distance is below the ``quantile`` (default 1%) of the nearest-member distances of real
  holdout images. Holdout images are, by construction, not copies, so the criterion's
  false-positive rate is known (about ``quantile``) whatever the dimension or data.
- ``carlini_fraction``: Carlini et al. 2023 ("Extracting Training Data from Diffusion
  Models"): distance to the nearest member divided by ``alpha`` (0.5) times the mean
  distance to the ``k`` (50) nearest members; <= 1 is a copy. In low dimensions the nearest
  neighbour is always much closer than the k-neighbour mean, so this flags non-copies too
  (DESIGN.md section 5): read it against the holdout's own rate (``carlini_holdout_fraction``).
- ``ratio_fraction``: nearest / second-nearest member distance below 1/3.

Threat model: black box (samples only). Queries: ``n_samples * steps`` denoiser calls in all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from privaudit.metrics import proportion_ci
from privaudit.plugin import DetectorOutput, ReplicationDetector
from privaudit.results import Metric


def member_index(ctx, extractor, *, batch_size: int = 1024):
    """A faiss exact L2 index over member features, filled batch by batch."""
    import faiss

    index = None
    for _, x in ctx.members.batches(batch_size):
        f = np.ascontiguousarray(extractor.transform(x), dtype=np.float32)
        if index is None:
            index = faiss.IndexFlatL2(f.shape[1])
        index.add(f)
    return index


def search(index, extractor, x, k: int):
    f = np.ascontiguousarray(extractor.transform(x), dtype=np.float32)
    d2, nn = index.search(f, k)
    return np.sqrt(np.maximum(d2, 0)), nn


class NearestNeighbourDetector(ReplicationDetector):
    """Copies among generated samples: calibrated nearest-member distance, plus Carlini's ratio."""

    name = "nn"
    id = "PA-REP-001"
    references = ("Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023",)

    def __init__(self, *, n_samples: int = 256, steps: int = 50, sampler: str = "ddim", features: str = "pixels",
                 quantile: float = 0.01, alpha: float = 0.5, k: int = 50, n_pairs: int = 12):
        self.n_samples = n_samples
        self.steps = steps
        self.sampler = sampler
        self.features = features
        self.quantile = quantile
        self.alpha = alpha
        self.k = k
        self.n_pairs = n_pairs

    def queries_per_image(self) -> float:
        return float(self.steps)  # per generated image

    def detect(self, ctx) -> DetectorOutput:
        from privaudit.data import to_uint8
        from privaudit.reports.html import png_data_uri

        extractor = ctx.feature(self.features)
        index = member_index(ctx, extractor)
        k = min(self.k, ctx.members.__len__())
        samples = ctx.samples(n=self.n_samples, steps=self.steps, sampler=self.sampler)
        d, nn = search(index, extractor, samples, k)
        dh = np.concatenate([search(index, extractor, x, k)[0] for _, x in ctx.holdout.batches(1024)])
        threshold = float(np.quantile(dh[:, 0], self.quantile))
        copy = d[:, 0] < threshold
        carlini = d[:, 0] / (self.alpha * d.mean(1)) <= 1
        carlini_h = dh[:, 0] / (self.alpha * dh.mean(1)) <= 1
        ratio = d[:, 0] / np.maximum(d[:, 1], 1e-12) < 1 / 3 if k > 1 else np.zeros(len(d), bool)
        n = len(d)
        frac = lambda m: Metric(float(m.mean()), proportion_ci(int(m.sum()), len(m)))
        metrics = {"copy_fraction": frac(copy), "carlini_fraction": frac(carlini),
                   "carlini_holdout_fraction": frac(carlini_h), "ratio_fraction": frac(ratio)}
        member_ids = np.asarray(ctx.members.ids)
        counts = pd.Series(member_ids[nn[copy, 0]]).value_counts()
        order = np.argsort(d[:, 0])[: self.n_pairs]
        s8 = to_uint8(samples[order])
        m8 = ctx.members.uint8(nn[order, 0])
        pairs = [{"sample": int(i), "member_id": str(member_ids[nn[i, 0]]), "distance": float(d[i, 0]),
                  "copy": bool(copy[i]), "sample_png": png_data_uri(s, scale=4), "member_png": png_data_uri(m, scale=4)}
                 for i, s, m in zip(order, s8, m8)]
        finding = (f"{copy.mean():.1%} of {n} generated samples are copies of members (closer to a member than "
                   f"{1 - self.quantile:.0%} of real unseen images are); {len(counts)} distinct members copied. "
                   f"Carlini's ratio flags {carlini.mean():.1%} of samples and {carlini_h.mean():.1%} of real holdout images.")
        table = pd.DataFrame({"sample": np.arange(n), "nearest_member": member_ids[nn[:, 0]], "distance": d[:, 0],
                              "second_distance": d[:, 1] if k > 1 else np.nan, "copy": copy, "carlini_copy": carlini,
                              "ratio_copy": ratio})
        details = {"false_positive_rate": self.quantile, "threshold": threshold, "features": self.features,
                   "most_copied": [{"member_id": k_, "count": int(v)} for k_, v in counts.head(20).items()],
                   "pairs": pairs,
                   "nearest_distance": {"samples": np.percentile(d[:, 0], [1, 5, 25, 50, 75]).round(4).tolist(),
                                        "holdout": np.percentile(dh[:, 0], [1, 5, 25, 50, 75]).round(4).tolist(),
                                        "percentiles": [1, 5, 25, 50, 75]}}
        return DetectorOutput(metrics=metrics, finding=finding, details=details, table=table)
