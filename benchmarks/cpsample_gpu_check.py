"""Short scripted check of CPSample's CUDA path (issue 5): guard training, protected sampling,
the protected pipeline's save / ``DiffusionPipeline.from_pretrained`` / ``__call__`` round trip,
and the overhead benchmark, all on the GPU. CPU is the tested path; this is the GPU smoke test.

    python benchmarks/cpsample_gpu_check.py [--target DIR] [--out DIR]
    python benchmarks/cpsample_gpu_check.py --quick    # CI smoke run: tiny target, few images and steps, CPU if no GPU

``--target``: a built digits fixture (``privaudit fixture digits --out DIR``; default: the cached one).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cpsample as bench  # benchmarks/cpsample.py, beside this file
import numpy as np
import torch
from _quick import digits_target  # benchmarks/_quick.py, beside this file
from diffusers import DDIMScheduler, DDPMPipeline, DiffusionPipeline

from privaudit.data.sets import load_images
from privaudit.model.denoiser import sample
from privaudit.model.target import load_target
from privaudit.plugins.mitigations.cpsample import CPSample
from privaudit.plugins.mitigations.cpsample.guard import guard_for
from privaudit.plugins.mitigations.cpsample.pipeline import CPSamplePipeline
from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser
from privaudit.plugins.mitigations.cpsample.train import random_labels, train_guard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=Path, help="digits fixture folder (default: the cached one, built if missing)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    ap.add_argument("--device", default=None, help="cuda (the point, the default); cpu only to dry-run this script")
    ap.add_argument("--max-steps", type=int, help="cap guard training (dry runs)")
    ap.add_argument("--batches", default="256,2048", help="benchmark batch sizes")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: tiny target, 5 guard steps, a few images and steps; the CPU when there is no GPU")
    a = ap.parse_args(argv)
    if a.quick:
        a.max_steps, a.batches = a.max_steps or 5, "8"
    dev = torch.device(a.device or ("cpu" if a.quick and not torch.cuda.is_available() else "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: pass --device cpu to dry-run this script, or --quick")
    # sizes: (images, steps) of the copy check, the DDPM draw, the scale-0 check and the pipeline round trip
    n_copy, n_ddpm, n_same, n_pipe, steps, few = (16, 8, 4, 4, 3, 3) if a.quick else (256, 64, 32, 16, 50, 20)

    report: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__}
    with digits_target(a.target, quick=a.quick) as target:  # read here: a --quick one is removed
        raw, _, pipe = load_target(target / "model", device=str(dev))
        c, size, _ = raw.sample_shape
        load = lambda n: load_images(target / n, name=n, channels=c, size=size).tensor(device=dev)
        members, holdout, reference = load("members"), load("holdout"), load("reference")
    p = CPSample().get_params()
    torch.manual_seed(0)
    guard = guard_for(pipe.unet.config, block_out_channels=p["block_out_channels"], lipschitz=p["lipschitz"],
                      num_train_timesteps=len(raw.alphas_cumprod)).to(dev)
    stats = train_guard(guard, members=members, labels=torch.from_numpy(random_labels(len(members), seed=0)),
                        alphas_cumprod=raw.alphas_cumprod, nonmembers=reference, nonmember_weight=p["nonmember_weight"],
                        max_steps=a.max_steps or p["max_steps"], batch_size=p["batch_size"], lr=p["lr"],
                        target_accuracy=p["target_accuracy"], fit_t=p["fit_t"], progress=False)
    report["guard_training"] = {"steps": stats.steps, "seconds": stats.seconds, "fit_accuracy": stats.fit_accuracy,
                                "reached_target": stats.reached_target}

    # copies before / after on the GPU (pixel nearest-member criterion calibrated on holdout)
    m, h = members.flatten(1), holdout.flatten(1)
    thr = torch.quantile(torch.cdist(h, m).min(1).values, 0.01)
    copy = lambda x: float((torch.cdist(x.to(dev).flatten(1), m).min(1).values < thr).float().mean())
    prot = ProtectedDenoiser(base=raw, guard=guard, alpha=p["alpha"], scale=p["scale"])
    start = time.perf_counter()
    x_raw = sample(raw, n=n_copy, steps=steps, seed=0)
    x_prot = sample(prot, n=n_copy, steps=steps, seed=0)
    x_ddpm = sample(prot, n=n_ddpm, steps=steps, sampler="ddpm", seed=0)
    report["copy_fraction"] = {"raw": copy(x_raw), "protected": copy(x_prot), "protected_ddpm": copy(x_ddpm)}
    report["scale0_bit_identical"] = bool(torch.equal(sample(prot.with_params(scale=0.0), n=n_same, steps=few, seed=1),
                                                      sample(raw, n=n_same, steps=few, seed=1)))
    report["sampling_seconds"] = round(time.perf_counter() - start, 2)

    # the protected pipeline: save, load back with DiffusionPipeline.from_pretrained, sample on the GPU
    folder = a.out / "protected"
    CPSamplePipeline(unet=pipe.unet, scheduler=pipe.scheduler, guard=guard, alpha=p["alpha"],
                     scale=p["scale"]).save_pretrained(folder, safe_serialization=True)
    loaded = DiffusionPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(dev)
    loaded.set_progress_bar_config(disable=True)
    memory = CPSamplePipeline(unet=pipe.unet, scheduler=pipe.scheduler, guard=guard, alpha=p["alpha"],
                              scale=p["scale"]).to(dev)
    memory.set_progress_bar_config(disable=True)
    run = dict(batch_size=n_pipe, num_inference_steps=few, output_type="pt")
    same = {}
    for name in ("DDPMScheduler", "DDIMScheduler"):
        for q in (loaded, memory):
            q.scheduler = (DDIMScheduler if name == "DDIMScheduler" else type(pipe.scheduler)).from_config(q.scheduler.config)
        g = lambda: torch.Generator(device=dev.type).manual_seed(0)
        same[name] = bool(torch.equal(loaded(generator=g(), **run).images, memory(generator=g(), **run).images))
    raw_pipe = DDPMPipeline(unet=pipe.unet, scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config)).to(dev)
    raw_pipe.set_progress_bar_config(disable=True)
    loaded.scheduler = type(pipe.scheduler).from_config(loaded.scheduler.config)
    g = lambda: torch.Generator(device=dev.type).manual_seed(3)
    report["pipeline"] = {"class": type(loaded).__name__, "round_trip_identical": same,
                          "scale0_equals_DDPMPipeline": bool(np.array_equal(
                              raw_pipe(batch_size=n_pipe, generator=g(), num_inference_steps=few, output_type="np").images,
                              loaded(batch_size=n_pipe, generator=g(), num_inference_steps=few, output_type="np",
                                     scale=0.0).images))}
    print(json.dumps(report, indent=2))
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    # overhead: the benchmark script, same process, on the saved folder
    for batch in [int(b) for b in a.batches.split(",")]:
        bench.main(["--protected", str(folder), "--device", str(dev), "--batch", str(batch), "--repeats", "3",
                    "--json", str(a.out / f"bench_{dev.type}_{batch}.json"), *(["--quick"] if a.quick else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
