"""Engines and resumable runs: sharded work gives the same results as one process, a run killed
midway resumes with only its unfinished shards (counted in model queries), and a resume with other
settings is refused. The Ray tests (marked ``ray``) start a local Ray instance of 2 CPUs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_after_shards

from privaudit.api.registry import Registry
from privaudit.audit import scoring
from privaudit.audit.engine import LocalEngine, Work
from privaudit.audit.engines import session
from privaudit.audit.scoring import score_set
from privaudit.audit.work import QueryCounter, networks
from privaudit.cli import main
from privaudit.data.sets import load_images
from privaudit.model.denoiser import sample

REPO = Path(__file__).resolve().parents[1]


def _argv(target: Path, out: Path, *extra: str) -> list[str]:
    return ["scan", str(target / "model"), "--members", str(target / "members"), "--holdout", str(target / "holdout"),
            "--out", str(out), "--detectors", "", "--bootstrap", "100", "--quiet", "--device", "cpu", *extra]


def _metrics(run: Path) -> dict:
    body = json.loads((run / "results.json").read_text())
    return {p["name"]: (p["metrics"], p["details"].get("threshold")) for p in body["plugins"]}


def _engine(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["manifest"]["engine"]


def test_query_counter_counts_network_rows_once(digits_denoiser):
    assert [type(m).__name__ for m in networks(digits_denoiser)] == ["UNet2DModel"]  # not its white-box wrapper too
    counter = QueryCounter(digits_denoiser)
    try:
        digits_denoiser.eps(torch.zeros(5, *digits_denoiser.sample_shape), 10)
        digits_denoiser.white_box(torch.zeros(3, *digits_denoiser.sample_shape), torch.full((3,), 10))
    finally:
        counter.close()
    assert counter.count == 8


def test_sharded_scores_and_samples_equal_one_process(digits_target, digits_denoiser, tmp_path):
    members = load_images(digits_target / "members", name="members").subset(range(13))
    attack = Registry.build().create("loss", timesteps=(100,), k=2)
    plain = score_set(attack, digits_denoiser, members, batch_size=4, seed=1, label="m")
    with session(engine="local") as run:
        sharded = score_set(attack, digits_denoiser, members, batch_size=4, seed=1, label="m")
        x = run.samples(digits_denoiser, n=7, steps=3, sampler="ddpm", seed=2, batch_size=3, key="k")
    np.testing.assert_array_equal(sharded, plain)  # same batches, same noise: bit for bit
    assert run.costs["scores:loss:m"].shards == 4 and run.costs["scores:loss:m"].queries == 13 * 2
    torch.testing.assert_close(x, sample(digits_denoiser, n=7, steps=3, sampler="ddpm", seed=2, batch_size=7),
                               rtol=1e-4, atol=1e-4)


def test_sharded_features_equal_the_plain_loop(digits_target, digits_denoiser):
    """Features as an engine stage (shards of the batch size) equal the plain batched loop bit for bit, for
    an image set and for a tensor of samples, and a fitted extractor's identity keys its shards."""
    from privaudit.api import AuditContext, AuditSettings
    from privaudit.api.stages import transform_batches
    from privaudit.audit.engine import extractor_key

    reg = Registry.build()
    members = load_images(digits_target / "members", name="members").subset(range(13))
    reference = load_images(digits_target / "reference", name="reference")
    ctx = AuditContext(denoiser=digits_denoiser, members=members, holdout=members, registry=reg,
                       settings=AuditSettings(progress=False, batch_size=4), reference=reference)
    samples = members.tensor() * 0.5
    for extractor in (reg.create("pixels"), ctx.feature("digits", epochs=1)):
        # the plain loop, as detectors ran it before features were a stage
        plain = np.concatenate([extractor.transform(members.tensor(np.arange(a, min(a + 4, 13))))
                                for a in range(0, 13, 4)]).astype(np.float32)
        assert plain.shape[0] == 13 and plain.dtype == np.float32
        np.testing.assert_array_equal(ctx.features(extractor, members, label="m"), plain)  # no session
        with session(engine="local") as run:
            sharded = ctx.features(extractor, members, label="m")
            from_tensor = ctx.features(extractor, samples, label="s", batch_size=5)
        np.testing.assert_array_equal(sharded, plain)
        np.testing.assert_array_equal(from_tensor, transform_batches(extractor, samples, batch_size=5))
        cost = run.costs[f"features:{extractor.name}:m"]
        assert (cost.shards, cost.units, cost.queries) == (4, 13, 0)
        assert run.costs[f"features:{extractor.name}:s"].shards == 3
    fitted = ctx.feature("digits", epochs=1)
    other = reg.create("digits", epochs=1).fit(reference=reference.subset(range(64)))
    assert extractor_key(fitted) == extractor_key(ctx.feature("digits", epochs=1))
    assert extractor_key(other) != extractor_key(fitted)  # other fitted weights: other shards


def test_feature_work_ships_a_torchscript_extractor(tmp_path):
    """TorchScript modules do not pickle: the work shipped to Ray actors carries their saved bytes, and
    the unpickled copy embeds exactly as the driver's extractor does (which stays as it was)."""
    import pickle

    from privaudit.api.stages import transform_batches
    from privaudit.audit.engine import FeatureWork

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())).save(str(path))
    extractor = Registry.build().create("torchscript", path=str(path), channels=1, mean=(0.5,), std=(0.5,),
                                        device="cpu").fit()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    shipped = pickle.loads(pickle.dumps(FeatureWork(extractor=extractor, batch_size=4)))
    shipped.setup(torch.device("cpu"))
    assert isinstance(extractor.model_, torch.jit.ScriptModule)
    got = shipped.run({"pixels": x.numpy()})
    np.testing.assert_array_equal(got, transform_batches(extractor, x, batch_size=4))
    assert got.shape == (6, 144)


def test_sigkill_midway_then_resume(digits_target, tmp_path, monkeypatch):
    """A scan killed with SIGKILL after some shards resumes to the same metrics as an uninterrupted run,
    spending queries only on the shards that were not finished."""
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})  # each run below must really score
    out = tmp_path / "killed"
    args = _argv(digits_target, out, "--attacks", "loss,secmi", "--batch-size", "4")
    done = kill_after_shards(args, out / ".partial" / "shards" / "scores", "*/*.npz", 40, timeout=240)
    assert not (out / "results.json").exists()
    assert done >= 40

    assert main(args[:args.index("--out")] + args[args.index("--out") + 2:] + ["--resume", str(out)]) in (0, 1)
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_argv(digits_target, tmp_path / "whole", "--attacks", "loss,secmi", "--batch-size", "4")) in (0, 1)

    assert _metrics(out) == _metrics(tmp_path / "whole")
    resumed, whole = _engine(out), _engine(tmp_path / "whole")
    reused = sum(s["shards_reused"] for s in resumed["stages"].values())
    computed = sum(s["shards"] for s in resumed["stages"].values())
    assert reused >= done - 1  # a shard being written at the kill may be lost, never half-read
    assert computed + reused == sum(s["shards"] for s in whole["stages"].values())
    assert computed > 0 and resumed["queries"] < whole["queries"]
    # queries spent on resume are exactly those of the unfinished shards
    assert resumed["queries"] + sum(s["queries_reused"] for s in resumed["stages"].values()) == whole["queries"]
    assert not (out / ".partial").exists()  # a finished run keeps its results, not its shards


def test_resume_recomputes_only_a_damaged_shard(digits_target, tmp_path, monkeypatch):
    """Interrupted after 4 of 10 shards, one of them then damaged: resume computes the other 7."""
    from privaudit.audit.engine import ShardStore

    out = tmp_path / "run"
    args = _argv(digits_target, out, "--attacks", "loss", "--param", "loss.k=3", "--batch-size", "32")
    save, saved = ShardStore.save, []

    def save_then_stop(self, *a, **k):
        save(self, *a, **k)
        saved.append(1)
        if len(saved) == 4:
            raise KeyboardInterrupt("stopped after 4 shards")

    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    monkeypatch.setattr(ShardStore, "save", save_then_stop)
    assert main(args) == 3  # interrupted
    monkeypatch.setattr(ShardStore, "save", save)
    shards = sorted((out / ".partial" / "shards" / "scores").glob("*/*.npz"))
    assert len(shards) == 4 and not (out / "results.json").exists()
    shards[1].write_bytes(shards[1].read_bytes()[:40])  # truncated: unreadable, so computed again
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(args + ["--resume", str(out)]) in (0, 1)
    eng = _engine(out)
    assert sum(s["shards"] for s in eng["stages"].values()) == 7
    assert sum(s["shards_reused"] for s in eng["stages"].values()) == 3
    assert eng["queries"] == 7 * 32 * 3  # 7 shards of 32 images, 3 queries each
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_argv(digits_target, tmp_path / "whole", *args[args.index("--attacks"):])) in (0, 1)
    assert _metrics(out) == _metrics(tmp_path / "whole")


def _nn_args(*extra: str) -> list[str]:
    return ["--attacks", "", "--detectors", "nn", "--batch-size", "16", "--param", "nn.n_samples=32",
            "--param", "nn.steps=5", "--param", "nn.batch_size=16", "--param", "nn.background_sample=40", *extra]


def _feature_stages(run: Path) -> dict:
    return {k: v for k, v in _engine(run)["stages"].items() if k.startswith("features:")}


def test_resume_reuses_feature_shards(digits_target, tmp_path, monkeypatch):
    """A scan interrupted after 5 feature shards resumes with them (counted as reused in the manifest's
    per-stage records) and gives the same metrics as an uninterrupted run."""
    from privaudit.audit.engine import ShardStore

    out = tmp_path / "run"
    args = _argv(digits_target, out, *_nn_args())
    save, saved = ShardStore.save, []

    def save_then_stop(self, stage, *a, **k):
        save(self, stage, *a, **k)
        saved.append(stage)
        if saved.count("features") == 5:
            raise KeyboardInterrupt("stopped after 5 feature shards")

    monkeypatch.setattr(ShardStore, "save", save_then_stop)
    assert main(args) == 3  # interrupted
    monkeypatch.setattr(ShardStore, "save", save)
    assert len(list((out / ".partial" / "shards" / "features").glob("*/*.npz"))) == 5
    assert main(args + ["--resume", str(out)]) in (0, 1)
    assert main(_argv(digits_target, tmp_path / "whole", *_nn_args())) in (0, 1)
    assert _metrics(out) == _metrics(tmp_path / "whole")
    resumed, whole = _feature_stages(out), _feature_stages(tmp_path / "whole")
    assert sum(s["shards_reused"] for s in resumed.values()) == 5
    assert sum(s["shards_reused"] for s in whole.values()) == 0
    assert {k: s["shards"] + s["shards_reused"] for k, s in resumed.items()} == \
        {k: s["shards"] for k, s in whole.items()}
    # samples, holdout, background members and members: every feature set is a stage
    assert {k.split(":")[-1] for k in whole} == {"samples", "holdout", "background members", "members"}


def test_ray_engine_without_ray_is_a_clear_error(monkeypatch):
    from privaudit.audit.engines import get_engine
    from privaudit.io.errors import InputError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    with pytest.raises(InputError, match=r"pip install 'privaudit\[ray\]'"):
        get_engine("ray", address="nowhere:1", workers=1)


def test_unreachable_ray_address_fails_fast_before_any_work(digits_target, tmp_path, capsys):
    pytest.importorskip("ray")
    assert main(_argv(digits_target, tmp_path / "out", "--engine", "ray", "--ray-address", "127.0.0.1:1")) == 2
    assert "no Ray cluster answers there" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_resume_refuses_another_run(digits_target, tmp_path, capsys, monkeypatch):
    from privaudit.audit.engine import ShardStore

    out = tmp_path / "run"
    args = _argv(digits_target, out, "--attacks", "loss", "--param", "loss.k=1")
    assert main(args) in (0, 1)
    assert main(args + ["--resume", str(out)]) == 2
    assert "a finished run has nothing to resume" in capsys.readouterr().err
    save = ShardStore.save

    def save_then_stop(self, *a, **k):
        save(self, *a, **k)
        raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    monkeypatch.setattr(ShardStore, "save", save_then_stop)
    assert main(args) == 3
    monkeypatch.setattr(ShardStore, "save", save)
    assert main(args + ["--seed", "5", "--resume", str(out)]) == 2
    assert "belong to another run" in capsys.readouterr().err
    assert len(list((out / ".partial" / "shards").glob("*/*/*.npz"))) == 1  # refused: nothing touched
    (tmp_path / "empty").mkdir()
    assert main(args[:6] + ["--resume", str(tmp_path / "empty")]) == 2
    assert "no shards of an unfinished run" in capsys.readouterr().err


def test_engine_flags_are_checked(digits_target, tmp_path, capsys):
    assert main(_argv(digits_target, tmp_path / "a", "--workers", "2")) == 2
    assert "needs --engine ray" in capsys.readouterr().err
    assert main(_argv(digits_target, tmp_path / "b", "--resume", str(tmp_path / "elsewhere"))) == 2


# ---------------------------------------------------------------------------- Ray

@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=500 * 2**20)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_engine_equals_local_engine(digits_target, tmp_path, ray_local, monkeypatch):
    args = ["--attacks", "loss", "--param", "loss.k=2", "--batch-size", "32"]
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_argv(digits_target, tmp_path / "local", *args)) in (0, 1)
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_argv(digits_target, tmp_path / "ray", *args, "--engine", "ray", "--workers", "2")) in (0, 1)
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "local")  # bit for bit
    ray_scores = (tmp_path / "ray" / "scores.csv").read_text()
    assert ray_scores == (tmp_path / "local" / "scores.csv").read_text()
    eng = _engine(tmp_path / "ray")
    assert eng["name"] == "ray" and eng["workers"] == 2
    assert eng["queries"] == _engine(tmp_path / "local")["queries"] > 0


@pytest.mark.ray
def test_ray_one_or_two_workers_same_scores_and_samples(digits_target, digits_denoiser, ray_local):
    members = load_images(digits_target / "members", name="members").subset(range(20))
    attack = Registry.build().create("loss", timesteps=(100,), k=2)
    attack.fit(digits_denoiser, members=members.tensor(), holdout=members.tensor(), seed=0)
    local = score_set(attack, digits_denoiser, members, batch_size=7, seed=3, label="m")
    outs = []
    for workers in (1, 2):
        with session(engine="ray", workers=workers) as run:
            outs.append((score_set(attack, digits_denoiser, members, batch_size=7, seed=3, label="m"),
                         run.samples(digits_denoiser, n=6, steps=3, sampler="ddim", seed=4, batch_size=2, key="k")))
    np.testing.assert_array_equal(outs[1][0], outs[0][0])  # 1 vs 2 workers: bit for bit
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=0, atol=0)
    # this process runs torch with other thread counts than the 1-CPU actors: float rounding only
    np.testing.assert_allclose(outs[0][0], local, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(outs[0][1], sample(digits_denoiser, n=6, steps=3, seed=4, batch_size=6),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.ray
def test_ray_nn_detector_equals_local_engine(digits_target, tmp_path, ray_local, monkeypatch):
    """The nn detector's features computed on Ray actors give exactly the local engine's metrics."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the 1-CPU actors run torch: the samples drawn there round the same way
    try:
        assert main(_argv(digits_target, tmp_path / "local", *_nn_args("--cache-dir", str(tmp_path / "c1")))) in (0, 1)
        assert main(_argv(digits_target, tmp_path / "ray", *_nn_args("--cache-dir", str(tmp_path / "c2")),
                          "--engine", "ray", "--workers", "2")) in (0, 1)
    finally:
        torch.set_num_threads(threads)
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "local")  # bit for bit
    ray_stages, local_stages = _feature_stages(tmp_path / "ray"), _feature_stages(tmp_path / "local")
    assert _engine(tmp_path / "ray")["name"] == "ray"
    assert ray_stages.keys() == local_stages.keys() and all(s["shards"] > 0 for s in ray_stages.values())
    assert "samples:ddim-5" in _engine(tmp_path / "ray")["stages"]  # sampled there too, not read from a cache


class _DiesOnce(Work):
    """Doubles its input; the first worker to reach shard 1 kills its own process (os._exit)."""

    stage = "test"

    def __init__(self, marker: str):
        self.marker = marker

    def run(self, item):
        if int(item["i"]) == 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return item["x"] * 2


@pytest.mark.ray
def test_ray_worker_killed_midway_is_retried(tmp_path, ray_local):
    from privaudit.audit.engines import get_engine

    items = [(i, (lambda i=i: {"i": np.int64(i), "x": np.arange(3.0) + i})) for i in range(4)]
    got = dict((i, out) for i, out, _ in get_engine("ray", workers=2).map(_DiesOnce(str(tmp_path / "died")), items))
    assert (tmp_path / "died").exists()  # a worker did die
    expected = dict((i, out) for i, out, _ in LocalEngine().map(_DiesOnce(str(tmp_path / "died")), items))
    assert sorted(got) == [0, 1, 2, 3]
    for i in got:
        np.testing.assert_array_equal(got[i], expected[i])


# ---------------------------------------------------------------------------- query on the engines

def _query_argv(target: Path, out: Path, *extra: str) -> list[str]:
    return ["query", str(target / "model"), "--suspect", str(target / "members"), "--holdout",
            str(target / "holdout"), "--out", str(out), "--attacks", "loss", "--param", "loss.k=1", "--detectors", "",
            "--batch-size", "16", "--repeats", "2", "--quiet", "--device", "cpu", *extra]


def _query_result(run: Path) -> tuple:
    body = json.loads((run / "results.json").read_text())
    return body["p_value"], body["verdict"], (run / "scores.csv").read_text()


def test_query_takes_the_engine_flags(digits_target, tmp_path, capsys):
    assert main(_query_argv(digits_target, tmp_path / "a", "--workers", "2")) == 2
    assert "needs --engine ray" in capsys.readouterr().err
    assert main(_query_argv(digits_target, tmp_path / "b", "--resume", str(tmp_path / "elsewhere"))) == 2
    assert "resumes into its own folder" in capsys.readouterr().err
    args = _query_argv(digits_target, tmp_path / "c")
    assert main(args[:args.index("--out")] + args[args.index("--out") + 2:] + ["--resume", str(tmp_path / "d")]) == 2
    assert "--resume needs the folder of an earlier run" in capsys.readouterr().err


def test_query_interrupted_then_resumed(digits_target, tmp_path, monkeypatch):
    """A query stopped after 3 scoring shards resumes with them and answers exactly as an uninterrupted one."""
    from privaudit.audit.engine import ShardStore

    out = tmp_path / "run"
    save, saved = ShardStore.save, []

    def save_then_stop(self, stage, *a, **k):
        save(self, stage, *a, **k)
        saved.append(stage)
        if len(saved) == 3:
            raise KeyboardInterrupt("stopped after 3 shards")

    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    monkeypatch.setattr(ShardStore, "save", save_then_stop)
    assert main(_query_argv(digits_target, out)) == 3
    monkeypatch.setattr(ShardStore, "save", save)
    assert len(list((out / ".partial" / "shards").glob("*/*/*.npz"))) == 3 and not (out / "results.json").exists()
    args = _query_argv(digits_target, out)
    assert main(args[:args.index("--out")] + args[args.index("--out") + 2:] + ["--resume", str(out)]) == 0
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_query_argv(digits_target, tmp_path / "whole")) == 0
    assert _query_result(out) == _query_result(tmp_path / "whole")
    eng = _engine(out)
    assert sum(s["shards_reused"] for s in eng["stages"].values()) == 3 and eng["queries"] < _engine(tmp_path / "whole")["queries"]
    assert not (out / ".partial").exists()


@pytest.mark.ray
def test_more_cpu_workers_than_the_cluster_has_is_a_clear_error(ray_local):
    from privaudit.audit.engines import get_engine
    from privaudit.io.errors import InputError

    with pytest.raises(InputError, match=r"--workers 64: the cluster has 2 CPU"):
        get_engine("ray", workers=64)


@pytest.mark.ray
def test_query_on_ray_equals_local(digits_target, tmp_path, ray_local, monkeypatch):
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_query_argv(digits_target, tmp_path / "local")) == 0
    monkeypatch.setattr(scoring, "_ATTACK_MEMO", {})
    assert main(_query_argv(digits_target, tmp_path / "ray", "--engine", "ray", "--workers", "2")) == 0
    assert _query_result(tmp_path / "ray") == _query_result(tmp_path / "local")  # bit for bit
    eng = _engine(tmp_path / "ray")
    assert eng["name"] == "ray" and eng["workers"] == 2 and eng["queries"] == _engine(tmp_path / "local")["queries"]
