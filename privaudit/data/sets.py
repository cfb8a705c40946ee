"""Image sets: members and holdout, loaded lazily from folders or arrays.

Sources accepted (``load_images``):

- an image folder, searched recursively for ``.png``, ``.jpg``/``.jpeg``, ``.webp``;
- a ``datasets.Dataset`` folder written by ``save_to_disk`` (one Image column; captions from a
  ``text``/``caption``/``prompt`` column; needs the ``datasets`` package, extra ``[datasets]``);
- a ``.npy`` file (memory-mapped) or a ``.npz`` file (its only array, or ``images``),
  shaped (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 in 0..255 or float in [0, 1].

Images are kept as uint8 on disk and converted per batch to the model's range
([-1, 1] for diffusers pixel models), so a set never needs to fit in memory at once.
Every image has a stable id (its relative path, or ``name[i]``) and a content hash of
its decoded pixels, which the duplicate check uses.

Hostile or broken inputs end with exit 2 naming the file (and row), never a traceback or a hang:
every file is opened only when it is a regular file (``open_regular``: a FIFO, device, socket or
folder named like an image is refused, never read); images are decoded by PIL restricted to
``IMAGE_FORMATS``, with its decompression-bomb warning made an error and the model's image size
checked from the header before any pixels are decoded, so memory stays bounded by one image. A
``datasets`` cell must hold the image's bytes: a cell holding only a path (to any file, inside the
dataset folder or not) is refused, as is a null cell. ``load_checked`` (what the flows call for
members, holdout, suspect and ``--reference``) reads every image once, up front and streaming,
so a bad image fails before any work starts, and keeps each image's content hash for the
duplicate check.

Captions (text-conditional models): an image folder may hold ``metadata.jsonl`` or
``metadata.csv`` files, the layout of the ``datasets`` image folder: one row per image,
``file_name`` relative to the metadata file's folder, and the caption in a ``text`` column
(else ``caption``, ``prompt``, or ``label``: the class of a class-conditional model). Then every image needs a caption; ``ImageSet.captions``
holds them in image order (empty for uncaptioned sets). A metadata row must name a file inside
its folder (no absolute path, no ``..``, no symlink leading out of the folder), and each image
at most once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
import torch

from privaudit.io.errors import InputError
from privaudit.io.files import sha256_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
_ONE_CHANNEL_MODES = {"1", "L", "I", "I;16", "F", "LA"}
# What PIL may decode: common raster formats only (never EPS/PDF, which PIL hands to Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass(frozen=True)
class ImageSet:
    """A named, lazily read set of images of one shape (C, H, W)."""

    name: str
    source: str
    ids: tuple[str, ...]
    shape: tuple[int, int, int]
    _read: Callable[[Sequence[int] | np.ndarray], np.ndarray] = field(repr=False, compare=False)
    files: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()
    hashes: tuple[str, ...] = ()  # content hashes, once ``load_checked`` has read every image

    def __len__(self) -> int:
        return len(self.ids)

    def uint8(self, index: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Images ``index`` (all by default) as uint8 (n, C, H, W)."""
        return self._read(range(len(self)) if index is None else index)

    def tensor(self, index: Sequence[int] | np.ndarray | None = None, *, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images as float32 in [-1, 1], (n, C, H, W)."""
        x = torch.from_numpy(np.ascontiguousarray(self.uint8(index))).to(device)
        return x.float().div_(127.5).sub_(1.0)

    def batches(self, batch_size: int, *, device: str | torch.device = "cpu") -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (indices, images in [-1, 1]) batch by batch."""
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield idx, self.tensor(idx, device=device)

    def subset(self, index: Sequence[int] | np.ndarray, *, name: str | None = None) -> "ImageSet":
        index = np.asarray(index, dtype=int)
        parent = self._read
        return ImageSet(
            name=name or self.name,
            source=self.source,
            ids=tuple(self.ids[i] for i in index),
            shape=self.shape,
            _read=lambda idx: parent(index[np.asarray(idx, dtype=int)]),
            files=tuple(self.files[i] for i in index) if self.files else (),
            captions=tuple(self.captions[i] for i in index) if self.captions else (),
            hashes=tuple(self.hashes[i] for i in index) if self.hashes else (),
        )

    def content_hashes(self, batch_size: int = 512) -> list[str]:
        """sha256 of each image's decoded pixels (finds duplicates across file formats)."""
        if self.hashes:
            return list(self.hashes)
        out: list[str] = []
        for start in range(0, len(self), batch_size):
            for img in self.uint8(range(start, min(start + batch_size, len(self)))):
                out.append(hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
        return out

    def fingerprint(self) -> dict:
        """Provenance: count, shape and sha256 of the files it came from."""
        # A saved `datasets` folder has no file per image: hash its Arrow shards.
        files = self.files or (sorted(Path(self.source).glob("*.arrow")) if Path(self.source).is_dir() else ())
        if files:
            digest = hashlib.sha256()
            for f in files:
                digest.update(sha256_file(f).encode())
            sha = digest.hexdigest()
        else:
            sha = sha256_file(self.source)
        out = {"path": self.source, "count": len(self), "shape": list(self.shape), "sha256": sha}
        if self.captions:
            out["captions_sha256"] = hashlib.sha256("\n".join(self.captions).encode()).hexdigest()
        return out

    @staticmethod
    def from_array(array: np.ndarray, *, name: str, source: str = "<array>",
                   captions: Sequence[str] | None = None) -> "ImageSet":
        """Wrap an in-memory uint8 (N, C, H, W) array (tests, generated samples), optionally captioned."""
        if array.ndim != 4 or array.dtype != np.uint8:
            raise InputError(f"{source}: expected uint8 array (N, C, H, W), got {array.dtype} {array.shape}")
        if captions is not None and len(captions) != len(array):
            raise InputError(f"{source}: {len(captions)} captions for {len(array)} images")
        return ImageSet(name=name, source=source, ids=tuple(f"{name}[{i}]" for i in range(len(array))),
                        shape=tuple(array.shape[1:]), _read=lambda idx: array[np.asarray(idx, dtype=int)],
                        captions=tuple(str(c) for c in captions) if captions is not None else ())


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float images -> uint8 (n, C, H, W), the inverse of ``ImageSet.tensor``."""
    return x.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu().numpy()


def load_images(path: str | Path, *, name: str, channels: int | None = None, size: int | tuple[int, int] | None = None) -> ImageSet:
    """Load a folder or array file, checked against the model's ``channels`` and ``size``.

    Images are read lazily; ``load_checked`` also reads every one of them now."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {name} path does not exist")
    want = None if size is None else ((size, size) if isinstance(size, int) else (int(size[0]), int(size[1])))
    if path.is_dir() and _is_saved_dataset(path):
        images = _load_saved_dataset(path, name=name, channels=channels, size=want)
    elif path.is_dir():
        images = _load_folder(path, name=name, channels=channels, size=want)
    elif path.suffix in (".npy", ".npz"):
        open_regular(path).close()  # np.load would block on a FIFO
        images = _load_array(path, name=name)
    else:
        raise InputError(f"{path}: {name} must be an image folder, a saved `datasets` folder or a .npy/.npz file")
    if len(images) == 0:
        raise InputError(f"{path}: {name} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    c, h, w = images.shape
    if channels is not None and c != channels:
        raise InputError(f"{path}: {name} images have {c} channel(s), the model expects {channels}")
    if want is not None and (h, w) != want:
        raise InputError(f"{path}: {name} images are {h}x{w}, the model expects {want[0]}x{want[1]}")
    return images


def load_checked(path: str | Path, *, name: str, channels: int | None = None,
                 size: int | tuple[int, int] | None = None, batch_size: int = 256) -> ImageSet:
    """``load_images``, then every image read once, up front and streaming (``batch_size`` at a time):
    an unreadable, oversized or non-regular file fails here, naming it, before any work starts. The
    content hashes computed on the way are kept, so the duplicate check does not decode again."""
    images = load_images(path, name=name, channels=channels, size=size)
    hashes: list[str] = []
    for start in range(0, len(images), batch_size):
        for img in images.uint8(range(start, min(start + batch_size, len(images)))):
            hashes.append(hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
    return dataclasses.replace(images, hashes=tuple(hashes))


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (symlinks followed), else InputError.

    The type is checked on the opened descriptor (no race with a swap after a check), and the open is
    non-blocking, so a FIFO is refused at once instead of blocking forever; a device or a socket would
    stream or block too."""
    def refuse(mode: int) -> InputError:
        kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
        return InputError(f"{path}: is {kind}; privaudit reads only regular files")

    try:
        if not stat.S_ISREG(mode := os.stat(path).st_mode):  # names what it is (a socket cannot be opened)
            raise refuse(mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e.strerror or e.__class__.__name__})") from None
    if not stat.S_ISREG(mode := os.fstat(fd).st_mode):  # swapped since the stat
        os.close(fd)
        raise refuse(mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def decode_image(data: BinaryIO, *, source: object, channels: int | None,
                 size: tuple[int, int] | None) -> np.ndarray:
    """One image (a file object or bytes) as uint8 (C, H, W); any decoder failure is an InputError naming
    ``source``. The size is checked from the header before the pixels are decoded, and PIL's
    decompression-bomb warning is an error, so a small file cannot expand into gigabytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data, formats=IMAGE_FORMATS) as im:
                if size is not None and (im.height, im.width) != size:
                    raise InputError(f"{source}: image is {im.height}x{im.width}, the model expects {size[0]}x{size[1]}")
                return _pil_to_array(im, source=source, channels=channels)
    except InputError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, bomb errors, struct errors...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        if isinstance(e, UnidentifiedImageError):  # its message names a BytesIO object, not the input
            first = f"not a {', '.join(IMAGE_FORMATS)} image"
        raise InputError(f"{source}: unreadable image ({e.__class__.__name__}{': ' + first if first else ''})") from None


def _load_folder(path: Path, *, name: str, channels: int | None, size: tuple[int, int] | None) -> ImageSet:
    # not is_file(): a FIFO, device or dangling link named like an image is refused when read, not skipped
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    if not files:
        return ImageSet(name=name, source=str(path), ids=(), shape=(0, 0, 0), _read=lambda idx: np.zeros((0,)))

    def open_one(f: Path) -> np.ndarray:
        with open_regular(f) as fp:
            return decode_image(fp, source=f, channels=channels, size=size)

    first = open_one(files[0])

    def read(idx: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *first.shape), dtype=np.uint8)
        for j, i in enumerate(idx):
            img = open_one(files[i])
            if img.shape != first.shape:
                raise InputError(f"{files[i]}: image is {img.shape[1]}x{img.shape[2]}x{img.shape[0]}, "
                                 f"others in {path} are {first.shape[1]}x{first.shape[2]}x{first.shape[0]}")
            out[j] = img
        return out

    ids = tuple(str(f.relative_to(path)) for f in files)
    return ImageSet(name=name, source=str(path), ids=ids, shape=tuple(first.shape), _read=read,
                    files=tuple(str(f) for f in files), captions=read_captions(path, files))


def _pil_to_array(im, *, source: object, channels: int | None) -> np.ndarray:
    """A PIL image as uint8 (C, H, W) with ``channels`` channels (1 or 3; by default its own)."""
    mode_c = 1 if im.mode in _ONE_CHANNEL_MODES else 3
    want = channels or mode_c
    if im.mode.startswith("I") or im.mode == "F":
        arr = _wide_grey_to_uint8(im, source=source)
        if want == 3:
            arr = np.repeat(arr[..., None], 3, axis=-1)
            mode_c = 3
    else:
        arr = np.asarray(im.convert("L" if want == 1 and mode_c == 1 else "RGB"))
    # Formats without a grey mode (WebP) store grey images as equal RGB channels.
    if want == 1 and mode_c == 3 and (arr[..., :1] == arr).all():
        arr, mode_c = arr[..., 0], 1
    if want != mode_c:
        raise InputError(f"{source}: image has {mode_c} channel(s) (mode {im.mode}), the model expects {want}")
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _wide_grey_to_uint8(im, *, source: object) -> np.ndarray:
    """16-bit (I;16*, or I as PNG decodes it) grey scaled by its range 0..65535 (12336 -> 48), never clipped;
    32-bit integers outside that range or float images are refused rather than guessed."""
    arr = np.asarray(im)
    if im.mode == "F" or arr.dtype.kind == "f":
        raise InputError(f"{source}: 32-bit float image (mode {im.mode}); save it as 8- or 16-bit")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"{source}: image values span {lo}..{hi} (mode {im.mode}); expected 8- or 16-bit grey")
    return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)


def _is_saved_dataset(path: Path) -> bool:
    one = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    return one or (path / "dataset_dict.json").is_file()


def _load_saved_dataset(path: Path, *, name: str, channels: int | None, size: tuple[int, int] | None) -> ImageSet:
    """A ``datasets.Dataset`` saved with ``save_to_disk``: memory-mapped Arrow, decoded per batch by
    ``decode_image`` (not by ``datasets``, which would open a path cell's file, a FIFO included)."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise InputError(f"{path}: a saved DatasetDict with splits {', '.join(splits) or 'none'}; "
                         f"pass one split's folder, e.g. {path / (splits[0] if splits else 'train')}")
    try:
        import datasets
    except ImportError:
        raise InputError(f"{path}: a `datasets` folder saved with save_to_disk; reading it needs the "
                         f"`datasets` package (pip install 'privaudit[datasets]')") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged folder
        raise InputError(f"{path}: unreadable `datasets` folder ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    image_cols = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
    if len(image_cols) != 1:
        raise InputError(f"{path}: expected one Image column, found {len(image_cols)} "
                         f"(columns: {', '.join(f'{c} ({type(f).__name__})' for c, f in ds.features.items())})")
    image_col = image_cols[0]
    text_col = next((c for c in CAPTION_COLUMNS if c in ds.features), None)
    captions = tuple("" if t is None else str(t) for t in ds[text_col]) if text_col else ()
    images = ds.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
    if len(ds) == 0:
        return ImageSet(name=name, source=str(path), ids=(), shape=(0, 0, 0), _read=lambda idx: np.zeros((0,)))

    def decode_cell(i: int, cell: object) -> np.ndarray:
        where = f"{path} row {i} ({image_col})"
        if not isinstance(cell, dict) or cell.get("bytes") is None:
            if isinstance(cell, dict) and cell.get("path"):
                raise InputError(f"{where}: the cell holds only a path ({cell['path']}), not the image; privaudit "
                                 "reads images stored in the dataset (save it again with a current `datasets`)")
            raise InputError(f"{where}: the cell holds no image (null)")
        return decode_image(io.BytesIO(cell["bytes"]), source=where, channels=channels, size=size)

    first_shape = decode_cell(0, images[0][image_col]).shape

    def read(idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = [int(i) for i in idx]
        out = [decode_cell(i, cell) for i, cell in zip(idx, images.select(idx)[image_col])] if idx else []
        bad = next((i for i, a in zip(idx, out) if a.shape != first_shape), None)
        if bad is not None:
            raise InputError(f"{path} row {bad} ({image_col}): image shape differs from the first image's {first_shape}")
        return np.stack(out) if out else np.zeros((0, *first_shape), dtype=np.uint8)

    return ImageSet(name=name, source=str(path), ids=tuple(f"{path.name}[{i}]" for i in range(len(ds))),
                    shape=tuple(first_shape), _read=read, captions=captions)


CAPTION_COLUMNS = ("text", "caption", "prompt", "label")  # label: class-conditional models (DiT)


def read_captions(folder: Path, files: Sequence[Path]) -> tuple[str, ...]:
    """Captions for ``files`` from the ``metadata.jsonl`` / ``metadata.csv`` files under ``folder``.

    Keyed by the row's path as written (made absolute lexically, not through symlinks), so an image
    that is itself a link keeps its caption; a row must stay inside its metadata's folder and name
    each file once."""
    import pandas as pd

    metas = sorted(p for p in folder.rglob("metadata.*") if p.suffix in (".jsonl", ".csv") and not p.is_dir())
    if not metas:
        return ()
    root = folder.resolve()
    by_file: dict[str, tuple[str, str]] = {}  # normalised path -> (caption, where it was given)
    for meta in metas:
        try:
            with open_regular(meta) as fp:
                if meta.suffix == ".csv":
                    table = pd.read_csv(fp, dtype=str, keep_default_na=False)
                    rows = [f"{meta} row {i + 1}" for i in range(len(table))]  # data rows, header excluded
                else:
                    lines = [(no, line) for no, line in enumerate(io.TextIOWrapper(fp, encoding="utf-8"), 1)
                             if line.strip()]
                    table = pd.DataFrame([_json_row(line, meta, no) for no, line in lines])
                    rows = [f"{meta} line {no}" for no, _ in lines]
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise InputError(f"{meta}: unreadable caption metadata ({str(e).splitlines()[0]})") from None
        col = next((c for c in CAPTION_COLUMNS if c in table.columns), None)
        if "file_name" not in table.columns or col is None:
            raise InputError(f"{meta}: caption metadata needs a file_name column and one of "
                             f"{', '.join(CAPTION_COLUMNS)}; found {', '.join(map(str, table.columns)) or 'none'}")
        for where, fname, text in zip(rows, table["file_name"], table[col]):
            key = _row_target(meta, fname, where=where, root=root)
            if key in by_file:
                raise InputError(f"{where}: names {fname} again (first at {by_file[key][1]}); give each image one caption")
            by_file[key] = ("" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text), where)
    keys = [os.path.normpath(os.path.abspath(f)) for f in files]
    missing = [f for f, k in zip(files, keys) if k not in by_file]
    if missing:
        raise InputError(f"{missing[0]}: no caption in {', '.join(str(m) for m in metas)} "
                         f"({len(missing)} of {len(files)} images lack one)")
    return tuple(by_file[k][0] for k in keys)


def _json_row(line: str, meta: Path, no: int) -> dict:
    import json

    try:
        row = json.loads(line)
    except ValueError as e:
        raise InputError(f"{meta} line {no}: not JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(row, dict):
        raise InputError(f"{meta} line {no}: expected a JSON object, got {type(row).__name__}")
    return row


def _row_target(meta: Path, fname: object, *, where: str, root: Path) -> str:
    """The normalised path a metadata row names; refused when it leaves the folder (absolute, ``..``,
    or a symlink leading out) or names no file."""
    if not isinstance(fname, str) or not fname.strip():
        raise InputError(f"{where}: file_name must be a relative path, got {fname!r}")
    rel = Path(fname)
    if rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{where}: file_name {fname} points outside {meta.parent}; name files relative to it")
    target = meta.parent / rel
    if not target.is_file():
        raise InputError(f"{where}: lists {fname}, which is not in {meta.parent}")
    # a link to another image is fine as long as the folder holding it is not a link out of the data set
    if not target.parent.resolve().is_relative_to(root):
        raise InputError(f"{where}: file_name {fname} leads outside {root} through a symlink")
    return os.path.normpath(os.path.abspath(target))



def _load_array(path: Path, *, name: str) -> ImageSet:
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(f"{path}: .npz holds {keys}; name the image array 'images'")
                arr = z[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InputError(f"{path}: unreadable array ({first})") from None
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise InputError(f"{path}: expected images shaped (N,H,W), (N,H,W,C) or (N,C,H,W), got {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"{path}: expected uint8 or float images, got {arr.dtype}")
        lo, hi = np.inf, -np.inf
        for start in range(0, len(arr), 4096):  # chunked: a memory-mapped .npy is never read whole
            chunk = np.asarray(arr[start:start + 4096])
            if not np.isfinite(chunk).all():
                raise InputError(f"{path}: float images contain NaN or infinite values")
            lo, hi = min(lo, float(chunk.min(initial=np.inf))), max(hi, float(chunk.max(initial=-np.inf)))
        if lo < 0 or hi > 1:
            raise InputError(f"{path}: float images must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")

    def read(idx: Sequence[int] | np.ndarray) -> np.ndarray:
        a = np.asarray(arr[np.asarray(idx, dtype=int)])
        return a if a.dtype == np.uint8 else np.round(a * 255).astype(np.uint8)

    return ImageSet(name=name, source=str(path), ids=tuple(f"{path.name}[{i}]" for i in range(len(arr))),
                    shape=(int(arr.shape[1]), int(arr.shape[2]), int(arr.shape[3])), _read=read)
