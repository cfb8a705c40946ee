"""Helpers shared by the report tests: run bodies, a mitigation-shaped run, hostile input, image decoding."""

from __future__ import annotations

import copy
import re

import numpy as np

PAYLOAD = "<script>alert(1)</script>.png"
ATTR_PAYLOAD = '"><img src=x onerror=alert(2)>'
DATA_URI = re.compile(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]+")


def body(results: dict) -> dict:
    """What ``write_run`` puts in results.json: everything but the in-memory tables."""
    return copy.deepcopy({k: v for k, v in results.items() if k not in ("scores", "tables")})


# the columns a real all-attacks mitigation run adds to the controls table (one AUC per attack, probes, quality)
WIDE_METRICS = {f"{a}_auc": 0.5 for a in ("loss", "secmi", "pia", "pian", "sima", "gsa")} | {
    "white_box_auc": 1.0, "nn_mean_diversity": 0.61, "precision": 0.8, "recall": 0.7, "guided_fraction": 0.217,
    "mean_guard_confidence": 0.66}


def mitigation_results(before: dict, after: dict) -> dict:
    """A ``kind: mitigation`` run in the shape ``privaudit/mitigation/flow.py`` writes, built from two real scans.

    ``after`` stands in for the protected model's audit; controls and sweep carry numbers of
    the documented form (flat metric numbers; a Metric dict in one place, as other writers may).
    """
    b, a = body(before), body(after)
    timing = {"n": 64, "steps": 50, "sampler": "ddim"}

    def control(name, family, copy, auc, fd, secs, **extra):
        return {"name": name, "description": f"{name} (test stand-in)", "family": family, "params": extra,
                "metrics": {"copy_fraction": copy, "membership_auc": auc, "membership_auc_two_sided": max(auc, 1 - auc),
                            "frechet_distance": fd, **WIDE_METRICS}, "sampling_seconds": secs, "sampling_ratio": secs / 1.0,
                "timing": timing, "verdict": "low", "details": {"huge": list(range(100))}}

    sweep = [{"name": f"{fam} alpha={al} scale={s:g}", "family": fam, "alpha": al, "scale": s,
              "metrics": {"copy_fraction": c, "membership_auc": 0.6, "frechet_distance": f}, "sampling_seconds": 1.5,
              "sampling_ratio": 1.5, "meets_targets": c <= 0.02, "recommended": r}
             for fam, al, s, c, f, r in [("cpsample", 0.5, 100.0, 0.5, 1.3, False), ("cpsample", 0.25, 100.0, 0.2, 1.6, False),
                                         ("cpsample", 0.25, 300.0, 0.01, 2.3, True), ("cpsample", 0.001, 1000.0, 0.0, 4.0, False),
                                         ("placebo", 0.25, 100.0, 0.6, 1.5, False), ("placebo", 0.25, 300.0, 0.3, 2.5, False)]]
    return {
        "schema_version": 1, "kind": "mitigation", "method": "cpsample", "params": {"alpha": 0.25, "scale": 300.0},
        "protected": "/runs/mitigate/protected",
        "before": b, "after": a,
        "controls": [control("no mitigation", "none", 0.9, 1.0, 1.1, 1.0),
                     control("cpsample", "cpsample", {"value": 0.01, "ci": [0.002, 0.03]}, 0.55, 2.3, 1.6, alpha=0.25),
                     control("placebo guard", "placebo", 0.4, 0.97, 2.1, 1.6),
                     control("rejection sampling", "rejection", 0.0, 1.0, 1.5, 9.0)],
        "sweep": sweep,
        "matched_quality": {"quality_metric": "frechet_distance", "quality": 2.3, "mitigation": "cpsample",
                            "mitigation_copy_fraction": 0.01, "placebo_copy_fraction": 0.32, "bracketed": True,
                            "beats_placebo": True, "note": "placebo interpolated along its sweep"},
        "white_box": [{"attack": "gsa", "before_auc": 1.0, "after_auc": 1.0, "unchanged": True}],
        "guard": {"parameters": 20993, "train_accuracy": 0.995, "holdout_accuracy": 0.52},
        "targets": {"copy_fraction": 0.02, "membership_auc_two_sided": 0.6},
        "findings": ["cpsample: copy fraction 0.900 -> 0.010 (test stand-in)."],
        "warnings": ["guard stand-in warning"],
        "limits": ["Protection holds only while the raw UNet weights stay private: a white-box attacker bypasses the guard.",
                   "The guard needs the training data."],
        "manifest": {**b.get("manifest", {}), "argv": ["privaudit", "mitigate", "MODEL", "--method", "cpsample"]},
    }


def hostile(results: dict) -> dict:
    """``results`` with markup in every user-controlled string the report shows."""
    r = body(results)
    r["target"]["path"] = f"/models/{PAYLOAD}"
    r["manifest"]["argv"] = ["privaudit", "scan", PAYLOAD, "--members", ATTR_PAYLOAD]
    for d in r["data"].values():
        d["path"] = PAYLOAD
    r["checks"][0]["message"] = PAYLOAD
    r["verdict"]["reasons"] = [PAYLOAD]
    r["verdict"]["warnings"] = [ATTR_PAYLOAD]
    for p in r["plugins"]:
        p["finding"] = PAYLOAD
        p["details"]["rules"] = [PAYLOAD]
        for pair in p["details"].get("pairs", []):
            pair["member_id"] = PAYLOAD
            pair["member_png"] = "javascript:alert(3)"  # not an image: must be dropped, not linked
        for m in p["details"].get("most_copied", []):
            m["member_id"] = ATTR_PAYLOAD
    r["plugins"].append({"name": PAYLOAD, "id": ATTR_PAYLOAD, "kind": "attack", "status": "skipped",
                         "reason": PAYLOAD, "metrics": {}, "details": {}})
    return r


def decode_images(html: str) -> list[np.ndarray]:
    """Every embedded data: image, decoded to uint8 (H, W) grey or (H, W, 3)."""
    from privaudit.reports.images import decode_uri

    out = []
    for uri in DATA_URI.findall(html):
        im = decode_uri(uri)
        out.append(np.asarray(im.convert("L" if im.mode in ("L", "1", "LA", "I") else "RGB")))
    return out


def nearest_member_rms(img: np.ndarray, members: np.ndarray) -> float:
    """Smallest RMS difference (0..1 scale) between ``img``, area-resized to the members' size, and any member.

    ``members``: uint8 (N, H, W). Comparing at the members' resolution catches a member
    embedded at any upscaling.
    """
    from PIL import Image

    h, w = members.shape[1:]
    small = np.asarray(Image.fromarray(img if img.ndim == 2 else img.mean(2).astype(np.uint8)).resize((w, h), Image.BOX),
                       dtype=np.float32)
    diff = (members.astype(np.float32) - small[None]) / 255.0
    return float(np.sqrt((diff ** 2).mean(axis=(1, 2))).min())
