"""From ``results.json`` to what the report shows: every section built defensively.

The templates only lay out what this module prepares, so a missing key never breaks a
render: a section with nothing to show says "not run". Scan results (``kind: scan``),
mitigation results (``kind: mitigation`` with ``before``/``after`` scans, ``controls``,
``sweep``, ``guard``, ``limits``) and a scan compared with a baseline scan all go through
the same pieces; a before/after comparison is one table of every metric with its delta.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from privaudit.reports import svg
from privaudit.reports.images import BLUR_FRACTION, THUMB_PX

LEVELS = ("low", "medium", "high", "critical")

ANSWERS = {
    "critical": "Not safe to release.",
    "high": "Not safe to release without mitigation.",
    "medium": "Release only after review: some leakage was measured.",
    "low": "No leakage found by these tests.",
    "info": "Not determined: no test produced a result.",
    "inconclusive": "Inconclusive: the tests could not judge this model.",
}

TODO = {
    "critical": "Do not publish the weights or a sampling service built on them. Mitigate (for example "
                "“privaudit mitigate --method cpsample”, deduplicating the training data, training for fewer "
                "steps, or differentially private training) and audit again.",
    "high": "Do not publish as is. Mitigate (for example “privaudit mitigate --method cpsample”) and audit again; "
            "the evidence below shows which test fired.",
    "medium": "Review the evidence below with the data owner before release; a larger holdout set gives tighter "
              "intervals; consider mitigation.",
    "low": "Keep this report with the release record and audit again after any further training or fine-tuning. "
           "A low result means these tests, at this budget, found nothing; it is not a proof of privacy.",
    "info": "Check the run: every test was skipped or failed (see the sections below).",
    "inconclusive": "Do not treat this as a pass. A test's evidence was unusable (see why below: e.g. the model "
                    "produced NaN or infinite values); fix the model or data and audit again.",
}

# What to do when the audited model is already the protected one (mitigating it again is not the advice).
MITIGATED_TODO = {
    "critical": "Do not release the protected pipeline: it still leaks by the rules above. Try the stronger settings of "
                "the sweep, deduplicate the training data or retrain with fewer steps, then audit again.",
    "high": "Do not release the protected pipeline as is: it still leaks by the rules above. Choose a stronger "
            "setting (see the sweep) or another mitigation, and audit again.",
    "medium": "Review the evidence below with the data owner before releasing the protected pipeline; a larger "
              "holdout set gives tighter intervals.",
    "low": "Release only the protected pipeline as a service and keep the raw weights private (the protected folder "
           "holds them unchanged); keep this report with the release record and audit again after any change.",
    "info": "Check the run: every test was skipped or failed (see the sections below).",
}

MITIGATED_ANSWERS = {
    "critical": "Not safe to release, even protected.",
    "high": "Not safe to release: the protection is not enough.",
}

THREAT_WORDS = {
    "white-box": "has the model's weights and can compute gradients",
    "gray-box": "can query the model's noise predictions (anyone holding the released weights can)",
    "black-box": "only sees images the model generates",
}

# Every metric's declaration, in one table: label, explanation, format ("pct" rates, "num" plain numbers,
# "count", "ratio"), better ("low", "high", "chance" = near 0.5, None = no direction). A plugin's metric
# not declared here is shown without a judgement (see ``metric_info``).
METRIC_INFO: dict[str, tuple[str, str, str, str | None]] = {
    "auc": ("AUC", "area under the ROC curve: 0.5 is guessing, 1.0 is perfect separation", "num", "chance"),
    "balanced_accuracy": ("balanced accuracy", "at the threshold fitted on the calibration split; 0.5 is guessing",
                          "num", "chance"),
    "copy_fraction": ("copies (calibrated)", "samples closer to a member than all but a fraction q of real unseen "
                      "images are (q = the criterion's false-positive rate)", "pct", "low"),
    "carlini_fraction": ("Carlini ratio <= 1", "nearest-member distance over alpha x mean distance to the k nearest "
                         "members (Carlini et al. 2023)", "pct", "low"),
    "carlini_holdout_fraction": ("Carlini ratio on unseen images", "the same criterion applied to real holdout images: "
                                 "its false-positive rate", "pct", None),
    "ratio_fraction": ("1st/2nd neighbour ratio < 1/3", "nearest member much closer than the second nearest", "pct", "low"),
    "tiled_fraction": ("tiled L2 copies", "partial copies: the closest tile of a 4x4 grid", "pct", "low"),
    "cosine_fraction": ("cosine similarity copies", "similarity to the nearest member above the threshold", "pct", "low"),
    "copied_members": ("distinct members copied", "training images with at least one near-copy among the samples",
                       "count", "low"),
    "membership_auc": ("membership AUC (served)", "strongest gray/black-box attack on the model as served", "num",
                       "chance"),
    "membership_auc_two_sided": ("membership AUC, two-sided", "max(AUC, 1 - AUC) over attacks and timesteps: an "
                                 "attacker who knows the mitigation may flip a score", "num", "low"),
    "white_box_auc": ("white-box AUC", "attacks with the raw weights: a sampling-time mitigation cannot change it",
                      "num", "chance"),
    "black_box_auc": ("black-box AUC", "strongest attack through the sampling interface (images only): what a "
                      "served model faces", "num", "chance"),
    "black_box_auc_two_sided": ("black-box AUC, two-sided", "max(AUC, 1 - AUC) over black-box attacks and their "
                                "settings: the served model's membership headline", "num", "low"),
    "black_box_tpr_at_fpr_0.01": ("black-box TPR @ 1% FPR", "strongest black-box attack's members identified at "
                                  "1% false alarms", "pct", "low"),
    "gray_box_auc": ("gray-box AUC", "strongest attack on the served noise prediction (an access holding the "
                     "weights gives)", "num", "chance"),
    "gray_box_auc_two_sided": ("gate leak (gray-box AUC, two-sided)", "max(AUC, 1 - AUC) over gray-box attacks: "
                               "for a protected model, how far the guard's gate tells members apart from outside",
                               "num", "low"),
    "gray_box_tpr_at_fpr_0.01": ("gray-box TPR @ 1% FPR", "strongest gray-box attack's members identified at 1% "
                                 "false alarms", "pct", "low"),
    "white_box_auc_two_sided": ("white-box AUC, two-sided", "max(AUC, 1 - AUC) over white-box attacks (the raw "
                                "network)", "num", "low"),
    "white_box_tpr_at_fpr_0.01": ("white-box TPR @ 1% FPR", "strongest white-box attack's members identified at "
                                  "1% false alarms", "pct", "low"),
    "sampling_ratio": ("sampling time vs none", "time to generate the same images, relative to no mitigation",
                       "ratio", None),
    "search_recall_at_1": ("search recall@1", "approximate nearest-neighbour search against exact search", "pct", "high"),
    "frechet_distance": ("Frechet distance", "between generated and held-out images in the stated feature space "
                         "(not FID unless the features are Inception's); lower is closer", "num", "low"),
    "frechet_distance_real_baseline": ("Frechet distance, real vs real", "two sets of real images at the same size: "
                                       "the floor a model cannot be expected to beat", "num", None),
    "precision": ("precision", "share of generated images inside the real-image manifold (k-NN estimate)", "pct", "high"),
    "mean_diversity": ("mean diversity", "mean distance between generated images: higher is more varied", "num", "high"),
    "holdout_diversity": ("diversity of real images", "the same measure on real holdout images: a reference", "num",
                          None),
    "unseen_mean_diversity": ("mean diversity, unseen prompts", "diversity of generations for prompts not in the "
                              "training captions: a reference", "num", None),
    "memorised_fraction": ("memorised prompts", "training prompts flagged as memorised", "pct", "low"),
    "own_copy_fraction": ("copies of the prompt's own image", "generations that copy the training image of their "
                          "own caption", "pct", "low"),
    "unseen_copy_fraction": ("copies for unseen prompts", "generations for unseen prompts that copy a training "
                             "image", "pct", "low"),
    "recall": ("recall", "share of real images inside the generated-image manifold (k-NN estimate)", "pct", "high"),
}

MEMBERSHIP_ROWS = ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "balanced_accuracy")

# What attacks fit on the calibration split (attributes ending in "_"), in words.
FITTED_INFO = {"timestep_": "timestep chosen", "sweep_": "calibration AUC at each candidate timestep",
               "classifier_": "classifier", "threshold_": "threshold", "direction_": "score direction"}


def fitted_view(fitted: dict) -> dict[str, str]:
    """Fitted attributes with human labels; a model object's repr becomes its class name, never a dump."""
    out = {}
    for k, v in fitted.items():
        label = FITTED_INFO.get(k, k.rstrip("_").replace("_", " "))
        if isinstance(v, str) and re.match(r"^[A-Za-z_][\w.]*\(", v):
            out[label] = f"a fitted {v.split('(', 1)[0]} (parameters in results.json)"
        elif isinstance(v, dict) and k == "sweep_":
            out[label] = "; ".join(f"t={tk}: {fmt_scalar(tv)}" for tk, tv in list(v.items())[:24])
        else:
            out[label] = fmt_scalar(v)
    return out


# ---------------------------------------------------------------- small helpers

def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, dict) and "value" in v:
        return _num(v["value"])
    return None


def metric(m: Any) -> dict:
    """A Metric dict or a bare number -> {value, ci, reliable, note}."""
    if isinstance(m, dict):
        ci = m.get("ci")
        ci = [_num(c) for c in ci] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
        if ci and None in ci:
            ci = None
        return {"value": _num(m.get("value")), "ci": ci, "reliable": m.get("reliable", True) is not False,
                "note": str(m.get("note") or "")}
    return {"value": _num(m), "ci": None, "reliable": True, "note": ""}


UNIT_FORMATS = {"rate": "pct", "number": "num", "count": "count", "ratio": "ratio", "seconds": "num"}
# metric specs the plugins of the run being rendered declared (``details.metric_specs``): ``build`` fills it
DECLARED: dict[str, dict] = {}


def declared_specs(*runs: Any) -> dict[str, dict]:
    """Every metric spec the plugins of ``runs`` (scan results) declared, by metric name (first wins)."""
    out: dict[str, dict] = {}
    for run in runs:
        for p in _plugins(run) if isinstance(run, dict) else ():
            for k, spec in ((p.get("details") or {}).get("metric_specs") or {}).items():
                if isinstance(spec, dict):
                    out.setdefault(k, spec)
    return out


def metric_info(key: str) -> tuple[str, str, str, str | None]:
    """(label, explanation, format, better): as the plugin declared it (``MetricSpec``, carried in the
    results), else as declared in ``METRIC_INFO`` (results written before plugins declared), or by one of the families of
    keys the core writes (TPR at an FPR level, a criterion's holdout rate, per-plugin copies, diversity and
    AUC in a mitigation summary). An undeclared metric gets a label from its name and no direction:
    the report shows that it changed, never guesses whether that is better."""
    spec = DECLARED.get(key)
    if spec is not None:
        return (str(spec.get("label") or key), str(spec.get("description") or ""),
                UNIT_FORMATS.get(str(spec.get("unit")), "num"), spec.get("better"))
    if key in METRIC_INFO:
        return METRIC_INFO[key]
    if key.startswith("tpr_at_fpr_"):
        f = key.removeprefix("tpr_at_fpr_")
        try:
            pct = f"{float(f) * 100:g}%"
        except ValueError:
            pct = f
        return (f"TPR @ {pct} FPR", f"share of members identified while wrongly flagging {pct} of unseen images",
                "pct", "low")
    if key.endswith("_holdout_fpr") or key.endswith("_holdout_fraction"):
        base = key.removesuffix("_holdout_fpr").removesuffix("_holdout_fraction")
        return (f"{base} criterion on unseen images", "share of real holdout images the criterion flags: its "
                "false-positive rate", "pct", None)
    if key.endswith("_tpr_at_fpr_0.01"):  # a black-box attack's TPR in a mitigation summary, e.g. gen-nn_...
        return (f"{key.removesuffix('_tpr_at_fpr_0.01')}: TPR @ 1% FPR", "members identified while wrongly "
                "flagging 1% of unseen images", "pct", "low")
    for suffix, base in (("_copy_fraction", "copy_fraction"), ("_mean_diversity", "mean_diversity"),
                         ("_auc", "auc")):  # per-plugin values in a mitigation summary, e.g. nn_copy_fraction
        if key.endswith(suffix) and key != base:
            label, help_, kind, better = METRIC_INFO[base]
            return (f"{key.removesuffix(suffix)}: {label}", help_, kind, better)
    kind = "pct" if key.endswith("_fraction") else "num"
    return (key.replace("_", " "), "", kind, None)


def fmt_value(v: float | None, kind: str) -> str:
    if v is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "count":
        return f"{v:.0f}"
    if kind == "ratio":
        return f"x{v:.2f}"
    if abs(v) >= 1000 or (abs(v) < 0.001 and v != 0):
        return f"{v:.3g}"
    return f"{v:.3f}"


def fmt_metric(key: str, m: Any) -> dict:
    """Everything a table cell needs: text, interval text, reliability note."""
    mm = metric(m)
    label, help_, kind, better = metric_info(key)
    ci = f"{fmt_value(mm['ci'][0], kind)} to {fmt_value(mm['ci'][1], kind)}" if mm["ci"] else ""
    return {"key": key, "label": label, "help": help_, "text": fmt_value(mm["value"], kind), "ci": ci,
            "reliable": mm["reliable"], "note": mm["note"], "value": mm["value"], "kind": kind}


def fmt_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if isinstance(v, dict) and "value" in v:
        return fmt_value(_num(v), "num")
    if isinstance(v, (list, tuple)):
        if len(v) <= 12 and all(not isinstance(x, (dict, list)) for x in v):
            return ", ".join(fmt_scalar(x) for x in v)
        return f"{len(v)} values (listed in results.json)"  # never a JSON dump cut mid-word
    if isinstance(v, dict):
        return "; ".join(f"{k}: {fmt_scalar(x) if x is not None else 'none'}" for k, x in list(v.items())[:24])
    return "" if v is None else str(v)


def _plugins(scan: dict | None) -> list[dict]:
    return [p for p in (scan or {}).get("plugins") or [] if isinstance(p, dict)]


def _ok(p: dict) -> bool:
    return p.get("status") == "ok"


def is_quality(p: dict) -> bool:
    specs = (p.get("details") or {}).get("metric_specs") if isinstance(p.get("details"), dict) else None
    if isinstance(specs, dict) and specs:  # declared by the plugin
        return all(isinstance(v, dict) and v.get("section") == "quality" for v in specs.values())
    return p.get("name") == "quality" or any(k in (p.get("metrics") or {}) for k in ("frechet_distance", "precision"))


def _section_of(p: dict) -> str:
    if p.get("kind") == "attack":
        return "membership"
    if p.get("kind") == "detector":
        return "quality" if is_quality(p) else "replication"
    return "other"


def _details(p: dict) -> dict:
    d = p.get("details")
    return d if isinstance(d, dict) else {}


def _short(h: Any, n: int = 12) -> str:
    return str(h)[:n] if h else "n/a"


# ---------------------------------------------------------------- verdict

def _tpr1(p: dict) -> float | None:
    return metric((p.get("metrics") or {}).get("tpr_at_fpr_0.01")).get("value")


def _auc(p: dict) -> float | None:
    return metric((p.get("metrics") or {}).get("auc")).get("value")


def plain_why(scan: dict) -> list[str]:
    """Sentences a non-specialist can follow: the strongest membership attack, each copy detector."""
    out: list[str] = [f"{p.get('name', '?')} could not judge this model: {_details(p)['inconclusive']}."
                      for p in _plugins(scan) if _details(p).get("inconclusive")]
    attacks = [p for p in _plugins(scan) if _ok(p) and _section_of(p) == "membership" and _tpr1(p) is not None]
    if attacks:
        p = max(attacks, key=lambda a: (_tpr1(a) or 0, _auc(a) or 0))
        e = ((scan or {}).get("ensemble") or {}).get("metrics") or {}
        named = (e.get("tpr_at_fpr_0.01") or {}).get("attack") if isinstance(e.get("tpr_at_fpr_0.01"), dict) else None
        p = next((a for a in attacks if a.get("name") == named and _tpr1(a) == _tpr1(p)), p)  # the ensemble's pick
        t, auc = _tpr1(p) or 0.0, _auc(p)
        who = THREAT_WORDS.get(str(p.get("threat_model")), "can query the model")
        n = f" (the strongest of {len(attacks)})" if len(attacks) > 1 else ""
        auc_txt = f"; AUC {auc:.2f}, where 0.50 is guessing" if auc is not None else ""
        if t >= 0.03 or p.get("severity") in ("medium", "high", "critical"):
            out.append(f"Someone who {who} can tell which images were used for training: the {p['name']} attack{n} "
                       f"picks out {t:.0%} of training images while wrongly flagging only 1 in 100 images the model "
                       f"never saw (guessing would pick out 1%{auc_txt}).")
        else:
            out.append(f"Membership: the {p['name']} attack{n} picks out {t:.1%} of training images at 1 false alarm "
                       f"in 100, close to the 1% of guessing{auc_txt}: no evidence that an outsider can tell which "
                       "images were used for training.")
    for p in _plugins(scan):
        if not (_ok(p) and _section_of(p) == "replication"):
            continue
        cf = metric((p.get("metrics") or {}).get("copy_fraction")).get("value")
        if cf is None:
            continue
        d, params = _details(p), p.get("params") or {}
        n = params.get("n_samples")
        q = _num(d.get("false_positive_rate")) or 0.0  # the criterion's false-positive rate (nominal or measured)
        nominal = _num(params.get("quantile")) or q
        mc = d.get("most_copied") or []
        distinct = _num(d.get("copied_members", (p.get("metrics") or {}).get("copied_members")))
        if distinct is None and len(mc) < 20:
            distinct = len(mc)
        distinct = None if distinct is None else int(distinct)
        of_n = f" of {n}" if n else ""
        if cf > max(2 * q, 0.02) or p.get("severity") in ("medium", "high", "critical"):
            # a count of 0 beside a non-zero copy fraction means the detector did not attribute its copies to
            # members (e.g. prompt-level copies): say nothing rather than contradict the fraction
            who = (f"; {distinct} different training images were reproduced" if distinct
                   else "; at least 20 different training images were reproduced" if mc and distinct is None else "")
            out.append(f"The model hands back its training images: {cf:.0%}{of_n} images it generated are near-copies of a "
                       f"training image, closer than {1 - nominal:.0%} of genuinely new images ever come{who}.")
        else:
            out.append(f"Copies: {cf:.1%}{of_n} generated images are as close to a training image as only {q:.1%} of "
                       "genuinely new images are, about what chance gives: no evidence of copying.")
    for c in (scan or {}).get("checks") or []:
        if isinstance(c, dict) and c.get("ok") is False:
            out.append(f"Caution about the data: {c.get('message', '')}")
    return out


def rules_table(stored_text: str | None) -> dict:
    """The documented severity rules: structured from the code, and as recorded by the run."""
    from privaudit.audit import verdict as v

    rows = getattr(v, "RULES", None)
    current = (v.RULES_TEXT or "").strip()
    stored = (stored_text or "").strip()
    return {"rows": rows or [], "text": stored or current, "matches": not stored or stored == current}


def verdict_view(scan: dict) -> dict:
    v = scan.get("verdict") if isinstance(scan.get("verdict"), dict) else {}
    level = str(v.get("level") or "info")
    fired = []
    for p in _plugins(scan):
        for rule in _details(p).get("rules") or []:
            fired.append({"level": p.get("severity", "info"), "plugin": p.get("name", "?"), "text": str(rule),
                          "area": _section_of(p)})
    if not any("rules" in _details(p) for p in _plugins(scan)):  # another writer: use the verdict's own list
        fired = [{"level": level, "plugin": "", "text": str(r), "area": ""} for r in v.get("reasons") or []]
    fired.sort(key=lambda f: -(LEVELS.index(f["level"]) if f["level"] in LEVELS else -1))
    todo = (MITIGATED_TODO if scan.get("mitigated") else TODO)  # a protected model is not told to mitigate
    return {"level": level, "answer": ANSWERS.get(level, ANSWERS["info"]), "todo": todo.get(level, todo["info"]),
            "why": plain_why(scan), "fired": fired, "warnings": [str(w) for w in v.get("warnings") or []],
            "rules": rules_table(v.get("rules")), "scale": LEVELS, "basis": "", "if_weights_leak": None}


def mitigated_verdict_view(r: dict, v: dict) -> dict:
    """A mitigation run's verdict: its own level and rules (both score directions, every headline number)."""
    mv = r["verdict"]
    level = str(mv.get("level") or "info")
    fired = [{"level": str(f.get("level", "info")), "plugin": str(f.get("plugin", "")), "text": str(f.get("text", "")),
              "area": str(f.get("area", ""))} for f in mv.get("fired") or [] if isinstance(f, dict)]
    # rules a one-sided scan cannot see (a reversed score, a headline number) join "Why" when they raised the
    # level of their area above what the scan's own rules found; the "no evidence" sentence of that area goes
    rank = lambda lv: LEVELS.index(lv) if lv in LEVELS else -1
    scan_level = {a: max((rank(str(p.get("severity"))) for p in _plugins(r.get("after")) if _ok(p)
                          and _section_of(p) == a), default=-1) for a in ("membership", "replication")}
    extra = [f for f in fired if (f["plugin"] == "headline" or f["text"].startswith("score reversed"))
             and rank(f["level"]) > scan_level.get(f["area"], -1)][:2]
    why = v["why"]
    if mv.get("basis") == "black-box" and isinstance(r.get("after"), dict):  # the headline reads black-box evidence
        served = [p for p in _plugins(r["after"]) if p.get("kind") == "detector" or p.get("threat_model") == "black-box"]
        why = plain_why({**r["after"], "plugins": served, "ensemble": None})
    if extra:
        areas = {f["area"] for f in extra}
        quiet = {"membership": "Membership: ", "replication": "Copies: "}
        why = [w for w in why if not any(w.startswith(quiet[a]) for a in areas if a in quiet)]
        why = [("The protected model still leaks (headline number): " if f["plugin"] == "headline" else
                f"The protected model still leaks ({f['plugin']} attack): ") + f["text"] + "." for f in extra] + why
    leak = mv.get("if_weights_leak") if isinstance(mv.get("if_weights_leak"), dict) else None
    basis = str(mv.get("basis") or "")
    return {**v, "level": level, "answer": MITIGATED_ANSWERS.get(level, ANSWERS.get(level, ANSWERS["info"])),
            "todo": MITIGATED_TODO.get(level, MITIGATED_TODO["info"]),
            "fired": fired if basis == "black-box" else (fired or v["fired"]), "why": why, "basis": basis,
            "if_weights_leak": ({"level": str(leak.get("level") or "info"), "text": str(leak.get("text") or ""),
                                 "fired": [{"level": str(f.get("level", "info")), "plugin": str(f.get("plugin", "")),
                                            "text": str(f.get("text", ""))} for f in leak.get("fired") or []
                                           if isinstance(f, dict)][:6]} if leak else None)}


# ---------------------------------------------------------------- header

def header_view(r: dict, scan: dict) -> dict:
    t = scan.get("target") if isinstance(scan.get("target"), dict) else {}
    man = r.get("manifest") if isinstance(r.get("manifest"), dict) else scan.get("manifest") or {}
    model = man.get("model") if isinstance(man.get("model"), dict) else {}
    t = {**model, **t}
    weights = t.get("weights_sha256") or {}
    data = scan.get("data") or man.get("data") or {}
    data_rows = [{"name": k, "path": d.get("path", ""), "count": d.get("count"), "sha256": str(d.get("sha256") or ""),
                  "shape": "x".join(str(s) for s in d.get("shape") or [])}
                 for k, d in data.items() if isinstance(d, dict)]
    res = t.get("resolution")
    return {
        "model_path": (t.get("path") or "unknown model") + (f" + LoRA {t['adapter']}" if t.get("adapter") else "")
                      + (f" (base model {t['base']})" if t.get("base") and not t.get("adapter") else ""),
        "pipeline": t.get("pipeline_class") or "n/a",
        "resolution": f"{res}x{res}" if isinstance(res, int) else fmt_scalar(res) or "n/a",
        "channels": t.get("channels"), "scheduler": t.get("schedule") or t.get("scheduler_class") or "n/a",
        "timesteps": t.get("num_train_timesteps"),
        "weights": [{"file": f, "sha256": h, "short": _short(h),
                     "part": Path(f).parts[0] if len(weights) > 1 and Path(f).parts else ""}
                    for f, h in weights.items()],
        "data": data_rows, "created": man.get("created", "unknown date"),
        "run_version": (man.get("versions") or {}).get("privaudit", "unknown"), "device": man.get("device", ""),
    }


# ---------------------------------------------------------------- membership

def _hist_series(h: dict) -> tuple[list[float], list[dict]] | None:
    """A histogram dict {"edges", name: counts, ...} -> (edges, series) or None when malformed."""
    if not isinstance(h, dict) or not isinstance(h.get("edges"), list) or len(h["edges"]) < 2:
        return None
    n = len(h["edges"]) - 1
    series = [{"label": str(k), "counts": v} for k, v in h.items()
              if k != "edges" and isinstance(v, list) and len(v) == n and all(isinstance(c, (int, float)) for c in v)]
    return (h["edges"], series) if series else None


def membership_view(scan: dict) -> dict:
    attacks = [p for p in _plugins(scan) if _section_of(p) == "membership"]
    ok = sorted([p for p in attacks if _ok(p)], key=lambda a: -((_tpr1(a) or 0) + 1e-3 * (_auc(a) or 0)))
    rows, curves, hists, n_holdout = [], [], [], None
    for p in ok:
        ms = p.get("metrics") or {}
        keys = [k for k in MEMBERSHIP_ROWS if k in ms] + [k for k in ms if k not in MEMBERSHIP_ROWS]
        d = _details(p)
        split = d.get("split") or {}
        ev = split.get("evaluation") if isinstance(split.get("evaluation"), list) else None
        if ev and len(ev) == 2:
            n_holdout = max(n_holdout or 0, int(ev[1]))
        fitted = d.get("fitted") if isinstance(d.get("fitted"), dict) else {}
        rows.append({"name": p.get("name"), "id": p.get("id", ""), "threat_model": p.get("threat_model", ""),
                     "queries": p.get("queries_per_image"), "severity": p.get("severity", "info"),
                     "metrics": [fmt_metric(k, ms[k]) for k in keys], "finding": p.get("finding", ""),
                     "rules": d.get("rules") or [], "split": ev, "seconds": p.get("seconds"),
                     "fitted": fitted_view(fitted),
                     "references": p.get("references") or [], "params": p.get("params") or {}})
        roc = d.get("roc")
        if isinstance(roc, dict) and isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list):
            auc = _auc(p)
            curves.append({"label": f"{p.get('name')} (AUC {auc:.2f})" if auc is not None else str(p.get("name")),
                           "fpr": roc["fpr"], "tpr": roc["tpr"]})
        hs = _hist_series(d.get("histogram"))
        if hs:
            edges, series = hs
            names = {"members": "members (trained on)", "holdout": "holdout (never seen)"}
            for s in series:
                s["label"] = names.get(s["label"], s["label"])
            thr = _num(d.get("threshold"))
            markers = [{"x": thr, "label": "threshold"}] if thr is not None and edges[0] <= thr <= edges[-1] else []
            hists.append({"name": p.get("name"), "svg": svg.histogram(
                edges, series, title=f"{p.get('name')}: attack scores, members vs holdout",
                xlabel="attack score (higher = more member-like)", markers=markers,
                desc=f"Distribution of the {p.get('name')} attack's scores on evaluation members and holdout images; "
                     "well separated distributions mean the attack tells them apart.")})
    cols = list(dict.fromkeys(m["key"] for row in rows for m in row["metrics"]))
    for row in rows:  # align every row on the same columns; a metric one attack lacks is a blank cell
        have = {m["key"]: m for m in row["metrics"]}
        row["metrics"] = [have.get(k) for k in cols]
    ensemble = scan.get("ensemble")
    return {"run": bool(attacks), "rows": rows, "cols": [metric_info(k)[0] for k in cols], "skipped": _not_ok(attacks), "ensemble": ensemble_view(ensemble),
            "roc": svg.roc_loglog(curves, n_holdout=n_holdout) if curves else None, "hists": hists,
            "n_holdout_eval": n_holdout, "checks": checks_view(scan), "epsilon": epsilon_view(attacks, scan.get("epsilon")),
            "calibration": calibration_view(scan.get("base_calibration"))}


def epsilon_view(attacks: list[dict], summary: Any) -> dict | None:
    """eps_hat per attack (privaudit.audit.epsilon) with its label: a DP lower bound or distinguishability."""
    rows = []
    for p in attacks:
        e = _details(p).get("epsilon")
        if not _ok(p) or not isinstance(e, dict) or _num(e.get("value")) is None:
            continue
        counts = e.get("counts") if isinstance(e.get("counts"), list) and len(e["counts"]) == 4 else None
        rows.append({"name": p.get("name"), "value": f"{_num(e.get('value')):.2f}",
                     "tpr": fmt_scalar(e.get("tpr_lower")), "fpr": fmt_scalar(e.get("fpr_upper")),
                     "counts": f"{counts[0]}/{counts[1]} members, {counts[2]}/{counts[3]} holdout" if counts else "",
                     "label": str(e.get("label") or "")})
    if not rows:
        return None
    s = summary if isinstance(summary, dict) else {}
    return {"rows": rows, "delta": fmt_scalar(s.get("delta")), "confidence": fmt_scalar(s.get("confidence")),
            "dp": bool(s.get("randomized_membership")), "label": str(s.get("label") or rows[0]["label"]),
            "best": f"{_num(s.get('value')):.2f}" if _num(s.get("value")) is not None else None,
            "attack": str(s.get("attack") or ""), "note": str(s.get("note") or "")}


def calibration_view(c: Any) -> dict | None:
    """Raw vs base-calibrated attacks side by side (a fine-tune audited against its base model)."""
    if not isinstance(c, dict) or not isinstance(c.get("pairs"), list):
        return None
    rows = [{"attack": str(r.get("attack")), "raw_auc": fmt_scalar(r.get("raw_auc")),
             "cal_auc": fmt_scalar(r.get("calibrated_auc")), "raw_tpr": fmt_scalar(r.get("raw_tpr_at_fpr_0.01")),
             "cal_tpr": fmt_scalar(r.get("calibrated_tpr_at_fpr_0.01")), "base_auc": fmt_scalar(r.get("base_auc"))}
            for r in c["pairs"] if isinstance(r, dict)]
    return {"rows": rows, "base": str(c.get("base") or ""), "note": str(c.get("note") or "")}


def ensemble_view(e: Any) -> dict | None:
    """The attack suite's worst-case view, rendered generically: metrics, per-level rows, or key/values."""
    if not isinstance(e, dict) or not e:
        return None
    out: dict = {"note": str(e.get("description") or e.get("note") or ""), "metrics": [], "rows": [], "kv": [],
                 "strongest": []}
    ms = e.get("metrics")
    if isinstance(ms, dict) and all(isinstance(m, dict) and "attack" in m for m in ms.values()):
        # privaudit.audit.ensemble: the strongest attack per metric, with its own interval and cost
        for k, m in ms.items():
            tied = [str(t) for t in m.get("tied") or [] if t != m.get("attack")]
            out["strongest"].append({**fmt_metric(k, m), "attack": str(m.get("attack")),
                                     "threat_model": str(m.get("threat_model") or ""),
                                     "queries": m.get("queries_per_image"), "tied": tied})
    elif isinstance(ms, dict):
        out["metrics"] = [fmt_metric(k, m) for k, m in ms.items()]
    for k, v in e.items():
        if k in ("metrics", "description", "note"):
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(c for x in v for c in x))
            out["rows"].append({"name": k, "cols": cols, "data": [[fmt_scalar(x.get(c)) for c in cols] for x in v]})
        elif isinstance(v, dict) and all(isinstance(x, dict) and "value" in x for x in v.values()):
            out["metrics"] += [fmt_metric(kk, m) | {"label": f"{k}: {metric_info(kk)[0]}"} for kk, m in v.items()]
        else:
            out["kv"].append((k, fmt_scalar(v)))
    return out


def _not_ok(plugins: list[dict]) -> list[dict]:
    return [{"name": p.get("name"), "status": p.get("status", "?"), "reason": p.get("reason", "")}
            for p in plugins if not _ok(p)]


def checks_view(scan: dict) -> list[dict]:
    out = []
    for c in scan.get("checks") or []:
        if not isinstance(c, dict):
            continue
        d = c.get("details") if isinstance(c.get("details"), dict) else {}
        extra = []
        if "auc" in d:
            extra.append(f"blind AUC {fmt_metric('auc', d['auc'])['text']}")
        if "model" in d:
            extra.append(str(d["model"]))
        if d.get("count"):
            pairs = d.get("pairs") or []
            extra.append("pairs: " + "; ".join(" / ".join(str(x) for x in pr) for pr in pairs[:10])
                         + (" ..." if len(pairs) > 10 else ""))
        out.append({"name": str(c.get("name", "")).replace("_", " "), "ok": c.get("ok") is not False,
                    "message": c.get("message", ""), "extra": extra})
    return out


# ---------------------------------------------------------------- replication and quality

ROLE_NAMES = {"sample": "generated", "generated": "generated", "member": "training", "diff": "difference"}
SERIES_NAMES = {"samples": "generated samples", "holdout": "holdout (real, unseen)",
                "background": "member background (nearest other member)", "members": "member background"}


def _safe_src(v: Any) -> str | None:
    """Only images the redaction step re-encoded reach an ``src``: never a URL from the results."""
    return v if isinstance(v, str) and v.startswith("data:image/png;base64,") else None


def _pairs(d: dict) -> list[dict]:
    out = []
    for p in d.get("pairs") or []:
        if not isinstance(p, dict):
            continue
        imgs = []
        for key, value in p.items():
            if key.endswith("_png") or key.endswith("_image"):
                role = key.rsplit("_", 1)[0]
                imgs.append({"role": role, "name": ROLE_NAMES.get(role, role.replace("_", " ")), "src": _safe_src(value)})
        crit = p.get("criteria") if isinstance(p.get("criteria"), dict) else {}
        out.append({"sample": p.get("sample"), "member_id": p.get("member_id", ""), "copy": p.get("copy"),
                    "distance": _num(p.get("distance")), "similarity": _num(p.get("similarity")), "images": imgs,
                    "flagged_by": [str(k) for k, v in crit.items() if v is True],
                    "duplicated": bool(p.get("member_duplicated"))})
    return out


def _criteria(p: dict, d: dict) -> tuple[list[dict], set[str]]:
    """Rows of the criteria table from ``details.criteria`` summaries (and their metrics), and the metric
    names they cover; empty when the detector does not describe its criteria."""
    rows, covered = [], set()
    ms = p.get("metrics") or {}
    for i, c in enumerate([c for c in d.get("criteria") or [] if isinstance(c, dict)]):
        metric_name = str(c.get("metric") or "")
        base = metric_name.removesuffix("_fraction")
        frac = ms.get(metric_name) if metric_name in ms else {"value": c.get("fraction"), "ci": c.get("ci")}
        fpr = ms.get(f"{base}_holdout_fpr") or {"value": c.get("holdout_fpr"), "ci": c.get("holdout_fpr_ci")}
        covered |= {metric_name, f"{base}_holdout_fpr"}
        f, h = fmt_metric("x_fraction", frac), fmt_metric("x_fraction", fpr)
        rows.append({"name": str(c.get("name", "")), "rule": str(c.get("rule", "")), "headline": i == 0,
                     "calibrated": bool(c.get("calibrated")), "reference": str(c.get("reference") or ""),
                     "fraction": f, "holdout": h, "flagged": c.get("flagged"), "n": c.get("n"),
                     "holdout_flagged": c.get("holdout_flagged"), "holdout_n": c.get("holdout_n"),
                     "note": str(c.get("note") or "")})
    return rows, covered


def _replication_plots(p: dict, d: dict, criteria: list[dict]) -> tuple[list, list[dict]]:
    """Histograms found in ``details`` (any {"edges", series...} dict) and percentile tables."""
    plots, tables, seen = [], [], []
    thr = _num(d.get("threshold"))
    cos_thr = next((_num(c.get("threshold")) for c in d.get("criteria") or []
                    if isinstance(c, dict) and c.get("name") == "cosine"), None)
    for key, h in d.items():
        hs = _hist_series(h)
        if not hs:
            continue
        edges, series = hs
        # a histogram whose series another one already drew (same edges, same counts) adds nothing
        if any(edges == e and all(any(s["counts"] == t["counts"] for t in ss) for s in series) for e, ss in seen):
            continue
        seen.append((edges, series))
        xlabel = str(h.get("x") or key.replace("_", " "))
        space = str(d.get("feature_space") or d.get("features") or "")
        if "distance" in xlabel and space and space not in xlabel:  # a distance without its space has no unit
            xlabel += f" (L2, {space} features)"
        for s_ in series:
            s_["label"] = SERIES_NAMES.get(s_["label"], s_["label"] if s_["label"] != "counts" else xlabel)
        markers = []
        if "similar" in key + xlabel and cos_thr is not None and edges[0] <= cos_thr <= edges[-1]:
            markers.append({"x": cos_thr, "label": "cosine threshold"})
        elif "distance" in key + xlabel and thr is not None and edges[0] <= thr <= edges[-1]:
            markers.append({"x": thr, "label": "copy threshold"})
        direction = ("further right = closer to a training image" if "similar" in key + xlabel
                     else "further left = closer to a training image" if "distance" in key + xlabel else "")
        plots.append(svg.histogram(
            edges, series, title=f"{p.get('name')}: {xlabel}", xlabel=xlabel, markers=markers, width=560, height=290,
            desc=f"Histogram of {xlabel} for " + ", ".join(s_["label"] for s_ in series)
                 + (f"; {direction}." if direction else ".")))
    for key, v in d.items():
        if (key.endswith("_percentiles") or key == "nearest_distance") and isinstance(v, dict) \
                and isinstance(v.get("percentiles"), list):
            ps = v["percentiles"]
            rows = [{"label": SERIES_NAMES.get(k, k.replace("_", " ")), "cells": [fmt_scalar(_num(x)) for x in vals]}
                    for k, vals in v.items() if k != "percentiles" and isinstance(vals, list) and len(vals) == len(ps)]
            if rows:
                tables.append({"name": key.removesuffix("_percentiles").replace("_", " "),
                               "cols": [f"p{x:g}" if isinstance(x, (int, float)) else str(x) for x in ps], "rows": rows})
                if key == "nearest_distance" and not plots:  # older results: no histograms, draw the percentiles
                    strip = [{"label": SERIES_NAMES.get(k, k), "values": vals} for k, vals in v.items()
                             if k != "percentiles" and isinstance(vals, list) and len(vals) == len(ps)]
                    plots.append(svg.percentile_strip(
                        strip, ps, title=f"{p.get('name')}: distance to the nearest member",
                        xlabel=f"distance to the nearest member ({d.get('features', 'feature')} space)",
                        markers=[{"x": thr, "label": "copy threshold"}] if thr is not None else []))
    return plots, tables


def replication_view(scan: dict, *, redact: str) -> dict:
    dets = [p for p in _plugins(scan) if _section_of(p) == "replication"]
    out = []
    for p in [p for p in dets if _ok(p)]:
        d = _details(p)
        ms = p.get("metrics") or {}
        q = _num(d.get("false_positive_rate"))
        criteria, covered = _criteria(p, d)
        metrics = []
        for k, m in ms.items():
            if k in covered:
                continue
            fm = fmt_metric(k, m)
            if k == "copy_fraction" and q is not None:
                fm["help"] = (f"samples closer to a member than {1 - q:.0%} of real unseen images are "
                              f"(false-positive rate about {q:.0%} by construction)")
            metrics.append(fm)
        plots, pct_tables = _replication_plots(p, d, criteria)
        dup = d.get("member_duplicates") if isinstance(d.get("member_duplicates"), dict) else None
        skip = (*KNOWN_LISTS, "nearest_distance", "member_duplicates")
        extra = {k: fmt_scalar(v) for k, v in d.items()
                 if k not in skip and not k.endswith("_percentiles") and _hist_series(v) is None and k != "background_hist"}
        most = []
        for m in d.get("most_copied") or []:
            if isinstance(m, dict):
                src = _safe_src(next((v for k, v in m.items() if k.endswith("_png")), None))
                most.append({"member_id": m.get("member_id", ""), "count": m.get("count"), "src": src,
                             "duplicated": bool(m.get("member_duplicated"))})
        out.append({"name": p.get("name"), "id": p.get("id", ""), "threat_model": p.get("threat_model", ""),
                    "severity": p.get("severity", "info"), "finding": p.get("finding", ""), "metrics": metrics,
                    "criteria": criteria, "examples": _examples(d), "lists": _lists(d), "feature_space": str(d.get("feature_space") or d.get("features") or ""),
                    "params": p.get("params") or {}, "plots": plots, "pct_tables": pct_tables, "pairs": _pairs(d),
                    "most_copied": most, "duplicates": _duplicates_view(dup), "extra": extra,
                    "rules": d.get("rules") or [], "queries": p.get("queries_per_image"), "seconds": p.get("seconds"),
                    "references": p.get("references") or []})
    return {"run": bool(dets), "detectors": out, "skipped": _not_ok(dets), "redact": redact}


KNOWN_LISTS = ("pairs", "most_copied", "criteria", "examples", "rules")


def _examples(d: dict) -> list[dict]:
    """``details.examples`` (e.g. prompt-level copies): text fields plus every image (one or a list per key)."""
    out = []
    for e in d.get("examples") or []:
        if not isinstance(e, dict):
            continue
        images, fields = [], []
        for k, v in e.items():
            if k.endswith("_png"):
                role = k.removesuffix("_png").replace("_", " ")
                for src in v if isinstance(v, list) else [v]:
                    images.append({"role": role, "src": _safe_src(src)})
            elif not isinstance(v, (dict, list)):
                fields.append((k.replace("_", " "), fmt_scalar(v)))
        out.append({"fields": fields, "images": images})
    return out


def _lists(d: dict) -> list[dict]:
    """Other lists of records a detector reports (e.g. top-scoring prompts), as tables of their scalar fields."""
    out = []
    for k, v in d.items():
        if k in KNOWN_LISTS or not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            continue
        rows = [{c: x for c, x in r.items() if not c.endswith("_png") and not isinstance(x, (dict, list))} for r in v[:20]]
        cols = list(dict.fromkeys(c for r in rows for c in r))
        if cols:
            out.append({"name": k.replace("_", " "), "cols": cols, "rows": [[fmt_scalar(r.get(c)) for c in cols] for r in rows],
                        "more": max(0, len(v) - 20)})
    return out


def _duplicates_view(dup: dict | None) -> dict | None:
    if not dup:
        return None
    groups = [" = ".join(str(x) for x in g) for g in dup.get("exact_groups") or [] if isinstance(g, list)]
    near = [f"{n.get('member_id')} ~ {n.get('nearest_member_id')} (distance {fmt_scalar(_num(n.get('distance')))})"
            for n in dup.get("near") or [] if isinstance(n, dict)]
    return {"n_exact": dup.get("n_exact", 0), "n_near": dup.get("n_near", 0), "rule": str(dup.get("rule") or ""),
            "groups": groups, "near": near, "checked": dup.get("checked_near"),
            "expected": dup.get("near_expected_by_chance")}


def quality_view(scan: dict) -> dict:
    qs = [p for p in _plugins(scan) if _section_of(p) == "quality"]
    rows = [{"name": p.get("name"), "metrics": [fmt_metric(k, m) for k, m in (p.get("metrics") or {}).items()],
             "finding": p.get("finding", ""),
             "extra": {k: fmt_scalar(v) for k, v in _details(p).items() if not isinstance(v, (list, dict)) and k != "rules"}}
            for p in qs if _ok(p)]
    return {"run": bool(qs), "rows": rows, "skipped": _not_ok(qs)}


def other_view(scan: dict) -> list[dict]:
    return [{"name": p.get("name"), "kind": p.get("kind"), "status": p.get("status"), "reason": p.get("reason", ""),
             "finding": p.get("finding", ""),
             "metrics": [fmt_metric(k, m) for k, m in (p.get("metrics") or {}).items()]}
            for p in _plugins(scan) if _section_of(p) == "other"]


# ---------------------------------------------------------------- comparison

def _judge(key: str, area: str, a: float | None, b: float | None) -> tuple[str, str]:
    """(word, css class) for a change from a to b, with the direction that means 'better'."""
    if a is None or b is None:
        return "", ""
    if abs(b - a) < 1e-9:
        return "same", "same"
    better = metric_info(key)[3]  # declared, never guessed from the name
    if better == "chance":
        good = abs(b - 0.5) < abs(a - 0.5)
    elif better == "low":
        good = b < a
    elif better == "high":
        good = b > a
    else:
        return "changed", "same"
    arrow = " up" if b > a else " down"  # the arrow shows which way the number moved
    return ("better", "better" + arrow) if good else ("worse", "worse" + arrow)


def comparison_view(before: dict, after: dict, *, labels: tuple[str, str]) -> dict:
    """Every metric of every plugin in either run, side by side with its delta."""
    rows = []
    bp = {p.get("name"): p for p in _plugins(before)}
    ap = {p.get("name"): p for p in _plugins(after)}
    for name in list(dict.fromkeys([*bp, *ap])):
        b, a = bp.get(name, {}), ap.get(name, {})
        area = _section_of(a or b)
        keys = list(dict.fromkeys([*(b.get("metrics") or {}), *(a.get("metrics") or {})]))
        if not keys:
            rows.append({"plugin": name, "area": area, "label": "status", "before": b.get("status", "absent"),
                         "after": a.get("status", "absent"), "delta": "", "word": "", "cls": "", "overlap": False})
        for k in keys:
            mb, ma = (b.get("metrics") or {}).get(k), (a.get("metrics") or {}).get(k)
            fb, fa = fmt_metric(k, mb), fmt_metric(k, ma)
            vb, va = fb["value"], fa["value"]
            kind = fb["kind"]
            delta = ""
            if vb is not None and va is not None:
                dv = va - vb
                delta = (f"{dv * 100:+.1f} pts" if kind == "pct" else f"{dv:+.0f}" if kind == "count" else f"{dv:+.3f}")
            word, cls = _judge(k, area, vb, va)
            cb, ca = metric(mb)["ci"], metric(ma)["ci"]
            overlap = bool(cb and ca and cb[0] <= ca[1] and ca[0] <= cb[1]) and word in ("better", "worse")
            rows.append({"plugin": name, "area": area, "label": fb["label"] if mb is not None else fa["label"],
                         "before": fb["text"] + (f" ({fb['ci']})" if fb["ci"] else "") if mb is not None else "not run",
                         "after": fa["text"] + (f" ({fa['ci']})" if fa["ci"] else "") if ma is not None else "not run",
                         "delta": delta, "word": word, "cls": cls, "overlap": overlap})
    lb = str((before.get("verdict") or {}).get("level", "info"))
    la = str((after.get("verdict") or {}).get("level", "info"))
    notes = []
    if _weights(before) and _weights(after) and _weights(before) != _weights(after):
        notes.append("The two runs audited different model weights (sha256 differs).")
    for name in ("members", "holdout"):
        hb, ha = ((before.get("data") or {}).get(name) or {}).get("sha256"), ((after.get("data") or {}).get(name) or {}).get("sha256")
        if hb and ha and hb != ha:
            notes.append(f"The {name} data differ between the runs (sha256 {_short(hb)} vs {_short(ha)}): "
                         "numbers are not directly comparable.")
    return {"labels": labels, "before_level": lb, "after_level": la, "rows": rows, "notes": notes,
            "before_created": ((before.get("manifest") or {}).get("created")) or "",
            "after_created": ((after.get("manifest") or {}).get("created")) or ""}


def _weights(scan: dict) -> dict:
    return (scan.get("target") or {}).get("weights_sha256") or {}


# ---------------------------------------------------------------- mitigation

def _flat(entry: dict) -> dict[str, float]:
    """Numeric values of a sweep/control entry, its ``metrics`` folded in (Metric dicts -> value)."""
    out: dict[str, float] = {}
    for k, v in entry.items():
        if k == "metrics" and isinstance(v, dict):
            for mk, mv in v.items():
                n = _num(mv)
                if n is not None:
                    out[mk] = n
        elif not isinstance(v, bool):
            n = _num(v)
            if n is not None:
                out[k] = n
    return out


PRIVACY_KEYS = ("copy_fraction", "membership_auc_two_sided", "membership_auc", "auc", "loss_auc")
QUALITY_KEYS = ("frechet_distance", "fd", "precision", "recall", "quality")


def _pick(keys: list[str], preferred: tuple[str, ...], contains: tuple[str, ...]) -> str | None:
    for k in preferred:
        if k in keys:
            return k
    return next((k for k in keys for c in contains if c in k), None)


def _table(entries: list[dict], *, skip: tuple[str, ...] = ()) -> dict:
    """A list of dicts -> columns + formatted cells; ``metrics`` sub-dicts become columns."""
    cols: list[str] = []
    rows = []
    for e in entries:
        flat: dict[str, Any] = {}
        for k, v in e.items():
            if k in skip:
                continue
            if k == "metrics" and isinstance(v, dict):
                flat.update(v)
            else:
                flat[k] = v
        cols += [c for c in flat if c not in cols]
        rows.append(flat)
    known = lambda c: c in METRIC_INFO or c.startswith("tpr_at_fpr_") or c.endswith(("_auc", "_fraction"))
    labels = {c: metric_info(c)[0] if known(c) else c.replace("_", " ") for c in cols}
    cells = []
    for r in rows:
        line = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, dict) and "value" in v:
                fm = fmt_metric(c, v)
                line.append(fm["text"] + (f" ({fm['ci']})" if fm["ci"] else ""))
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and known(c):
                line.append(fmt_metric(c, v)["text"])
            else:
                line.append(fmt_scalar(v))
        cells.append(line)
    return {"cols": [labels[c] for c in cols], "rows": cells}


def _worst(scan: dict, key: str, area: str) -> dict | None:
    """The strongest plugin's value of ``key`` in ``area`` (highest = most leakage, lowest for quality)."""
    vals = [(metric((p.get("metrics") or {}).get(key))["value"], p) for p in _plugins(scan)
            if _ok(p) and _section_of(p) == area and key in (p.get("metrics") or {})]
    vals = [(v, p) for v, p in vals if v is not None]
    if not vals:
        return None
    v, p = max(vals, key=lambda t: t[0])
    return {"value": v, "plugin": p.get("name")}


def headline_deltas(before: dict, after: dict) -> list[dict]:
    """The few numbers a reviewer wants first: copies, the strongest attack, quality; before -> after."""
    out = []
    for key, area, label in (("copy_fraction", "replication", "generated images that copy a training image"),
                             ("tpr_at_fpr_0.01", "membership", "training images identified at 1% false alarms "
                                                               "(strongest attack)"),
                             ("auc", "membership", "membership AUC (strongest attack; 0.5 is guessing)"),
                             ("frechet_distance", "quality", "Frechet distance to real images (lower is better)")):
        b, a = _worst(before, key, area), _worst(after, key, area)
        if b is None and a is None:
            continue
        kind = metric_info(key)[2]
        word, cls = _judge(key, area, b and b["value"], a and a["value"])
        out.append({"key": key, "label": label, "before": fmt_value(b and b["value"], kind),
                    "after": fmt_value(a and a["value"], kind), "word": word, "cls": cls,
                    "values": (b and b["value"], a and a["value"])})
    return out


def _setting_label(s: dict, i: int) -> str:
    if s.get("name"):
        return str(s["name"])
    return ", ".join(f"{k}={fmt_scalar(s[k])}" for k in ("alpha", "scale", "s") if k in s) or f"setting {i}"


def tradeoff_plots(sweep: list[dict], controls: list[dict]) -> list:
    """One plot per privacy measure the sweep reports (copies; membership AUC), against quality."""
    flats, cflats = [_flat(s) for s in sweep], [_flat(c) for c in controls]
    keys = list(dict.fromkeys(k for f in flats + cflats for k in f))
    x = _pick(keys, QUALITY_KEYS, ("frechet", "quality", "precision", "recall"))
    if x is None:
        return []
    # a measure the sweep itself reports (else the controls'), so the plot shows the settings
    core = flats or cflats
    have = lambda k: all(k in f for f in core)
    ys = [k for k in ("copy_fraction",) if have(k)]
    ys += [k for k in ("membership_auc_two_sided", "membership_auc") if have(k)][:1]
    if not ys:
        y = _pick(keys, PRIVACY_KEYS, ("copy", "auc"))
        ys = [y] if y else []
    plots = []
    for y in ys:
        pts = [{"x": f.get(x), "y": f.get(y), "label": _setting_label(s, i), "number": i,
                "series": str(s.get("family") or "sweep"), "recommended": bool(s.get("recommended"))}
               for i, (s, f) in enumerate(zip(sweep, flats), 1)]
        pts += [{"x": f.get(x), "y": f.get(y), "label": str(c.get("name", "control")), "series": None}
                for c, f in zip(controls, cflats)]
        plot = svg.tradeoff(pts, xlabel=metric_info(x)[0], ylabel=metric_info(y)[0],
                            title=f"Trade-off: {metric_info(y)[0]} against {metric_info(x)[0]}")
        if plot:
            plots.append(plot)
    return plots


CONTROL_ORDER = ("copy_fraction", "black_box_auc", "black_box_auc_two_sided", "black_box_tpr_at_fpr_0.01",
                 "gray_box_auc_two_sided", "membership_auc", "membership_auc_two_sided", "white_box_auc",
                 "frechet_distance", "precision", "recall")

# Threat models, as a mitigation report groups them: who the attacker is, and how a protected model answers.
THREAT_ROWS = (
    ("black-box", "black_box", "gets only images from the served model (sampling / variation API)",
     "the served pipeline, guard included: the headline for a protected model"),
    ("gray-box", "gray_box", "queries noise predictions at chosen timesteps (holding the weights allows it)",
     "reads through the guard: the protected noise prediction, whose gate can itself leak (the gate leak)"),
    ("white-box", "white_box", "holds the raw network and its gradients",
     "reads past the guard: the raw weights a sampling-time mitigation leaves unchanged"),
)


def threat_table(controls: list[dict]) -> dict | None:
    """Membership evidence grouped by threat model, before (no mitigation) and after (protected)."""
    if len(controls) < 2:
        return None
    m0, m1 = ((c.get("metrics") or {}) for c in controls[:2])
    rows = []
    for tm, key, who, reads in THREAT_ROWS:
        auc_key = "white_box_auc" if key == "white_box" else f"{key}_auc"
        vals = [m0.get(auc_key), m1.get(auc_key), m0.get(f"{key}_auc_two_sided"), m1.get(f"{key}_auc_two_sided"),
                m0.get(f"{key}_tpr_at_fpr_0.01"), m1.get(f"{key}_tpr_at_fpr_0.01")]
        if all(v is None for v in vals):
            rows.append([tm, who, "not run", "", "", reads])
            continue
        f = lambda v, kind="num": fmt_value(_num(v), kind) if v is not None else "n/a"
        rows.append([tm, who, f"{f(vals[0])} → {f(vals[1])}", f"{f(vals[2])} → {f(vals[3])}",
                     f"{f(vals[4], 'pct')} → {f(vals[5], 'pct')}", reads])
    return {"cols": ["threat model", "the attacker", "AUC before → after", "two-sided AUC before → after",
                     "TPR @ 1% FPR before → after", "what the protected model shows this attacker"], "rows": rows}


def controls_table(controls: list[dict]) -> dict:
    """One row per way of serving the model: name and description, then the headline numbers, then the rest."""
    keys = list(dict.fromkeys(k for c in controls for k in (c.get("metrics") or {})))
    cols = [k for k in CONTROL_ORDER if k in keys] + [k for k in keys if k not in CONTROL_ORDER]
    rows = []
    for c in controls:
        ms = c.get("metrics") or {}
        cells = []
        for k in cols:
            fm = fmt_metric(k, ms[k]) if k in ms else None
            cells.append("" if fm is None else fm["text"] + (f" ({fm['ci']})" if fm["ci"] else ""))
        time_ = [fmt_value(_num(c.get("sampling_seconds")), "num") + " s" if _num(c.get("sampling_seconds")) is not None else "",
                 fmt_value(_num(c.get("sampling_ratio")), "ratio") if _num(c.get("sampling_ratio")) is not None else ""]
        rows.append({"name": str(c.get("name", "")), "description": str(c.get("description") or ""),
                     "cells": cells, "time": " ".join(t for t in time_ if t),
                     "verdict": str(c.get("verdict") or ""), "leak": str(c.get("verdict_if_weights_leak") or "")})
    return {"cols": [metric_info(k)[0] for k in cols], "rows": rows}


def matched_view(m: dict) -> dict:
    """The placebo comparison at matched quality: its reading in words and the compared points as a table."""
    q = str(m.get("quality_metric") or "quality")
    ql = metric_info(q)[0]
    overlap = m.get("overlap") if isinstance(m.get("overlap"), list) else []
    kv = {"quality measure": ql, "quality range compared": " to ".join(fmt_scalar(x) for x in overlap) or "n/a",
          "reading": str(m.get("verdict") or "n/a"), "beats placebo": fmt_scalar(m.get("beats_placebo")),
          "mean copy-fraction advantage over the placebo": fmt_scalar(m.get("mean_copy_advantage")),
          "tolerance": fmt_scalar(m.get("tolerance"))}
    points = [p for p in m.get("points") or [] if isinstance(p, dict)]
    table = {"cols": [ql, "copies, mitigation", "copies, placebo"],
             "rows": [[fmt_scalar(p.get("quality")), fmt_value(_num(p.get("mitigation_copy_fraction")), "pct"),
                       fmt_value(_num(p.get("placebo_copy_fraction")), "pct")] for p in points]}
    return {"kv": kv, "table": table if points else None, "note": str(m.get("note") or "")}


def mitigation_view(r: dict) -> dict:
    before = r.get("before") if isinstance(r.get("before"), dict) else {}
    after = r.get("after") if isinstance(r.get("after"), dict) else {}
    controls = [c for c in r.get("controls") or [] if isinstance(c, dict)]
    sweep = [s for s in r.get("sweep") or [] if isinstance(s, dict)]
    details = r.get("details", r.get("guard"))  # "guard": results written by privaudit 0.1
    guard = details if isinstance(details, dict) else {}
    recommended = next(((i, s) for i, s in enumerate(sweep, 1) if s.get("recommended")), None)
    sweep_table = _table(sweep)
    if sweep:
        sweep_table["cols"] = ["#"] + sweep_table["cols"]
        sweep_table["rows"] = [[str(i)] + row for i, row in enumerate(sweep_table["rows"], 1)]
    timing = next((c.get("timing") for c in controls if isinstance(c.get("timing"), dict)), None)
    matched = r.get("matched_quality") if isinstance(r.get("matched_quality"), dict) else None
    if recommended:
        sweep_table["highlight"] = recommended[0] - 1
    white = [w for w in r.get("white_box") or [] if isinstance(w, dict)]
    comparison = comparison_view(before, after, labels=("before (no mitigation)", "after (protected)"))
    mv = r.get("verdict") if isinstance(r.get("verdict"), dict) else {}
    if mv.get("level"):  # the mitigation's own verdict (both score directions, headline numbers), not the scan's
        comparison["after_level"] = str(mv["level"])
    headline = headline_deltas(before, after)
    rev = mv.get("reversed") if isinstance(mv.get("reversed"), dict) else {}
    flipped = [metric((m or {}).get("tpr_at_fpr_0.01"))["value"] for m in rev.values() if isinstance(m, dict)]
    flipped = [v for v in flipped if v is not None]
    for h in headline:  # the protected model is judged in both score directions: so is its headline TPR
        if h["key"] == "tpr_at_fpr_0.01" and flipped and h["values"][1] is not None and max(flipped) > h["values"][1]:
            b, a = h["values"][0], max(flipped)
            word, cls = _judge("tpr_at_fpr_0.01", "membership", b, a)
            h.update(after=fmt_value(a, "pct") + " (score reversed)", word=word, cls=cls)
    if len(controls) >= 2:  # the two-sided AUC the verdict also judges replaces the one-sided one
        b2, a2 = (_num((c.get("metrics") or {}).get("membership_auc_two_sided")) for c in controls[:2])
        if b2 is not None or a2 is not None:
            word, cls = _judge("membership_auc_two_sided", "membership", b2, a2)
            headline = [h for h in headline if h["key"] != "auc"]
            headline.insert(min(2, len(headline)), {"key": "membership_auc_two_sided",
                "label": "membership AUC, two-sided (an attacker may reverse a score; 0.5 is guessing)",
                "before": fmt_value(b2, "num"), "after": fmt_value(a2, "num"), "word": word, "cls": cls})
    if not any("Frechet" in h["label"] for h in headline):  # the cost side must never silently vanish
        headline.append({"key": "frechet_distance", "label": "quality (Frechet distance): not measured; add the quality detector "
                                  "(--detectors nn,quality) to see what the protection costs",
                         "before": "n/a", "after": "n/a", "word": "", "cls": ""})
    if len(controls) >= 2:  # a served model faces black-box attackers: their numbers lead
        m0, m1 = ((c.get("metrics") or {}) for c in controls[:2])
        lead = []
        for key, label in (("black_box_auc_two_sided", "black-box membership AUC, two-sided (images only: what the "
                                                       "served model faces; 0.5 is guessing)"),
                           ("black_box_tpr_at_fpr_0.01", "training images a black-box attacker identifies at 1% "
                                                         "false alarms")):
            b, a = _num(m0.get(key)), _num(m1.get(key))
            if b is None and a is None:
                continue
            word, cls = _judge(key, "membership", b, a)
            kind = metric_info(key)[2]
            lead.append({"key": key, "label": label, "before": fmt_value(b, kind), "after": fmt_value(a, kind),
                         "word": word, "cls": cls})
        headline = lead + headline
    leak = r.get("gate_leak") if isinstance(r.get("gate_leak"), dict) else None
    fams = [f for f in r.get("sweep_families") or [] if isinstance(f, dict)]
    families = {"cols": ["family", "settings meeting the copy target", "its pick", "copies", "quality",
                         "black-box AUC, two-sided", "gate leak", "lowest gate leak at the copy target"],
                "rows": [[str(f.get("family")), f"{f.get('meet_copy_target')} of {f.get('settings')}",
                          str(f.get("pick") or "none"), fmt_value(_num(f.get("pick_copy_fraction")), "pct"),
                          (f"{metric_info(str(f.get('quality_metric')))[0]} "
                           f"{fmt_value(_num(f.get('pick_quality')), 'num')}" if f.get("quality_metric") else "n/a"),
                          fmt_value(_num(f.get("pick_black_box_auc_two_sided")), "num"),
                          fmt_value(_num(f.get("pick_gate_leak")), "num"),
                          fmt_value(_num(f.get("lowest_gate_leak_at_copy_target")), "num")] for f in fams]}
    weights = r.get("weights") if isinstance(r.get("weights"), dict) else {}
    same = weights.get("sha256") if isinstance(weights.get("sha256"), dict) else {}
    return {"method": r.get("method", "unknown"), "headline": headline,
            "threats": threat_table(controls), "families": families if fams else None,
            "gate_leak": ({"value": fmt_value(_num(leak.get("value")), "num"),
                           "before": fmt_value(_num(leak.get("before")), "num"),
                           "black_box": fmt_value(_num(leak.get("black_box")), "num") if leak.get("black_box") is not None
                           else "not measured", "note": str(leak.get("note") or "")} if leak else None),
            "raw_weights": [{"file": f, "short": _short(h), "sha256": str(h)} for f, h in same.items()],
            "params": {k: fmt_scalar(v) if v is not None else "none" for k, v in (r.get("params") or {}).items()},
            "comparison": comparison,
            "controls": controls_table(controls), "has_controls": bool(controls),
            "timing": ", ".join(f"{k} {fmt_scalar(v)}" for k, v in timing.items()) if timing else "",
            "sweep": sweep_table, "has_sweep": bool(sweep), "tradeoffs": tradeoff_plots(sweep, controls),
            "recommended": ({"number": recommended[0], "label": _setting_label(recommended[1], recommended[0]),
                             "numbers": {k: fmt_scalar(v) for k, v in _flat(recommended[1]).items()}}
                            if recommended else None),
            "targets": {metric_info(k)[0]: fmt_scalar(v) for k, v in (r.get("targets") or {}).items()},
            "matched": matched_view(matched) if matched else None,
            "white_box": _table(white) if white else None,
            "guard": {k.replace("_", " "): fmt_scalar(v) for k, v in guard.items()},
            "details_title": str(r.get("details_title") or ("Guard classifier" if "guard" in r
                                                             else "What the mitigation trained")),
            "findings": [str(x) for x in r.get("findings") or []],
            "warnings": [str(x) for x in r.get("warnings") or []],
            "protected": str(r.get("protected") or ""),
            "limits": [str(x) for x in r.get("limits") or []]}


# ---------------------------------------------------------------- limits and provenance

GENERIC_LIMITS = (
    "These tests can show that a model leaks; they cannot prove that it does not. A low verdict means the attacks "
    "listed here, with this query budget and this holdout set, found no leakage.",
    "Membership numbers assume members and holdout come from the same distribution; the blind-baseline check "
    "above tests that, and a positive result makes every membership number suspect.",
    "95% intervals are exact (Clopper-Pearson) for proportions such as TPR and copy fraction, and Hanley-McNeil "
    "widened by the bootstrap for AUC, over the evaluation images; small sets give wide intervals, never a point.",
    "Replication is judged in one feature space: copies that differ in that space (crops, colour changes, style) "
    "may be missed unless a detector with a suitable extractor was run.",
    "This report embeds training images unless rendered with --redact omit (see the notice at the top), and "
    "results.json beside it holds the same images: store and share both like the training data.",
)


def limits_view(r: dict, scans: list[dict]) -> list[str]:
    out = list(GENERIC_LIMITS)
    for s in scans:
        for p in _plugins(s):
            for k, m in (p.get("metrics") or {}).items():
                mm = metric(m)
                if not mm["reliable"] and mm["note"]:
                    line = f"{p.get('name')}, {metric_info(k)[0]}: {mm['note']}; read it as indicative only."
                    if line not in out:
                        out.append(line)
    for x in r.get("limits") or []:
        if str(x) not in out:
            out.append(str(x))
    return out


def reproduce_command(man: dict) -> str:
    argv = [str(a) for a in man.get("argv") or []]
    if not argv:
        return ""
    exe = Path(argv[0])
    if exe.name == "privaudit" or (exe.name == "__main__.py" and exe.parent.name == "privaudit"):
        argv = ["privaudit", *argv[1:]]
    return shlex.join(argv)


def equivalent_command(scan: dict) -> str:
    """A ``privaudit scan`` command line rebuilt from what a scan recorded (for runs started from Python)."""
    t, data = scan.get("target") or {}, scan.get("data") or {}
    path = lambda k: (data.get(k) or {}).get("path")
    if not (t.get("path") and path("members") and path("holdout")):
        return ""
    man = scan.get("manifest") or {}
    ps = _plugins(scan)
    argv = ["privaudit", "scan", str(t["path"]), "--members", str(path("members")), "--holdout", str(path("holdout"))]
    if path("reference"):
        argv += ["--reference", str(path("reference"))]
    argv += ["--attacks", ",".join(str(p.get("name")) for p in ps if p.get("kind") == "attack") or "''",
             "--detectors", ",".join(str(p.get("name")) for p in ps if p.get("kind") == "detector") or "''"]
    for p in ps:
        for k, v in (p.get("params") or {}).items():
            argv += ["--param", f"{p.get('name')}.{k}={json.dumps(v, default=str)}"]
    for key, flag in (("seed", "--seed"), ("calibration_fraction", "--calibration-fraction"), ("n_boot", "--bootstrap")):
        if man.get(key) is not None:
            argv += [flag, str(man[key])]
    return shlex.join(argv)


def provenance_view(r: dict, scans: list[dict]) -> dict:
    man = r.get("manifest") if isinstance(r.get("manifest"), dict) else {}
    if not man and scans:
        man = scans[-1].get("manifest") or {}
    plugins = []
    for s in scans:
        for p in _plugins(s):
            if p.get("name") not in [q["name"] for q in plugins]:
                plugins.append({"name": p.get("name"), "id": p.get("id", ""), "kind": p.get("kind", ""),
                                "origin": (man.get("plugins") or {}).get(p.get("name"), ""),
                                "params": fmt_scalar(p.get("params") or {}),
                                "references": [str(x) for x in p.get("references") or []]})
    command = reproduce_command(man)
    equivalent = ""
    if r.get("kind", "scan") == "scan" and not command.startswith("privaudit "):
        equivalent = equivalent_command(r)
    return {"command": command, "equivalent": equivalent, "argv0": (man.get("argv") or [""])[0] if man.get("argv") else "",
            "versions": man.get("versions") or {}, "seed": man.get("seed"), "device": man.get("device", ""),
            "platform": man.get("platform", ""), "seconds": man.get("seconds"), "plugins": plugins,
            "manifest_json": json.dumps(man, indent=2, default=str, sort_keys=False)}


# ---------------------------------------------------------------- the whole report

def build(r: dict, *, baseline: dict | None, redact: str, version: str) -> dict:
    svg.reset_ids()
    DECLARED.clear()
    DECLARED.update(declared_specs(r, r.get("before"), r.get("after"), baseline))
    kind = r.get("kind") or ("mitigation" if "before" in r and "after" in r else "scan")
    if kind == "mitigation":
        scan = r.get("after") if isinstance(r.get("after"), dict) else {}
        scans = [s for s in (r.get("before"), r.get("after")) if isinstance(s, dict)]
    else:
        scan, scans = r, [r]
    ctx: dict[str, Any] = {"kind": kind, "version": version, "redact": redact, "thumb_px": THUMB_PX,
                           "blur_pct": int(BLUR_FRACTION * 100)}
    errors: list[str] = []

    def guard(name: str, fn, fallback):
        # a malformed part of the results must not cost the whole report (write_run renders before writing)
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - reported in the page, never hidden
            errors.append(f"{name}: {e.__class__.__name__}: {e}")
            return fallback

    empty_scan: dict = {}
    ctx["header"] = guard("header", lambda: header_view(r, scan), header_view({}, empty_scan))
    ctx["verdict"] = guard("verdict", lambda: verdict_view(scan), verdict_view(empty_scan))
    if kind == "mitigation" and isinstance(r.get("verdict"), dict):
        ctx["verdict"] = guard("verdict", lambda: mitigated_verdict_view(r, ctx["verdict"]), ctx["verdict"])
    ctx["mitigation"] = guard("before/after", lambda: mitigation_view(r), None) if kind == "mitigation" else None
    ctx["before_verdict"] = (guard("before verdict", lambda: verdict_view(r["before"]), None)
                             if kind == "mitigation" and isinstance(r.get("before"), dict) else None)
    ctx["baseline"] = None
    ctx["baseline_ignored"] = False
    if baseline is not None:
        if kind == "mitigation" or baseline.get("kind") == "mitigation":
            ctx["baseline_ignored"] = True
        else:
            ctx["baseline"] = guard("baseline comparison",
                                    lambda: comparison_view(baseline, r, labels=("baseline run", "this run")), None)
    ctx["membership"] = guard("membership", lambda: membership_view(scan), membership_view(empty_scan))
    ctx["replication"] = guard("replication", lambda: replication_view(scan, redact=redact),
                               replication_view(empty_scan, redact=redact))
    ctx["quality"] = guard("quality", lambda: quality_view(scan), quality_view(empty_scan))
    ctx["other"] = guard("other results", lambda: other_view(scan), [])
    ctx["limits"] = guard("limits", lambda: limits_view(r, scans), list(GENERIC_LIMITS))
    ctx["provenance"] = guard("provenance", lambda: provenance_view(r, scans), provenance_view({}, []))
    ctx["tested"] = guard("summary", lambda: tested_summary(scan), [])
    ctx["render_errors"] = errors
    sections = [("verdict", "Verdict")]
    if ctx["mitigation"]:
        sections.append(("before-after", "Before and after mitigation"))
    if ctx["baseline"]:
        sections.append(("comparison", "Comparison with the baseline run"))
    sections += [("membership", "Membership inference"), ("replication", "Replication"), ("quality", "Quality")]
    if ctx["other"]:
        sections.append(("other", "Other results"))
    sections += [("rules", "How the verdict is decided"), ("limits", "Limits"), ("provenance", "Provenance")]
    ctx["sections"] = sections
    return ctx


def tested_summary(scan: dict) -> list[str]:
    out = []
    data = scan.get("data") or {}
    m, h = (data.get("members") or {}).get("count"), (data.get("holdout") or {}).get("count")
    if m is not None and h is not None:
        out.append(f"{m} training images (members) and {h} images the model never saw (holdout)")
    att = [p for p in _plugins(scan) if _section_of(p) == "membership"]
    if att:
        ok = [p.get("name") for p in att if _ok(p)]
        out.append(f"{len(ok)} of {len(att)} membership attacks ran: {', '.join(map(str, ok)) or 'none'}")
    for p in _plugins(scan):
        if _section_of(p) == "replication" and _ok(p):
            n = (p.get("params") or {}).get("n_samples")
            out.append(f"copy detection ({p.get('name')}) on {n if n is not None else 'the'} generated images")
    return out



def query_view(r: dict) -> dict:
    """What the ``privaudit query`` report shows (results of ``privaudit.audit.query``)."""
    t = r.get("target") if isinstance(r.get("target"), dict) else {}
    test = r.get("test") if isinstance(r.get("test"), dict) else None
    curve = r.get("curve") if isinstance(r.get("curve"), dict) else None
    v = r.get("verdict") if isinstance(r.get("verdict"), dict) else {}
    pi = r.get("per_image") if isinstance(r.get("per_image"), dict) else {}
    fmt_p = lambda p: "n/a" if _num(p) is None else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")
    sizes = r.get("sizes") if isinstance(r.get("sizes"), dict) else {}
    return {
        "model": str(t.get("path", "?")), "adapter": str(t.get("adapter") or ""), "base": str(t.get("base") or ""),
        "n_suspect": sizes.get("suspect", "?"), "n_holdout": sizes.get("holdout", "?"),
        "verdict_level": str(v.get("level", "?")), "message": str(v.get("message", "")),
        "p_value": fmt_p(test.get("p_value")) if test else None, "auc": fmt_scalar(test.get("auc")) if test else "",
        "alpha": fmt_scalar(r.get("alpha")),
        "curve": [{"n": p.get("n_suspect"), "p": fmt_p(p.get("median_p")), "draws": len(p.get("p_values") or [])}
                  for p in (curve or {}).get("points") or [] if isinstance(p, dict)],
        "reach": (curve or {}).get("smallest_n_below_alpha"),
        "attacks": [{"name": a.get("name"), "status": a.get("status"), "threat_model": a.get("threat_model", ""),
                     "queries": fmt_scalar(a.get("queries_per_image")), "auc": fmt_scalar(a.get("auc_test_halves")),
                     "reason": a.get("reason", "")} for a in r.get("attacks") or [] if isinstance(a, dict)],
        "checks": [c for c in r.get("checks") or [] if isinstance(c, dict)],
        "warning": str(pi.get("warning", "")), "n_holdout_test": pi.get("n_holdout_test", "?"),
        "per_image": [{"image_id": x.get("image_id"), "p": fmt_p(x.get("p_value"))}
                      for x in pi.get("lowest") or [] if isinstance(x, dict)],
    }
