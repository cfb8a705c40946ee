"""A small CNN trained on never-member reference images: a data-specific feature space.

Quality metrics (Fréchet distance, precision/recall) need a feature space in which
distances mean "looks like the same kind of image". For ImageNet-like data that is
Inception or an SSCD/CLIP model; for small domain data (the built-in 8x8 digits, a
customer's scans) no such model exists, so this extractor trains one on the
``reference`` images the runner passes to ``fit`` (``--reference``: images neither
trained on nor used as holdout, so neither members nor the null leak into the features).

Two modes (``mode="auto"`` picks by what the reference set offers):

- ``classifier``: when a ``labels.csv`` (``image_id,label``) sits in the reference folder,
  as the built-in digits fixture writes it: the CNN is trained with cross-entropy to
  predict the class, and the features are its ``dim``-d penultimate layer, the way
  Inception's pool features serve FID. A seeded 10% of the reference is kept aside to
  report ``val_accuracy_`` (on digits about 0.95: the space separates classes).
- ``autoencoder``: without labels, the same encoder is trained with a small decoder to
  reconstruct its input (mean squared error); the features are the bottleneck. It
  captures appearance rather than class and is a weaker, but honest, default.

The CNN: three 3x3 convolutions (16, 32, 32 channels, the last two with stride 2), an
adaptive 2x2 average pool and a linear layer to ``dim``. Training is seeded (own
``torch.Generator`` for initialisation and shuffling), ``epochs`` passes of Adam, on one
CPU thread when on the CPU: the model is so small that threads only add synchronisation
(measured: 3.9 s on one thread, 40 s on two on a busy 2-core machine).
Images are used at their own size, so the extractor fits any resolution.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privaudit.api import FeatureExtractor, InputError, InstanceOf, Interval, Options, store_params
from privaudit.plugins.features._image_model import embed, resolve_device

MODES = ("auto", "classifier", "autoencoder")


class Encoder(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def read_labels(reference) -> tuple[np.ndarray | None, str]:
    """Labels for ``reference`` from ``labels.csv`` in its folder, or (None, why not)."""
    folder = Path(reference.source)
    f = folder / "labels.csv" if folder.is_dir() else None
    if f is None or not f.exists():
        return None, f"no labels.csv in {folder}"
    with open(f, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image_id", "label"} <= set(rows[0]):
        raise InputError(f"{f}: expected columns image_id,label")
    by_id = {r["image_id"]: r["label"] for r in rows}
    missing = [i for i in reference.ids if i not in by_id]
    if missing:
        raise InputError(f"{f}: no label for {len(missing)} reference image(s), e.g. {missing[0]}")
    classes = sorted(set(by_id[i] for i in reference.ids))
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[by_id[i]] for i in reference.ids], dtype=np.int64), str(f)


class DigitsFeatures(FeatureExtractor):
    """A small CNN trained on the reference images (classifier with labels.csv, else autoencoder)."""

    name = "digits"
    id = "PA-FEAT-004"

    parameter_constraints = {
        "dim": [Interval(int, 1, 4096)], "mode": [Options(*MODES)], "epochs": [Interval(int, 1, 10_000)],
        "batch_size": [Interval(int, 1, None)], "lr": [Interval(float, 0, 1, closed="right")],
        "seed": [Interval(int, 0, None)], "device": [InstanceOf(str)],
    }

    def __init__(self, *, dim: int = 64, mode: str = "auto", epochs: int = 20, batch_size: int = 128,
                 lr: float = 2e-3, seed: int = 0, device: str = "cpu"):
        store_params(self, locals())

    def fit(self, *, reference=None) -> "DigitsFeatures":
        threads = torch.get_num_threads()
        if resolve_device(self.device).type == "cpu":
            torch.set_num_threads(1)
        try:
            return self._fit(reference)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, reference) -> "DigitsFeatures":
        if self.mode not in MODES:
            raise InputError(f"{self.name}.mode: {self.mode!r} is not one of {MODES}")
        if reference is None or len(reference) < 20:
            raise InputError(f"{self.name}: needs a reference image set of at least 20 never-member images "
                             f"(--reference); got {0 if reference is None else len(reference)}")
        labels, origin = read_labels(reference)
        mode = self.mode if self.mode != "auto" else ("classifier" if labels is not None else "autoencoder")
        if mode == "classifier" and labels is None:
            raise InputError(f"{self.name}.mode=classifier: {origin}")
        self.device_ = resolve_device(self.device)
        x = reference.tensor()
        gen = torch.Generator().manual_seed(self.seed)
        val = torch.randperm(len(x), generator=gen)[: max(1, len(x) // 10)]
        train = torch.ones(len(x), dtype=torch.bool)
        train[val] = False
        c, h, w = x.shape[1:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            enc = Encoder(c, self.dim)
            head = nn.Linear(self.dim, int(labels.max()) + 1) if mode == "classifier" else \
                nn.Sequential(nn.ReLU(), nn.Linear(self.dim, c * h * w), nn.Tanh())
        model = nn.Sequential(enc, head).to(self.device_)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        y = torch.from_numpy(labels) if labels is not None else None
        xt = x[train]
        yt = y[train] if mode == "classifier" else None
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(xt), generator=gen)
            for s in range(0, len(xt), self.batch_size):
                idx = order[s : s + self.batch_size]
                xb = xt[idx].to(self.device_)
                out = model(xb)
                loss = (nn.functional.cross_entropy(out, yt[idx].to(self.device_)) if mode == "classifier"
                        else nn.functional.mse_loss(out, xb.flatten(1)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval().requires_grad_(False)
        self.mode_, self.labels_file_ = mode, origin if labels is not None else None
        self.encoder_ = enc
        with torch.no_grad():
            out = model(x[val].to(self.device_)).cpu()
        if mode == "classifier":
            self.val_accuracy_ = float((out.argmax(1) == y[val]).float().mean())
            self.n_classes_ = int(labels.max()) + 1
        else:
            self.val_mse_ = float(nn.functional.mse_loss(out, x[val].flatten(1)))
        self.n_reference_ = len(x)
        return self

    def transform(self, x: torch.Tensor) -> np.ndarray:
        if not hasattr(self, "encoder_"):
            raise InputError(f"{self.name}: call fit(reference=...) first (the runner does)")
        return embed(self.encoder_, x.float(), batch_size=1024, device=self.device_)

    def describe(self) -> str:
        """One line for reports: what space the features live in."""
        if getattr(self, "mode_", None) == "classifier":
            return (f"{self.dim}-d penultimate layer of a small CNN digit classifier trained on {self.n_reference_} "
                    f"reference images (validation accuracy {self.val_accuracy_:.3f})")
        return f"{self.dim}-d bottleneck of a small CNN autoencoder trained on {getattr(self, 'n_reference_', 0)} reference images"
