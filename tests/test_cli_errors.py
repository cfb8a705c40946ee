"""Bad inputs are one line naming the input, exit 2, found before any work, nothing written; a reused
shard of the wrong shape is computed again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import usage_error as _one_line

from privaudit.cli import main


def _scan(target: Path, out: Path, *extra, model: Path | None = None) -> int:
    return main(["scan", str(model or target / "model"), "--members", str(target / "members"), "--holdout",
                 str(target / "holdout"), "--out", str(out), "--device", "cpu", "--quiet", "--bootstrap", "20",
                 "--detectors", "", *map(str, extra)])



@pytest.fixture
def no_model_work(monkeypatch):
    import privaudit.audit.runner as runner

    monkeypatch.setattr(runner, "load_scan_target", lambda *a, **k: pytest.fail("model work started"))


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1.5"])
def test_bad_seed(digits_target, tmp_path, capsys, no_model_work, seed):
    _one_line(_scan(digits_target, tmp_path / "out", "--seed", seed), capsys, "--seed", seed)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fraction", ["0.01", "0.999"])
def test_calibration_fraction_leaving_an_empty_split(digits_target, tmp_path, capsys, no_model_work, fraction):
    _one_line(_scan(digits_target, tmp_path / "out", "--calibration-fraction", fraction), capsys,
              f"--calibration-fraction {fraction}", digits_target / "members")
    assert not (tmp_path / "out").exists()


def test_cache_dir_that_is_a_file_or_under_one(digits_target, tmp_path, capsys, no_model_work):
    (tmp_path / "f").write_text("keep")
    for cache in (tmp_path / "f", tmp_path / "f" / "sub"):
        _one_line(_scan(digits_target, tmp_path / "out", "--cache-dir", cache), capsys, "--cache-dir", cache)
    assert (tmp_path / "f").read_text() == "keep" and not (tmp_path / "out").exists()


def _copy_model(target: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(target / "model", model)
    return model


def test_unsupported_transformer_denoiser(digits_target, tmp_path, capsys):
    model = _copy_model(digits_target, tmp_path)
    (model / "unet").rename(model / "transformer")
    (model / "model_index.json").write_text(json.dumps({
        "_class_name": "AuraFlowPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "AuraFlowTransformer2DModel"]}))
    _one_line(_scan(digits_target, tmp_path / "out", model=model), capsys, model / "model_index.json",
              "AuraFlowTransformer2DModel")
    assert not (tmp_path / "out").exists()


def test_weight_file_missing_a_tensor(digits_target, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = _copy_model(digits_target, tmp_path)
    f = model / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(f))
    _one_line(_scan(digits_target, tmp_path / "out", model=model), capsys, f, dropped)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_whole_error(digits_target, tmp_path, capsys, no_model_work):
    code = main(["--debug", "scan", str(digits_target / "model"), "--members", str(digits_target / "members"),
                 "--holdout", str(digits_target / "holdout"), "--out", str(tmp_path / "out"), "--cache-dir",
                 str(digits_target / "fixture.json")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "InputError" in err and "--cache-dir" in err


def test_lora_without_peft_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from privaudit.io.errors import InputError
    from privaudit.model.target import check_peft

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(InputError, match=r"privaudit\[lora\]"):
        check_peft(tmp_path / "a.safetensors")


class _Work:
    """Rows of ``width`` numbers per item; counts its calls."""

    stage, unit = "scores", "img"

    def __init__(self, width: int | None):
        self.width, self.calls = width, 0


class _Engine:
    def describe(self) -> dict:
        return {}

    def map(self, work, items):
        for i, make in items:
            work.calls += 1
            n = int(make()["n"])
            yield i, (np.full(n, i, np.float32) if work.width is None else np.full((n, work.width), i, np.float32)), n


@pytest.mark.parametrize("width, bad", [(None, np.zeros(3, np.float32)),  # rows of the wrong count
                                        (None, np.zeros((4, 2), np.float32)),  # scores of the wrong dims
                                        (None, np.array(["a"] * 4)),  # not numbers
                                        (5, np.zeros((4, 7), np.float32))])  # features of another width
def test_a_reused_shard_of_the_wrong_shape_is_computed_again(tmp_path, width, bad):
    from privaudit.audit.engine import Session, ShardStore

    store = ShardStore(tmp_path, run_key="k")
    sizes = [4, 4, 2]
    unit = () if width is None else None  # scores declare their row shape; features learn it from computed shards
    first = Session(engine=_Engine())
    work = _Work(width)
    whole = first.run(work, label="a", key="x", sizes=sizes, make=lambda i: {"n": sizes[i]}, store=store,
                      unit_shape=unit)
    store.save("scores", "x", 1, bad, 99)  # right key, wrong shape
    again = Session(engine=_Engine())
    work = _Work(width)
    got = again.run(work, label="a", key="x", sizes=sizes, make=lambda i: {"n": sizes[i]}, store=store,
                    unit_shape=unit)
    assert work.calls == 1 and again.costs["a"].reused == 2 and again.costs["a"].shards == 1
    for g, w in zip(got, whole):
        np.testing.assert_array_equal(g, w)


def test_mismatched_lora_adapter_is_one_line_naming_the_layer(digits_lora_target, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    t = digits_lora_target
    state = load_file(str(t / "lora" / "pytorch_lora_weights.safetensors"))
    k = sorted(x for x in state if ".lora_A." in x or ".lora.down." in x)[0]
    wrong = (state[k].shape[0], state[k].shape[1] + 3, *state[k].shape[2:])
    state[k] = torch.zeros(wrong)
    lora = tmp_path / "other.safetensors"
    save_file(state, str(lora))
    out = tmp_path / "out"
    code = main(["scan", str(t / "base"), "--lora", str(lora), "--members", str(t / "members"), "--holdout",
                 str(t / "holdout"), "--out", str(out), "--attacks", "loss", "--detectors", "", "--quiet",
                 "--device", "cpu"])
    layer = k.removeprefix("unet.").split(".lora")[0]
    _one_line(code, capsys, lora, layer, str(list(wrong)))
    assert not out.exists()
