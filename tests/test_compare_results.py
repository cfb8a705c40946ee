"""scripts/compare-results.py: the check that a refactoring changed no seeded result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare-results.py"


def _compare(tmp_path, a: dict, b: dict, capsys) -> tuple[int, str]:
    spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    rc = mod.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    return rc, capsys.readouterr().out


def _run(auc: float, seconds: float) -> dict:
    return {"kind": "scan", "verdict": {"level": "high"}, "manifest": {"argv": ["x"], "seconds": seconds},
            "plugins": [{"name": "loss", "seconds": seconds, "metrics": {"auc": {"value": auc, "ci": [0.5, 0.9]}}}]}


def test_times_and_manifest_are_not_results(tmp_path, capsys):
    rc, out = _compare(tmp_path, _run(0.75, 1.0), _run(0.75, 9.0), capsys)
    assert rc == 0 and "0 differ" in out


def test_a_changed_metric_is_named_by_its_path(tmp_path, capsys):
    rc, out = _compare(tmp_path, _run(0.75, 1.0), _run(0.7500001, 1.0), capsys)
    assert rc == 1 and "$.plugins[0].metrics.auc.value: 0.75 before, 0.7500001 after" in out


def test_a_missing_plugin_or_level_differs(tmp_path, capsys):
    b = _run(0.75, 1.0)
    b["plugins"].append({"name": "pia"})
    b["verdict"]["level"] = "low"
    rc, out = _compare(tmp_path, _run(0.75, 1.0), b, capsys)
    assert rc == 1 and "1 items before, 2 after" in out and "'high' before, 'low' after" in out


def test_unreadable_input_is_exit_2(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{")
    spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2
