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

import numpy as np

from privaudit.api import InputError, InstanceOf, Interval, SequenceOf, store_params
from privaudit.plugins.detectors._prompt_signals import first_step_scores
from privaudit.plugins.detectors.memprompt import MemorisedPromptDetector


class CurvaturePromptDetector(MemorisedPromptDetector):
    """Memorised prompts: conditional minus unconditional Hessian-score product at the first step (ICML 2026)."""

    name = "memprompt-curvature"
    id = "PA-TXT-004"
    threat_model = "white-box"
    references = ("Early Detection of Memorization in Diffusion Models (curvature difference), ICML 2026",)
    follows_target = False  # an alternative to memprompt: run on request (--detectors)
    signal_words = "curvature difference (conditional minus unconditional Hessian-score product)"

    parameter_constraints = {
        "prompts": [None, InstanceOf(str), SequenceOf(InstanceOf(str))], "steps": [Interval(int, 1, 10_000)],
        "n_seeds": [Interval(int, 1, 1024)], "max_prompts": [Interval(int, 1, None)],
        "quantile": [Interval(float, 0, 1, closed="neither")], "threshold": [None, Interval(float, None, None)],
        "n_top": [Interval(int, 0, 10_000)], "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, prompts: str | tuple[str, ...] | None = None, steps: int = 50, n_seeds: int = 4,
                 max_prompts: int = 256, quantile: float = 0.01, threshold: float | None = None, n_top: int = 10,
                 batch_size: int = 32):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(4 * self.n_seeds)  # per prompt: 2 forward + 2 backward passes per noise

    def _check(self) -> None:
        if not 0 < self.quantile < 1:
            raise InputError(f"{self.name}: quantile must lie strictly between 0 and 1, got {self.quantile!r}")

    def prompt_scores(self, denoiser, prompts: list[str], *, seed: int) -> np.ndarray:
        return first_step_scores(denoiser, prompts, signal="curvature", steps=self.steps, n_seeds=self.n_seeds,
                                 seed=seed, batch_size=self.batch_size)
