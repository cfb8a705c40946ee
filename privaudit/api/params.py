"""Declared plugin parameters, checked before any work (scikit-learn ``_parameter_constraints`` style).

A plugin class declares, for each ``__init__`` parameter it wants checked, a list of allowed
forms; a value is valid when it matches any of them::

    parameter_constraints: ClassVar[dict] = {
        "n_samples": [Interval(int, 1, None)],
        "quantile": [Interval(float, 0, 1, closed="neither")],
        "sampler": [Options("ddim", "ddpm")],
        "timesteps": [Interval(int, 0, 999), SequenceOf(Interval(int, 0, 999))],
        "nlist": [None, Interval(int, 1, None)],   # None: the value may be None
    }

``validate_params(cls, params)`` (called by ``Registry.create``, so drop-in and third-party
plugins get it too) raises ``PluginError`` (exit 2) naming the plugin, the parameter and what is
allowed; a key that is not a keyword parameter of the plugin is an error too. Values are
checked, never clamped or converted.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from privaudit.io.errors import PluginError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


@dataclass(frozen=True)
class Interval:
    """A number of ``type`` (int, or float which also accepts ints) in [lo, hi]; None = unbounded."""

    type: type
    lo: float | None
    hi: float | None
    closed: str = "both"  # both, left, right or neither

    def ok(self, v: Any) -> bool:
        if not (_is_int(v) if self.type is int else _is_real(v)):
            return False
        lo_ok = self.lo is None or (v >= self.lo if self.closed in ("both", "left") else v > self.lo)
        hi_ok = self.hi is None or (v <= self.hi if self.closed in ("both", "right") else v < self.hi)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        kind = "an integer" if self.type is int else "a number"
        if self.lo is None and self.hi is None:
            return kind
        left = "[" if self.closed in ("both", "left") and self.lo is not None else "("
        right = "]" if self.closed in ("both", "right") and self.hi is not None else ")"  # infinity is never included
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{kind} in {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Options:
    """One of the given values."""

    values: tuple

    def __init__(self, *values: Any):
        object.__setattr__(self, "values", tuple(values))

    def ok(self, v: Any) -> bool:
        return any(type(v) is type(o) and v == o for o in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.values)


@dataclass(frozen=True)
class InstanceOf:
    """Any value of the given type(s) (e.g. ``str`` for a path, ``dict`` for nested parameters)."""

    types: tuple

    def __init__(self, *types: type):
        object.__setattr__(self, "types", tuple(types))

    def ok(self, v: Any) -> bool:
        return isinstance(v, self.types) and not (isinstance(v, bool) and bool not in self.types)

    def __str__(self) -> str:
        return "a " + " or ".join(t.__name__ for t in self.types)


@dataclass(frozen=True)
class SequenceOf:
    """A list or tuple of at least ``min_len`` items, each matching ``item``."""

    item: Any
    min_len: int = 1

    def ok(self, v: Any) -> bool:
        return isinstance(v, (list, tuple)) and len(v) >= self.min_len and all(_matches(self.item, x) for x in v)

    def __str__(self) -> str:
        return f"a list of {self.min_len}+ items, each {_describe(self.item)}"


def _matches(constraint: Any, v: Any) -> bool:
    return v is None if constraint is None else constraint.ok(v)


def _describe(constraint: Any) -> str:
    return "None" if constraint is None else str(constraint)


def keyword_params(cls: type) -> list[str]:
    sig = inspect.signature(cls)  # the __init__ signature, without self
    return [k for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY]


def validate_params(cls: type, params: dict[str, Any]) -> None:
    """Raise ``PluginError`` for an unknown key or a value outside ``cls.parameter_constraints``."""
    name = getattr(cls, "name", cls.__name__)
    known = keyword_params(cls)
    for key in params:
        if key not in known:
            raise PluginError(f"plugin {name}: unknown parameter {key!r}; "
                              f"it takes {', '.join(known) or 'no parameters'}")
    constraints = getattr(cls, "parameter_constraints", {}) or {}
    for key, value in params.items():
        allowed = constraints.get(key)
        if allowed is None or any(_matches(c, value) for c in allowed):
            continue
        raise PluginError(f"plugin {name}: {key}={value!r} is invalid; expected "
                          + " or ".join(_describe(c) for c in allowed))
