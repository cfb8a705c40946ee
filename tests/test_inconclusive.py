"""Failed plugins and missing evidence never give a calm verdict: "inconclusive" (with the failures as
reasons) in results.json, report.html, summary.json, junit.xml, the exit code and the mitigation verdict."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from privaudit.cli import main
from privaudit.io.exports import junit_xml, summary

# a drop-in attack whose scoring fails as a LoRA scaled by 1e20 makes scikit-learn fail
BOOM_ATTACK = '''
from privaudit.api import MembershipAttack


class BoomAttack(MembershipAttack):
    """Fails while scoring."""

    name = "boom"
    id = "test.boom"

    def score(self, denoiser, x0, *, noise):
        raise ValueError("Input contains NaN")
'''


def _scan_with(target: Path, tmp_path: Path, attacks: str, *extra: str) -> tuple[int, Path]:
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "boom_attack.py").write_text(BOOM_ATTACK)
    out = tmp_path / f"out-{attacks.replace(',', '-')}"
    code = main(["scan", str(target / "model"), "--members", str(target / "members"), "--holdout",
                 str(target / "holdout"), "--out", str(out), "--device", "cpu", "--quiet", "--bootstrap", "20",
                 "--detectors", "", "--attacks", attacks, "--plugins-dir", str(plugins), *extra])
    return code, out


def _badge(html: str) -> str:
    first = html[:html.index('<nav class="toc"')] if '<nav class="toc"' in html else html
    return first.split('<span class="badge ', 1)[1].split(" ", 1)[0].split('"', 1)[0]


def _verdict_case(out: Path) -> ET.Element:
    suite = ET.parse(out / "junit.xml").getroot()
    return next(c for c in suite.findall("testcase") if c.get("name") == "verdict")


def test_every_attack_failing_is_inconclusive_everywhere(digits_target, tmp_path, capsys):
    code, out = _scan_with(digits_target, tmp_path, "boom", "--fail-on", "never")
    err = capsys.readouterr().err
    assert code == 3, err  # a runtime plugin failure stays exit 3, as documented
    assert "plugin boom failed: ValueError: Input contains NaN" in err and "verdict: inconclusive" in err
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"]["level"] == "inconclusive"
    assert any("boom failed: ValueError: Input contains NaN" in r for r in results["verdict"]["reasons"])
    assert _badge((out / "report.html").read_text()) == "inconclusive"
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"] == "inconclusive" and any("boom failed" in r for r in s["reasons"])
    failure = _verdict_case(out).find("failure")
    assert failure is not None and failure.get("type") == "inconclusive" and "boom failed" in failure.get("message")


def test_a_failure_beside_a_finding_keeps_the_finding_and_lists_the_failure(digits_target, tmp_path, capsys):
    code, out = _scan_with(digits_target, tmp_path, "loss,boom", "--fail-on", "critical")
    assert code == 3, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    loss = next(p for p in results["plugins"] if p["name"] == "loss")
    assert loss["severity"] in ("medium", "high", "critical")  # the memorising target: real leakage stands
    assert results["verdict"]["level"] == loss["severity"]
    assert any(r.startswith("boom failed: ") for r in results["verdict"]["reasons"])
    assert json.loads((out / "summary.json").read_text())["verdict"] == loss["severity"]


@pytest.mark.parametrize("body", [{}, {"plugins": []}, {"verdict": {}}, {"verdict": {"level": "bogus"}},
                                  {"verdict": {"level": "info"},  # an older run: every plugin failed, "info"
                                   "plugins": [{"name": "loss", "kind": "attack", "status": "error",
                                                "reason": "ValueError: Input contains NaN"}]}])
def test_results_without_a_verdict_render_inconclusive(tmp_path, body, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(body))
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    html = (run / "report.html").read_text()
    assert _badge(html) == "inconclusive" and 'class="badge info' not in html
    assert summary(body)["verdict"] == "inconclusive"
    cases = {c.get("name"): c for c in ET.fromstring(junit_xml(body)).findall("testcase")}
    assert cases["verdict"].find("failure").get("type") == "inconclusive"


def test_unusable_plugin_fails_its_junit_case():
    body = {"verdict": {"level": "inconclusive"}, "plugins": [
        {"name": "nanattack", "kind": "attack", "status": "ok", "severity": "info",
         "details": {"inconclusive": "3 of 64 membership scores are NaN or infinite"}}]}
    case = next(c for c in ET.fromstring(junit_xml(body)).findall("testcase") if c.get("name") == "membership.nanattack")
    assert case.find("failure").get("type") == "inconclusive"
    assert "NaN or infinite" in case.find("failure").get("message")


def _after(*plugins: dict) -> dict:
    return {"plugins": list(plugins), "verdict": {"warnings": []}}


LOW_GRAY = {"name": "loss", "kind": "attack", "status": "ok", "severity": "low", "threat_model": "gray-box",
            "metrics": {}, "details": {"rules": []}}
LOW_BLACK = {**LOW_GRAY, "name": "rediffuse", "threat_model": "black-box"}
FAILED_BLACK = {"name": "gen-nn", "kind": "attack", "status": "error", "severity": "info",
                "threat_model": "black-box", "reason": "ValueError: Input contains NaN", "metrics": {}, "details": {}}
HIGH_GRAY = {**LOW_GRAY, "name": "pia", "severity": "high", "details": {"rules": ["AUC is 0.91 (>= 0.80)"]}}


@pytest.mark.parametrize("plugins, level", [
    ((LOW_GRAY, LOW_BLACK), "low"),  # the control: every test judged, nothing found
    ((LOW_GRAY, LOW_BLACK, FAILED_BLACK), "inconclusive"),
    ((LOW_GRAY, FAILED_BLACK), "inconclusive"),
    ((FAILED_BLACK,), "inconclusive"),
    ((), "inconclusive"),
])
def test_a_failed_after_audit_plugin_is_never_low(plugins, level):
    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigation_verdict

    v = mitigation_verdict(before={"verdict": {"level": "high"}}, after_res=_after(*plugins), row={"metrics": {}},
                           settings=AuditSettings())
    assert v["level"] == level and v["if_weights_leak"]["level"] == level
    if FAILED_BLACK in plugins:
        assert any("gen-nn failed: ValueError: Input contains NaN" in r for r in v["reasons"])
    body = {"kind": "mitigation", "verdict": v, "after": _after(*plugins)}
    assert summary(body)["verdict"] == level
    case = next(c for c in ET.fromstring(junit_xml(body)).findall("testcase") if c.get("name") == "verdict.protected")
    assert (case.find("failure") is not None) == (level == "inconclusive")


def test_a_failure_beside_leakage_in_the_after_audit_keeps_the_leakage():
    from privaudit.audit.runner import AuditSettings
    from privaudit.mitigation.flow import mitigation_verdict

    v = mitigation_verdict(before={"verdict": {"level": "high"}}, after_res=_after(HIGH_GRAY, FAILED_BLACK),
                           row={"metrics": {}}, settings=AuditSettings())
    assert v["level"] == v["if_weights_leak"]["level"] == "high"  # no black-box attack judged: every threat model
    assert any("gen-nn failed" in r for r in v["reasons"])
