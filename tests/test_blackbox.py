"""Black-box membership attacks (rediffuse, gen-nn, prompt-copy): they use only the sampling interface.

Oracle tests (the memorising oracle must be separated, the Gaussian one must not), the
memorising digits target and its null control, per-image determinism, the query cost, and
the text model's caption-prompted attack.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import audit_arrays, gaussian_oracle_audit, memorising_oracle_audit, plugin, run_scan, to_tensor

from privaudit.api.registry import Registry
from privaudit.audit.runner import AuditSettings
from privaudit.io.errors import PluginError
from privaudit.model.noise import Noise
from privaudit.plugins.attacks.gennn import GeneratedNearestNeighbourAttack
from privaudit.plugins.attacks.promptcopy import PromptCopyAttack
from privaudit.plugins.attacks.rediffuse import ReDiffuseAttack
from privaudit.testing import check_plugin
from privaudit.testing.oracles import EmpiricalOracle

BLACK_BOX = ("rediffuse", "gen-nn")


def _audit(denoiser, members: np.ndarray, holdout: np.ndarray, attacks=BLACK_BOX, params=None) -> dict:
    return audit_arrays(denoiser, members, holdout, attacks=attacks, params=params)


@pytest.fixture(scope="module")
def memorising_audit(digits_u8) -> dict:
    return memorising_oracle_audit(digits_u8, attacks=BLACK_BOX)


@pytest.fixture(scope="module")
def gaussian_audit(digits_u8) -> dict:
    return gaussian_oracle_audit(digits_u8, attacks=BLACK_BOX)


@pytest.mark.parametrize("cls", [ReDiffuseAttack, GeneratedNearestNeighbourAttack, PromptCopyAttack])
def test_contract(cls):
    check_plugin(cls)
    assert cls.threat_model == "black-box" and "sampling" in cls.requires and "white_box" not in cls.requires


@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_attacks_separate_the_memorising_oracle(memorising_audit, name):
    res = plugin(memorising_audit, name)
    assert res["status"] == "ok", res.get("reason")
    assert res["metrics"]["auc"]["value"] >= 0.95
    assert res["threat_model"] == "black-box" and res["queries_per_image"] > 0


@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_attacks_are_at_chance_on_the_gaussian_oracle(gaussian_audit, name):
    res = plugin(gaussian_audit, name)
    assert res["status"] == "ok", res.get("reason")
    assert abs(res["metrics"]["auc"]["value"] - 0.5) <= 0.1


def test_rediffuse_choices_come_from_the_calibration_grid(memorising_audit):
    fitted = plugin(memorising_audit, "rediffuse")["details"]["fitted"]
    assert set(fitted["grid_"]) == {f"{t}/{k}" for t in (100, 200, 300) for k in (1, 2, 4)}
    best = max(fitted["grid_"].values())
    assert fitted["grid_"][f"{fitted['timestep_']}/{fitted['k_']}"] == best
    # DDIM with 20 steps over 1000 timesteps enters at the chosen t: k draws x (t / 50 + 1) steps
    assert fitted["queries_"] == fitted["k_"] * (fitted["timestep_"] // 50 + 1)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_rediffuse_scores_do_not_depend_on_the_batch(digits_u8, sampler):
    den = EmpiricalOracle(to_tensor(digits_u8[:32]))
    x = to_tensor(digits_u8[:8])
    attack = ReDiffuseAttack(timesteps=(200,), draws=(2,), sampler=sampler).fit(den, members=x, holdout=x, seed=0)
    whole = attack.score(den, x, noise=Noise.for_images(x, seed=3, stream="rediffuse"))
    parts = torch.cat([attack.score(den, x[i:i + 3], noise=Noise.for_images(x[i:i + 3], seed=3, stream="rediffuse"))
                       for i in range(0, 8, 3)])
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(whole).all()


def test_gen_nn_scores_by_distance_to_the_nearest_sample(digits_u8):
    den = EmpiricalOracle(to_tensor(digits_u8[:16]))
    attack = GeneratedNearestNeighbourAttack(n_samples=32, steps=10).fit(den, members=None, holdout=None, seed=0)
    x = to_tensor(digits_u8[:4])
    pool = attack._samples
    expect = -torch.cdist(x.flatten(1), pool.flatten(1)).pow(2).min(1).values / x[0].numel()
    torch.testing.assert_close(attack.score(den, x, noise=Noise.for_images(x, seed=0)), expect, rtol=1e-4, atol=1e-6)


def test_bad_parameters_are_clear_errors():
    reg = Registry.build()
    for name, params in (("rediffuse", {"sampler": "euler"}), ("rediffuse", {"timesteps": (0,)}),
                         ("gen-nn", {"n_samples": 0}), ("prompt-copy", {"k": 0})):
        with pytest.raises(PluginError, match=name):
            reg.create(name, kind="attack", **params)


def test_prompt_copy_is_skipped_on_pixel_models(memorising_audit, digits_u8):
    res = _audit(EmpiricalOracle(to_tensor(digits_u8[:16])), digits_u8[:16], digits_u8[16:32], attacks=("prompt-copy",))
    assert plugin(res, "prompt-copy")["status"] == "skipped"


# ---------------------------------------------------------------- the built-in target


@pytest.fixture(scope="module")
def bb_scan(digits_target, tmp_path_factory) -> dict:
    return run_scan(digits_target, tmp_path_factory.mktemp("bb"), attacks=BLACK_BOX, detectors=("nn",))


@pytest.fixture(scope="module")
def bb_null_scan(digits_target, tmp_path_factory) -> dict:
    return run_scan(digits_target, tmp_path_factory.mktemp("bb-null"), members="null", attacks=BLACK_BOX, detectors=())


@pytest.mark.slow
@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_attacks_detect_the_memorising_target(bb_scan, name):
    res = plugin(bb_scan, name)
    assert res["status"] == "ok", res.get("reason")
    assert res["metrics"]["auc"]["value"] >= 0.9
    lo, hi = res["metrics"]["tpr_at_fpr_0.01"]["ci"]
    assert 0 <= lo <= hi <= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_attacks_are_at_chance_on_the_null_control(bb_null_scan, name):
    res = plugin(bb_null_scan, name)
    assert res["status"] == "ok", res.get("reason")
    assert abs(res["metrics"]["auc"]["value"] - 0.5) <= 0.1


@pytest.mark.slow
def test_gen_nn_cost_is_the_detectors_sampling_spread_over_the_images(bb_scan):
    # gen-nn reads the samples the nn detector draws (same n, steps, sampler, seed: one cached sampling)
    nn, gen = plugin(bb_scan, "nn"), plugin(bb_scan, "gen-nn")
    assert (gen["params"]["n_samples"], gen["params"]["steps"]) == (nn["params"]["n_samples"], nn["params"]["steps"])
    n_img = bb_scan["data"]["members"]["count"] + bb_scan["data"]["holdout"]["count"]
    assert gen["queries_per_image"] == pytest.approx(gen["params"]["n_samples"] * gen["params"]["steps"] / n_img)


# ---------------------------------------------------------------- text-conditional (latent) target


@pytest.fixture(scope="module")
def text_bb_scans(digits_text_target, tmp_path_factory) -> dict:
    from privaudit.audit.runner import scan

    out = {}
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only synchronises
    try:
        for members in ("members", "null"):
            attacks = ("prompt-copy", "rediffuse", "gen-nn")
            settings = AuditSettings(attacks=attacks, detectors=(), progress=False, n_boot=200)
            out[members] = scan(model_dir=digits_text_target / "model", members=digits_text_target / members,
                                holdout=digits_text_target / "holdout", out=tmp_path_factory.mktemp(f"text-bb-{members}"),
                                settings=settings, device="cpu")
    finally:
        torch.set_num_threads(n)
    return out


@pytest.mark.slow
def test_black_box_attacks_on_the_text_model(text_bb_scans):
    for name in ("prompt-copy", "rediffuse", "gen-nn"):
        res = plugin(text_bb_scans["members"], name)
        assert res["status"] == "ok", res.get("reason")
        assert res["metrics"]["auc"]["value"] >= 0.9, name
    # prompt-copy: k draws x steps x 2 guidance branches per image
    assert plugin(text_bb_scans["members"], "prompt-copy")["queries_per_image"] == 2 * 25 * 2
    for name in ("prompt-copy", "rediffuse", "gen-nn"):  # never-seen captioned digits as members: chance
        assert abs(plugin(text_bb_scans["null"], name)["metrics"]["auc"]["value"] - 0.5) <= 0.15, name


def test_a_model_that_returns_nan_is_inconclusive_never_low(digits_u8):
    class Broken(EmpiricalOracle):
        def eps(self, x_t, t, cond=None):
            return torch.full_like(x_t, float("nan"))

    res = _audit(Broken(to_tensor(digits_u8[:20])), digits_u8[:20], digits_u8[20:40])
    for name in BLACK_BOX:
        p = plugin(res, name)
        assert p["status"] == "ok" and p["severity"] == "info" and "could not judge" in p["finding"], p
    assert res["verdict"]["level"] == "inconclusive"


def test_score_time_text_views_are_rebound_per_chunk(digits_text_denoiser):
    """A batch bound to its captions and cut into chunks keeps each image's caption (it once tiled the whole
    batch's captions onto each chunk's draws: misaligned conditioning, silently)."""
    from privaudit.model.latent import ConditionedDenoiser
    from privaudit.plugins.attacks._common import image_chunks

    lat = digits_text_denoiser
    emb = lat.prompt_embeddings([f"a handwritten digit {i}" for i in range(10)])
    view = ConditionedDenoiser(lat, cond=emb)
    chunks = list(image_chunks(view, torch.zeros(10, *lat.sample_shape), Noise([str(i) for i in range(10)], seed=0),
                               size=4))
    assert [len(x) for _, x, _ in chunks] == [4, 4, 2]
    for i, (den, x, noise) in enumerate(chunks):
        torch.testing.assert_close(den.conditioning(len(x)), emb[4 * i:4 * i + len(x)])
        assert noise.keys == tuple(str(j) for j in range(4 * i, 4 * i + len(x)))


def test_direction_is_chosen_on_calibration_when_members_come_back_farther(digits_u8):
    # a model that reproduces the *holdout* images: members are the ones that come back far (as under a guard that
    # pushes members away); the two-sided attacks read the distance the other way round, one-sided ones cannot
    den = EmpiricalOracle(to_tensor(digits_u8[64:128]))
    res = _audit(den, digits_u8[:64], digits_u8[64:128],
                 params={"rediffuse": {"timesteps": (100,), "draws": (1,)}})
    for name in BLACK_BOX:
        p = plugin(res, name)
        assert p["details"]["fitted"]["direction_"] == -1.0 and p["metrics"]["auc"]["value"] >= 0.95, name
    one_sided = _audit(den, digits_u8[:64], digits_u8[64:128], params={
        "rediffuse": {"timesteps": (100,), "draws": (1,), "two_sided": False}, "gen-nn": {"two_sided": False}})
    for name in BLACK_BOX:
        assert plugin(one_sided, name)["metrics"]["auc"]["value"] <= 0.05, name
