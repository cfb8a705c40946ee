"""``privaudit mitigate --method rejection,repel`` end to end on the memorising digits target.

One run, two methods, small sweeps, a target no setting can meet (quality twice the raw model's):
the frontier is written, each method's protected folder loads back, and the decision is "none"
with what stops each method, in results, summary.json and the report alike.
"""

from __future__ import annotations

import json

import pytest
import torch

from privaudit.mitigation.frontier import COST_TOLERANCE, recommend
from privaudit.mitigation.targets import parse_targets

IMPOSSIBLE = "copies<=0.02,quality>=2"
AUDIT = dict(attacks=("rediffuse", "gen-nn"), detectors=("nn", "quality"), n_boot=50, progress=False,
             plugin_params={"nn": {"n_samples": 64}, "gen-nn": {"n_samples": 64}, "gen-radius": {"n_samples": 64},
                            "quality": {"n_samples": 64, "jackknife_groups": 8},
                            "rejection": {"sweep_quantiles": (0.01, 0.2), "probe_samples": 32},
                            "repel": {"sweep_quantiles": (0.2,), "sweep_strengths": (1.0,), "probe_samples": 32}})


@pytest.fixture(scope="module")
def frontier_run(digits_target, tmp_path_factory):
    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigate

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 8x8 images: threads only oversubscribe a small machine
    try:
        out = tmp_path_factory.mktemp("frontier")
        results = mitigate(model_dir=digits_target / "model", members=digits_target / "members",
                           holdout=digits_target / "holdout", reference=digits_target / "reference", out=out,
                           method="rejection,repel", settings=AuditSettings(**AUDIT), device="cpu",
                           targets=IMPOSSIBLE)
    finally:
        torch.set_num_threads(old)
    return out, results


def test_every_method_is_judged_on_one_frontier(frontier_run):
    out, res = frontier_run
    fr = res["frontier"]
    assert [m["method"] for m in fr["methods"]] == ["rejection", "repel"] == res["methods"]
    # the mitigation-aware attacker is in every after-audit, beside the ones asked for
    for m in fr["methods"]:
        assert m["copies_before"] > 0.5  # the fixture memorises
        assert m["settings"] >= 1 and m["settings_meeting_targets"] == 0
        assert m["worst_black_box_attack"]["attack"] in {"rediffuse", "gen-nn", "gen-radius"}
        assert m["carries_training_data"]  # both keep a member bank: the folder is training data
    after = json.loads((out / "repel" / "after" / "results.json").read_text())
    assert "gen-radius" in {p["name"] for p in after["plugins"] if p["kind"] == "attack"}
    series = {p["method"] for p in fr["points"] if p["role"] == "main"}
    assert series == {"rejection", "repel"}
    assert all(0 <= p["copy_fraction"] <= 1 for p in fr["points"] if p["copy_fraction"] is not None)


def test_protected_folders_load_back(frontier_run):
    from diffusers import DiffusionPipeline

    out, _ = frontier_run
    for m in ("rejection", "repel"):
        pipe = DiffusionPipeline.from_pretrained(out / m / "protected")
        assert type(pipe).__name__.lower().startswith(m)
        assert (out / m / "report.html").is_file() and (out / m / "results.json").is_file()


def test_an_unreachable_target_gives_no_recommendation(frontier_run):
    out, res = frontier_run
    assert res["frontier"]["recommendation"] is None and res["decision"]["recommended"] is None
    text = res["decision"]["text"]
    assert text.startswith("none") and "quality>=2" in text
    # every method is named with what stops it, and the headline carries the decision
    assert {m["family"] for m in res["decision"]["misses"]} == {"rejection", "repel"}
    assert all(m["meeting_all"] == 0 and m["nearest_misses"] for m in res["decision"]["misses"])
    assert "none" in res["verdict"]["headline"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommendation"] is None and summary["decision"].startswith("none")
    html = (out / "report.html").read_text()
    assert "One frontier" in html and "none" in html


def test_the_same_rows_recommend_a_cheapest_setting_under_a_target_they_meet(frontier_run):
    _, res = frontier_run
    rows = [r for r in res["sweep"] if r["role"] == "main"]
    i = recommend(rows, parse_targets("copies<=1"))
    assert i is not None
    cheapest = min(float(r["sampling_ratio"] or 1.0) for r in rows)
    assert float(rows[i]["sampling_ratio"] or 1.0) <= cheapest * (1 + COST_TOLERANCE)  # timings this close tie
