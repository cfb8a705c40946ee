"""A wheel built from the repository, installed in a fresh virtual environment, runs the demo
(plugins come through entry points and the report templates as package data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_in_fresh_venv_runs_demo(tmp_path, digits_target):
    dist, venv, cache, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "cache", tmp_path / "work"
    run = lambda *cmd, **kw: subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, REPO)
    wheel = next(dist.glob("privaudit-*.whl"))
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "torch==2.13.0")  # the CPU build, before anything pulls CUDA
    run(py, "-m", "pip", "install", "-q", wheel)
    # Reuse the session's trained target so this test checks packaging, not training again.
    shutil.copytree(digits_target, cache / "fixtures" / "digits")
    work.mkdir()
    env = {**os.environ, "PRIVAUDIT_CACHE": str(cache), "PYTHONPATH": ""}
    # repel instead of the default cpsample: the same mitigation flow, pipeline class and report from the wheel,
    # without training two guards (measured: demo 131 s with repel, 400 s with cpsample, on 2 cores)
    proc = subprocess.run([str(venv / "bin" / "privaudit"), "demo", "--quiet", "--mitigate", "repel", "--out", "run"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("report.html")
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["verdict"]["level"] in ("high", "critical")
    assert str(venv) in results["manifest"]["plugins"]["loss"] or "entry point" in results["manifest"]["plugins"]["loss"]
    mit = json.loads((work / "run" / "mitigate" / "results.json").read_text())
    assert mit["method"] == "repel" and (work / "run" / "mitigate" / "protected" / "model_index.json").is_file()
    html = (work / "run" / "report.html").read_text()
    assert "privaudit" in html and "Verdict" in html
    listed = run(venv / "bin" / "privaudit", "plugins", cwd=work).stdout
    assert "loss" in listed and "nn" in listed and "cpsample" in listed
