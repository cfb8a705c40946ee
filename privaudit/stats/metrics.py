"""Membership metrics with confidence intervals that stay honest on small sets, and seeded calibration splits.

TPR at a fixed FPR follows the low-FPR convention of Carlini et al. (LiRA): the largest
TPR among ROC points whose FPR does not exceed the target, with every ROC point kept
(``drop_intermediate=False``). A TPR at FPR f needs at least 1/f holdout images to be
more than a statement about one image; smaller sets are flagged ``reliable=False``.

Intervals (95%). A percentile bootstrap cannot leave 100%: with 32 members all found, every
resample finds all, and the interval collapses to [1, 1]. So:

- proportions (copy fraction, precision, recall, and TPR = members found / members) use the
  exact Clopper-Pearson interval, which never collapses to a point for a finite count;
- TPR at FPR: the Clopper-Pearson interval of the members found, widened to include the
  bootstrap interval (which also carries the threshold's variability over holdout images);
- balanced accuracy = (TPR + TNR) / 2: the mean of the two proportions' 97.5% Clopper-Pearson
  bounds (members and holdout are independent, so both hold jointly with >= 95% probability);
- AUC: a normal interval with the Hanley-McNeil (1982) standard error, the variance taken with
  the AUC half a member/holdout pair away from 0 and 1 (so AUC 1.0 on 32 x 32 images still gets
  an interval of about 0.99 to 1.0), widened to include the bootstrap interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split

from privaudit.io.results import Metric

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


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials (conservative: coverage >= level)."""
    if n <= 0:
        return (0.0, 1.0)
    from scipy.stats import beta

    a = 1 - level
    lo = 0.0 if k <= 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def auc_interval(auc: float, n_pos: int, n_neg: int, level: float = 0.95) -> tuple[float, float]:
    """Hanley-McNeil interval; the variance is taken with the AUC half a pair away from 0 and 1, so it never collapses."""
    from scipy.stats import norm

    eps = 0.5 / (n_pos * n_neg)
    a = min(max(auc, eps), 1 - eps)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = norm.ppf((1 + level) / 2) * math.sqrt(max(var, 0.0))
    return float(max(0.0, min(auc, a) - half)), float(min(1.0, max(auc, a) + half))


def _hull(*intervals: tuple[float, float]) -> tuple[float, float]:
    return float(min(i[0] for i in intervals)), float(max(i[1] for i in intervals))


def membership_metrics(member_scores: np.ndarray, holdout_scores: np.ndarray, *, threshold: float | None = None,
                       fpr_levels=FPR_LEVELS, n_boot: int = 1000, seed: int = 0) -> dict[str, Metric]:
    """AUC, TPR at each FPR level and (given a calibrated threshold) balanced accuracy."""
    m, h = np.asarray(member_scores, float), np.asarray(holdout_scores, float)
    if len(m) < 2 or len(h) < 2:
        raise ValueError("membership metrics need at least 2 members and 2 holdout images")
    y, s = np.r_[np.ones(len(m)), np.zeros(len(h))], np.r_[m, h]
    boot: dict[str, Any] = dict(members=m, holdout=h, n_boot=n_boot, seed=seed)
    auc = float(roc_auc_score(y, s))
    out = {"auc": Metric(auc, _hull(auc_interval(auc, len(m), len(h)), _bootstrap(roc_auc_score, **boot)))}
    for f in fpr_levels:
        fn = lambda yy, ss, f=f: tpr_at_fpr(yy, ss, f)
        enough = len(h) * f >= 1
        tpr = fn(y, s)
        ci = _hull(clopper_pearson(int(round(tpr * len(m))), len(m)), _bootstrap(fn, **boot))
        out[f"tpr_at_fpr_{f:g}"] = Metric(
            tpr, ci, reliable=enough,
            note="" if enough else f"{len(h)} holdout images cannot resolve FPR {f:g} (needs >= {int(np.ceil(1 / f))})")
    if threshold is not None:
        k_m, k_h = int((m >= threshold).sum()), int((h < threshold).sum())
        (a0, a1), (b0, b1) = clopper_pearson(k_m, len(m), 0.975), clopper_pearson(k_h, len(h), 0.975)
        out["balanced_accuracy"] = Metric(balanced_accuracy(y, s, threshold), ((a0 + b0) / 2, (a1 + b1) / 2),
                                          note="threshold fitted on the calibration split")
    return out


def roc_points(member_scores: np.ndarray, holdout_scores: np.ndarray) -> dict[str, list[float]]:
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(holdout_scores))]
    fpr, tpr, _ = roc_curve(y, np.r_[member_scores, holdout_scores], drop_intermediate=False)
    return {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval for a fraction k/n: exact (Clopper-Pearson), never a point for finite n."""
    return clopper_pearson(k, n, level)


def ratio_ci(k1: int, n1: int, k0: int, n0: int, level: float = 0.95) -> tuple[float, float, float]:
    """(ratio, low, high) of two independent proportions (k1/n1) / (k0/n0): the Katz log interval
    (Katz et al., Biometrics 1978); a zero count is taken as 0.5 (and a full one as n - 0.5 in the
    standard error), so the interval stays finite and never collapses to a point."""
    from scipy.stats import norm

    if min(n1, n0) < 1 or not (0 <= k1 <= n1 and 0 <= k0 <= n0):
        raise ValueError(f"ratio_ci needs 0 <= k <= n and n >= 1, got {k1}/{n1} and {k0}/{n0}")
    if k0 == 0 and k1 == 0:
        return float("nan"), 0.0, float("inf")  # nothing to compare: say so, never a point
    a, b = (k1 or 0.5), (k0 or 0.5)
    ratio = (k1 / n1) / (b / n0)
    # half a count off a full one too (k = n), so a ratio of two perfect scores still gets an interval
    sa, sb = min(a, n1 - 0.5) if n1 > 1 else a, min(b, n0 - 0.5) if n0 > 1 else b
    se = math.sqrt(max(1 / sa - 1 / n1 + 1 / sb - 1 / n0, 0.0))
    z = float(norm.ppf(0.5 + level / 2))
    centre = math.log((a / n1) / (b / n0))
    return ratio, math.exp(centre - z * se), math.exp(centre + z * se)


def calibration_split(n: int, *, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (calibration, evaluation) index arrays for a set of size ``n``."""
    idx = np.arange(n)
    if n < 4:
        raise ValueError(f"need at least 4 images to split into calibration and evaluation, got {n}")
    cal, ev = train_test_split(idx, train_size=fraction, random_state=seed, shuffle=True)
    return np.sort(cal), np.sort(ev)
