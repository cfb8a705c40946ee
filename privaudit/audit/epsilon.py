"""Empirical epsilon: a lower bound on (eps, delta) from a membership attack's ROC.

An (eps, delta)-DP training algorithm forces every membership test, at every threshold, to obey

    TPR <= e^eps FPR + delta      and      1 - FPR <= e^eps (1 - TPR) + delta,

so an attack that reaches (TPR, FPR) shows eps >= max(ln((TPR - delta) / FPR),
ln((1 - FPR - delta) / (1 - TPR))). Counts on finite sets only estimate TPR and FPR, so
(Jagielski et al. 2020, "Auditing differentially private machine learning") the bound uses
the one-sided Clopper-Pearson lower bound of TPR and upper bound of FPR:

    eps_hat = max(ln((TPR_lo - delta) / FPR_hi), ln((1 - FPR_hi - delta) / (1 - TPR_lo)), 0).

``confidence`` (default 0.95) holds jointly: each of the two bounds is taken at
1 - (1 - confidence) / 2 (Bonferroni), so eps_hat is a lower bound with probability >= 95%.

Which threshold: choosing it on the same data the bound is computed from would pick the
luckiest of many thresholds and overstate eps. ``empirical_epsilon`` chooses the threshold
that maximises the bound on the calibration split and reports the bound at that threshold on
the disjoint evaluation split (``max_over_thresholds`` gives the in-sample maximum over an ROC
table, e.g. for hand checks; it is optimistic when the table is the evaluation data).

What it means: a lower bound on the DP epsilon of the training procedure *only* when members
were assigned at random from a candidate pool (canaries: a coin decided which images trained).
Otherwise members and holdout may differ for other reasons (distribution shift, duplicates) and
eps_hat measures distinguishability of the two sets through the model, not a DP guarantee: the
``label`` field says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privaudit.api import AuditSettings
from privaudit.stats.metrics import clopper_pearson

DP_LABEL = "DP lower bound (members assigned at random)"
DIST_LABEL = "distinguishability (not a DP bound: members were not assigned at random)"


def _bounds(tp: int, n_pos: int, fp: int, n_neg: int, confidence: float) -> tuple[float, float]:
    """(TPR lower, FPR upper), each one-sided at 1 - (1 - confidence) / 2."""
    one_sided = 1 - (1 - confidence) / 2
    two_sided = 2 * one_sided - 1  # a two-sided interval at this level has one_sided on each side
    tpr_lo = clopper_pearson(tp, n_pos, two_sided)[0]
    fpr_hi = clopper_pearson(fp, n_neg, two_sided)[1]
    return tpr_lo, fpr_hi


def epsilon_bound(tpr: float, fpr: float, *, delta: float = 0.0) -> float:
    """max(ln((TPR - delta) / FPR), ln((1 - FPR - delta) / (1 - TPR)), 0) for given rates (inf where a
    denominator is 0 and its numerator is positive)."""
    best = 0.0
    for num, den in ((tpr - delta, fpr), (1 - fpr - delta, 1 - tpr)):
        if num <= 0:
            continue
        best = max(best, math.inf if den <= 0 else math.log(num / den))
    return best


def epsilon_at(tp: int, n_pos: int, fp: int, n_neg: int, *, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The eps lower bound from ``tp`` of ``n_pos`` members and ``fp`` of ``n_neg`` non-members flagged."""
    if not (0 <= tp <= n_pos and 0 <= fp <= n_neg) or n_pos < 1 or n_neg < 1:
        raise ValueError(f"counts out of range: tp={tp}/{n_pos}, fp={fp}/{n_neg}")
    tpr_lo, fpr_hi = _bounds(tp, n_pos, fp, n_neg, confidence)
    return epsilon_bound(tpr_lo, fpr_hi, delta=delta)


def _counts(members: np.ndarray, holdout: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, members flagged, holdout flagged) for every distinct score, flag = score >= threshold."""
    thr = np.unique(np.r_[members, holdout])[::-1]
    m, h = np.sort(members), np.sort(holdout)
    tp = len(m) - np.searchsorted(m, thr, side="left")
    fp = len(h) - np.searchsorted(h, thr, side="left")
    return thr, tp, fp


def max_over_thresholds(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, *, delta: float = 0.0,
                        confidence: float = 0.95) -> tuple[float, int]:
    """(largest bound, its row) over an ROC table of counts (in-sample: optimistic on evaluation data)."""
    vals = [epsilon_at(int(a), n_pos, int(b), n_neg, delta=delta, confidence=confidence) for a, b in zip(tp, fp)]
    i = int(np.argmax(vals)) if vals else 0
    return (float(vals[i]) if vals else 0.0), i


@dataclass(frozen=True)
class EpsilonEstimate:
    value: float  # eps_hat on the evaluation split, at the calibration-chosen threshold
    delta: float
    confidence: float
    threshold: float
    tpr_lower: float
    fpr_upper: float
    counts: tuple[int, int, int, int]  # (members flagged, members, holdout flagged, holdout) on evaluation
    label: str

    def to_json(self) -> dict:
        return {"value": round(self.value, 6), "delta": self.delta, "confidence": self.confidence,
                "threshold": self.threshold, "tpr_lower": round(self.tpr_lower, 6),
                "fpr_upper": round(self.fpr_upper, 6), "counts": list(self.counts), "label": self.label,
                "randomized_membership": self.label == DP_LABEL}


def empirical_epsilon(cal_members: np.ndarray, cal_holdout: np.ndarray, ev_members: np.ndarray,
                      ev_holdout: np.ndarray, *, delta: float = 1e-5, confidence: float = 0.95,
                      randomized: bool = False) -> EpsilonEstimate:
    """Threshold chosen on the calibration scores, bound computed on the evaluation scores."""
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    cm, ch = np.asarray(cal_members, float), np.asarray(cal_holdout, float)
    em, eh = np.asarray(ev_members, float), np.asarray(ev_holdout, float)
    if min(len(cm), len(ch), len(em), len(eh)) < 1:
        raise ValueError("empirical epsilon needs members and holdout in both the calibration and evaluation splits")
    if not all(np.isfinite(a).all() for a in (cm, ch, em, eh)):
        raise ValueError("empirical epsilon needs finite scores (NaN or infinite values found)")
    thr, tp, fp = _counts(cm, ch)
    _, i = max_over_thresholds(tp, fp, len(cm), len(ch), delta=delta, confidence=confidence)
    t = float(thr[i])
    k_m, k_h = int((em >= t).sum()), int((eh >= t).sum())
    tpr_lo, fpr_hi = _bounds(k_m, len(em), k_h, len(eh), confidence)
    return EpsilonEstimate(value=epsilon_bound(tpr_lo, fpr_hi, delta=delta), delta=delta, confidence=confidence,
                           threshold=t, tpr_lower=tpr_lo, fpr_upper=fpr_hi, counts=(k_m, len(em), k_h, len(eh)),
                           label=DP_LABEL if randomized else DIST_LABEL)


def epsilon_details(sm: np.ndarray, sh: np.ndarray, cal_m: np.ndarray, cal_h: np.ndarray, ev_m: np.ndarray,
                    ev_h: np.ndarray, *, settings: AuditSettings) -> dict:
    """eps_hat (privaudit.audit.epsilon): threshold from the calibration split, bound on the evaluation split."""
    from privaudit.audit.epsilon import empirical_epsilon

    return empirical_epsilon(sm[cal_m], sh[cal_h], sm[ev_m], sh[ev_h], delta=settings.epsilon_delta,
                             randomized=settings.randomized_membership).to_json()


def epsilon_summary(plugins: list[dict]) -> dict | None:
    """The largest eps_hat over the attacks that ran, with its label and caveat (None when no attack gave one)."""
    rows = [(p["details"]["epsilon"], p["name"]) for p in plugins
            if p.get("kind") == "attack" and p.get("status") == "ok" and isinstance(p.get("details", {}).get("epsilon"), dict)]
    if not rows:
        return None
    best, name = max(rows, key=lambda r: r[0]["value"])
    note = (f"largest of {len(rows)} attacks' bounds; each holds with {best['confidence']:.0%} confidence on its own, "
            "so the largest of several is slightly optimistic")
    return {**best, "attack": name, "by_attack": {n: e["value"] for e, n in rows}, "note": note}
