"""Training images in the report: redaction before anything reaches a template.

A report shows training images, so it is itself sensitive. ``redact_images`` walks the
whole results object and re-encodes every embedded raster image (``data:image/...``
strings) according to what it is and the chosen mode:

- a *member* image: a key naming a member (``member_png``), or any image whose origin the
  report does not know (a conservative default for images third-party plugins add);
- a *generated* image (a key naming a sample or a generated image) is treated as a member
  image when its record says it is a copy (``"copy": true``): a copy *is* training data.

Modes:

- ``thumbnails`` (default): every image is re-encoded at most ``THUMB_PX`` pixels on its
  longer side (area-averaged), so member images appear only at thumbnail size;
- ``blur``: as thumbnails, and member images (and copies) are blurred with a Gaussian of
  radius ``BLUR_FRACTION`` x the image side, enough to hide a face or a digit's identity
  while keeping its rough tone;
- ``omit``: no raster image at all: the strings are replaced by ``None`` and the report
  shows ids and distances only (generated images are dropped too: the closest ones are
  the copies).

Every image is decoded and re-encoded, so nothing in a results file reaches the HTML as
given: an undecodable or non-image string is dropped.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any, Callable

REDACT_MODES = ("thumbnails", "blur", "omit")
THUMB_PX = 64
BLUR_FRACTION = 0.2
_PREFIX = "data:image/"


def is_image_uri(v: Any) -> bool:
    return isinstance(v, str) and v.startswith(_PREFIX)


def decode_uri(uri: str):
    """A ``data:image/...;base64,`` string -> PIL image (raises ValueError when it is not one)."""
    from PIL import Image, UnidentifiedImageError

    head, _, payload = uri.partition(",")
    if not head.startswith(_PREFIX) or not head.endswith(";base64"):
        raise ValueError("not a base64 image data URI")
    try:
        im = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        im.load()
    except (binascii.Error, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"undecodable image: {e.__class__.__name__}") from None
    return im


def encode_png(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumbnail(im):
    from PIL import Image

    im = im.convert("L" if im.mode in ("1", "L", "I", "I;16", "F", "LA") else "RGB")
    if max(im.size) > THUMB_PX:
        im = im.copy()
        im.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.BOX)
    return im


def _blur(im):
    from PIL import ImageFilter

    return im.filter(ImageFilter.GaussianBlur(radius=max(1.0, BLUR_FRACTION * max(im.size))))


def redact_uri(uri: str, *, member: bool, mode: str) -> str | None:
    """One image, re-encoded for ``mode``; None where it must not (or cannot) be shown."""
    if mode == "omit":
        return None
    try:
        im = _thumbnail(decode_uri(uri))
    except ValueError:
        return None
    if mode == "blur" and member:
        im = _blur(im)
    return encode_png(im)


def _is_member_key(key: str, parent: dict) -> bool:
    k = key.lower()
    if "sample" in k or "generated" in k:
        return bool(parent.get("copy") or parent.get("is_copy"))
    return True  # member images and images of unknown origin


def redact_images(obj: Any, *, mode: str) -> Any:
    """A copy of ``obj`` (JSON-like) with every embedded image redacted for ``mode``."""
    if mode not in REDACT_MODES:
        raise ValueError(f"redact must be one of {', '.join(REDACT_MODES)}, got {mode!r}")

    def walk(o: Any, key: str = "", parent: dict | None = None) -> Any:
        if isinstance(o, dict):
            return {k: walk(v, str(k), o) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v, key, parent) for v in o]
        if is_image_uri(o):
            return redact_uri(o, member=_is_member_key(key, parent or {}), mode=mode)
        return o

    return walk(obj)


TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".html", ".htm", ".txt", ".md", ".xml", ".sarif")


def _redact_csv(text: str, *, mode: str) -> str:
    """Every cell holding an image re-encoded (as a member image: a table row's origin is unknown)."""
    import csv

    rows = list(csv.reader(io.StringIO(text)))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    for row in rows:
        w.writerow([(redact_uri(c, member=True, mode=mode) or "") if is_image_uri(c) else c for c in row])
    return out.getvalue()


def redact_run(run: Path, *, mode: str, render: Callable[[dict, dict | None, str], str]) -> list[Path]:
    """Every file of a run folder (sub-runs included) with its images redacted for ``mode``.

    ``results.json`` files are redacted and their ``report.html`` re-rendered with
    ``render(results, baseline, redact)`` (a sub-run ``after/`` against its sibling ``before/``);
    CSV cells holding images are redacted; any other text file that still embeds an image is
    refused (an error naming it) rather than left as it was. Everything is prepared in memory
    first and then written file by file atomically. Returns the files rewritten.
    """
    import json

    from privaudit.io.errors import InputError
    from privaudit.io.files import write_text

    run = Path(run)
    planned: dict[Path, str] = {}
    for f in sorted(run.rglob("results.json")):
        try:
            body = redact_images(json.loads(f.read_text()), mode=mode)
        except json.JSONDecodeError as e:
            raise InputError(f"{f}: invalid JSON ({e.msg} at line {e.lineno})") from None
        planned[f] = json.dumps(body, indent=2, default=str) + "\n"  # as privaudit.io.files.write_json
        base = f.parent.parent / "before" / "results.json" if f.parent.name == "after" else None
        baseline = redact_images(json.loads(base.read_text()), mode=mode) if base and base.exists() else None
        planned[f.parent / "report.html"] = render(body, baseline, mode)
    for f in sorted(p for p in run.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        if f in planned:
            continue
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        if _PREFIX not in text:
            continue
        if f.suffix.lower() in (".csv", ".tsv"):
            planned[f] = _redact_csv(text, mode=mode)
        else:
            raise InputError(f"{f}: holds embedded images privaudit cannot redact; remove it before sharing the folder")
    for f, text in planned.items():
        write_text(f, text)
    return list(planned)
