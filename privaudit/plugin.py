"""Plugin kinds and the registry.

Built-ins register exactly as third-party packages do: through the entry-point group
``privaudit.plugins`` (each entry point names a plugin class). A ``--plugins-dir`` adds
drop-in ``.py`` files: every ``Plugin`` subclass defined in such a file with a ``name``
is registered. The registry is built per run, never at import time; a duplicate name is
an error naming both origins.

Contract for every plugin (scikit-learn style, checked by ``tests/test_plugin_contract``):

- class attributes ``name`` (what users type), ``id`` (stable, never reused), ``kind``,
  ``requires`` (capabilities of the target, e.g. ``"white_box"``), ``threat_model``,
  ``references``; the class docstring is its documentation;
- ``__init__`` takes keyword-only parameters with defaults and only stores them, so
  ``type(p)(**p.get_params())`` rebuilds it; fitted attributes end in ``_``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np
import torch

from privaudit.errors import PluginError

ENTRY_POINT_GROUP = "privaudit.plugins"
KINDS = ("attack", "detector", "mitigation", "feature")
CAPABILITIES = ("white_box", "sampling", "text")  # text: a text-conditional (latent) target
THREAT_MODELS = ("white-box", "gray-box", "black-box", "n/a")


class Plugin:
    """Base class: declarative metadata plus scikit-learn style parameters."""

    name: ClassVar[str]
    id: ClassVar[str]
    kind: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    threat_model: ClassVar[str] = "gray-box"
    references: ClassVar[tuple[str, ...]] = ()
    # allowed values per __init__ parameter (privaudit.params), checked before any work
    parameter_constraints: ClassVar[dict[str, list]] = {}

    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}

    def queries_per_image(self) -> float:
        """Model queries (UNet forward passes) the plugin spends per audited image."""
        return 0.0

    @classmethod
    def summary(cls) -> str:
        return (inspect.getdoc(cls) or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class MembershipAttack(Plugin):
    """Scores images; higher = more member-like.

    ``fit`` may make choices (a timestep, a classifier) and sees calibration data only.
    ``score`` is called batch by batch on calibration and evaluation images alike.
    """

    kind: ClassVar[str] = "attack"

    def fit(self, denoiser, *, members: torch.Tensor, holdout: torch.Tensor, seed: int) -> "MembershipAttack":
        return self

    def score(self, denoiser, x0: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class DetectorOutput:
    """What a detector returns; the runner adds severity and provenance."""

    metrics: dict  # name -> privaudit.results.Metric
    finding: str
    details: dict
    table: Any = None  # optional pandas DataFrame, one row per generated sample


class ReplicationDetector(Plugin):
    """Compares generated images with members. ``detect(ctx)`` -> ``DetectorOutput``."""

    kind: ClassVar[str] = "detector"
    requires: ClassVar[tuple[str, ...]] = ("sampling",)
    threat_model: ClassVar[str] = "black-box"

    def detect(self, ctx) -> DetectorOutput:
        raise NotImplementedError


class FeatureExtractor(Plugin):
    """Image -> vector. ``fit(reference=...)`` may train on non-member images."""

    kind: ClassVar[str] = "feature"
    threat_model: ClassVar[str] = "n/a"

    def fit(self, *, reference=None) -> "FeatureExtractor":
        return self

    def transform(self, x: torch.Tensor) -> np.ndarray:
        """Images in [-1, 1], (n, C, H, W) -> float32 (n, d)."""
        raise NotImplementedError


class Mitigation(Plugin):
    """Produces a protected model folder from a target. See the ``mitigate`` command."""

    kind: ClassVar[str] = "mitigation"
    threat_model: ClassVar[str] = "n/a"

    def apply(self, ctx) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Registration:
    name: str
    kind: str
    cls: type
    origin: str


class Registry:
    """Plugins available to one run, by unique name."""

    def __init__(self, registrations: Iterable[Registration] = ()):
        self._by_name: dict[str, Registration] = {}
        for r in registrations:
            self.add(r)

    def add(self, reg: Registration) -> None:
        if reg.name in self._by_name:
            other = self._by_name[reg.name]
            raise PluginError(f"duplicate plugin name {reg.name!r}: {other.origin} and {reg.origin}")
        if reg.kind not in KINDS:
            raise PluginError(f"plugin {reg.name!r} from {reg.origin}: unknown kind {reg.kind!r}")
        self._by_name[reg.name] = reg

    def __iter__(self):
        return iter(sorted(self._by_name.values(), key=lambda r: (KINDS.index(r.kind), r.name)))

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str, *, kind: str | None = None) -> Registration:
        reg = self._by_name.get(name)
        if reg is None or (kind and reg.kind != kind):
            known = ", ".join(r.name for r in self if not kind or r.kind == kind)
            raise PluginError(f"unknown {kind or 'plugin'} {name!r}; installed: {known or 'none'}")
        return reg

    def names(self, kind: str) -> list[str]:
        return [r.name for r in self if r.kind == kind]

    def create(self, name: str, *, kind: str | None = None, **params) -> Plugin:
        from privaudit.params import validate_params

        reg = self.get(name, kind=kind)
        validate_params(reg.cls, params)
        try:
            return reg.cls(**params)
        except TypeError as e:
            raise PluginError(f"plugin {name!r}: bad parameters {params}: {e}") from None

    @classmethod
    def build(cls, *, plugins_dir: str | Path | None = None, blocked: Iterable[str] = ()) -> "Registry":
        blocked = set(blocked)
        reg = cls()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in blocked:
                continue
            dist = ep.dist.name if ep.dist else "?"
            try:
                plugin_cls = ep.load()
            except Exception as e:  # a broken third-party plugin must name itself
                raise PluginError(f"entry point {ep.name} = {ep.value} ({dist}) failed to load: {e}") from None
            _add_class(reg, plugin_cls, f"entry point {ep.value} ({dist})", blocked)
        if plugins_dir is not None:
            if not Path(plugins_dir).is_dir():
                raise PluginError(f"{plugins_dir}: --plugins-dir is not a folder")
            for path in sorted(Path(plugins_dir).glob("*.py")):
                for plugin_cls in _classes_in_file(path):
                    _add_class(reg, plugin_cls, f"file {path}", blocked)
        return reg


def _add_class(reg: Registry, plugin_cls: type, origin: str, blocked: set[str]) -> None:
    if not (isinstance(plugin_cls, type) and issubclass(plugin_cls, Plugin)) or not hasattr(plugin_cls, "name"):
        raise PluginError(f"{origin}: not a privaudit Plugin class with a name")
    if plugin_cls.name not in blocked:
        reg.add(Registration(plugin_cls.name, plugin_cls.kind, plugin_cls, origin))


def _classes_in_file(path: Path) -> list[type]:
    from privaudit.errors import InputError

    mod_name = f"privaudit_dropin_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a drop-in file that calls exit() must not end the run silently
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"{path}: plugin file failed to import: {e.__class__.__name__}: {first}") from None
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Plugin) and obj.__module__ == mod_name
            and "name" in vars(obj)]
