"""Data checks on constructed cases: leaked copies in the holdout, and distribution shift."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privaudit.data.checks import blind_baseline, exact_duplicates, near_duplicates, run_checks
from privaudit.data.sets import ImageSet
from privaudit.stats.metrics import balanced_accuracy, threshold_at_balanced


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits as uint8 (N, 1, 8, 8) in 0..255, with labels, seeded order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255 / 16)), 0, 255).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    return images[order], d.target[order]


def _sets(members: np.ndarray, holdout: np.ndarray) -> tuple[ImageSet, ImageSet]:
    return ImageSet.from_array(members, name="members"), ImageSet.from_array(holdout, name="holdout")


def test_random_split_passes_every_check(digits):
    images, _ = digits
    m, h = _sets(images[:150], images[150:300])
    checks = {c.name: c for c in run_checks(m, h, seed=0)}
    assert set(checks) == {"exact_duplicates", "near_duplicates", "blind_baseline"}
    assert all(c.ok for c in checks.values()), [c.message for c in checks.values()]
    auc = checks["blind_baseline"].details["auc"]
    assert auc["ci"][0] <= 0.5 <= auc["ci"][1] + 0.05
    json.dumps([c.to_json() for c in checks.values()])  # results.json must take them as they are


def test_exact_member_copies_in_holdout_are_flagged(digits):
    images, _ = digits
    members, holdout = images[:100].copy(), images[100:200].copy()
    copied = [3, 17, 42]
    holdout[[5, 50, 99]] = members[copied]
    m, h = _sets(members, holdout)
    res = exact_duplicates(m, h)
    assert not res.ok and res.details["count"] == 3
    assert sorted(res.details["pairs"]) == sorted([(m.ids[i], h.ids[j]) for i, j in zip(copied, [5, 50, 99])])
    near = near_duplicates(m, h)  # an exact copy is also a near copy (distance 0)
    assert not near.ok and near.details["count"] == 3 and near.details["min_rms"] == 0


def test_slightly_noised_member_copies_are_near_not_exact(digits):
    images, _ = digits
    members, holdout = images[:100].copy(), images[100:200].copy()
    rng = np.random.default_rng(1)
    src, dst = [0, 9, 33, 71], [1, 2, 60, 80]
    noisy = members[src].astype(int) + rng.integers(-3, 4, size=members[src].shape)  # ~1% RMS
    holdout[dst] = np.clip(noisy, 0, 255).astype(np.uint8)
    assert not any((holdout[j] == members[i]).all() for i, j in zip(src, dst))
    m, h = _sets(members, holdout)
    assert exact_duplicates(m, h).ok
    near = near_duplicates(m, h)
    assert not near.ok and near.details["count"] == 4
    assert {(a, b) for a, b, _ in near.details["pairs"]} == {(m.ids[i], h.ids[j]) for i, j in zip(src, dst)}
    assert all(r < 0.02 for _, _, r in near.details["pairs"])


def test_brightened_holdout_is_flagged_as_shift(digits):
    images, _ = digits
    brighter = np.clip(images[150:300].astype(int) + 40, 0, 255).astype(np.uint8)
    m, h = _sets(images[:150], brighter)
    res = blind_baseline(m, h, seed=0)
    assert not res.ok and res.details["auc"]["ci"][0] > 0.5
    assert "confounded" in res.message


def test_holdout_of_other_digit_classes_is_flagged_as_shift(digits):
    images, labels = digits
    m, h = _sets(images[labels < 5][:150], images[labels >= 5][:150])
    res = blind_baseline(m, h, seed=0)
    assert not res.ok and res.details["auc"]["value"] > 0.8


def test_blind_baseline_downsamples_large_images_and_still_sees_shift():
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, size=(160, 3, 32, 32))
    members = base[:80].astype(np.uint8)
    holdout = np.clip(base[80:] + 25, 0, 255).astype(np.uint8)
    res = blind_baseline(*_sets(members, holdout), seed=0, max_dim=1024)
    assert not res.ok
    assert "972 pixel values" in res.details["model"]  # 3 x 18 x 18 <= 1024
    same = blind_baseline(*_sets(members, base[80:].astype(np.uint8)), seed=0, max_dim=1024)
    assert same.ok


def test_blind_baseline_with_tiny_sets_does_not_crash(digits):
    images, _ = digits
    res = blind_baseline(*_sets(images[:3], images[3:40]), seed=0)
    assert res.details["images"] == [3, 37]


def test_calibrated_threshold_is_finite_when_scores_are_uninformative():
    y = np.r_[np.ones(4), np.zeros(4)]
    s = np.r_[np.zeros(4), np.ones(4)]  # members score lower: no threshold beats flagging nothing
    thr = threshold_at_balanced(y, s)
    assert np.isfinite(thr) and balanced_accuracy(y, s, thr) == 0.5


def test_proportion_interval_is_exact_at_the_ends():
    from privaudit.stats.metrics import proportion_ci

    assert proportion_ci(0, 50)[0] == 0.0 and 0 < proportion_ci(0, 50)[1] < 0.1
    assert proportion_ci(50, 50)[1] == 1.0 and 0.9 < proportion_ci(50, 50)[0] < 1
    lo, hi = proportion_ci(10, 100)
    assert 0.045 < lo < 0.1 < hi < 0.18


def test_intervals_never_collapse_to_a_point_with_finite_samples():
    import numpy as np

    from privaudit.stats.metrics import auc_interval, clopper_pearson, membership_metrics, proportion_ci

    for k, n in ((0, 32), (32, 32), (1, 1), (0, 1)):
        lo, hi = proportion_ci(k, n)
        assert hi - lo > 0.05 and lo <= k / n <= hi
    assert clopper_pearson(32, 32)[0] < 0.9  # the exact bound: 0.025 ** (1 / 32)
    assert abs(clopper_pearson(32, 32)[0] - 0.025 ** (1 / 32)) < 1e-9
    lo, hi = auc_interval(1.0, 32, 32)
    assert 0.98 < lo < 1.0 and hi == 1.0
    # perfectly separated scores: every interval has width, although every bootstrap resample gives 1.0
    r = membership_metrics(np.arange(32) + 100.0, np.arange(32) * 1.0, threshold=50.0, n_boot=50)
    for key in ("auc", "tpr_at_fpr_0.01", "balanced_accuracy"):
        assert r[key].value == 1.0 and r[key].ci[0] < 1.0, key
