"""Mitigation cost: setup time, and protected vs unprotected sampling time side by side, per installed mitigation.

    python benchmarks/mitigation_cost.py [--methods cpsample,...] [--target DIR] [--device cpu|cuda] [--threads N]
                                         [--n 64] [--steps 50] [--sampler ddim] [--repeats 3] [--seed 0]
                                         [--params JSON] [--json PATH]

For each method (``--methods``, default: every mitigation plugin the registry finds installed) on the
built-in digits target (``--target``/``--fixture``, else the cached fixture, built the first time):

- setup: ``apply(ctx)`` timed, with a ``MitigationContext`` built as ``privaudit mitigate`` builds it
  (model, members, holdout, reference, seed) in a fresh output folder and a fresh cache, so a guard
  cached by an earlier run never hides the training time (guard training, calibration, ...). It is
  all of ``apply``, the controls it builds included (cpsample's default trains a placebo guard too),
  so it is what ``privaudit mitigate`` spends, not only the served pipeline's own training;
- sampling: the protected denoiser ``apply`` returned (what is served: its ``draw_samples``,
  rejection sampling included) and the unprotected one, same n, steps, sampler and seed, one batch;
  the two alternate for ``--repeats`` rounds after a warm-up each, and the median of each is kept;
- what the served pipeline carries besides the model (the plugin class's ``carries``).

A method that fails (e.g. it does not support this model) is skipped with a one-line reason; the
others still run. ``--params '{"cpsample": {"alpha": 0.5}}'`` passes settings to a method.

    python benchmarks/mitigation_cost.py --quick    # CI smoke run: tiny target, 8 images, 3 steps (timings meaningless)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _quick import digits_target  # benchmarks/_quick.py, beside this file

from privaudit.api import AuditSettings, MitigationContext
from privaudit.api.registry import Registry
from privaudit.audit.runner import load_data
from privaudit.data.sets import load_checked
from privaudit.mitigation.flow import split_reference, timed_samples
from privaudit.model.latent import image_shape_of
from privaudit.model.target import load_target

# --quick: cap training by the parameter names the installed mitigations use for it (a plugin without them
# trains with its defaults: slower, still seconds on the tiny target)
QUICK_PARAMS = {"max_steps": 5}


def _apply(method: str, params: dict, *, target: Path, device: str, seed: int, work: Path):
    """(the mitigation's output, its class, setup seconds) with a MitigationContext as ``privaudit mitigate``'s."""
    registry = Registry.build()
    mitigation = registry.create(method, kind="mitigation", **params)  # validated here, before any work
    raw, info, pipe = load_target(target / "model", device=device)
    mem, hold = load_data(target / "members", target / "holdout", shape=image_shape_of(raw))
    ref_dir = target / "reference"
    if ref_dir.exists():
        ref = load_checked(ref_dir, name="reference", channels=info.channels, size=info.resolution)
    else:  # as mitigate without --reference: a seeded part of the holdout
        hold, ref, _ = split_reference(hold, seed=seed)
    settings = AuditSettings(attacks=(), detectors=(), progress=False, seed=seed, cache_dir=work / "cache")
    ctx = MitigationContext(model_dir=target / "model", pipeline=pipe, denoiser=raw, members=mem, holdout=hold,
                            reference=ref, out=work / "out", registry=registry, settings=settings, device=raw.device,
                            cache_dir=work / "cache", seed=seed, progress=False)
    if raw.device.type == "cuda":
        torch.cuda.synchronize(raw.device)
    start = time.perf_counter()
    out = mitigation.apply(ctx)
    if raw.device.type == "cuda":
        torch.cuda.synchronize(raw.device)
    return raw, out, type(mitigation), time.perf_counter() - start


def _side_by_side(raw, protected, *, n: int, steps: int, sampler: str, seed: int, repeats: int) -> tuple[float, float]:
    """Median sampling seconds of (unprotected, protected), alternating, after one small warm-up each."""
    run = dict(n=n, steps=steps, sampler=sampler, seed=seed, batch_size=n)
    for den in (raw, protected):  # warm-up (CUDA context, kernels, lazily built state)
        timed_samples(den, **{**run, "n": min(8, n), "steps": 2})
    t_raw, t_prot = [], []
    for _ in range(repeats):
        t_raw.append(timed_samples(raw, **run)[1])
        t_prot.append(timed_samples(protected, **run)[1])
    return statistics.median(t_raw), statistics.median(t_prot)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", help="comma-separated mitigation names (default: every installed one)")
    ap.add_argument("--target", "--fixture", type=Path, help="digits fixture folder (default: built/cached by privaudit)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--n", type=int, default=64, help="samples per timed run (one batch)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="{}", help='JSON: method -> its parameters, e.g. {"cpsample": {"alpha": 0.5}}')
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: a tiny target (seconds to build), 8 samples, 3 steps, training capped")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.steps, a.repeats = 8, 3, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        params = json.loads(a.params)
        assert isinstance(params, dict) and all(isinstance(v, dict) for v in params.values())
    except (ValueError, AssertionError):
        ap.error(f"--params: expected a JSON object of method -> parameters, got {a.params!r}")
    installed = Registry.build().names("mitigation")
    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else installed

    rows, skipped = [], []
    with digits_target(a.target, quick=a.quick) as target:
        for method in methods:
            p = dict(params.get(method, {}))
            try:
                if a.quick:
                    own = Registry.build().get(method, kind="mitigation").cls().get_params()
                    p = {**{k: v for k, v in QUICK_PARAMS.items() if k in own}, **p}
                with tempfile.TemporaryDirectory(prefix=f"privaudit-cost-{method}-") as tmp:
                    raw, out, cls, setup = _apply(method, p, target=target, device=a.device, seed=a.seed,
                                                  work=Path(tmp))
                    t_raw, t_prot = _side_by_side(raw, out.denoiser, n=a.n, steps=a.steps, sampler=a.sampler,
                                                  seed=a.seed, repeats=a.repeats)
            except Exception as e:  # noqa: BLE001 - one method failing must not hide the others' numbers
                reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                skipped.append((method, f"{type(e).__name__}: {reason}"))
                continue
            rows.append({"method": method, "params": p, "setup_seconds": round(setup, 3),
                         "unprotected_seconds": round(t_raw, 4), "protected_seconds": round(t_prot, 4),
                         "ratio": round(t_prot / t_raw, 4), "carries": cls.carries or "-",
                         "carries_training_data": cls.carries_training_data})
            dev = raw.device

    device_name = (f"{dev} ({torch.cuda.get_device_name(dev)})" if rows and dev.type == "cuda" else
                   f"{a.device} ({torch.get_num_threads()} threads)")
    print(f"Mitigation cost on {device_name}: {a.n} samples, {a.steps} {a.sampler} steps, seed {a.seed}, "
          f"median of {a.repeats}")
    width = max([len("method")] + [len(r["method"]) for r in rows])
    print(f"{'method':<{width}}  {'setup_s':>9}  {'unprotected_s':>13}  {'protected_s':>11}  {'ratio':>7}  carries")
    for r in rows:
        carries = r["carries"] + (" (holds training data)" if r["carries_training_data"] else "")
        print(f"{r['method']:<{width}}  {r['setup_seconds']:>9.2f}  {r['unprotected_seconds']:>13.3f}  "
              f"{r['protected_seconds']:>11.3f}  {r['ratio']:>7.3f}  {carries}")
    for method, reason in skipped:
        print(f"skipped {method}: {reason}")
    if a.json:
        a.json.write_text(json.dumps({"device": device_name, "n": a.n, "steps": a.steps, "sampler": a.sampler,
                                      "repeats": a.repeats, "rows": rows,
                                      "skipped": dict(skipped)}, indent=2) + "\n")
    return 0 if rows or not methods else 1


if __name__ == "__main__":
    sys.exit(main())
