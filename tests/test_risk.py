"""Per-image risk (``privaudit.audit.risk``): which members are exposed, judged against chance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from privaudit.audit.risk import benjamini_hochberg, cluster_q, per_image_risk


def scores_frame(member_scores: np.ndarray, holdout_scores: np.ndarray, name: str = "loss") -> pd.DataFrame:
    nm, nh = len(member_scores), len(holdout_scores)
    return pd.DataFrame({"image_id": [f"m{i}" for i in range(nm)] + [f"h{i}" for i in range(nh)],
                         "set": ["member"] * nm + ["holdout"] * nh, "split": "evaluation",
                         name: np.r_[member_scores, holdout_scores]})


def member_table(n: int, copies: dict[int, int], clusters: dict[int, int] | None = None, chance: float = 0.005):
    c = np.zeros(n, int)
    for i, k in copies.items():
        c[i] = k
    cluster = np.arange(n)
    for i, j in (clusters or {}).items():
        cluster[i] = j
    size = np.bincount(cluster, minlength=n)[cluster]
    return pd.DataFrame({"member_id": [f"m{i}" for i in range(n)], "copies": c, "chance_copies": chance,
                         "duplicate_cluster": cluster, "duplicates": size - 1})


def test_reproduced_and_duplicated_members_lead_and_a_stray_copy_is_only_watched():
    rng = np.random.default_rng(0)
    n = 200
    # m3 has 6 copies (its duplicate m4 too, in one cluster), m9 one stray copy that chance explains
    t = member_table(n, {3: 4, 4: 2, 9: 1}, clusters={4: 3})
    risk = per_image_risk(member_ids=[f"m{i}" for i in range(n)], scores=scores_frame(rng.normal(size=n), rng.normal(size=300)),
                          attacks=["loss"], member_tables={"nn": t})
    tab, s = risk.table, risk.summary
    assert list(tab["member_id"][:2]) == ["m3", "m4"] and set(tab["level"][:2]) == {"high"}
    assert (tab.loc[tab["member_id"] == "m3", "cluster_copies"] == 6).all()
    assert tab.loc[tab["member_id"] == "m9", "level"].item() == "watch"
    assert s["n_reproduced"] == 1 and s["n_reproduced_files"] == 2 and s["n_distinct"] == n - 1
    assert s["n_at_risk"] == 2 and s["n_watch"] == 1
    assert [r["member_id"] for r in s["top"]] == ["m3"]  # one row per distinct image
    assert s["sentence"].startswith("1 of 199 distinct members is reproduced")


def test_null_members_list_nobody():
    """Never-trained images: copies only at the chance rate, scores like the holdout -> no one at risk."""
    rng = np.random.default_rng(1)
    n = 500
    chance = 0.01
    copies = rng.poisson(chance, n)  # what a null model's false copies look like
    t = member_table(n, dict(enumerate(copies)), chance=chance)
    risk = per_image_risk(member_ids=[f"m{i}" for i in range(n)], scores=scores_frame(rng.normal(size=n), rng.normal(size=256)),
                          attacks=["loss"], member_tables={"nn": t})
    assert risk.summary["n_at_risk"] == 0 and risk.summary["n_reproduced"] == 0
    assert risk.summary["sentence"].startswith("none of 500 members is reproduced beyond chance")


def test_membership_alone_singles_out_only_what_the_holdout_can_resolve():
    rng = np.random.default_rng(2)
    n = 300
    member_scores = rng.normal(size=n)
    member_scores[:5] = 50.0  # five members far above every unseen image
    few = per_image_risk(member_ids=[f"m{i}" for i in range(n)], scores=scores_frame(member_scores, rng.normal(size=50)),
                         attacks=["loss"], member_tables={})
    many = per_image_risk(member_ids=[f"m{i}" for i in range(n)], scores=scores_frame(member_scores, rng.normal(size=20_000)),
                          attacks=["loss"], member_tables={})
    # with 50 unseen images the smallest p-value is 1/51: among 300 hypotheses nobody can be singled out
    assert few.summary["n_singled_out"] == 0
    assert many.summary["n_singled_out"] == 5 and set(many.table["member_id"][:5]) == {f"m{i}" for i in range(5)}
    assert (many.table["loss_percentile"][:5] == 100.0).all()


def test_duplicate_clusters_count_once_in_the_false_discovery_rate():
    p = np.r_[np.full(32, 0.004), np.full(100, 0.5)]
    cluster = np.r_[np.zeros(32, int), np.arange(1, 101)]
    per_file = benjamini_hochberg(p)
    per_image = cluster_q(p, cluster)
    assert (per_file[:32] < 0.05).all()  # 32 copies of one image would look like 32 discoveries
    assert per_image[0] == pytest.approx(0.004 * 101)  # one hypothesis among 101 images
    assert np.all(per_image[:32] == per_image[0])


def test_benjamini_hochberg_matches_the_step_up_definition():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    q = benjamini_hochberg(p)
    assert q == pytest.approx([0.04, 0.0533333, 0.0533333, 0.2], rel=1e-4)
    assert benjamini_hochberg(np.array([])).size == 0


def test_nan_scores_are_never_read_as_safety():
    n = 50
    ms = np.full(n, np.nan)
    t = member_table(n, {0: 5})
    risk = per_image_risk(member_ids=[f"m{i}" for i in range(n)], scores=scores_frame(ms, np.zeros(40)),
                          attacks=["loss"], member_tables={"nn": t})
    assert risk.table["level"].iloc[0] == "high"  # the copies still stand


def test_stray_copies_are_expected_where_unseen_images_crowd():
    from privaudit.plugins.detectors._replication import chance_weights

    # four holdout images, each with its 2 nearest members (median nearest distance 0.25): members 0 and 3
    # lie within it of unseen images, member 0 of two (a typical image)
    dist = np.array([[0.1, 0.2], [0.2, 0.8], [0.3, 0.7], [0.5, 2.0]])
    idx = np.array([[0, 3], [0, 2], [1, 3], [3, 0]])
    w = chance_weights(dist, idx, 5)
    assert w.sum() == pytest.approx(1.0)
    assert w == pytest.approx(np.array([2.5, 0.5, 0.5, 1.5, 0.5]) / 5.5)  # the prior keeps every chance above 0
    assert chance_weights(np.zeros((0, 0)), np.zeros((0, 0), int), 4) == pytest.approx([0.25] * 4)
