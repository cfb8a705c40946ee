"""The attack catalogue: pfami, clid, ssim-rediffuse and the first-step memorised-prompt detectors
(memprompt-anisotropy, memprompt-curvature).

Each: the plugin contract, oracles (the memorising oracle separated, the Gaussian one at chance), the
fixtures and their null controls, and the published definitions recomputed by short independent
code (agreement within 0.02 AUC)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import audit_arrays, gaussian_oracle_audit, memorising_oracle_audit, plugin, run_scan, to_tensor
from sklearn.metrics import roc_auc_score

from privaudit.api.registry import Registry
from privaudit.plugins.attacks._ssim import ssim
from privaudit.plugins.attacks.clid import CLiDAttack, clip_words
from privaudit.plugins.attacks.pfami import PFAMIAttack, crop_resize
from privaudit.plugins.attacks.ssim_rediffuse import SSIMReDiffuseAttack
from privaudit.plugins.detectors.memprompt_anisotropy import AnisotropyPromptDetector
from privaudit.plugins.detectors.memprompt_curvature import CurvaturePromptDetector
from privaudit.testing import check_plugin
from privaudit.testing.oracles import EmpiricalOracle

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread

PIXEL = ("pfami", "ssim-rediffuse")
FAST_PFAMI = {"timesteps": (100, 200, 300), "strengths": (0.9, 0.8, 0.7)}  # the suite's budget; defaults in the note


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("cls", [PFAMIAttack, CLiDAttack, SSIMReDiffuseAttack, AnisotropyPromptDetector,
                                 CurvaturePromptDetector])
def test_contract(cls):
    check_plugin(cls)
    assert cls.__doc__ and cls.references and cls().queries_per_image() > 0


def test_declared_costs_and_access():
    assert PFAMIAttack().queries_per_image() == 10 * 11  # 10 timesteps x (image + 10 neighbours)
    assert CLiDAttack().queries_per_image() == 3 * 5  # 3 timesteps x (caption, 3 clipped, empty): the authors' 15
    assert SSIMReDiffuseAttack.threat_model == "black-box" and "sampling" in SSIMReDiffuseAttack.requires
    assert CLiDAttack.requires == ("text",) and CurvaturePromptDetector.threat_model == "white-box"


# ---------------------------------------------------------------- building blocks


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float, win: int = 7) -> float:
    """Wang et al.'s SSIM as scikit-image computes it by default: uniform window, sample covariances,
    the mean over positions at least (win - 1) / 2 from the border, channels averaged."""
    from scipy.ndimage import uniform_filter

    vals = []
    for x, y in zip(a, b):
        ux, uy = uniform_filter(x, win), uniform_filter(y, win)
        f = win * win / (win * win - 1)
        vx = f * (uniform_filter(x * x, win) - ux * ux)
        vy = f * (uniform_filter(y * y, win) - uy * uy)
        vxy = f * (uniform_filter(x * y, win) - ux * uy)
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        p = (win - 1) // 2
        vals.append(s[p:-p, p:-p].mean())
    return float(np.mean(vals))


def test_ssim_matches_an_independent_implementation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, 16, 12, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    got = ssim(a, b)
    want = [_ssim_reference(a[i].double().numpy(), b[i].double().numpy(), 2.0) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert torch.allclose(ssim(a, a), torch.ones(3)) and (got < 0.99).all()
    with pytest.raises(ValueError, match="ssim"):
        ssim(a, b[:, :1])


def test_crop_resize_and_clipped_captions():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    torch.testing.assert_close(crop_resize(x, 1.0), x)  # no crop: resizing to its own size changes nothing
    y = crop_resize(x, 0.5)
    assert y.shape == x.shape and y.min() >= x[..., 2:6, 2:6].min() - 1e-4 and y.max() <= x[..., 2:6, 2:6].max() + 1e-4
    g = torch.Generator().manual_seed(0)
    c = "a handwritten digit six, sample sofe"
    out = clip_words(c, 0.5, g)
    assert len(out.split()) == 3 and set(out.split()) <= set(c.split())
    assert clip_words("one", 0.7, g) == "one" and len(clip_words(c, 0.99, g).split()) == 1


# ---------------------------------------------------------------- oracles


@pytest.fixture(scope="module")
def memorising_audit(digits_u8) -> dict:
    return memorising_oracle_audit(digits_u8, attacks=PIXEL)


@pytest.fixture(scope="module")
def gaussian_audit(digits_u8) -> dict:
    return gaussian_oracle_audit(digits_u8, attacks=PIXEL)


@pytest.mark.parametrize("name", PIXEL)
def test_the_memorising_oracle_is_separated(memorising_audit, name):
    res = plugin(memorising_audit, name)
    assert res["status"] == "ok", res.get("reason")
    assert res["metrics"]["auc"]["value"] >= 0.95 and res["queries_per_image"] > 0


@pytest.mark.parametrize("name", PIXEL)
def test_the_gaussian_oracle_is_at_chance(gaussian_audit, name):
    res = plugin(gaussian_audit, name)
    assert res["status"] == "ok", res.get("reason")
    assert abs(res["metrics"]["auc"]["value"] - 0.5) <= 0.1


def test_clid_is_skipped_on_pixel_models(digits_u8):
    res = audit_arrays(EmpiricalOracle(to_tensor(digits_u8[:16])), digits_u8[:16], digits_u8[16:32], attacks=("clid",))
    assert plugin(res, "clid")["status"] == "skipped"


# ---------------------------------------------------------------- the fixtures and their null controls


def _catalogue_scan(target, out, members: str) -> dict:
    return run_scan(target, out, members=members, attacks=("pfami", "ssim-rediffuse", "clid"),
                    detectors=("memprompt-anisotropy", "memprompt-curvature"), params={"pfami": FAST_PFAMI})


@pytest.fixture(scope="module")
def pixel_scans(digits_target, tmp_path_factory):
    return {m: run_scan(digits_target, tmp_path_factory.mktemp(f"cat-{m}"), members=m, attacks=PIXEL,
                        detectors=(), params={"pfami": FAST_PFAMI}) for m in ("members", "null")}


@pytest.fixture(scope="module")
def text_scans(digits_text_target, tmp_path_factory):
    pytest.importorskip("transformers")
    return {m: _catalogue_scan(digits_text_target, tmp_path_factory.mktemp(f"cat-text-{m}"), m)
            for m in ("members", "null")}


def _in_ci(res: dict, value: float = 0.5) -> bool:
    lo, hi = res["metrics"]["auc"]["ci"]
    return lo <= value <= hi


@pytest.mark.slow
@pytest.mark.parametrize("name", PIXEL)
def test_pixel_fixture_and_null_control(pixel_scans, name):
    res, null = plugin(pixel_scans["members"], name), plugin(pixel_scans["null"], name)
    assert res["status"] == null["status"] == "ok"
    assert res["metrics"]["auc"]["value"] >= 0.9 and res["metrics"]["tpr_at_fpr_0.01"]["value"] >= 0.3
    assert _in_ci(null)


@pytest.mark.slow
@pytest.mark.parametrize("name", ("pfami", "ssim-rediffuse", "clid"))
def test_text_fixture_and_null_control(text_scans, name):
    res, null = plugin(text_scans["members"], name), plugin(text_scans["null"], name)
    assert res["status"] == null["status"] == "ok", (res.get("reason"), null.get("reason"))
    assert res["metrics"]["auc"]["value"] >= 0.9
    assert _in_ci(null)
    if name == "clid":
        fitted = res["details"]["fitted"]
        assert set(fitted["sweep_"]) == {round(a / 10, 1) for a in range(11)} and fitted["alpha_"] in fitted["sweep_"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ("memprompt-anisotropy", "memprompt-curvature"))
def test_prompt_detectors_on_the_text_fixture(text_scans, name):
    res, null = plugin(text_scans["members"], name), plugin(text_scans["null"], name)
    assert res["status"] == null["status"] == "ok"
    assert res["metrics"]["auc"]["ci"][0] > 0.5  # member captions score higher than unseen ones
    assert _in_ci(null)  # never-seen captions labelled as members: no separation
    assert "memorised_fraction" in res["metrics"]


# ---------------------------------------------------------------- the published definitions, recomputed


def _auc(members, holdout) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(members)), np.zeros(len(holdout))], np.r_[members, holdout]))


@pytest.mark.slow
def test_pfami_agrees_with_copymarks_definition(digits_target, digits_denoiser):
    """CopyMark's PFAMI: a fresh noise draw per neighbour, the summed squared error, sum_t mean_s (L - L_s) / L,
    lower = member; ours: shared draws, mean error, the negated form."""
    from privaudit.data.sets import load_images
    from privaudit.model.denoiser import scale_t
    from privaudit.model.noise import Noise

    den = digits_denoiser
    sets = [load_images(digits_target / s, name=s).tensor(np.arange(64)) for s in ("members", "holdout")]
    attack = PFAMIAttack(**FAST_PFAMI)
    ours = [attack.score(den, x, noise=Noise.for_images(x, seed=1, stream="pfami")).numpy() for x in sets]

    def copymark(x: torch.Tensor) -> np.ndarray:
        g = torch.Generator().manual_seed(10)
        score = torch.zeros(len(x), dtype=torch.float64)
        with torch.no_grad():
            for t1000 in FAST_PFAMI["timesteps"]:
                t = scale_t(den, t1000)
                a = float(den.alphas_cumprod[t])

                def loss(img):
                    e = torch.randn(img.shape, generator=g)
                    pred = den.eps(a ** 0.5 * img + (1 - a) ** 0.5 * e, torch.full((len(img),), t))
                    return (pred - e).pow(2).flatten(1).sum(1).double()

                base = loss(x)
                score += torch.stack([(base - loss(crop_resize(x, s))) / (base + 1e-6)
                                      for s in FAST_PFAMI["strengths"]]).mean(0)
        return -score.numpy()  # lower = member

    theirs = [copymark(x) for x in sets]
    assert abs(_auc(*ours) - _auc(*theirs)) <= 0.02, (_auc(*ours), _auc(*theirs))
    assert _auc(*ours) >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("signal", ["anisotropy", "curvature"])
def test_prompt_signals_agree_with_the_authors_definitions(digits_text_denoiser, digits_text_target, signal):
    """Their scores, written out from the papers' code with the model's own calls: the same x_T for every
    prompt (the authors reset the seed per prompt: one draw, ``n_seeds=1``)."""
    import torch.nn.functional as F

    from privaudit.data.sets import load_images
    from privaudit.model.denoiser import sampling_scheduler
    from privaudit.model.latent import latent_of

    lat = latent_of(digits_text_denoiser)
    caps = [list(load_images(digits_text_target / s, name=s).captions)[:48] for s in ("members", "holdout")]
    cls = AnisotropyPromptDetector if signal == "anisotropy" else CurvaturePromptDetector
    det = cls(n_seeds=1)
    ours = [det.prompt_scores(digits_text_denoiser, c, seed=7) for c in caps]
    ts = sampling_scheduler(lat, "ddim", 50).timesteps
    z = torch.randn((1, *lat.sample_shape), generator=torch.Generator().manual_seed(7))
    empty = lat.prompt_embeddings([""])

    def theirs(prompt: str) -> float:
        c = lat.prompt_embeddings([prompt])
        if signal == "anisotropy":
            with torch.no_grad():
                norm = (lat.eps(z, int(ts[0]), c) - lat.eps(z, int(ts[0]), empty)).norm()
                eu = lat.eps(z, int(ts[-3]), empty)
                cos = F.cosine_similarity(eu, lat.eps(z, int(ts[-3]), c) - eu, dim=1).mean()
            return float(1.0 * norm + 2.0 * cos)
        grads = []
        for cond in (c, empty):
            x = z.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(0.5 * lat.eps(x, int(ts[0]), cond).pow(2).sum(), x)[0])
        return float((grads[0] - grads[1]).pow(2).sum())

    ref = [np.array([theirs(p) for p in c]) for c in caps]
    np.testing.assert_allclose(np.r_[ours[0], ours[1]], np.r_[ref[0], ref[1]], rtol=1e-3, atol=1e-5)
    assert abs(_auc(*ours) - _auc(*ref)) <= 0.02


# ---------------------------------------------------------------- the detectors as the mitigations' gate


@pytest.mark.slow
@pytest.mark.parametrize("signal", ["anisotropy", "curvature"])
def test_each_signal_gates_the_text_mitigations(digits_text_denoiser, digits_text_target, signal):
    from privaudit.data.sets import load_images
    from privaudit.plugins.mitigations.prompted.gate import PromptGate, calibrate

    lat = digits_text_denoiser
    members = list(load_images(digits_text_target / "members", name="members").captions)[:32]
    unseen = list(load_images(digits_text_target / "reference", name="reference").captions)[:64]
    cal = calibrate(lat, unseen=unseen, members=members, fpr=0.05, n_seeds=2, seed=0, signal=signal)
    assert cal["signal"] == signal and cal["unseen_flag_rate"] <= 0.05 + 1 / 64 and cal["member_flag_rate"] > 0.05
    gate = PromptGate(threshold=cal["threshold"], n_seeds=2, seed=0, signal=signal)
    flags = gate.flags(lat, lat.prompt_embeddings(members + [""]))
    assert flags.float().mean() > 0 and "gated" in gate.describe() and not bool(flags[-1])


def test_the_mitigations_take_the_gate_signal():
    from privaudit.io.errors import PluginError
    from privaudit.plugins.mitigations.prompted import CaptionNoise

    CaptionNoise(gate_signal="curvature").validate()
    with pytest.raises(PluginError, match="gate_signal"):
        Registry.build().create("caption-noise", kind="mitigation", gate_signal="sharpness")


@pytest.mark.slow
def test_clid_agrees_with_the_authors_null_caption_form(digits_text_denoiser, digits_text_target):
    """CLiD_th with the empty caption as the only degraded condition (their K = 1 ablation), written from
    the authors' code: t = 440, 450, 460, one draw each shared by both conditions, RobustScaler on
    [L, D], alpha from 0, 0.1, ..., 1 by AUC (they fit both on a shadow model; here on the scored data)."""
    from sklearn.preprocessing import RobustScaler

    from privaudit.data.sets import load_images
    from privaudit.model.latent import ConditionedDenoiser, latent_of
    from privaudit.model.noise import Noise

    lat = latent_of(digits_text_denoiser)
    sets = [load_images(digits_text_target / s, name=s) for s in ("members", "holdout")]
    idx = np.arange(32)  # the fixture's members; as many holdout images
    caps = [[s.captions[i] for i in idx] for s in sets]
    xs = [lat.encode(s.tensor(idx)) for s in sets]
    views = [ConditionedDenoiser(lat, cond=lat.prompt_embeddings(c), captions=c) for c in caps]
    attack = CLiDAttack(clip_fractions=())
    fit_view = ConditionedDenoiser(lat, by_rows={16: lat.prompt_embeddings(caps[0][:16]),
                                                 15: lat.prompt_embeddings(caps[1][:15])},
                                   captions_by_rows={16: caps[0][:16], 15: caps[1][:15]})
    attack.fit(fit_view, members=xs[0][:16], holdout=xs[1][:15], seed=0)
    ours = [attack.score(v, x, noise=Noise.for_images(x, seed=2, stream="clid")).numpy() for v, x in zip(views, xs)]

    g = torch.Generator().manual_seed(0)
    feats = []
    with torch.no_grad():
        for c, x in zip(caps, xs):
            cond, null = lat.prompt_embeddings(c), lat.prompt_embeddings([""] * len(c))
            loss = torch.zeros(2, len(x), dtype=torch.float64)
            for t in (440, 450, 460):
                e = torch.randn(x.shape, generator=g)
                a = float(lat.alphas_cumprod[t])
                xt = a ** 0.5 * x + (1 - a) ** 0.5 * e
                for j, cc in enumerate((cond, null)):
                    loss[j] += (lat.eps(xt, torch.full((len(x),), t), cc) - e).pow(2).flatten(1).mean(1).double() / 3
            feats.append(np.stack([loss[0].numpy(), (loss[1] - loss[0]).numpy()], 1))
    sc = RobustScaler().fit(np.concatenate(feats))
    theirs = max((_auc(*[a * sc.transform(f)[:, 1] - (1 - a) * sc.transform(f)[:, 0] for f in feats]), a)
                 for a in np.linspace(0, 1, 11))[0]
    assert abs(_auc(*ours) - theirs) <= 0.02, (_auc(*ours), theirs)
