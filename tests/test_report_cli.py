"""The CLI as a new user meets it: help text, the plugin list, the terminal summary."""

from __future__ import annotations

import argparse

import pytest


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_has_no_doc_markup_and_every_option_is_explained(capsys):
    from privaudit.cli import build_parser, main

    parser = build_parser()
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "``" not in top and "Exit codes" in top
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"privaudit {name}: {action.dest} has no help"
        assert main([name, "--help"]) == 0
        assert "``" not in capsys.readouterr().out


@pytest.mark.parametrize("command, default", [("scan", "nn"), ("mitigate", "nn,quality")])
def test_help_states_the_real_detectors_default(command, default):
    from privaudit.cli import build_parser

    sub = _subparsers(build_parser())[command]
    action = next(a for a in sub._actions if a.dest == "detectors")
    # no explicit default (None): the command's own default applies, plus a text target's prompt detectors
    assert action.default is None and ",".join(sub.get_default("default_detectors")) == default
    assert f"(default: {default}," in action.help


def test_demo_audits_the_mitigation_with_the_scans_attacks(monkeypatch, tmp_path):
    """The demo's before/after must face the attacks its scan ran (a loss-only after-audit read "low")."""
    from privaudit import cli
    from privaudit.fixtures import digits

    seen = {}
    monkeypatch.setattr(digits, "build", lambda **kw: tmp_path)
    monkeypatch.setattr("privaudit.audit.runner.scan", lambda **kw: seen.setdefault("scan", kw["settings"]) and {
        "verdict": {"level": "low", "warnings": []}, "plugins": []})
    monkeypatch.setattr("privaudit.mitigation.flow.mitigate", lambda **kw: seen.setdefault("mitigate", kw["settings"]) and {
        "warnings": [], "findings": [], "protected": "p", "method": "cpsample", "verdict": {}})
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    assert seen["mitigate"].attacks == seen["scan"].attacks == ("loss", "secmi", "pia", "pian", "sima", "gsa", "rediffuse",
                                                                 "gen-nn")


def test_plugins_lists_descriptions_and_parameters(capsys):
    from privaudit.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "nn: " in out and "parameters: n_samples=256" in out and "--param nn.KEY=VALUE" in out
    assert "cpsample: CPSample" in out and "alpha=0.4" in out and "``" not in out


def test_terminal_summary_shows_intervals_integers_and_indicative(capsys, tmp_path):
    from privaudit.cli.commands import _mitigation_summary, _summary

    results = {"verdict": {"level": "high", "warnings": []}, "plugins": [
        {"name": "loss", "status": "ok", "severity": "high", "reason": "", "metrics": {
            "auc": {"value": 0.9, "ci": [0.8, 0.97], "reliable": True},
            "tpr_at_fpr_0.001": {"value": 1.0, "ci": [0.89, 1.0], "reliable": False}}},
        {"name": "nn", "status": "ok", "severity": "critical", "reason": "", "metrics": {
            "copied_members": {"value": 62.0, "ci": None, "reliable": True}}}]}
    _summary(results, tmp_path)
    err = capsys.readouterr().err
    assert "auc=0.900 [0.800, 0.970]" in err and "tpr_at_fpr_0.001=1.000 [0.890, 1.000] (indicative)" in err
    assert "copied_members=62" in err and "62.0" not in err
    _mitigation_summary({"verdict": {"level": "high", "before": "critical", "fired": []}, "method": "cpsample",
                         "warnings": [], "findings": [], "protected": "p"}, tmp_path)
    assert "verdict: critical (raw model) -> high (protected cpsample pipeline)" in capsys.readouterr().err


def test_attacks_show_progress_unless_quiet(digits_target, digits_denoiser, capsys):
    from privaudit.audit.scoring import score_set
    from privaudit.data.sets import load_images

    class Mean:
        name = "mean"

        def score(self, den, x, *, noise):
            return x.flatten(1).mean(1)

    images = load_images(digits_target / "holdout", name="holdout", channels=1, size=8)
    s = score_set(Mean(), digits_denoiser, images, batch_size=64, seed=0, label="holdout", progress=True)
    assert len(s) == len(images) and "mean: scoring holdout" in capsys.readouterr().err
    score_set(Mean(), digits_denoiser, images, batch_size=64, seed=0, label="holdout", progress=False)
    assert "scoring" not in capsys.readouterr().err


def test_readme_commands_use_only_options_the_cli_has():
    import re
    from pathlib import Path

    from privaudit.cli import build_parser

    subs = _subparsers(build_parser())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    seen = 0
    for line in re.split(r"(?<!\\)\n", block.replace("\\\n", " ")):
        m = re.match(r"\s*privaudit (\w+)(.*?)(#|$)", line)
        if not m:
            continue
        options = {o for a in subs[m[1]]._actions for o in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", m[2]):
            assert flag in options, f"README: privaudit {m[1]} {flag} is not an option"
            seen += 1
    assert seen >= 10
