"""The floor plugins stand on: the public API module, the layering it promises, and the
contract checks third parties run (``privaudit.testing.check_plugin``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privaudit.api import MembershipAttack, MetricSpec, PluginError, ReplicationDetector, Variant
from privaudit.api.registry import Registry
from privaudit.testing import check_plugin

REPO = Path(__file__).resolve().parents[1]
FLOWS = ("privaudit.audit.runner", "privaudit.mitigation.flow", "privaudit.reports")
NEEDS_FILES = {"torchscript", "torchvision"}  # their behaviour needs a model file the user points to


def _plugin_modules() -> list[str]:
    import pkgutil

    import privaudit.plugins as P

    return sorted(m.name for m in pkgutil.walk_packages(P.__path__, "privaudit.plugins."))


def test_plugin_modules_never_import_the_flows():
    """Every plugin module, imported in a fresh interpreter, pulls in no flow or report module
    (one interpreter for all: what all of them import together includes what each imports)."""
    modules = _plugin_modules()
    assert "privaudit.plugins.attacks.loss" in modules and "privaudit.plugins.mitigations.cpsample.mitigation" in modules
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            f"print(','.join(sorted(m for m in sys.modules if m.startswith({FLOWS!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"plugin modules import {out.stdout.strip()}"


@pytest.mark.parametrize("reg", list(Registry.build()), ids=lambda r: r.name)
def test_check_plugin_passes_for_every_builtin(reg):
    passed = check_plugin(reg.cls, behaviour=reg.name not in NEEDS_FILES)
    assert "declarations" in passed and "init_only_stores" in passed


def test_example_third_party_plugin_passes_the_contract():
    sys.path.insert(0, str(REPO / "tests" / "example_plugin"))
    try:
        from privaudit_example import BrightnessAttack
    finally:
        sys.path.pop(0)
    passed = check_plugin(BrightnessAttack)
    assert "attack_scores" in passed  # exercised on the oracle denoiser, not only declared


class _Broken(MembershipAttack):
    """Breaks the contract three ways."""

    name = "broken"
    id = "TEST-BROKEN"

    def __init__(self, *, k: int = 2):
        self.k = k
        self.cache = {}  # not a parameter: __init__ must only store parameters

    def score(self, denoiser, x0, *, noise):
        return torch.rand(len(x0) + 1)  # wrong shape, and ignores the generator


class _NoHook(ReplicationDetector):
    """Declares a detector but never implements detect()."""

    name = "nohook"
    id = "TEST-NOHOOK"


def test_check_plugin_names_every_violation():
    with pytest.raises(AssertionError) as e:
        check_plugin(_Broken)
    msg = str(e.value)
    assert "init_only_stores" in msg and "cache" in msg
    assert "attack_scores" in msg and "shape" in msg


def test_registration_refuses_a_plugin_without_its_hook(tmp_path):
    (tmp_path / "nohook.py").write_text(
        "from privaudit.api import ReplicationDetector\n"
        "class NoHook(ReplicationDetector):\n    '''No detect.'''\n    name = 'nohook'\n    id = 'X-1'\n")
    with pytest.raises(PluginError, match=r"nohook\.py: not a valid privaudit plugin: does not implement detect\(\)"):
        Registry.build(plugins_dir=tmp_path)
    with pytest.raises(AssertionError, match="does not implement detect"):
        check_plugin(_NoHook)


def test_metric_specs_are_declared_and_travel_with_results(digits_scan):
    from privaudit.plugins.attacks.loss import LossAttack

    specs = LossAttack.specs()
    assert specs["auc"].section == "membership" and specs["tpr_at_fpr_0.01"].unit == "rate"
    loss = next(p for p in digits_scan["plugins"] if p["name"] == "loss")
    assert loss["details"]["metric_specs"]["auc"]["better"] == "chance"
    with pytest.raises(PluginError):
        MetricSpec("x", "x", section="nowhere")


def test_variant_roles_are_declared():
    from privaudit.testing.oracles import GaussianOracle

    den = GaussianOracle(torch.rand(4, 1, 2, 2) * 2 - 1)
    assert Variant(name="p", description="", denoiser=den, role="placebo").role == "placebo"
    with pytest.raises(PluginError, match="role"):
        Variant(name="p", description="", denoiser=den, role="sham")


def test_report_reads_declared_specs_not_names():
    """A third-party metric is labelled and judged as its plugin declared it; an undeclared one is never judged."""
    from privaudit.reports import fmt as view
    from privaudit.reports.html import verdict_rules
    from privaudit.reports.sections import report

    run = {"plugins": [{"name": "widget", "kind": "detector", "status": "ok", "metrics": {"widgetness": 0.3},
                        "details": {"metric_specs": {"widgetness": MetricSpec(
                            "widgetness", "widget score", "quality", "high", "rate", "how widgety").to_json()}}}]}
    report.build(run, baseline=None, redact="thumbnails", version="test", rules=verdict_rules())
    assert view.metric_info("widgetness") == ("widget score", "how widgety", "pct", "high")
    assert view.is_quality(run["plugins"][0])
    assert view.metric_info("sprocket_count")[3] is None  # undeclared: shown, never called better or worse
