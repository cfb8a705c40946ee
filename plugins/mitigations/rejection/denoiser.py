"""Post-hoc rejection sampling as a ``Denoiser``: the served samples are the raw model's, minus its copies.

Generate, drop every sample that is a copy of a member, generate more, until ``n`` non-copies are
collected or ``max_factor * n`` samples have been drawn. A sample is a copy when its nearest member is
closer than a threshold calibrated on real unseen images (the ``quantile`` of their nearest-member
distances: the ``nn`` detector's rule). Two copy tests:

- ``BankCopyTest`` (the ``rejection`` mitigation): pixel L2 against a ``MemberBank`` with its stored
  radius, so the served pipeline needs nothing but itself;
- ``FeatureCopyTest`` (CPSample's "rejection sampling" control): any feature extractor, the
  threshold calibrated on the holdout on first use; with the audit's own features and holdout the
  copy fraction of accepted samples is zero by construction, so that control measures the *cost*.

What it costs: samples drawn per sample served (sampling time); on a model that mostly copies the
budget runs out, and the remaining places are filled with the least copy-like rejects and the
shortfall is reported (``stats_``), never hidden.

It needs the training set at serving time (the bank, or the control's members), like CPSample's
guard; unlike CPSample it does not change the served noise prediction, so gray-box membership
attacks see the raw model (``eps`` is the base model's, ``query_fingerprint`` the base's).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np
import torch

from privaudit.model.denoiser import Denoiser, sample, state_sha256


class CopyTest(Protocol):
    """Nearest-member distances and the threshold below which a sample is a copy."""

    identity: str  # what decides the test, for sample-cache keys

    def distance(self, x: torch.Tensor) -> np.ndarray: ...

    def threshold(self) -> float: ...


class FeatureCopyTest:
    """Nearest-member distance in ``extractor``'s feature space; threshold: the ``quantile`` of the
    ``holdout`` images' distances (computed on first use)."""

    def __init__(self, *, members, holdout, extractor, quantile: float = 0.01, features: str = "pixels"):
        self.members, self.holdout, self.extractor = members, holdout, extractor
        self.quantile, self.features = quantile, features
        self._member_feats: np.ndarray | None = None
        self.threshold_: float | None = None
        ids = hashlib.sha256("\n".join(members.ids).encode()).hexdigest()
        self.identity = f"{ids}|{features}|q={quantile!r}"  # the keys of 0.2's rejection control

    def _feats(self, x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(self.extractor.transform(x), dtype=np.float32)

    def distance(self, x: torch.Tensor) -> np.ndarray:
        from privaudit.api import search

        if self._member_feats is None:
            self._member_feats = np.concatenate([self._feats(b) for _, b in self.members.batches(1024)])
        return search(self._feats(x), self._member_feats, k=1, method="exact").distances[:, 0]

    def threshold(self) -> float:
        if self.threshold_ is None:
            dh = np.concatenate([self.distance(b) for _, b in self.holdout.batches(1024)])
            self.threshold_ = float(np.quantile(dh, self.quantile))
        return self.threshold_


class BankCopyTest:
    """Pixel L2 to the nearest member of a ``MemberBank``; threshold: ``radius`` (default the bank's)."""

    def __init__(self, bank, *, radius: float | None = None, bank_sha256: str | None = None):
        self.bank = bank
        self.radius = float(bank.radius if radius is None else radius)
        self.bank_sha256 = bank_sha256 or state_sha256({"": bank})
        self.identity = f"bank={self.bank_sha256}|radius={self.radius!r}"

    def distance(self, x: torch.Tensor) -> np.ndarray:
        return self.bank.nearest(x)[0].cpu().numpy()

    def threshold(self) -> float:
        return self.radius


class RejectionSampledDenoiser(Denoiser):
    """A Denoiser whose ``eps`` is the base model's and whose samples are rejection-filtered.

    ``draw_samples`` is the hook ``AuditContext.samples`` uses; ``stats_`` describes the
    last draw (drawn, accepted, acceptance rate, filled places, rounds), ``draws_`` all of them.
    """

    def __init__(self, *, base: Denoiser, test: CopyTest, max_factor: float = 10.0,
                 base_fingerprint: str | None = None):
        self.base, self.test = base, test
        self.max_factor = float(max_factor)
        self.device = base.device
        self.scheduler = base.scheduler
        self.alphas_cumprod = base.alphas_cumprod
        self.sample_shape = base.sample_shape
        self.white_box = base.white_box
        self.prediction_type = base.prediction_type
        self._base_fp = base_fingerprint
        self.stats_: dict = {}
        self.draws_: list[dict] = []

    @property
    def base_fingerprint(self) -> str:
        if self._base_fp is None:
            self._base_fp = self.base.fingerprint
        return self._base_fp

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"rejection|{self.base_fingerprint}|{self.test.identity}|"
                              f"max={self.max_factor!r}".encode()).hexdigest()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: object = None) -> torch.Tensor:
        return self.base.eps(x_t, t, cond)

    def inner(self) -> Denoiser:
        return self.base

    def query_fingerprint(self) -> str:
        return self.base.query_fingerprint()  # eps is the base model's: gray-box results are the base's

    def nearest_member_distance(self, x: torch.Tensor) -> np.ndarray:
        return self.test.distance(x)

    def draw_samples(self, *, n: int, steps: int = 50, sampler: str = "ddim", seed: int = 0,
                     batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """``n`` samples with copies rejected, in place: sample i is the raw model's sample i (round 0 uses
        ``seed``) unless it was a copy, then the next accepted redraw (places filled in order)."""
        thr = self.test.threshold()
        budget = max(n, int(np.ceil(self.max_factor * n)))
        out: torch.Tensor | None = None
        open_ = np.arange(n)  # places still holding no accepted sample, in order
        rejects: list[tuple[torch.Tensor, np.ndarray]] = []
        drawn, rounds, accepted = 0, 0, 0
        while len(open_) and drawn < budget:
            # first round: n samples with the caller's seed; then as many as the acceptance rate so far needs
            rate = max(accepted / drawn, 1.0 / self.max_factor) if drawn else 1.0
            m = min(budget - drawn, int(np.ceil(len(open_) / rate)))
            x = sample(self.base, n=m, steps=steps, sampler=sampler, seed=seed + 7919 * rounds,
                       batch_size=batch_size, progress=progress)
            d = self.test.distance(x)
            ok = d >= thr
            accepted += int(ok.sum())
            if out is None:  # round 0 draws every place: accepted samples stay where they are
                out, open_ = x.clone(), np.flatnonzero(~ok)
            else:  # redraws fill the open places in order
                take = np.flatnonzero(ok)[: len(open_)]
                out[torch.from_numpy(open_[: len(take)])] = x[torch.from_numpy(take)]
                open_ = open_[len(take):]
            rejects.append((x[torch.from_numpy(~ok)], d[~ok]))
            drawn += m
            rounds += 1
        assert out is not None
        filled = len(open_)
        n_kept = n - filled
        if filled > 0:  # budget exhausted: fill with the least copy-like rejects, and say so
            rx = torch.cat([r for r, _ in rejects])
            rd = np.concatenate([d for _, d in rejects])
            out[torch.from_numpy(open_)] = rx[torch.from_numpy(np.argsort(-rd, kind="stable")[:filled].copy())]
        self.stats_ = {"requested": n, "drawn": drawn, "accepted": n_kept, "filled_with_copies": filled,
                       "acceptance_rate": round(accepted / max(drawn, 1), 4), "rounds": rounds,
                       "budget": budget, "threshold": thr, "exhausted": filled > 0,
                       "samples_per_served_sample_for_no_copies": round(drawn / max(accepted, 1), 2)}
        self.draws_.append(dict(self.stats_))
        return out
