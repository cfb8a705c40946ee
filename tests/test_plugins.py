"""The plugin registry: entry points (built-ins and third-party), drop-in files, and the
contract every registered plugin must meet (scikit-learn's check_estimator in spirit)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from privaudit.api import (
    CAPABILITIES,
    KINDS,
    THREAT_MODELS,
    FeatureExtractor,
    MembershipAttack,
    Mitigation,
    ReplicationDetector,
)
from privaudit.api.registry import Registry
from privaudit.io.errors import PluginError

EXAMPLE = Path(__file__).parent / "example_plugin"
BASES = {"attack": MembershipAttack, "detector": ReplicationDetector, "feature": FeatureExtractor,
         "mitigation": Mitigation}
METHODS = {"attack": "score", "detector": "detect", "feature": "transform", "mitigation": "apply"}


@pytest.fixture
def example_entry_point(tmp_path, monkeypatch):
    """Install the example package's entry point the way pip would: a .dist-info on sys.path."""
    info = tmp_path / "privaudit_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: privaudit-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[privaudit.plugins]\nbrightness = privaudit_example:BrightnessAttack\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    sys.modules.pop("privaudit_example", None)


def _registered() -> list:
    return list(Registry.build())


@pytest.mark.parametrize("reg", _registered(), ids=lambda r: r.name)
def test_plugin_contract(reg):
    cls = reg.cls
    assert reg.kind in KINDS and issubclass(cls, BASES[reg.kind])
    assert cls.name == reg.name and cls.name.replace("-", "_").isidentifier()  # e.g. gen-nn
    assert isinstance(cls.id, str) and cls.id
    assert cls.threat_model in THREAT_MODELS
    assert set(cls.requires) <= set(CAPABILITIES), cls.requires
    assert inspect.getdoc(cls) and cls.summary(), "the docstring is the plugin's documentation"
    assert inspect.getdoc(sys.modules[cls.__module__]), "one algorithm per file, documented in its module docstring"
    # scikit-learn style: keyword-only parameters with defaults, stored unchanged.
    params = inspect.signature(cls.__init__).parameters
    for name, p in params.items():
        if name == "self":
            continue
        assert p.kind is p.KEYWORD_ONLY, f"{name} must be keyword-only"
        assert p.default is not p.empty, f"{name} needs a default"
    plugin = cls()
    assert {k: v for k, v in plugin.get_params().items()} == {k: p.default for k, p in params.items() if k != "self"}
    clone = cls(**plugin.get_params())
    assert clone.get_params() == plugin.get_params()
    assert not [k for k in vars(plugin) if k.endswith("_")], "__init__ must not fit anything"
    assert getattr(cls, METHODS[reg.kind]) is not getattr(BASES[reg.kind], METHODS[reg.kind])
    assert plugin.queries_per_image() >= 0


def test_ids_are_unique():
    ids = [r.cls.id for r in Registry.build()]
    assert len(ids) == len(set(ids))


def test_builtins_register_through_entry_points():
    origins = {r.name: r.origin for r in Registry.build()}
    assert origins["loss"].startswith("entry point privaudit.plugins.attacks.loss")
    assert origins["nn"].startswith("entry point")


def test_third_party_entry_point_is_registered_and_runs(example_entry_point, digits_target, tmp_path):
    from conftest import plugin, run_scan

    reg = Registry.build()
    assert reg.get("brightness").origin.startswith("entry point privaudit_example:BrightnessAttack (privaudit-example)")
    res = run_scan(digits_target, tmp_path / "run", attacks=("brightness",), detectors=())
    p = plugin(res, "brightness")
    assert p["status"] == "ok" and p["id"] == "EXAMPLE-001" and p["threat_model"] == "black-box"
    assert 0 <= p["metrics"]["auc"]["value"] <= 1


def test_dropin_file_and_blocking(tmp_path):
    (tmp_path / "mine.py").write_text(
        "from privaudit.api import MembershipAttack\n"
        "class Zero(MembershipAttack):\n"
        "    '''Scores zero.'''\n"
        "    name = 'zero'\n    id = 'DROPIN-1'\n"
        "    def score(self, denoiser, x0, *, noise):\n        return x0.new_zeros(len(x0))\n")
    reg = Registry.build(plugins_dir=tmp_path)
    assert reg.get("zero").origin == f"file {tmp_path / 'mine.py'}"
    assert "loss" not in Registry.build(plugins_dir=tmp_path, blocked=["loss"])


def test_duplicate_name_names_both_origins(tmp_path):
    (tmp_path / "dup.py").write_text(
        "from privaudit.api import MembershipAttack\n"
        "class Loss2(MembershipAttack):\n    '''Clash.'''\n    name = 'loss'\n    id = 'DUP'\n"
        "    def score(self, denoiser, x0, *, noise):\n        return x0.flatten(1).mean(1)\n")
    with pytest.raises(PluginError) as e:
        Registry.build(plugins_dir=tmp_path)
    msg = str(e.value)
    assert "duplicate plugin name 'loss'" in msg and "entry point" in msg and str(tmp_path / "dup.py") in msg


def test_unknown_plugin_lists_installed():
    with pytest.raises(PluginError, match="unknown attack 'nope'; installed: .*loss"):
        Registry.build().get("nope", kind="attack")


def test_plugins_command_lists_every_plugin(capsys):
    from privaudit.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for r in Registry.build():
        assert r.name in out and r.cls.id in out
    assert "queries/img" in out and "origin" in out
