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

Captions (text-conditional models): an image folder may hold ``metadata.jsonl`` or
``metadata.csv`` files, the layout of the ``datasets`` image folder: one row per image,
``file_name`` relative to the metadata file's folder, and the caption in a ``text`` column
(else ``caption``, ``prompt``, or ``label``: the class of a class-conditional model). Then every image needs a caption; ``ImageSet.captions``
holds them in image order (empty for uncaptioned sets).
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from privaudit.io.errors import InputError
from privaudit.io.files import sha256_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
_ONE_CHANNEL_MODES = {"1", "L", "I", "I;16", "F", "LA"}


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
        )

    def content_hashes(self, batch_size: int = 512) -> list[str]:
        """sha256 of each image's decoded pixels (finds duplicates across file formats)."""
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
    """Load a folder or array file, checked against the model's ``channels`` and ``size``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {name} path does not exist")
    if path.is_dir() and _is_saved_dataset(path):
        images = _load_saved_dataset(path, name=name, channels=channels)
    elif path.is_dir():
        images = _load_folder(path, name=name, channels=channels)
    elif path.suffix in (".npy", ".npz"):
        images = _load_array(path, name=name)
    else:
        raise InputError(f"{path}: {name} must be an image folder, a saved `datasets` folder or a .npy/.npz file")
    if len(images) == 0:
        raise InputError(f"{path}: {name} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    c, h, w = images.shape
    if channels is not None and c != channels:
        raise InputError(f"{path}: {name} images have {c} channel(s), the model expects {channels}")
    if size is not None:
        want = (size, size) if isinstance(size, int) else tuple(size)
        if (h, w) != want:
            raise InputError(f"{path}: {name} images are {h}x{w}, the model expects {want[0]}x{want[1]}")
    return images


def _load_folder(path: Path, *, name: str, channels: int | None) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return ImageSet(name=name, source=str(path), ids=(), shape=(0, 0, 0), _read=lambda idx: np.zeros((0,)))

    def open_one(f: Path) -> np.ndarray:
        try:
            with Image.open(f) as im:
                return _pil_to_array(im, source=f, channels=channels)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise InputError(f"{f}: unreadable image ({e.__class__.__name__})") from None

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


def _load_saved_dataset(path: Path, *, name: str, channels: int | None) -> ImageSet:
    """A ``datasets.Dataset`` saved with ``save_to_disk``: memory-mapped Arrow, decoded per batch."""
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
    images = ds.select_columns([image_col])
    if len(ds) == 0:
        return ImageSet(name=name, source=str(path), ids=(), shape=(0, 0, 0), _read=lambda idx: np.zeros((0,)))
    first_shape = _pil_to_array(images[0][image_col], source=f"{path}[0]", channels=channels).shape

    def read(idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = [int(i) for i in idx]
        out = [_pil_to_array(im, source=f"{path}[{i}]", channels=channels)
               for i, im in zip(idx, images.select(idx)[image_col])] if idx else []
        bad = next((i for i, a in zip(idx, out) if a.shape != first_shape), None)
        if bad is not None:
            raise InputError(f"{path}[{bad}]: image shape differs from the first image's {first_shape}")
        return np.stack(out) if out else np.zeros((0, *first_shape), dtype=np.uint8)

    return ImageSet(name=name, source=str(path), ids=tuple(f"{path.name}[{i}]" for i in range(len(ds))),
                    shape=tuple(first_shape), _read=read, captions=captions)


CAPTION_COLUMNS = ("text", "caption", "prompt", "label")  # label: class-conditional models (DiT)


def read_captions(folder: Path, files: Sequence[Path]) -> tuple[str, ...]:
    """Captions for ``files`` from the ``metadata.jsonl`` / ``metadata.csv`` files under ``folder``."""
    import json

    import pandas as pd

    metas = sorted(p for p in folder.rglob("metadata.*") if p.is_file() and p.suffix in (".jsonl", ".csv"))
    if not metas:
        return ()
    by_file: dict[Path, str] = {}
    for meta in metas:
        try:
            if meta.suffix == ".csv":
                table = pd.read_csv(meta, dtype=str, keep_default_na=False)
            else:
                with open(meta) as f:
                    table = pd.DataFrame([json.loads(line) for line in f if line.strip()])
        except (ValueError, pd.errors.ParserError) as e:
            raise InputError(f"{meta}: unreadable caption metadata ({str(e).splitlines()[0]})") from None
        col = next((c for c in CAPTION_COLUMNS if c in table.columns), None)
        if "file_name" not in table.columns or col is None:
            raise InputError(f"{meta}: caption metadata needs a file_name column and one of "
                             f"{', '.join(CAPTION_COLUMNS)}; found {', '.join(map(str, table.columns)) or 'none'}")
        for fname, text in zip(table["file_name"], table[col]):
            target = (meta.parent / str(fname)).resolve()
            if not target.is_file():
                raise InputError(f"{meta}: lists {fname}, which is not in {meta.parent}")
            by_file[target] = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    missing = [f for f in files if Path(f).resolve() not in by_file]
    if missing:
        raise InputError(f"{missing[0]}: no caption in {', '.join(str(m) for m in metas)} "
                         f"({len(missing)} of {len(files)} images lack one)")
    return tuple(by_file[Path(f).resolve()] for f in files)


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
