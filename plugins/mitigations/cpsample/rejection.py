"""Post-hoc rejection sampling: the baseline CPSample must beat.

Generate, drop every sample that is a copy of a member, generate more, until ``n``
non-copies are collected or ``max_factor * n`` samples have been drawn. The copy
criterion is the calibrated one the ``nn`` detector uses: a sample is
a copy when its nearest member (in the given feature space) is closer than the ``quantile``
of the nearest-member distances of real holdout images. Because the filter and the audit
use the same criterion, the copy fraction of accepted samples is zero by construction:
what this control measures is the *cost*: samples drawn per sample served (sampling time),
and, on a model that mostly copies, a budget that runs out (the remaining places are then
filled with the least copy-like rejects and the shortfall is reported, never hidden).

It needs the training set at serving time, like CPSample's guard; unlike CPSample it
does not change the served noise prediction, so gray-box membership attacks see the raw
model (``eps`` is the base model's).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from privaudit.model.denoiser import Denoiser, sample


class RejectionSampledDenoiser(Denoiser):
    """A Denoiser whose ``eps`` is the base model's and whose samples are rejection-filtered.

    ``draw_samples`` is the hook ``AuditContext.samples`` uses; ``stats_`` describes the
    last draw (drawn, accepted, acceptance rate, filled places, rounds), ``draws_`` all of them.
    """

    def __init__(self, *, base: Denoiser, members, holdout, extractor, quantile: float = 0.01,
                 max_factor: float = 10.0, base_fingerprint: str | None = None, features: str = "pixels"):
        self.base = base
        self.members, self.holdout, self.extractor = members, holdout, extractor
        self.quantile, self.max_factor, self.features = quantile, max_factor, features
        self.device = base.device
        self.scheduler = base.scheduler
        self.alphas_cumprod = base.alphas_cumprod
        self.sample_shape = base.sample_shape
        self.white_box = base.white_box
        self.prediction_type = base.prediction_type
        self._base_fp = base_fingerprint
        self._member_feats: np.ndarray | None = None
        self.threshold_: float | None = None
        self.stats_: dict = {}
        self.draws_: list[dict] = []

    @property
    def fingerprint(self) -> str:
        if self._base_fp is None:
            self._base_fp = self.base.fingerprint
        ids = hashlib.sha256("\n".join(self.members.ids).encode()).hexdigest()
        return hashlib.sha256(f"rejection|{self._base_fp}|{ids}|{self.features}|q={self.quantile!r}|"
                              f"max={self.max_factor!r}".encode()).hexdigest()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        return self.base.eps(x_t, t, cond)

    def inner(self) -> Denoiser:
        return self.base

    def query_fingerprint(self) -> str:
        return self.base.query_fingerprint()  # eps is the base model's: gray-box results are the base's

    def _feats(self, x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(self.extractor.transform(x), dtype=np.float32)

    def nearest_member_distance(self, x: torch.Tensor) -> np.ndarray:
        from privaudit.api import search

        if self._member_feats is None:
            self._member_feats = np.concatenate([self._feats(b) for _, b in self.members.batches(1024)])
        return search(self._feats(x), self._member_feats, k=1, method="exact").distances[:, 0]

    def _threshold(self) -> float:
        if self.threshold_ is None:
            dh = np.concatenate([self.nearest_member_distance(b) for _, b in self.holdout.batches(1024)])
            self.threshold_ = float(np.quantile(dh, self.quantile))
        return self.threshold_

    def draw_samples(self, *, n: int, steps: int = 50, sampler: str = "ddim", seed: int = 0,
                     batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """``n`` samples with copies rejected; round 0 uses ``seed`` (the raw model's samples)."""
        thr = self._threshold()
        budget = max(n, int(np.ceil(self.max_factor * n)))
        kept: list[torch.Tensor] = []
        rejects: list[tuple[torch.Tensor, np.ndarray]] = []
        n_kept, drawn, rounds = 0, 0, 0
        while n_kept < n and drawn < budget:
            # first round: n samples with the caller's seed; then as many as the acceptance rate so far needs
            rate = max(n_kept / drawn, 1.0 / self.max_factor) if drawn else 1.0
            m = min(budget - drawn, int(np.ceil((n - n_kept) / rate)))
            x = sample(self.base, n=m, steps=steps, sampler=sampler, seed=seed + 7919 * rounds,
                       batch_size=batch_size, progress=progress)
            d = self.nearest_member_distance(x)
            ok = d >= thr
            kept.append(x[torch.from_numpy(ok)])
            rejects.append((x[torch.from_numpy(~ok)], d[~ok]))
            n_kept += int(ok.sum())
            drawn += m
            rounds += 1
        out = torch.cat(kept)[:n]
        filled = n - len(out)
        if filled > 0:  # budget exhausted: fill with the least copy-like rejects, and say so
            rx = torch.cat([r for r, _ in rejects])
            rd = np.concatenate([d for _, d in rejects])
            out = torch.cat([out, rx[torch.from_numpy(np.argsort(-rd)[:filled].copy())]])
        self.stats_ = {"requested": n, "drawn": drawn, "accepted": min(n_kept, n), "filled_with_copies": filled,
                       "acceptance_rate": round(n_kept / max(drawn, 1), 4), "rounds": rounds,
                       "budget": budget, "threshold": thr, "exhausted": filled > 0,
                       "samples_per_served_sample_for_no_copies": round(drawn / max(n_kept, 1), 2)}
        self.draws_.append(dict(self.stats_))
        return out
