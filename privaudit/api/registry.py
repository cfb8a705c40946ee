"""The plugin registry (the kinds plugins subclass live in ``privaudit.api``).

Built-ins register exactly as third-party packages do: through the entry-point group
``privaudit.plugins`` (each entry point names a plugin class). A ``--plugins-dir`` adds
drop-in ``.py`` files: every ``Plugin`` subclass defined in such a file with a ``name``
is registered. The registry is built per run, never at import time; a duplicate name is
an error naming both origins.

The contract every plugin meets is documented in ``privaudit.api`` and checked at registration
(a class that is not a named Plugin of a known kind fails at load, naming its origin) and in
full by ``privaudit.testing.check_plugin``.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterable, Iterator

from privaudit.api import (
    KINDS,
    Plugin,
    declaration_problems,
    validate_params,
)
from privaudit.io.errors import PluginError

ENTRY_POINT_GROUP = "privaudit.plugins"

@dataclass(frozen=True)
class Registration:
    name: str
    kind: str
    cls: type[Plugin]
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

    def __iter__(self) -> Iterator[Registration]:
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
        """An instance of plugin ``name`` with ``params``, validated before any work: the given keys and
        values against the declared constraints, then every parameter (``Plugin.validate``)."""
        reg = self.get(name, kind=kind)
        validate_params(reg.cls, params)
        try:
            plugin = reg.cls(**params)
        except TypeError as e:
            raise PluginError(f"plugin {name!r}: bad parameters {params}: {e}") from None
        plugin.validate()
        return plugin

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
    problems = declaration_problems(plugin_cls)
    if problems:
        raise PluginError(f"{origin}: not a valid privaudit plugin: {'; '.join(problems)}")
    assert issubclass(plugin_cls, Plugin)
    if plugin_cls.name not in blocked:
        reg.add(Registration(plugin_cls.name, plugin_cls.kind, plugin_cls, origin))


def _classes_in_file(path: Path) -> list[type]:
    from privaudit.io.errors import InputError

    mod_name = f"privaudit_dropin_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path}: not an importable Python file")
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
