"""privaudit scan end to end on the built-in memorising target and on the null control."""

from __future__ import annotations

import json

import pandas as pd
from conftest import plugin


def test_memorising_target_is_flagged(digits_scan):
    loss, nn = plugin(digits_scan, "loss"), plugin(digits_scan, "nn")
    assert loss["status"] == nn["status"] == "ok"
    assert loss["metrics"]["auc"]["value"] >= 0.9
    assert nn["metrics"]["copy_fraction"]["value"] >= 0.5
    assert digits_scan["verdict"]["level"] in ("high", "critical")


def test_null_control_is_not_flagged(null_scan):
    loss, nn = plugin(null_scan, "loss"), plugin(null_scan, "nn")
    assert abs(loss["metrics"]["auc"]["value"] - 0.5) <= 0.1
    assert nn["metrics"]["copy_fraction"]["value"] <= 0.05


def test_metrics_carry_intervals_threat_model_and_cost(digits_scan):
    loss = plugin(digits_scan, "loss")
    for name in ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "balanced_accuracy"):
        m = loss["metrics"][name]
        assert m["ci"][0] <= m["value"] <= m["ci"][1]
    # 128 holdout images in the evaluation split cannot resolve a 0.1% FPR: say so.
    assert not loss["metrics"]["tpr_at_fpr_0.001"]["reliable"]
    assert loss["metrics"]["tpr_at_fpr_0.01"]["reliable"]
    assert loss["threat_model"] == "gray-box" and loss["queries_per_image"] == loss["params"]["k"]
    assert loss["details"]["fitted"]["timestep_"] in [50, 100, 200, 300, 500]
    cf = plugin(digits_scan, "nn")["metrics"]["copy_fraction"]
    assert cf["ci"][0] <= cf["value"] <= cf["ci"][1]


def test_run_folder_contract(digits_scan, digits_target, tmp_path):
    from conftest import run_scan

    out = tmp_path / "run"
    res = run_scan(digits_target, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == 1 and saved["kind"] == "scan"
    man = saved["manifest"]
    for key in ("argv", "versions", "device", "seed", "model", "data", "plugins", "seconds"):
        assert key in man
    assert man["model"]["weights_sha256"] and man["data"]["members"]["sha256"]
    assert man["plugins"]["loss"].startswith("entry point")
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 64 + 256 and set(scores["set"]) == {"member", "holdout"}
    assert set(scores["split"]) == {"calibration", "evaluation"} and "loss" in scores
    assert (out / "nn.csv").exists() and (out / "report.html").read_text().startswith("<!doctype html>")
    # Seeded: the same scan gives the same numbers.
    assert plugin(res, "loss")["metrics"] == plugin(digits_scan, "loss")["metrics"]


def test_calibration_and_evaluation_are_disjoint(digits_scan):
    split = plugin(digits_scan, "loss")["details"]["split"]
    assert split["calibration"] == [32, 128] and split["evaluation"] == [32, 128]


def test_fail_on_exit_code(digits_target, tmp_path):
    from privaudit.cli import main

    args = ["scan", str(digits_target / "model"), "--members", str(digits_target / "members"),
            "--holdout", str(digits_target / "holdout"), "--device", "cpu", "--quiet", "--bootstrap", "50",
            "--detectors", "", "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--out", str(tmp_path / "a"), "--fail-on", "high"]) == 1
    assert main(args + ["--out", str(tmp_path / "b")]) == 0


def test_sample_cache_is_reused(digits_denoiser, tmp_path):
    import numpy as np

    from privaudit.api.registry import Registry
    from privaudit.audit.runner import AuditContext, AuditSettings
    from privaudit.data.sets import ImageSet

    empty = ImageSet.from_array(np.zeros((1, 1, 8, 8), np.uint8), name="x")
    ctx = AuditContext(denoiser=digits_denoiser, members=empty, holdout=empty, registry=Registry(),
                       settings=AuditSettings(cache_dir=tmp_path, progress=False))
    a = ctx.samples(n=8, steps=5)
    assert len(list((tmp_path / "samples").glob("*.npy"))) == 1 and ctx.sample_seconds
    ctx.sample_seconds.clear()
    b = ctx.samples(n=8, steps=5)
    assert not ctx.sample_seconds and (a == b).all()
    assert not (ctx.samples(n=8, steps=5, seed=1) == a).all()


def test_attack_results_are_reused_only_where_the_queried_model_is_the_same(digits_target, tmp_path):
    """A mitigation run audits several ways of serving one model: an attack is recomputed only when what it
    queries changed (white-box: the weights; gray-box: the noise predictions)."""
    import privaudit.audit.runner as R
    import privaudit.audit.scoring as S
    from privaudit.api import AuditSettings
    from privaudit.api.registry import Registry
    from privaudit.data.sets import load_images
    from privaudit.model.target import load_target

    den, _, _ = load_target(digits_target / "model", device="cpu")
    members = load_images(digits_target / "members", name="members")
    holdout = load_images(digits_target / "holdout", name="holdout")
    settings = AuditSettings(attacks=("loss", "gsa"), detectors=(), progress=False, n_boot=20,
                               plugin_params={"gsa": {"n_timesteps": 2}})
    calls = []
    real = S._run_attack
    S._ATTACK_MEMO.clear()
    try:
        S._run_attack = lambda attack, **kw: calls.append(attack.name) or real(attack, **kw)
        first = R.audit(denoiser=den, members=members, holdout=holdout, registry=Registry.build(), settings=settings)
        again = R.audit(denoiser=den, members=members, holdout=holdout, registry=Registry.build(), settings=settings)
        assert calls == ["loss", "gsa"] and first["plugins"] == [dict(p, seconds=q["seconds"]) for p, q in
                                                                   zip(again["plugins"], first["plugins"])]
        from privaudit.plugins.mitigations.cpsample.guard import guard_for
        from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser

        guarded = ProtectedDenoiser(base=den, guard=guard_for(den.unet.config, block_out_channels=(8, 8)),
                                    alpha=0.5, scale=10.0)
        R.audit(denoiser=guarded, members=members, holdout=holdout, registry=Registry.build(), settings=settings)
        assert calls == ["loss", "gsa", "loss"]  # new noise predictions: loss again; the same weights: gsa reused
    finally:
        S._run_attack = real
        S._ATTACK_MEMO.clear()
