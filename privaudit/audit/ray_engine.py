"""The Ray engine (``--engine ray``): one pool of Ray actors per run, every stage's shards on it.

Imported only when chosen (``pip install privaudit[ray]``). The actors start once, when the run's
engine session opens (``start``: they spawn and import while the driver loads data and fits its
attacks), and serve every stage of the run (scores, samples, features): a
stage's work (``privaudit.audit.engine.Work``: the fitted attack and the in-memory denoiser, the
sampler, or the fitted feature extractor) is put in the object store once, and each actor fetches
it and moves the model to its device the first time it gets one of that stage's shards (a stage
that needs fewer actors than the pool leaves the others idle). One actor per GPU (``num_gpus=1``)
on a cluster with GPUs, one CPU actor per worker otherwise. Shard inputs (pixels, captions,
sample indices) and outputs (scores, samples, features) travel as ``.npz`` bytes; the driver reads
results as they finish, writes each shard and updates one progress bar. A worker that dies midway
is restarted by Ray and its shard retried (actors restart and their tasks are retried; an
exception raised by the work itself is not retried and fails the run). Results are keyed by shard,
so a retry changes nothing.

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

_POOL: dict[str, Any] = {}  # this process's live actor pool: {"key": (Ray job, workers, gpus, threads), "actors"}


def close_pool() -> None:
    """Stop this process's actors, if any (their CPUs or GPUs go back to the cluster)."""
    actors = _POOL.pop("actors", [])
    _POOL.pop("key", None)
    if actors:
        import ray

        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - Ray already shut down or the actor already gone: nothing to free
                pass


class _Worker:
    """An actor: holds the current stage's work, set up once per stage (``token``), and runs its shards."""

    def __init__(self, threads: int):
        import ray

        torch.set_num_threads(threads)
        import diffusers.models.modeling_utils  # noqa: F401 - every model's base: imported now, before the first stage
        self.token: int | None = None
        self.work: Work | None = None
        self.device = torch.device("cuda") if torch.cuda.is_available() and ray.get_gpu_ids() else torch.device("cpu")
        self.node = f"{ray.get_runtime_context().get_node_id()[:8]}:{self.device}"

    def run(self, work_box: list, token: int, i: int, payload: bytes) -> tuple[int, bytes, int, str]:
        import ray

        if token != self.token:  # a new stage: drop the last one's model, set this one's up
            if self.work is not None:
                self.work.stop_counting()
            self.work, self.token = None, None
            work: Work = ray.get(work_box[0])
            work.setup(self.device)
            work.start_counting()
            self.work, self.token = work, token
        assert self.work is not None
        before = self.work.queries()
        out = self.work.run(unpack(payload))
        return i, pack({"out": out}), self.work.queries() - before, self.node


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
        if not self.gpus and self.workers > self.cpus:  # an actor that never gets its CPU would hold its shards
            raise InputError(f"--workers {self.workers}: the cluster has {self.cpus} CPU(s) (one actor per CPU)")
        self.threads = threads
        self.devices: set[str] = set()
        self._token = 0

    def describe(self) -> dict:
        return {"name": "ray", "address": self.address or "local", "workers": self.workers,
                "devices": sorted(self.devices) or [f"{self.gpus} GPU" if self.gpus else f"{self.cpus} CPU"]}

    def _pool(self) -> list:
        """The run's actors, started on first use (again if Ray was restarted since). One pool lives per
        process: another engine's is stopped first, as its actors hold the CPUs or GPUs this one needs."""
        import ray

        key = (ray.get_runtime_context().get_job_id(), self.workers, self.gpus, self.threads)
        if _POOL.get("key") != key:
            close_pool()
            resources: dict[str, Any] = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
            actor = ray.remote(**resources, max_restarts=-1, max_task_retries=-1)(_Worker)
            _POOL.update(key=key, actors=[actor.remote(self.threads) for _ in range(self.workers)])
        return _POOL["actors"]

    def start(self) -> None:
        """Start the run's actors without waiting for them (``privaudit.audit.engines.session`` calls it as a
        run begins): their process start and imports overlap the driver's own work before its first stage."""
        self._pool()

    def close(self) -> None:
        """Stop the actors (the end of a run: ``privaudit.audit.engines.session``)."""
        close_pool()

    def map(self, work: Work, items: Iterable[tuple[int, Callable[[], dict]]]) -> Iterator[tuple[int, np.ndarray, int]]:
        import ray

        rows = [(i, pack(make())) for i, make in items]
        if not rows:
            return
        actors = self._pool()[: len(rows)]
        self._token += 1
        box = [ray.put(work)]  # in a list: each actor fetches it itself, once per stage
        todo = list(reversed(rows))
        running: dict[Any, Any] = {}
        for a in actors:  # one shard in flight per actor; the next goes to whichever finishes first
            i, payload = todo.pop()
            running[a.run.remote(box, self._token, i, payload)] = a
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            a = running.pop(done[0])
            i, out, queries, node = ray.get(done[0])
            if todo:
                j, payload = todo.pop()
                running[a.run.remote(box, self._token, j, payload)] = a
            self.devices.add(str(node))
            yield int(i), unpack(out)["out"], int(queries)


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
