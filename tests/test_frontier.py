"""One frontier, one decision: targets, the recommendation (or "none"), and caveats beside a calm level."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from privaudit.io.errors import InputError
from privaudit.io.exports import junit_xml, summary
from privaudit.mitigation.frontier import COST_TOLERANCE, decision_text, misses, recommend
from privaudit.mitigation.targets import DEFAULT_TARGETS, check, meets, parse_targets
from privaudit.mitigation.verdict import caveats_of, mitigation_verdict
from privaudit.stats.metrics import ratio_ci

T = parse_targets(DEFAULT_TARGETS)


def _row(name, family, *, copies, auc, quality, cost=1.0):
    m = {"copy_fraction": copies, "black_box_auc_two_sided": auc}
    if quality is not None:
        m["quality_ratio"] = quality
    return {"name": name, "family": family, "role": "main", "metrics": m, "sampling_ratio": cost}


def test_targets_parse_and_refuse_what_they_cannot_read():
    t = parse_targets("copies<=0.02, blackbox_auc<=0.6,quality>=0.9,cost<=3")
    assert [str(x) for x in t] == ["copies<=0.02", "blackbox_auc<=0.6", "quality>=0.9", "cost<=3"]
    assert [x.key for x in t] == ["copy_fraction", "black_box_auc_two_sided", "quality_ratio", "sampling_ratio"]
    for bad, words in (("", "no targets"), ("copies<0.02", "expected NAME<=VALUE"), ("speed<=2", "unknown target"),
                       ("copies<=nan", "finite"), ("copies<=0.1,copies<=0.2", "given twice"),
                       ("copies<=abc", "not a number")):
        with pytest.raises(InputError, match=words):
            parse_targets(bad)


def test_a_number_never_measured_never_counts_as_met():
    c = check({"copy_fraction": 0.0, "black_box_auc_two_sided": 0.5}, T)
    assert [x["met"] for x in c] == [True, True, None]
    assert not meets({"copy_fraction": 0.0, "black_box_auc_two_sided": 0.5}, T)
    # without a black-box attack the membership target reads the two-sided AUC over every attack, and says so
    c = check({"copy_fraction": 0.0, "membership_auc_two_sided": 0.9, "quality_ratio": 1.0}, T)
    assert c[1]["key"] == "membership_auc_two_sided" and c[1]["met"] is False and c[1]["miss"] == pytest.approx(0.3)


def test_recommend_picks_the_cheapest_setting_that_meets_every_target():
    rows = [_row("a", "rejection", copies=0.0, auc=0.55, quality=0.97, cost=8.0),
            _row("b", "repel", copies=0.01, auc=0.58, quality=0.92, cost=1.3),
            _row("c", "repel", copies=0.0, auc=0.52, quality=0.99, cost=1.3),
            _row("d", "cpsample", copies=0.0, auc=0.5, quality=0.5, cost=1.0)]  # cheapest, but quality collapsed
    assert recommend(rows, T) == 2  # same cost as b: the better quality wins
    text = decision_text(rows[2], misses(rows, T), T)
    assert text.startswith("recommended: c (repel)")
    # timings within the tolerance are a tie (wall-clock noise); beyond it the cheaper setting wins
    near = [_row("e", "rejection", copies=0.0, auc=0.55, quality=0.95, cost=1.3),
            _row("f", "rejection", copies=0.0, auc=0.55, quality=0.99, cost=1.4)]
    assert recommend(near, T) == 1
    far = [near[0], _row("f", "rejection", copies=0.0, auc=0.55, quality=0.99, cost=1.3 * (1 + COST_TOLERANCE) + 0.01)]
    assert recommend(far, T) == 0


def test_a_target_no_setting_meets_gives_none_with_the_miss_per_method():
    rows = [_row("cps 1", "cpsample", copies=0.0, auc=0.69, quality=0.13),
            _row("cps 2", "cpsample", copies=0.3, auc=0.62, quality=0.8),
            _row("rej 1", "rejection", copies=0.7, auc=1.0, quality=1.0, cost=11.0),
            _row("rep 1", "repel", copies=0.0, auc=0.55, quality=None)]  # quality never measured
    assert recommend(rows, T) is None  # never a silent pick of one that misses
    per = {m["family"]: m for m in misses(rows, T)}
    cps = {x["target"]: x for x in per["cpsample"]["per_target"]}
    assert cps["copies<=0.02"]["met_by_some"] and cps["blackbox_auc<=0.6"]["best"] == 0.62
    assert cps["blackbox_auc<=0.6"]["miss"] == pytest.approx(0.02) and cps["quality>=0.9"]["miss"] == pytest.approx(0.1)
    assert {x["target"]: x for x in per["repel"]["per_target"]}["quality>=0.9"]["best"] is None
    text = decision_text(None, misses(rows, T), T)
    assert text.startswith("none: no setting meets every target")
    assert "cpsample: blackbox_auc<=0.6 (best 0.62, short by 0.02)" in text and "repel: quality>=0.9 (not measured)" in text
    # each bound met by some setting, never all by one: said as such
    rows = [_row("x", "m", copies=0.0, auc=0.9, quality=0.95), _row("y", "m", copies=0.5, auc=0.5, quality=0.95)]
    assert recommend(rows, T) is None
    assert "no single setting meets them together" in decision_text(None, misses(rows, T), T)


def test_ratio_interval_covers_the_truth_and_never_collapses():
    r, lo, hi = ratio_ci(13, 256, 238, 256)
    assert lo < r < hi < 0.1
    assert ratio_ci(256, 256, 256, 256)[1] < 1.0 < ratio_ci(256, 256, 256, 256)[2]
    assert math.isnan(ratio_ci(0, 10, 0, 10)[0])
    with pytest.raises(ValueError):
        ratio_ci(5, 4, 1, 4)
    rng = np.random.default_rng(0)  # coverage of the Katz interval at the sizes the quality detector uses
    hits = 0
    for _ in range(400):
        k1, k0 = rng.binomial(256, 0.5), rng.binomial(256, 0.8)
        _, lo, hi = ratio_ci(int(k1), 256, int(k0), 256)
        hits += lo <= 0.5 / 0.8 <= hi
    assert hits / 400 > 0.9


LOW_BLACK = {"name": "gen-nn", "kind": "attack", "status": "ok", "threat_model": "black-box", "severity": "low",
             "metrics": {"auc": {"value": 0.52}}, "details": {"rules": []}}


def _after():
    return {"plugins": [LOW_BLACK], "verdict": {"level": "low", "warnings": []}}


def test_collapsed_quality_is_never_a_bare_low(tmp_path):
    from privaudit.audit.runner import AuditSettings

    quality = {"ratio": 0.05, "ci": [0.03, 0.09], "measure": "precision", "before": 0.93, "after": 0.05}
    row = {"metrics": {"copy_fraction": 0.004, "black_box_auc_two_sided": 0.55, "quality_ratio": 0.05},
           "quality": quality}
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=_after(), row=row,
                           settings=AuditSettings(), targets=T)
    assert v["level"] == "low"  # the level is leakage only ...
    assert v["headline"].startswith("low (black-box): but quality collapsed")  # ... and never shown alone
    body = {"kind": "mitigation", "verdict": v, "after": _after(), "decision": None}
    s = summary(body)
    assert s["verdict"] == "low" and "quality collapsed" in s["headline"] and s["quality"]["ratio"] == 0.05
    case = next(c for c in ET.fromstring(junit_xml(body)).findall("testcase") if c.get("name") == "verdict.protected")
    assert case.find("failure") is not None and "quality collapsed" in case.find("failure").get("message")
    json.dumps(s)
    # the control: quality kept and every target met: no caveat, a bare low, and junit passes
    good = {"metrics": {"copy_fraction": 0.0, "black_box_auc_two_sided": 0.55, "quality_ratio": 0.97},
            "quality": {**quality, "ratio": 0.97, "ci": [0.9, 1.04], "after": 0.9}}
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=_after(), row=good,
                           settings=AuditSettings(), targets=T)
    assert v["caveats"] == [] and v["headline"] == "low (black-box)"
    case = next(c for c in ET.fromstring(junit_xml({**body, "verdict": v})).findall("testcase")
                if c.get("name") == "verdict.protected")
    assert case.find("failure") is None


def test_caveats_name_every_missed_target_and_unmeasured_quality():
    cav, checks = caveats_of({"metrics": {"copy_fraction": 0.1, "black_box_auc_two_sided": 0.7}}, T)
    assert any(c.startswith("quality not measured") for c in cav)
    assert any("copies<=0.02 (got 0.1)" in c and "blackbox_auc<=0.6 (got 0.7)" in c for c in cav)
    q = {"ratio": 0.8, "ci": [0.7, 0.9], "before": 0.9, "after": 0.72}
    cav, _ = caveats_of({"metrics": {"copy_fraction": 0.0, "black_box_auc_two_sided": 0.5, "quality_ratio": 0.8},
                         "quality": q}, T)
    assert cav == ["quality below its target quality>=0.9: quality 0.80x the unprotected model's [0.70, 0.90] "
                   "(precision 0.90 -> 0.72)"]


def test_method_lists_are_checked_before_any_work():
    from privaudit.api.registry import Registry
    from privaudit.mitigation.flow import resolve_methods

    reg = Registry.build()
    installed = [r.name for r in reg if r.kind == "mitigation"]
    assert resolve_methods(reg, "all") == installed and "cpsample" in installed
    assert resolve_methods(reg, " cpsample ") == ["cpsample"]
    with pytest.raises(InputError, match="named twice"):
        resolve_methods(reg, "cpsample,cpsample")
    with pytest.raises(Exception, match="nosuch"):
        resolve_methods(reg, "cpsample,nosuch")
    with pytest.raises(InputError, match="name a mitigation"):
        resolve_methods(reg, " , ")
