"""Plots as inline SVG, written by hand: no plotting library, no script, no external font.

Every plot is an accessible image (``role="img"`` with ``<title>`` and ``<desc>``) and
never relies on colour alone: series differ in colour (Okabe-Ito, colour-blind safe)
*and* dash pattern, and are named in a legend and, where it fits, at the line itself.
All text that may come from user input (plugin names, ids) is escaped here, because the
result is marked safe for the template.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from markupsafe import Markup, escape

# Okabe & Ito (2008) colour-blind-safe palette, darkest first; yellow left out (unreadable on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "7 4", "2 3", "9 3 2 3", "4 2", "1 2", "12 3")
MARKERS = ("circle", "square", "diamond", "triangle", "circle", "square", "diamond")

_ids = itertools.count()


def reset_ids() -> None:
    """Start element ids afresh, so rendering the same results twice gives the same file."""
    global _ids
    _ids = itertools.count()


def _style(i: int) -> tuple[str, str]:
    return PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)]


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _open(width: int, height: int, title: str, desc: str) -> list[str]:
    n = next(_ids)
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-labelledby="svgt{n} svgd{n}">',
            f'<title id="svgt{n}">{escape(title)}</title><desc id="svgd{n}">{escape(desc)}</desc>',
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']


def _marker(kind: str, x: float, y: float, r: float, colour: str, *, filled: bool = True) -> str:
    fill = colour if filled else "#fff"
    common = f'fill="{fill}" stroke="{colour}" stroke-width="1.5"'
    if kind == "square":
        return f'<rect x="{_f(x - r)}" y="{_f(y - r)}" width="{_f(2 * r)}" height="{_f(2 * r)}" {common}/>'
    if kind == "diamond":
        return (f'<polygon points="{_f(x)},{_f(y - r * 1.3)} {_f(x + r * 1.3)},{_f(y)} {_f(x)},{_f(y + r * 1.3)} '
                f'{_f(x - r * 1.3)},{_f(y)}" {common}/>')
    if kind == "triangle":
        return (f'<polygon points="{_f(x)},{_f(y - r * 1.3)} {_f(x + r * 1.2)},{_f(y + r)} {_f(x - r * 1.2)},{_f(y + r)}" '
                f'{common}/>')
    if kind == "star":
        pts = []
        for k in range(10):
            a = math.pi / 2 + k * math.pi / 5
            rr = r * 1.8 if k % 2 == 0 else r * 0.8
            pts.append(f"{_f(x + rr * math.cos(a))},{_f(y - rr * math.sin(a))}")
        return f'<polygon points="{" ".join(pts)}" {common}/>'
    return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r)}" {common}/>'


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if 1000 <= abs(v) < 1e7 and float(v).is_integer():
        return f"{v:,.0f}"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def distinct_labels(ticks: Sequence[float], fmt=_tick_label) -> list[str]:
    """Tick labels, with more significant digits where the short form would repeat (-1.5e-3 and -2e-3
    must not both read "-2e-3")."""
    labels = [fmt(t) for t in ticks]
    digits = 2
    while len(set(labels)) < len(labels) and digits <= 8:
        labels = [f"{t:.{digits}g}" for t in ticks]
        digits += 1
    return labels


def _pct_label(v: float) -> str:
    return f"{v * 100:g}%"


class _Axes:
    """Maps data to pixels for a linear or log10 axis pair inside a plot frame."""

    def __init__(self, *, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float],
                 logx: bool = False, logy: bool = False, left: int = 62, right: int = 16, top: int = 14, bottom: int = 48):
        self.w, self.h = width, height
        self.x0, self.x1, self.y0, self.y1 = left, width - right, top, height - bottom
        self.logx, self.logy = logx, logy
        self.xlim = tuple(math.log10(v) for v in xlim) if logx else xlim
        self.ylim = tuple(math.log10(v) for v in ylim) if logy else ylim

    def x(self, v: float) -> float:
        v = math.log10(v) if self.logx else v
        a, b = self.xlim
        return self.x0 + (v - a) / ((b - a) or 1) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        v = math.log10(v) if self.logy else v
        a, b = self.ylim
        return self.y1 - (v - a) / ((b - a) or 1) * (self.y1 - self.y0)

    def frame(self, xticks, yticks, *, xlabel: str, ylabel: str, xfmt=_tick_label, yfmt=_tick_label) -> list[str]:
        out = ['<g class="grid" stroke="#e3e3e3" stroke-width="1">']
        for t in xticks:
            out.append(f'<line x1="{_f(self.x(t))}" y1="{self.y0}" x2="{_f(self.x(t))}" y2="{self.y1}"/>')
        for t in yticks:
            out.append(f'<line x1="{self.x0}" y1="{_f(self.y(t))}" x2="{self.x1}" y2="{_f(self.y(t))}"/>')
        out.append("</g>")
        out.append(f'<rect x="{self.x0}" y="{self.y0}" width="{self.x1 - self.x0}" height="{self.y1 - self.y0}" '
                   f'fill="none" stroke="#555"/>')
        out.append('<g class="ticks" font-size="11" fill="#333">')
        for t, lab in zip(xticks, distinct_labels(xticks, xfmt)):
            out.append(f'<text x="{_f(self.x(t))}" y="{self.y1 + 15}" text-anchor="middle">{escape(lab)}</text>')
        for t, lab in zip(yticks, distinct_labels(yticks, yfmt)):
            out.append(f'<text x="{self.x0 - 5}" y="{_f(self.y(t) + 4)}" text-anchor="end">{escape(lab)}</text>')
        out.append("</g>")
        cx, cy = (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2
        out.append(f'<text x="{_f(cx)}" y="{self.h - 8}" text-anchor="middle" font-size="12">{escape(xlabel)}</text>')
        out.append(f'<text transform="translate(13 {_f(cy)}) rotate(-90)" text-anchor="middle" font-size="12">'
                   f'{escape(ylabel)}</text>')
        return out


def _legend(entries: Sequence[tuple[str, str, str]], *, right: float, y: float, line_h: int = 16) -> list[str]:
    """(label, colour, dash) rows with a line swatch, right-aligned at ``right``."""
    out = ['<g class="legend" font-size="11">']
    width = max((len(lab) for lab, _, _ in entries), default=0) * 6.2 + 40
    x = right - width + 4
    out.append(f'<rect x="{_f(x - 4)}" y="{_f(y - 11)}" width="{_f(width)}" height="{len(entries) * line_h + 4}" '
               f'fill="#fff" fill-opacity="0.9" stroke="#bbb"/>')
    for i, (label, colour, dash) in enumerate(entries):
        yy = y + i * line_h
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{_f(x)}" y1="{_f(yy - 4)}" x2="{_f(x + 26)}" y2="{_f(yy - 4)}" stroke="{colour}" '
                   f'stroke-width="2.5"{dash_attr}/>')
        out.append(f'<text x="{_f(x + 32)}" y="{_f(yy)}">{escape(label)}</text>')
    out.append("</g>")
    return out


def _markers(ax: _Axes, markers: Sequence[dict], *, y: float) -> list[str]:
    """Labelled vertical lines; a label near the right edge goes left of its line so it stays inside."""
    out = []
    for m in markers:
        x = ax.x(float(m["x"]))
        out.append(f'<line x1="{_f(x)}" y1="{ax.y0}" x2="{_f(x)}" y2="{ax.y1}" stroke="#333" stroke-dasharray="5 3" '
                   'stroke-width="1.5"/>')
        right = x > ax.x0 + 0.7 * (ax.x1 - ax.x0)
        out.append(f'<text x="{_f(x - 3 if right else x + 3)}" y="{_f(y)}" font-size="10" '
                   f'text-anchor="{"end" if right else "start"}">{escape(str(m["label"]))}</text>')
    return out


def _thin(points: list[tuple[float, float]], tol: float = 0.4) -> list[tuple[float, float]]:
    """Drop points that add nothing at screen resolution (a 50k-point ROC becomes a few hundred)."""
    out: list[tuple[float, float]] = []
    for p in points:
        if out and abs(p[0] - out[-1][0]) < tol and abs(p[1] - out[-1][1]) < tol:
            continue
        # merge runs along one axis: keep only the ends of a horizontal or vertical run
        if len(out) >= 2 and ((abs(out[-2][0] - out[-1][0]) < tol and abs(out[-1][0] - p[0]) < tol)
                              or (abs(out[-2][1] - out[-1][1]) < tol and abs(out[-1][1] - p[1]) < tol)):
            out[-1] = p
            continue
        out.append(p)
    return out


def roc_loglog(curves: Sequence[dict], *, n_holdout: int | None = None, width: int = 560, height: int = 380) -> Markup:
    """Log-log ROC of every attack; ``curves`` = [{"label", "fpr", "tpr"}].

    The axes start at the smallest FPR the holdout set can resolve (1 / n), or 0.1%,
    whichever is smaller; points at 0 sit on that floor. Chance is the diagonal.
    """
    floor = min(1e-3, 1.0 / n_holdout) if n_holdout else 1e-3
    floor = 10 ** math.floor(math.log10(floor))
    ax = _Axes(width=width, height=height, xlim=(floor, 1), ylim=(floor, 1), logx=True, logy=True)
    decades = [10.0 ** k for k in range(int(round(math.log10(floor))), 1)]
    names = ", ".join(str(c["label"]) for c in curves)
    svg = _open(width, height, "ROC curves, log-log scale",
                f"True-positive rate against false-positive rate on log axes for: {names}. "
                "The dotted diagonal is chance; curves far above it at low false-positive rates mean "
                "training images can be identified with few false alarms.")
    svg += ax.frame(decades, decades, xlabel="false-positive rate (holdout images wrongly flagged)",
                    ylabel="true-positive rate (members found)", xfmt=_pct_label, yfmt=_pct_label)
    svg.append(f'<line x1="{_f(ax.x(floor))}" y1="{_f(ax.y(floor))}" x2="{_f(ax.x(1))}" y2="{_f(ax.y(1))}" '
               'stroke="#777" stroke-dasharray="1 3" stroke-width="1.5"/>')
    svg.append(f'<text x="{_f(ax.x(0.25))}" y="{_f(ax.y(0.25 * 0.6))}" font-size="10" fill="#555" '
               'text-anchor="middle">chance</text>')
    for f, lab in ((0.01, "1% FPR"), (0.001, "0.1% FPR")):
        if f >= floor * 1.5:
            svg.append(f'<line x1="{_f(ax.x(f))}" y1="{ax.y0}" x2="{_f(ax.x(f))}" y2="{ax.y1}" stroke="#999" '
                       'stroke-dasharray="3 3"/>')
            svg.append(f'<text x="{_f(ax.x(f) + 3)}" y="{ax.y1 - 4}" font-size="10" fill="#555">{lab}</text>')
    legend = []
    for i, c in enumerate(curves):
        colour, dash = _style(i)
        pts = [(ax.x(max(f, floor)), ax.y(max(t, floor))) for f, t in zip(c["fpr"], c["tpr"])]
        pts = _thin(pts)
        if not pts:
            continue
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{_f(x)},{_f(y)}" for x, y in pts)
        svg.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.2"{dash_attr}/>')
        legend.append((str(c["label"]), colour, dash))
    svg += _legend(legend, right=ax.x1 - 8, y=ax.y1 - 16 * len(legend) - 4)
    svg.append("</svg>")
    return Markup("".join(svg))


def histogram(edges: Sequence[float], series: Sequence[dict], *, title: str, xlabel: str, desc: str = "",
              density: bool = True, markers: Sequence[dict] = (), width: int = 430, height: int = 250) -> Markup:
    """Overlaid histograms on shared ``edges``; ``series`` = [{"label", "counts"}].

    With ``density`` each series is shown as its share of its own total, so sets of
    different sizes compare. ``markers`` = [{"x", "label"}] draws labelled vertical lines.
    """
    edges = [float(e) for e in edges]
    shares = []
    for s in series:
        counts = [float(c) for c in s["counts"]]
        total = sum(counts) or 1.0
        shares.append([c / total for c in counts] if density else counts)
    ymax = max((max(v) for v in shares if v), default=1.0) or 1.0
    lo, hi = edges[0], edges[-1]
    for m in markers:
        lo, hi = min(lo, float(m["x"])), max(hi, float(m["x"]))
    if hi <= lo:
        hi = lo + 1
    ax = _Axes(width=width, height=height, xlim=(lo, hi), ylim=(0, ymax * 1.08), left=56)
    labels = ", ".join(str(s["label"]) for s in series)
    svg = _open(width, height, title, desc or f"Histogram of {xlabel} for {labels}.")
    svg += ax.frame(nice_ticks(lo, hi, 5), nice_ticks(0, ymax * 1.05, 4), xlabel=xlabel,
                    ylabel="share of images" if density else "count",
                    yfmt=(lambda v: f"{v * 100:g}%") if density else _tick_label)
    legend = []
    for i, (s, vals) in enumerate(zip(series, shares)):
        colour, dash = _style(i)
        d = [f"M{_f(ax.x(edges[0]))},{_f(ax.y(0))}"]
        for j, v in enumerate(vals):
            d.append(f"L{_f(ax.x(edges[j]))},{_f(ax.y(v))} L{_f(ax.x(edges[j + 1]))},{_f(ax.y(v))}")
        d.append(f"L{_f(ax.x(edges[-1]))},{_f(ax.y(0))}")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        svg.append(f'<path d="{" ".join(d)}" fill="{colour}" fill-opacity="0.18" stroke="{colour}" '
                   f'stroke-width="2"{dash_attr}/>')
        legend.append((str(s["label"]), colour, dash))
    svg += _markers(ax, markers, y=ax.y0 + 11)
    # the legend goes in the upper corner where the bars are lower
    half = len(edges) // 2
    left_peak = max((max(v[:half], default=0) for v in shares), default=0)
    right_peak = max((max(v[half:], default=0) for v in shares), default=0)
    width_legend = max((len(lab) for lab, _, _ in legend), default=0) * 6.2 + 40
    right = ax.x0 + 6 + width_legend if right_peak > left_peak else ax.x1 - 6
    svg += _legend(legend, right=right, y=ax.y0 + 26)
    svg.append("</svg>")
    return Markup("".join(svg))


def percentile_strip(rows: Sequence[dict], percentiles: Sequence[float], *, title: str, xlabel: str,
                     markers: Sequence[dict] = (), width: int = 560, height: int | None = None) -> Markup:
    """One row per distribution, drawn from its percentiles: a line from the lowest to the
    highest, a tick at each, the median as a dot, each percentile labelled below the first row.
    ``rows`` = [{"label", "values"}] (values aligned with ``percentiles``)."""
    height = height or 70 + 46 * len(rows)
    vals = [float(v) for r in rows for v in r["values"]] + [float(m["x"]) for m in markers]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or 1.0
    lo, hi = max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad
    ax = _Axes(width=width, height=height, xlim=(lo, hi), ylim=(0, len(rows)), left=170, top=10, bottom=44)
    desc = "; ".join(f"{r['label']}: " + ", ".join(f"p{p:g}={float(v):.3g}" for p, v in zip(percentiles, r["values"]))
                     for r in rows)
    svg = _open(width, height, title, desc)
    svg += ax.frame(nice_ticks(lo, hi, 6), [], xlabel=xlabel, ylabel="")
    med = min(range(len(percentiles)), key=lambda i: abs(float(percentiles[i]) - 50)) if percentiles else None
    for i, r in enumerate(rows):
        colour, _ = _style(i)
        y = ax.y(len(rows) - i - 0.5)
        xs = [ax.x(float(v)) for v in r["values"]]
        svg.append(f'<text x="{ax.x0 - 8}" y="{_f(y + 4)}" text-anchor="end" font-size="12">{escape(str(r["label"]))}</text>')
        if not xs:
            continue
        svg.append(f'<line x1="{_f(min(xs))}" y1="{_f(y)}" x2="{_f(max(xs))}" y2="{_f(y)}" stroke="{colour}" '
                   'stroke-width="3"/>')
        last = -1e9
        for j, x in enumerate(xs):
            svg.append(f'<line x1="{_f(x)}" y1="{_f(y - 7)}" x2="{_f(x)}" y2="{_f(y + 7)}" stroke="{colour}" stroke-width="2"/>')
            if x - last >= 22:  # label a tick only where it does not collide with the previous label
                svg.append(f'<text x="{_f(x)}" y="{_f(y - 10)}" text-anchor="middle" font-size="9" fill="#444">'
                           f'p{float(percentiles[j]):g}</text>')
                last = x
        if med is not None and med < len(xs):
            svg.append(_marker(MARKERS[i % len(MARKERS)], xs[med], y, 5, colour))
    svg += _markers(ax, markers, y=ax.y1 - 4)
    svg.append("</svg>")
    return Markup("".join(svg))


def tradeoff(points: Sequence[dict], *, xlabel: str, ylabel: str, title: str = "Privacy / quality trade-off",
             width: int = 560, height: int = 360) -> Markup:
    """Settings of a sweep against quality; ``points`` = [{"x", "y", "label", "series", "number",
    "recommended"}]. Points of one ``series`` (e.g. a method, its placebo) share colour, marker and
    a dashed line in quality order, and carry their ``number`` (the sweep table's row); the
    recommended one is a labelled star. Points with ``series`` None are references (controls
    such as no mitigation), drawn hollow and labelled by name. ``r`` (optional): a point's marker
    radius, to show a third measure (e.g. the copy fraction)."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None]
    if not pts:
        return Markup("")
    xs, ys = [float(p["x"]) for p in pts], [float(p["y"]) for p in pts]
    xpad = (max(xs) - min(xs)) * 0.08 or abs(max(xs)) * 0.1 or 1.0
    ypad = (max(ys) - min(ys)) * 0.1 or 0.05
    xlim = (min(xs) - xpad, max(xs) + xpad)
    ylim = (min(0.0, min(ys)) if min(ys) >= 0 else min(ys) - ypad, max(ys) + ypad)
    series = list(dict.fromkeys(p["series"] for p in pts if p.get("series") is not None))
    # the legend sits above the plot area, so it never covers a point
    ax = _Axes(width=width, height=height + 16 * len(series), xlim=xlim, ylim=ylim, top=14 + 16 * len(series))
    placed: list[tuple[float, float, float, float]] = [(x - 6, y - 6, x + 6, y + 6) for x, y in
                                                       ((ax.x(float(p["x"])), ax.y(float(p["y"]))) for p in pts)]

    def place(x: float, y: float, text: str, size: int, *, force: bool = False) -> tuple[float, float, str] | None:
        """A label position near (x, y) overlapping no marker or earlier label (None: none is free; with
        ``force``, the first position, reserved so that later labels avoid it)."""
        w, h = 0.6 * size * len(text) + 2, size + 1
        for dx, dy, anchor in ((6, 12, "start"), (6, -6, "start"), (-6, 12, "end"), (-6, -6, "end"),
                               (8, 4, "start"), (-8, 4, "end")):
            x0 = x + dx if anchor == "start" else x + dx - w
            box = (x0, y + dy - h + 2, x0 + w, y + dy + 2)
            inside = ax.x0 <= box[0] and box[2] <= ax.x1 and ax.y0 <= box[1] and box[3] <= ax.y1
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                                  for b in placed if b != (x - 6, y - 6, x + 6, y + 6)):
                placed.append(box)
                return x + dx, y + dy, anchor
        if force:
            x0 = min(max(x + 10, ax.x0), ax.x1 - w)
            placed.append((x0, y - 10 - h + 2, x0 + w, y - 8))
            return x0, y - 10, "start"
        return None

    height = ax.h
    desc = "; ".join(f"{p.get('series') or 'reference'} {p['label']}: {xlabel} {float(p['x']):.3g}, "
                     f"{ylabel} {float(p['y']):.3g}{' (recommended)' if p.get('recommended') else ''}" for p in pts)
    svg = _open(width, height, title, desc)
    svg += ax.frame(nice_ticks(*xlim, 5), nice_ticks(*ylim, 5), xlabel=xlabel, ylabel=ylabel)
    # the recommendation's label is placed first: it must never be the one crowded out
    rec_at = {}
    for p in pts:
        if p.get("recommended"):
            x, y = ax.x(float(p["x"])), ax.y(float(p["y"]))
            tag = "recommended: " + (f"#{p['number']}" if p.get("number") is not None else str(p["label"]))
            rec_at[id(p)] = (tag, place(x, y, tag, 11, force=True))
    legend = []
    for i, name in enumerate(series):
        colour, dash = _style(i)
        group = sorted((p for p in pts if p.get("series") == name), key=lambda p: float(p["x"]))
        if len(group) > 1:
            path = " ".join(f"{_f(ax.x(float(p['x'])))},{_f(ax.y(float(p['y'])))}" for p in group)
            svg.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5" '
                       f'stroke-dasharray="{dash or "4 3"}"/>')
        for p in group:
            x, y = ax.x(float(p["x"])), ax.y(float(p["y"]))
            svg.append(_marker(MARKERS[i % len(MARKERS)], x, y, float(p.get("r") or 4), colour))
            at = place(x, y, str(p["number"]), 10) if p.get("number") is not None else None
            if at:  # a number that fits nowhere is left out: the table and the description list every point
                svg.append(f'<text x="{_f(at[0])}" y="{_f(at[1])}" font-size="10" fill="#333" '
                           f'text-anchor="{at[2]}">{escape(str(p["number"]))}</text>')
        legend.append((f"{name} (numbered as in the table)", colour, dash or "4 3"))
    refs = [p for p in pts if p.get("series") is None]
    for j, p in enumerate(refs):
        x, y = ax.x(float(p["x"])), ax.y(float(p["y"]))
        svg.append(_marker(MARKERS[(j + 1) % len(MARKERS)], x, y, float(p.get("r") or 5), "#333", filled=False))
        at = place(x, y, str(p["label"]), 11)
        if at:
            svg.append(f'<text x="{_f(at[0])}" y="{_f(at[1])}" font-size="11" '
                       f'text-anchor="{at[2]}">{escape(str(p["label"]))}</text>')
    for p in pts:
        if p.get("recommended"):
            x, y = ax.x(float(p["x"])), ax.y(float(p["y"]))
            svg.append(_marker("star", x, y, 6, PALETTE[1]))
            tag, at = rec_at[id(p)]
            svg.append(f'<text x="{_f(at[0])}" y="{_f(at[1])}" font-size="11" font-weight="bold" '
                       f'text-anchor="{at[2]}">{escape(tag)}</text>')
    if legend:
        svg += _legend(legend, right=ax.x1, y=16)
    svg.append("</svg>")
    return Markup("".join(svg))
