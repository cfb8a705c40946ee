"""Shared formatting for every report section: metric declarations, numbers and intervals as text,
the direction of a change, and defensive accessors for the plugin entries of a results dict.

Nothing here imports the core: the sections read results JSON only. ``DECLARED`` holds the metric
specs the plugins of the run being rendered declared; ``sections.report.build`` fills it per render.
"""

from __future__ import annotations

import math
from typing import Any

LEVELS = ("low", "medium", "high", "critical")

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
    "at_risk_reproduced": ("images at risk still reproduced", "of the distinct images the unprotected model's audit "
                           "listed at risk, those the served model still reproduces beyond chance", "count", "low"),
    "at_risk_copies": ("copies of images at risk", "generated samples copying an image listed at risk before "
                       "mitigation", "count", "low"),
    "at_risk_members": ("images at risk before", "distinct images the unprotected model's audit listed at risk",
                        "count", None),
    "at_risk_black_box_auc_two_sided": ("black-box AUC of the images at risk, two-sided", "max(AUC, 1 - AUC) of the "
                                        "at-risk members' black-box scores against the holdout", "num", "low"),
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


def num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, dict) and "value" in v:
        return num(v["value"])
    return None


def metric(m: Any) -> dict:
    """A Metric dict or a bare number -> {value, ci, reliable, note}."""
    if isinstance(m, dict):
        ci = m.get("ci")
        ci = [num(c) for c in ci] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
        if ci and None in ci:
            ci = None
        return {"value": num(m.get("value")), "ci": ci, "reliable": m.get("reliable", True) is not False,
                "note": str(m.get("note") or "")}
    return {"value": num(m), "ci": None, "reliable": True, "note": ""}


UNIT_FORMATS = {"rate": "pct", "number": "num", "count": "count", "ratio": "ratio", "seconds": "num"}
# metric specs the plugins of the run being rendered declared (``details.metric_specs``): ``build`` fills it
DECLARED: dict[str, dict] = {}


def declared_specs(*runs: Any) -> dict[str, dict]:
    """Every metric spec the plugins of ``runs`` (scan results) declared, by metric name (first wins)."""
    out: dict[str, dict] = {}
    for run in runs:
        for p in plugins_of(run) if isinstance(run, dict) else ():
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


def with_ci(fm: dict) -> str:
    """A formatted metric's text with its interval in brackets, as the tables show it."""
    return fm["text"] + (f" ({fm['ci']})" if fm["ci"] else "")


def fmt_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if isinstance(v, dict) and "value" in v:
        return fmt_value(num(v), "num")
    if isinstance(v, (list, tuple)):
        if len(v) <= 12 and all(not isinstance(x, (dict, list)) for x in v):
            return ", ".join(fmt_scalar(x) for x in v)
        return f"{len(v)} values (listed in results.json)"  # never a JSON dump cut mid-word
    if isinstance(v, dict):
        return "; ".join(f"{k}: {fmt_scalar(x) if x is not None else 'none'}" for k, x in list(v.items())[:24])
    return "" if v is None else str(v)


def plugins_of(scan: dict | None) -> list[dict]:
    return [p for p in (scan or {}).get("plugins") or [] if isinstance(p, dict)]


def is_ok(p: dict) -> bool:
    return p.get("status") == "ok"


def is_quality(p: dict) -> bool:
    specs = (p.get("details") or {}).get("metric_specs") if isinstance(p.get("details"), dict) else None
    if isinstance(specs, dict) and specs:  # declared by the plugin
        return all(isinstance(v, dict) and v.get("section") == "quality" for v in specs.values())
    return p.get("name") == "quality" or any(k in (p.get("metrics") or {}) for k in ("frechet_distance", "precision"))


def section_of(p: dict) -> str:
    if p.get("kind") == "attack":
        return "membership"
    if p.get("kind") == "detector":
        return "quality" if is_quality(p) else "replication"
    return "other"


def details_of(p: dict) -> dict:
    d = p.get("details")
    return d if isinstance(d, dict) else {}


def short(h: Any, n: int = 12) -> str:
    return str(h)[:n] if h else "n/a"


def tpr1(p: dict) -> float | None:
    return metric((p.get("metrics") or {}).get("tpr_at_fpr_0.01")).get("value")


def auc_of(p: dict) -> float | None:
    return metric((p.get("metrics") or {}).get("auc")).get("value")


def hist_series(h: dict) -> tuple[list[float], list[dict]] | None:
    """A histogram dict {"edges", name: counts, ...} -> (edges, series) or None when malformed."""
    if not isinstance(h, dict) or not isinstance(h.get("edges"), list) or len(h["edges"]) < 2:
        return None
    n = len(h["edges"]) - 1
    series = [{"label": str(k), "counts": v} for k, v in h.items()
              if k != "edges" and isinstance(v, list) and len(v) == n and all(isinstance(c, (int, float)) for c in v)]
    return (h["edges"], series) if series else None


def not_ok(plugins: list[dict]) -> list[dict]:
    return [{"name": p.get("name"), "status": p.get("status", "?"), "reason": p.get("reason", "")}
            for p in plugins if not is_ok(p)]


def judge(key: str, area: str, a: float | None, b: float | None) -> tuple[str, str]:
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
