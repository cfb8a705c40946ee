"""Memorised-prompt detection from score anisotropy (Asthana & Belagiannis, ICLR 2026).

A memorised prompt's guidance is large at the start of sampling *and* lines up with the
unconditional prediction at low noise. Per prompt, at a pure-noise latent ``z`` and the first
timestep ``t0`` of a ``steps``-step DDIM schedule: ``N = ||eps(z, t0, prompt) - eps(z, t0, "")||_2``;
at the same ``z`` fed at the schedule's third-to-last timestep ``t_low``: ``C`` = the cosine between
``eps(z, t_low, "")`` and the guidance ``eps(z, t_low, prompt) - eps(z, t_low, "")``, per pixel along
the channels, averaged over pixels. Score ``gamma_norm * N + gamma_cos * C``, averaged over
``n_seeds`` noises shared by every prompt; higher = more likely memorised. Everything else
(labels, the calibrated ``memorised_fraction``, the per-member table) is ``memprompt``'s.

Authors' code (rohanasthana/memorization-anisotropy, read for its definitions): SD 1.4, DDIM 50
steps, one noise draw per prompt (seed reset per prompt), ``t_low = timesteps[-3]`` (41 of 50
steps), weights (1, 2) for SD 1.x (1, 0.1 for SD 2 after converting v to a score). Reported: SD 1.4,
500 memorised vs 500 unseen prompts, AUC 0.994, TPR 0.935 at 1% FPR. Where ours differs:
``n_seeds = 4`` draws averaged by default (less variance at 4x the cost; ``n_seeds=1`` is theirs),
and the norm is the noise prediction's for every family (their SD 2 uses the score).

Threat model: gray box (noise predictions for chosen prompts). Queries per prompt: ``4 * n_seeds``.
Usable as the text mitigations' gate: ``--param METHOD.gate_signal=anisotropy``.
"""

from __future__ import annotations

import numpy as np

from privaudit.api import InputError, InstanceOf, Interval, SequenceOf, store_params
from privaudit.plugins.detectors._prompt_signals import ANISOTROPY_GAMMAS, first_step_scores
from privaudit.plugins.detectors.memprompt import MemorisedPromptDetector


class AnisotropyPromptDetector(MemorisedPromptDetector):
    """Memorised prompts: first-step guidance norm plus low-noise guidance alignment (Asthana & Belagiannis 2026)."""

    name = "memprompt-anisotropy"
    id = "PA-TXT-003"
    references = ("Asthana & Belagiannis, Detecting Memorization in Diffusion Models via Score Anisotropy, ICLR 2026",)
    follows_target = False  # an alternative to memprompt: run on request (--detectors)
    signal_words = "score anisotropy (first-step guidance norm + low-noise alignment)"

    parameter_constraints = {
        "prompts": [None, InstanceOf(str), SequenceOf(InstanceOf(str))], "steps": [Interval(int, 3, 10_000)],
        "n_seeds": [Interval(int, 1, 1024)], "gamma_norm": [Interval(float, 0, None)],
        "gamma_cos": [Interval(float, 0, None)], "max_prompts": [Interval(int, 1, None)],
        "quantile": [Interval(float, 0, 1, closed="neither")], "threshold": [None, Interval(float, None, None)],
        "n_top": [Interval(int, 0, 10_000)], "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, prompts: str | tuple[str, ...] | None = None, steps: int = 50, n_seeds: int = 4,
                 gamma_norm: float = ANISOTROPY_GAMMAS[0], gamma_cos: float = ANISOTROPY_GAMMAS[1],
                 max_prompts: int = 256, quantile: float = 0.01, threshold: float | None = None, n_top: int = 10,
                 batch_size: int = 64):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(4 * self.n_seeds)  # per prompt

    def _check(self) -> None:
        if not 0 < self.quantile < 1:
            raise InputError(f"{self.name}: quantile must lie strictly between 0 and 1, got {self.quantile!r}")

    def prompt_scores(self, denoiser, prompts: list[str], *, seed: int) -> np.ndarray:
        return first_step_scores(denoiser, prompts, signal="anisotropy", steps=self.steps, n_seeds=self.n_seeds,
                                 seed=seed, batch_size=self.batch_size, gammas=(self.gamma_norm, self.gamma_cos))
