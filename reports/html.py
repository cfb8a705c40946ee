"""Self-contained HTML report: jinja2 with autoescaping, inline CSS and SVG, no script, no network.

``render_html(results, baseline=None, redact="thumbnails")`` renders a scan run, a
mitigation run (``kind: mitigation``: before/after, controls, sweep, guard, limits) or a
scan compared with a baseline scan. It only reads the JSON: re-rendering never recomputes.

How the pieces fit:

1. ``images.redact_images`` re-encodes every embedded image in the results for the
   redaction mode (thumbnails / blur / omit), before anything reaches a template;
2. ``sections.report.build`` turns the results into what each section shows (missing keys
   become "not run"), one module per section in ``sections/``; plots are inline SVG from ``svg``;
   numbers become text in ``fmt``;
3. each section's template, beside its module in ``sections/``, lays it out, with autoescaping
   on for every value: file names, paths and plugin names are user input.

This module is where the report layer meets the core: the version, the input error, the PNG
encoder and the verdict rules come from here; the sections read results JSON only.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from privaudit import __version__
from privaudit.io import verdict as core_verdict
from privaudit.io.errors import InputError
from privaudit.io.images import png_data_uri
from privaudit.reports.images import REDACT_MODES, redact_images
from privaudit.reports.sections import query, report
from privaudit.reports.sections.verdict import Rules

__all__ = ["REDACT_MODES", "png_data_uri", "render_html"]


def _env() -> Environment:
    # StrictUndefined: a template typo fails the tests instead of printing an empty cell.
    return Environment(loader=PackageLoader("privaudit.reports", "sections"),
                       autoescape=select_autoescape(["html", "j2"], default=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def verdict_rules() -> Rules:
    """This version's severity rules (``privaudit.io.verdict``), which the report lays beside the run's own."""
    return Rules(rows=tuple(core_verdict.RULES), text=core_verdict.RULES_TEXT or "")  # RULES_TEXT: None under -OO


def render_html(results: dict, *, baseline: dict | None = None, redact: str = "thumbnails") -> str:
    """The report for ``results`` (a run's results.json), optionally against a ``baseline`` run."""
    if redact not in REDACT_MODES:
        raise InputError(f"--redact {redact!r}: choose one of {', '.join(REDACT_MODES)}")
    if not isinstance(results, dict):
        raise InputError("results: expected a JSON object (a run's results.json)")
    if baseline is not None and not isinstance(baseline, dict):
        raise InputError("--baseline: expected a JSON object (a run's results.json)")
    if results.get("kind") == "query":  # privaudit query: a data owner's report
        return _env().get_template("query.html.j2").render(q=query.query_view(results), version=__version__)
    results = redact_images(results, mode=redact)
    baseline = redact_images(baseline, mode=redact) if baseline is not None else None
    ctx = report.build(results, baseline=baseline, redact=redact, version=__version__, rules=verdict_rules())
    return _env().get_template("report.html.j2").render(**ctx)
