"""First-step memorised-prompt signals, shared by the prompt detectors and the text mitigations' gate.

Each signal reads a prompt row ``c`` at a pure-noise latent ``z`` (the start of a sampling run, before
any denoising step: the cheapest point, and the one a gate must decide at), against the empty
prompt ``u``, on a ``steps``-step DDIM schedule whose first timestep is ``t0``. Higher = more
likely memorised. Per row, with ``e_c = eps(z, t0, c)`` and ``e_u = eps(z, t0, u)``:

- ``magnitude`` (Wen et al., ICLR 2024, at the first step): ``||e_c - e_u||_2``.
- ``anisotropy`` (Asthana & Belagiannis, ICLR 2026): ``gamma_norm * ||e_c - e_u||_2 + gamma_cos * C``
  where ``C`` is the cosine between ``eps(z, t_low, u)`` and the guidance ``eps(z, t_low, c) -
  eps(z, t_low, u)`` taken per pixel along the channels and averaged over pixels, at the same ``z``
  fed at ``t_low``, the third-to-last timestep of the schedule (a low-noise level: memorised
  guidance points along the unconditional prediction there). Their SD 1.x weights (1, 2) are the
  defaults. 4 network evaluations per row.
- ``curvature`` (Early Detection of Memorization in Diffusion Models, ICML 2026, "metric 2"):
  ``||grad_z 1/2 ||e_c||^2 - grad_z 1/2 ||e_u||^2||_2^2``, i.e. the difference of the Jacobian-transposed
  predictions ``J_c^T e_c - J_u^T e_u`` (their Hessian-score product), by automatic differentiation.
  2 forward and 2 backward passes per row; it needs gradients of the network (gray box with
  gradients).

The callers average a row's signal over a few fixed noises shared by every prompt (common random
numbers), so prompts are compared on equal terms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from privaudit.model.denoiser import cond_tile

SIGNALS = ("magnitude", "anisotropy", "curvature")
ANISOTROPY_GAMMAS = (1.0, 2.0)  # (norm, cosine) weights, the authors' SD 1.x setting


def prompt_signal(signal: str, lat, cond, z: torch.Tensor, timesteps, *,
                  gammas: tuple[float, float] = ANISOTROPY_GAMMAS) -> torch.Tensor:
    """Per row of ``z`` (conditioned on the same row of ``cond``), the ``signal``'s score (CPU, float).

    ``timesteps``: the sampling schedule's timesteps, largest first (``t0 = timesteps[0]``; the
    anisotropy's low-noise read at ``timesteps[-3]``, or the last one for a schedule shorter than 3)."""
    t0 = int(timesteps[0])
    empty = cond_tile(lat.prompt_embeddings([""]), len(z))
    if signal == "curvature":
        return _curvature(lat, cond, empty, z, t0)
    if signal not in SIGNALS:
        raise ValueError(f"unknown prompt signal {signal!r}; choose from {', '.join(SIGNALS)}")
    with torch.no_grad():
        norm = (lat.eps(z, t0, cond) - lat.eps(z, t0, empty)).flatten(1).norm(dim=1)
        if signal == "magnitude":
            return norm.float().cpu()
        t_low = int(timesteps[-3] if len(timesteps) >= 3 else timesteps[-1])
        eu = lat.eps(z, t_low, empty)
        guidance = lat.eps(z, t_low, cond) - eu
        cos = F.cosine_similarity(eu.float(), guidance.float(), dim=1, eps=1e-8).flatten(1).mean(1)
        return (gammas[0] * norm.float() + gammas[1] * cos).cpu()


def _curvature(lat, cond, empty, z: torch.Tensor, t0: int) -> torch.Tensor:
    grads = []
    for c in (cond, empty):
        x = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            e = lat.eps(x, t0, c)
            # rows are independent (group norm, no batch statistics): the gradient of the sum is per row
            (g,) = torch.autograd.grad(0.5 * e.float().pow(2).sum(), x)
        grads.append(g.detach())
    return (grads[0] - grads[1]).float().flatten(1).pow(2).sum(1).cpu()


def first_step_scores(denoiser, prompts: list[str], *, signal: str, steps: int, n_seeds: int, seed: int,
                      batch_size: int = 64, gammas: tuple[float, float] = ANISOTROPY_GAMMAS) -> np.ndarray:
    """Per prompt, ``signal`` averaged over ``n_seeds`` pure-noise latents drawn from ``seed`` (shared by
    every prompt) on a ``steps``-step DDIM schedule."""
    from privaudit.model.denoiser import sampling_scheduler
    from privaudit.model.latent import latent_of

    lat = latent_of(denoiser)
    ts = [int(t) for t in sampling_scheduler(lat, "ddim", steps).timesteps]
    z = torch.randn((n_seeds, *lat.sample_shape), generator=torch.Generator().manual_seed(seed)).to(lat.device)
    per_chunk = max(1, batch_size // n_seeds)
    out = np.zeros(len(prompts))
    for s in range(0, len(prompts), per_chunk):
        chunk = prompts[s:s + per_chunk]
        cond = lat.prompt_embeddings([p for p in chunk for _ in range(n_seeds)])
        v = prompt_signal(signal, lat, cond, z.repeat(len(chunk), 1, 1, 1), ts, gammas=gammas)
        out[s:s + len(chunk)] = v.view(len(chunk), n_seeds).mean(1).double().numpy()
    return out
