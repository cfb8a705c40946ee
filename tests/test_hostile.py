"""Hostile and broken inputs, built here: user files are never lost, broken evidence never reads "low"."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import usage_error as _one_line_usage_error
from PIL import Image

from privaudit.cli import main
from privaudit.data.sets import load_images
from privaudit.fixtures import build_fixture, digits


def _scan(model, members, holdout, out, *extra) -> int:
    return main(["scan", str(model), "--members", str(members), "--holdout", str(holdout), "--out", str(out),
                 "--device", "cpu", "--quiet", "--bootstrap", "20", "--detectors", "", *map(str, extra)])


# ------------------------------------------------------------------------------------------------ fixtures

def test_fixture_never_deletes_user_files(tmp_path, capsys):
    (tmp_path / "u" / "thesis").mkdir(parents=True)
    (tmp_path / "u" / "thesis" / "c1.txt").write_text("x")
    _one_line_usage_error(main(["fixture", "digits", "--out", str(tmp_path / "u"), "--quiet"]), capsys,
                          tmp_path / "u", "not a complete digits fixture")
    assert (tmp_path / "u" / "thesis" / "c1.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]  # no lock or partial beside it


def test_fixture_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    _one_line_usage_error(main(["fixture", "digits", "--out", str(tmp_path / "f"), "--quiet"]), capsys, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "keep"


def test_fixture_reuses_the_same_complete_fixture(digits_target, monkeypatch, capsys):
    monkeypatch.setattr(digits, "train_ddpm", lambda *a, **k: pytest.fail("retrained a complete fixture"))
    before = (digits_target / "fixture.json").stat().st_mtime_ns
    assert main(["fixture", "digits", "--out", str(digits_target), "--quiet"]) == 0
    assert (digits_target / "fixture.json").stat().st_mtime_ns == before


def test_fixture_is_copied_from_the_cached_target(digits_target, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "fixtures").mkdir(parents=True)
    (cache / "fixtures" / "digits").symlink_to(digits_target, target_is_directory=True)
    monkeypatch.setenv("PRIVAUDIT_CACHE", str(cache))
    monkeypatch.setattr(digits, "train_ddpm", lambda *a, **k: pytest.fail("retrained a cached fixture"))
    out = digits.build(out=tmp_path / "new", progress=False)
    assert json.loads((out / "fixture.json").read_text()) == json.loads((digits_target / "fixture.json").read_text())
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "new"]  # the lock is removed after use


META = {"fixture": "toy", "version": 1, "config": {"n": 1}}


def test_stale_partial_is_replaced_and_a_stale_build_of_ours_is_upgraded(tmp_path, capsys):
    from privaudit.io.ownership import write_manifest

    stale, foreign = tmp_path / ".toy.abc.partial", tmp_path / ".toy.def.partial"
    for d in (stale, foreign):
        d.mkdir()
        (d / "junk").write_text("half")
    write_manifest(stale)  # killed while publishing: complete and provably ours
    make = lambda tmp: (tmp / "data.txt").write_text("v1") and {}
    out = build_fixture(tmp_path / "toy", meta=META, make=make)
    assert (out / "data.txt").read_text() == "v1" and not stale.exists()
    assert (foreign / "junk").read_text() == "half"  # no manifest: not provably ours, left alone and said so
    err = capsys.readouterr().err
    assert f"removed {stale}" in err and f"left {foreign} in place" in err
    # an older version of the same fixture, untouched since privaudit wrote it, is replaced
    newer = {**META, "version": 2}
    build_fixture(out, meta=newer, make=make)
    assert json.loads((out / "fixture.json").read_text())["version"] == 2
    # ... but not once a user has put a file in it
    (out / "notes.txt").write_text("mine")
    from privaudit.io.errors import InputError

    with pytest.raises(InputError, match="notes.txt"):
        build_fixture(out, meta={**META, "version": 3}, make=make)
    assert (out / "notes.txt").read_text() == "mine"


def test_killed_fixture_build_leaves_no_temporaries(tmp_path):
    code = (
        "import sys, time; from pathlib import Path\n"
        "from privaudit.cli import raise_on_signals; raise_on_signals()\n"
        "from privaudit.fixtures import build_fixture\n"
        "def make(tmp):\n"
        "    (tmp / 'data.txt').write_text('x'); print('building', flush=True); time.sleep(60)\n"
        f"build_fixture(Path({str(tmp_path / 'toy')!r}), meta={META!r}, make=make)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "building"
    assert list(tmp_path.glob(".toy.*.partial"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))
    assert not (tmp_path / "toy").exists() and not (tmp_path / "toy.lock").exists()


# ------------------------------------------------------------------------------ broken evidence

def test_nan_weights_are_an_input_error_naming_the_file(digits_target, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(digits_target / "model", model)
    wfile = model / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(wfile)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, wfile)
    out = tmp_path / "out"
    _one_line_usage_error(_scan(model, digits_target / "members", digits_target / "holdout", out, "--fail-on", "medium"),
                          capsys, wfile, "NaN")
    assert not out.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_arrays_are_refused(digits_target, tmp_path, capsys, bad):
    arr = np.full((16, 8, 8), 0.5, dtype=np.float32)
    arr[3, 2, 2] = bad
    np.save(tmp_path / "m.npy", arr)
    out = tmp_path / "out"
    _one_line_usage_error(_scan(digits_target / "model", tmp_path / "m.npy", digits_target / "holdout", out),
                          capsys, tmp_path / "m.npy", "NaN or infinite")
    assert not out.exists()


def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    (tmp_path / "s").mkdir()
    Image.fromarray(np.full((8, 8), 12336, np.uint16)).save(tmp_path / "s" / "a.png")  # mode I;16
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "s" / "b.png")
    with Image.open(tmp_path / "s" / "a.png") as im:
        assert im.mode.startswith("I")
    x = load_images(tmp_path / "s", name="members").uint8()
    assert x[0].max() == 48 and x[0].min() == 48
    assert x[1].max() == 255


def test_out_of_range_32_bit_image_is_refused():
    from privaudit.data.sets import _pil_to_array
    from privaudit.io.errors import InputError

    assert _pil_to_array(Image.fromarray(np.full((8, 8), 12336, np.int32)), source="a.png", channels=1).max() == 48
    with pytest.raises(InputError, match="70000"):
        _pil_to_array(Image.fromarray(np.full((8, 8), 70000, np.int32)), source="a.png", channels=1)


def test_members_and_holdout_the_same_folder(digits_target, tmp_path, capsys):
    out = tmp_path / "out"
    _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", digits_target / "members", out),
                          capsys, "same as --members")
    assert not out.exists()


def test_holdout_with_identical_content(digits_target, tmp_path, capsys):
    shutil.copytree(digits_target / "members", tmp_path / "copy")
    out = tmp_path / "out"
    _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", tmp_path / "copy", out),
                          capsys, tmp_path / "copy", "every holdout image is also a member")
    assert not out.exists()


NAN_ATTACK = '''
import torch
from privaudit.api import MembershipAttack


class NanAttack(MembershipAttack):
    """Scores every image NaN (a broken attack)."""

    name = "nanattack"
    id = "test.nanattack"

    def score(self, denoiser, x0, *, noise):
        return torch.full((len(x0),), float("nan"))
'''


def test_unusable_evidence_is_inconclusive_and_fails(digits_target, tmp_path, capsys):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "nan_attack.py").write_text(NAN_ATTACK)
    out = tmp_path / "out"
    code = main(["scan", str(digits_target / "model"), "--members", str(digits_target / "members"),
                 "--holdout", str(digits_target / "holdout"), "--out", str(out), "--device", "cpu", "--quiet",
                 "--bootstrap", "20", "--detectors", "", "--attacks", "nanattack",
                 "--plugins-dir", str(tmp_path / "plugins"), "--fail-on", "critical"])
    assert code == 1, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"]["level"] == "inconclusive"
    assert any("NaN or infinite" in r for r in results["verdict"]["reasons"])
    html = (out / "report.html").read_text()
    assert "Inconclusive: the tests could not judge this model" in html and "nanattack could not judge" in html


def test_inconclusive_rules():
    from privaudit.io.verdict import fails, overall

    assert overall(["low", "info"], ["x: NaN"]) == "inconclusive"
    assert overall(["high", "low"], ["x: NaN"]) == "high"  # real evidence of leakage stands
    assert overall(["low"], []) == "low"
    assert all(fails("inconclusive", f) for f in ("low", "medium", "high", "critical"))
    assert not fails("inconclusive", "never")


# ------------------------------------------------------------------------------------- run folders

def test_out_that_is_a_file_or_under_a_file_fails_before_work(digits_target, tmp_path, capsys, monkeypatch):
    import privaudit.audit.runner as runner

    monkeypatch.setattr(runner, "load_target", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "f").write_text("keep")
    for out in (tmp_path / "f", tmp_path / "f" / "run"):
        _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", digits_target / "holdout", out),
                              capsys, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "keep"


def test_out_holding_user_files_is_refused(digits_target, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.txt").write_text("mine")
    _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", digits_target / "holdout",
                                tmp_path / "out"), capsys, "thesis.txt")
    assert (tmp_path / "out" / "thesis.txt").read_text() == "mine"


def test_rerun_replaces_the_whole_previous_run(digits_target, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("results.json", "scores.csv", "report.html", "nn.csv"):  # a previous run with a detector
        (out / name).write_text("old")
    from privaudit.io.ownership import write_manifest

    write_manifest(out)  # as privaudit writes it last: the folder is provably a previous run
    assert _scan(digits_target / "model", digits_target / "members", digits_target / "holdout", out,
                 "--param", "loss.k=1") == 0
    assert sorted(p.name for p in out.iterdir()) == [".privaudit-manifest.json", "at_risk.csv", "junit.xml",
                                                     "report.html", "results.json", "scores.csv", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries or lock left


def test_concurrent_run_into_the_same_folder_fails(digits_target, tmp_path, capsys):
    from privaudit.audit.runner import run_folder

    out = tmp_path / "out"
    with run_folder(out):
        _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", digits_target / "holdout", out),
                              capsys, out, "another privaudit run")


# ------------------------------------------------------------- crashes that must be one-line input errors

def test_decompression_bomb(digits_target, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # an 8x8 image is then over twice the limit
    shutil.copytree(digits_target / "holdout", tmp_path / "h")
    out = tmp_path / "out"
    _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", tmp_path / "h", out), capsys,
                          "DecompressionBombError")
    assert not out.exists()


def test_truncated_npz(digits_target, tmp_path, capsys):
    np.savez_compressed(tmp_path / "m.npz", images=np.zeros((16, 8, 8), np.uint8))
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "m.npz").write_bytes(data[: len(data) // 2])
    _one_line_usage_error(_scan(digits_target / "model", tmp_path / "m.npz", digits_target / "holdout",
                                tmp_path / "out"), capsys, tmp_path / "m.npz", "unreadable array")


def test_holdout_of_three_images(digits_target, tmp_path, capsys):
    (tmp_path / "h").mkdir()
    for f in sorted((digits_target / "holdout").glob("*.png"))[:3]:
        shutil.copy(f, tmp_path / "h")
    _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", tmp_path / "h",
                                tmp_path / "out"), capsys, tmp_path / "h", "at least 4")


@pytest.mark.parametrize("component,key,value,needle", [
    ("scheduler/scheduler_config.json", "num_train_timesteps", -5, "num_train_timesteps"),
    ("scheduler/scheduler_config.json", "num_train_timesteps", "abc", "num_train_timesteps"),
    ("unet/config.json", "block_out_channels", [16, 10 ** 7], "block_out_channels"),
    ("unet/config.json", "block_out_channels", [0, 32], "block_out_channels"),
])
def test_absurd_model_configs(digits_target, tmp_path, capsys, component, key, value, needle):
    model = tmp_path / "model"
    shutil.copytree(digits_target / "model", model)
    cfg = json.loads((model / component).read_text())
    cfg[key] = value
    (model / component).write_text(json.dumps(cfg))
    _one_line_usage_error(_scan(model, digits_target / "members", digits_target / "holdout", tmp_path / "out"),
                          capsys, model / component, needle)


def test_deeply_nested_results_json(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line_usage_error(main(["report", str(tmp_path / "run")]), capsys, tmp_path / "run" / "results.json")
    (tmp_path / "run" / "results.json").write_text("[1, 2]")
    _one_line_usage_error(main(["report", str(tmp_path / "run")]), capsys, "not a privaudit results file")


def test_out_under_proc_is_refused_before_work():
    from privaudit.audit.runs import check_out
    from privaudit.io.errors import InputError

    with pytest.raises(InputError, match="/proc/privaudit-test"):
        check_out(Path("/proc/privaudit-test/run"))


# ------------------------------------------------------------------ parameters, checked before any work

@pytest.mark.parametrize("extra,needles", [
    (["--param", "nn.n_samples=-5", "--detectors", "nn"], ["nn", "n_samples", "[1, 1e+07]"]),
    (["--param", "nn.n_samples=0"], ["nn", "n_samples"]),
    (["--param", "nn.n_samples=abc"], ["nn", "n_samples"]),
    (["--param", "nn.quantile=2"], ["nn", "quantile", "(0, 1)"]),
    (["--param", "nn.sampler=evil"], ["nn", "sampler", "'ddim'"]),
    (["--param", "nn.steps=1e9"], ["nn", "steps"]),
    (["--param", "loss.k=0"], ["loss", "k=0"]),
    (["--param", "loss.timesteps=[]"], ["loss", "timesteps"]),
    (["--param", "loss.timesteps=[5000]"], ["loss", "timesteps", "[0, 999]"]),
    (["--param", "nope.x=1"], ["nope"]),
    (["--param", "loss.nope=1"], ["loss", "unknown parameter 'nope'"]),
    (["--bootstrap", "0"], ["--bootstrap"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--plugins-dir", "/nonexistent"], ["/nonexistent"]),
])
def test_bad_parameters_fail_before_work(digits_target, tmp_path, capsys, monkeypatch, extra, needles):
    import privaudit.audit.runner as runner

    monkeypatch.setattr(runner, "load_target", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "out"
    _one_line_usage_error(_scan(digits_target / "model", digits_target / "members", digits_target / "holdout", out,
                                *extra), capsys, *needles)
    assert not out.exists()


def test_every_builtin_plugin_declares_valid_defaults():
    from privaudit.api.params import keyword_params, validate_params
    from privaudit.api.registry import Registry

    for reg in Registry.build():
        declared = set(vars(reg.cls).get("parameter_constraints", {})) | set(
            getattr(reg.cls, "parameter_constraints", {}))
        assert set(keyword_params(reg.cls)) <= declared, (reg.name, set(keyword_params(reg.cls)) - declared)
        validate_params(reg.cls, reg.cls().get_params())  # the defaults are allowed values


def test_plugin_file_calling_exit_is_an_input_error(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bye.py").write_text("raise SystemExit(0)\n")
    _one_line_usage_error(main(["plugins", "--plugins-dir", str(tmp_path / "p")]), capsys,
                          tmp_path / "p" / "bye.py", "SystemExit")


def test_usage_errors_are_one_line(capsys):
    _one_line_usage_error(main(["scan", "m", "--bootstrap"]), capsys, "--bootstrap")
    _one_line_usage_error(main(["nope"]), capsys, "nope")
    _one_line_usage_error(main(["fixture", "digits", "--out", "x", "--threads", "0"]), capsys, "--threads")


def test_symlinked_component_folder_is_accepted(digits_target, tmp_path):
    from privaudit.model.target import load_target, weight_files

    model = tmp_path / "model"
    model.mkdir()
    for item in (digits_target / "model").iterdir():
        (model / item.name).symlink_to(item, target_is_directory=item.is_dir())
    assert [p.name for p in weight_files(model)] == ["diffusion_pytorch_model.safetensors"]
    _, info, _ = load_target(model, device="cpu")
    assert info.weights_sha256


# ------------------------------------------------------------------------------------------ outputs

def test_results_json_is_strict_json(tmp_path):
    from privaudit.io.files import write_json

    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float64("-inf"), "d": 2})

    def refuse(name):
        raise AssertionError(f"{name} in results.json")

    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert data["a"] is None and data["b"] == [1.0, None] and data["c"] is None and data["d"] == 2
    assert [v["path"] for v in data["null_values"]] == ["a", "b[1]", "c"]


def test_csv_cells_cannot_start_formulas(digits_target, tmp_path):
    members = tmp_path / "members"
    shutil.copytree(digits_target / "members", members)
    first = sorted(members.glob("*.png"))
    first[0].rename(members / "=HYPERLINK(1).png")
    first[1].rename(members / "@SUM(1).png")
    out = tmp_path / "out"
    assert _scan(digits_target / "model", members, digits_target / "holdout", out, "--param", "loss.k=1") == 0
    cells = [line.split(",")[0] for line in (out / "scores.csv").read_text().splitlines()]
    assert "'=HYPERLINK(1).png" in cells and "'@SUM(1).png" in cells
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)


# ------------------------------------------------------------------------- defaults follow the target

def test_text_fixture_split_is_not_called_shifted():
    """The digits-text fixture's members/holdout are a random split of the same digits: the blind
    baseline flagged it (AUC 0.64, CI 0.52-0.74) because its bootstrap interval ignored the variance
    of fitting the folds; the permutation test does not."""
    from privaudit.data.checks import blind_baseline
    from privaudit.data.sets import ImageSet
    from privaudit.fixtures.digits_text import TextDigitsConfig, caption_splits

    splits = caption_splits(TextDigitsConfig())
    m, h = (ImageSet.from_array(splits[k][0][:, None], name=k) for k in ("members", "holdout"))
    res = blind_baseline(m, h, seed=0)
    assert res.ok, res.message
    assert res.details["p_value"] >= 0.05 and res.details["permutations"] == 199


def test_default_detectors_follow_the_target():
    from privaudit.api.registry import Registry
    from privaudit.audit.runner import target_detectors
    from privaudit.cli import build_parser
    from privaudit.cli.args import settings_of

    reg = Registry.build()
    assert set(target_detectors(reg, {"sampling", "white_box", "text"}, chosen=("nn",))) == {"memprompt", "promptcopy",
                                                                                            "fidelity"}
    assert target_detectors(reg, {"sampling", "white_box"}, chosen=("nn",)) == ()
    assert not reg.get("memprompt-curvature").cls.follows_target  # alternatives to memprompt run on request
    parse = lambda *extra: settings_of(build_parser().parse_args(["scan", "m", "--members", "a", "--holdout", "b", *extra]))
    default = parse()
    assert default.detectors == ("nn",) and default.follow_target
    chosen = parse("--detectors", "nn")
    assert chosen.detectors == ("nn",) and not chosen.follow_target


def test_mitigate_without_reference_sets_aside_part_of_the_holdout():
    from privaudit.data.sets import ImageSet
    from privaudit.io.errors import InputError
    from privaudit.mitigation.flow import split_reference

    hold = ImageSet.from_array(np.arange(40 * 64, dtype=np.uint8).reshape(40, 1, 8, 8) % 251, name="holdout")
    ev, ref, note = split_reference(hold, seed=0)
    assert (len(ev), len(ref)) == (30, 10) and not set(ev.ids) & set(ref.ids)
    assert set(ev.ids) | set(ref.ids) == set(hold.ids)
    assert split_reference(hold, seed=0)[1].ids == ref.ids != split_reference(hold, seed=1)[1].ids  # seeded
    assert note["reference_images"] == 10 and "set aside" in note["message"]
    with pytest.raises(InputError, match="too small"):
        split_reference(hold.subset(range(5)), seed=0)


# ------------------------------------------------------------------------------------------- memory

def test_loss_sweep_passes_a_bounded_number_of_images(digits_denoiser):
    """The timestep sweep sees the whole calibration set; the model must not (memory ~ members)."""
    import torch

    from privaudit.plugins.attacks._common import FIT_CHUNK
    from privaudit.plugins.attacks.loss import LossAttack

    rows = []

    class Counting:
        def __init__(self, den):
            self.den = den

        def __getattr__(self, name):
            return getattr(self.den, name)

        def eps(self, x, t, cond=None):
            rows.append(len(x))
            return self.den.eps(x, t, cond)

    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    attack = LossAttack(timesteps=(50, 200), k=2).fit(Counting(digits_denoiser), members=x, holdout=x.flip(0), seed=0)
    assert attack.timestep_ in (50, 200) and max(rows) <= FIT_CHUNK * 2 and sum(rows) == 2 * 2 * 2 * 300
