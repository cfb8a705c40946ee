"""Hostile data sets (issue 23, group 7): every input is read once, up front, regular files only, and a
bad one ends with exit 2 and one line naming the file (and row), never a traceback, a hang or leftovers."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import usage_error as _usage_error
from PIL import Image

from privaudit.cli import main
from privaudit.data.sets import load_checked, load_images
from privaudit.io.errors import InputError

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _no_hang():
    """A FIFO that is opened blocks forever: fail the test instead."""
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("timed out: an input blocked"))
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tiny(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(n)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(side: int) -> bytes:
    """A valid grey PNG of side x side zeros: a few hundred KB that decode to side**2 bytes."""
    comp = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _text_bomb_png(*, kind: bytes, before_idat: bool, mb: int = 16) -> bytes:
    """A valid 8x8 PNG with a compressed text chunk that inflates to ``mb`` MB (PIL allows 1 MB)."""
    good = _png(np.zeros((8, 8), np.uint8))
    text = zlib.compress(b" " * (mb << 20), 9)
    data = b"Comment\0\0" + text if kind == b"zTXt" else b"Comment\0\1\0\0\0" + text
    at = good.index(b"IDAT") - 4 if before_idat else good.index(b"IEND") - 4
    return good[:at] + _chunk(kind, data) + good[at:]


def _dataset(path: Path, cells: list, captions: list[str] | None = None) -> Path:
    """A saved `datasets` folder whose Image column holds ``cells`` (PNG bytes, None, or {"bytes", "path"})."""
    cols: dict = {"image": [{"bytes": c, "path": None} if isinstance(c, bytes) else c for c in cells]}
    feats = {"image": datasets.Image()}
    if captions is not None:
        cols["text"], feats["text"] = captions, datasets.Value("string")
    datasets.Dataset.from_dict(cols, features=datasets.Features(feats)).save_to_disk(str(path))
    return path


def _path_cell_dataset(path: Path, target: str) -> Path:
    """A saved dataset whose first cell holds only a path (as older `datasets` versions saved them):
    written as a plain struct, then declared an Image column (save_to_disk would read the file)."""
    struct_feat = datasets.Features({"image": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    rows = [{"bytes": None, "path": target}] + [{"bytes": b, "path": None} for b in _tiny(3)]
    datasets.Dataset.from_dict({"image": rows}, features=struct_feat).save_to_disk(str(path))
    info = json.loads((path / "dataset_info.json").read_text())
    info["features"] = {"image": {"_type": "Image"}}
    (path / "dataset_info.json").write_text(json.dumps(info))
    return path


def _raises(fn, *needles) -> str:
    with pytest.raises(InputError) as e:
        fn()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    for n in needles:
        assert str(n) in msg, msg
    return msg


def _check(path, **kw):
    return lambda: load_checked(path, name="members", channels=1, **kw)


# ----------------------------------------------------------------------------------- `datasets` cells

@pytest.mark.parametrize("cell, needle", [(b"garbage", "unreadable image"), (None, "no image (null)"),
                                          ({"bytes": b"\x89PNG\r\n\x1a\n", "path": "x.png"}, "unreadable image")])
def test_dataset_bad_cell_names_folder_and_row(tmp_path, cell, needle):
    good = _tiny(4)
    d = _dataset(tmp_path / "ds", good[:2] + [cell] + good[2:])
    _raises(_check(d, size=8), d, "row 2", needle)


def test_dataset_bad_cell_late_in_the_set_is_found_up_front(tmp_path):
    """Only the first image was decoded before: row 40 of 41 failed in the duplicate checks."""
    cells = _tiny(40) + [b"garbage"]
    d = _dataset(tmp_path / "ds", cells)
    assert len(load_images(d, name="members", channels=1, size=8)) == 41  # lazy: not read yet
    _raises(_check(d, size=8), d, "row 40", "unreadable image")


def test_dataset_decompression_bomb(tmp_path):
    bomb = _bomb_png(12_000)  # 144 M pixels, above PIL's warning limit, in about 150 KB
    assert len(bomb) < 1 << 20
    d = _dataset(tmp_path / "ds", [bomb] + _tiny(3))
    _raises(_check(d, size=8), d, "row 0", "DecompressionBomb")  # PIL's warning made an error: refused from the header
    _raises(_check(d), d, "row 0", "DecompressionBomb")
    big = _dataset(tmp_path / "big", _tiny(3) + [_bomb_png(3_000)])  # under PIL's limit: the model's size refuses it
    _raises(_check(big, size=8), big, "row 3", "3000x3000", "expects 8x8")


@pytest.mark.parametrize("target", ["/etc/passwd", "fifo", "inside"])
def test_dataset_path_cells_are_refused(tmp_path, target):
    """A cell holding only a path is never opened: not a system file, not a FIFO (which would block
    forever), not even a file inside the dataset folder (the saved folder holds no image files)."""
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo.png")
        target = str(tmp_path / "fifo.png")
    elif target == "inside":
        (tmp_path / "ds").mkdir()
        target = str(tmp_path / "ds" / "img.png")
    d = _path_cell_dataset(tmp_path / "ds", target)
    if target.endswith("img.png"):
        Path(target).write_bytes(_tiny(1)[0])
    _raises(_check(d, size=8), d, "row 0", "only a path", target)


# ----------------------------------------------------------------------------------- image files

def _folder(path: Path, n: int = 4) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(_tiny(n)):
        (path / f"img{i}.png").write_bytes(b)
    return path


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "dangling"])
def test_non_regular_image_file_is_refused_not_read(tmp_path, kind):
    d = _folder(tmp_path / "m")
    bad = d / "zz.png"
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(bad))
        s.close()
    elif kind == "device":
        bad.symlink_to("/dev/zero")  # would stream forever
    else:
        bad.symlink_to(tmp_path / "gone.png")
    want = {"fifo": "is a FIFO", "socket": "is a socket", "device": "character device", "dangling": "cannot open"}
    _raises(_check(d, size=8), bad, want[kind])


def test_npy_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "m.npy")
    _raises(lambda: load_images(tmp_path / "m.npy", name="members"), tmp_path / "m.npy", "is a FIFO")


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
@pytest.mark.parametrize("before_idat", [True, False])
def test_png_with_huge_text_chunk(tmp_path, kind, before_idat):
    d = _folder(tmp_path / "m")
    (d / "text.png").write_bytes(_text_bomb_png(kind=kind, before_idat=before_idat))
    _raises(_check(d, size=8), d / "text.png", "unreadable image")


def test_folder_bomb_is_refused_by_size(tmp_path):
    d = _folder(tmp_path / "m")
    (d / "bomb.png").write_bytes(_bomb_png(12_000))
    _raises(_check(d, size=8), d / "bomb.png", "DecompressionBomb")
    (d / "bomb.png").write_bytes(_bomb_png(3_000))
    _raises(_check(d, size=8), d / "bomb.png", "3000x3000", "expects 8x8")


def test_image_that_is_a_postscript_file_is_not_decoded(tmp_path):
    """PIL hands EPS to Ghostscript: only raster formats are decoded."""
    d = _folder(tmp_path / "m")
    (d / "ps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    _raises(_check(d, size=8), d / "ps.png", "unreadable image")


def test_checked_set_keeps_hashes_for_the_duplicate_check(tmp_path):
    d = _folder(tmp_path / "m", 6)
    s = load_checked(d, name="members", channels=1, size=8)
    lazy = load_images(d, name="members", channels=1, size=8)
    assert s.hashes and list(s.hashes) == lazy.content_hashes() == s.content_hashes()
    assert s.subset([4, 1]).content_hashes() == [s.hashes[4], s.hashes[1]]


# ----------------------------------------------------------------------------------- caption metadata

def _captioned(path: Path, rows: list[dict] | str, n: int = 4) -> Path:
    _folder(path, n)
    text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    (path / "metadata.jsonl").write_text(text)
    return path


def _rows(n: int = 4) -> list[dict]:
    return [{"file_name": f"img{i}.png", "text": f"caption {i}"} for i in range(n)]


def test_metadata_naming_a_file_twice(tmp_path):
    d = _captioned(tmp_path / "m", _rows() + [{"file_name": "./img1.png", "text": "other"}])
    _raises(_check(d, size=8), d / "metadata.jsonl", "line 5", "img1.png again", "line 2")


def test_metadata_csv_naming_a_file_twice(tmp_path):
    d = _folder(tmp_path / "m")
    (d / "metadata.csv").write_text("file_name,text\n" + "".join(f"img{i}.png,c{i}\n" for i in range(4)) + "img0.png,x\n")
    _raises(_check(d, size=8), d / "metadata.csv", "row 5", "img0.png again", "row 1")


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlinked_folder"])
def test_metadata_row_outside_the_folder(tmp_path, escape):
    outside = _folder(tmp_path / "outside", 1)
    d = _folder(tmp_path / "m")
    if escape == "dotdot":
        name = "../outside/img0.png"
    elif escape == "absolute":
        name = str(outside / "img0.png")
    else:
        (d / "link").symlink_to(outside, target_is_directory=True)
        name = "link/img0.png"
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows() + [{"file_name": name, "text": "x"}]))
    _raises(_check(d, size=8), d / "metadata.jsonl", "line 5", name)


def test_metadata_line_that_is_not_an_object(tmp_path):
    d = _captioned(tmp_path / "m", "".join(json.dumps(r) + "\n" for r in _rows()) + "[1, 2]\n")
    _raises(_check(d, size=8), d / "metadata.jsonl", "line 5", "JSON object")
    d2 = _captioned(tmp_path / "m2", "{not json\n")
    _raises(_check(d2, size=8), d2 / "metadata.jsonl", "line 1", "not JSON")


def test_metadata_fifo_is_refused(tmp_path):
    d = _folder(tmp_path / "m")
    os.mkfifo(d / "metadata.jsonl")
    _raises(_check(d, size=8), d / "metadata.jsonl", "is a FIFO")


def test_linked_image_keeps_its_caption(tmp_path):
    """An image that is a symlink (e.g. into a cache) is fine: only rows leaving the folder are refused."""
    store = _folder(tmp_path / "store", 1)
    d = _captioned(tmp_path / "m", _rows(5))
    (d / "img4.png").symlink_to(store / "img0.png")
    s = load_checked(d, name="members", channels=1, size=8)
    assert s.captions == tuple(f"caption {i}" for i in range(5))


# ----------------------------------------------------------------------------------- captions shift

def _set(name: str, captions: list[str] | None, *, n: int = 48, seed: int = 0):
    from privaudit.data.sets import ImageSet

    imgs = np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    return ImageSet.from_array(imgs, name=name, captions=captions)


def _captions(n: int, seed: int) -> list[str]:
    """Captions from one generator (the text fixture's kind): the same distribution for every seed."""
    from privaudit.fixtures.digits_text import NUMBER_WORDS, id_words

    rng = np.random.default_rng(seed)
    return [f"a handwritten digit {NUMBER_WORDS[int(rng.integers(10))]}, sample {w}" for w in id_words(n, seed=seed)]


@pytest.mark.parametrize("change", ["missing", "blank", "padded"])
def test_caption_shift_is_caught(change):
    from privaudit.data.checks import caption_baseline, run_checks

    h = _set("holdout", _captions(48, seed=1), seed=1)
    sus = {"missing": None, "blank": [""] * 48, "padded": [c + " " * 30 + "." * 20 for c in _captions(48, seed=2)]}
    s = _set("suspect", sus[change], seed=2)
    res = caption_baseline(s, h, seed=0)
    assert not res.ok, res.message
    assert "captions alone separates members from holdout" in res.message and res.details["p_value"] < 0.05
    assert [c.name for c in run_checks(s, h, seed=0, captions=True)][-1] == "caption_baseline"
    assert "caption_baseline" not in [c.name for c in run_checks(s, h, seed=0, captions=False)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_caption_distribution_is_not_called_shifted(seed):
    from privaudit.data.checks import caption_baseline

    res = caption_baseline(_set("members", _captions(48, seed=10 + seed)), _set("holdout", _captions(48, seed=20 + seed)),
                           seed=seed)
    assert res.ok, res.message


def test_identical_or_absent_captions_need_no_classifier():
    from privaudit.data.checks import caption_baseline, run_checks

    res = caption_baseline(_set("members", ["same"] * 8, n=8), _set("holdout", ["same"] * 8, n=8, seed=1))
    assert res.ok and res.details["auc"] is None
    names = [c.name for c in run_checks(_set("members", None, n=8), _set("holdout", None, n=8, seed=1), captions=True)]
    assert "caption_baseline" not in names


# ----------------------------------------------------------------------------------- command line


def _digits_dataset(digits_target: Path, path: Path, bad_row: int, cell) -> Path:
    files = sorted((digits_target / "members").glob("*.png"))[:12]
    cells = [f.read_bytes() for f in files]
    cells[bad_row] = cell
    return _dataset(path, cells)


def test_scan_with_a_bad_dataset_cell_exits_2_before_work(digits_target, tmp_path, capsys):
    d = _digits_dataset(digits_target, tmp_path / "ds", 9, b"garbage")
    capsys.readouterr()  # the dataset's progress bar
    out = tmp_path / "out"
    code = main(["scan", str(digits_target / "model"), "--members", str(d), "--holdout", str(digits_target / "holdout"),
                 "--out", str(out), "--device", "cpu", "--quiet", "--detectors", ""])
    _usage_error(code, capsys, d, "row 9", "unreadable image")
    assert not out.exists()


def test_scan_with_a_broken_reference_no_plugin_reads(digits_target, tmp_path, capsys):
    """No plugin of this plan reads --reference, yet results.json would record its fingerprint."""
    ref = tmp_path / "ref"
    shutil.copytree(digits_target / "reference", ref)
    os.mkfifo(ref / "zzz.png")
    out = tmp_path / "out"
    code = main(["scan", str(digits_target / "model"), "--members", str(digits_target / "members"),
                 "--holdout", str(digits_target / "holdout"), "--reference", str(ref), "--out", str(out),
                 "--device", "cpu", "--quiet", "--detectors", "", "--attacks", "loss"])
    _usage_error(code, capsys, ref / "zzz.png", "is a FIFO")
    assert not out.exists()


@pytest.mark.parametrize("broken", ["members", "reference"])
def test_mitigate_with_bad_data_leaves_nothing(digits_target, tmp_path, capsys, broken):
    """Was: a traceback after 28 s of auditing, with a `.partial` folder left behind."""
    members, ref = digits_target / "members", tmp_path / "ref"
    shutil.copytree(digits_target / "reference", ref)
    if broken == "members":
        members = _path_cell_dataset(tmp_path / "ds", "/etc/passwd")
        bad = [members, "row 0", "only a path"]
    else:
        (ref / "zzz.png").write_bytes(_text_bomb_png(kind=b"zTXt", before_idat=True))
        bad = [ref / "zzz.png", "unreadable image"]
    capsys.readouterr()  # the dataset's progress bar
    out = tmp_path / "out"
    code = main(["mitigate", str(digits_target / "model"), "--members", str(members), "--holdout",
                 str(digits_target / "holdout"), "--reference", str(ref), "--out", str(out), "--quiet",
                 "--device", "cpu"])
    _usage_error(code, capsys, *bad)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ref"] + (["ds"] if broken == "members" else []))
