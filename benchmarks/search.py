"""Nearest-neighbour search: privaudit.stats.search (faiss, streamed) vs scikit-learn brute force.

For each member count N and dimension d: Q query vectors against N random Gaussian member
vectors, k nearest neighbours (L2), measured side by side in one run on one machine:

- ours, exact: ``privaudit.stats.search.KnnStream`` fed member chunks as they are generated
  (only one chunk of ``--chunk`` vectors exists at a time), run in a fresh child process so
  its peak memory (``ru_maxrss``, minus the child's resident size before the search) is
  its own. Search time excludes generating the vectors; total time includes it.
- ours, IVF: the same stream with an IVF index (coarse quantizer trained on 40 vectors per
  list, members added shard by shard); recall@1 against the exact result for every query,
  for each ``--nprobe`` value (default: privaudit's default, nlist/8).
- ours, exact on a GPU (``--gpu``, when torch sees CUDA): the same stream with
  ``device="cuda"``; peak GPU memory from ``torch.cuda.max_memory_allocated``.
- scikit-learn: ``NearestNeighbors(algorithm="brute").fit(X).kneighbors(Q)`` with every
  member in memory (float32), same thread count.

Printed per case: both times, their ratio, whether the exact neighbours are identical
(indices equal; where not, whether the distances tie to float32 precision), IVF recall
and speed, and peak memory of the streamed search. Machines are shared: read ratios, not
absolute times.

    python benchmarks/search.py            # Q=10,000; N=100,000 and 1,000,000; d=64 and 512
    python benchmarks/search.py --quick    # CI smoke run: Q=200; N=5,000; d=16 (seconds; timings meaningless)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def chunk_maker(d: int, chunk: int, seed: int):
    """Chunk c of the member set: the same vectors wherever and whenever it is generated."""
    return lambda c: np.random.default_rng([seed, c]).standard_normal((chunk, d), dtype=np.float32)


def queries(nq: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 10**9]).standard_normal((nq, d), dtype=np.float32)


def rss_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(a: argparse.Namespace) -> None:
    """One streamed search in this (fresh) process; prints JSON, saves neighbours to a .npy."""
    import faiss

    from privaudit.stats.search import FunctionSource, KnnStream, default_nlist, train_ivf

    faiss.omp_set_num_threads(a.threads)
    q = queries(a.nq, a.d, a.seed)
    src = FunctionSource(a.n, a.chunk, chunk_maker(a.d, a.chunk, a.seed))
    out = {"method": a.method, "device": a.device}
    t0 = time.perf_counter()
    index = None
    if a.method == "ivf":
        nlist = default_nlist(a.n)
        train = src.take(np.random.default_rng(a.seed).choice(a.n, size=min(a.n, 40 * nlist), replace=False))
        index = train_ivf(train, nlist=nlist, seed=a.seed)
        del train
        out.update(nlist=nlist, train_s=time.perf_counter() - t0)
    sync = lambda: None
    if a.device.startswith("cuda"):
        import torch

        torch.zeros(1, device=a.device)  # CUDA context before the baseline
        sync = torch.cuda.synchronize
    runs = []
    for nprobe in ([int(v) for v in a.nprobe.split(",")] if index is not None and a.nprobe else [0]):
        if index is not None and nprobe:
            index.nprobe = nprobe
        base = rss_kb()
        t1 = time.perf_counter()
        stream = KnnStream(q, k=a.k, index=index, recall_sample=min(1000, a.nq), seed=a.seed, device=a.device)
        t_search = 0.0
        for start, xb in src.batches(a.chunk):
            t = time.perf_counter()
            stream.add(xb, start)
            sync()
            t_search += time.perf_counter() - t
            del xb
        t = time.perf_counter()
        res = stream.result()
        t_search += time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        runs.append({"nprobe": int(index.nprobe) if index is not None else None, "search_s": t_search,
                     "total_s": time.perf_counter() - t1 + out.get("train_s", 0.0), "peak_rss_mb": peak / 1024,
                     "rss_before_search_mb": base / 1024, "peak_minus_before_mb": (peak - base) / 1024,
                     "recall_at_1_sampled": res.recall_at_1})
        if a.device.startswith("cuda"):
            runs[-1]["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        np.save(a.save.replace(".npy", f"-{len(runs) - 1}.npy"),
                np.stack([res.indices.astype(np.float64), res.distances.astype(np.float64)]))
    out["runs"] = runs
    print(json.dumps(out))


def run_child(a, n: int, d: int, method: str, save: str, device: str = "cpu") -> dict:
    cmd = [sys.executable, __file__, "--_child", "--n", str(n), "--d", str(d), "--nq", str(a.queries),
           "--k", str(a.k), "--chunk", str(a.chunk), "--threads", str(a.threads), "--seed", str(a.seed),
           "--method", method, "--save", save, "--device", device, "--nprobe", a.nprobe]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def sklearn_knn(n: int, d: int, a) -> tuple[np.ndarray, np.ndarray, float, float]:
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    make = chunk_maker(d, a.chunk, a.seed)
    X = np.empty((n, d), np.float32)
    for c in range(0, n, a.chunk):
        X[c : c + a.chunk] = make(c // a.chunk)[: min(a.chunk, n - c)]
    q = queries(a.queries, d, a.seed)
    with threadpool_limits(a.threads):
        t = time.perf_counter()
        dist, idx = NearestNeighbors(n_neighbors=a.k, algorithm="brute").fit(X).kneighbors(q)
        secs = time.perf_counter() - t
    return dist, idx, secs, X.nbytes / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, for a smoke test)")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--dims", default="64,512")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--chunk", type=int, default=50_000, help="members generated (and searched) per batch")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ivf", action="store_true")
    p.add_argument("--nprobe", default="", help="comma-separated IVF nprobe values (default: privaudit's)")
    p.add_argument("--gpu", action="store_true", help="also time exact search on CUDA (torch)")
    p.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)  # "cpu:0" exercises the torch path
    p.add_argument("--json", type=Path, help="also write all results here")
    for hidden in ("--_child",):
        p.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    for hidden, typ in (("--n", int), ("--d", int), ("--nq", int), ("--method", str), ("--save", str),
                        ("--device", str)):
        p.add_argument(hidden, type=typ, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.device = a.device or "cpu"
    if a._child:
        child(a)
        return 0
    if a.quick:
        a.queries, a.sizes, a.dims, a.chunk = 200, "5000", "16", 1000
    sizes, dims = [int(s) for s in a.sizes.split(",")], [int(s) for s in a.dims.split(",")]
    import faiss
    import sklearn

    print(f"# {a.queries} queries, k={a.k}, threads={a.threads}, faiss {faiss.__version__}, "
          f"scikit-learn {sklearn.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in dims:
            for n in sizes:
                ours = run_child(a, n, d, "exact", f"{tmp}/exact.npy")["runs"][0]
                oi, od = np.load(f"{tmp}/exact-0.npy")
                oi = oi.astype(np.int64)
                sd, si, sk_s, sk_mb = sklearn_knn(n, d, a)
                row = {"n": n, "d": d, "ours_search_s": ours["search_s"], "ours_total_s": ours["total_s"],
                       "sklearn_s": sk_s, "speedup_search": sk_s / ours["search_s"],
                       "speedup_total": sk_s / ours["total_s"], **_agreement(oi, od, si, sd),
                       "stream_peak_minus_before_mb": ours["peak_minus_before_mb"],
                       "stream_peak_rss_mb": ours["peak_rss_mb"], "sklearn_members_mb": sk_mb}
                if a.gpu:
                    g = run_child(a, n, d, "exact", f"{tmp}/gpu.npy", device=a.gpu_device)["runs"][0]
                    gi, gd = np.load(f"{tmp}/gpu-0.npy")
                    row["gpu"] = {"device": a.gpu_device, "search_s": g["search_s"], "speedup_vs_sklearn": sk_s / g["search_s"],
                                  "speedup_vs_faiss_cpu": ours["search_s"] / g["search_s"],
                                  "gpu_peak_mb": g.get("gpu_peak_mb", float("nan")), **_agreement(gi.astype(np.int64), gd, si, sd)}
                print(_line(row), flush=True)  # the exact comparison first: IVF passes can be slow
                if not a.no_ivf:
                    ivf = run_child(a, n, d, "ivf", f"{tmp}/ivf.npy")
                    row["ivf"] = []
                    for j, r in enumerate(ivf["runs"]):
                        ii = np.load(f"{tmp}/ivf-{j}.npy")[0].astype(np.int64)
                        row["ivf"].append({"nlist": ivf["nlist"], "nprobe": r["nprobe"], "train_s": ivf["train_s"],
                                           "search_s": r["search_s"],
                                           "recall_at_1": float((ii[:, 0] == oi[:, 0]).mean()),
                                           "recall_at_1_sampled": r["recall_at_1_sampled"],
                                           "speedup_vs_exact": ours["search_s"] / (r["search_s"] + ivf["train_s"]),
                                           "peak_minus_before_mb": r["peak_minus_before_mb"]})
                    print(_ivf_lines(row), flush=True)
                rows.append(row)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


def _agreement(oi: np.ndarray, od: np.ndarray, si: np.ndarray, sd: np.ndarray) -> dict:
    same = oi == si
    # a differing index is a tie when both neighbours are equally far to float32 precision
    tie = np.abs(od - sd) <= 1e-5 * np.maximum(1.0, np.abs(sd))
    return {"identical_indices": float(same.mean()), "mismatches_all_ties": bool(tie[~same].all()),
            "max_abs_distance_diff": float(np.abs(od - sd).max())}


def _line(r: dict) -> str:
    s = (f"N={r['n']:>9,} d={r['d']:>3}: ours exact {r['ours_search_s']:7.2f}s search "
         f"({r['ours_total_s']:6.2f}s incl. generating) | sklearn brute {r['sklearn_s']:7.2f}s | "
         f"ratio {r['speedup_search']:5.1f}x ({r['speedup_total']:4.1f}x incl. generating) | identical "
         f"{r['identical_indices']:.4%}{' (rest: exact ties)' if r['identical_indices'] < 1 and r['mismatches_all_ties'] else ''}"
         f" max|dd| {r['max_abs_distance_diff']:.1e} | stream peak +{r['stream_peak_minus_before_mb']:.0f} MiB "
         f"(sklearn holds {r['sklearn_members_mb']:.0f} MiB of members)")
    if "gpu" in r:
        g = r["gpu"]
        s += (f"\n    ours exact on {g['device']} (torch): {g['search_s']:.3f}s search = {g['speedup_vs_sklearn']:.1f}x sklearn, "
              f"{g['speedup_vs_faiss_cpu']:.1f}x faiss-cpu | identical {g['identical_indices']:.4%}"
              f"{' (rest: exact ties)' if g['identical_indices'] < 1 and g['mismatches_all_ties'] else ''} "
              f"| GPU peak {g['gpu_peak_mb']:.0f} MiB")
    return s


def _ivf_lines(r: dict) -> str:
    s = ""
    for v in r.get("ivf", []):
        s += (f"\n    IVF nlist={v['nlist']} nprobe={v['nprobe']}: recall@1 {v['recall_at_1']:.3f} "
              f"(in-stream estimate {v['recall_at_1_sampled']:.3f}), train {v['train_s']:.2f}s + search "
              f"{v['search_s']:.2f}s = {v['speedup_vs_exact']:.1f}x faster than exact, "
              f"peak +{v['peak_minus_before_mb']:.0f} MiB")
    return s.lstrip("\n")


if __name__ == "__main__":
    raise SystemExit(main())
