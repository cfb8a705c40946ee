"""``privaudit mitigate`` killed with SIGKILL midway resumes (``--resume``) from its finished shards to the
results of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import kill_after_shards

from privaudit.audit import scoring
from privaudit.cli import main


def _argv(target: Path, out: Path) -> list[str]:
    return ["mitigate", str(target / "model"), "--members", str(target / "members"), "--holdout",
            str(target / "holdout"), "--reference", str(target / "reference"), "--method", "rejection",
            "--out", str(out), "--attacks", "loss", "--param", "loss.k=1", "--detectors", "nn",
            "--param", "nn.n_samples=64", "--param", "nn.steps=5", "--batch-size", "8", "--bootstrap", "50",
            "--no-adaptive", "--quiet", "--device", "cpu"]


def _numbers(run: Path) -> dict:
    """Every plugin's metrics before and after, and the verdict level (timings differ between runs)."""
    body = json.loads((run / "results.json").read_text())
    return {"level": body["verdict"]["level"],
            **{f"{phase}/{p['name']}": p.get("metrics") for phase in ("before", "after") for p in body[phase]["plugins"]}}


def test_mitigate_killed_then_resumed(digits_target, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    args = _argv(digits_target, out)
    done = kill_after_shards(args, out / ".partial" / "shards", "*/*/*.npz", 12)
    assert done >= 12 and not (out / "results.json").exists()

    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(args[:args.index("--out")] + args[args.index("--out") + 2:] + ["--resume", str(out)]) in (0, 1)
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_argv(digits_target, tmp_path / "whole")) in (0, 1)
    assert _numbers(out) == _numbers(tmp_path / "whole") and len(_numbers(out)) > 1
    stages = json.loads((out / "results.json").read_text())["manifest"]["engine"]["stages"]
    assert sum(s["shards_reused"] for s in stages.values()) >= done - 1  # a shard being written may be lost
    assert not (out / ".partial").exists()  # finished: its shards are gone
