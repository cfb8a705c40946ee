"""The realistic regime (``privaudit.fixtures.digits_dup``): a model that reproduces only its duplicated members,
and the per-image risk list (``privaudit.audit.risk``) that must name exactly those.

The cheap tests check the duplicate files; the slow one builds a smaller seeded variant (500 distinct members,
8 repeated 32 times as files, 2000 steps: about 2 minutes on one CPU thread), scans it and its null control."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, plugin, run_scan

from privaudit.fixtures.digits_dup import DupDigitsConfig, copy_name, near_copies

SMALL = DupDigitsConfig(n_members=500, train_steps=2000)


def test_near_copies_are_half_exact_half_slightly_noisy():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8)).astype(np.uint8)
    reps = near_copies(imgs, n_exposed=2, duplicates=5, noise=4.0, seed=0)
    assert reps.shape == (2, 4, 8, 8)
    for i in range(2):
        assert (reps[i, 0] == imgs[i]).all() and (reps[i, 2] == imgs[i]).all()  # copies 1 and 3: exact
        for k in (1, 3):  # copies 2 and 4: near duplicates
            diff = reps[i, k].astype(int) - imgs[i]
            assert diff.any() and np.abs(diff).max() <= 20
    assert (near_copies(imgs, n_exposed=2, duplicates=5, noise=4.0, seed=0) == reps).all()  # seeded
    assert copy_name("members_0003.png", 2) == "members_0003_copy02.png"
    with pytest.raises(ValueError, match="near_noise"):
        near_copies(imgs, n_exposed=1, duplicates=2, noise=float("nan"), seed=0)
    with pytest.raises(ValueError, match="n_exposed"):
        near_copies(imgs, n_exposed=6, duplicates=2, noise=1.0, seed=0)


@pytest.fixture(scope="module")
def dup_target() -> Path:
    from privaudit.fixtures import digits_dup

    cache = Path(os.environ.get("PRIVAUDIT_TEST_CACHE", REPO / ".pytest_cache" / "privaudit"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny UNet: extra threads only synchronise on a busy machine
    try:
        return digits_dup.build(out=cache / "digits-dup-small", cfg=SMALL, progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
def test_the_at_risk_list_names_the_reproduced_duplicates_and_the_null_lists_none(dup_target, tmp_path):
    meta = json.loads((dup_target / "fixture.json").read_text())
    groups = meta["duplicate_groups"]
    assert len(groups) == 8 and all(len(g) == 32 for g in groups.values())
    assert len(list((dup_target / "members").glob("*.png"))) == 500 + 8 * 31

    res = run_scan(dup_target, tmp_path / "scan")
    table = pd.read_csv(tmp_path / "scan" / "at_risk.csv")
    canon = {f: c for c, files in groups.items() for f in files}  # file -> its distinct image
    nn = pd.read_csv(tmp_path / "scan" / "nn.csv")
    copied = nn.loc[nn["copy"], "nearest_member"].map(lambda m: canon.get(m, m)).value_counts()
    # the duplicated images the model copies: two samples or more (one within the 1% radius is what chance gives)
    truth = {g for g in groups if copied.get(g, 0) >= 2}
    listed = {canon.get(m, m) for m in table.loc[table["at_risk"], "member_id"]}
    recall = len(listed & truth) / max(len(truth), 1)
    precision = len(listed & truth) / max(len(listed), 1)
    assert len(truth) >= 7, copied  # the regime: (nearly) every duplicated member is reproduced
    assert recall >= 0.9 and precision >= 0.8, (recall, precision, sorted(listed))
    top = list(dict.fromkeys(canon.get(m, m) for m in table["member_id"]))[: len(truth)]
    assert set(top) == truth  # the ranking puts the reproduced duplicates first
    a = res["at_risk"]
    assert a["n_reproduced"] == len(truth) and a["n_duplicate_clusters"] == 8 and a["n_duplicated_files"] == 256
    assert res["verdict"]["level"] in ("high", "critical")
    assert any(r.startswith("per image: ") for r in res["verdict"]["reasons"])
    dup = plugin(res, "nn")["details"]["member_duplicates"]
    assert dup["n_clusters"] == 8 and dup["n_in_clusters"] == 256

    null = run_scan(dup_target, tmp_path / "null", members="null")
    assert null["at_risk"]["n_at_risk"] == 0 and null["at_risk"]["n_reproduced"] == 0
    assert null["verdict"]["level"] == "low"


@pytest.mark.slow
def test_query_answers_for_one_person_with_per_image_evidence(dup_target, tmp_path):
    from privaudit.audit.query import query
    from privaudit.audit.runner import AuditSettings

    meta = json.loads((dup_target / "fixture.json").read_text())
    one = tmp_path / "one"
    one.mkdir()
    near_dup = next(f for f in meta["duplicate_groups"]["members_0002.png"] if f.endswith("copy02.png"))
    (one / near_dup).write_bytes((dup_target / "members" / near_dup).read_bytes())
    nulls = tmp_path / "nulls"
    nulls.mkdir()
    for f in sorted((dup_target / "null").glob("*.png"))[:3]:
        (nulls / f.name).write_bytes(f.read_bytes())
    settings = AuditSettings(attacks=("loss",), detectors=("nn",), progress=False)
    kw = dict(model_dir=dup_target / "model", holdout=dup_target / "holdout", settings=settings, device="cpu")
    mine = query(suspect=one, out=tmp_path / "q-one", **kw)
    assert mine["verdict"]["level"] == "too_few"  # no set test on one image...
    row = mine["images"]["rows"][0]
    assert row["copied"] and row["copies"] > row["chance_copies"]  # ...but the copy is direct evidence
    assert "smallest p-value" in mine["images"]["note"]
    html = (tmp_path / "q-one" / "report.html").read_text()
    assert "Each image: copied? unusual?" in html and near_dup in html
    null = query(suspect=nulls, out=tmp_path / "q-null", **kw)
    assert not any(r["copied"] for r in null["images"]["rows"])
    assert all(r["level"] in ("low", "watch") for r in null["images"]["rows"])


@pytest.mark.slow
def test_mitigation_is_measured_on_the_members_at_risk_and_targeted_beside_uniform(dup_target, tmp_path):
    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigate

    settings = AuditSettings(attacks=("gen-nn",), detectors=("nn",), n_boot=50, progress=False,
                             plugin_params={"gen-nn": {"n_samples": 128}, "gen-radius": {"n_samples": 128}})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = mitigate(model_dir=dup_target / "model", members=dup_target / "members", holdout=dup_target / "holdout",
                       reference=dup_target / "reference", out=tmp_path / "mit", method="rejection", sweep=True,
                       params={"sweep_quantiles": (0.05,), "probe_samples": 32}, settings=settings, device="cpu",
                       targets="at_risk<=0,copies<=0.02")
    finally:
        torch.set_num_threads(n)
    before, after = (c["metrics"] for c in res["controls"][:2])
    assert before["at_risk_members"] == 8 and before["at_risk_reproduced"] >= 7  # the duplicated images
    assert before["at_risk_copies"] > 0 and after["at_risk_copies"] < before["at_risk_copies"]
    assert after["at_risk_reproduced"] < before["at_risk_reproduced"]
    families = {r["family"]: r for r in res["sweep"] if r["role"] == "main"}
    assert set(families) == {"rejection", "rejection-targeted"}  # targeted beside uniform, on one frontier
    for r in families.values():
        assert "at_risk_reproduced" in r["metrics"] and "at_risk_black_box_auc_two_sided" in r["metrics"]
    html = (tmp_path / "mit" / "report.html").read_text()
    assert "image(s) at risk before mitigation" in html
