"""Replication detection: constructed cases with known answers, the built-in target vs its
null control, streamed/approximate search, feature extractors and quality metrics.

Constructed cases use smooth random textures (32x32, one channel): independent textures
are far apart, so every answer is known by construction: exact and lightly noised member
copies are copies, fresh textures are not, and a texture with one member tile pasted in is
a partial copy that only the tiled criterion can see.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import plugin

from privaudit.data.sets import ImageSet, load_images
from privaudit.io.errors import InputError
from privaudit.plugins.detectors import _replication as R
from privaudit.plugins.detectors.nn import NearestNeighbourDetector
from privaudit.plugins.detectors.quality import QualityDetector, frechet_distance, precision_recall
from privaudit.plugins.features.pixels import PixelFeatures
from privaudit.stats.search import ArraySource, FunctionSource, KnnStream, l2_normalize, search

N_MEM, N_HOLD, N = 200, 400, 200


def textures(n: int, seed: int, size: int = 32) -> np.ndarray:
    """uint8 (n, 1, size, size): Gaussian noise through a 3x3 box blur, std ~0.35 in [-1, 1] units."""
    z = np.random.default_rng(seed).standard_normal((n, 1, size + 2, size + 2))
    x = sum(z[:, :, i : i + size, j : j + size] for i in range(3) for j in range(3)) / 3.0
    return np.clip(np.round((0.35 * x + 1) * 127.5), 0, 255).astype(np.uint8)


def as_tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).float().div(127.5).sub(1)


class FakeContext:
    """What a detector sees (AuditContext's interface) around fixed samples and pixel features."""

    def __init__(self, members: np.ndarray, holdout: np.ndarray, samples: torch.Tensor, *, reference=None):
        self.members = ImageSet.from_array(members, name="members")
        self.holdout = ImageSet.from_array(holdout, name="holdout")
        self.reference, self.seed, self.registry, self._samples = reference, 0, {"pixels"}, samples

    def samples(self, *, n: int, steps: int = 50, sampler: str = "ddim", seed: int | None = None) -> torch.Tensor:
        return self._samples

    def feature(self, name: str, **params):
        assert name == "pixels"
        return PixelFeatures()

    def features(self, extractor, images, *, label: str, batch_size: int | None = None) -> np.ndarray:
        from privaudit.api.stages import transform_batches

        return transform_batches(extractor, images, batch_size=batch_size or 128)


@pytest.fixture(scope="module")
def members() -> np.ndarray:
    return textures(N_MEM, seed=1)


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    return textures(N_HOLD, seed=2)


@pytest.fixture(scope="module")
def picks() -> np.ndarray:
    return np.random.default_rng(3).integers(N_MEM, size=N)


def detect(members, holdout, samples, **params):
    return NearestNeighbourDetector(**params).detect(FakeContext(members, holdout, samples))


def rates(out) -> dict[str, tuple[float, float]]:
    """criterion -> (fraction of samples flagged, its holdout false-positive rate)."""
    return {c["name"]: (c["fraction"], c["holdout_fpr"]) for c in out.details["criteria"]}


def test_exact_member_copies_are_all_flagged_by_every_criterion(members, holdout, picks):
    out = detect(members, holdout, as_tensor(members[picks]))
    for name, (frac, fpr) in rates(out).items():
        assert frac == 1.0, name
        assert fpr <= 0.05, name
    assert out.metrics["copy_fraction"].value == 1.0
    assert out.metrics["copied_members"].value == len(np.unique(picks))
    top = out.details["most_copied"][0]
    assert top["count"] == np.bincount(picks).max()
    assert all(p["distance"] == 0 and p["copy"] for p in out.details["pairs"])
    assert out.table["nearest_member"].tolist() == [f"members[{i}]" for i in picks]


def test_fresh_non_members_are_flagged_at_about_each_criterions_false_positive_rate(members, holdout):
    out = detect(members, holdout, as_tensor(textures(N, seed=4)))
    assert out.metrics["copy_fraction"].value <= 0.05
    assert out.metrics["tiled_fraction"].value <= 0.05
    for name, (frac, fpr) in rates(out).items():
        tol = 3 * np.sqrt(max(fpr, 0.01) * (1 - fpr) / N) + 0.01
        assert abs(frac - fpr) <= tol, (name, frac, fpr)
    assert out.details["false_positive_rate"] >= 0.01  # never below the nominal quantile


def test_noisy_copies_are_flagged_until_the_noise_rivals_the_images_own_spread(members, holdout, picks):
    rng = np.random.default_rng(5)
    noise = torch.from_numpy(rng.standard_normal((N, 1, 32, 32))).float()
    found = {}
    for sigma in (0.05, 0.2, 0.4, 1.0):  # texture pixel std is 0.35: independent textures differ by ~0.5/pixel
        out = detect(members, holdout, (as_tensor(members[picks]) + sigma * noise).clamp(-1, 1))
        found[sigma] = out.metrics["copy_fraction"].value
    assert found[0.05] == found[0.2] == 1.0
    assert found[0.4] >= 0.9
    assert found[1.0] <= 0.05
    assert list(found.values()) == sorted(found.values(), reverse=True)


def test_tiled_criterion_catches_partial_copies_that_the_global_distance_misses(members, holdout, picks):
    fresh = textures(N, seed=6)
    one_tile = fresh.copy()
    one_tile[:, :, :8, :8] = members[picks][:, :, :8, :8]  # one of 16 tiles copied, in place
    out = detect(members, holdout, as_tensor(one_tile))
    assert out.metrics["tiled_fraction"].value == 1.0
    assert out.metrics["copy_fraction"].value <= 0.05
    assert out.metrics["tiled_holdout_fpr"].value <= 0.05

    shifted = np.roll(members[picks], 8, axis=3)  # whole copy moved by one tile
    aligned = detect(members, holdout, as_tensor(shifted))
    anywhere = detect(members, holdout, as_tensor(shifted), tile_match="any")
    assert aligned.metrics["copy_fraction"].value <= 0.05
    assert aligned.metrics["tiled_fraction"].value <= 0.05  # same-position tiles no longer line up
    assert anywhere.metrics["tiled_fraction"].value == 1.0
    assert anywhere.metrics["tiled_holdout_fpr"].value <= 0.05


def test_duplicates_inside_the_member_set_are_flagged(members, holdout):
    dup = members.copy()
    dup[7] = dup[3]
    out = detect(dup, holdout, as_tensor(textures(20, seed=7)))
    d = out.details["member_duplicates"]
    assert d["exact_groups"] == [["members[3]", "members[7]"]] and d["n_exact"] == 2
    assert {"members[3]", "members[7]"} <= {n["member_id"] for n in d["near"]}


def test_details_hold_background_histograms_percentiles_and_difference_pairs(members, holdout, picks):
    out = detect(members, holdout, as_tensor(members[picks[:20]]), n_pairs=5)
    d = out.details
    assert sum(d["background_hist"]["counts"]) == N_MEM  # one nearest *other* member per member
    assert len(d["similarity_hist"]["edges"]) == len(d["similarity_hist"]["samples"]) + 1
    assert d["similarity_percentiles"]["percentiles"] == [50, 75, 90, 95, 99]
    assert d["similarity_percentiles"]["samples"][0] == pytest.approx(1.0, abs=1e-5)
    bg = d["similarity_percentiles"]["background"]
    assert bg == sorted(bg) and bg[-1] < 0.9  # independent textures are not near-duplicates
    assert len(d["pairs"]) == 5
    for p in d["pairs"]:
        assert {"sample_png", "member_png", "diff_png", "member_id", "distance", "copy"} <= set(p)
        assert all(p[k].startswith("data:image/png;base64,") for k in ("sample_png", "member_png", "diff_png"))
    assert {c["name"] for c in d["criteria"]} == {"calibrated", "carlini", "ratio", "tiled", "cosine"}
    for c in d["criteria"]:
        lo, hi = c["holdout_fpr_ci"]
        assert 0 <= lo <= c["holdout_fpr"] + 1e-12 and c["holdout_fpr"] <= hi <= 1


def test_criteria_functions():
    d = np.array([[1.0, 2.0, 3.0], [0.0, 4.0, 5.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(R.carlini_ratio(d, 0.5), [1.0, 0.0, 2.0])
    np.testing.assert_allclose(R.neighbour_ratio(d), [0.5, 0.0, 1.0])
    dist, idx = R.drop_self(np.array([[0.0, 1.0, 2.0]]), np.array([[5, 3, 9]]), np.array([3]))
    assert idx.tolist() == [[5, 9]] and dist.tolist() == [[0.0, 2.0]]
    null = np.arange(200.0)
    assert R.crossfit_flags(null, 0.05, seed=0).mean() == pytest.approx(0.05, abs=0.02)
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    t = R.tiles(x, 4)
    assert len(t) == 16 and t[0].shape == (2, 4) and t[1][0].tolist() == [2, 3, 10, 11]


def test_exact_search_streams_members_and_matches_brute_force():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((5000, 24), dtype=np.float32), rng.standard_normal((300, 24), dtype=np.float32)
    seen = []
    src = FunctionSource(5000, 700, lambda c: (seen.append(c), xb[c * 700 : (c + 1) * 700])[1])
    nb = search(xq, src, k=5)
    assert seen == list(range(8))  # eight chunks of 700, each generated once, never all at once
    dist, idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(xb).kneighbors(xq)
    assert nb.method == "exact" and nb.recall_at_1 is None
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.distances, dist, rtol=1e-4, atol=1e-4)
    cos = search(l2_normalize(xq), l2_normalize(xb), k=1, metric="ip")
    ref = (l2_normalize(xq) @ l2_normalize(xb).T).argmax(1)
    np.testing.assert_array_equal(cos.indices[:, 0], ref)


def test_torch_exact_search_matches_faiss():
    from privaudit.stats.search import _TorchTopK

    rng = np.random.default_rng(2)
    xb, xq = rng.standard_normal((3000, 16), dtype=np.float32), rng.standard_normal((200, 16), dtype=np.float32)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for metric in ("l2", "ip"):
        want = search(xq, xb, k=5, metric=metric)
        for device in devices:
            if device == "cuda":  # the public path: KnnStream on the GPU
                s = KnnStream(xq, k=5, metric=metric, device="cuda")
                for start in range(0, 3000, 700):
                    s.add(xb[start : start + 700], start)
                got = s.result()
                assert got.params["device"].startswith("cuda")
                idx, dist = got.indices, got.distances
            else:  # the same top-k kernel with torch on the CPU (CI has no GPU)
                t = _TorchTopK(xq, 5, metric, "cpu", query_chunk=64)
                for start in range(0, 3000, 700):
                    t.add(xb[start : start + 700], start)
                dist, idx = t.result()
                dist = np.sqrt(dist) if metric == "l2" else dist
            np.testing.assert_array_equal(idx, want.indices)
            np.testing.assert_allclose(dist, want.distances, rtol=1e-4, atol=1e-4)


def test_ivf_is_chosen_above_the_threshold_and_its_recall_is_measured():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((32, 16)).astype(np.float32) * 4
    xb = (centres[rng.integers(32, size=20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    xq = (centres[rng.integers(32, size=2000)] + rng.standard_normal((2000, 16))).astype(np.float32)
    nb = search(xq, ArraySource(xb), k=10, ivf_threshold=10_000, nlist=32, nprobe=4, batch_size=4096,
                shard_size=8192, recall_sample=500)
    exact = search(xq, xb, k=10, method="exact")
    assert nb.method == "ivf" and nb.recall_queries == 500
    true_r1 = float((nb.indices[:, 0] == exact.indices[:, 0]).mean())
    assert abs(nb.recall_at_1 - true_r1) < 0.05  # the in-stream estimate tracks the true recall
    assert 0.5 < nb.recall_at_1 <= 1.0 and 0 < nb.recall_at_k <= 1.0
    assert search(xq, xb, k=10, ivf_threshold=10**9).method == "exact"


def test_detector_reports_ivf_recall(members, holdout, picks):
    out = detect(members, holdout, as_tensor(members[picks]), search="ivf", nlist=4, nprobe=2)
    assert out.details["search"]["method"] == "ivf"
    r = out.metrics["search_recall_at_1"].value
    assert 0 < r <= 1 and out.details["search"]["recall_at_1"] == r


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detector_searches_on_the_gpu_the_model_runs_on(members, holdout, picks):
    from types import SimpleNamespace

    x = as_tensor(np.concatenate([members[picks[:50]], textures(50, seed=8)]))
    cpu = NearestNeighbourDetector().detect(FakeContext(members, holdout, x))
    ctx = FakeContext(members, holdout, x)
    ctx.denoiser = SimpleNamespace(device=torch.device("cuda"))
    gpu = NearestNeighbourDetector().detect(ctx)
    assert gpu.details["search"]["device"].startswith("cuda") and cpu.details["search"]["device"] == "cpu"
    assert rates(gpu) == rates(cpu)
    for g, c in zip(gpu.details["criteria"], cpu.details["criteria"]):
        assert g["threshold"] == pytest.approx(c["threshold"], rel=1e-4), g["name"]
    # same neighbours and flags; distances agree to float32 cancellation in |q|^2 + |x|^2 - 2 q.x,
    # which is largest (~1e-2 here) for the exact copies whose true distance is 0
    exact_cols = [c for c in cpu.table if c == "copy" or c.endswith(("_copy", "member", "sample"))]
    assert gpu.table[exact_cols].equals(cpu.table[exact_cols])
    for col in ("distance", "second_distance", "cosine", "tile_score"):
        np.testing.assert_allclose(gpu.table[col], cpu.table[col], atol=0.05, rtol=1e-4)


# -- the built-in target and its null control --------------------------------------------


def test_memorising_target_is_flagged_and_null_control_is_not(digits_scan, null_scan):
    nn, null = plugin(digits_scan, "nn"), plugin(null_scan, "nn")
    assert nn["status"] == "ok" and null["status"] == "ok"
    assert nn["metrics"]["copy_fraction"]["value"] >= 0.5
    assert null["metrics"]["copy_fraction"]["value"] <= 0.05
    assert nn["severity"] in ("high", "critical") and null["severity"] in ("low", "info")
    by_name = {c["name"]: c for c in nn["details"]["criteria"]}
    assert by_name["calibrated"]["holdout_fpr"] <= 0.05
    # the literal Carlini ratio flags real unseen digits too: its rate is shown beside it
    assert by_name["carlini"]["holdout_fpr"] > 0.05
    for c in plugin(null_scan, "nn")["details"]["criteria"]:
        assert c["fraction"] <= c["holdout_fpr"] + 0.1, c["name"]  # the null looks like the holdout


def test_digits_features_classifier_trained_on_reference(digits_target):
    from privaudit.plugins.features.digits import DigitsFeatures

    ref = load_images(digits_target / "reference", name="reference")
    f = DigitsFeatures(epochs=10).fit(reference=ref)
    assert f.mode_ == "classifier" and f.val_accuracy_ >= 0.85
    assert f.transform(ref.tensor([0, 1, 2])).shape == (3, 64)
    unlabelled = ImageSet.from_array(ref.uint8(range(200)), name="ref")
    g = DigitsFeatures(epochs=2).fit(reference=unlabelled)
    assert g.mode_ == "autoencoder" and np.isfinite(g.val_mse_)
    with pytest.raises(InputError, match="mode=classifier"):
        DigitsFeatures(mode="classifier").fit(reference=unlabelled)


def test_quality_on_the_memorising_target(digits_target, digits_denoiser, tmp_path):
    from privaudit.api.registry import Registration, Registry
    from privaudit.audit.runner import AuditContext, AuditSettings
    from privaudit.plugins.features.digits import DigitsFeatures

    reg = Registry([Registration("digits", "feature", DigitsFeatures, "test"),
                    Registration("pixels", "feature", PixelFeatures, "test")])
    load = lambda name: load_images(digits_target / name, name=name)
    ctx = AuditContext(denoiser=digits_denoiser, members=load("members"), holdout=load("holdout"), registry=reg,
                       settings=AuditSettings(progress=False), reference=load("reference"))
    out = QualityDetector().detect(ctx)
    m = out.metrics
    assert out.details["features"] == "digits" and "classifier" in out.details["feature_space"]
    assert "fid" not in {k.lower() for k in m}
    assert "not FID" in out.finding
    lo, hi = m["frechet_distance"].ci
    assert 0 <= lo <= m["frechet_distance"].value <= hi
    # a model that hands back 64 digits covers little of the real digit manifold
    assert m["recall"].value < out.details["real_baseline"]["recall"] - 0.2
    assert m["precision"].value > 0.5


def test_frechet_distance_and_precision_recall_known_answers():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 4))
    b = rng.standard_normal((2000, 4)) + np.array([6.0, 0, 0, 0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(36.0, rel=0.05)  # |mean shift|^2, same covariance
    p, r = precision_recall(a, a[:1000], k=3)
    assert p.mean() == 1.0 and 0.3 < r.mean() < 1.0  # a subset is all fidelity, less coverage
    p, r = precision_recall(a, b, k=3)
    assert p.mean() < 0.1 and r.mean() < 0.1  # far-apart clouds: only outliers' wide balls reach across


# -- feature extractors ------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 2).flatten(1), x.mean()


def test_torchscript_extractor_runs_a_local_scripted_model(tmp_path):
    from privaudit.plugins.features.torchscript import TorchScriptFeatures

    torch.manual_seed(0)
    model = _Tiny().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(model).save(str(path))
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    f = TorchScriptFeatures(path=str(path), size=16, mean=(0.5,), std=(0.5,), device="cpu", batch_size=2).fit()
    got = f.transform(x)
    prep = torch.nn.functional.interpolate((x + 1) / 2, size=(16, 16), mode="bilinear", antialias=True)
    with torch.no_grad():
        want = model((prep.expand(-1, 3, -1, -1) - 0.5) / 0.5)[0].numpy()
    assert got.shape == (5, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_feature_extractors_name_a_missing_or_bad_weights_file(tmp_path):
    from privaudit.plugins.features.torchscript import TorchScriptFeatures
    from privaudit.plugins.features.torchvision_arch import TorchvisionFeatures

    with pytest.raises(InputError, match=r"missing\.pt: torchscript\.path .* does not exist"):
        TorchScriptFeatures(path=str(tmp_path / "missing.pt")).fit()
    with pytest.raises(InputError, match="torchscript.path: required"):
        TorchScriptFeatures().fit()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a loadable TorchScript model"):
        TorchScriptFeatures(path=str(bad)).fit()
    with pytest.raises(InputError, match=r"torchvision\.weights .* does not exist"):
        TorchvisionFeatures(arch="resnet18", weights=str(tmp_path / "r18.safetensors")).fit()


def test_torchvision_extractor_loads_local_safetensors(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    from privaudit.plugins.features.torchvision_arch import TorchvisionFeatures

    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None).eval()
    save_file(model.state_dict(), str(tmp_path / "r18.safetensors"))
    f = TorchvisionFeatures(arch="resnet18", weights=str(tmp_path / "r18.safetensors"), size=32, device="cpu").fit()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    got = f.transform(x)
    assert got.shape == (3, 512)  # penultimate layer: the head is removed
    model.fc = torch.nn.Identity()
    from privaudit.plugins.features._image_model import IMAGENET_MEAN, IMAGENET_STD, preprocess

    with torch.no_grad():
        want = model(preprocess(x, size=32, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
