"""Command line: ``privaudit scan | mitigate | report | plugins | demo | fixture``.

Exit codes: 0 clean, 1 a finding at or above ``--fail-on``, 2 usage or input error,
3 runtime error. Human messages go to stderr; the report path to stdout.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from privaudit import __version__
from privaudit.cli.args import (
    add_audit_args,
    add_engine_args,
    add_threads,
    csv_list,
    plugin_param,
    seed_arg,
)
from privaudit.cli.commands import (
    FIXTURES,
    cmd_demo,
    cmd_fixture,
    cmd_mitigate,
    cmd_plugins,
    cmd_query,
    cmd_report,
    cmd_scan,
)
from privaudit.io.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, PrivauditError


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (``privaudit: error: ...``), exit 2, like every other input error."""

    def error(self, message: str):
        where = self.prog.removeprefix("privaudit").strip()
        self.exit(EXIT_USAGE, f"privaudit: error: {where + ': ' if where else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="privaudit", description=(
        "Audit a diffusers model for training-data privacy risk (membership inference, replication) and mitigate it. "
        "Exit codes: 0 clean, 1 a finding at or above --fail-on (or an inconclusive verdict), 2 usage or input "
        "error, 3 runtime error."))
    ap.add_argument("--version", action="version", version=f"privaudit {__version__}")
    ap.add_argument("--debug", action="store_true", help="on an error, print the full message and traceback "
                    "(default: one line)")
    sub = ap.add_subparsers(dest="command", required=True)

    model_help = ("a local diffusers pipeline folder (model_index.json, unet/, scheduler/), or a Hub id (ORG/NAME) "
                  "read from the local Hugging Face cache")
    p = sub.add_parser("scan", help="audit a diffusers pipeline folder")
    p.add_argument("model_dir", type=Path, help=model_help)
    p.add_argument("--members", type=Path, required=True, help="training images: folder or .npy/.npz")
    p.add_argument("--holdout", type=Path, required=True, help="images never trained on, same distribution")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/scan-<time>)")
    p.add_argument("--lora", type=Path, help="a LoRA adapter (.safetensors file, or a diffusers / peft adapter folder) "
                   "to load onto MODEL_DIR, the base; the adapted model is audited and the base calibrates each "
                   "gray-box attack")
    p.add_argument("--base", type=Path, help="the base model a full fine-tune MODEL_DIR started from: each gray-box "
                   "attack also reports score(fine-tune) - score(base)")
    p.add_argument("--model-card", type=Path, metavar="OUT.md", help="also write a Hugging Face model-card privacy "
                   "section (YAML metadata + summary) to OUT.md")
    add_audit_args(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("mitigate", help="protect a model (e.g. CPSample) and audit it before and after")
    p.add_argument("model_dir", type=Path, help=model_help + ": the raw model to protect")
    p.add_argument("--method", default="cpsample", help="mitigation plugin, several joined by commas (e.g. "
                   "cpsample,rejection,repel), or all: each runs its sweep on one privacy/quality frontier "
                   "(default: cpsample)")
    p.add_argument("--members", type=Path, required=True, help="training images: folder or .npy/.npz")
    p.add_argument("--holdout", type=Path, required=True, help="images never trained on, same distribution")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/mitigate-<time>)")
    p.add_argument("--alpha", type=float, help="CPSample gate: guide where the guard's confidence exceeds 1 - alpha, "
                   "alpha in (0, 0.5]")
    p.add_argument("--scale", type=float, help="CPSample guidance scale (>= 0; 0 turns guidance off)")
    p.add_argument("--sweep", action="store_true", help="also audit the method's sweep (e.g. alpha x scale) and "
                   "recommend a setting (always on with several methods)")
    p.add_argument("--target", default=None, metavar="SPEC",
                   help="what a recommended setting must meet, e.g. \"copies<=0.02,blackbox_auc<=0.6,quality>=0.9\" "
                        "(the default); names: copies, blackbox_auc, auc, quality, cost, at_risk, at_risk_auc")
    p.add_argument("--no-adaptive", dest="adaptive", action="store_false",
                   help="do not add the installed adaptive attacks (an attacker who knows the mitigation) to the audits")
    # a protected model is judged as served: black-box attacks (images only) beside the gray-box loss
    add_audit_args(p, detectors=("nn", "quality"), attacks=("loss", "rediffuse", "gen-nn"))
    p.set_defaults(func=cmd_mitigate)

    p = sub.add_parser("report", help="re-render a run's report from its results.json")
    p.add_argument("run_dir", type=Path, help="a run folder written by scan, mitigate or demo")
    p.add_argument("--baseline", type=Path, help="another run folder to compare against")
    p.add_argument("--redact", choices=("thumbnails", "blur", "omit"), default="thumbnails",
                   help="thumbnails (default) re-renders report.html only; blur or omit also rewrite every file of "
                        "the run folder (results.json, CSVs, before/ and after/) with images redacted")
    p.add_argument("--out", type=Path, help="write the HTML here instead of RUN_DIR/report.html; nothing in "
                   "RUN_DIR changes")
    p.add_argument("--model-card", type=Path, metavar="OUT.md", help="write a Hugging Face model-card privacy section "
                   "(YAML metadata + summary: verdict per threat model, attacks, copies, members at risk, mitigation, "
                   "a link to the report) to OUT.md instead of re-rendering the report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plugins", help="list installed plugins, their descriptions and parameters")
    p.add_argument("--plugins-dir", type=Path, help="folder of drop-in plugin .py files; they are imported, "
                   "i.e. their code runs with your permissions: use only files you trust")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("fixture", help="build a built-in target (no download)")
    p.add_argument("name", choices=FIXTURES, help="which built-in target")
    p.add_argument("--out", type=str, required=True, help="folder to write model/, members/, holdout/ ... into")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # measured beside two busy processes on 2 cores: 47 ms a training step with 1 thread, 1588 ms with 2
    add_threads(p, default=1)
    p.set_defaults(func=cmd_fixture)

    p = sub.add_parser("demo", help="build the built-in digits target, audit it, write a report")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/demo-<time>)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda")
    # The demo shows everything built in: every pixel-model attack and both image detectors.
    p.add_argument("--attacks", type=csv_list, default=("loss", "secmi", "pia", "pian", "sima", "gsa", "rediffuse", "gen-nn"),
                   help="comma-separated attack plugins (default: loss,secmi,pia,pian,sima,gsa,rediffuse,gen-nn)")
    p.add_argument("--detectors", type=csv_list, default=("nn", "quality"),
                   help="comma-separated detector plugins (default: nn,quality)")
    # The before/after audit runs the scan's attacks: a verdict judged on fewer attacks than the scan's could read
    # "low" while the scan shows leakage the mitigation never faced.
    p.add_argument("--mitigate-attacks", type=csv_list, default=None,
                   help="attacks for the before/after audit of the mitigation (default: the same as --attacks)")
    p.add_argument("--mitigate", default="cpsample", help="mitigation to demonstrate after the scan (default: cpsample)")
    p.add_argument("--no-mitigate", dest="mitigate", action="store_const", const=None, help="scan only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads(p, default=1)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("query", help="was my data used? test a suspect image set against never-seen images")
    p.add_argument("model_dir", type=Path, help=model_help)
    p.add_argument("--suspect", type=Path, required=True, help="the images you suspect were trained on")
    p.add_argument("--holdout", type=Path, required=True,
                   help="images of the same source the model certainly never saw (at least 8)")
    p.add_argument("--out", type=Path, help="run folder (default: ./privaudit-runs/query-<time>)")
    p.add_argument("--lora", type=Path, help="a LoRA adapter to load onto MODEL_DIR (as scan --lora)")
    p.add_argument("--revision", help="with a Hub id as MODEL_DIR: the revision to read from the local cache")
    p.add_argument("--base", type=Path, help="the base model of a full fine-tune MODEL_DIR (as scan --base)")
    p.add_argument("--attacks", type=csv_list, default=("loss", "pia", "secmi"),
                   help="comma-separated attack plugins whose scores are combined (default: loss,pia,secmi)")
    p.add_argument("--detectors", type=csv_list, default=("nn",),
                   help="replication detectors run with the suspect images as members: does the model generate "
                        "copies of them? (default: nn; '' for none)")
    p.add_argument("--param", type=plugin_param, action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="a plugin parameter (repeatable)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level of the answer (default: 0.01)")
    p.add_argument("--repeats", type=int, default=5, help="draws per set size in the p-value curve (default: 5)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"), help="the networks' dtype")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled (.bin/.ckpt) weights: they can run code")
    p.add_argument("--plugins-dir", type=Path, help="folder of drop-in plugin .py files (their code runs)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed for the splits and attack noise (default: 0)")
    p.add_argument("--batch-size", type=int, default=128, help="images per model call (default: 128)")
    p.add_argument("--prompt", choices=("caption", "empty"), default="caption",
                   help="text-conditional models: condition attacks on captions or the empty prompt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_args(p)
    add_threads(p)
    p.set_defaults(func=cmd_query)
    for sp in sub.choices.values():  # --debug also after the command; the top-level default stands
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return ap


def raise_on_signals() -> None:
    """SIGTERM/SIGHUP raise KeyboardInterrupt like Ctrl-C, so every ``finally`` and cleanup runs
    (temporary run and fixture folders are removed, locks released)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)


def _report_error(e: BaseException, *, debug: bool, text: str) -> None:
    """One line on stderr (the first line of the message); ``--debug``: the whole message and the traceback,
    the errors it was raised from included."""
    if debug:
        import traceback

        traceback.print_exception(e, file=sys.stderr)
        return
    lines = text.strip().splitlines() or [e.__class__.__name__]
    whole = len(lines) == 1 and isinstance(e, PrivauditError) and e.__cause__ is None
    more = "" if whole else " (--debug shows the full message)"
    print(f"privaudit: error: {lines[0]}{more}", file=sys.stderr)


def _resolve_hub_ids(a: argparse.Namespace) -> None:
    """MODEL_DIR, --base and --lora given as Hub ids (ORG/NAME) -> their snapshots in the local cache."""
    from privaudit.model.hub import resolve_location

    for attr, what, rev in (("model_dir", "model", getattr(a, "revision", None)), ("base", "base model", None),
                            ("lora", "LoRA adapter", None)):
        if getattr(a, attr, None) is not None:
            setattr(a, attr, resolve_location(getattr(a, attr), revision=rev, what=what))


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console command (not a caller embedding main, e.g. a test session)
        raise_on_signals()
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    threads = None
    if getattr(a, "threads", None):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(a.threads)
    from privaudit.io.progress import configure

    # progress for this command: --quiet, --log-json, else bars on a terminal and lines elsewhere
    configure("quiet" if getattr(a, "quiet", False) else "json" if getattr(a, "log_json", False) else "auto")
    try:
        _resolve_hub_ids(a)
        with warnings.catch_warnings():
            # NaN-related numpy/torch RuntimeWarnings would print multi-line noise; results say what broke
            warnings.simplefilter("ignore", RuntimeWarning)
            return a.func(a)
    except PrivauditError as e:
        _report_error(e, debug=a.debug, text=str(e))
        return e.exit_code
    except Exception as e:  # a bug or an unforeseen failure: exit 3 (runtime), never 1 (the findings code)
        _report_error(e, debug=a.debug, text=f"{e.__class__.__name__}: {e}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("privaudit: interrupted", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        configure("auto")  # a caller embedding main (a test session) gets the default back
        if threads is not None:  # a caller embedding main keeps its own setting
            import torch

            torch.set_num_threads(threads)
