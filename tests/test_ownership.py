"""privaudit deletes or replaces only what it provably wrote (issue 23, groups 1 and 6).

Foreign files planted at every depth of a finished run and of a finished fixture are refused (exit 2,
naming the file) and survive; an untouched run or fixture is replaced; ``report --out`` never lands in
a run folder; ``report --redact`` holds the run folder's lock; stale hidden siblings are cleaned up.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import usage_error as _one_line_usage_error
from conftest import run_scan

from privaudit.cli import main
from privaudit.fixtures import build_fixture
from privaudit.io.errors import InputError
from privaudit.io.ownership import MANIFEST, Ledger, ownership_problem, write_manifest


@pytest.fixture(scope="module")
def finished_run(digits_target, tmp_path_factory) -> Path:
    """One real scan run folder (loss only), copied per test."""
    out = tmp_path_factory.mktemp("own") / "run"
    run_scan(digits_target, out, attacks=("loss",), detectors=())
    return out


def _scan_argv(target: Path, out: Path) -> list[str]:
    return ["scan", str(target / "model"), "--members", str(target / "members"), "--holdout", str(target / "holdout"),
            "--out", str(out), "--device", "cpu", "--quiet", "--bootstrap", "20", "--detectors", "",
            "--attacks", "loss"]


def _nested(run: Path, tmp_path: Path) -> Path:
    """A mitigation-style copy: the run plus before/ and after/ sub-runs, the outer manifest rewritten."""
    out = tmp_path / "out"
    shutil.copytree(run, out, symlinks=True)
    shutil.copytree(run, out / "before", symlinks=True)
    shutil.copytree(run, out / "after", symlinks=True)
    write_manifest(out)
    return out


def _plant_partial(out: Path) -> Path:
    ledger = Ledger(out / ".partial", keep=False)
    ledger.write(out / ".partial" / "shards" / "scores" / "k" / "000000.npz", lambda p: p.write_bytes(b"shard"))
    (out / ".partial" / "z").write_text("mine")
    return out / ".partial" / "z"


PLANTS = {
    "top": lambda out: (out / "thesis.tex", "mine"),
    "before": lambda out: (out / "before" / "x", "mine"),
    "after-sub": lambda out: (out / "after" / "sub" / "y", "mine"),
    "hidden": lambda out: (out / "after" / ".hidden", "mine"),
    "partial": lambda out: (out / ".partial" / "z", "mine"),
}


@pytest.mark.parametrize("where", [*PLANTS, "partial-with-shards", "symlink", "changed"])
def test_scan_refuses_a_run_with_foreign_or_changed_files(where, finished_run, digits_target, tmp_path, capsys,
                                                          monkeypatch):
    import privaudit.audit.runner as runner

    monkeypatch.setattr(runner, "load_target", lambda *a, **k: pytest.fail("work started"))
    out = _nested(finished_run, tmp_path)
    assert ownership_problem(out) is None  # the untouched copy is provably privaudit's
    if where in PLANTS:
        planted, text = PLANTS[where](out)
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_text(text)
        needle = f"{planted}: not written by privaudit"
    elif where == "partial-with-shards":
        planted = _plant_partial(out)
        needle = f"{planted}: not written by privaudit (no entry in {out / '.partial' / MANIFEST})"
    elif where == "symlink":
        planted = out / "before" / "link"
        planted.symlink_to(digits_target / "fixture.json")
        needle = f"{planted}: not written by privaudit (a symbolic link)"
    else:
        planted = out / "before" / "scores.csv"
        planted.write_text(planted.read_text() + "1\n")
        needle = f"{planted}: changed since privaudit wrote it"
    before = {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else None) for p in out.rglob("*")}
    _one_line_usage_error(main(_scan_argv(digits_target, out)), capsys, needle, "choose a new or empty --out")
    assert {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else None) for p in out.rglob("*")} == before
    assert planted.is_symlink() or planted.read_text()


def test_top_level_entry_is_named_in_the_message(finished_run, tmp_path):
    out = _nested(finished_run, tmp_path)
    (out / "before" / "x").write_text("mine")
    assert ownership_problem(out) == f"{out / 'before' / 'x'}: not written by privaudit (no entry in {out / MANIFEST})"


def test_results_json_of_a_user_folder_is_not_a_run(digits_target, tmp_path, capsys, monkeypatch):
    import privaudit.audit.runner as runner

    monkeypatch.setattr(runner, "load_target", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "report.html").write_text("my own report")
    _one_line_usage_error(main(_scan_argv(digits_target, out)), capsys, out / "report.html", "not written by privaudit")
    assert (out / "report.html").read_text() == "my own report"


def test_a_run_without_a_manifest_is_not_replaced(finished_run, digits_target, tmp_path, capsys, monkeypatch):
    """A run written before manifests existed is refused (the safe default), saying why."""
    import privaudit.audit.runner as runner

    monkeypatch.setattr(runner, "load_target", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "old"
    shutil.copytree(finished_run, out)
    (out / MANIFEST).unlink()
    _one_line_usage_error(main(_scan_argv(digits_target, out)), capsys, "version before manifests")
    assert (out / "results.json").is_file()


def test_an_untouched_run_is_replaced_and_stale_siblings_removed(finished_run, digits_target, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    old = json.loads((out / "results.json").read_text())
    # a SIGKILL during publish: a complete stage and a moved-away previous run, both with manifests
    stage = tmp_path / ".run.k1ll3d.partial"
    shutil.copytree(finished_run, stage)
    moved = tmp_path / ".run.k1ll3d.old"
    shutil.copytree(finished_run, moved / "previous")
    user = tmp_path / ".run.m1ne.partial"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert main(_scan_argv(digits_target, out)) in (0, 1)
    err = capsys.readouterr().err
    assert f"removed {stage}" in err and f"removed {moved}" in err and f"left {user} in place" in err
    assert not stage.exists() and not moved.exists() and (user / "notes.txt").read_text() == "mine"
    new = json.loads((out / "results.json").read_text())
    assert (old["manifest"]["n_boot"], new["manifest"]["n_boot"]) == (200, 20)  # the new run, not the copy
    assert ownership_problem(out) is None and (out / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.m1ne.partial", "run"]  # no lock left


# --------------------------------------------------------------------------------------------- fixtures

META = {"fixture": "toy", "version": 1, "config": {"n": 1}}


def _make(tmp: Path) -> dict:
    (tmp / "model" / "unet").mkdir(parents=True)
    (tmp / "model" / "unet" / "w.bin").write_bytes(b"\0" * 64)
    (tmp / "members").mkdir()
    (tmp / "members" / "0.png").write_bytes(b"png")
    return {}


@pytest.mark.parametrize("where", ["notes.txt", "model/precious.txt", "model/unet/sub/y", ".hidden", "symlink",
                                   "changed"])
def test_fixture_refuses_foreign_or_changed_files(where, tmp_path):
    out = build_fixture(tmp_path / "toy", meta=META, make=_make)
    assert (out / MANIFEST).is_file()
    if where == "symlink":
        planted = out / "members" / "1.png"
        planted.symlink_to(out / "members" / "0.png")
    elif where == "changed":
        planted = out / "model" / "unet" / "w.bin"
        planted.write_bytes(b"\1" * 64)  # same size, other bytes
    else:
        planted = out / where
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_text("mine")
    with pytest.raises(InputError, match=str(planted).replace(".", r"\.")) as e:
        build_fixture(out, meta={**META, "version": 2}, make=_make)
    assert "not a complete toy fixture" in str(e.value)
    assert planted.is_symlink() or planted.read_bytes()
    # a complete fixture is still reused as it is: reading never deletes anything
    assert build_fixture(out, meta=META, make=lambda t: pytest.fail("rebuilt")) == out


def test_untouched_fixture_is_rebuilt_and_a_complete_one_reused(tmp_path):
    out = build_fixture(tmp_path / "toy", meta=META, make=_make)
    build_fixture(out, meta={**META, "version": 2}, make=_make)
    assert json.loads((out / "fixture.json").read_text())["version"] == 2
    assert ownership_problem(out) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no lock, no stage left


def test_fixture_out_empty_or_under_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_usage_error(main(["fixture", "digits", "--out", "", "--quiet"]), capsys, "--out ''")
    assert list(tmp_path.iterdir()) == []  # no stray ..lock
    (tmp_path / "f").write_text("keep")
    _one_line_usage_error(main(["fixture", "digits", "--out", str(tmp_path / "f" / "x"), "--quiet"]), capsys,
                          tmp_path / "f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# ----------------------------------------------------------------------------------------------- report

def test_report_out_never_lands_in_a_run_folder(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    results = (run / "results.json").read_bytes()
    for target in (run / "results.json", run / "scores.csv", run / "new.html", run / "sub" / "r.html"):
        _one_line_usage_error(main(["report", str(run), "--out", str(target)]), capsys, "inside the run folder")
    other = tmp_path / "other"
    shutil.copytree(finished_run, other)  # another run folder (found by its manifest)
    _one_line_usage_error(main(["report", str(run), "--out", str(other / "x.html")]), capsys, other)
    assert (run / "results.json").read_bytes() == results
    assert ownership_problem(run) is None

    assert main(["report", str(run), "--out", str(run / "report.html"), "--redact", "omit"]) == 0
    assert "data:image" not in (run / "report.html").read_text()
    assert ownership_problem(run) is None  # the manifest records the re-rendered report


def test_report_out_refuses_files_it_did_not_write(finished_run, tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine")
    _one_line_usage_error(main(["report", str(finished_run), "--out", str(tmp_path / "thesis.tex")]), capsys,
                          "not a privaudit HTML report")
    assert (tmp_path / "thesis.tex").read_text() == "mine"
    (tmp_path / "f").write_text("keep")
    _one_line_usage_error(main(["report", str(finished_run), "--out", str(tmp_path / "f" / "r.html")]), capsys,
                          tmp_path / "f")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root may write anywhere
            _one_line_usage_error(main(["report", str(finished_run), "--out", str(ro / "r.html")]), capsys, ro)
    finally:
        ro.chmod(0o700)
    shared = tmp_path / "shared.html"
    assert main(["report", str(finished_run), "--out", str(shared)]) == 0
    assert main(["report", str(finished_run), "--out", str(shared), "--redact", "omit"]) == 0  # its own report


def test_redact_takes_the_run_folder_lock_and_rewrites_the_manifest(finished_run, tmp_path, capsys):
    """``report --redact`` fails (exit 2) rather than waits while a run holds the folder's lock."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    files = {p: p.read_bytes() for p in run.iterdir()}
    with open(tmp_path / ".run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _one_line_usage_error(main(["report", str(run), "--redact", "omit"]), capsys, run, "writing to this folder")
        assert {p: p.read_bytes() for p in run.iterdir()} == files
    (tmp_path / ".run.lock").unlink()
    assert main(["report", str(run), "--redact", "omit"]) == 0
    assert "data:image" not in (run / "results.json").read_text()
    assert ownership_problem(run) is None  # rewritten files recorded: the run is still replaceable
    assert not (tmp_path / ".run.lock").exists()


def test_report_refuses_a_foreign_report_html_in_a_run(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    body = json.loads((run / MANIFEST).read_text())
    del body["files"]["report.html"]
    (run / MANIFEST).write_text(json.dumps(body))
    (run / "report.html").write_text("my notes")
    _one_line_usage_error(main(["report", str(run)]), capsys, run / "report.html", "not written by privaudit")
    assert (run / "report.html").read_text() == "my notes"
