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

from typing import Any

from privaudit.api import Interval, store_params
from privaudit.plugins.detectors._first_step import CONSTRAINTS, FirstStepPromptDetector
from privaudit.plugins.detectors._prompt_signals import ANISOTROPY_GAMMAS


class AnisotropyPromptDetector(FirstStepPromptDetector):
    """Memorised prompts: first-step guidance norm plus low-noise guidance alignment (Asthana & Belagiannis 2026)."""

    name = "memprompt-anisotropy"
    id = "PA-TXT-003"
    references = ("Asthana & Belagiannis, Detecting Memorization in Diffusion Models via Score Anisotropy, ICLR 2026",)
    signal = "anisotropy"
    signal_words = "score anisotropy (first-step guidance norm + low-noise alignment)"
    parameter_constraints = {**CONSTRAINTS, "steps": [Interval(int, 3, 10_000)],  # t_low: the third-to-last step
                             "gamma_norm": [Interval(float, 0, None)], "gamma_cos": [Interval(float, 0, None)]}

    def __init__(self, *, prompts: str | tuple[str, ...] | None = None, steps: int = 50, n_seeds: int = 4,
                 gamma_norm: float = ANISOTROPY_GAMMAS[0], gamma_cos: float = ANISOTROPY_GAMMAS[1],
                 max_prompts: int = 256, quantile: float = 0.01, threshold: float | None = None, n_top: int = 10,
                 batch_size: int = 64):
        store_params(self, locals())

    def signal_args(self) -> dict[str, Any]:
        return {"gammas": (self.gamma_norm, self.gamma_cos)}
