"""Mitigation reports by threat model: the black-box headline, the "if the weights leak" line, the gate leak,
and the soft gate (CPSample's remedy for the gate leak). Synthetic results and a toy guard: no training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from privaudit.audit.runner import AuditSettings
from privaudit.mitigation.flow import gate_leak, meets_targets, mitigation_verdict, summarize


def _attack(name: str, tm: str, auc: float, severity: str = "low", rules=(), tpr: float = 0.0) -> dict:
    return {"name": name, "kind": "attack", "status": "ok", "threat_model": tm, "severity": severity,
            "metrics": {"auc": {"value": auc, "ci": [auc - 0.05, min(1.0, auc + 0.05)]},
                        "tpr_at_fpr_0.01": {"value": tpr, "ci": [0.0, tpr + 0.05]}},
            "details": {"rules": list(rules), "fitted": {}}}


def _detector(cf: float, severity: str = "low", rules=()) -> dict:
    return {"name": "nn", "kind": "detector", "status": "ok", "threat_model": "black-box", "severity": severity,
            "metrics": {"copy_fraction": {"value": cf, "ci": [0.0, cf + 0.01]}}, "details": {"rules": list(rules)}}


def _after(plugins: list[dict]) -> dict:
    return {"plugins": plugins, "scores": None, "verdict": {"level": "low", "warnings": []}}


PROTECTED = [_attack("loss", "gray-box", 0.12, "high", ["AUC 0.12 reversed"]),  # the gate leak: members look less member-like
             _attack("rediffuse", "black-box", 0.52, tpr=0.01), _attack("gen-nn", "black-box", 0.55, tpr=0.02),
             _detector(0.004)]


def test_summary_groups_membership_by_threat_model():
    s = summarize({"plugins": PROTECTED + [_attack("gsa", "white-box", 0.97, tpr=0.8)]})
    assert s["black_box_auc"] == 0.55 and s["black_box_auc_two_sided"] == 0.55
    assert s["black_box_tpr_at_fpr_0.01"] == 0.02
    assert s["gray_box_auc"] == 0.12 and s["gray_box_auc_two_sided"] == pytest.approx(0.88)
    assert s["white_box_auc"] == 0.97 and s["white_box_auc_two_sided"] == 0.97
    assert s["membership_auc_two_sided"] == 0.97  # over every attack, as before
    # the membership target reads the black-box number where one was measured
    q = {"quality_ratio": 0.95}
    assert meets_targets({"copy_fraction": 0.0, "black_box_auc_two_sided": 0.55, "membership_auc_two_sided": 0.97, **q})
    assert not meets_targets({"copy_fraction": 0.0, "black_box_auc_two_sided": 0.7, "membership_auc_two_sided": 0.5, **q})
    assert not meets_targets({"copy_fraction": 0.0, "membership_auc_two_sided": 0.9, **q})
    # quality is a target too, and a number never measured never counts as met
    assert not meets_targets({"copy_fraction": 0.0, "black_box_auc_two_sided": 0.55, "quality_ratio": 0.5})
    assert not meets_targets({"copy_fraction": 0.0, "black_box_auc_two_sided": 0.55})


def test_protected_verdict_is_the_black_box_one_with_a_weights_leak_line():
    row = {"metrics": summarize({"plugins": PROTECTED})}
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=_after(PROTECTED), row=row,
                           settings=AuditSettings(n_boot=20))
    assert v["basis"] == "black-box" and v["level"] == "low"
    assert not [f for f in v["fired"] if f["threat_model"] != "black-box"]
    leak = v["if_weights_leak"]
    assert leak["level"] == "high" and leak["text"].startswith("high risk for anyone holding the protected folder")
    assert {f["threat_model"] for f in leak["fired"]} == {"gray-box"}
    assert any("gate leak" in f["text"] for f in leak["fired"])  # the two-sided gray-box headline
    assert v["by_threat_model"] == {"black-box": "low", "gray-box": "high"}
    assert gate_leak({"metrics": {"gray_box_auc_two_sided": 1.0}}, row)["value"] == pytest.approx(0.88)


def test_black_box_leakage_raises_the_headline():
    plugins = [_attack("rediffuse", "black-box", 0.95, "high", ["AUC 0.95"], tpr=0.6), _detector(0.0)]
    row = {"metrics": summarize({"plugins": plugins})}
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=_after(plugins), row=row,
                           settings=AuditSettings(n_boot=20))
    assert v["level"] == "high" and v["fired"][0]["threat_model"] == "black-box"
    # copies are black-box evidence too
    plugins = [_attack("gen-nn", "black-box", 0.5), _detector(0.3, "critical", ["30% copies"])]
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=_after(plugins),
                           row={"metrics": summarize({"plugins": plugins})}, settings=AuditSettings(n_boot=20))
    assert v["level"] == "critical"


def test_without_black_box_attacks_every_threat_model_counts():
    plugins = [p for p in PROTECTED if p["threat_model"] != "black-box" or p["kind"] == "detector"]
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=_after(plugins),
                           row={"metrics": summarize({"plugins": plugins})}, settings=AuditSettings(n_boot=20))
    assert v["basis"] == "every threat model" and v["level"] == "high"
    assert any("no black-box membership attack ran" in w for w in v["warnings"])


def test_reversed_black_box_scores_stay_black_box():
    n = 40
    scores = pd.DataFrame({"image_id": [str(i) for i in range(2 * n)], "set": ["member"] * n + ["holdout"] * n,
                           "rediffuse": np.r_[np.arange(n) * 1.0, np.arange(n) + 100.0]})
    plugins = [_attack("rediffuse", "black-box", 0.0)]
    v = mitigation_verdict(before={"verdict": {"level": "critical"}},
                           after_res={**_after(plugins), "scores": scores}, row={"metrics": {}},
                           settings=AuditSettings(n_boot=20))
    assert v["level"] == "critical" and v["fired"][0]["threat_model"] == "black-box"


# ---------------------------------------------------------------- the soft gate


@pytest.fixture(scope="module")
def toy_protected():
    from privaudit.plugins.mitigations.cpsample.guard import GuardClassifier
    from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser
    from privaudit.testing.oracles import EmpiricalOracle

    torch.manual_seed(0)
    base = EmpiricalOracle(torch.rand(16, 1, 8, 8) * 2 - 1)
    guard = GuardClassifier(in_channels=1, sample_size=8, block_out_channels=(8,), norm_num_groups=4)
    with torch.no_grad():
        guard.head.weight.mul_(4.0)  # confident (gate on at alpha 0.25) on some inputs, not on others
    return ProtectedDenoiser(base=base, guard=guard, alpha=0.25, scale=10.0)


def test_soft_gate_follows_confidence(toy_protected):
    x = torch.randn(32, 1, 8, 8)
    t = 50
    raw = toy_protected.base.eps(x, t)
    hard = toy_protected.eps(x, t)
    soft = toy_protected.with_params(gate="soft", gate_width=1e-4).eps(x, t)  # a near-step soft gate = the hard gate
    conf = toy_protected.confidence(x, t)
    far = (conf - 0.75).abs() > 0.01
    torch.testing.assert_close(soft[far], hard[far], rtol=1e-4, atol=1e-4)
    wide = toy_protected.with_params(gate="soft", gate_width=0.5).eps(x, t)
    on, off = conf > 0.75, conf <= 0.75
    assert on.any() and off.any() and far.any()
    torch.testing.assert_close(hard[off], raw[off])  # below the threshold the hard gate serves the raw prediction
    assert not torch.allclose(wide[off], raw[off])  # the soft gate a fraction of the guidance
    # above it, the soft gate guides less than the hard one
    assert ((wide[on] - raw[on]).flatten(1).norm(dim=1) <= (hard[on] - raw[on]).flatten(1).norm(dim=1) + 1e-6).all()
    assert toy_protected.with_params(gate="soft").fingerprint != toy_protected.fingerprint
    with pytest.raises(ValueError, match="gate"):
        toy_protected.with_params(gate="random")


def test_ci_summary_carries_the_served_verdict_and_the_weights_leak_line():
    from privaudit.io.exports import summary

    row = {"metrics": summarize({"plugins": PROTECTED})}
    v = mitigation_verdict(before={"verdict": {"level": "critical"}}, after_res=_after(PROTECTED), row=row,
                           settings=AuditSettings(n_boot=20))
    s = summary({"kind": "mitigation", "verdict": v, "controls": [], "after": _after(PROTECTED),
                 "gate_leak": gate_leak({"metrics": {}}, row)})
    assert (s["verdict"], s["verdict_basis"], s["verdict_if_weights_leak"]) == ("low", "black-box", "high")
    assert s["gate_leak"] == pytest.approx(0.88)
