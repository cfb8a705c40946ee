"""Small images as PNG data URIs: what detectors embed in their results and reports show."""

from __future__ import annotations

import base64
import io

import numpy as np


def png_data_uri(img: np.ndarray, *, scale: int = 1) -> str:
    """uint8 (C, H, W) or (H, W) -> PNG data URI (nearest-neighbour upscaled)."""
    from PIL import Image

    a = img[0] if img.ndim == 3 and img.shape[0] == 1 else (img.transpose(1, 2, 0) if img.ndim == 3 else img)
    im = Image.fromarray(np.ascontiguousarray(a))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
