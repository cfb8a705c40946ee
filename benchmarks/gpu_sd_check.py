"""CPSample overhead on a full-size Stable Diffusion UNet: guided / unguided sampling time.

Builds the Stable Diffusion 1.5 ``UNet2DConditionModel`` architecture from its config
written below (860M parameters, random weights: nothing is downloaded) and a CPSample guard
classifier on its 4x64x64 latents (``GuardClassifier``, random weights), then times DDIM
sampling with classifier-free guidance (conditional + unconditional rows, random prompt
embeddings 77x768) side by side in one process:

- ``unguided``: eps from the UNet only;
- ``guided (always on)``: the ``ProtectedDenoiser`` with ``alpha = 1`` so the gate is open
  for every row: one guard forward on the batch plus a guard forward + backward on every
  row, the worst case (a trained guard is gated off away from members);
- ``guided (gate as configured)``: ``--alpha`` (default 0.25) with the random guard, which
  shows the cost of the gate check alone when the guard is unsure.

Each variant runs ``--repeats`` times after a warm-up; the best time is kept (load only ever
slows a timing down). Printed: seconds per sampling step for each, the ratios guided /
unguided, and the share of rows guided. The floor is 1 + cost(guard fwd + bwd) / cost(UNet fwd).

    python benchmarks/gpu_sd_check.py                  # a GPU: full-size SD 1.5 UNet, fp16
    python benchmarks/gpu_sd_check.py --tiny           # CPU smoke run: same code, tiny UNet
    python benchmarks/gpu_sd_check.py --device cpu --batch 1 --steps 2 --repeats 1   # full size on a CPU (slow)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import json
import time

import torch

SD15_UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json, written out
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
                 norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8)
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)


class PromptedUNet:
    """A Denoiser over the conditional UNet with fixed prompt embeddings (CFG rows: uncond then cond)."""

    def __init__(self, unet, scheduler, emb: torch.Tensor):
        self.unet, self.scheduler, self.emb = unet, scheduler, emb
        self.device = emb.device
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        c, s = unet.config.in_channels, unet.config.sample_size
        self.sample_shape = (c, s, s)
        self.white_box = unet
        self.fingerprint = "random-weights"

    def eps(self, x_t, t, cond=None):
        t = torch.as_tensor(t, device=self.device).expand(len(x_t))
        return self.unet(x_t, t, encoder_hidden_states=self.emb[: len(x_t)]).sample


@torch.no_grad()
def sample(den, *, batch: int, steps: int, guidance: float, seed: int, dtype) -> torch.Tensor:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(den.scheduler.config)
    sched.set_timesteps(steps)
    gen = torch.Generator(device=den.device).manual_seed(seed)
    z = torch.randn((batch, *den.sample_shape), generator=gen, device=den.device, dtype=dtype)
    for t in sched.timesteps:
        eu, ec = den.eps(torch.cat([z, z]), int(t)).chunk(2)
        z = sched.step(eu + guidance * (ec - eu), t, z).prev_sample
    return z


def timed(fn, *, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (kernels, allocator)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from privaudit.plugins.mitigations.cpsample.guard import guard_for
    from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny UNet on the CPU (a smoke run of the same code)")
    ap.add_argument("--device", default=None, help="default: cuda when present (cpu with --tiny)")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default 4; 2 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 10; 3 with --tiny)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--scale", type=float, default=30.0)
    ap.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    a = ap.parse_args(argv)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # the fp16 cast note is about from_pretrained checkpoints, not ours
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu"))
    if not a.tiny and device.type != "cuda" and a.device is None:
        ap.error("the full-size check needs a GPU; pass --tiny for a CPU smoke run, or --device cpu for the "
                 "full-size UNet on the CPU (fp32, seconds per step)")
    batch = a.batch or (2 if a.tiny else 4)
    steps = a.steps or (3 if a.tiny else 10)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    cfg = TINY_UNET if a.tiny else SD15_UNET
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg).to(dtype).eval().requires_grad_(False)
        guard = guard_for(unet.config, block_out_channels=(16, 32) if a.tiny else (64, 128, 256, 256))
    sched = DDIMScheduler(**SD_SCHEDULE)
    emb = torch.randn((2 * batch, 4 if a.tiny else 77, cfg["cross_attention_dim"]), device=device, dtype=dtype)
    base = PromptedUNet(unet, sched, emb)
    always = ProtectedDenoiser(base=base, guard=guard, alpha=1.0, scale=a.scale, base_fingerprint="random")
    gated = ProtectedDenoiser(base=base, guard=guard, alpha=a.alpha, scale=a.scale, base_fingerprint="random")
    run = lambda den: (lambda: sample(den, batch=batch, steps=steps, guidance=a.guidance, seed=0, dtype=dtype))
    t_plain = timed(run(base), repeats=a.repeats, device=device)
    always.reset_counts()
    t_always = timed(run(always), repeats=a.repeats, device=device)
    gated.reset_counts()
    t_gated = timed(run(gated), repeats=a.repeats, device=device)
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    out = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "unet": "tiny" if a.tiny else "stable-diffusion-1.5 architecture, random weights",
        "unet_params": n_params(unet), "guard_params": n_params(guard), "dtype": str(dtype).replace("torch.", ""),
        "batch": batch, "cfg_rows": 2 * batch, "steps": steps, "latent_shape": list(base.sample_shape),
        "seconds_per_step": {"unguided": t_plain / steps, "guided_always": t_always / steps,
                             "guided_gated": t_gated / steps},
        "ratio_guided_always": t_always / t_plain, "ratio_guided_gated": t_gated / t_plain,
        "guided_row_fraction_gated": gated.guided_ / max(1, gated.calls_),
        "alpha": a.alpha, "scale": a.scale,
    }
    print(f"{out['device']}: {out['unet']} ({out['unet_params'] / 1e6:.0f}M params, {out['dtype']}), guard "
          f"{out['guard_params'] / 1e6:.2f}M params; batch {batch} (+{batch} CFG rows), {steps} DDIM steps")
    for k, v in out["seconds_per_step"].items():
        print(f"  {k:<14} {v * 1000:9.1f} ms/step")
    print(f"  guided/unguided time: {out['ratio_guided_always']:.3f} (gate always on), "
          f"{out['ratio_guided_gated']:.3f} (alpha {a.alpha}: {out['guided_row_fraction_gated']:.0%} of rows guided)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
