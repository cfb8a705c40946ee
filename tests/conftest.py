"""Shared, session-scoped fixtures: the built-in digits target, built once and cached.

The target is cached in ``.pytest_cache/privaudit`` (or ``$PRIVAUDIT_TEST_CACHE``) keyed by
its config, so repeated local runs skip the minute of training; CI builds it once per run.
Samples are cached in a per-session temporary folder so every run samples afresh.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["PRIVAUDIT_CACHE"] = str(tmp_path_factory.mktemp("privaudit-cache"))
    # pytest-xdist runs one worker per core (`make test`): each worker gets its share of the cores
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))
    yield


@pytest.fixture(scope="session")
def digits_target() -> Path:
    """The built-in memorising target: model/, members/, holdout/, null/, reference/."""
    from privaudit.fixtures import digits

    cache = Path(os.environ.get("PRIVAUDIT_TEST_CACHE", REPO / ".pytest_cache" / "privaudit"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny UNet: 1 thread built it in 149 s where the session's 2 took about 200 s
    try:
        return digits.build(out=cache / "digits", progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_denoiser(digits_target):
    from privaudit.model.target import load_target

    den, _, _ = load_target(digits_target / "model", device="cpu")
    return den


def run_scan(target: Path, out: Path, *, members: str = "members", attacks=("loss",), detectors=("nn",),
             params=None) -> dict:
    from privaudit.audit.runner import AuditSettings, scan

    settings = AuditSettings(attacks=tuple(attacks), detectors=tuple(detectors), plugin_params=params or {},
                             progress=False, n_boot=200)
    return scan(model_dir=target / "model", members=target / members, holdout=target / "holdout", out=out,
                settings=settings, device="cpu", reference=target / "reference")


@pytest.fixture(scope="session")
def digits_scan(digits_target, tmp_path_factory) -> dict:
    """One scan of the memorising target with the default plugins."""
    return run_scan(digits_target, tmp_path_factory.mktemp("scan"))


@pytest.fixture(scope="session")
def null_scan(digits_target, tmp_path_factory) -> dict:
    """The same model scanned with never-seen digits as members: nothing should be flagged."""
    return run_scan(digits_target, tmp_path_factory.mktemp("null-scan"), members="null")


def plugin(results: dict, name: str) -> dict:
    return next(p for p in results["plugins"] if p["name"] == name)


ALL_ATTACKS = ("loss", "secmi", "pia", "pian", "sima", "gsa")


@pytest.fixture(scope="session")
def all_attacks_scan(digits_target, tmp_path_factory) -> dict:
    """One scan of the memorising target with every built-in attack and no detector."""
    return run_scan(digits_target, tmp_path_factory.mktemp("all-attacks"), attacks=ALL_ATTACKS, detectors=())


@pytest.fixture(scope="session")
def all_attacks_null_scan(digits_target, tmp_path_factory) -> dict:
    """Every built-in attack on the null control (never-seen digits as members)."""
    return run_scan(digits_target, tmp_path_factory.mktemp("all-attacks-null"), members="null",
                    attacks=ALL_ATTACKS, detectors=())


@pytest.fixture(scope="session")
def digits_text_target() -> Path:
    """The text-conditional latent target (StableDiffusionPipeline on captioned digits); needs transformers."""
    pytest.importorskip("transformers")
    from privaudit.fixtures import digits_text

    cache = Path(os.environ.get("PRIVAUDIT_TEST_CACHE", REPO / ".pytest_cache" / "privaudit"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only synchronise (much slower on a loaded machine)
    try:
        return digits_text.build(out=cache / "digits-text", progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_lora_target(digits_text_target) -> Path:
    """A LoRA fine-tune of the digits-text target on 32 new captioned digits; needs peft."""
    pytest.importorskip("peft")
    from privaudit.fixtures import digits_lora

    cache = Path(os.environ.get("PRIVAUDIT_TEST_CACHE", REPO / ".pytest_cache" / "privaudit"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return digits_lora.build(out=cache / "digits-lora", base_fixture=digits_text_target, progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_text_denoiser(digits_text_target):
    from privaudit.model.target import load_target

    den, _, _ = load_target(digits_text_target / "model", device="cpu")
    return den


# ---------------------------------------------------------------- small in-memory data and helpers


@pytest.fixture(scope="module")
def digits_u8():
    """scikit-learn's digits as uint8 (N, 1, 8, 8) in [0, 255], in one fixed shuffled order."""
    import numpy as np
    from sklearn.datasets import load_digits

    images = np.clip(np.round(load_digits().images * (255 / 16)), 0, 255).astype(np.uint8)[:, None]
    return images[np.random.default_rng(0).permutation(len(images))]


def to_tensor(u8) -> torch.Tensor:
    """uint8 images as floats in [-1, 1]."""
    return torch.from_numpy(u8).float().div(127.5).sub(1)


def audit_arrays(denoiser, members, holdout, *, attacks, params=None, registry=None, n_boot: int = 200) -> dict:
    """``audit`` of in-memory uint8 member and holdout arrays with ``attacks`` and no detectors."""
    from privaudit.api.registry import Registry
    from privaudit.audit.runner import AuditSettings, audit
    from privaudit.data.sets import ImageSet

    settings = AuditSettings(attacks=tuple(attacks), detectors=(), progress=False, n_boot=n_boot,
                             plugin_params=params or {})
    return audit(denoiser=denoiser, members=ImageSet.from_array(members, name="members"),
                 holdout=ImageSet.from_array(holdout, name="holdout"), registry=registry or Registry.build(),
                 settings=settings)


def kill_after_shards(argv: list[str], shards: Path, pattern: str, count: int, *, timeout: float = 300) -> int:
    """Run ``python -m privaudit ARGV`` (one torch thread), SIGKILL it once ``count`` files match ``pattern``
    under ``shards`` (or at ``timeout``), check that it died of the signal, and return how many shards
    were written by then."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "privaudit", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and len(list(shards.glob(pattern))) < count:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    return len(list(shards.glob(pattern)))


def memorising_oracle_audit(digits_u8, *, attacks, **kw) -> dict:
    """``audit_arrays`` of the memorising oracle (an ``EmpiricalOracle`` of the members, digits 0-63) against
    holdout digits 64-127: every working attack separates them."""
    from privaudit.testing.oracles import EmpiricalOracle

    members, holdout = digits_u8[:64], digits_u8[64:128]
    return audit_arrays(EmpiricalOracle(to_tensor(members)), members, holdout, attacks=attacks, **kw)


def gaussian_oracle_audit(digits_u8, *, attacks, **kw) -> dict:
    """``audit_arrays`` of a Gaussian oracle fitted to digits 700 on, disjoint from members (0-299) and holdout
    (300-599): nothing is memorised, so every attack is at chance."""
    from privaudit.testing.oracles import GaussianOracle

    return audit_arrays(GaussianOracle(to_tensor(digits_u8[700:])), digits_u8[:300], digits_u8[300:600],
                        attacks=attacks, **kw)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded 2-core machine a second thread
    made sampling up to 10x slower (oversubscription): a module that asks for this runs on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Files that build fixtures or run whole flows take minutes each. `make test` runs one pytest-xdist worker
# per core with a file's tests on one worker (--dist loadfile), handing out files in collection order:
# the long ones go first (alternating the fixtures they build), so the workers finish together.
HEAVY_FIRST = ("test_families.py", "test_text.py", "test_cpsample.py", "test_finetune.py", "test_packaging.py",
               "test_digits_dup_text.py", "test_digits_dup.py", "test_text_mitigations.py", "test_engine.py",
               "test_family_pipelines.py", "test_catalogue.py", "test_mitigate_resume.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
