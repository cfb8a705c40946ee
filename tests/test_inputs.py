"""Loading images and models, and every kind of bad input: one clear line naming the path,
exit code 2, and nothing written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from privaudit.cli import main
from privaudit.data.sets import load_images


def _scan(model, members, holdout, out, *extra):
    return main(["scan", str(model), "--members", str(members), "--holdout", str(holdout), "--out", str(out),
                 "--device", "cpu", "--quiet", "--bootstrap", "20", "--detectors", "", *map(str, extra)])


def _assert_usage_error(code, capsys, out, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("privaudit: error: "), err
    for n in needles:
        assert str(n) in err, err
    assert not out.exists(), "nothing may be written on bad input"


@pytest.fixture
def t(digits_target):
    return digits_target


def test_missing_model_folder(t, tmp_path, capsys):
    out = tmp_path / "out"
    _assert_usage_error(_scan(tmp_path / "nope", t / "members", t / "holdout", out), capsys, out,
                        tmp_path / "nope", "does not exist")


def test_folder_that_is_not_a_pipeline(t, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    out = tmp_path / "out"
    _assert_usage_error(_scan(tmp_path / "m", t / "members", t / "holdout", out), capsys, out,
                        "model_index.json")


def test_broken_model_index(t, tmp_path, capsys):
    m = tmp_path / "m"
    shutil.copytree(t / "model", m)
    (m / "model_index.json").write_text("{ not json")
    out = tmp_path / "out"
    _assert_usage_error(_scan(m, t / "members", t / "holdout", out), capsys, out, m / "model_index.json", "invalid JSON")


def test_pickled_checkpoint_is_refused_unless_allowed(t, tmp_path, capsys):
    from diffusers import DDPMPipeline

    m = tmp_path / "pickled"
    DDPMPipeline.from_pretrained(t / "model").save_pretrained(m, safe_serialization=False)
    capsys.readouterr()
    out = tmp_path / "out"
    _assert_usage_error(_scan(m, t / "members", t / "holdout", out), capsys, out, ".bin", "--allow-pickle")
    assert _scan(m, t / "members", t / "holdout", out, "--allow-pickle") == 0


def test_empty_image_set(t, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    _assert_usage_error(_scan(t / "model", tmp_path / "empty", t / "holdout", out), capsys, out,
                        tmp_path / "empty", "holds no images")


def test_unreadable_image(t, tmp_path, capsys):
    bad = tmp_path / "members"
    shutil.copytree(t / "members", bad)
    (bad / "aaa_broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    _assert_usage_error(_scan(t / "model", bad, t / "holdout", out), capsys, out, bad / "aaa_broken.png", "unreadable")


def test_wrong_size(t, tmp_path, capsys):
    d = tmp_path / "big"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "out"
    _assert_usage_error(_scan(t / "model", d, t / "holdout", out), capsys, out, d, "16x16", "expects 8x8")


def test_wrong_channels(t, tmp_path, capsys):
    d = tmp_path / "rgb"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "out"
    _assert_usage_error(_scan(t / "model", t / "members", d, out), capsys, out, "3 channel", "expects 1")


def test_holdout_too_small_for_requested_fpr(t, tmp_path, capsys):
    out = tmp_path / "out"
    _assert_usage_error(_scan(t / "model", t / "members", t / "holdout", out, "--fpr", "0.001"), capsys, out,
                        t / "holdout", "FPR 0.001 needs at least 1000")


def test_cuda_requested_without_gpu(t, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "out"
    code = main(["scan", str(t / "model"), "--members", str(t / "members"), "--holdout", str(t / "holdout"),
                 "--out", str(out), "--device", "cuda"])
    _assert_usage_error(code, capsys, out, "no CUDA device")


def test_unknown_plugin_is_a_usage_error(t, tmp_path, capsys):
    out = tmp_path / "out"
    _assert_usage_error(_scan(t / "model", t / "members", t / "holdout", out, "--attacks", "nope"), capsys, out,
                        "unknown attack 'nope'")


def test_exact_duplicates_are_reported(t, tmp_path):

    hold = tmp_path / "holdout"
    shutil.copytree(t / "holdout", hold)
    shutil.copy(t / "members" / "members_0003.png", hold / "zz_copy.png")
    from privaudit.audit.runner import AuditSettings, scan

    res = scan(model_dir=t / "model", members=t / "members", holdout=hold, out=tmp_path / "out",
               settings=AuditSettings(attacks=(), detectors=(), progress=False), device="cpu")
    check = next(c for c in res["checks"] if c["name"] == "exact_duplicates")
    assert not check["ok"] and [list(p) for p in check["details"]["pairs"]] == [["members_0003.png", "zz_copy.png"]]
    assert any("exact copies" in w for w in res["verdict"]["warnings"])


# --- image set loading -------------------------------------------------------------------

def test_folder_is_recursive_and_accepts_formats(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(imgs[0]).save(tmp_path / "x.png")
    Image.fromarray(imgs[1]).save(tmp_path / "a" / "y.webp", lossless=True)
    Image.fromarray(imgs[2]).save(tmp_path / "a" / "b" / "z.png")
    (tmp_path / "notes.txt").write_text("ignored")
    s = load_images(tmp_path, name="members", channels=1, size=8)
    assert s.ids == ("a/b/z.png", "a/y.webp", "x.png") and s.shape == (1, 8, 8)
    x = s.tensor()
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(s.uint8([2])[0, 0], imgs[0])
    assert np.array_equal(s.uint8([1])[0, 0], imgs[1])


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "float"])
def test_arrays(tmp_path, layout):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    arr = {"nhw": base, "nhwc": base[..., None], "nchw": base[:, None], "float": base / 255.0}[layout]
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", images=arr)
    for f in ("a.npy", "b.npz"):
        s = load_images(tmp_path / f, name="holdout", channels=1, size=8)
        assert len(s) == 5 and np.array_equal(s.uint8()[:, 0], base)


def test_bad_arrays(tmp_path):
    from privaudit.io.errors import InputError

    np.save(tmp_path / "neg.npy", -np.ones((2, 8, 8)))
    with pytest.raises(InputError, match="neg.npy: float images must lie in"):
        load_images(tmp_path / "neg.npy", name="members")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy"):
        load_images(tmp_path / "obj.npy", name="members")


def test_saved_dataset_errors(tmp_path, monkeypatch):
    """`datasets` folders: a DatasetDict names its splits, a table without images names its columns,
    and a missing `datasets` package says which extra installs it."""
    import sys

    from privaudit.io.errors import InputError

    datasets = pytest.importorskip("datasets")
    imgs = [Image.fromarray(np.full((8, 8), 9 * i, np.uint8)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": imgs}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match="DatasetDict with splits test, train; pass one split's folder"):
        load_images(tmp_path / "dd", name="members")
    assert len(load_images(tmp_path / "dd" / "train", name="members", channels=1, size=8)) == 3
    datasets.Dataset.from_dict({"pixels": [[1, 2]], "label": [0]}).save_to_disk(str(tmp_path / "tab"))
    with pytest.raises(InputError, match=r"tab: expected one Image column, found 0 \(columns: pixels"):
        load_images(tmp_path / "tab", name="members")
    with pytest.raises(InputError, match="channel"):
        load_images(tmp_path / "dd" / "train", name="members", channels=3)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(InputError, match=r"train: .*privaudit\[datasets\]"):
        load_images(tmp_path / "dd" / "train", name="members")
