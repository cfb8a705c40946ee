"""Nearest-member search with faiss, members streamed in batches.

Replication detectors ask one question many times: for each query vector (a generated
sample, a holdout image, a tile of either), which members are nearest? The member set may
hold millions of images, so it is never held in memory: members arrive batch by batch
(features computed on the fly) and each ``KnnStream`` keeps only its queries and a running
top-k heap (``faiss.ResultHeap``). Memory is O(queries * k + batch), whatever the number
of members; compute is one pass over the members.

Two methods:

- ``exact`` (default): every member batch is searched by brute force (``faiss.knn``, the
  BLAS kernel behind ``IndexFlatL2`` / ``IndexFlatIP``) and merged into the heap. Results
  are the exact k nearest neighbours (up to float32 ties).
- ``ivf``: an inverted-file index (``IndexIVFFlat``) whose coarse quantizer is trained
  once on a random sample of members; members are then added shard by shard (the trained
  empty index is cloned per shard), each shard is searched with ``nprobe`` lists and
  merged, then discarded, so memory stays bounded by the shard size (256 MiB of vectors).
  Approximate: the index's recall is measured against exact search on a random sample of
  the queries, in the same pass over the members, and reported (``Neighbours.recall_at_1/_k``).

``device="cuda"`` runs exact search on a GPU with torch instead (float32 matrix products
with TF32 off, a running top-k kept on the device); the results are the same neighbours
up to float32 ties. IVF stays on the CPU (faiss-cpu). Both devices compute squared
distances as |q|^2 + |x|^2 - 2 q.x (BLAS), so a near-identical pair carries float32
cancellation error of about 1e-7 |x|^2: an exact copy may read 0.01 rather than 0.

``method="auto"`` chooses IVF only where it pays: at least ``ivf_threshold`` members
(default 10,000,000) *and* enough queries to amortise the index build (assigning every
member to one of ``nlist`` lists costs about as much as ``nlist`` exact queries; auto
wants ``queries >= 8 * nlist``). Otherwise exact search is both cheaper and exact. The
threshold is high on purpose: a missed neighbour makes a copy look like a non-copy, and
scanning inverted lists is not BLAS work, so IVF wins only when it scans a small share of
the lists. Measured (benchmarks/search.py, 10,000 queries, random Gaussian vectors, the
worst case for IVF, 16 CPU cores): N = 1,000,000, d = 64, nlist 1024: nprobe 64 gave
recall@1 0.63 at 1.7x the exact speed, nprobe 256 recall 0.93 at 1.0x. Real image
features cluster, which raises recall at a given nprobe; the recall is always measured.

Distances: ``metric="l2"`` returns Euclidean distances (not squared); ``metric="ip"``
returns inner products (cosine similarities when both sides are L2-normalised: see
``l2_normalize``), sorted descending.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

METRICS = ("l2", "ip")
SHARD_BYTES = 256 << 20  # vectors an IVF shard holds before it is searched and emptied


def _faiss():
    import faiss

    return faiss


def _metric(metric: str) -> int:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    faiss = _faiss()
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def as_f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32: inner product = cosine."""
    x = as_f32(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@dataclass(frozen=True)
class Neighbours:
    """k nearest members of each query, nearest first.

    ``distances``: (nq, k) Euclidean distances (``l2``) or inner products (``ip``);
    ``indices``: (nq, k) member positions (-1 where fewer than k members exist).
    ``recall_at_1`` / ``recall_at_k`` are measured for approximate search, None for exact.
    """

    distances: np.ndarray
    indices: np.ndarray
    metric: str
    method: str
    n_members: int
    recall_at_1: float | None = None
    recall_at_k: float | None = None
    recall_queries: int = 0
    params: dict | None = None

    def summary(self) -> dict:
        """JSON-ready description (for results' details)."""
        return {"method": self.method, "metric": self.metric, "n_members": self.n_members,
                "k": int(self.indices.shape[1]), "queries": int(self.indices.shape[0]),
                "recall_at_1": self.recall_at_1, "recall_at_k": self.recall_at_k,
                "recall_queries": self.recall_queries, **(self.params or {})}


class KnnStream:
    """Exact (or IVF) k-NN of fixed queries against members fed with ``add`` batch by batch.

    ``index``: None for exact search, or a *trained, empty* faiss IVF index (see
    ``train_ivf``); it is cloned and filled shard by shard (``shard_size`` members; default
    256 MiB of vectors, at least 16,384), so it never holds more than one shard. With an IVF index, ``recall_sample`` queries are also
    searched exactly in the same pass, to measure recall. ``device``: "cpu" (faiss) or a
    torch CUDA device for exact search.
    """

    def __init__(self, queries: np.ndarray, *, k: int, metric: str = "l2", index=None,
                 shard_size: int | None = None, recall_sample: int = 1000, seed: int = 0, device: str = "cpu"):
        self.queries = as_f32(queries)
        if self.queries.ndim != 2:
            raise ValueError(f"queries must be 2-d (n, d), got shape {self.queries.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.metric = int(k), metric
        self._faiss_metric = _metric(metric)
        self._heap = _faiss().ResultHeap(len(self.queries), self.k, keep_max=metric == "ip")
        self.shard_size = int(shard_size or max(16_384, SHARD_BYTES // (4 * max(1, self.queries.shape[1]))))
        self._template = index
        self._shard: Any = None  # a faiss index filled with the current shard
        self._exact = None
        self.n_members = 0
        self._gpu = None
        if str(device) != "cpu":
            if index is not None:
                raise ValueError("IVF search runs on the CPU (faiss-cpu); use device='cpu' with an index")
            self._gpu = _TorchTopK(self.queries, self.k, metric, device)
        if index is not None:
            rng = np.random.default_rng(seed)
            m = min(recall_sample, len(self.queries))
            self._recall_idx = np.sort(rng.choice(len(self.queries), size=m, replace=False))
            self._exact = KnnStream(self.queries[self._recall_idx], k=self.k, metric=metric)

    def add(self, members: np.ndarray, start: int | None = None) -> None:
        """Search one batch of members (rows ``start .. start + len``; default: next in order)."""
        xb = as_f32(members)
        if xb.ndim != 2 or xb.shape[1] != self.queries.shape[1]:
            raise ValueError(f"member batch of shape {xb.shape} does not match queries of dimension {self.queries.shape[1]}")
        start = self.n_members if start is None else int(start)
        self.n_members = max(self.n_members, start + len(xb))
        if len(xb) == 0 or len(self.queries) == 0:
            return
        if self._gpu is not None:
            self._gpu.add(xb, start)
            return
        if self._template is None:
            d, i = _faiss().knn(self.queries, xb, min(self.k, len(xb)), metric=self._faiss_metric)
            self._heap.add_result(d, np.where(i >= 0, i + start, -1))
            return
        assert self._exact is not None  # made with the IVF template
        self._exact.add(xb, start)
        if self._shard is None:
            self._shard = _faiss().clone_index(self._template)
        shard = self._shard
        shard.add_with_ids(xb, np.arange(start, start + len(xb), dtype=np.int64))
        if shard.ntotal >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if self._shard is not None and self._shard.ntotal:
            d, i = self._shard.search(self.queries, self.k)
            self._heap.add_result(d, i)
            self._shard.reset()  # keeps the trained quantizer, drops the shard's vectors

    def result(self) -> Neighbours:
        self._flush()
        if self._gpu is not None:
            d, i = self._gpu.result()
        else:
            self._heap.finalize()
            d, i = self._heap.D.copy(), self._heap.I.copy()
        if self.metric == "l2":
            d = np.sqrt(np.maximum(d, 0))
        d[i < 0] = np.inf if self.metric == "l2" else -np.inf
        if self._template is None:
            return Neighbours(d, i, self.metric, "exact", self.n_members,
                              params={"device": "cpu" if self._gpu is None else str(self._gpu.device)})
        assert self._exact is not None
        ex = self._exact.result()
        mine = i[self._recall_idx]
        r1 = float(np.mean(mine[:, 0] == ex.indices[:, 0]))
        rk = float(np.mean([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max(1, (b >= 0).sum())
                            for a, b in zip(mine, ex.indices)]))
        t = self._template
        return Neighbours(d, i, self.metric, "ivf", self.n_members, recall_at_1=r1, recall_at_k=rk,
                          recall_queries=len(self._recall_idx),
                          params={"nlist": int(t.nlist), "nprobe": int(t.nprobe), "shard_size": self.shard_size})


class _TorchTopK:
    """Exact running top-k on a torch device: squared L2 (or inner products) by matrix products."""

    def __init__(self, queries: np.ndarray, k: int, metric: str, device, query_chunk: int = 8192):
        import torch

        self.torch, self.device, self.k, self.ip, self.chunk = torch, torch.device(device), k, metric == "ip", query_chunk
        self.q = torch.from_numpy(queries).to(self.device)
        self.qn = (self.q * self.q).sum(1, keepdim=True)
        fill = float("-inf") if self.ip else float("inf")
        self.best_d = torch.full((len(queries), k), fill, device=self.device)
        self.best_i = torch.full((len(queries), k), -1, dtype=torch.long, device=self.device)

    def add(self, xb: np.ndarray, start: int) -> None:
        torch = self.torch
        x = torch.from_numpy(xb).to(self.device)
        xn = (x * x).sum(1)
        ids = torch.arange(start, start + len(x), device=self.device)
        kk = min(self.k, len(x))
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 products, as faiss computes them
        try:
            for s in range(0, len(self.q), self.chunk):
                prod = self.q[s : s + self.chunk] @ x.T
                dist = prod if self.ip else (self.qn[s : s + self.chunk] + xn[None] - 2 * prod).clamp_min_(0)
                v, j = dist.topk(kk, dim=1, largest=self.ip)
                v = torch.cat([self.best_d[s : s + self.chunk], v], 1)
                j = torch.cat([self.best_i[s : s + self.chunk], ids[j]], 1)
                v, pick = v.topk(self.k, dim=1, largest=self.ip, sorted=True)
                self.best_d[s : s + self.chunk], self.best_i[s : s + self.chunk] = v, j.gather(1, pick)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.best_d.float().cpu().numpy(), self.best_i.cpu().numpy()


def default_nlist(n_members: int) -> int:
    """sqrt(N) lists, a power of two: balances list assignment against scanned lists."""
    return int(2 ** round(math.log2(max(16.0, math.sqrt(n_members)))))


def choose_method(method: str, *, n_members: int, n_queries: int, ivf_threshold: int = 10_000_000,
                  nlist: int | None = None) -> str:
    """Resolve ``auto`` to ``exact`` or ``ivf`` (see the module docstring)."""
    if method not in ("auto", "exact", "ivf"):
        raise ValueError(f"unknown search method {method!r}; choose auto, exact or ivf")
    if method != "auto":
        return method
    nl = nlist or default_nlist(n_members)
    return "ivf" if n_members >= ivf_threshold and n_queries >= 8 * nl else "exact"


def train_ivf(train: np.ndarray, *, metric: str = "l2", nlist: int, nprobe: int | None = None, seed: int = 0):
    """A trained, empty ``IndexIVFFlat`` (k-means coarse quantizer on ``train``)."""
    faiss = _faiss()
    train = as_f32(train)
    d = train.shape[1]
    quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, _metric(metric))
    index.cp.seed = seed
    index.cp.min_points_per_centroid = min(39, max(1, len(train) // nlist))  # small sets: train on what there is
    index.train(train)
    index.nprobe = nprobe or max(1, nlist // 8)
    return index


class VectorSource(Protocol):
    """Members as vectors: a length, batches in order, and random access for sampling."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]: ...

    def take(self, index: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """An in-memory or memory-mapped (n, d) array as a ``VectorSource``."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for s in range(0, len(self.array), batch_size):
            yield s, as_f32(self.array[s : s + batch_size])

    def take(self, index: np.ndarray) -> np.ndarray:
        return as_f32(self.array[np.sort(np.asarray(index))])


class FunctionSource:
    """Members generated or loaded chunk by chunk: ``make(chunk_number) -> (chunk_size, d)``.

    Only one chunk exists at a time; ``take`` regenerates the chunks it needs. The
    benchmark uses it to stream a million random vectors without holding them.
    """

    def __init__(self, n: int, chunk: int, make: Callable[[int], np.ndarray]):
        self.n, self.chunk, self.make = int(n), int(chunk), make

    def __len__(self) -> int:
        return self.n

    def _chunk(self, c: int) -> np.ndarray:
        return as_f32(self.make(c))[: min(self.chunk, self.n - c * self.chunk)]

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        # batch_size is advisory: chunks are the unit of generation
        for c in range(math.ceil(self.n / self.chunk)):
            yield c * self.chunk, self._chunk(c)

    def take(self, index: np.ndarray) -> np.ndarray:
        index = np.sort(np.asarray(index))
        out = []
        for c in np.unique(index // self.chunk):
            x = self._chunk(int(c))
            out.append(x[index[index // self.chunk == c] - c * self.chunk])
        return np.concatenate(out)


def plan_stream(queries: np.ndarray, source: VectorSource, *, k: int, metric: str = "l2", method: str = "auto",
                ivf_threshold: int = 10_000_000, nlist: int | None = None, nprobe: int | None = None,
                train_size: int | None = None, shard_size: int | None = None, recall_sample: int = 1000,
                seed: int = 0, train: np.ndarray | None = None, device: str = "cpu") -> KnnStream:
    """A ``KnnStream`` for ``queries`` against ``source``, with IVF trained when chosen.

    ``train``: vectors to train the IVF quantizer on (default: a random sample of
    ``train_size`` members drawn with ``source.take``, 40 per list).
    """
    n = len(source)
    chosen = choose_method(method, n_members=n, n_queries=len(queries), ivf_threshold=ivf_threshold, nlist=nlist)
    index = None
    if chosen == "ivf":
        nl = nlist or default_nlist(n)
        if train is None:
            m = min(n, train_size or 40 * nl)
            train = source.take(np.random.default_rng(seed).choice(n, size=m, replace=False))
        index = train_ivf(train, metric=metric, nlist=nl, nprobe=nprobe, seed=seed)
    return KnnStream(queries, k=min(k, max(1, n)), metric=metric, index=index, shard_size=shard_size,
                     recall_sample=recall_sample, seed=seed, device="cpu" if index is not None else device)


def search(queries: np.ndarray, source: VectorSource | np.ndarray, *, k: int = 1, metric: str = "l2",
           method: str = "auto", batch_size: int = 65_536, **kw) -> Neighbours:
    """k nearest members of ``queries`` in one streamed pass over ``source``."""
    if isinstance(source, np.ndarray):
        source = ArraySource(source)
    stream = plan_stream(queries, source, k=k, metric=metric, method=method, **kw)
    run_streams(source.batches(batch_size), [stream])
    return stream.result()


def run_streams(batches: Iterable[tuple[int, np.ndarray]], streams: list[KnnStream]) -> None:
    """Feed every member batch to every stream (one pass over the members)."""
    for start, xb in batches:
        for s in streams:
            s.add(xb, start)
