"""Empirical epsilon against hand-computed values on small ROC tables."""

import math

import numpy as np
import pytest

from privaudit.audit.epsilon import (
    DIST_LABEL,
    DP_LABEL,
    empirical_epsilon,
    epsilon_at,
    epsilon_bound,
    max_over_thresholds,
)


def test_bound_on_exact_rates():
    # TPR 0.5 at FPR 0.1: ln(0.5 / 0.1) = ln 5 beats ln(0.9 / 0.5)
    assert epsilon_bound(0.5, 0.1) == pytest.approx(math.log(5))
    # the second inequality wins for a low-TPR, zero-ish FPR test: ln((1 - 0.01) / (1 - 0.9))
    assert epsilon_bound(0.9, 0.01) == pytest.approx(max(math.log(90), math.log(0.99 / 0.1)))
    assert epsilon_bound(0.5, 0.1, delta=0.2) == pytest.approx(math.log(3))
    assert epsilon_bound(0.3, 0.3) == 0.0  # chance: nothing shown
    assert epsilon_bound(0.1, 0.5) == 0.0  # worse than chance is not evidence either


def test_clopper_pearson_all_found_closed_form():
    # 10 of 10 members flagged, 0 of 10 holdout: one-sided 97.5% bounds are 0.025^(1/10) and 1 - 0.025^(1/10)
    lo = 0.025 ** (1 / 10)
    assert epsilon_at(10, 10, 0, 10) == pytest.approx(math.log(lo / (1 - lo)), rel=1e-6)
    assert epsilon_at(10, 10, 0, 10) == pytest.approx(0.8067, abs=1e-3)
    assert epsilon_at(10, 10, 0, 10, delta=0.1) == pytest.approx(math.log((lo - 0.1) / (1 - lo)), rel=1e-6)
    assert epsilon_at(0, 10, 0, 10) == 0.0
    # more images, tighter bounds, larger epsilon: 100/100 vs 0/100
    lo100 = 0.025 ** (1 / 100)
    assert epsilon_at(100, 100, 0, 100) == pytest.approx(math.log(lo100 / (1 - lo100)), rel=1e-6)
    assert epsilon_at(100, 100, 0, 100) > epsilon_at(10, 10, 0, 10)


def test_max_over_small_roc_table():
    # a 3-threshold ROC table on 10 members / 10 holdout images
    tp, fp = np.array([4, 8, 10]), np.array([0, 1, 10])
    best, row = max_over_thresholds(tp, fp, 10, 10)
    by_hand = [epsilon_at(4, 10, 0, 10), epsilon_at(8, 10, 1, 10), 0.0]
    assert best == pytest.approx(max(by_hand)) and row == int(np.argmax(by_hand))
    assert epsilon_at(10, 10, 10, 10) == 0.0


def test_threshold_from_calibration_bound_on_evaluation():
    rng = np.random.default_rng(0)
    cal_m, cal_h = rng.normal(3, 1, 50), rng.normal(0, 1, 50)
    ev_m, ev_h = rng.normal(3, 1, 50), rng.normal(0, 1, 50)
    est = empirical_epsilon(cal_m, cal_h, ev_m, ev_h, delta=0.0)
    k_m, n_m, k_h, n_h = est.counts
    assert (k_m, k_h) == (int((ev_m >= est.threshold).sum()), int((ev_h >= est.threshold).sum()))
    assert est.value == pytest.approx(epsilon_at(k_m, n_m, k_h, n_h))
    assert est.value > 1.0 and est.label == DIST_LABEL
    assert empirical_epsilon(cal_m, cal_h, ev_m, ev_h, randomized=True).label == DP_LABEL
    # no signal: the bound stays at (or very near) zero
    null = empirical_epsilon(*(rng.normal(0, 1, 50) for _ in range(4)), delta=1e-5)
    assert null.value < 0.5


def test_non_finite_or_empty_scores_are_refused():
    with pytest.raises(ValueError, match="finite"):
        empirical_epsilon(np.array([1.0, np.nan]), np.zeros(3), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="both"):
        empirical_epsilon(np.zeros(0), np.zeros(3), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="out of range"):
        epsilon_at(11, 10, 0, 10)


@pytest.mark.parametrize("bad", [dict(delta=-0.1), dict(delta=1.0), dict(confidence=1.0)])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        empirical_epsilon(np.ones(3), np.zeros(3), np.ones(3), np.zeros(3), **bad)


def test_cli_refuses_bad_delta(tmp_path, capsys):
    from privaudit.cli import main

    rc = main(["scan", str(tmp_path / "model"), "--members", str(tmp_path / "m"), "--holdout", str(tmp_path / "h"),
               "--out", str(tmp_path / "out"), "--delta", "-1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--delta" in err[0]
