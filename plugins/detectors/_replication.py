"""Copy criteria for replication detectors: pure numpy functions on nearest-member results.

Each criterion turns nearest-member statistics of generated samples into copy flags, and
the same rule applied to real holdout images (which, by construction, copy nothing) gives
its false-positive rate. Calibrated criteria fit a threshold on the holdout; their
holdout rate is then measured out of sample (2-fold cross-fitting), never on the images
the threshold was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privaudit.api import proportion_ci

PERCENTILES = (50, 75, 90, 95, 99)


@dataclass(frozen=True)
class Criterion:
    """One copy rule applied to samples and to the holdout (the null)."""

    name: str
    metric: str  # metric name for the samples' flagged fraction
    rule: str  # plain-language rule
    flags: np.ndarray  # (n_samples,) bool
    holdout_flags: np.ndarray  # (n_holdout,) bool, out of sample where the rule is fitted
    threshold: float | None
    calibrated: bool
    reference: str = ""
    note: str = ""

    @property
    def fraction(self) -> float:
        return float(self.flags.mean()) if len(self.flags) else 0.0

    @property
    def holdout_fpr(self) -> float:
        return float(self.holdout_flags.mean()) if len(self.holdout_flags) else 0.0

    def summary(self) -> dict:
        k, n = int(self.flags.sum()), len(self.flags)
        kh, nh = int(self.holdout_flags.sum()), len(self.holdout_flags)
        return {"name": self.name, "metric": self.metric, "rule": self.rule, "calibrated": self.calibrated,
                "threshold": None if self.threshold is None or not np.isfinite(self.threshold) else float(self.threshold),
                "fraction": self.fraction, "ci": list(proportion_ci(k, n)), "flagged": k, "n": n,
                "holdout_fpr": self.holdout_fpr, "holdout_fpr_ci": list(proportion_ci(kh, nh)),
                "holdout_flagged": kh, "holdout_n": nh, "reference": self.reference, "note": self.note}


def below_quantile(null: np.ndarray, q: float) -> float:
    """The q-quantile of the null statistic: values strictly below it are flagged."""
    null = np.asarray(null, float)
    null = null[np.isfinite(null)]
    return float(np.quantile(null, q)) if len(null) else -np.inf


def crossfit_flags(null: np.ndarray, q: float, *, seed: int = 0) -> np.ndarray:
    """Out-of-sample flags for the null: each half is judged by the threshold fitted on the other."""
    null = np.asarray(null, float)
    order = np.random.default_rng(seed).permutation(len(null))
    a, b = order[: len(null) // 2], order[len(null) // 2 :]
    flags = np.zeros(len(null), bool)
    if len(a) and len(b):
        flags[a] = null[a] < below_quantile(null[b], q)
        flags[b] = null[b] < below_quantile(null[a], q)
    return flags


def calibrated(name: str, metric: str, stat: np.ndarray, null: np.ndarray, *, q: float, seed: int,
               what: str, reference: str = "") -> Criterion:
    """Flag samples whose ``stat`` lies below the q-quantile of the holdout's ``null``."""
    thr = below_quantile(null, q)
    return Criterion(name, metric, f"{what} below the {q:.0%} quantile of real holdout images' ({thr:.4g})",
                     np.asarray(stat) < thr, crossfit_flags(null, q, seed=seed), thr, True, reference)


def carlini_ratio(d: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Carlini et al. 2023: d(x, nearest) / (alpha * mean d(x, k nearest)); <= 1 is a copy."""
    d = np.asarray(d, float)
    denom = alpha * d.mean(1)
    return np.divide(d[:, 0], denom, out=np.zeros(len(d)), where=denom > 0)


def neighbour_ratio(d: np.ndarray) -> np.ndarray:
    """Nearest / second-nearest member distance (1 where there is no second member)."""
    d = np.asarray(d, float)
    if d.shape[1] < 2:
        return np.ones(len(d))
    return np.divide(d[:, 0], d[:, 1], out=np.zeros(len(d)), where=d[:, 1] > 0)


def tile_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def tiles(x: np.ndarray, grid: int) -> list[np.ndarray]:
    """(n, C, H, W) images -> grid*grid arrays (n, C*h*w), row-major tile order."""
    x = np.asarray(x, np.float32)
    return [np.ascontiguousarray(x[:, :, r0:r1, c0:c1].reshape(len(x), -1))
            for r0, r1 in tile_bounds(x.shape[2], grid) for c0, c1 in tile_bounds(x.shape[3], grid)]


def tile_statistic(d_samples: np.ndarray, d_holdout: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile nearest-member distances (n, T) -> the tiled statistic for samples and holdout.

    Each tile's distance is divided by the median of the holdout's distance for that tile
    (so a tile position is measured against how close unseen images come there), and the
    statistic is the minimum over tiles: the best-matching tile, i.e. the maximum over
    tiles of copy evidence. Tiles whose holdout median is 0 (blank backgrounds that every
    image matches) carry no evidence and are left out. Returns (samples, holdout, used).
    """
    scale = np.median(np.asarray(d_holdout, float), axis=0)
    used = scale > 0
    if not used.any():
        return np.full(len(d_samples), np.inf), np.full(len(d_holdout), np.inf), used
    return ((np.asarray(d_samples, float)[:, used] / scale[used]).min(1),
            (np.asarray(d_holdout, float)[:, used] / scale[used]).min(1), used)


def drop_self(dist: np.ndarray, idx: np.ndarray, self_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own member (a member queried against all members); keeps k-1 columns."""
    n, k = idx.shape
    keep = np.ones((n, k), bool)
    hit = idx == np.asarray(self_index)[:, None]
    first = np.where(hit.any(1), hit.argmax(1), k - 1)  # not found (approximate search): drop the farthest
    keep[np.arange(n), first] = False
    return dist[keep].reshape(n, k - 1), idx[keep].reshape(n, k - 1)


def histogram(groups: dict[str, np.ndarray], *, bins: int = 30, lo: float | None = None,
              hi: float | None = None) -> dict:
    """Counts of several groups on shared edges (JSON-ready)."""
    vals = [np.asarray(v, float)[np.isfinite(v)] for v in groups.values() if len(v)]
    allv = np.concatenate(vals) if vals else np.zeros(1)
    lo = float(allv.min()) if lo is None else lo
    hi = float(allv.max()) if hi is None else hi
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    out = {"edges": edges.round(6).tolist()}
    for k, v in groups.items():
        v = np.asarray(v, float)
        out[k] = np.histogram(np.clip(v[np.isfinite(v)], lo, hi), edges)[0].tolist()
    return out


def percentiles(groups: dict[str, np.ndarray], ps=PERCENTILES) -> dict:
    out = {"percentiles": list(ps)}
    for k, v in groups.items():
        v = np.asarray(v, float)
        v = v[np.isfinite(v)]
        out[k] = np.percentile(v, ps).round(6).tolist() if len(v) else None
    return out


def duplicate_clusters(exact: np.ndarray, checked: np.ndarray, dist: np.ndarray, idx: np.ndarray, *,
                       threshold: float) -> np.ndarray:
    """Cluster label (0..) per member: members joined by identical pixels (``exact``: a label per member, equal
    for identical images) or by a neighbour distance below ``threshold`` (row i of ``dist``/``idx``: the other
    members nearest to member ``checked[i]``) share one connected cluster."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    exact = np.asarray(exact, np.int64)
    n, groups = len(exact), int(exact.max(initial=-1)) + 1
    r, c = np.nonzero(np.asarray(dist) < threshold) if np.asarray(dist).size else (np.zeros(0, int), np.zeros(0, int))
    # nodes: members 0..n-1, then one node per exact group; edges: member - its group, member - near member
    src = np.concatenate([np.arange(n), np.asarray(checked, np.int64)[r]])
    dst = np.concatenate([n + exact, np.asarray(idx, np.int64)[r, c] if len(r) else np.zeros(0, np.int64)])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n + groups, n + groups))
    _, labels = connected_components(graph, directed=False)
    return np.unique(labels[:n], return_inverse=True)[1]


def chance_weights(dist: np.ndarray, idx: np.ndarray, n_members: int, *, prior: float = 0.5) -> np.ndarray:
    """Where false copies fall: each member's share (summing to 1) of the unseen images that come near it.

    A sample that is no copy lands near a member as an unseen image would, so stray copies concentrate on
    typical images in dense regions (a plain "1" among digits), not evenly. Counts per member the holdout
    images (rows of ``dist``/``idx``: their nearest members) within the median holdout nearest-member
    distance of it (about 50 times more events than the 1% copy radius gives, so the shape is estimable),
    plus ``prior`` for members no unseen image came near."""
    dist, idx = np.asarray(dist, float), np.asarray(idx)
    w = np.full(n_members, float(prior))
    if dist.size:
        near = dist < np.median(dist[:, 0])
        hits = idx[near]
        w += np.bincount(hits[hits >= 0], minlength=n_members)[:n_members]
    return w / w.sum()
