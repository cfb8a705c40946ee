"""The documented severity rules."""

from privaudit.io.results import Metric
from privaudit.io.verdict import membership_severity, replication_severity


def m(value, lo, hi):
    return Metric(value, (lo, hi))


def test_strong_attack_is_critical():
    level, rules = membership_severity({"auc": m(1.0, 1.0, 1.0), "tpr_at_fpr_0.01": m(1.0, 1.0, 1.0)})
    assert level == "critical" and "TPR at 1% FPR is 1.00" in rules[0]


def test_one_lucky_member_does_not_raise_the_level():
    # 1 of 32 evaluation members found at 1% FPR: 3.1%, but the interval reaches 0.
    level, _ = membership_severity({"auc": m(0.54, 0.45, 0.63), "tpr_at_fpr_0.01": m(0.031, 0.0, 0.1)})
    assert level == "low"


def test_auc_rules_need_an_interval_above_chance():
    assert membership_severity({"auc": m(0.82, 0.52, 0.95), "tpr_at_fpr_0.01": m(0.0, 0.0, 0.0)})[0] == "high"
    assert membership_severity({"auc": m(0.82, 0.48, 0.95), "tpr_at_fpr_0.01": m(0.0, 0.0, 0.0)})[0] == "low"
    assert membership_severity({"auc": m(0.62, 0.57, 0.67), "tpr_at_fpr_0.01": m(0.0, 0.0, 0.0)})[0] == "medium"


def test_replication_levels():
    assert replication_severity({"copy_fraction": m(0.9, 0.85, 0.93)}, false_positive_rate=0.01)[0] == "critical"
    assert replication_severity({"copy_fraction": m(0.06, 0.04, 0.09)}, false_positive_rate=0.01)[0] == "high"
    assert replication_severity({"copy_fraction": m(0.03, 0.015, 0.05)}, false_positive_rate=0.01)[0] == "medium"
    assert replication_severity({"copy_fraction": m(0.01, 0.002, 0.03)}, false_positive_rate=0.01)[0] == "low"
