"""DDIM on an explicit timestep grid.

diffusers' ``DDIMScheduler.step`` derives the previous timestep from a fixed stride
(``num_train_timesteps // num_inference_steps``), so it cannot step a non-uniform grid such as
the one a flow model's shifted scheduler visits (``privaudit.model.flow``). ``GridDDIMScheduler``
is DDIMScheduler (its schedule, ``final_alpha_cumprod`` and config) with the previous timestep
taken from the list instead: eq. 12 of Song et al. (2021) for a noise prediction,

    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps + std z,
    std = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev),

with abar_prev = ``final_alpha_cumprod`` after the last listed timestep, as DDIMScheduler does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class GridDDIMScheduler(DDIMScheduler):
    """``DDIMScheduler`` stepping the strictly decreasing timesteps given to ``set_grid``."""

    alphas_cumprod: torch.Tensor  # set by DDIMScheduler (declared for type checkers)
    final_alpha_cumprod: torch.Tensor
    config: Any

    def set_grid(self, timesteps: list[int]) -> None:
        ts = [int(t) for t in timesteps]
        T = len(self.alphas_cumprod)
        if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] >= T:
            raise ValueError(f"timesteps must be strictly decreasing within [0, {T}), got {ts}")
        if self.config.prediction_type != "epsilon" or self.config.clip_sample or self.config.thresholding:
            raise ValueError("GridDDIMScheduler steps noise predictions without clipping or thresholding")
        self.timesteps = torch.tensor(ts, dtype=torch.long)
        self.num_inference_steps = len(ts)
        self._prev = dict(zip(ts, ts[1:] + [-1]))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise=None,
             return_dict: bool = True):
        t = int(timestep)
        if t not in self._prev:
            raise ValueError(f"timestep {t} is not on the grid {self.timesteps.tolist()}")
        prev = self._prev[t]
        a_t = self.alphas_cumprod[t]
        a_p = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        x0 = (sample - (1 - a_t) ** 0.5 * model_output) / a_t ** 0.5
        std = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5
        prev_sample = a_p ** 0.5 * x0 + (1 - a_p - std ** 2) ** 0.5 * model_output
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + std * variance_noise
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
