"""What privaudit may delete or replace: only what it provably wrote.

A finished run or fixture folder carries ``.privaudit-manifest.json`` (written last, atomically):
every file privaudit wrote there (relative path, size, sha256) and every folder. A folder may be
replaced or deleted only when it is empty or when its whole tree (every file and folder at every
depth, hidden ones included; a symbolic link or any other non-regular file is foreign) matches its
manifest exactly. Two cases without a top-level manifest are still provable:

- ``.partial/`` (a run's shards kept for ``--resume``, ``privaudit.audit.engine``) carries a manifest of
  its own, kept as shards are written: each file is listed with its hash, or listed as *pending*
  before it is created (a shard being written when the run died), so any file there is accounted for;
- a folder whose every entry is a sub-folder with its own verified manifest (a mitigation run that
  died after writing ``protected/`` or ``before/``).

Anything else is refused (exit 2) naming the first foreign or changed file. Folders written by
older privaudit versions carry no manifest and are refused too (the safe default).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from privaudit.io.errors import InputError

MANIFEST = ".privaudit-manifest.json"
PARTIAL = ".partial"  # a run's shards (privaudit.audit.engine), kept for --resume
MANIFEST_TMP = MANIFEST + ".tmp"  # the manifest's own temporary (one writer per folder): ours by name
MANIFEST_FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _walk(folder: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """Every entry below ``folder`` (relative POSIX path, entry), sorted, not following links."""
    stack = [("", folder)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for e in entries:
            r = f"{rel}{e.name}"
            yield r, e
            if e.is_dir(follow_symlinks=False):
                subdirs.append((r + "/", Path(e.path)))
        stack.extend(reversed(subdirs))


def describe_tree(folder: str | Path, *, skip: tuple[str, ...] = (MANIFEST, MANIFEST_TMP)) -> dict:
    """The manifest body of ``folder`` as it is now (``skip``: top-level names left out)."""
    folder = Path(folder)
    files: dict[str, dict] = {}
    dirs: list[str] = []
    for rel, e in _walk(folder):
        top = rel.split("/", 1)[0]
        if top in skip:
            continue
        if e.is_symlink():
            raise InputError(f"{folder / rel}: a symbolic link in a folder privaudit is publishing")
        if e.is_dir(follow_symlinks=False):
            dirs.append(rel)
        else:
            files[rel] = {"size": e.stat(follow_symlinks=False).st_size, "sha256": _sha256(Path(e.path))}
    return {"privaudit_manifest": MANIFEST_FORMAT, "files": files, "dirs": dirs}


def _write_manifest_file(path: Path, body: dict) -> None:
    tmp = path.parent / MANIFEST_TMP
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_manifest(folder: str | Path) -> None:
    """Record every file and folder now in ``folder`` (a finished stage, before it is published)."""
    folder = Path(folder)
    _write_manifest_file(folder / MANIFEST, describe_tree(folder, skip=(MANIFEST, MANIFEST_TMP, PARTIAL)))


def _read_manifest(folder: Path) -> dict | str:
    """The manifest of ``folder``, or why it cannot be used."""
    m = folder / MANIFEST
    try:
        st = m.lstat()
    except FileNotFoundError:
        return f"no {MANIFEST}"
    if not stat.S_ISREG(st.st_mode):
        return f"{MANIFEST} is not a regular file"
    try:
        body = json.loads(m.read_text())
    except (OSError, ValueError, RecursionError):
        return f"{MANIFEST} is unreadable"
    ok = (isinstance(body, dict) and body.get("privaudit_manifest") == MANIFEST_FORMAT
          and isinstance(body.get("files"), dict) and isinstance(body.get("dirs"), list)
          and all(isinstance(v, dict) for v in body["files"].values()))
    return body if ok else f"{MANIFEST} is not a privaudit manifest"


def _first_file(path: Path) -> Path:
    """``path``, or for a real folder the first thing inside it (what a user would recognise as theirs)."""
    if path.is_dir() and not path.is_symlink():
        for rel, e in _walk(path):
            if not e.is_dir(follow_symlinks=False):
                return path / rel
    return path


def _foreign(path: Path, manifest: Path, why: str = "") -> str:
    return f"{_first_file(path)}: not written by privaudit ({why or f'no entry in {manifest}'})"


def _check_against(folder: Path, body: dict, *, skip: tuple[str, ...], pending_ok: bool,
                   changed_ok: bool = False) -> str | None:
    """The first entry of ``folder`` that ``body`` does not account for, or a changed/missing file."""
    files, dirs = body["files"], set(body["dirs"])
    pending = set(body.get("pending", [])) if pending_ok else set()
    allowed_dirs = dirs | {"/".join(p.split("/")[:i]) for p in (*files, *pending) for i in range(1, p.count("/") + 1)}
    man = folder / MANIFEST
    seen = set()
    for rel, e in _walk(folder):
        if rel.split("/", 1)[0] in skip:
            continue
        p = folder / rel
        if e.is_symlink():
            return _foreign(p, man, "a symbolic link")
        if e.is_dir(follow_symlinks=False):
            if rel not in allowed_dirs:
                return _foreign(p, man)
            continue
        if not e.is_file(follow_symlinks=False):
            return _foreign(p, man, "not a regular file")
        if rel in pending:
            continue
        entry = files.get(rel)
        if entry is None:
            return _foreign(p, man)
        seen.add(rel)
        if changed_ok:
            continue
        if e.stat(follow_symlinks=False).st_size != entry.get("size") or _sha256(p) != entry.get("sha256"):
            return f"{p}: changed since privaudit wrote it (its size or sha256 differs from {man})"
    if not pending_ok:
        for rel in sorted(set(files) - seen):
            return f"{folder / rel}: listed in {man} but missing (the folder was changed after privaudit wrote it)"
    return None


def partial_problem(partial: Path, *, resume: bool = False) -> str | None:
    """Why the shard folder ``partial`` is not provably privaudit's (None: it is, or it is absent).
    ``resume``: a listed shard whose bytes changed (damaged) is accepted: it is read back, validated and
    computed again when unreadable; a file privaudit did not list is refused either way."""
    try:
        st = partial.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return _foreign(partial, partial / MANIFEST, "not a folder")
    if not any(partial.iterdir()):
        return None
    body = _read_manifest(partial)
    if isinstance(body, str):
        return _foreign(partial, partial / MANIFEST, f"{body}: shards of an older privaudit version or not ours")
    return _check_against(partial, body, skip=(MANIFEST, MANIFEST_TMP), pending_ok=True, changed_ok=resume)


def ownership_problem(folder: str | Path, *, resume: bool = False) -> str | None:
    """Why ``folder`` may not be replaced or deleted (None: it is absent, empty, or provably ours).
    ``resume``: its shards are about to be continued (``partial_problem``)."""
    folder = Path(folder)
    try:
        st = folder.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{folder}: a symbolic link, not a folder privaudit wrote"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder}: exists and is not a folder"
    names = sorted(os.listdir(folder))
    if not names:
        return None
    if problem := partial_problem(folder / PARTIAL, resume=resume):
        return problem
    body = _read_manifest(folder)
    if isinstance(body, dict):
        return _check_against(folder, body, skip=(MANIFEST, MANIFEST_TMP, PARTIAL), pending_ok=False)
    # no manifest: provable only when every entry is a sub-folder with its own verified manifest
    for name in names:
        if name == PARTIAL:
            continue
        sub = folder / name
        if sub.is_symlink() or not sub.is_dir() or isinstance(_read_manifest(sub), str):
            return _foreign(sub, folder / MANIFEST,
                            f"no {folder / MANIFEST}: not a privaudit folder, or one written by a version "
                            "before manifests")
        if problem := ownership_problem(sub):
            return problem
    return None


def check_replaceable(folder: str | Path, *, hint: str = "choose a new or empty --out", resume: bool = False) -> None:
    """Exit 2 naming the first foreign or changed file unless ``folder`` may be replaced."""
    if problem := ownership_problem(folder, resume=resume):
        raise InputError(f"{problem}; {hint}")


def remove_owned(folder: str | Path, *, hint: str = "choose a new or empty --out") -> None:
    """Delete ``folder`` after checking that privaudit provably wrote all of it."""
    folder = Path(folder)
    check_replaceable(folder, hint=hint)
    if folder.exists():
        shutil.rmtree(folder)


def clear_owned(folder: str | Path, *, hint: str = "choose a new or empty --out") -> None:
    """Empty ``folder`` (its ``.partial`` shards excepted: ``privaudit.audit.engine`` keeps or removes them) after
    checking that privaudit provably wrote all of it: a run that writes in place starts from nothing."""
    folder = Path(folder)
    check_replaceable(folder, hint=hint)
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        if p.name == PARTIAL:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def refresh_manifests(folder: str | Path) -> None:
    """After privaudit rewrote files it had listed (``report --redact``, ``report``), record their new
    sizes and hashes, deepest manifest first. Files not listed are never adopted."""
    folder = Path(folder)
    found = sorted((p for p in [folder / MANIFEST, *folder.rglob(MANIFEST)] if p.is_file() and not p.is_symlink()),
                   key=lambda p: -len(p.parts))
    for m in dict.fromkeys(found):
        body = _read_manifest(m.parent)
        if isinstance(body, str):
            continue
        for rel, entry in body["files"].items():
            f = m.parent / rel
            if f.is_file() and not f.is_symlink():
                entry.update(size=f.stat().st_size, sha256=_sha256(f))
        _write_manifest_file(m, body)


def add_to_manifest(folder: str | Path, rel: str) -> None:
    """Record one file privaudit (re)wrote in ``folder`` (e.g. ``report.html`` re-rendered)."""
    folder = Path(folder)
    body = _read_manifest(folder)
    if isinstance(body, str):
        return
    f = folder / rel
    body["files"][rel] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    _write_manifest_file(folder / MANIFEST, body)


def listed(folder: Path, rel: str) -> bool:
    body = _read_manifest(folder)
    return isinstance(body, dict) and rel in body["files"]


def remove_stale_siblings(out: str | Path, *, say=None) -> None:
    """Remove hidden ``.OUT.*.partial`` / ``.OUT.*.old`` siblings a killed publish left, when privaudit
    provably wrote them (call with the folder's lock held: no live run owns them). One line each on stderr."""
    out = Path(os.path.abspath(out))
    say = say or (lambda msg: print(msg, file=sys.stderr))
    if not out.parent.is_dir():
        return
    for sib in sorted([*out.parent.glob(f".{out.name}.*.partial"), *out.parent.glob(f".{out.name}.*.old")]):
        if sib.is_symlink() or not sib.is_dir():
            continue
        problem = ownership_problem(sib)
        if problem is None:
            shutil.rmtree(sib, ignore_errors=True)
            say(f"privaudit: removed {sib}: left by an interrupted privaudit run (every file matched its manifest)")
        else:
            say(f"privaudit: left {sib} in place: {problem}")


@contextmanager
def folder_lock(out: str | Path, *, wait: bool, busy: str) -> Iterator[None]:
    """Hold ``.OUT.lock`` beside ``out`` (``wait``: block; else exit 2 with ``busy``). The lock file is
    removed on release; a waiter that then holds a removed file's lock retries on the new one."""
    out = Path(os.path.abspath(out))  # "." or "RUN/" name the folder itself: its lock sits beside it
    lock_path = out.parent / f".{out.name}.lock"
    while True:
        try:
            f = open(lock_path, "a")
        except OSError as e:
            raise InputError(f"{lock_path}: cannot create the lock file ({e.strerror or e.__class__.__name__})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            raise InputError(busy) from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the holder removed it as we waited: lock the current one
    try:
        yield
    finally:
        try:
            lock_path.unlink(missing_ok=True)
        finally:
            f.close()


class Ledger:
    """The manifest of a folder privaudit fills file by file (a run's ``.partial`` shards): each file is
    listed as pending before it (or its temporary) is created, and with its size and hash once in place,
    so whatever a killed run leaves there is accounted for (``partial_problem``)."""

    def __init__(self, folder: str | Path, *, keep: bool):
        self.folder = Path(folder)
        body = _read_manifest(self.folder) if keep else None
        self.body: dict[str, Any] = body if isinstance(body, dict) else {
            "privaudit_manifest": MANIFEST_FORMAT, "files": {}, "dirs": [], "pending": []}
        for rel in list(self.body["files"]):  # resumed: --resume takes the listed shards as they are now
            f = self.folder / rel
            if f.is_file() and not f.is_symlink():
                self.body["files"][rel] = {"size": f.stat().st_size, "sha256": _sha256(f)}
            else:
                del self.body["files"][rel]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save()

    def _save(self) -> None:
        _write_manifest_file(self.folder / MANIFEST, self.body)

    def write(self, path: Path, write: Callable[[Path], object]) -> None:
        """``write(tmp)`` fills a temporary file that then replaces ``path`` (inside the folder) atomically."""
        rel = path.relative_to(self.folder).as_posix()
        tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        trel = tmp.relative_to(self.folder).as_posix()
        self.body["pending"] = sorted({*self.body["pending"], rel, trel})
        self._save()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.body["files"][rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        self.body["pending"] = [p for p in self.body["pending"] if p not in (rel, trel)]
        self._save()
