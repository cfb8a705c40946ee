"""Compare two runs' results.json (scan, mitigation or query): every number and verdict, nothing timed.

    python scripts/compare-results.py BEFORE/results.json AFTER/results.json

Used to prove that a refactoring changed no result: run the same seeded commands on the old and the
new tree and compare. Walks both JSON documents side by side and reports every path whose value
differs, skipping what legitimately changes from run to run: wall-clock times, the manifest (argv,
versions, cost), paths and hashes of the run folder itself. Findings, limits and warnings are text
built from the numbers and compared too. Exit 0 when identical, 1 with the differing paths listed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

# keys whose values are times, the run's own provenance or its own location: never results
SKIPPED = {"seconds", "sampling_seconds", "sampling_ratio", "timing", "manifest", "outputs", "created", "wall_s",
           "cost", "path", "out", "privaudit_version", "seconds_total", "protected"}
# timings quoted inside findings' text
TIMED = re.compile(r"sampling time x[0-9.]+")


def walk(a: object, b: object, path: str, out: list[str], counts: dict[str, int]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in SKIPPED:
                continue
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'after' if k in b else 'before'}")
                continue
            walk(a[k], b[k], f"{path}.{k}", out, counts)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items before, {len(b)} after")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out, counts)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        counts["numbers"] += 1
    elif isinstance(a, str) and isinstance(b, str):
        counts["other"] += 1
        if TIMED.sub("sampling time x?", a) != TIMED.sub("sampling time x?", b):
            out.append(f"{path}: {a!r} before, {b!r} after")
    else:
        counts["numbers" if isinstance(a, (int, float)) and not isinstance(a, bool) else "other"] += 1
        if a != b or type(a) is not type(b):
            out.append(f"{path}: {a!r} before, {b!r} after")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    a = ap.parse_args(argv)
    docs = []
    for p in (a.before, a.after):
        try:
            docs.append(json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            print(f"error: {p}: {e}", file=sys.stderr)
            return 2
    diffs: list[str] = []
    counts = {"numbers": 0, "other": 0}
    walk(docs[0], docs[1], "$", diffs, counts)
    print(f"{a.before} vs {a.after}: {counts['numbers']} numbers and {counts['other']} other values compared, "
          f"{len(diffs)} differ")
    for d in diffs[:200]:
        print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
