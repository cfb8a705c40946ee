"""Data checks run before any attack: they catch what silently corrupts membership numbers.

- exact duplicates across members and holdout (same decoded pixels);
- near duplicates: a holdout image whose per-pixel RMS difference to some member is
  below ``near_rms`` (default 2% of the intensity range, i.e. about 5 grey levels);
- a blind baseline: a linear classifier on the pixels alone, no model, cross-validated
  on members vs holdout. If its AUC beats label permutations (p < 0.05) and its interval
  lies above 0.5, members and holdout differ in distribution and membership AUCs are
  confounded by that shift (Das et al. 2024, "Blind baselines beat membership inference
  attacks for foundation models").
- a caption baseline (text-conditional models scored with their captions): the same classifier
  and permutation test on simple caption features (empty, length, word counts, padding,
  punctuation). A text model scores an image with its caption, so missing or padded captions in
  one set shift every score without any membership; a set without captions counts as all empty
  captions, which is what the model is then given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privaudit.data.sets import ImageSet
from privaudit.io.results import Metric


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    message: str
    details: dict

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "message": self.message, "details": self.details}


def exact_duplicates(members: ImageSet, holdout: ImageSet) -> CheckResult:
    mh: dict[str, int] = {}
    for i, h in enumerate(members.content_hashes()):
        mh.setdefault(h, i)
    pairs = [(members.ids[mh[h]], holdout.ids[j]) for j, h in enumerate(holdout.content_hashes()) if h in mh]
    msg = (f"{len(pairs)} holdout image(s) are exact copies of members: membership numbers are corrupted; "
           "remove them from the holdout" if pairs else "no exact duplicates between members and holdout")
    return CheckResult("exact_duplicates", not pairs, msg, {"count": len(pairs), "pairs": pairs[:50]})


def _flat01(images: ImageSet, index=None, *, max_dim: int | None = None, batch: int = 1024):
    """Yield images ``index`` (all by default) as float32 rows in [0, 1], batch by batch.

    With ``max_dim``, images with more values than that are area-downsampled until they fit.
    """
    import torch

    index = np.arange(len(images)) if index is None else np.asarray(index)
    c, h, w = images.shape
    side = None
    if max_dim is not None and c * h * w > max_dim:
        side = max(1, int(np.sqrt(max_dim / c)))
    for s in range(0, len(index), batch):
        x = images.uint8(index[s:s + batch]).astype(np.float32) / 255.0
        if side is not None:
            pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (min(side, h), min(side, w)))
            x = pooled.numpy()
        yield np.ascontiguousarray(x.reshape(len(x), -1))


def near_duplicates(members: ImageSet, holdout: ImageSet, *, near_rms: float = 0.02) -> CheckResult:
    """Holdout images within ``near_rms`` (per-pixel RMS, intensities in [0, 1]) of some member."""
    import faiss

    dim = int(np.prod(members.shape))
    index = faiss.IndexFlatL2(dim)
    for m in _flat01(members):
        index.add(m)
    found = [index.search(h, 1) for h in _flat01(holdout)]
    d2 = np.concatenate([f[0][:, 0] for f in found])
    nn = np.concatenate([f[1][:, 0] for f in found])
    rms = np.sqrt(np.maximum(d2, 0) / dim)
    hit = np.flatnonzero(rms < near_rms)
    pairs = [(members.ids[nn[j]], holdout.ids[j], round(float(rms[j]), 4)) for j in hit[np.argsort(rms[hit])]]
    msg = (f"{len(pairs)} holdout image(s) are near-copies of members (RMS difference < {near_rms:g}): "
           "attacks score them like members, which inflates false positives; remove them from the holdout"
           if pairs else f"no near duplicates (RMS < {near_rms:g}) between members and holdout")
    return CheckResult("near_duplicates", not pairs, msg,
                       {"count": len(pairs), "threshold_rms": near_rms, "pairs": pairs[:50],
                        "min_rms": round(float(rms.min()), 4)})


def blind_baseline(members: ImageSet, holdout: ImageSet, *, seed: int = 0, max_dim: int = 1024,
                   max_images: int = 5000, n_permutations: int | None = None) -> CheckResult:
    """Can the images alone (no model) tell members from holdout?

    A cross-validated classifier's AUC is compared with its own null distribution: the same
    folds and classifier with members/holdout labels permuted. The shift warning needs both
    a permutation p-value below 0.05 and the AUC's bootstrap interval above 0.5. (The bootstrap
    interval alone ignores the variance of fitting the folds: on random 32/128 splits of
    the digits it flagged 2 of 20 identically distributed pairs, the built-in text fixture
    among them.) At most ``max_images`` per set (a seeded random subset) and ``max_dim``
    values per image (area-downsampled) keep it cheap on large data; the shift it looks for
    survives both.
    """
    rng = np.random.default_rng(seed)
    pick = lambda s: np.sort(rng.choice(len(s), size=min(len(s), max_images), replace=False))
    xm = np.concatenate(list(_flat01(members, pick(members), max_dim=max_dim)))
    xh = np.concatenate(list(_flat01(holdout, pick(holdout), max_dim=max_dim)))
    sep = _separability(xm, xh, seed=seed, n_permutations=n_permutations)
    if sep is None:
        return CheckResult("blind_baseline", True, "blind baseline skipped: fewer than 2 images in a set",
                           {"auc": None, "model": "none"})
    auc, p_value, shifted = sep.auc, sep.p_value, sep.shifted
    assert auc.ci is not None  # membership_metrics always gives intervals
    msg = (f"a classifier on the images alone separates members from holdout (AUC {auc.value:.2f}, "
           f"95% CI {auc.ci[0]:.2f}-{auc.ci[1]:.2f}, permutation p = {p_value:.3f}): the two sets differ in "
           "distribution, so membership numbers are confounded by that shift" if shifted else
           f"no distribution shift detected: a classifier on the images alone reaches AUC {auc.value:.2f} "
           f"(95% CI {auc.ci[0]:.2f}-{auc.ci[1]:.2f}; permutation p = {p_value:.3f}, {sep.permutations} permutations)")
    return CheckResult("blind_baseline", not shifted, msg,
                       {**sep.details(), "images": [len(xm), len(xh)],
                        "model": f"least-squares linear classifier on {sep.components} PCA components of "
                                 f"{xm.shape[1]} pixel values, {sep.folds}-fold CV, against {sep.permutations} "
                                 "label permutations"})


@dataclass(frozen=True)
class Separability:
    """How well a cross-validated linear classifier tells two sets of feature rows apart."""

    auc: Metric
    p_value: float
    null_auc_95: float
    permutations: int
    components: int
    folds: int

    @property
    def shifted(self) -> bool:
        assert self.auc.ci is not None  # membership_metrics always gives intervals
        return self.p_value < 0.05 and self.auc.ci[0] > 0.5

    def details(self) -> dict:
        return {"auc": self.auc.to_json(), "p_value": round(self.p_value, 4), "permutations": self.permutations,
                "null_auc_95": round(self.null_auc_95, 4)}


def _separability(xm: np.ndarray, xh: np.ndarray, *, seed: int, n_permutations: int | None) -> Separability | None:
    """Cross-validated AUC of rows ``xm`` (label 1) against ``xh`` (label 0), with its permutation p-value;
    None when a set has fewer than 2 rows."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    from privaudit.stats.metrics import membership_metrics

    n_splits = min(5, len(xm), len(xh))
    if n_splits < 2:
        return None
    x, y = np.r_[xm, xh], np.r_[np.ones(len(xm)), np.zeros(len(xh))]
    n_comp = int(min(32, x.shape[1], max(2, min(len(xm), len(xh)) // 4), len(x) - len(x) // n_splits - 1))
    # Label-free folds and features (scaler + PCA fitted on each training fold): the observed labels
    # and every permutation of them go through the very same folds. The classifier is least squares on
    # the fold's features (Fisher's discriminant direction), so refitting it for a permutation is one
    # matrix product: w = (F'F + lambda I)^-1 F' y, precomputed per fold.
    folds = []
    for train, test in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x):
        scaler = StandardScaler().fit(x[train])
        pca = PCA(n_components=n_comp, random_state=seed).fit(scaler.transform(x[train]))
        f_train, f_test = pca.transform(scaler.transform(x[train])), pca.transform(scaler.transform(x[test]))
        centre = f_train.mean(0)
        f_train, f_test = f_train - centre, f_test - centre
        solve = np.linalg.solve(f_train.T @ f_train + 1e-3 * len(train) * np.eye(n_comp), f_train.T)
        folds.append((train, test, f_test @ solve))  # test scores = this @ centred training labels

    def cv_scores(labels: np.ndarray) -> np.ndarray:
        """Out-of-fold scores, one column per label vector in ``labels`` (n, k)."""
        out = np.zeros(labels.shape)
        for train, test, proj in folds:
            out[test] = proj @ (labels[train] - labels[train].mean(0))
        return out

    p = cv_scores(y[:, None])[:, 0]
    auc = membership_metrics(p[y == 1], p[y == 0], fpr_levels=(), n_boot=500, seed=seed)["auc"]
    n_perm = n_permutations or 199
    perm_rng = np.random.default_rng([seed, 0xB11D])
    perms = np.stack([perm_rng.permutation(y) for _ in range(n_perm)], axis=1)
    null = _rank_auc(cv_scores(perms), perms)
    p_value = float((1 + np.sum(null >= auc.value)) / (1 + n_perm))
    null_95 = float(np.quantile(null, 0.95))
    return Separability(auc=auc, p_value=p_value, null_auc_95=null_95, permutations=n_perm, components=n_comp,
                        folds=n_splits)


def _rank_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each column of ``scores`` (n, k) for the 0/1 labels in the same column (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    n1 = labels.sum(0)
    n0 = len(labels) - n1
    return ((ranks * labels).sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


CAPTION_FEATURES = ("empty", "log characters", "log words", "whitespace fraction", "padded", "punctuation fraction",
                    "uppercase fraction", "digit fraction", "distinct-word ratio", "log longest word")


def caption_features(captions: list[str] | tuple[str, ...]) -> np.ndarray:
    """One row of ``CAPTION_FEATURES`` per caption: what careless or padded captioning changes."""
    rows = []
    for c in captions:
        words = c.split()
        n = max(len(c), 1)
        letters = [ch for ch in c if ch.isalpha()]
        rows.append([not c.strip(), np.log1p(len(c)), np.log1p(len(words)), sum(ch.isspace() for ch in c) / n,
                     c != c.strip(), sum(not ch.isalnum() and not ch.isspace() for ch in c) / n,
                     sum(ch.isupper() for ch in letters) / max(len(letters), 1), sum(ch.isdigit() for ch in c) / n,
                     len(set(words)) / max(len(words), 1), np.log1p(max((len(w) for w in words), default=0))])
    return np.asarray(rows, dtype=np.float64).reshape(len(captions), len(CAPTION_FEATURES))


def caption_baseline(members: ImageSet, holdout: ImageSet, *, seed: int = 0,
                     n_permutations: int | None = None) -> CheckResult:
    """Can the captions alone (no model, no pixels) tell members from holdout? The blind baseline's
    classifier and permutation test on ``caption_features``; an uncaptioned set counts as empty captions."""
    caps = [list(s.captions) if s.captions else [""] * len(s) for s in (members, holdout)]
    xm, xh = caption_features(caps[0]), caption_features(caps[1])
    empty = [round(float(x[:, 0].mean()), 4) if len(x) else None for x in (xm, xh)]
    words = [float(np.median([len(c.split()) for c in cs])) if cs else None for cs in caps]
    stats = {"captioned": [bool(members.captions), bool(holdout.captions)], "fraction_empty": empty,
             "median_words": words, "features": list(CAPTION_FEATURES)}
    varies = np.ptp(np.r_[xm, xh], axis=0) > 0 if len(xm) and len(xh) else np.zeros(0, bool)
    sep = _separability(xm[:, varies], xh[:, varies], seed=seed, n_permutations=n_permutations) if varies.any() else None
    if sep is None:
        why = "fewer than 2 images in a set" if min(len(xm), len(xh)) < 2 else "every caption has the same features"
        return CheckResult("caption_baseline", True, f"caption baseline: no caption shift ({why})",
                           {"auc": None, **stats})
    auc = sep.auc
    msg = (f"a classifier on the captions alone separates members from holdout (AUC {auc.value:.2f}, "
           f"permutation p = {sep.p_value:.3f}; empty captions {empty[0]:.0%} vs {empty[1]:.0%}, median "
           f"{words[0]:g} vs {words[1]:g} words): a text model scores each image with its caption, so membership "
           "numbers are confounded by that shift; caption both sets the same way" if sep.shifted else
           f"no caption shift detected: a classifier on the captions alone reaches AUC {auc.value:.2f} "
           f"(permutation p = {sep.p_value:.3f}, {sep.permutations} permutations)")
    return CheckResult("caption_baseline", not sep.shifted, msg,
                       {**sep.details(), **stats,
                        "model": f"least-squares linear classifier on {sep.components} PCA components of "
                                 f"{int(varies.sum())} caption features, {sep.folds}-fold CV, against "
                                 f"{sep.permutations} label permutations"})


def run_checks(members: ImageSet, holdout: ImageSet, *, seed: int = 0, captions: bool = False) -> list[CheckResult]:
    """The data checks; ``captions``: the model is scored with the images' captions (a text model,
    ``--prompt caption``), so their distributions are compared too when either set has any."""
    checks = [exact_duplicates(members, holdout), near_duplicates(members, holdout),
              blind_baseline(members, holdout, seed=seed)]
    if captions and (members.captions or holdout.captions):
        checks.append(caption_baseline(members, holdout, seed=seed))
    return checks
