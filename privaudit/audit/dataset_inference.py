"""Dataset inference: "was my collection used to train this model?" as one test with a p-value.

A data owner holds a *suspect* set (images they believe were used) and a *holdout* set of images
of the same distribution that the model certainly never saw. One image's membership score is
weak evidence; many images' scores together are strong (CDI, Dubinski et al. 2024, "CDI:
Copyrighted Data Identification in Diffusion Models": > 99% confidence from >= 70 images on
latent diffusion models). Procedure (``dataset_test``):

1. Each set is split, seeded, into a *fit* half and a *test* half (disjoint).
2. Features: each attack's per-image score (and, with a base model, its base-calibrated score).
   Attacks fit their own settings (e.g. the loss timestep) on the fit halves only.
3. A combination (standardised logistic regression, class-balanced) is fitted on suspect-fit vs
   holdout-fit; it maps every image to one combined score.
4. Test: one-sided Mann-Whitney U of the combined scores, suspect-test > holdout-test. The test
   half never influenced the combination, and under the null (the suspect set is exchangeable
   with the holdout: not trained on, same distribution) a rank test's p-value is valid whatever
   the scores' distribution. (CDI uses Welch's t-test; a rank test needs no normality and loses
   little power.)

How p falls with the number of suspect images (``pvalue_curve``): for n = 4, 8, 16, ... the
test is rerun on n suspect images (n/2 drawn from the fit half, n/2 from the test half) with the
whole holdout, ``repeats`` seeded draws each; the curve reports the median p and the smallest n
whose median p is below ``alpha``. The attacks' own settings stay those fitted on the whole
suspect-fit half (a few images more than n for the smallest n).

Confounders: a suspect set from another distribution (other camera, other scans) separates from
the holdout without any training. The blind baseline (``privaudit.data.checks``: a classifier on the
pixels alone) runs first; when it separates the two sets, the result says so and is never
reported as "used", whatever the p-value.

Per-image queries (``per_image_pvalues``): each suspect image gets a rank-based p-value, the
share of holdout-test images whose combined score is at least its own ((1 + count) / (1 + n)),
with a fixed combination (mean of features standardised on holdout-fit) that never saw a
suspect. One image cannot show much: many images are simply easy for a model, and among many
images some small p-values happen by chance.

Threat model: that of the attacks used (gray box for loss/PIA/SecMI...). Queries per image: the
attacks' (twice with a base model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PER_IMAGE_WARNING = ("A p-value for one image says how unusual its score is among images the model never saw; it "
                     "cannot prove that this image was trained on (some images are simply easy for any model), and "
                     "among many images some small p-values happen by chance. Use the set test for a decision.")
MIN_SUSPECT = 4  # a set test needs at least 2 suspect images in each half


@dataclass(frozen=True)
class SetTest:
    p_value: float
    statistic: float  # Mann-Whitney U / (n_s n_h): the AUC of suspect-test vs holdout-test combined scores
    n_suspect_test: int
    n_holdout_test: int
    n_suspect_fit: int
    n_holdout_fit: int
    features: tuple[str, ...]
    weights: tuple[float, ...]  # the fitted combination, on standardised features

    def to_json(self) -> dict:
        return {"p_value": float(self.p_value), "auc": round(float(self.statistic), 6),
                "n_suspect_test": self.n_suspect_test, "n_holdout_test": self.n_holdout_test,
                "n_suspect_fit": self.n_suspect_fit, "n_holdout_fit": self.n_holdout_fit,
                "features": list(self.features), "weights": [round(w, 6) for w in self.weights],
                "test": "one-sided Mann-Whitney U (suspect > holdout) on the combined score, test halves only"}


def split_halves(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (fit, test) index halves of ``n`` items (fit gets the smaller half when n is odd)."""
    idx = np.random.default_rng([seed, 0xD1]).permutation(n)
    k = n // 2
    return np.sort(idx[:k]), np.sort(idx[k:])


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (images, features) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} scores are NaN or infinite")
    return x


def fit_combination(s_fit: np.ndarray, h_fit: np.ndarray, *, seed: int = 0):
    """Standardised, class-balanced logistic regression: suspect-fit (1) vs holdout-fit (0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.r_[s_fit, h_fit]
    y = np.r_[np.ones(len(s_fit)), np.zeros(len(h_fit))]
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", random_state=seed,
                                                              max_iter=1000)).fit(x, y)


def _mwu(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(AUC, one-sided p) of Mann-Whitney U, a > b: the exact distribution where it is cheap and there are no
    ties, else the normal approximation with tie correction."""
    from scipy.stats import mannwhitneyu

    both = np.r_[a, b]
    exact = len(a) * len(b) <= 20_000 and len(np.unique(both)) == len(both)  # exact: fast at these sizes, no ties
    res = mannwhitneyu(a, b, alternative="greater", method="exact" if exact else "asymptotic")
    return float(res.statistic) / (len(a) * len(b)), float(res.pvalue)


def halves_test(s_fit, s_test, h_fit, h_test, *, features: tuple[str, ...] = (), seed: int = 0) -> SetTest:
    """Fit the combination on the fit halves, test it on the test halves."""
    s_fit, s_test = _check(s_fit, "suspect fit scores"), _check(s_test, "suspect test scores")
    h_fit, h_test = _check(h_fit, "holdout fit scores"), _check(h_test, "holdout test scores")
    if min(len(s_fit), len(s_test), len(h_fit), len(h_test)) < 2:
        raise ValueError("a set test needs at least 2 images in each half of the suspect and holdout sets")
    model = fit_combination(s_fit, h_fit, seed=seed)
    auc, p = _mwu(model.decision_function(s_test), model.decision_function(h_test))
    weights = tuple(float(w) for w in model[-1].coef_[0])
    return SetTest(p_value=p, statistic=auc, n_suspect_test=len(s_test), n_holdout_test=len(h_test),
                   n_suspect_fit=len(s_fit), n_holdout_fit=len(h_fit),
                   features=features or tuple(f"f{i}" for i in range(s_fit.shape[1])), weights=weights)


def dataset_test(suspect: np.ndarray, holdout: np.ndarray, *, features: tuple[str, ...] = (), seed: int = 0,
                 splits: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> SetTest:
    """The set test on per-image feature arrays (n, k); ``splits`` = (suspect fit, suspect test, holdout
    fit, holdout test) indices, else seeded halves."""
    s, h = _check(suspect, "suspect scores"), _check(holdout, "holdout scores")
    sf, st, hf, ht = splits if splits is not None else (*split_halves(len(s), seed=seed),
                                                         *split_halves(len(h), seed=seed + 1))
    return halves_test(s[sf], s[st], h[hf], h[ht], features=features, seed=seed)


def pvalue_curve(s_fit: np.ndarray, s_test: np.ndarray, h_fit: np.ndarray, h_test: np.ndarray, *,
                 alpha: float = 0.01, repeats: int = 5, seed: int = 0, sizes: tuple[int, ...] | None = None) -> dict:
    """Median p-value of the set test on n suspect images (n/2 fit, n/2 test), for growing n."""
    s_fit, s_test = _check(s_fit, "suspect fit scores"), _check(s_test, "suspect test scores")
    n_max = 2 * min(len(s_fit), len(s_test))
    if sizes is None:
        sizes = tuple(n for n in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if n < n_max) + (n_max,)
    rng = np.random.default_rng([seed, 0xC0])
    rows: list[dict] = []
    for n in sizes:
        if n < MIN_SUSPECT or n > n_max:
            continue
        k = n // 2
        ps = []
        for _ in range(repeats if n < n_max else 1):  # the full set has one draw
            fi, ti = rng.choice(len(s_fit), size=k, replace=False), rng.choice(len(s_test), size=n - k, replace=False)
            ps.append(halves_test(s_fit[fi], s_test[ti], h_fit, h_test, seed=seed).p_value)
        rows.append({"n_suspect": int(n), "median_p": float(np.median(ps)), "p_values": [float(p) for p in ps]})
    reach = next((int(r["n_suspect"]) for r in rows if float(r["median_p"]) < alpha), None)
    return {"alpha": alpha, "repeats": repeats, "points": rows, "smallest_n_below_alpha": reach}


def per_image_pvalues(suspect: np.ndarray, h_fit: np.ndarray, h_test: np.ndarray) -> np.ndarray:
    """Rank p-value of each suspect image against holdout-test, features combined by their mean z-score
    on holdout-fit (a combination no suspect image influenced)."""
    s = _check(suspect, "suspect scores")
    hf, ht = _check(h_fit, "holdout fit scores"), _check(h_test, "holdout test scores")
    mu, sd = hf.mean(0), hf.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = lambda x: ((x - mu) / sd).mean(1)
    hs = z(ht)
    return (1 + (hs[None, :] >= z(s)[:, None]).sum(1)) / (1 + len(hs))
