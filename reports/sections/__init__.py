"""One module per report section, beside the template that lays it out.

``report`` (``report.html.j2``) builds the whole page from the others: ``verdict`` (``verdict.j2``),
``mitigation`` (``mitigation.j2``), ``comparison`` (``comparison.j2``: two runs side by side),
``membership`` (``membership.j2``), ``replication`` (``replication.j2``: replication, quality, other
results) and ``provenance`` (``provenance.j2``: the verdict's rules, limits, provenance). ``query``
(``query.html.j2``) is the ``privaudit query`` report. ``macros.j2`` and ``style.css.j2`` are shared;
shared formatting is ``privaudit.reports.fmt``.
"""
