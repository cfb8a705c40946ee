"""CPSample overhead: guided vs unguided sampling time, measured side by side in one process.

    python benchmarks/cpsample.py [--protected DIR] [--target DIR] [--device cpu|cuda] [--threads N]
                                  [--steps 50] [--batch 256] [--repeats 3] [--alpha A] [--scale S]

Same model, scheduler, steps, batch and seed for both runs; the runs alternate (``--repeats``
rounds, best of each kept: a shared machine only ever slows a timing down). Printed:

- guided / unguided sampling time and their ratio;
- the fraction of rows guided and of steps that needed a guard backward pass;
- the costs of one UNet forward, one guard forward (with its graph) and one guard
  forward + backward on the same batch, measured in the same run, and the floors

      floor       = 1 + cost(guard fwd + bwd) / cost(UNet fwd)          (every step guided)
      gated floor = 1 + (cost(guard fwd) + f * cost(guard bwd)) / cost(UNet fwd)

  where f is the measured fraction of steps with a backward pass. The goal (issue 5):
  guided / unguided within 10% of the floor, and below it where gating skips steps.

The guard comes from a protected pipeline folder (``--protected``, e.g. a ``privaudit
mitigate`` run's ``protected/``), else it is trained here on the built-in digits target's
members with the plugin's default recipe (``--train-steps`` caps it).

    python benchmarks/cpsample.py --quick    # CI smoke run: tiny target, 8 images, 3 steps (timings meaningless)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _quick import digits_target  # benchmarks/_quick.py, beside this file

from privaudit.data.sets import load_images
from privaudit.model.denoiser import sample
from privaudit.model.target import load_target
from privaudit.plugins.mitigations.cpsample import CPSample  # also registers the protected pipeline class
from privaudit.plugins.mitigations.cpsample.guard import guard_for
from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser
from privaudit.plugins.mitigations.cpsample.train import random_labels, train_guard


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _guard_from_training(den, pipe, target: Path, device: torch.device, steps: int):
    p = CPSample().get_params()
    c, h, _ = den.sample_shape
    members = load_images(target / "members", name="members", channels=c, size=h).tensor(device=device)
    ref_dir = target / "reference"
    ref = load_images(ref_dir, name="reference", channels=c, size=h).tensor(device=device) if ref_dir.exists() else None
    torch.manual_seed(0)
    guard = guard_for(pipe.unet.config, block_out_channels=p["block_out_channels"], layers_per_block=p["layers_per_block"],
                      num_train_timesteps=len(den.alphas_cumprod), lipschitz=p["lipschitz"]).to(device)
    stats = train_guard(guard, members=members, labels=torch.from_numpy(random_labels(len(members), seed=0)),
                        alphas_cumprod=den.alphas_cumprod, nonmembers=ref, nonmember_weight=p["nonmember_weight"],
                        max_steps=steps, batch_size=p["batch_size"], lr=p["lr"], target_accuracy=p["target_accuracy"],
                        fit_t=p["fit_t"], progress=False)
    print(f"guard trained here: {stats.steps} steps, {stats.seconds:.1f}s, fit accuracy {stats.fit_accuracy:.3f}",
          file=sys.stderr)
    return guard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protected", type=Path, help="a CPSample-protected pipeline folder (guard and UNet from it)")
    ap.add_argument("--target", type=Path, help="digits fixture folder (default: built/cached by privaudit)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--scale", type=float)
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: a tiny target (seconds to build), batch 8, 3 steps, 5 guard training steps")
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.steps, a.repeats, a.train_steps = 8, 3, 1, 5
        a.alpha = 1.0 if a.alpha is None else a.alpha  # gate open on every row: the guided path runs untrained
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.protected:
        prot, info, pipe = load_target(a.protected, device=a.device)
        raw, guard = prot.base, prot.guard
        alpha, scale = prot.alpha, prot.scale
    else:
        with digits_target(a.target, quick=a.quick) as target:
            raw, info, pipe = load_target(target / "model", device=a.device)
            guard = _guard_from_training(raw, pipe, target, raw.device, a.train_steps)
        alpha, scale = CPSample().alpha, CPSample().scale
    alpha = a.alpha if a.alpha is not None else alpha
    scale = a.scale if a.scale is not None else scale
    dev = raw.device
    prot = ProtectedDenoiser(base=raw, guard=guard, alpha=alpha, scale=scale, base_fingerprint="bench",
                             guard_sha256="bench")

    run = dict(n=a.batch, steps=a.steps, sampler=a.sampler, seed=0, batch_size=a.batch)
    sample(raw, **{**run, "n": min(8, a.batch), "steps": 2})  # warm-up (CUDA context, kernels)
    sample(prot, **{**run, "n": min(8, a.batch), "steps": 2})
    t_raw, t_guided = float("inf"), float("inf")
    for _ in range(a.repeats):  # alternate, keep the best of each
        t_raw = min(t_raw, _best(lambda: sample(raw, **run), dev, 1))
        prot.reset_counts()
        t_guided = min(t_guided, _best(lambda: sample(prot, **run), dev, 1))
    frac_rows = prot.guided_ / max(prot.calls_, 1)
    frac_steps = prot.steps_guided_ / max(prot.steps_, 1)

    # per-call costs on the same batch: UNet forward, guard forward (with graph), guard forward + backward
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((a.batch, *raw.sample_shape), generator=gen).to(dev)
    t = torch.full((a.batch,), len(raw.alphas_cumprod) // 2, device=dev)
    reps = max(5, 4 * a.repeats)

    def unet_fwd():
        with torch.no_grad():
            raw.eps(x, t)

    def guard_fwd():
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            guard(xg, t)

    def guard_fwd_bwd():
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(torch.nn.functional.logsigmoid(guard(xg, t)).sum(), xg)

    for f in (unet_fwd, guard_fwd, guard_fwd_bwd):
        f()
    c_unet = _best(unet_fwd, dev, reps)
    c_fwd = _best(guard_fwd, dev, reps)
    c_fb = _best(guard_fwd_bwd, dev, reps)
    floor = 1 + c_fb / c_unet
    gated_floor = 1 + (c_fwd + frac_steps * max(c_fb - c_fwd, 0.0)) / c_unet
    ratio = t_guided / t_raw
    n_guard = sum(p.numel() for p in guard.parameters())
    n_unet = sum(p.numel() for p in raw.unet.parameters())
    device_name = str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                              f" ({torch.get_num_threads()} threads)")
    out = {"device": device_name, "batch": a.batch, "steps": a.steps, "sampler": a.sampler, "alpha": alpha,
           "scale": scale, "unguided_seconds": round(t_raw, 4), "guided_seconds": round(t_guided, 4),
           "ratio": round(ratio, 4), "guided_rows_fraction": round(frac_rows, 4),
           "backward_steps_fraction": round(frac_steps, 4), "unet_forward_ms": round(1e3 * c_unet, 3),
           "guard_forward_ms": round(1e3 * c_fwd, 3), "guard_forward_backward_ms": round(1e3 * c_fb, 3),
           "floor": round(floor, 4), "gated_floor": round(gated_floor, 4),
           "ratio_over_floor": round(ratio / floor, 4), "ratio_over_gated_floor": round(ratio / gated_floor, 4),
           "guard_parameters": n_guard, "unet_parameters": n_unet}
    print(f"CPSample overhead on {device_name}: batch {a.batch}, {a.steps} {a.sampler} steps, "
          f"alpha {alpha:g}, scale {scale:g}")
    print(f"  unguided {t_raw:.3f}s  guided {t_guided:.3f}s  ratio {ratio:.3f}")
    print(f"  guided rows {frac_rows:.1%}, steps with a backward pass {frac_steps:.1%}")
    print(f"  per call: UNet fwd {1e3 * c_unet:.2f} ms, guard fwd {1e3 * c_fwd:.2f} ms, guard fwd+bwd {1e3 * c_fb:.2f} ms "
          f"(guard {n_guard:,} params = {n_guard / n_unet:.1%} of the UNet's {n_unet:,})")
    print(f"  floor 1 + fwd+bwd/UNet = {floor:.3f} (ratio/floor {ratio / floor:.3f}); gated floor {gated_floor:.3f} "
          f"(ratio/gated floor {ratio / gated_floor:.3f})")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
