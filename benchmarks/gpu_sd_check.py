"""CPSample overhead on full-size denoisers of every family: guided / unguided sampling time.

Builds a family's denoising network from its published architecture, written below (``--family``:
``sd15`` the Stable Diffusion 1.5 UNet, 860M parameters, the default; ``sdxl`` the SDXL base
UNet; ``dit`` DiT-XL/2 at 256 px; ``pixart`` PixArt-alpha XL/2 at 512 px; ``sd3`` the SD3-medium
transformer; random weights: nothing is downloaded) and a CPSample guard classifier on its
latents (``GuardClassifier``, random weights), then times DDIM sampling with classifier-free
guidance (conditional + unconditional rows, random conditioning of the family's shapes) side
by side in one process:

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
    python benchmarks/gpu_sd_check.py --family all     # a GPU: every family in turn
    python benchmarks/gpu_sd_check.py --tiny           # CPU smoke run: same code, tiny UNet
    python benchmarks/gpu_sd_check.py --quick          # CI smoke run: --tiny, every family, 2 steps, 1 repeat
    python benchmarks/gpu_sd_check.py --device cpu --batch 1 --steps 2 --repeats 1   # full size on a CPU (slow)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import argparse
import json
import time

import diffusers
import torch

from privaudit.model.denoiser import Denoiser
from privaudit.plugins.mitigations.cpsample.guard import guard_for
from privaudit.plugins.mitigations.cpsample.protected import ProtectedDenoiser

SD15_UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json, written out
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
                 norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8)
# Full-size architectures (each family's published config.json, written out) and tiny ones for --tiny.
# "cond" gives the random conditioning: (name, shape per row) with L tokens of width D.
FAMILIES = {
    "sd15": {"cls": "UNet2DConditionModel", "full": SD15_UNET, "tiny": TINY_UNET,
             "cond": lambda cfg, tiny: {"encoder_hidden_states": (4 if tiny else 77, cfg["cross_attention_dim"])}},
    "sdxl": {"cls": "UNet2DConditionModel",
             "full": dict(sample_size=128, in_channels=4, out_channels=4,
                          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                          up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                          block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                          attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                          addition_embed_type="text_time", addition_time_embed_dim=256,
                          projection_class_embeddings_input_dim=2816),
             "tiny": dict(TINY_UNET, cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                          projection_class_embeddings_input_dim=32 + 6 * 8),
             "cond": lambda cfg, tiny: {"encoder_hidden_states": (4 if tiny else 77, cfg["cross_attention_dim"]),
                                        "text_embeds": (cfg["projection_class_embeddings_input_dim"]
                                                        - 6 * cfg["addition_time_embed_dim"],), "time_ids": (6,)}},
    "dit": {"cls": "DiTTransformer2DModel",
            "full": dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                         sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero"),
            "tiny": dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                         sample_size=4, patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero"),
            "cond": lambda cfg, tiny: {"class_labels": ()}},
    "pixart": {"cls": "PixArtTransformer2DModel",
               "full": dict(sample_size=64, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
                            in_channels=4, out_channels=8, cross_attention_dim=1152, caption_channels=4096,
                            norm_type="ada_norm_single", num_embeds_ada_norm=1000),
               "tiny": dict(sample_size=4, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
                            in_channels=4, out_channels=8, cross_attention_dim=16, caption_channels=32, norm_num_groups=8,
                            norm_type="ada_norm_single", num_embeds_ada_norm=1000),
               "cond": lambda cfg, tiny: {"encoder_hidden_states": (8 if tiny else 120, cfg["caption_channels"])}},
    "sd3": {"cls": "SD3Transformer2DModel",
            "full": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                         num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
            "tiny": dict(sample_size=4, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                         num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
                         pooled_projection_dim=64, out_channels=4),
            "cond": lambda cfg, tiny: {"encoder_hidden_states": (8 if tiny else 333, cfg["joint_attention_dim"]),
                                       "pooled_projections": (cfg["pooled_projection_dim"],)}},
}

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)


class PromptedNet(Denoiser):
    """A Denoiser over a family's network with fixed random conditioning rows (CFG rows: uncond then cond);
    a learned variance (2C output channels) is split off as the model layer does."""

    def __init__(self, net, scheduler, family: str, cond: dict[str, torch.Tensor]):
        self.net, self.scheduler, self.family, self.cond = net, scheduler, family, cond
        self.device = next(net.parameters()).device
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        c, s = net.config.in_channels, net.config.sample_size
        self.sample_shape = (c, s, s)
        self.white_box = net
        self.fingerprint = "random-weights"

    def eps(self, x_t, t, cond=None):
        t = torch.as_tensor(t, device=self.device).expand(len(x_t))
        rows = {k: v[: len(x_t)] for k, v in self.cond.items()}
        if self.family == "sdxl":
            added = {"text_embeds": rows.pop("text_embeds"), "time_ids": rows.pop("time_ids")}
            out = self.net(x_t, t, added_cond_kwargs=added, **rows).sample
        elif self.family == "pixart":
            out = self.net(x_t, timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}, **rows).sample
        elif self.family in ("dit", "sd15"):
            out = self.net(x_t, t, **rows).sample
        else:  # sd3: the flow model's timestep is sigma * 1000
            out = self.net(x_t, timestep=t.to(x_t.dtype), **rows).sample
        return out[:, : x_t.shape[1]]


@torch.no_grad()
def sample(den, *, batch: int, steps: int, guidance: float, seed: int, dtype) -> torch.Tensor:
    sched = diffusers.DDIMScheduler.from_config(den.scheduler.config)
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


def check_family(family: str, *, tiny: bool, device: torch.device, dtype, batch: int, steps: int, repeats: int,
                 alpha: float, scale: float, guidance: float) -> dict:
    spec = FAMILIES[family]
    cfg = spec["tiny" if tiny else "full"]
    torch.manual_seed(0)
    with torch.device(device):
        net = getattr(diffusers, spec["cls"])(**cfg).to(dtype).eval().requires_grad_(False)
        guard = guard_for(net.config, block_out_channels=(16, 32) if tiny else (64, 128, 256, 256))
    sched = diffusers.DDIMScheduler(**SD_SCHEDULE)
    gen = torch.Generator().manual_seed(1)
    rows = 2 * batch
    cond = {}
    for k, shape in spec["cond"](cfg, tiny).items():
        if k == "class_labels":
            cond[k] = torch.randint(0, cfg["num_embeds_ada_norm"], (rows,), generator=gen).to(device)
        else:
            cond[k] = torch.randn((rows, *shape), generator=gen).to(device, dtype)
    base = PromptedNet(net, sched, family, cond)
    always = ProtectedDenoiser(base=base, guard=guard, alpha=1.0, scale=scale, base_fingerprint="random")
    gated = ProtectedDenoiser(base=base, guard=guard, alpha=alpha, scale=scale, base_fingerprint="random")
    run = lambda den: (lambda: sample(den, batch=batch, steps=steps, guidance=guidance, seed=0, dtype=dtype))
    t_plain = timed(run(base), repeats=repeats, device=device)
    always.reset_counts()
    t_always = timed(run(always), repeats=repeats, device=device)
    gated.reset_counts()
    t_gated = timed(run(gated), repeats=repeats, device=device)
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    out = {
        "family": family,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "network": f"{spec['cls']}, " + ("tiny" if tiny else "full-size architecture, random weights"),
        "network_params": n_params(net), "guard_params": n_params(guard), "dtype": str(dtype).replace("torch.", ""),
        "batch": batch, "cfg_rows": rows, "steps": steps, "latent_shape": list(base.sample_shape),
        "seconds_per_step": {"unguided": t_plain / steps, "guided_always": t_always / steps,
                             "guided_gated": t_gated / steps},
        "ratio_guided_always": t_always / t_plain, "ratio_guided_gated": t_gated / t_plain,
        "guided_row_fraction_gated": gated.guided_ / max(1, gated.calls_),
        "alpha": alpha, "scale": scale,
    }
    print(f"{out['device']} [{family}]: {out['network']} ({out['network_params'] / 1e6:.0f}M params, {out['dtype']}), "
          f"guard {out['guard_params'] / 1e6:.2f}M params; batch {batch} (+{batch} CFG rows), {steps} DDIM steps")
    for k, v in out["seconds_per_step"].items():
        print(f"  {k:<14} {v * 1000:9.1f} ms/step")
    print(f"  guided/unguided time: {out['ratio_guided_always']:.3f} (gate always on), "
          f"{out['ratio_guided_gated']:.3f} (alpha {alpha}: {out['guided_row_fraction_gated']:.0%} of rows guided)")
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="sd15", choices=(*FAMILIES, "all"), help="network family (default sd15)")
    ap.add_argument("--tiny", action="store_true", help="tiny networks on the CPU (a smoke run of the same code)")
    ap.add_argument("--device", default=None, help="default: cuda when present (cpu with --tiny)")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default 4; 2 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 10; 3 with --tiny)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--scale", type=float, default=30.0)
    ap.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: --tiny --family all --steps 2 --repeats 1")
    a = ap.parse_args(argv)
    if a.quick:
        a.tiny, a.family, a.steps, a.repeats = True, "all", a.steps or 2, 1
    diffusers.utils.logging.set_verbosity_error()  # the fp16 cast note is about from_pretrained checkpoints, not ours
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu"))
    if not a.tiny and device.type != "cuda" and a.device is None:
        ap.error("the full-size check needs a GPU; pass --tiny for a CPU smoke run, or --device cpu for the "
                 "full-size network on the CPU (fp32, seconds per step)")
    batch = a.batch or (2 if a.tiny else 4)
    steps = a.steps or (3 if a.tiny else 10)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    families = list(FAMILIES) if a.family == "all" else [a.family]
    return [check_family(f, tiny=a.tiny, device=device, dtype=dtype, batch=batch, steps=steps, repeats=a.repeats,
                         alpha=a.alpha, scale=a.scale, guidance=a.guidance) for f in families]


if __name__ == "__main__":
    main()
