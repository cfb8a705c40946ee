"""The shared shape of the first-step memorised-prompt detectors (``memprompt-anisotropy``,
``memprompt-curvature``): ``memprompt``'s labels, calibrated ``memorised_fraction`` and per-member
table, with the per-prompt score one of the first-step signals of ``_prompt_signals`` averaged over
``n_seeds`` noises shared by every prompt. Subclasses name their ``signal`` and add its parameters
(``signal_args``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from privaudit.api import InputError, InstanceOf, Interval, SequenceOf
from privaudit.plugins.detectors._prompt_signals import first_step_scores
from privaudit.plugins.detectors.memprompt import MemorisedPromptDetector

CONSTRAINTS = {
    "prompts": [None, InstanceOf(str), SequenceOf(InstanceOf(str))], "n_seeds": [Interval(int, 1, 1024)],
    "max_prompts": [Interval(int, 1, None)], "quantile": [Interval(float, 0, 1, closed="neither")],
    "threshold": [None, Interval(float, None, None)], "n_top": [Interval(int, 0, 10_000)],
    "batch_size": [Interval(int, 1, None)],
}


class FirstStepPromptDetector(MemorisedPromptDetector):
    """A memorised-prompt detector scoring each prompt by a first-step signal (see the module docstring)."""

    signal: str = ""
    follows_target = False  # alternatives to memprompt: run on request (--detectors)
    steps: int
    n_seeds: int
    batch_size: int
    quantile: float

    def queries_per_image(self) -> float:
        return float(4 * self.n_seeds)  # per prompt: 4 network evaluations (or 2 forward + 2 backward) per noise

    def _check(self) -> None:
        if not 0 < self.quantile < 1:
            raise InputError(f"{self.name}: quantile must lie strictly between 0 and 1, got {self.quantile!r}")

    def signal_args(self) -> dict[str, Any]:
        """Extra keyword arguments of the signal (its weights)."""
        return {}

    def prompt_scores(self, denoiser, prompts: list[str], *, seed: int) -> np.ndarray:
        return first_step_scores(denoiser, prompts, signal=self.signal, steps=self.steps, n_seeds=self.n_seeds,
                                 seed=seed, batch_size=self.batch_size, **self.signal_args())
