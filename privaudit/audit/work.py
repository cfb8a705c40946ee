"""Work units: what one shard of a stage computes, in whichever process runs it.

- ScoreWork: per-image scores of a fitted attack on one batch (score_batches in-process);
- SampleWork: generated samples, each seeded by its index;
- FeatureWork: a fitted feature extractor's embedding, keyed by extractor_key.

Each holds only what crosses to a worker (the model, the fitted plugin, moved to the worker's device
with move_denoiser / move_extractor) and counts the model queries it spends (QueryCounter).
Results are arrays packed with pack / unpack for the trip back."""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import warnings
from typing import Any, Callable

import numpy as np
import torch

from privaudit.api.stages import transform_batches


# ---------------------------------------------------------------------------- counting queries
def networks(denoiser: Any) -> list[torch.nn.Module]:
    """The denoising networks a denoiser (and what it wraps) runs: one forward of such a network on n
    rows is n model queries. Where a denoiser exposes ``white_box``, that network (the innermost one it
    wraps: a white-box view is not counted twice); text encoders, VAEs and guards are not model queries
    (a text encoder's outputs are also cached per process, so counting them would depend on the engine).
    A denoiser without a visible network counts every innermost network it holds."""
    from privaudit.model.denoiser import Denoiser

    found: list[torch.nn.Module] = []
    denoising: list[torch.nn.Module] = []
    seen: set[int] = set()
    stack = [denoiser]
    while stack:
        d = stack.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        for v in vars(d).values():
            if isinstance(v, torch.nn.Module) and id(v) not in seen:
                seen.add(id(v))
                found.append(v)
            elif isinstance(v, Denoiser):
                stack.append(v)
        if isinstance(d, Denoiser):
            if isinstance(d.white_box, torch.nn.Module):
                denoising.append(d.white_box)
            stack.append(d.inner())
    ids = {id(m) for m in found}
    innermost = [m for m in found if not any(id(sub) in ids for sub in m.modules() if sub is not m)]
    if not denoising:
        return innermost
    inside = {id(sub) for w in denoising for sub in w.modules()}
    return [m for m in innermost if id(m) in inside]


class QueryCounter:
    """Counts rows through ``networks(denoiser)`` with forward pre-hooks while attached."""

    def __init__(self, denoiser: Any):
        self.count = 0
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in networks(denoiser)]

    def _hook(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(x, torch.Tensor) and x.ndim > 0:
            self.count += int(x.shape[0])

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def move_denoiser(denoiser: Any, device: torch.device) -> None:
    """Move a shipped denoiser (and what it wraps) to a worker's device; nothing when it is already there."""
    from privaudit.model.denoiser import Denoiser

    stack, seen = [denoiser], set()
    while stack:
        d = stack.pop()
        if d is None or id(d) in seen or not isinstance(d, Denoiser):
            continue
        seen.add(id(d))
        if getattr(d, "device", device) == device:
            continue
        for k, v in vars(d).items():
            if isinstance(v, torch.nn.Module):
                v.to(device)
            elif isinstance(v, Denoiser):
                stack.append(v)
        d.device = device
        stack.append(d.inner())


# ---------------------------------------------------------------------------- units of work
class Work:
    """One stage's per-shard computation. It is pickled and shipped once to every worker, which
    calls ``setup`` (device, threads, query counter) once and then ``run`` per shard."""

    stage = "work"
    unit = "item"

    def setup(self, device: torch.device | None = None) -> None:
        self._counter: QueryCounter | None = None

    def denoiser(self) -> Any:
        return None

    def start_counting(self) -> None:
        if getattr(self, "_counter", None) is None and self.denoiser() is not None:
            self._counter = QueryCounter(self.denoiser())

    def stop_counting(self) -> None:
        counter = getattr(self, "_counter", None)
        if counter is not None:
            counter.close()
            self._counter = None

    def queries(self) -> int:
        counter = getattr(self, "_counter", None)
        return counter.count if counter is not None else 0

    def run(self, item: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_counter"}


class ModelWork(Work):
    """Work that runs a denoiser: it is moved to the worker's device once, and its queries are counted."""

    den: Any = None

    def denoiser(self) -> Any:
        return self.den

    def setup(self, device: torch.device | None = None) -> None:
        super().setup(device)
        if device is not None:
            move_denoiser(self.den, device)


def score_batches(attack, denoiser, images, *, batch_size: int, seed: int, prompt: str = "caption",
                  on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Per-image scores of ``images``, batch by batch (the one scoring loop every engine runs)."""
    from privaudit.model.latent import attack_inputs
    from privaudit.model.noise import Noise, image_keys

    out = []
    for idx, x in images.batches(batch_size, device=denoiser.device):
        noise = Noise(image_keys(images.uint8(idx)), seed=seed, stream=attack.name)  # per image, not per batch
        den, x = attack_inputs(denoiser, images, idx, x, prompt=prompt)  # latent models: latents + captions
        s = call_score(attack, den, x, noise)
        out.append(s.detach().float().cpu().numpy())
        if on_batch is not None:
            on_batch(len(idx))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def call_score(attack, denoiser, x: torch.Tensor, noise) -> torch.Tensor:
    """``attack.score`` with per-image ``noise``; a plugin written for 0.1 (``score(..., generator=)``)
    still runs, with one generator per batch and a DeprecationWarning (its scores depend on the batch)."""
    if _takes_noise(type(attack)):
        return attack.score(denoiser, x, noise=noise)
    warnings.warn(f"{type(attack).__name__}.score(..., generator=) is the privaudit 0.1 attack API; implement "
                  "score(denoiser, x0, *, noise) and draw with noise.randn(shape, tag=...) so an image's score "
                  "does not depend on its batch", DeprecationWarning, stacklevel=2)
    return attack.score(denoiser, x, generator=noise.batch_generator())


def _takes_noise(cls: Any) -> bool:
    params = inspect.signature(cls.score).parameters
    return "noise" in params or "generator" not in params


class ScoreWork(ModelWork):
    """Scores one shard of images with a fitted attack (item: ``pixels`` uint8, ``captions``)."""

    stage = "scores"
    unit = "img"

    def __init__(self, *, attack, denoiser, batch_size: int, seed: int, prompt: str):
        self.attack, self.den, self.batch_size, self.seed, self.prompt = attack, denoiser, batch_size, seed, prompt

    def run(self, item: dict[str, np.ndarray]) -> np.ndarray:
        from privaudit.data.sets import ImageSet

        caps = item.get("captions")
        images = ImageSet.from_array(item["pixels"], name="shard", captions=None if caps is None or not len(caps)
                                     else [str(c) for c in caps])
        return score_batches(self.attack, self.den, images, batch_size=self.batch_size, seed=self.seed,
                             prompt=self.prompt)


def move_extractor(extractor: Any, device: torch.device) -> None:
    """Move a shipped, fitted feature extractor to a worker's device: its torch modules and tensors, and
    its ``device_`` (the fitted-attribute convention of privaudit's extractors) when it has one."""
    for k, v in vars(extractor).items():
        if isinstance(v, (torch.nn.Module, torch.Tensor)):
            setattr(extractor, k, v.to(device))
    if hasattr(extractor, "device_"):
        extractor.device_ = device


def extractor_key(extractor: Any) -> str:
    """The identity of a fitted extractor: its class, parameters and fitted state (attributes ending in
    ``_``: arrays, tensors and modules by content, anything else by ``repr``)."""
    h = hashlib.sha256(repr((type(extractor).__module__, type(extractor).__qualname__,
                             sorted((k, repr(v)) for k, v in extractor.get_params().items()))).encode())
    for k in sorted(vars(extractor)):
        v = vars(extractor)[k]
        if not k.endswith("_") or k.startswith("_") or k == "device_":
            continue
        h.update(k.encode())
        if isinstance(v, torch.nn.Module):
            v = v.state_dict()
        if isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()):
            for name, t in sorted(v.items()):
                h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(v, np.ndarray):
            h.update(np.ascontiguousarray(v).tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


class _Scripted:
    """A TorchScript module in transit to a worker (TorchScript modules do not pickle): its
    ``torch.jit.save`` bytes, loaded back on the CPU (``setup`` then moves it to the worker's device)."""

    def __init__(self, module: torch.jit.ScriptModule):
        buf = io.BytesIO()
        torch.jit.save(module, buf)
        self.data = buf.getvalue()

    def load(self) -> torch.jit.ScriptModule:
        return torch.jit.load(io.BytesIO(self.data), map_location="cpu")


class FeatureWork(Work):
    """Embeds one shard of images with a fitted feature extractor (item: ``pixels``, uint8 (n, C, H, W) read
    from an image set, or float32 images in [-1, 1])."""

    stage = "features"
    unit = "img"

    def __init__(self, *, extractor, batch_size: int):
        self.extractor, self.batch_size = extractor, batch_size

    def setup(self, device: torch.device | None = None) -> None:
        super().setup(device)
        if device is not None:
            move_extractor(self.extractor, device)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        scripted = {k: _Scripted(v) for k, v in vars(self.extractor).items() if isinstance(v, torch.jit.ScriptModule)}
        if scripted:  # ship a copy holding the modules' bytes; the driver's extractor is untouched
            state["extractor"] = copy.copy(self.extractor)
            vars(state["extractor"]).update(scripted)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for k, v in list(vars(self.extractor).items()):
            if isinstance(v, _Scripted):
                setattr(self.extractor, k, v.load())

    def run(self, item: dict[str, np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(item["pixels"]))
        if x.dtype == torch.uint8:  # exactly as ImageSet.tensor converts
            x = x.float().div_(127.5).sub_(1.0)
        return transform_batches(self.extractor, x, batch_size=self.batch_size)


class SampleWork(ModelWork):
    """Draws samples ``start .. start + count - 1`` (item: ``start``, ``count``), each seeded by its index."""

    stage = "samples"
    unit = "sample"

    def __init__(self, *, denoiser, steps: int, sampler: str, seed: int, batch_size: int):
        self.den, self.steps, self.sampler, self.seed, self.batch_size = denoiser, steps, sampler, seed, batch_size

    def run(self, item: dict[str, np.ndarray]) -> np.ndarray:
        from privaudit.model.denoiser import sample

        x = sample(self.den, n=int(item["count"]), steps=self.steps, sampler=self.sampler, seed=self.seed,
                   batch_size=self.batch_size, first=int(item["start"]))
        return x.numpy()


def pack(arrays: dict[str, Any]) -> bytes:
    """Arrays as ``.npz`` bytes (how shard inputs and outputs travel to and from Ray workers: no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
