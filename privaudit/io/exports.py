"""Machine-readable exports beside ``results.json``, for CI systems and other tools.

- ``summary.json``: the verdict, each rule that fired, and every plugin's headline metrics
  with their 95% intervals and reliability; no images, no per-image data, small enough to
  read in a CI log. For a mitigation run: the protected model's verdict (as served: the black-box
  one when a black-box attack ran, ``verdict_basis``), the "if the weights leak" level, the gate
  leak, the raw model's verdict, and the headline numbers of each way of serving the model; the
  ``headline`` and its ``caveats`` (quality collapsed or below target, targets missed), the quality
  ratio, each target's check, and the recommended setting (``recommendation``, null when none meets
  the targets; ``decision`` says why in words).
- ``junit.xml``: one test case per plugin (``classname`` = its area). A plugin whose severity
  is ``medium`` or above fails (``FAIL_AT``), with the rules that fired as the message; a
  skipped plugin is skipped and a crashed one an error, so CI systems show findings natively.
  A plugin whose evidence was unusable fails as ``inconclusive``. A mitigation run adds one case
  for the rules judged on the protected model as a whole (reversed scores, headline numbers), which
  also fails on a caveat (quality collapsed, a target missed) whatever the level; a scan whose
  verdict is inconclusive adds a failing ``verdict`` case with the reasons.

Both read the verdict as the report does (``privaudit.io.verdict.judged_level``): a missing verdict, or
a calm one beside failed or unusable evidence, is ``inconclusive``, never "info" or "low".

Both are built from the results dict alone, so ``privaudit report`` could rebuild them.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from privaudit.io.files import write_json, write_text
from privaudit.io.results import SEVERITIES
from privaudit.io.verdict import INCONCLUSIVE, judged_level

SUMMARY_VERSION = 1
FAIL_AT = "medium"


def _area(p: dict) -> str:
    return "membership" if p.get("kind") == "attack" else "replication" if p.get("kind") == "detector" else "other"


def _metrics(p: dict) -> dict:
    out = {}
    for k, m in (p.get("metrics") or {}).items():
        if isinstance(m, dict) and isinstance(m.get("value"), (int, float)):
            out[k] = {"value": m["value"], "ci": m.get("ci"), "reliable": m.get("reliable", True) is not False}
    return out


def _plugins(scan: dict) -> list[dict]:
    return [{"name": p.get("name"), "kind": p.get("kind"), "status": p.get("status"),
             "severity": p.get("severity", "info"), "threat_model": p.get("threat_model"),
             "rules": list((p.get("details") or {}).get("rules") or []), "reason": p.get("reason", ""),
             "inconclusive": str((p.get("details") or {}).get("inconclusive") or ""),
             "metrics": _metrics(p)} for p in scan.get("plugins") or [] if isinstance(p, dict)]


def summary(results: dict) -> dict:
    """The compact summary of a scan or mitigation run (no images)."""
    v: dict = results["verdict"] if isinstance(results.get("verdict"), dict) else {}
    level, problems = judged_level(v, _evidence(results))
    out = {"summary_version": SUMMARY_VERSION, "kind": results.get("kind", "scan"), "verdict": level,
           "reasons": problems, "warnings": list(v.get("warnings") or [])}
    if results.get("kind") == "mitigation":
        out.update(verdict_before=v.get("before"), method=results.get("method"),
                   fired=[{k: f.get(k) for k in ("level", "plugin", "area", "text")} for f in v.get("fired") or []],
                   served=[{"name": c.get("name"), "family": c.get("family"), "metrics": c.get("metrics") or {}}
                           for c in results.get("controls") or []],
                   raw_weights_shipped=(results.get("weights") or {}).get("raw_weights_shipped"),
                   verdict_basis=v.get("basis"),
                   verdict_if_weights_leak=(v.get("if_weights_leak") or {}).get("level"),
                   gate_leak=(results.get("gate_leak") or {}).get("value"),
                   # the level is leakage only: the headline carries what must be said beside it
                   headline=v.get("headline") or level, caveats=list(v.get("caveats") or []),
                   quality=v.get("quality"), targets=list(v.get("targets") or []),
                   recommendation=(results.get("decision") or {}).get("recommended"),
                   decision=(results.get("decision") or {}).get("text"),
                   plugins=_plugins(results.get("after") or {}))
        if isinstance(results.get("frontier"), dict):  # several methods on one frontier
            f = results["frontier"]
            out.update(methods=f.get("methods"), misses=f.get("misses"), detail_method=f.get("shown_in_detail"))
    else:
        ps = _plugins(results)
        out.update(fired=[{"level": p["severity"], "plugin": p["name"], "area": _area(p), "text": r}
                          for p in ps for r in p["rules"]], plugins=ps)
    scan = results.get("after") if results.get("kind") == "mitigation" else results
    a = scan.get("at_risk") if isinstance(scan, dict) else None
    if isinstance(a, dict):  # the worst case, without images or ids
        out["at_risk"] = {k: a.get(k) for k in ("sentence", "n_members", "n_distinct", "n_at_risk", "n_reproduced",
                                                "reproduced_ci", "n_duplicate_clusters", "n_singled_out")}
    return out


def _evidence(results: dict) -> object:
    """The plugin results the verdict was judged on: a mitigation run's after-audit, else the scan's own."""
    scan = results.get("after") if results.get("kind") == "mitigation" else results
    return scan.get("plugins") if isinstance(scan, dict) else None


def junit_xml(results: dict) -> str:
    """JUnit XML: one test case per plugin; severity >= ``FAIL_AT`` is a failure."""
    mitigation = results.get("kind") == "mitigation"
    scan = results.get("after") or {} if mitigation else results
    cases, failures, errors, skipped = [], 0, 0, 0
    for p in _plugins(scan):
        name = f"{_area(p)}.{p['name']}"
        body = ""
        if p["status"] == "skipped":
            skipped += 1
            body = f"<skipped message={quoteattr(p['reason'] or 'skipped')}/>"
        elif p["status"] == "error":
            errors += 1
            body = f"<error message={quoteattr(p['reason'] or 'error')}/>"
        elif p["inconclusive"]:
            failures += 1
            body = f"<failure type={quoteattr(INCONCLUSIVE)} message={quoteattr(p['inconclusive'])}/>"
        elif p["severity"] in SEVERITIES and SEVERITIES.index(p["severity"]) >= SEVERITIES.index(FAIL_AT):
            failures += 1
            msg = f"{p['severity']}: " + "; ".join(p["rules"])
            body = f"<failure type={quoteattr(p['severity'])} message={quoteattr(msg)}/>"
        cases.append(f'  <testcase classname={quoteattr("privaudit." + _area(p))} name={quoteattr(name)}>{body}'
                     "</testcase>")
    v: dict = results["verdict"] if isinstance(results.get("verdict"), dict) else {}
    level, problems = judged_level(v, _evidence(results))
    if mitigation or level == INCONCLUSIVE:  # mitigation: rules only the protected model as a whole can fire
        body = ""
        if level == INCONCLUSIVE:
            failures += 1
            body = f"<failure type={quoteattr(level)} message={quoteattr(f'{level}: ' + '; '.join(problems))}/>"
        elif level in SEVERITIES and SEVERITIES.index(level) >= SEVERITIES.index(FAIL_AT):
            failures += 1
            msg = f"{level}: " + "; ".join(f"{f.get('plugin')}: {f.get('text')}" for f in v.get("fired") or [])
            body = f"<failure type={quoteattr(level)} message={quoteattr(msg)}/>"
        elif mitigation and v.get("caveats"):  # a calm level beside collapsed quality or a missed target fails
            failures += 1
            msg = f"{level}, but " + "; ".join(str(c) for c in v["caveats"])
            body = f"<failure type={quoteattr('caveat')} message={quoteattr(msg)}/>"
        classname, name = ("privaudit.mitigation", "verdict.protected") if mitigation else ("privaudit", "verdict")
        cases.append(f'  <testcase classname={quoteattr(classname)} name={quoteattr(name)}>{body}</testcase>')
    head = (f'<testsuite name="privaudit" tests="{len(cases)}" failures="{failures}" errors="{errors}" '
            f'skipped="{skipped}">')
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + head + "\n" + "\n".join(cases) + "\n</testsuite>\n"


def write_exports(out: str | Path, results: dict) -> None:
    """``summary.json`` and ``junit.xml`` into the run folder ``out`` (each written atomically)."""
    out = Path(out)
    write_json(out / "summary.json", summary(results))
    write_text(out / "junit.xml", junit_xml(results))
