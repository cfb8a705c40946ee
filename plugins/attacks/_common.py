"""Helpers shared by attack plugins: noise, the schedule, DDIM steps, distances, timestep sweeps."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from privaudit.model.denoiser import add_noise, scale_t
from privaudit.model.noise import Noise

# Images per model pass when an attack fits on a whole calibration set: memory stays bounded
# however many members there are (the default --batch-size, so scoring batches are unchanged).
FIT_CHUNK = 128


def image_chunks(denoiser, x0: torch.Tensor, noise: Noise, size: int = FIT_CHUNK):
    """(denoiser, images, noise) triples of at most ``size`` images covering ``x0`` in order, each image
    keeping its own noise. A text model's conditioned view (bound by row count for a fit set, or to
    the batch when scoring) is re-bound to each chunk's own conditioning."""
    if len(x0) <= size:
        yield denoiser, x0, noise
        return
    from privaudit.model.latent import ConditionedDenoiser

    cond = None
    if isinstance(denoiser, ConditionedDenoiser):  # bound by row count (fit) or to this batch (score)
        cond = denoiser.conditioning(len(x0))
    for s in range(0, len(x0), size):
        if cond is None:
            yield denoiser, x0[s:s + size], noise[s:s + size]
        else:
            caps = denoiser.batch_captions(len(x0))
            caps = caps[s:s + size] if caps is not None else None
            yield (ConditionedDenoiser(denoiser.denoiser, cond=cond[s:s + size], prompt=denoiser.prompt, captions=caps),
                   x0[s:s + size], noise[s:s + size])


def calibration_auc(member_scores: torch.Tensor, holdout_scores: torch.Tensor) -> float:
    m, h = member_scores.detach().cpu().numpy(), holdout_scores.detach().cpu().numpy()
    return float(roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(h))], np.r_[m, h]))


def timesteps_like(x: torch.Tensor, t: int) -> torch.Tensor:
    """``t`` for every image of ``x``, made on x's device (a fill, not a host-to-device copy)."""
    return torch.full((len(x),), int(t), device=x.device, dtype=torch.long)


def eps_at(denoiser, x: torch.Tensor, t: int) -> torch.Tensor:
    """The denoiser's noise prediction for the whole batch ``x`` at one timestep ``t``."""
    return denoiser.eps(x, timesteps_like(x, t))


def noise_to(denoiser, x0: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    """x_t = a_t x0 + s_t eps for one timestep (host scalars: no GPU transfer stalls the stream)."""
    return add_noise(x0, int(t), eps, denoiser.alphas_cumprod)


def ddim_step(denoiser, x: torch.Tensor, eps: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) move of ``x`` from ``t_from`` to ``t_to`` given the noise ``eps``.

    x0_hat = (x - s_from eps) / a_from;  x_to = a_to x0_hat + s_to eps  (the model layer's scales a_t, s_t).
    Forward in time (t_to > t_from) this is DDIM inversion, backward it is DDIM denoising; for a flow
    model (seen in its VP-equivalent view) it is the Euler step.
    """
    (a_from, s_from), (a_to, s_to) = denoiser.scales(t_from), denoiser.scales(t_to)
    # the same, folded into x_to = c_x x + c_eps eps (two kernels instead of six)
    c_x = a_to / a_from
    c_eps = s_to - c_x * s_from
    return torch.add(c_x * x, eps, alpha=c_eps)


def lp_distance(a: torch.Tensor, b: torch.Tensor | None = None, *, p: float = 2.0) -> torch.Tensor:
    """Per-image sum of |a - b|^p (the p-th power of the p-norm, as PIA and SecMI compute it)."""
    d = a if b is None else a - b
    return d.abs().pow(p).flatten(1).sum(1)


def mapped_timesteps(denoiser, timesteps: Iterable[int]) -> list[int]:
    """Sorted distinct timesteps given for T = 1000, mapped onto the denoiser's schedule."""
    return sorted({scale_t(denoiser, int(t)) for t in timesteps})


def sweep_timestep(denoiser, timesteps: Iterable[int], signal: Callable[[torch.Tensor, int], torch.Tensor], *,
                   members: torch.Tensor, holdout: torch.Tensor) -> tuple[int, dict[int, float]]:
    """Pick the timestep whose score ``signal(x0, t)`` has the best AUC on the calibration data.

    Returns (best t, {t: calibration AUC}); with a single candidate nothing is computed.
    """
    ts = mapped_timesteps(denoiser, timesteps)
    if len(ts) == 1:
        return ts[0], {}
    sweep = {t: calibration_auc(signal(members, t), signal(holdout, t)) for t in ts}
    return max(sweep, key=sweep.get), sweep
