"""Targets a mitigation setting must meet (``privaudit mitigate --target``), and by how much each is missed.

A target is ``NAME OP BOUND`` (``<=`` or ``>=``); several are joined by commas, e.g. the default
``copies<=0.02,blackbox_auc<=0.6,quality>=0.9``. Names (``TARGET_NAMES``):

- ``copies``: the copy fraction of the served samples (the worst replication detector's);
- ``blackbox_auc``: the worst black-box membership AUC, two-sided (max(AUC, 1 - AUC) over every
  black-box attack, adaptive ones included): what an attacker who only gets images, and knows the
  mitigation, reaches. Where no black-box attack ran it falls back to the two-sided AUC over every
  attack on the served model, and the check says so;
- ``auc``: the two-sided membership AUC over every attack on the served model (gray box included);
- ``quality``: the quality ratio, the quality detector's precision (the fraction of samples that
  land on the real-image manifold) relative to the unprotected model's on the same sample count
  (1.0 = unchanged), its Katz interval beside it; on text models also the prompt fidelity (the
  ``fidelity`` detector) relative to the unprotected model's, and the worse of the two counts;
- ``cost``: sampling time relative to the unprotected model, measured in the same run;
- ``at_risk``: of the members the unprotected model's audit listed at risk (``privaudit.audit.risk``),
  the distinct images the setting still reproduces beyond chance (``at_risk<=0``: none);
- ``at_risk_auc``: the worst black-box two-sided AUC of those members' scores against the holdout:
  protection measured where the risk is, not averaged over members who were never exposed.

A setting meets the targets when every one is measured and met: a number that was not measured never
counts as met (an audit that could not look must not read as safe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from privaudit.io.errors import InputError

# name -> (metrics key, label for people)
TARGET_NAMES = {
    "copies": ("copy_fraction", "copy fraction"),
    "blackbox_auc": ("black_box_auc_two_sided", "worst black-box membership AUC, two-sided"),
    "auc": ("membership_auc_two_sided", "membership AUC on the served model, two-sided"),
    "quality": ("quality_ratio", "quality ratio (the worse of precision and, on text models, prompt fidelity, "
                                 "relative to the unprotected model)"),
    "cost": ("sampling_ratio", "sampling time relative to the unprotected model"),
    "at_risk": ("at_risk_reproduced", "members at risk before mitigation that are still reproduced (distinct images)"),
    "at_risk_auc": ("at_risk_black_box_auc_two_sided",
                    "worst black-box two-sided AUC of the members at risk before mitigation"),
}
DEFAULT_TARGETS = "copies<=0.02,blackbox_auc<=0.6,quality>=0.9"
_TERM = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Target:
    """One bound: ``key`` (a metrics key) ``op`` (``<=``/``>=``) ``bound``; ``name`` as written."""

    name: str
    key: str
    op: str
    bound: float
    label: str

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}"

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def miss(self, value: float) -> float:
        """How far ``value`` is on the wrong side of the bound (0 when met)."""
        return max(0.0, value - self.bound) if self.op == "<=" else max(0.0, self.bound - value)


def parse_targets(spec: str, *, where: str = "--target") -> tuple[Target, ...]:
    """``"copies<=0.02,quality>=0.9"`` -> Targets; a one-line InputError naming the bad term."""
    out: list[Target] = []
    terms = [t for t in str(spec).split(",") if t.strip()]
    if not terms:
        raise InputError(f"{where} {spec!r}: no targets; e.g. {DEFAULT_TARGETS!r}")
    for term in terms:
        m = _TERM.match(term)
        if not m:
            raise InputError(f"{where} {term.strip()!r}: expected NAME<=VALUE or NAME>=VALUE, NAME one of "
                             f"{', '.join(TARGET_NAMES)}")
        name, op, raw = m.groups()
        if name not in TARGET_NAMES:
            raise InputError(f"{where} {term.strip()!r}: unknown target {name!r}; one of {', '.join(TARGET_NAMES)}")
        try:
            bound = float(raw)
        except ValueError:
            raise InputError(f"{where} {term.strip()!r}: {raw!r} is not a number") from None
        if bound != bound or bound in (float("inf"), float("-inf")):
            raise InputError(f"{where} {term.strip()!r}: the bound must be a finite number")
        if any(t.name == name for t in out):
            raise InputError(f"{where}: {name!r} is given twice")
        key, label = TARGET_NAMES[name]
        out.append(Target(name=name, key=key, op=op, bound=bound, label=label))
    return tuple(out)


def value_of(target: Target, metrics: dict) -> tuple[float | None, str]:
    """The number a target is judged on, and the metrics key it came from (black-box AUC falls back to
    the two-sided AUC over every attack where no black-box attack ran)."""
    if target.key == "black_box_auc_two_sided" and target.key not in metrics:
        key = "membership_auc_two_sided"
    else:
        key = target.key
    v = metrics.get(key)
    return (None if v is None else float(v)), key


def check(metrics: dict, targets: tuple[Target, ...]) -> list[dict]:
    """Each target against one setting's metrics (``sampling_ratio`` may be among them):
    {"target", "value", "key", "met" (None when not measured), "miss"}."""
    out = []
    for t in targets:
        v, key = value_of(t, metrics)
        out.append({"target": str(t), "label": t.label, "key": key, "value": v,
                    "met": None if v is None else t.met(v), "miss": None if v is None else round(t.miss(v), 6)})
    return out


def meets(metrics: dict, targets: tuple[Target, ...]) -> bool:
    """Every target measured and met."""
    return all(c["met"] is True for c in check(metrics, targets))
