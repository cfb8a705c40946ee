"""Dataset inference statistics on synthetic per-image scores: valid p-values under the null, power
under a real difference, honest per-image p-values and the p-value curve."""

import numpy as np
import pytest
from scipy.stats import binom, kstest

from privaudit.audit.dataset_inference import (
    MIN_SUSPECT,
    dataset_test,
    per_image_pvalues,
    pvalue_curve,
    split_halves,
)


def _scores(rng, n, shift=0.0, k=3):
    # correlated attack scores, as several attacks on one image are
    common = rng.normal(size=(n, 1))
    return common + 0.5 * rng.normal(size=(n, k)) + shift


def test_null_pvalues_are_uniform_over_seeds():
    rng = np.random.default_rng(0)
    ps = np.array([dataset_test(_scores(rng, 32), _scores(rng, 128), seed=s).p_value for s in range(200)])
    # at alpha 0.05 a valid test rejects about 5% of null runs: allow what a Binomial(200, 0.05) gives 99.9% of the time
    assert (ps < 0.05).sum() <= binom.ppf(0.999, 200, 0.05)
    assert kstest(ps, "uniform").pvalue > 1e-3


def test_members_are_detected_from_few_images():
    rng = np.random.default_rng(1)
    t = dataset_test(_scores(rng, 32, shift=1.5), _scores(rng, 128), seed=0)
    assert t.p_value < 1e-3 and t.statistic > 0.8
    assert t.n_suspect_test + t.n_suspect_fit == 32


def test_fit_and_test_halves_are_disjoint():
    sf, st = split_halves(33, seed=3)
    assert len(set(sf) & set(st)) == 0 and len(sf) + len(st) == 33
    assert (split_halves(33, seed=3)[0] == sf).all()  # seeded


def test_pvalue_curve_falls_with_set_size():
    rng = np.random.default_rng(2)
    s, h = _scores(rng, 64, shift=1.0), _scores(rng, 128)
    sf, st = split_halves(64, seed=0)
    hf, ht = split_halves(128, seed=1)
    curve = pvalue_curve(s[sf], s[st], h[hf], h[ht], alpha=0.01, repeats=5, seed=0)
    ns = [p["n_suspect"] for p in curve["points"]]
    assert ns[0] == MIN_SUSPECT and ns[-1] == 64
    assert curve["points"][-1]["median_p"] < curve["points"][0]["median_p"]
    reach = curve["smallest_n_below_alpha"]
    assert reach is not None and all(p["median_p"] >= 0.01 for p in curve["points"] if p["n_suspect"] < reach)
    # no signal: the curve never reaches alpha on the full set
    null = pvalue_curve(h[:32], h[32:64], h[64:96], h[96:], alpha=1e-4, repeats=2, seed=0)
    assert null["smallest_n_below_alpha"] is None


def test_per_image_pvalues_are_ranks_against_holdout():
    h_fit = np.array([[0.0], [1.0], [2.0], [3.0]])
    h_test = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    p = per_image_pvalues(np.array([[10.0], [2.0], [-5.0]]), h_fit, h_test)
    # (1 + holdout-test scores >= own) / (1 + 5)
    assert p.tolist() == pytest.approx([1 / 6, 4 / 6, 6 / 6])
    rng = np.random.default_rng(4)
    null = per_image_pvalues(_scores(rng, 400), _scores(rng, 200), _scores(rng, 400))
    assert 0.4 < null.mean() < 0.6 and (null < 0.05).mean() < 0.1


@pytest.mark.parametrize("bad", [np.full((8, 2), np.nan), np.ones((8, 2, 2))])
def test_bad_scores_are_refused(bad):
    with pytest.raises(ValueError):
        dataset_test(bad, np.ones((8, 2)))


def test_too_few_images_for_a_set_test():
    with pytest.raises(ValueError, match="at least 2"):
        dataset_test(np.ones((3, 1)), np.zeros((16, 1)))
