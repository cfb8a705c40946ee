"""Severity rules: documented thresholds that turn metrics into a risk level.

Membership (worst case over attacks, on the evaluation split; chance is TPR = FPR):

- critical: TPR at 1% FPR >= 0.50 (half the members identified with 1 false alarm per 100)
- high:     TPR at 1% FPR >= 0.10 (10x chance), or AUC >= 0.80
- medium:   TPR at 1% FPR >= 0.03 (3x chance), or the AUC 95% interval lies above 0.55
- low:      otherwise

Replication (calibrated copy fraction: share of samples closer to a member than the
calibrated quantile of real unseen images):

- critical: copy fraction >= 0.25
- high:     copy fraction >= 0.05
- medium:   the copy fraction's 95% interval lies above the criterion's false-positive rate
- low:      otherwise

The overall verdict is the worst severity of any plugin; each rule that fired is listed.
"""

from __future__ import annotations

from privaudit.results import SEVERITIES, Metric

RULES_TEXT = __doc__


def membership_severity(metrics: dict[str, Metric]) -> tuple[str, list[str]]:
    tpr = metrics.get("tpr_at_fpr_0.01")
    auc = metrics.get("auc")
    t = tpr.value if tpr else 0.0
    if t >= 0.5:
        return "critical", [f"TPR at 1% FPR is {t:.2f} (>= 0.50): most members are identifiable with few false alarms"]
    if t >= 0.10:
        return "high", [f"TPR at 1% FPR is {t:.2f} (>= 0.10, ten times chance)"]
    if auc and auc.value >= 0.8:
        return "high", [f"AUC is {auc.value:.2f} (>= 0.80)"]
    if t >= 0.03:
        return "medium", [f"TPR at 1% FPR is {t:.2f} (>= 0.03, three times chance)"]
    if auc and auc.ci and auc.ci[0] > 0.55:
        return "medium", [f"AUC interval {auc.ci[0]:.2f}-{auc.ci[1]:.2f} lies above 0.55"]
    return "low", []


def replication_severity(metrics: dict[str, Metric], *, false_positive_rate: float) -> tuple[str, list[str]]:
    cf = metrics.get("copy_fraction")
    if cf is None:
        return "info", []
    if cf.value >= 0.25:
        return "critical", [f"{cf.value:.0%} of samples are copies of members (>= 25%)"]
    if cf.value >= 0.05:
        return "high", [f"{cf.value:.1%} of samples are copies of members (>= 5%)"]
    if cf.ci and cf.ci[0] > false_positive_rate:
        return "medium", [f"copy fraction interval {cf.ci[0]:.1%}-{cf.ci[1]:.1%} lies above the criterion's "
                          f"false-positive rate {false_positive_rate:.1%}"]
    return "low", []


def worst(severities) -> str:
    return max(severities, key=SEVERITIES.index, default="info")
