"""Scale-out throughput: the local engine vs the Ray engine with 1 and with N workers, same work.

The work is per-image scoring (the part ``--engine ray`` distributes): an attack fitted once in
this process scores ``--images`` images (the digits fixture's members and holdout, tiled), cut
into shards of ``--batch-size`` images, through ``privaudit.audit.engine`` exactly
as an audit does (shards written to a scratch store, so the cost of writing them is included).
Measured side by side in one run, in this order: local engine (torch with ``--threads``), Ray
with 1 worker, Ray with ``--workers`` workers (each actor one CPU and one torch thread, or one
GPU), ``--repeats`` times each, best kept (load only ever slows a timing down). Each timing is one
run (one engine session) that scores the images in ``--stages`` stages, as an audit scores members
and holdout for each attack: Ray's actors start once per run and each stage ships its model to
them once. ``startup`` is measured apart with a run of the same work on a single image and
printed, and the rates are also given with it subtracted (the steady state of a long run).

Ray's overhead per shard: stages whose shards do nothing, (time of ``--overhead-shards`` shards -
time of 1 shard) / (shards - 1), best of 3 each, on 1 worker.

Printed: images/s for each, the ratios ray(N)/ray(1) (goal >= 1.7 for 2 workers on 2 idle
cores) and ray(1)/local (goal >= 0.85), the per-shard overhead, the load average before and
after, and whether the scores of every engine were identical (they must be).

    python benchmarks/scale.py                       # 2 CPU workers vs 1 vs local, digits fixture
    python benchmarks/scale.py --images 32768 --attack loss --repeats 2
    python benchmarks/scale.py --gpu                 # a GPU machine: all GPUs as actors (see --help)
    python benchmarks/scale.py --ray-address auto    # an existing cluster (`ray start --head`)
    python benchmarks/scale.py --quick               # CI smoke run: tiny target, 32 images (timings meaningless)

``--gpu``: the model is a full-size pixel UNet (the google/ddpm-celebahq-256 architecture,
random weights, nothing downloaded) on 256x256 random images; the local engine runs on
cuda:0, Ray runs one actor per GPU (1 worker vs every GPU of the cluster). ``--gpu --quick`` runs the
same code on a small UNet of the same block types at 64 px, on the CPU when there is no GPU (Ray then
runs ``--workers`` CPU actors).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _quick import digits_target  # benchmarks/_quick.py, beside this file
from diffusers import DDPMScheduler, UNet2DModel

from privaudit.api.registry import Registry
from privaudit.audit.engine import ShardStore, Work
from privaudit.audit.engines import get_engine, session
from privaudit.data.sets import ImageSet, load_images
from privaudit.model.denoiser import UNetDenoiser
from privaudit.model.target import load_target

DDPM256 = dict(sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
               block_out_channels=(128, 128, 256, 256, 512, 512),
               down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                 "DownBlock2D"),
               up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))
DDPM256_QUICK = {**DDPM256, "sample_size": 64, "block_out_channels": (8, 8, 16, 16, 32, 32), "norm_num_groups": 8}


class _Nothing(Work):
    """A shard that costs nothing: what is left of its time is the engine's own overhead."""

    stage = "overhead"

    def run(self, item):
        return np.zeros(1, dtype=np.float32)


def digits_work(n: int, *, device: str, quick: bool):
    with digits_target(None, quick=quick) as target:  # read here: a --quick one is removed
        den, _, _ = load_target(target / "model", device=device)
        pool = np.concatenate([load_images(target / s, name=s).uint8() for s in ("members", "holdout")])
    return den, ImageSet.from_array(np.resize(pool, (n, *pool.shape[1:])), name="bench")


def ddpm256_work(n: int, *, device: str, quick: bool):
    cfg = DDPM256_QUICK if quick else DDPM256
    torch.manual_seed(0)
    den = UNetDenoiser(unet=UNet2DModel(**cfg), scheduler=DDPMScheduler(num_train_timesteps=1000), device=device)
    rng = np.random.default_rng(0)
    size = cfg["sample_size"]
    return den, ImageSet.from_array(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), name="bench")


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attack", default="secmi", help="attack whose scoring is distributed (default: secmi)")
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=256, help="images per batch and per shard")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers of the parallel run (--gpu: all GPUs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the local engine (an actor uses 1)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--stages", type=int, default=4, help="scoring stages per run, the images split among them "
                    "(an audit scores members and holdout per attack: 4 = two attacks); actors start once per run")
    ap.add_argument("--overhead-shards", type=int, default=32)
    ap.add_argument("--ray-address", default=None, help="auto or HOST:PORT (default: a local Ray instance)")
    ap.add_argument("--gpu", action="store_true", help="full-size 256 px UNet on GPUs, one actor per GPU")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: tiny model (with --gpu: on the CPU if no GPU), 32 images, shards of 8")
    a = ap.parse_args(argv)
    if a.quick:
        # one Ray stage (1 worker): each stage starts actors, seconds of a CI run; no start-up/overhead stages
        a.images, a.batch_size, a.repeats, a.workers = 32, 8, 1, 1

    import ray

    load_before = os.getloadavg()
    torch.set_num_threads(a.threads)
    device = "cuda" if a.gpu and (torch.cuda.is_available() or not a.quick) else "cpu"
    den, images = (ddpm256_work if a.gpu else digits_work)(a.images, device=device, quick=a.quick)
    attack = Registry.build().create(a.attack)
    fit = images.tensor(range(min(32, len(images))), device=den.device)
    attack.fit(den, members=fit[: len(fit) // 2], holdout=fit[len(fit) // 2:], seed=0)

    if a.ray_address:
        ray.init(address=a.ray_address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=None if device == "cuda" else a.workers, include_dashboard=False, log_to_driver=False,
                 object_store_memory=1 << 30)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = gpus if a.gpu and gpus else a.workers
    scratch = Path(tempfile.mkdtemp(prefix="privaudit-scale-"))

    def score(engine: str, n_workers: int | None, subset: ImageSet = images, stages: int = 1):
        """One run (one engine session) scoring ``subset`` in ``stages`` stages, as an audit scores members,
        holdout and each attack in turn: Ray's actors start once per run."""
        root = scratch / f"{engine}-{n_workers}-{time.perf_counter_ns()}"  # fresh store: nothing is reused
        parts = np.array_split(np.arange(len(subset)), stages)
        with session(engine=engine, workers=n_workers, store=ShardStore(root, run_key="bench")) as run:
            return np.concatenate([run.score(attack, den, subset.subset(p), batch_size=a.batch_size, seed=0,
                                             label=f"bench{k}", prompt="caption") for k, p in enumerate(parts)])

    def startup(n_workers: int) -> float:
        """A stage of the same work on one image: actors started, model and attack shipped and set up."""
        t0 = time.perf_counter()
        score("ray", n_workers, images.subset([0]))
        return time.perf_counter() - t0

    try:
        t_local, s_local = timed(lambda: score("local", None, stages=a.stages), a.repeats)
        t_ray1, s_ray1 = timed(lambda: score("ray", 1, stages=a.stages), a.repeats)
        t_rayn, s_rayn = (t_ray1, s_ray1) if workers == 1 else \
            timed(lambda: score("ray", workers, stages=a.stages), a.repeats)
        up1 = upn = per_shard = None
        if not a.quick:
            up1 = min(startup(1) for _ in range(a.repeats))
            upn = up1 if workers == 1 else min(startup(workers) for _ in range(a.repeats))
            k = a.overhead_shards
            eng = get_engine("ray", workers=1)

            def nothing(shards: int) -> float:
                t0 = time.perf_counter()
                list(eng.map(_Nothing(), [(i, (lambda: {"x": np.zeros(1)})) for i in range(shards)]))
                return time.perf_counter() - t0

            per_shard = max(0.0, min(nothing(k) for _ in range(3)) - min(nothing(1) for _ in range(3))) / (k - 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    n = len(images)
    identical = bool(np.array_equal(s_ray1, s_rayn))
    close_to_local = bool(np.allclose(s_ray1, s_local, rtol=1e-5, atol=1e-7))
    rate = {"local": n / t_local, "ray1": n / t_ray1, f"ray{workers}": n / t_rayn}
    seconds = {"local": t_local, "ray1": t_ray1, f"ray{workers}": t_rayn}
    ratios = {f"ray{workers}/ray1": t_ray1 / t_rayn, "ray1/local": t_local / t_ray1}
    if up1 is not None and upn is not None:  # start-up measured: the steady state of a long stage too
        rate.update({"ray1_steady": n / max(t_ray1 - up1, 1e-9), f"ray{workers}_steady": n / max(t_rayn - upn, 1e-9)})
        seconds.update({"ray1_startup": up1, f"ray{workers}_startup": upn})
        ratios.update({f"ray{workers}/ray1 (steady)": (t_ray1 - up1) / max(t_rayn - upn, 1e-9),
                       "ray1/local (steady)": t_local / max(t_ray1 - up1, 1e-9)})
    report = {
        "work": {"attack": a.attack, "images": n, "stages_per_run": a.stages, "batch_size": a.batch_size,
                 "device": device,
                 "model": ("ddpm-celebahq-256 architecture" + (" (small, --quick)" if a.quick else "")) if a.gpu
                 else "digits " + ("tiny target (--quick)" if a.quick else "fixture"),
                 "local_threads": a.threads, "workers": workers},
        "images_per_s": {k_: round(v, 2) for k_, v in rate.items()},
        "seconds": {k_: round(v, 2) for k_, v in seconds.items()},
        "ratios": {k_: round(v, 3) for k_, v in ratios.items()},
        "ray_overhead_per_shard_ms": None if per_shard is None else round(per_shard * 1000, 2),
        "scores_identical_across_worker_counts": identical, "scores_equal_local_within_float_rounding": close_to_local,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "gpus": gpus,
    }
    print(json.dumps(report, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
