"""Attack throughput on the built-in digits target, measured side by side in one process.

For each attack: images scored per second, UNet forward passes per image (counted by
wrapping the denoiser's ``eps``; for the white-box GSA, rows through the raw network), and

    ratio = images/s / (UNet forward rows/s / queries per image)

where the UNet rate is measured in the same run, same batch size, right before the attack
(timings alternate, ``--repeats`` rounds of at least ``--min-seconds`` each, best of each kept,
since shared machines are noisy and load only ever slows a timing down). A ratio of 1 means the
attack costs exactly its queries; the goal is >= 0.8. GSA needs a backward pass per forward,
so it is also compared with the measured forward+backward rate (``ratio_fb``).
Scoring runs through ``privaudit.audit.work.score_batches``, the loop every audit engine runs (per-image
keyed noise, batches read from the image set), so the ratio includes what an audit pays around the
queries. Fitting (calibration sweeps, GSA's classifier) is one-off per audit and reported apart.

    python benchmarks/attacks.py [--target DIR] [--device cpu] [--threads 2] [--repeats 3]
    python benchmarks/attacks.py --quick    # CI smoke run: tiny target, one short round (timings meaningless)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _quick import digits_target  # benchmarks/_quick.py, beside this file

from privaudit.api.registry import Registry
from privaudit.audit.work import score_batches
from privaudit.data.sets import ImageSet, load_images
from privaudit.model.denoiser import Denoiser
from privaudit.model.target import load_target

ATTACKS = ("loss", "secmi", "pia", "pian", "sima", "gsa")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _rows(x: torch.Tensor, sample_numel: int) -> int:
    """Images in ``x``, seen through any vmap levels (GSA's per-sample gradients)."""
    try:
        from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor

        while is_functorch_wrapped_tensor(x):  # vmap and grad levels, outermost first
            x = get_unwrapped(x)
    except ImportError:  # older torch: count logical rows
        pass
    return x.numel() // sample_numel


class CountingModule(torch.nn.Module):
    """The raw network, counting the rows it processes."""

    def __init__(self, inner: torch.nn.Module, counter: "CountingDenoiser"):
        super().__init__()
        self.inner, self.counter = inner, counter

    def forward(self, x, t):
        self.counter.rows += _rows(x, self.counter.sample_numel)
        return self.inner(x, t)


class CountingDenoiser(Denoiser):
    """Wraps a Denoiser; ``rows`` counts the images passed through the UNet."""

    def __init__(self, base: Denoiser):
        self.base, self.rows = base, 0
        self.device, self.sample_shape, self.scheduler = base.device, base.sample_shape, base.scheduler
        self.alphas_cumprod, self.prediction_type = base.alphas_cumprod, base.prediction_type
        self.sample_numel = math.prod(base.sample_shape)
        self.white_box = CountingModule(base.white_box, self) if base.white_box is not None else None
        self.fingerprint = base.fingerprint

    def __getattr__(self, name):  # anything else a model family adds
        return getattr(self.base, name)

    def conditioning(self, n: int):
        return self.base.conditioning(n)

    def eps(self, x_t, t, cond=None):
        self.rows += len(x_t)
        return self.base.eps(x_t, t, cond)


def best_rate(fn, items: int, *, min_seconds: float, device: torch.device) -> float:
    """``items`` per second of ``fn``, called repeatedly for at least ``min_seconds``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up (allocator, kernels)
    sync()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or calls == 0:
        fn()
        sync()  # GPU work is asynchronous: count it as done only when it is
        calls += 1
    return items * calls / elapsed


def unet_forward(den, x: torch.Tensor):
    t = torch.full((len(x),), 200, device=x.device)

    def run():
        with torch.no_grad():
            den.eps(x, t)
    return run


def unet_forward_backward(den, x: torch.Tensor):
    """A batched training step's gradient (no per-sample split): GSA's cost floor."""
    unet, t = den.white_box, torch.full((len(x),), 200, device=x.device)
    params = {n: p.detach().requires_grad_() for n, p in unet.named_parameters()}

    def run():
        out = torch.func.functional_call(unet, params, (x, t))
        torch.autograd.grad(getattr(out, "sample", out).pow(2).mean(), list(params.values()))
    return run


def bench(name: str, attack, den, cal_m, cal_h, images: ImageSet, *, repeats: int, batch_size: int,
          min_seconds: float) -> dict:
    """Fit once, count forwards in one scoring pass, then alternate reference and attack timings."""
    counting = CountingDenoiser(den)
    start = time.perf_counter()
    attack.fit(counting, members=cal_m, holdout=cal_h, seed=0)
    fit_s = time.perf_counter() - start

    def score_all(d=den):
        score_batches(attack, d, images, batch_size=batch_size, seed=0)

    counting.rows = 0
    score_all(counting)
    forwards = counting.rows / len(images)
    x = images.tensor(range(min(batch_size, len(images))), device=den.device)
    fwd = unet_forward(den, x)
    fb = unet_forward_backward(den, x) if name == "gsa" else None
    r = {"fwd": 0.0, "fb": 0.0, "img": 0.0}
    for _ in range(repeats):  # interleaved, best of each: load from other processes only slows things down
        r["fwd"] = max(r["fwd"], best_rate(fwd, len(x), min_seconds=min_seconds, device=den.device))
        if fb is not None:
            r["fb"] = max(r["fb"], best_rate(fb, len(x), min_seconds=min_seconds, device=den.device))
        r["img"] = max(r["img"], best_rate(score_all, len(images), min_seconds=min_seconds, device=den.device))
    return {"images_per_s": r["img"], "forwards_per_image": forwards, "fit_s": fit_s,
            "unet_fwd_per_s": r["fwd"], "unet_fwd_bwd_per_s": r["fb"] or None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=Path, help="digits target folder (default: the cached fixture, built if missing)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: a tiny target (seconds to build), one short timing round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="alternating timing rounds; best of each is kept")
    p.add_argument("--min-seconds", type=float, default=1.0, help="minimum duration of each timing")
    p.add_argument("--batch-size", type=int, default=128, help="images per attack.score call (the runner's default)")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--block", default="", help="comma-separated plugin names not to load (a broken third-party one)")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.min_seconds, a.batch_size = 1, 0.0, 32
    torch.set_num_threads(a.threads)
    with digits_target(a.target, quick=a.quick, progress=True) as target:  # read here: a --quick one is removed
        den, _, _ = load_target(target / "model", device=a.device)
        members = load_images(target / "members", name="members").uint8()
        holdout = load_images(target / "holdout", name="holdout").uint8()
    if a.quick:  # few images and a small calibration set: GSA fits a classifier on per-sample gradients
        members, holdout = members[:16], holdout[:16]
    n_m, n_h = (8, 8) if a.quick else (32, 128)
    images = ImageSet.from_array(np.concatenate([members, holdout]), name="bench")
    cal_m = images.tensor(range(min(n_m, len(members))), device=den.device)
    cal_h = images.tensor(range(len(members), len(members) + min(n_h, len(holdout))), device=den.device)
    registry = Registry.build(blocked=_csv(a.block))
    rows = []
    for name in _csv(a.attacks):
        attack = registry.create(name, kind="attack")
        r = bench(name, attack, den, cal_m, cal_h, images, repeats=a.repeats,
                  batch_size=a.batch_size, min_seconds=a.min_seconds)
        q, fwd, fb = attack.queries_per_image(), r["unet_fwd_per_s"], r["unet_fwd_bwd_per_s"]
        rows.append((name, attack.threat_model, q, r["forwards_per_image"], r["images_per_s"], fwd,
                     r["images_per_s"] / (fwd / q), None if fb is None else r["images_per_s"] / (fb / q), r["fit_s"]))
    dev = str(den.device) + (f" ({torch.cuda.get_device_name(den.device)})" if den.device.type == "cuda" else "")
    print(f"device {dev}, torch threads {a.threads}, batch {a.batch_size}, {len(images)} images, best of {a.repeats} x >= {a.min_seconds:g} s")
    head = ("attack", "threat", "q/img", "fwd/img", "img/s", "UNet fwd/s", "ratio", "ratio_fb", "fit s")
    print("{:<7} {:<10} {:>6} {:>8} {:>9} {:>11} {:>6} {:>8} {:>6}".format(*head))
    for name, threat, q, f, ips, fwd, ratio, ratio_fb, fit_s in rows:
        print(f"{name:<7} {threat:<10} {q:>6.0f} {f:>8.2f} {ips:>9.1f} {fwd:>11.0f} {ratio:>6.2f} "
              f"{'' if ratio_fb is None else f'{ratio_fb:.2f}':>8} {fit_s:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
