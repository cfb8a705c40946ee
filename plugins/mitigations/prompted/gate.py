"""``PromptGate``: which prompts a gated text mitigation acts on.

Wen et al. ("Detecting, Explaining, and Mitigating Memorization in Diffusion Models", ICLR 2024)
detect a memorised prompt from the first sampling step: the text-conditional part of the noise
prediction, ``||eps(x_T, t_1, prompt) - eps(x_T, t_1, "")||``, is large for memorised prompts
(the ``memprompt`` detector averages it over the first steps). The gate scores a prompt row by
that magnitude at the first timestep of a 50-step DDIM schedule, averaged over ``n_seeds`` fixed
noises drawn from ``seed`` (the same for every prompt: prompts are compared on equal terms, and a
prompt's decision does not depend on the draw), and flags it when the score exceeds
``threshold``. The threshold is calibrated at ``apply`` time as the ``1 - fpr`` quantile of the
scores of never-trained-on captions (the reference images' captions, else the holdout's), so
about ``fpr`` of unseen prompts are mitigated needlessly; the rate on member captions (the
gate's recall on this model) is reported beside it.

``signal`` picks the score (``plugins/detectors/_prompt_signals.py``): ``magnitude`` (the default,
above), ``anisotropy`` (Asthana & Belagiannis, ICLR 2026: the magnitude plus the low-noise alignment of
the guidance with the unconditional prediction) or ``curvature`` (ICML 2026: the difference of the
conditional and unconditional Hessian-score products, by autograd), each calibrated the same way.

``threshold=None`` is the ungated rule: every conditional row (anything but the empty prompt).
Cost per distinct prompt row (cached by the row's bytes), times ``n_seeds``: 2 network evaluations
(magnitude), 4 (anisotropy), 2 forward and 2 backward passes (curvature).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from privaudit.model.denoiser import cond_map, cond_rows, sampling_scheduler
from privaudit.plugins.detectors._prompt_signals import prompt_signal

SIGNAL_WORDS = {"magnitude": "text-conditional noise magnitude", "anisotropy": "score anisotropy",
                "curvature": "curvature difference"}

GATE_STEPS = 50  # the schedule whose first timestep the gate reads (the audits' default sampling)


@dataclass
class PromptGate:
    threshold: float | None = None
    n_seeds: int = 2
    seed: int = 0
    signal: str = "magnitude"
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def gated(self) -> bool:
        return self.threshold is not None

    def describe(self) -> str:
        return ("ungated: every prompt" if self.threshold is None else
                f"gated: prompts whose first-step {SIGNAL_WORDS[self.signal]} exceeds {self.threshold:.4g}")

    @torch.no_grad()
    def scores(self, lat, rows) -> torch.Tensor:
        """Per conditioning row, the mean first-step ``signal`` over the fixed noises (cached per row)."""
        n = cond_rows(rows)
        keys = [_key(rows, i) for i in range(n)]
        todo = [i for i in range(n) if keys[i] not in self._cache]
        if todo:
            if "probe" not in self._cache:  # the schedule and the fixed noises, drawn once per gate
                z = torch.randn((self.n_seeds, *lat.sample_shape), generator=torch.Generator().manual_seed(self.seed))
                ts = [int(t) for t in sampling_scheduler(lat, "ddim", GATE_STEPS).timesteps]
                self._cache["probe"] = (ts, z.to(lat.device))
            ts, z = self._cache["probe"]
            for s in range(0, len(todo), 64):
                idx = todo[s:s + 64]
                sub = cond_map(lambda e, idx=idx: e[idx].to(lat.device), rows)
                zz = z.repeat(len(idx), 1, 1, 1)  # row r, seed j at r * n_seeds + j
                c = cond_map(lambda e: e.repeat_interleave(self.n_seeds, 0), sub)
                d = prompt_signal(self.signal, lat, c, zz, ts).view(len(idx), self.n_seeds).mean(1)
                for i, v in zip(idx, d.tolist()):
                    self._cache[keys[i]] = v
        return torch.tensor([self._cache[k] for k in keys])

    def flags(self, lat, rows) -> torch.Tensor:
        """True for the rows the mitigation acts on (bool, on the CPU)."""
        if self.threshold is None:  # ungated: every row but the empty prompt (the unconditional branch)
            return ~is_empty(lat, rows)
        return self.scores(lat, rows) > self.threshold


def is_empty(lat, rows) -> torch.Tensor:
    """Per conditioning row: is it the empty prompt's (the unconditional branch)?"""
    empty = lat.prompt_embeddings([""])
    pairs = [(rows[k], empty[k]) for k in rows] if isinstance(rows, dict) else [(rows, empty)]
    eq = torch.ones(cond_rows(rows), dtype=torch.bool)
    for v, e in pairs:
        eq &= (v.detach().cpu() == e.detach().cpu()).flatten(1).all(1)
    return eq


def _key(rows, i: int) -> int:
    if isinstance(rows, dict):
        return zlib.crc32(b"".join(v[i].detach().float().cpu().contiguous().numpy().tobytes() for _, v in sorted(rows.items())))
    return zlib.crc32(rows[i].detach().float().cpu().contiguous().numpy().tobytes())


def calibrate(lat, *, unseen: list[str], members: list[str], fpr: float, n_seeds: int, seed: int,
              signal: str = "magnitude") -> dict:
    """The gate threshold: the ``1 - fpr`` quantile of unseen captions' scores; with the member captions'
    flag rate (recall) and the unseen rate actually reached."""
    gate = PromptGate(threshold=None, n_seeds=n_seeds, seed=seed, signal=signal)
    su = gate.scores(lat, lat.prompt_embeddings(unseen)).numpy()
    sm = gate.scores(lat, lat.prompt_embeddings(members)).numpy() if members else np.zeros(0)
    thr = float(np.quantile(su, 1 - fpr))
    return {"threshold": thr, "fpr": fpr, "unseen_captions": len(su), "member_captions": len(sm),
            "unseen_flag_rate": round(float((su > thr).mean()), 4),
            "member_flag_rate": round(float((sm > thr).mean()), 4) if len(sm) else None,
            "n_seeds": n_seeds, "seed": seed, "signal": signal}
