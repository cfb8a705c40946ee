"""Self-contained HTML report: jinja2 with autoescaping, inline CSS, no scripts, no network.

Training images appear only as small PNG data URIs (``redact="thumbnails"``), blurred
(``"blur"``) or not at all (``"omit"``).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from privaudit import __version__

REDACT_MODES = ("thumbnails", "blur", "omit")


def _env() -> Environment:
    env = Environment(loader=PackageLoader("privaudit.reports", "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"
    env.filters["pct"] = lambda v, d=1: "n/a" if v is None else f"{100 * v:.{d}f}%"
    return env


def png_data_uri(img: np.ndarray, *, scale: int = 1) -> str:
    """uint8 (C, H, W) or (H, W) -> PNG data URI (nearest-neighbour upscaled)."""
    from PIL import Image

    a = img[0] if img.ndim == 3 and img.shape[0] == 1 else (img.transpose(1, 2, 0) if img.ndim == 3 else img)
    im = Image.fromarray(np.ascontiguousarray(a))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_html(results: dict, *, baseline: dict | None = None, redact: str = "thumbnails") -> str:
    if redact not in REDACT_MODES:
        raise ValueError(f"redact must be one of {REDACT_MODES}")
    template = _env().get_template("report.html.j2")
    return template.render(r=results, baseline=baseline, redact=redact, version=__version__)
