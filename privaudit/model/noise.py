"""Random draws keyed by what they are for, so results do not depend on how the work was cut.

Every random draw an audit makes is seeded from stable keys: (run seed, image content hash,
stream such as the attack's name, tag such as the timestep, draw index) for scoring, and
(run seed, sample index) for generation. A per-image score or a generated sample is then the
same whether the image was scored in a batch of 1 or of 128, in one process or on a worker of
a cluster, first or last (up to float rounding of batched kernels).

``Noise`` is what a membership attack's ``score`` receives: ``noise.randn(shape, tag=...)``
returns Gaussian noise whose row ``r`` belongs to image ``r % n`` (draw ``r // n``), the layout
of ``x0.repeat(k, ...)``. It is stateless: the same call gives the same noise, so two draws
meant to be independent must use different tags (e.g. the timestep).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

__all__ = ["Noise", "image_keys", "sample_generators", "seed_of"]


def seed_of(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and machines, unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def image_keys(images: np.ndarray | torch.Tensor) -> tuple[str, ...]:
    """One content key per image (its first axis): the same pixels give the same key wherever they live."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    arr = np.ascontiguousarray(arr)
    return tuple(hashlib.blake2b(row.tobytes() + str(row.dtype).encode() + str(row.shape).encode(),
                                 digest_size=12).hexdigest() for row in arr)


class Noise:
    """Per-image Gaussian draws for one attack's scoring of a batch (see the module docstring).

    ``keys``: one stable key per image of the batch (``image_keys`` of its pixels); ``seed``: the
    run's seed; ``stream``: what the draws are for (the runner uses the attack's name).
    """

    __slots__ = ("keys", "seed", "stream")

    def __init__(self, keys: Sequence[str], *, seed: int, stream: str = ""):
        self.keys = tuple(keys)
        self.seed = int(seed)
        self.stream = str(stream)

    @classmethod
    def for_images(cls, images: np.ndarray | torch.Tensor, *, seed: int, stream: str = "") -> "Noise":
        """Keys from the images' own content (for direct use, tests and ``fit``)."""
        return cls(image_keys(images), seed=seed, stream=stream)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: slice) -> "Noise":
        """The draws of a slice of the batch (an attack that cuts its batch keeps every image's noise)."""
        return Noise(self.keys[index], seed=self.seed, stream=self.stream)

    def batch_generator(self) -> torch.Generator:
        """One generator for the whole batch, keyed by its images in order: what a 0.1 plugin's
        ``score(..., generator=)`` gets. Its draws depend on the batch's composition, so such a
        plugin's scores still depend on the batch size."""
        return torch.Generator().manual_seed(seed_of(self.seed, self.stream, "batch", *self.keys))

    def generator(self, row: int, *, tag: object = "") -> torch.Generator:
        """The CPU generator behind row ``row`` (image ``row % n``, draw ``row // n``) for ``tag``."""
        n = len(self.keys)
        return torch.Generator().manual_seed(seed_of(self.seed, self.stream, self.keys[row % n], tag, row // n))

    def randn(self, shape: Sequence[int], *, tag: object = "", device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Gaussian noise of ``shape``; ``shape[0]`` must be a multiple of the number of images.

        Drawn on the CPU, so the noise does not depend on the device either.
        """
        shape = tuple(int(s) for s in shape)
        n = len(self.keys)
        if n == 0 or not shape or shape[0] % n:
            raise ValueError(f"noise for {n} images cannot fill {shape[0] if shape else 0} rows "
                             "(rows must be a whole number of draws per image)")
        rows = [torch.randn(shape[1:], generator=self.generator(r, tag=tag)) for r in range(shape[0])]
        return torch.stack(rows).to(device=device, dtype=dtype)


def sample_generators(seed: int, start: int, count: int, *, stream: str = "sample") -> list[torch.Generator]:
    """One CPU generator per generated sample ``start .. start + count - 1``, keyed by (seed, index):
    sample ``i`` is the same whatever the batch size or the worker that draws it."""
    return [torch.Generator().manual_seed(seed_of(seed, stream, i)) for i in range(start, start + count)]
