"""Nearest-neighbour replication detector: which generated images are copies of members?

Generates ``n_samples`` images (seeded, batched, cached on disk by the runner's
``ctx.samples``), embeds samples, holdout and members with a ``FeatureExtractor`` plugin
(``features``, default ``pixels``; e.g. ``torchscript`` with an SSCD file; through ``ctx.features``,
an engine stage: sharded, resumable, on Ray with ``--engine ray``) and finds each
query's nearest members with ``privaudit.stats.search`` (faiss; exact by default, IVF above
``ivf_threshold`` members with its recall measured and reported). Members are streamed
batch by batch in ONE pass that serves every criterion (their features computed
``64 * batch_size`` members at a time), so memory does not grow with the member count. Exact search runs on the GPU when the model does (``search_device="auto"``).

Criteria, each reported side by side with its own false-positive rate on the holdout
(real images the model never saw: the null). Holdout rates of calibrated criteria are
measured out of sample (2-fold cross-fitting).

- ``copy_fraction`` (headline, calibrated): a sample is a copy when
  its nearest-member distance is below the ``quantile`` (default 1%) of the holdout's
  nearest-member distances. Its false-positive rate is known (about ``quantile``) whatever
  the dimension or data; ``details["false_positive_rate"]`` is the larger of the nominal
  and the measured rate and drives the runner's severity rules.
- ``carlini``: Carlini et al. 2023's adaptive ratio, distance to the nearest member
  divided by ``alpha`` (0.5) times the mean distance to the ``k`` (50) nearest; <= 1 is a
  copy. In low dimensions the nearest neighbour is always much closer than the 50-mean,
  so this flags non-copies too: read it against its holdout rate.
- ``ratio``: nearest / second-nearest member distance below ``ratio`` (1/3).
- ``tiled``: the image cut into a ``tiles`` x ``tiles`` grid (4x4), each tile searched
  among the members' tiles at the same position (``tile_match="aligned"``) or at any
  position (``"any"``: also catches content moved by whole tiles, at ``tiles**2`` times the
  cost), in pixels, after area-downsampling to at most ``tile_resolution`` px. A tile's distance is scaled by the holdout's median for
  that tile and the statistic is the minimum over tiles (the maximum over tiles of copy
  evidence), calibrated on the holdout like the headline. A sample that reproduces part of
  a member (a pasted crop, an inpainted remainder) is caught although its global distance
  is ordinary. Carlini et al. use the *maximum tile distance* (every tile must match) to
  reject images sharing a background; that strict form is close to the global L2 here.
  Blank tiles that every real image matches (holdout median 0) carry no evidence.
- ``cosine``: cosine similarity (L2-normalised features) to the nearest member at or
  above ``cosine_threshold``. Literature values: 0.5 on SSCD descriptors (Somepalli et
  al., CVPR 2023); the CPSample paper (Kazdan et al., ICLR 2025) reports fractions above
  0.97 / 0.95 / 0.90 for CIFAR-10 / CelebA / LSUN Church. The default 0.97 is meant for
  pixel-like features; set 0.5 with SSCD. Its holdout rate tells whether the threshold
  means anything in the chosen feature space.

Also reported: the background distribution of member-to-second-nearest-member cosine
similarity and distance (a member's nearest neighbour among members is itself; the
second is its closest *other* member), on up to ``background_sample`` members, so a
threshold can be read against how close members come to one another; percentiles
(50/75/90/95/99) of nearest-member similarity for samples, holdout and background; the
per-member table (``DetectorOutput.members``: copies, the expected chance copies, the nearest generated
sample, the duplicate cluster) for per-image risk; chance copies are spread over the members like unseen
images' near neighbours (``_replication.chance_weights``), so a typical image in a dense region expects
more stray copies than an unusual one; the
per-member view (members copied and how often, the top pairs as sample | member |
difference PNGs); members duplicated inside the member set (exact: identical pixels, all
members; near: closer to another member than the copy threshold, sampled members).

Threat model: black box (samples only). Queries: ``steps`` denoiser calls per generated image.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from privaudit.api import (
    DetectorOutput,
    InputError,
    InstanceOf,
    Interval,
    KnnStream,
    Metric,
    MetricSpec,
    Options,
    ReplicationDetector,
    choose_method,
    default_nlist,
    l2_normalize,
    png_data_uri,
    proportion_ci,
    search,
    store_params,
    to_uint8,
    train_ivf,
)
from privaudit.plugins.detectors import _replication as R

MEMBER_CHUNK_BATCHES = 64  # members are embedded (an engine stage) and streamed into the search this many batches at a time


class NearestNeighbourDetector(ReplicationDetector):
    """Copies among generated samples: calibrated nearest-member distance beside the literature's criteria."""

    name = "nn"
    id = "PA-REP-001"
    metric_specs = (
        MetricSpec("copy_fraction", "copies (calibrated)", "replication", "low", "rate",
                   "samples closer to a member than all but a fraction q of real unseen images are (q = the criterion's "
                   "false-positive rate)"),
        MetricSpec("copy_holdout_fpr", "calibrated copy criterion on unseen images", "replication", None, "rate",
                   "share of real holdout images the criterion flags: its false-positive rate"),
        MetricSpec("carlini_fraction", "Carlini ratio <= 1", "replication", "low", "rate",
                   "nearest-member distance over alpha x mean distance to the k nearest members (Carlini et al. 2023)"),
        MetricSpec("carlini_holdout_fpr", "Carlini ratio on unseen images", "replication", None, "rate",
                   "share of real holdout images the criterion flags: its false-positive rate"),
        MetricSpec("ratio_fraction", "1st/2nd neighbour ratio < 1/3", "replication", "low", "rate",
                   "nearest member much closer than the second nearest"),
        MetricSpec("ratio_holdout_fpr", "1st/2nd neighbour ratio on unseen images", "replication", None, "rate",
                   "share of real holdout images the criterion flags: its false-positive rate"),
        MetricSpec("tiled_fraction", "tiled L2 copies", "replication", "low", "rate",
                   "partial copies: the closest tile of a 4x4 grid"),
        MetricSpec("tiled_holdout_fpr", "tiled L2 on unseen images", "replication", None, "rate",
                   "share of real holdout images the criterion flags: its false-positive rate"),
        MetricSpec("cosine_fraction", "cosine similarity copies", "replication", "low", "rate",
                   "similarity to the nearest member above the threshold"),
        MetricSpec("cosine_holdout_fpr", "cosine similarity on unseen images", "replication", None, "rate",
                   "share of real holdout images the criterion flags: its false-positive rate"),
        MetricSpec("copied_members", "distinct members copied", "replication", "low", "count",
                   "training images with at least one near-copy among the samples"),
        MetricSpec("search_recall_at_1", "search recall@1", "replication", "high", "rate",
                   "approximate nearest-neighbour search against exact search"),
    )
    references = (
        "Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023",
        "Somepalli et al., Diffusion Art or Digital Forgery?, CVPR 2023",
        "Kazdan et al., CPSample: Classifier Protected Sampling, ICLR 2025",
    )

    parameter_constraints = {
        "n_samples": [Interval(int, 1, 10_000_000)], "steps": [Interval(int, 1, 10_000)],
        "sampler": [Options("ddim", "ddpm")], "features": [InstanceOf(str)], "feature_params": [None, InstanceOf(dict)],
        "quantile": [Interval(float, 0, 1, closed="neither")], "alpha": [Interval(float, 0, 1, closed="right")],
        "k": [Interval(int, 1, None)], "ratio": [Interval(float, 0, 1, closed="right")],
        "cosine_threshold": [Interval(float, -1, 1)], "tiles": [Interval(int, 1, 64)],
        "tile_match": [Options("aligned", "any")], "tile_resolution": [Interval(int, 1, 4096)],
        "background_sample": [Interval(int, 1, None)],
        "duplicate_quantile": [Interval(float, 0, 1, closed="neither")], "holdout_limit": [Interval(int, 1, None)],
        "search": [Options("auto", "exact", "ivf")], "ivf_threshold": [Interval(int, 1, None)],
        "nlist": [None, Interval(int, 1, None)], "nprobe": [None, Interval(int, 1, None)],
        "search_device": [InstanceOf(str)], "batch_size": [Interval(int, 1, None)], "n_pairs": [Interval(int, 0, 1000)],
    }

    def __init__(self, *, n_samples: int = 256, steps: int = 50, sampler: str = "ddim", features: str = "pixels",
                 feature_params: dict | None = None, quantile: float = 0.01, alpha: float = 0.5, k: int = 50,
                 ratio: float = 1 / 3, cosine_threshold: float = 0.97, tiles: int = 4, tile_match: str = "aligned",
                 tile_resolution: int = 64,
                 background_sample: int = 5000, duplicate_quantile: float = 0.001, holdout_limit: int = 10_000, search: str = "auto",
                 ivf_threshold: int = 10_000_000, nlist: int | None = None, nprobe: int | None = None,
                 search_device: str = "auto", batch_size: int = 512, n_pairs: int = 12):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(self.steps)  # per generated image

    # -- views: every vector space a criterion searches, computed once per image batch --

    def _views(self, f: np.ndarray, x: torch.Tensor) -> dict[str, np.ndarray]:
        """The views of one batch: its features ``f`` (plain and L2-normalised) and its pixel tiles."""
        v = {"l2": f, "cos": l2_normalize(f)}
        if self.tiles:
            xt = x.float()
            if max(xt.shape[-2:]) > self.tile_resolution:  # tiles cost like a pixel search: bound it
                xt = torch.nn.functional.adaptive_avg_pool2d(xt, self.tile_resolution)
            parts = R.tiles(xt.cpu().numpy(), self.tiles)
            if self.tile_match == "any":  # one search over every member tile; row = image * T + tile
                if len({p.shape[1] for p in parts}) > 1:
                    raise InputError(f"nn.tile_match=any: image size {tuple(xt.shape[-2:])} is not divisible "
                                     f"into {self.tiles}x{self.tiles} equal tiles")
                v["tiles"] = np.ascontiguousarray(np.stack(parts, 1).reshape(-1, parts[0].shape[1]))
            else:
                v.update({f"tile{t}": tile for t, tile in enumerate(parts)})
        return v

    def _embed(self, ctx, extractor, images, *, label: str) -> dict[str, np.ndarray]:
        """Views of a whole set (ImageSet or tensor): features through ``ctx.features`` (an engine stage),
        tiles from the pixels here."""
        f = ctx.features(extractor, images, label=label, batch_size=self.batch_size)
        pixels = (lambda a, b: images[a:b]) if isinstance(images, torch.Tensor) else \
            (lambda a, b: images.tensor(np.arange(a, b)))
        parts = [self._views(f[s : s + self.batch_size], pixels(s, min(s + self.batch_size, len(images))))
                 for s in range(0, len(images), self.batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def detect(self, ctx) -> DetectorOutput:
        if self.tile_match not in ("aligned", "any"):
            raise InputError(f"nn.tile_match: {self.tile_match!r} is not one of aligned, any")
        seed = ctx.seed
        rng = np.random.default_rng(seed)
        members, holdout = ctx.members, ctx.holdout
        n_mem = len(members)
        extractor = ctx.feature(self.features, **(self.feature_params or {}))
        samples = ctx.samples(n=self.n_samples, steps=self.steps, sampler=self.sampler)
        hold_idx = np.arange(len(holdout))
        if len(holdout) > self.holdout_limit:
            hold_idx = np.sort(rng.choice(len(holdout), self.holdout_limit, replace=False))
        bg_idx = np.arange(n_mem)
        if n_mem > self.background_sample:
            bg_idx = np.sort(rng.choice(n_mem, self.background_sample, replace=False))

        # queries: samples, then holdout, then background members (their own row is dropped later)
        qs, qh, qb = (self._embed(ctx, extractor, samples, label="samples"),
                      self._embed(ctx, extractor, holdout.subset(hold_idx), label="holdout"),
                      self._embed(ctx, extractor, members.subset(bg_idx), label="background members"))
        n_s, n_h = len(samples), len(hold_idx)
        queries = {k: np.concatenate([qs[k], qh[k], qb[k]]) for k in qs}
        k_l2 = min(self.k + 1, n_mem)
        ks = {k: (k_l2 if k == "l2" else min(3, n_mem) if k == "cos" else 1) for k in queries}
        metric = {k: "ip" if k == "cos" else "l2" for k in queries}
        per = {k: self.tiles ** 2 if k == "tiles" else 1 for k in queries}  # rows per image
        for k in [k for k in queries if k.startswith("tile")]:
            queries[k] = queries[k][: (n_s + n_h) * per[k]]  # background needs no tiles

        method = choose_method(self.search, n_members=n_mem, n_queries=len(queries["l2"]),
                               ivf_threshold=self.ivf_threshold, nlist=self.nlist)
        index = {k: None for k in queries}
        if method == "ivf":
            nlist = self.nlist or default_nlist(n_mem)
            train = self._embed(ctx, extractor, members.subset(np.sort(rng.choice(n_mem, min(n_mem, 40 * nlist),
                                                                                  replace=False))), label="IVF training")
            index = {k: train_ivf(train[k], metric=metric[k], nlist=nlist, nprobe=self.nprobe, seed=seed) for k in queries}
        device = self.search_device
        if device == "auto":  # exact search on the GPU the model runs on; IVF is faiss-cpu
            model_device = getattr(getattr(ctx, "denoiser", None), "device", None)
            device = "cuda" if method == "exact" and getattr(model_device, "type", "cpu") == "cuda" else "cpu"
        streams = {k: KnnStream(queries[k], k=ks[k], metric=metric[k], index=index[k], seed=seed,
                                device=device if index[k] is None else "cpu") for k in queries}

        hashes = np.empty(n_mem, dtype=np.uint64)
        # each member's nearest generated sample (per-image risk: how close the model comes to every member)
        near_d, near_i = np.full(n_mem, np.inf, np.float32), np.full(n_mem, -1, np.int64)
        chunk = self.batch_size * MEMBER_CHUNK_BATCHES  # features of one chunk in memory at a time
        for a in range(0, n_mem, chunk):
            f = ctx.features(extractor, members.subset(np.arange(a, min(a + chunk, n_mem))), label="members",
                             batch_size=self.batch_size)
            for s0 in range(0, len(f), self.batch_size):
                idx = np.arange(a + s0, min(a + s0 + self.batch_size, n_mem))
                x = members.tensor(idx)
                views = self._views(f[s0 : s0 + self.batch_size], x)
                for k, s in streams.items():
                    s.add(views[k], int(idx[0]) * per[k])
                if len(qs["l2"]):
                    ns = search(views["l2"], qs["l2"], k=1, method="exact")
                    near_d[idx], near_i[idx] = ns.distances[:, 0], ns.indices[:, 0]
                hashes[idx] = [int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=8).digest(), "little")
                               for img in _to_uint8(x)]
        res = {k: s.result() for k, s in streams.items()}
        return self._report(ctx, samples, hold_idx, bg_idx, res, hashes, extractor, method, (near_d, near_i))

    def _report(self, ctx, samples, hold_idx, bg_idx, res, hashes, extractor, method, nearest) -> DetectorOutput:
        members = ctx.members
        n_s, n_h, n_mem = len(samples), len(hold_idx), len(members)
        k_eff = min(self.k, n_mem)
        l2, cos = res["l2"], res["cos"]
        d, nn = l2.distances[:n_s, :k_eff], l2.indices[:n_s, :k_eff]
        dh = l2.distances[n_s : n_s + n_h, :k_eff]
        bd, bi = R.drop_self(l2.distances[n_s + n_h :], l2.indices[n_s + n_h :], bg_idx)
        sim, sim_nn, sim_h = cos.distances[:n_s, 0], cos.indices[:n_s, 0], cos.distances[n_s : n_s + n_h, 0]
        bsim, _ = R.drop_self(cos.distances[n_s + n_h :], cos.indices[n_s + n_h :], bg_idx)
        bsim = bsim[:, 0] if bsim.shape[1] else np.full(len(bg_idx), np.nan)
        q, seed = self.quantile, ctx.seed

        crit = {"copy": R.calibrated("calibrated", "copy_fraction", d[:, 0], dh[:, 0], q=q, seed=seed,
                                     what="nearest-member distance",
                                     reference="holdout-calibrated nearest-member distance")}
        cr, crh = R.carlini_ratio(d, self.alpha), R.carlini_ratio(dh, self.alpha)
        crit["carlini"] = R.Criterion(
            "carlini", "carlini_fraction",
            f"nearest distance / ({self.alpha} x mean distance to the {k_eff} nearest members) <= 1",
            cr <= 1, crh <= 1, 1.0, False, self.references[0])
        nr, nrh = R.neighbour_ratio(d), R.neighbour_ratio(dh)
        crit["ratio"] = R.Criterion("ratio", "ratio_fraction", f"nearest / second-nearest member distance < {self.ratio:.3g}",
                                    nr < self.ratio, nrh < self.ratio, float(self.ratio), False)
        tile_keys = sorted((k for k in res if k.startswith("tile") and k != "tiles"), key=lambda s: int(s[4:]))
        tile_s = np.full(n_s, np.nan)
        tiles_used = 0
        if tile_keys or "tiles" in res:
            dt = (res["tiles"].distances[:, 0].reshape(-1, self.tiles ** 2) if "tiles" in res
                  else np.stack([res[k].distances[:, 0] for k in tile_keys], 1))
            tile_s, tile_h, used = R.tile_statistic(dt[:n_s], dt[n_s:])
            tiles_used = int(used.sum())
            crit["tiled"] = R.calibrated(
                "tiled", "tiled_fraction", tile_s, tile_h, q=q, seed=seed,
                what=(f"best tile's scaled distance ({self.tiles}x{self.tiles} grid, {self.tile_match} positions, "
                      f"{tiles_used} informative tiles)"),
                reference="Carlini et al. 2023 (tiled L2), min over tiles for partial copies")
            if crit["tiled"].threshold <= 0:
                crit["tiled"] = replace(crit["tiled"], note=(
                    f"threshold is 0: {np.mean(tile_h == 0):.0%} of real holdout images match some member tile exactly, "
                    "so no tile can be evidence of copying at this resolution; the criterion cannot flag anything here"))
        crit["cosine"] = R.Criterion("cosine", "cosine_fraction",
                                     f"cosine similarity to the nearest member >= {self.cosine_threshold:g}",
                                     sim >= self.cosine_threshold, sim_h >= self.cosine_threshold,
                                     float(self.cosine_threshold), False,
                                     "Somepalli et al. 2023 (0.5 on SSCD); CPSample (0.97/0.95/0.90)")
        copy = crit["copy"].flags
        fpr = max(q, crit["copy"].holdout_fpr)

        metrics = {}
        for c in crit.values():
            metrics[c.metric] = Metric(c.fraction, proportion_ci(int(c.flags.sum()), len(c.flags)))
            base = c.metric.removesuffix("_fraction")
            metrics[f"{base}_holdout_fpr"] = Metric(
                c.holdout_fpr, proportion_ci(int(c.holdout_flags.sum()), len(c.holdout_flags)),
                note="out of sample (2-fold cross-fitting)" if c.calibrated else "")
        member_ids = np.asarray(members.ids)
        counts = pd.Series(member_ids[nn[copy, 0]]).value_counts()
        metrics["copied_members"] = Metric(float(len(counts)), note="distinct members with at least one copy")
        if l2.recall_at_1 is not None:
            metrics["search_recall_at_1"] = Metric(l2.recall_at_1, note=f"IVF vs exact on {l2.recall_queries} queries")

        # duplicates inside the member set: closer to another member than all but a fraction duplicate_quantile
        # of unseen images come to any member (so about that fraction of members is flagged by chance)
        dup_thr = R.below_quantile(dh[:, 0], self.duplicate_quantile)
        _, inv, cnt = np.unique(hashes, return_inverse=True, return_counts=True)
        dup_groups = [member_ids[inv == g].tolist() for g in np.flatnonzero(cnt > 1)]
        near = np.flatnonzero(bd[:, 0] < dup_thr) if bd.shape[1] else np.zeros(0, int)
        near = near[np.argsort(bd[near, 0])] if bd.shape[1] else near  # one member: no other member to be near
        cluster = R.duplicate_clusters(inv, bg_idx, bd, bi, threshold=dup_thr)
        size = np.bincount(cluster)[cluster]
        duplicates = {
            "exact_groups": dup_groups[:20], "n_exact": int(sum(len(g) for g in dup_groups)),
            "near": [{"member_id": str(member_ids[bg_idx[i]]), "nearest_member_id": str(member_ids[bi[i, 0]]),
                      "distance": float(bd[i, 0])} for i in near[:20]],
            "n_near": int(len(near)), "checked_near": int(len(bg_idx)),
            "near_expected_by_chance": float(self.duplicate_quantile * len(bg_idx)),
            "threshold": None if not np.isfinite(dup_thr) else float(dup_thr),
            "n_clusters": int(len(np.unique(cluster[size > 1]))), "n_in_clusters": int((size > 1).sum()),
            "largest_clusters": _largest_clusters(cluster, size, member_ids),
            "rule": "exact: identical pixels (all members); near: closer to another member than all but "
                    f"{self.duplicate_quantile:.1%} of real unseen images come to any member ({dup_thr:.4g}; "
                    f"on {len(bg_idx)} sampled members); clusters: connected groups of such pairs"}
        dup_members = set(np.flatnonzero(size > 1).tolist())

        # per-member view and pairs
        order = np.argsort(d[:, 0], kind="stable")[: self.n_pairs]
        s8 = to_uint8(samples[order])
        m8 = members.uint8(nn[order, 0])
        mf = l2_normalize(extractor.transform(members.tensor(nn[order, 0]))) if len(order) else np.zeros((0, 1))
        pair_sim = (mf * l2_normalize(extractor.transform(samples[order]))).sum(1) if len(order) else []
        pairs = [{"sample": int(i), "member_id": str(member_ids[nn[i, 0]]), "distance": float(d[i, 0]),
                  "similarity": float(ps), "copy": bool(copy[i]),
                  "criteria": {c.name: bool(c.flags[i]) for c in crit.values()},
                  "member_duplicated": int(nn[i, 0]) in dup_members,
                  "sample_png": _png(s), "member_png": _png(m), "diff_png": _png(_absdiff(s, m))}
                 for i, s, m, ps in zip(order, s8, m8, pair_sim)]
        top = counts.head(20)
        pos = {v: i for i, v in enumerate(member_ids)}
        thumbs = members.uint8([pos[m] for m in top.index]) if len(top) else []
        most_copied = [{"member_id": str(m), "count": int(c), "member_png": _png(t),
                        "member_duplicated": pos[m] in dup_members}
                       for (m, c), t in zip(top.items(), thumbs)]

        hist_sim = {"samples": sim, "holdout": sim_h, "background": bsim}
        sim_hist = R.histogram(hist_sim, lo=float(np.nanmin(np.r_[sim, sim_h, bsim, 1.0])), hi=1.0)
        bg_dist = bd[:, 0] if bd.shape[1] else np.full(len(bg_idx), np.nan)
        details = {
            "false_positive_rate": fpr,
            "false_positive_rate_note": f"larger of the nominal quantile {q:g} and the headline's measured holdout rate",
            "threshold": crit["copy"].threshold,
            "features": self.features,
            "feature_space": _describe(extractor, self.features),
            "criteria": [c.summary() for c in crit.values()],
            "search": {**l2.summary(), "k": k_eff, "method": method,
                       "streams": {k: r.summary() for k, r in res.items() if k in ("l2", "cos")}},
            "n_samples": n_s, "n_holdout": n_h, "n_members": n_mem, "n_background": int(len(bg_idx)),
            "tiles_informative": tiles_used,
            "copied_members": int(len(counts)),
            "most_copied": most_copied,
            "member_duplicates": duplicates,
            "pairs": pairs,
            "similarity_hist": {**sim_hist, "x": "cosine similarity to the nearest member"},
            "background_hist": {"edges": sim_hist["edges"], "counts": sim_hist["background"],
                                "x": "member to second-nearest member (nearest other member) cosine similarity"},
            "distance_hist": {**R.histogram({"samples": d[:, 0], "holdout": dh[:, 0], "background": bg_dist}, lo=0.0),
                              "x": "distance to the nearest member"},
            "similarity_percentiles": R.percentiles(hist_sim),
            "distance_percentiles": R.percentiles({"samples": d[:, 0], "holdout": dh[:, 0], "background": bg_dist},
                                                  ps=(1, 5, 10, 25, 50)),
        }
        parts = ", ".join(f"{c.name} {c.fraction:.1%} (holdout {c.holdout_fpr:.1%})" for c in crit.values() if c.name != "calibrated")
        finding = (f"{copy.mean():.1%} of {n_s} generated samples are copies of members (closer to a member than "
                   f"{1 - q:.0%} of real unseen images are; holdout false-positive rate {crit['copy'].holdout_fpr:.1%}); "
                   f"{len(counts)} distinct members copied. Other criteria: {parts}.")
        if duplicates["n_exact"] or duplicates["n_near"] > duplicates["near_expected_by_chance"]:
            finding += (f" The member set holds {duplicates['n_exact']} exactly duplicated members and "
                        f"{duplicates['n_near']} near duplicates (about {duplicates['near_expected_by_chance']:.1f} "
                        f"expected by chance); duplicates drive memorisation.")
        table = pd.DataFrame({
            "sample": np.arange(n_s), "nearest_member": member_ids[nn[:, 0]], "distance": d[:, 0],
            "second_distance": d[:, 1] if d.shape[1] > 1 else np.nan, "carlini_ratio": cr, "neighbour_ratio": nr,
            "cosine": sim, "cosine_member": member_ids[sim_nn], "tile_score": tile_s,
            **{f"{c.name}_copy" if c.name != "calibrated" else "copy": c.flags for c in crit.values()}})
        return DetectorOutput(metrics=metrics, finding=finding, details=details, table=table,
                              members=_member_table(member_ids, nn[:, 0], copy, nearest, cluster, size, bg_idx,
                                                    radius=crit["copy"].threshold,
                                                    chance=fpr * n_s * R.chance_weights(dh, l2.indices[n_s : n_s + n_h, :k_eff],
                                                                                        n_mem)))


def _member_table(member_ids, nearest_member, copy, nearest_sample, cluster, size, checked, *, radius: float,
                  chance: float) -> pd.DataFrame:
    """One row per member (``privaudit.audit.risk`` columns): the samples copying it (those whose nearest member
    it is, within the radius), its closest sample and that distance, its duplicates."""
    n = len(member_ids)
    near_checked = np.zeros(n, bool)
    near_checked[checked] = True
    d, i = nearest_sample
    return pd.DataFrame({
        "member_id": member_ids, "copies": np.bincount(nearest_member[copy], minlength=n),
        "chance_copies": chance, "closest_sample": np.where(i >= 0, i, -1),
        "closest_distance": np.where(np.isfinite(d), d, np.nan), "copy_radius": radius,
        "duplicate_cluster": cluster, "duplicates": size - 1, "duplicates_checked": near_checked})


def _largest_clusters(cluster: np.ndarray, size: np.ndarray, member_ids: np.ndarray, top: int = 20) -> list[dict]:
    """The largest duplicate clusters: size and member ids (the first 10)."""
    ids = np.unique(cluster[size > 1])
    ids = sorted(ids, key=lambda c: (-int((cluster == c).sum()), int(c)))[:top]
    return [{"size": int((cluster == c).sum()), "members": member_ids[cluster == c][:10].tolist()} for c in ids]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return to_uint8(x)


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.uint8)


def _png(img: np.ndarray, *, target: int = 64) -> str:
    """uint8 (C, H, W) -> PNG data URI about ``target`` px wide (small images upscaled, large ones shrunk)."""
    from PIL import Image

    h = img.shape[-2]
    if h > 2 * target:
        a = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        im = Image.fromarray(np.ascontiguousarray(a))
        im.thumbnail((2 * target, 2 * target))
        img = np.asarray(im)
        img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    return png_data_uri(img, scale=max(1, target // h))


def _describe(extractor, name: str) -> str:
    return extractor.describe()
