"""Memorised-prompt detection from the curvature difference at the first step ("Early Detection of
Memorization in Diffusion Models", ICML 2026, their "metric 2").

A memorised prompt makes the conditional density sharply peaked from the very first step: the
Hessian of the conditional log-density, applied to the score, differs from the unconditional one.
Per prompt, at a pure-noise latent ``z`` and the first timestep ``t0`` of a ``steps``-step DDIM
schedule, with ``e_c = eps(z, t0, prompt)`` and ``e_u = eps(z, t0, "")``: the score is
``||grad_z 1/2 ||e_c||^2 - grad_z 1/2 ||e_u||^2||_2^2`` (``J_c^T e_c - J_u^T e_u``, by automatic
differentiation: no finite differences, no probe vectors), averaged over ``n_seeds`` noises shared
by every prompt; higher = more likely memorised. Everything else (labels, the calibrated
``memorised_fraction``, the per-member table) is ``memprompt``'s.

Authors' code (the paper's anonymous repository, ``src/detect_all_metrics.py``, read for its
definitions): SD 1.5, DDIM 50 steps, fp16, one latent per prompt. Reported over 500 memorised +
500 unseen prompts: AUC 0.976, TPR 0.828 at 1% FPR, against AUC 0.962 for the noise magnitude at
step 1. Where ours differs: ``n_seeds = 4`` noises shared by every prompt (theirs: one seeded latent
per prompt), float32.

Threat model: gray box with gradients of the network (white-box access to the noise predictor's
Jacobian). Queries per prompt: ``2 * n_seeds`` forward and as many backward passes.
Usable as the text mitigations' gate: ``--param METHOD.gate_signal=curvature``.
"""

from __future__ import annotations

from privaudit.api import Interval, store_params
from privaudit.plugins.detectors._first_step import CONSTRAINTS, FirstStepPromptDetector


class CurvaturePromptDetector(FirstStepPromptDetector):
    """Memorised prompts: conditional minus unconditional Hessian-score product at the first step (ICML 2026)."""

    name = "memprompt-curvature"
    id = "PA-TXT-004"
    threat_model = "white-box"
    references = ("Early Detection of Memorization in Diffusion Models (curvature difference), ICML 2026",)
    signal = "curvature"
    signal_words = "curvature difference (conditional minus unconditional Hessian-score product)"
    parameter_constraints = {**CONSTRAINTS, "steps": [Interval(int, 1, 10_000)]}

    def __init__(self, *, prompts: str | tuple[str, ...] | None = None, steps: int = 50, n_seeds: int = 4,
                 max_prompts: int = 256, quantile: float = 0.01, threshold: float | None = None, n_top: int = 10,
                 batch_size: int = 32):
        store_params(self, locals())
