"""Membership metrics with bootstrap confidence intervals, and seeded calibration splits.

TPR at a fixed FPR follows the low-FPR convention of Carlini et al. (LiRA): the largest
TPR among ROC points whose FPR does not exceed the target, with every ROC point kept
(``drop_intermediate=False``). A TPR at FPR f needs at least 1/f holdout images to be
more than a statement about one image; smaller sets are flagged ``reliable=False``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split

from privaudit.results import Metric

FPR_LEVELS = (0.01, 0.001)


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, fpr_level: float) -> float:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    ok = np.flatnonzero(fpr <= fpr_level)
    return float(tpr[ok[-1]]) if len(ok) else 0.0


def threshold_at_balanced(y: np.ndarray, s: np.ndarray) -> float:
    """The threshold maximising balanced accuracy (fitted on calibration data)."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    best = float(thr[np.argmax(tpr - fpr)])
    # roc_curve's first threshold is +inf (nothing flagged); keep the same decisions with a finite
    # number so results.json stays valid JSON.
    return best if np.isfinite(best) else float(np.nextafter(np.max(s), np.inf))


def balanced_accuracy(y: np.ndarray, s: np.ndarray, threshold: float) -> float:
    pred = s >= threshold
    return float(0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean()))


def _bootstrap(fn, members: np.ndarray, holdout: np.ndarray, *, n_boot: int, seed: int, level: float = 0.95):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(len(members)), np.zeros(len(holdout))]
    vals = np.empty(n_boot)
    for b in range(n_boot):
        m = members[rng.integers(len(members), size=len(members))]
        h = holdout[rng.integers(len(holdout), size=len(holdout))]
        vals[b] = fn(y, np.r_[m, h])
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def membership_metrics(member_scores: np.ndarray, holdout_scores: np.ndarray, *, threshold: float | None = None,
                       fpr_levels=FPR_LEVELS, n_boot: int = 1000, seed: int = 0) -> dict[str, Metric]:
    """AUC, TPR at each FPR level and (given a calibrated threshold) balanced accuracy."""
    m, h = np.asarray(member_scores, float), np.asarray(holdout_scores, float)
    if len(m) < 2 or len(h) < 2:
        raise ValueError("membership metrics need at least 2 members and 2 holdout images")
    y, s = np.r_[np.ones(len(m)), np.zeros(len(h))], np.r_[m, h]
    boot = dict(members=m, holdout=h, n_boot=n_boot, seed=seed)
    out = {"auc": Metric(float(roc_auc_score(y, s)), _bootstrap(roc_auc_score, **boot))}
    for f in fpr_levels:
        fn = lambda yy, ss, f=f: tpr_at_fpr(yy, ss, f)
        enough = len(h) * f >= 1
        out[f"tpr_at_fpr_{f:g}"] = Metric(
            fn(y, s), _bootstrap(fn, **boot), reliable=enough,
            note="" if enough else f"{len(h)} holdout images cannot resolve FPR {f:g} (needs >= {int(np.ceil(1 / f))})")
    if threshold is not None:
        fn = lambda yy, ss: balanced_accuracy(yy, ss, threshold)
        out["balanced_accuracy"] = Metric(fn(y, s), _bootstrap(fn, **boot), note="threshold fitted on the calibration split")
    return out


def roc_points(member_scores: np.ndarray, holdout_scores: np.ndarray) -> dict[str, list[float]]:
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(holdout_scores))]
    fpr, tpr, _ = roc_curve(y, np.r_[member_scores, holdout_scores], drop_intermediate=False)
    return {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a fraction k/n."""
    if n == 0:
        return (0.0, 1.0)
    from scipy.stats import norm

    z = norm.ppf((1 + level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at k = 0 (k = n) the bound is exactly 0 (1); the formula leaves rounding error there
    return (0.0 if k == 0 else float(max(0.0, centre - half)), 1.0 if k == n else float(min(1.0, centre + half)))


def calibration_split(n: int, *, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (calibration, evaluation) index arrays for a set of size ``n``."""
    idx = np.arange(n)
    if n < 4:
        raise ValueError(f"need at least 4 images to split into calibration and evaluation, got {n}")
    cal, ev = train_test_split(idx, train_size=fraction, random_state=seed, shuffle=True)
    return np.sort(cal), np.sort(ev)
