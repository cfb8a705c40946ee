"""The Ray engine (``--engine ray``): shards as a Ray Data ``map_batches`` stage with a callable class.

Imported only when chosen (``pip install privaudit[ray]``). Each actor receives the stage's work
(``privaudit.audit.engine.Work``: the fitted attack and the in-memory denoiser, the sampler, or the
fitted feature extractor) once,
through the object store, moves the model to its device in ``__init__`` and then processes one
shard per call. One actor per GPU (``num_gpus=1``) on a cluster with GPUs, one CPU actor per
worker otherwise. Shard inputs (pixels, captions, sample indices) and outputs (scores, samples, features)
travel as ``.npz`` bytes; the driver reads results as they stream in, writes each shard and
updates one progress bar. A worker that dies midway is restarted by Ray and its shard retried
(Ray Data's defaults for actor pools: dead actors are recreated and their tasks retried; an exception
raised by the work itself is not retried and fails the run). Results are keyed by shard, so a retry
changes nothing.

``address``: None starts a Ray instance on this machine (or joins the one this process already
started); "auto" joins the cluster started with ``ray start --head``; ``ray://HOST:PORT`` or
``HOST:PORT`` joins that cluster.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from privaudit.audit.engine import Work
from privaudit.audit.work import pack, unpack
from privaudit.io.errors import InputError


class _Worker:
    """The callable class of the ``map_batches`` stage: sets the work up once per actor."""

    def __init__(self, work_box: list, threads: int):
        import ray

        torch.set_num_threads(threads)
        self.work: Work = ray.get(work_box[0])
        device = torch.device("cuda") if torch.cuda.is_available() and ray.get_gpu_ids() else torch.device("cpu")
        self.work.setup(device)
        self.work.start_counting()
        self.node = f"{ray.get_runtime_context().get_node_id()[:8]}:{device}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        outs, queries = [], []
        for payload in batch["payload"]:
            before = self.work.queries()
            out = self.work.run(unpack(bytes(payload)))
            outs.append(pack({"out": out}))
            queries.append(self.work.queries() - before)
        return {"i": np.asarray(batch["i"], dtype=np.int64), "out": np.array(outs, dtype=object),
                "queries": np.asarray(queries, dtype=np.int64),
                "worker": np.array([self.node] * len(outs), dtype=object)}


class RayEngine:
    """Runs shards on Ray actors (see the module docstring)."""

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, threads: int = 1):
        try:
            import ray
        except ImportError:
            raise InputError("--engine ray: Ray is not installed; pip install 'privaudit[ray]'") from None
        if workers is not None and workers < 1:
            raise InputError(f"--workers {workers}: must be at least 1")
        if address and address != "auto" and not address.startswith("ray://"):
            _check_reachable(address)
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            try:
                ray.init(address=address, **kw) if address else ray.init(**kw)
            except ConnectionError as e:
                raise InputError(f"--ray-address {address}: no Ray cluster there ({e})") from None
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # privaudit draws one bar of its own
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        ctx.execution_options.verbose_progress = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        res = ray.cluster_resources()
        self.address = address
        self.gpus = int(res.get("GPU", 0))
        self.cpus = int(res.get("CPU", 1))
        self.workers = workers or (self.gpus or max(1, self.cpus))
        if self.gpus and self.workers > self.gpus:
            raise InputError(f"--workers {self.workers}: the cluster has {self.gpus} GPU(s) (one actor per GPU)")
        self.threads = threads
        self.devices: set[str] = set()

    def describe(self) -> dict:
        return {"name": "ray", "address": self.address or "local", "workers": self.workers,
                "devices": sorted(self.devices) or [f"{self.gpus} GPU" if self.gpus else f"{self.cpus} CPU"]}

    def map(self, work: Work, items: Iterable[tuple[int, Callable[[], dict]]]) -> Iterator[tuple[int, np.ndarray, int]]:
        import ray

        rows = [{"i": i, "payload": pack(make())} for i, make in items]
        if not rows:
            return
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        resources: dict[str, Any] = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
        out = ds.map_batches(_Worker, fn_constructor_kwargs={"work_box": [ray.put(work)], "threads": self.threads},
                             batch_size=1, batch_format="numpy", **resources,
                             compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))))
        for row in out.iter_rows():
            self.devices.add(str(row["worker"]))
            yield int(row["i"]), unpack(bytes(row["out"]))["out"], int(row["queries"])


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray keeps retrying an address where nothing listens for minutes: fail in seconds instead."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e})") from None
