"""The ensemble view: the strongest membership attack at each operating point.

A reviewer's headline should be the worst case, not an average: an attacker picks whichever
attack works best. For AUC, TPR at each FPR level and balanced accuracy, ``ensemble_view``
names the attack with the highest value on the evaluation split and carries that attack's
own confidence interval, reliability flag, threat model and query cost.

Ties (common on memorising models, where several attacks reach AUC 1) go to the attack that
needs the least access (black box < gray box < white box), then the fewest queries per image,
then the higher lower confidence bound: the headline then says how *little* an attacker needs.

Caveat, stated in the output: the maximum over several attacks on one evaluation split is
biased upwards (it picks the luckiest of several noisy estimates). Read the interval of the
chosen attack with that in mind; with near-chance attacks the ensemble sits slightly above 0.5.

Everything is computed from the per-plugin results (``PluginResult.to_json()`` dicts); skipped
and failed attacks are ignored.
"""

from __future__ import annotations

import math

METRIC_ORDER = ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "balanced_accuracy")
ACCESS_ORDER = {"black-box": 0, "gray-box": 1, "white-box": 2}
NOTE = ("strongest attack per metric on the evaluation split; a maximum over several attacks is "
        "biased upwards, so treat it as a worst-case screen")


def _value(metric: dict | None) -> float | None:
    v = None if metric is None else metric.get("value")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def ensemble_view(plugins: list[dict]) -> dict:
    """``{"metrics": {metric: strongest attack and its value}, "attacks": [...], "note": ...}``."""
    attacks = [p for p in plugins if p.get("kind") == "attack" and p.get("status") == "ok"]
    keys = {k for p in attacks for k in p.get("metrics", {})}
    ordered = [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))
    rows = {}
    for key in ordered:
        cands = [(p, p["metrics"][key]) for p in attacks if _value(p["metrics"].get(key)) is not None]
        if not cands:
            continue

        def rank(pm):
            p, m = pm
            ci = m.get("ci") or [-math.inf]
            return (-_value(m), ACCESS_ORDER.get(p.get("threat_model"), 3), float(p.get("queries_per_image", 0.0)),
                    -(ci[0] if ci[0] is not None else -math.inf), p["name"])

        cands.sort(key=rank)
        best_p, best_m = cands[0]
        top = _value(best_m)
        rows[key] = {
            "attack": best_p["name"], "id": best_p.get("id"), "threat_model": best_p.get("threat_model"),
            "queries_per_image": best_p.get("queries_per_image"),
            "value": top, "ci": best_m.get("ci"), "reliable": best_m.get("reliable", True),
            "note": best_m.get("note", ""),
            "tied": [p["name"] for p, m in cands if _value(m) == top],
            "by_attack": {p["name"]: _value(m) for p, m in sorted(cands, key=lambda pm: pm[0]["name"])},
        }
    return {"metrics": rows, "attacks": [p["name"] for p in attacks], "note": NOTE}
