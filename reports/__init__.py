"""The report layer: renders a run's results (the JSON written beside it) as one HTML file."""

from privaudit.reports.html import render_html

__all__ = ["render_html"]
