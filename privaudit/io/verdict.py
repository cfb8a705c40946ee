"""Severity rules: documented thresholds that turn metrics into a risk level.

Membership (worst case over attacks, on the evaluation split; chance is TPR = FPR):

- critical: TPR at 1% FPR >= 0.50 (half the members identified with 1 false alarm per 100)
- high:     TPR at 1% FPR >= 0.10 (10x chance), or AUC >= 0.80
- medium:   TPR at 1% FPR >= 0.03 (3x chance), or the AUC 95% interval lies above 0.55
- low:      otherwise

A TPR rule fires only when the TPR's 95% interval also lies above the FPR (chance), and the
AUC rule only when the AUC's interval lies above 0.5: with a few dozen evaluation members,
one member found by luck is already 3% and must not raise the level (measured: on the null
control, PIA reached TPR 0.078 at 1% FPR with an interval reaching down to 0).

Replication (calibrated copy fraction: share of samples closer to a member than the
calibrated quantile of real unseen images):

- critical: copy fraction >= 0.25
- high:     copy fraction >= 0.05
- medium:   the copy fraction's 95% interval lies above the criterion's false-positive rate
- low:      otherwise

Per image (``privaudit.audit.risk``: the worst case beside the averages):

- high:     at least one member is reproduced: more generated copies of it (or of its duplicates)
            than chance gives (Poisson, Bonferroni over the members, at 5%). A model with AUC 0.55
            that reproduces eight people's images is not low risk.

The overall verdict is the worst severity of any plugin; each rule that fired is listed.

Inconclusive: where a plugin's evidence is unusable (non-finite scores, samples or metrics,
every distance infinite), that plugin cannot say "low". If no other plugin reached medium or
above, the verdict is **inconclusive**, never low: ``--fail-on`` treats it as failing at
every level except ``never``, and the reasons say which test could not judge and why. A plugin
that failed (status error) counts the same way, and so does missing evidence: no plugin produced
a usable result, or a results file holds no verdict.
"""

from __future__ import annotations

import math

from privaudit.io.results import SEVERITIES, Metric

INCONCLUSIVE = "inconclusive"


RULES_TEXT = __doc__

# The thresholds above, by name: the functions below and the report's rule table use these.
TPR_CRITICAL, TPR_HIGH, TPR_MEDIUM = 0.50, 0.10, 0.03
AUC_HIGH, AUC_CI_MEDIUM = 0.80, 0.55
COPY_CRITICAL, COPY_HIGH = 0.25, 0.05

# (area, level, condition, why it matters) for every rule, strongest first within an area.
RULES: tuple[dict[str, str], ...] = (
    {"area": "membership", "level": "critical", "condition": f"TPR at 1% FPR >= {TPR_CRITICAL:.2f}",
     "why": "half or more of the training images can be identified while only 1 in 100 unseen images is wrongly flagged"},
    {"area": "membership", "level": "high", "condition": f"TPR at 1% FPR >= {TPR_HIGH:.2f}, or AUC >= {AUC_HIGH:.2f}",
     "why": "ten times better than guessing at a low false-alarm rate, or strong separation overall "
            "(TPR rules need the TPR's 95% interval above 1%, the AUC rule the AUC's interval above 0.5)"},
    {"area": "membership", "level": "medium",
     "condition": f"TPR at 1% FPR >= {TPR_MEDIUM:.2f}, or the AUC 95% interval lies above {AUC_CI_MEDIUM:.2f}",
     "why": "measurably better than guessing"},
    {"area": "membership", "level": "low", "condition": "none of the above", "why": "no evidence beyond chance"},
    {"area": "replication", "level": "critical", "condition": f"copy fraction >= {COPY_CRITICAL:.0%}",
     "why": "a quarter or more of generated images are near-copies of training images"},
    {"area": "replication", "level": "high", "condition": f"copy fraction >= {COPY_HIGH:.0%}",
     "why": "one generated image in twenty or more is a near-copy"},
    {"area": "replication", "level": "medium",
     "condition": "the copy fraction's 95% interval lies above the criterion's false-positive rate",
     "why": "more copies than real unseen images would produce by chance"},
    {"area": "replication", "level": "low", "condition": "none of the above", "why": "no more copies than chance"},
    {"area": "per image", "level": "high", "condition": "a member is reproduced beyond chance",
     "why": "some people's images come out of the model although the averages look calm"},
    {"area": "overall", "level": "worst of the above", "condition": "the highest level any plugin reached",
     "why": "one strong attack is enough for an attacker"},
)


def membership_severity(metrics: dict[str, Metric]) -> tuple[str, list[str]]:
    tpr = metrics.get("tpr_at_fpr_0.01")
    auc = metrics.get("auc")
    # Evidence must beat chance, not only the threshold (see the module docstring).
    t = tpr.value if tpr and (tpr.ci is None or tpr.ci[0] > 0.01) else 0.0
    if auc and auc.ci and auc.ci[0] <= 0.5:
        auc = None
    if t >= TPR_CRITICAL:
        return "critical", [f"TPR at 1% FPR is {t:.2f} (>= {TPR_CRITICAL:.2f}): most members are identifiable with few false alarms"]
    if t >= TPR_HIGH:
        return "high", [f"TPR at 1% FPR is {t:.2f} (>= {TPR_HIGH:.2f}, ten times chance)"]
    if auc and auc.value >= AUC_HIGH:
        return "high", [f"AUC is {auc.value:.2f} (>= {AUC_HIGH:.2f})"]
    if t >= TPR_MEDIUM:
        return "medium", [f"TPR at 1% FPR is {t:.2f} (>= {TPR_MEDIUM:.2f}, three times chance)"]
    if auc and auc.ci and auc.ci[0] > AUC_CI_MEDIUM:
        return "medium", [f"AUC interval {auc.ci[0]:.2f}-{auc.ci[1]:.2f} lies above {AUC_CI_MEDIUM:.2f}"]
    return "low", []


def replication_severity(metrics: dict[str, Metric], *, false_positive_rate: float) -> tuple[str, list[str]]:
    cf = metrics.get("copy_fraction")
    if cf is None:
        return "info", []
    if cf.value >= COPY_CRITICAL:
        return "critical", [f"{cf.value:.0%} of samples are copies of members (>= {COPY_CRITICAL:.0%})"]
    if cf.value >= COPY_HIGH:
        return "high", [f"{cf.value:.1%} of samples are copies of members (>= {COPY_HIGH:.0%})"]
    if cf.ci and cf.ci[0] > false_positive_rate:
        return "medium", [f"copy fraction interval {cf.ci[0]:.1%}-{cf.ci[1]:.1%} lies above the criterion's "
                          f"false-positive rate {false_positive_rate:.1%}"]
    return "low", []


def per_image_severity(at_risk: dict | None) -> tuple[str, list[str]]:
    """High when the per-image summary counts a reproduced member (its sentence is the rule); info otherwise."""
    if not isinstance(at_risk, dict) or not at_risk.get("n_reproduced"):
        return "info", []
    return "high", [str(at_risk.get("sentence") or f"{at_risk['n_reproduced']} member(s) reproduced")]


def worst(severities) -> str:
    return max(severities, key=SEVERITIES.index, default="info")


def metrics_problem(metrics: dict[str, Metric]) -> str | None:
    """Why these metrics cannot support a verdict (a value that is NaN or infinite), else None."""
    bad = [k for k, m in metrics.items() if m.value is None or not math.isfinite(float(m.value))]
    return f"metric {', '.join(bad)} is not a finite number" if bad else None


def overall(levels: list[str], inconclusive: list[str]) -> str:
    """The worst level; ``inconclusive`` when some plugin could not judge and none found medium or worse."""
    level = worst(levels)
    if inconclusive and SEVERITIES.index(level) < SEVERITIES.index("medium"):
        return INCONCLUSIVE
    return level


def evidence_problems(plugins: list) -> list[str]:
    """Why the evidence of these plugin results (results.json dicts) is incomplete: every failed plugin, every
    plugin whose evidence was unusable, and "no usable result" when no plugin judged anything."""
    ps = [p for p in plugins if isinstance(p, dict)]
    out = [f"{p.get('name', '?')} failed: {p.get('reason') or 'error'}" for p in ps if p.get("status") == "error"]
    out += [f"{p.get('name', '?')}: {(p.get('details') or {})['inconclusive']}" for p in ps
            if p.get("status") == "ok" and isinstance(p.get("details"), dict) and p["details"].get("inconclusive")]
    judged = [p for p in ps if p.get("status") == "ok" and not (p.get("details") or {}).get("inconclusive")
              and p.get("severity") in SEVERITIES[1:]]
    if not judged:
        out.append("no test produced a usable result" + ("" if ps else " (no test ran)"))
    return out


def judged_level(verdict: object, plugins: object) -> tuple[str, list[str]]:
    """(level, problems) of a stored verdict as readers must show it (report, summary.json, junit.xml): a
    missing or unknown level, or a calm level beside failed or unusable evidence, is ``inconclusive`` (unless
    the stored level is medium or worse: real leakage stands). ``problems`` are the reasons."""
    v = verdict if isinstance(verdict, dict) else {}
    level = v.get("level")
    # without a plugin list (another writer) a stored level stands on its own
    problems = evidence_problems(plugins) if isinstance(plugins, list) and plugins else []
    if level == INCONCLUSIVE:
        return level, problems
    if level not in SEVERITIES:
        return INCONCLUSIVE, ["the results hold no verdict", *(problems or evidence_problems([]))]
    return overall([level], problems), problems


def fails(level: str, fail_on: str) -> bool:
    """``--fail-on``: inconclusive fails at every level except never."""
    if fail_on == "never":
        return False
    return level == INCONCLUSIVE or SEVERITIES.index(level) >= SEVERITIES.index(fail_on)
