"""Result data model: small frozen dataclasses, serialised to JSON with a schema version."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class Metric:
    """A number with its confidence interval (``ci`` is (low, high) or None).

    ``reliable`` is False where the data are too small for the number to mean much
    (e.g. TPR at 0.1% FPR with fewer than 1000 holdout images); ``note`` says why.
    """

    value: float
    ci: tuple[float, float] | None = None
    reliable: bool = True
    note: str = ""

    def to_json(self) -> dict:
        clean = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)
        return {"value": clean(self.value), "ci": None if self.ci is None else [clean(c) for c in self.ci],
                "reliable": self.reliable, "note": self.note}


@dataclass(frozen=True)
class PluginResult:
    """One plugin's outcome in one run. ``status`` is ok, skipped (with ``reason``) or error."""

    name: str
    id: str
    kind: str
    status: str
    threat_model: str = ""
    queries_per_image: float = 0.0
    params: dict = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    severity: str = "info"
    finding: str = ""
    reason: str = ""
    seconds: float = 0.0
    references: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["metrics"] = {k: m.to_json() for k, m in self.metrics.items()}
        d["references"] = list(self.references)
        return d
