"""Where users meet privaudit: the model-card privacy section, logs that fit CI, Hub ids from the local cache."""

from __future__ import annotations

import copy
import json

import pytest

from privaudit.cli import main
from privaudit.reports.model_card import card_metadata, model_card


def _jsonable(results: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in results.items() if k not in ("scores", "tables")}, default=str))


def test_card_parses_with_huggingface_hub_and_states_the_verdict(digits_scan):
    from huggingface_hub import ModelCard

    res = _jsonable(digits_scan)
    card = ModelCard(str(model_card(res, report="run/report.html")))  # round trip through the Hub's own parser
    meta = card.data.to_dict()
    assert {"privaudit", "privacy-audit"} <= set(meta["tags"])
    pa = meta["privaudit"]
    assert pa["verdict"] == res["verdict"]["level"] and pa["kind"] == "scan" and pa["mitigation"] is None
    loss = next(p for p in res["plugins"] if p["name"] == "loss")
    row = next(a for a in pa["attacks"] if a["name"] == "loss")
    assert row["auc"] == pytest.approx(loss["metrics"]["auc"]["value"], abs=1e-4) and row["threat_model"] == "gray-box"
    assert pa["verdict_by_threat_model"]["gray-box"] == loss["severity"]
    assert pa["copy_fraction"] is not None and pa["members"] == res["at_risk"]["n_members"]
    assert f"Verdict: **{res['verdict']['level']}**" in card.text and "(run/report.html)" in card.text


def test_broken_evidence_stays_inconclusive_on_the_card(digits_scan):
    res = copy.deepcopy(_jsonable(digits_scan))
    res["verdict"] = {"level": "inconclusive"}
    for p in res["plugins"]:
        p["status"] = "failed"
    meta = card_metadata(res)
    assert meta["verdict"] == "inconclusive" and meta["verdict_by_threat_model"] == {}
    assert card_metadata({"plugins": []})["verdict"] == "inconclusive"  # no verdict at all is never "low"


def test_report_writes_the_card_next_to_nothing_else(digits_scan, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_jsonable(digits_scan)))
    out = tmp_path / "release" / "README.md"
    assert main(["report", str(run), "--model-card", str(out)]) == 0
    assert out.exists() and sorted(p.name for p in run.iterdir()) == ["results.json"]
    assert "../run/report.html" in out.read_text()
    assert main(["report", str(tmp_path / "missing"), "--model-card", str(out)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_scan_writes_the_card_beside_its_run(digits_target, tmp_path):
    from huggingface_hub import ModelCard

    out, card = tmp_path / "run", tmp_path / "card.md"
    rc = main(["scan", str(digits_target / "model"), "--members", str(digits_target / "members"), "--holdout",
               str(digits_target / "holdout"), "--attacks", "loss", "--detectors", "nn", "--param", "nn.n_samples=32",
               "--param", "loss.timesteps=[100]", "--out", str(out), "--quiet", "--device", "cpu",
               "--model-card", str(card)])
    assert rc in (0, 1)
    meta = ModelCard.load(card).data.to_dict()["privaudit"]
    assert meta["verdict"] == json.loads((out / "results.json").read_text())["verdict"]["level"]
    assert meta["report"] == "run/report.html"


@pytest.mark.parametrize("flag", [None, "--log-json"])
def test_logs_fit_a_ci_log(flag, digits_target, tmp_path, capfd):
    """stderr not a terminal: no carriage returns (no redrawn bars), one line per stage; --log-json: every
    stderr line is a JSON object."""
    argv = ["scan", str(digits_target / "model"), "--members", str(digits_target / "members"), "--holdout",
            str(digits_target / "holdout"), "--attacks", "loss", "--detectors", "nn", "--param", "nn.n_samples=32",
            "--param", "loss.timesteps=[100]", "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(argv + ([flag] if flag else [])) in (0, 1)
    from privaudit.io.progress import current_mode

    assert current_mode() in ("lines", "bars")  # main restores the default for its caller
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[transformers]")]
    if flag:
        events = [json.loads(ln) for ln in lines]
        stages = [e for e in events if e["event"] == "stage"]
        assert stages and all({"stage", "count", "seconds"} <= set(e) for e in stages)
        assert events[-1]["event"] == "verdict"
    else:
        import re

        stage = re.compile(r"^\S.*: [\d.]+(/[\d.]+)? \S+ in [\d.]+ s")
        assert sum(bool(stage.match(ln)) for ln in lines) >= 2, lines  # (an attack memoised in-process logs no stage)


def _hub_cache(tmp_path, model_dir, repo="acme/digits", sha="a" * 40):
    import shutil

    cache = tmp_path / "hf-home" / "hub"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    shutil.copytree(model_dir, folder / "snapshots" / sha)
    return tmp_path / "hf-home"


def test_a_hub_id_scans_offline_from_the_local_cache(digits_target, tmp_path, monkeypatch, capsys):
    home = _hub_cache(tmp_path, digits_target / "model")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may reach the network
    base = ["--members", str(digits_target / "members"), "--holdout", str(digits_target / "holdout"),
            "--attacks", "loss", "--detectors", "nn", "--param", "nn.n_samples=16", "--param", "loss.timesteps=[100]",
            "--quiet", "--device", "cpu"]
    assert main(["scan", "acme/digits", *base, "--out", str(tmp_path / "run")]) in (0, 1)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "models--acme--digits" in res["target"]["path"]
    capsys.readouterr()
    assert main(["scan", "acme/absent", *base, "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "not in the local Hugging Face cache" in err and "hf download acme/absent" in err
    assert main(["scan", "acme/digits", *base, "--revision", "v9", "--out", str(tmp_path / "r3")]) == 2
    assert "at revision v9" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_base_and_lora_hub_ids_resolve_from_the_cache(digits_lora_target, tmp_path, monkeypatch):
    """``--base`` and ``--lora`` given as Hub ids resolve to their cached snapshots like MODEL_DIR does, and
    the adapter found there loads onto the base found there."""
    import argparse

    import torch

    from privaudit.cli import _resolve_hub_ids
    from privaudit.model.target import load_lora_target

    home = _hub_cache(tmp_path, digits_lora_target / "base", repo="acme/base")
    _hub_cache(tmp_path, digits_lora_target / "lora", repo="acme/lora", sha="b" * 40)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = argparse.Namespace(model_dir="acme/base", base="acme/base", lora="acme/lora", revision=None)
    _resolve_hub_ids(a)
    assert str(a.model_dir).endswith("models--acme--base/snapshots/" + "a" * 40) and a.base == a.model_dir
    assert str(a.lora).endswith("models--acme--lora/snapshots/" + "b" * 40)
    den, info, _ = load_lora_target(a.model_dir, a.lora, device="cpu")
    ref, rinfo, _ = load_lora_target(digits_lora_target / "base", digits_lora_target / "lora", device="cpu")
    x = torch.randn((2, *den.sample_shape), generator=torch.Generator().manual_seed(0))
    emb = den.prompt_embeddings(["a handwritten digit one", ""])
    assert info.lora_layers == rinfo.lora_layers and info.lora_layers["unet"] > 0
    assert torch.equal(den.eps(x, 300, emb), ref.eps(x, 300, emb))
