"""Prompt copy: targeted extraction as a membership score for text-to-image models.

Signal: for each audited image, generate ``k`` images from pure noise with the image's own
caption (DDIM, ``steps`` steps, classifier-free guidance ``guidance_scale``: how the served
pipeline answers that prompt) and measure the mean squared pixel distance from the image to
its closest generation; the score is the negated distance. A model that memorised a
(caption, image) pair reproduces the image when prompted with its caption (Carlini et al.
2023 extract training images exactly this way); for an image it never saw, its caption
produces something else.

Captions: the runner conditions every batch on the images' captions (the data set's
``metadata.jsonl``), holdout images on theirs, so members and holdout are asked the same
way. With ``--prompt empty`` (an attacker without captions) every image is compared with
unconditional generations: the attack then measures what ``gen-nn`` measures, with far
fewer samples. The replication detector ``promptcopy`` generates for captions too, but
judges copies per prompt; this attack turns the same generation into a per-image score with
calibrated AUC and TPR.

Nothing is chosen on the calibration split (one setting; scores are independent draws).

Threat model: black box (a prompt in, images out; the caption must be known). Queries per
image: ``k`` x ``steps`` x 2 (both classifier-free guidance branches), plus the decoder.

Differences from the literature: Carlini et al. generate hundreds of images per caption and
flag a caption when many of them form a clique of near-identical images; we compare each
generation with the audited image itself (the auditor has it), which needs only a few draws.
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, MembershipAttack, store_params
from privaudit.model.denoiser import sampling_scheduler
from privaudit.model.latent import latent_of
from privaudit.plugins.attacks._blackbox import run_sampler, sq_distance, to_pixels
from privaudit.plugins.attacks._common import image_chunks


class PromptCopyAttack(MembershipAttack):
    """Black-box, text models: generate with the image's own caption; distance to the closest generation."""

    name = "prompt-copy"
    id = "PA-MIA-009"
    threat_model = "black-box"
    requires = ("sampling", "text")
    references = ("Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023",)

    parameter_constraints = {"k": [Interval(int, 1, 256)], "steps": [Interval(int, 1, 1000)],
                             "guidance_scale": [Interval(float, 0, 100)]}

    def __init__(self, *, k: int = 2, steps: int = 25, guidance_scale: float = 7.5):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(self.k * self.steps * (2 if self.guidance_scale != 1.0 else 1))

    def score(self, denoiser, x0, *, noise):
        if latent_of(denoiser) is None:
            raise ValueError("prompt-copy needs a text-conditional model")
        return torch.cat([self._chunk(d, x, n) for d, x, n in image_chunks(denoiser, x0, noise, size=64)])

    @torch.no_grad()
    def _chunk(self, denoiser, x0: torch.Tensor, noise) -> torch.Tensor:
        b = len(x0)
        sched = sampling_scheduler(denoiser, "ddim", self.steps)
        z = noise.randn((self.k * b, *x0.shape[1:]), tag="prompt-copy", device=x0.device)  # row j*b+i: image i, draw j
        out = run_sampler(denoiser, z * float(sched.init_noise_sigma), scheduler=sched, timesteps=None,
                          guidance_scale=self.guidance_scale)
        ref = to_pixels(denoiser, x0).cpu()
        img = to_pixels(denoiser, out).cpu()
        return -sq_distance(img, ref.repeat(self.k, *[1] * (ref.ndim - 1))).view(self.k, b).min(0).values
