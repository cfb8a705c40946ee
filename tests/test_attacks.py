"""Membership attacks: hand-computed signals, oracle denoisers, the digits target, the null control."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from conftest import ALL_ATTACKS, gaussian_oracle_audit, memorising_oracle_audit, plugin

from privaudit.api.registry import ENTRY_POINT_GROUP, Registration, Registry
from privaudit.audit.ensemble import ensemble_view
from privaudit.io.errors import InputError
from privaudit.model.denoiser import Denoiser
from privaudit.model.noise import Noise
from privaudit.plugins.attacks.gsa import GSAAttack
from privaudit.plugins.attacks.loss import LossAttack
from privaudit.plugins.attacks.pia import PIAAttack
from privaudit.plugins.attacks.pian import PIANAttack
from privaudit.plugins.attacks.secmi import SecMIAttack
from privaudit.plugins.attacks.sima import SimAAttack

CLASSES = {c.name: c for c in (LossAttack, SecMIAttack, PIAAttack, PIANAttack, SimAAttack, GSAAttack)}
GRAY_BOX = tuple(n for n in ALL_ATTACKS if n != "gsa")


class ToyDenoiser(Denoiser):
    """eps(x, t) = c_t x with c_t = 0.5 + t / 2000: a known function; records every call."""

    white_box = None

    def __init__(self, num_train_timesteps: int = 1000):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.sample_shape, self.device = (1, 2, 2), torch.device("cpu")
        self.calls: list[tuple[list[int], int]] = []

    def c(self, t: int) -> float:
        return 0.5 + t / 2000

    def eps(self, x_t, t, cond=None):
        t = torch.as_tensor(t)
        t = t.expand(len(x_t)) if t.ndim == 0 else t
        self.calls.append((sorted(set(t.tolist())), len(x_t)))
        return x_t * (0.5 + t.float() / 2000).view(-1, 1, 1, 1)

    def a(self, t: int) -> float:
        return float(self.alphas_cumprod[t])


X0 = torch.tensor([[0.5, -1.0, 0.25, 0.0], [1.0, 1.0, -0.5, 0.75], [-0.2, 0.1, 0.9, -0.6]]).view(3, 1, 2, 2)


def _noise(seed: int = 0) -> Noise:
    return Noise.for_images(X0, seed=seed, stream="test")


# ---------------------------------------------------------------- hand computations


def test_loss_signal_by_hand():
    den = ToyDenoiser()
    attack = LossAttack(timesteps=(200,), k=2).fit(den, members=X0, holdout=X0, seed=0)
    got = attack.score(den, X0, noise=_noise()).numpy()
    e = _noise().randn((6, 1, 2, 2), tag=200).double().numpy()  # k draws, stacked
    a, x = den.a(200), np.tile(X0.double().numpy(), (2, 1, 1, 1))
    x_t = math.sqrt(a) * x + math.sqrt(1 - a) * e
    err = ((den.c(200) * x_t - e) ** 2).reshape(6, -1).mean(1).reshape(2, 3).mean(0)
    np.testing.assert_allclose(got, -err, rtol=1e-5)


def _ddim_gain(den: ToyDenoiser, s: int, s2: int) -> float:
    """With eps = c_s x, one DDIM step s -> s2 multiplies x by this number."""
    a, a2, c = den.a(s), den.a(s2), den.c(s)
    return math.sqrt(a2 / a) * (1 - math.sqrt(1 - a) * c) + math.sqrt(1 - a2) * c


def test_secmi_signal_by_hand():
    den = ToyDenoiser()
    # float64 input: the error is a small difference of nearly equal numbers
    got = SecMIAttack(t_sec=100, k=10).score(den, X0.double(), noise=_noise()).numpy()
    g = math.prod(_ddim_gain(den, s, s + 10) for s in range(0, 90, 10))  # x0 -> x_90
    roundtrip = _ddim_gain(den, 90, 100) * _ddim_gain(den, 100, 90)
    expected = -((roundtrip - 1) * g) ** 2 * X0.double().pow(2).flatten(1).sum(1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_pia_and_pian_signals_by_hand():
    den = ToyDenoiser()
    a, c0, ct = den.a(200), den.c(0), den.c(200)
    x = X0.double().flatten(1).numpy()
    got = PIAAttack(t=200, p=4).score(den, X0, noise=_noise()).numpy()
    gain = c0 - ct * (math.sqrt(a) + math.sqrt(1 - a) * c0)  # eps0 - eps_t = gain * x0
    np.testing.assert_allclose(got, -(np.abs(gain * x) ** 4).sum(1), rtol=1e-4)
    got = PIANAttack(t=200, p=4).score(den, X0, noise=_noise()).numpy()
    g = math.sqrt(2 / math.pi) / np.abs(x).mean(1, keepdims=True)  # normalised eps0 = g * x0
    gain = g - ct * (math.sqrt(a) + math.sqrt(1 - a) * g)
    np.testing.assert_allclose(got, -(np.abs(gain * x) ** 4).sum(1), rtol=1e-4)


def test_sima_signal_by_hand():
    den = ToyDenoiser()
    attack = SimAAttack(timesteps=(40,), p=4).fit(den, members=X0, holdout=X0, seed=0)
    got = attack.score(den, X0, noise=_noise()).numpy()
    np.testing.assert_allclose(got, -(np.abs(den.c(40) * X0.double().flatten(1).numpy()) ** 4).sum(1), rtol=1e-5)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.b = torch.nn.Parameter(torch.tensor(-0.2))

    def forward(self, x, t):
        return self.w * x + self.b


class _WhiteBox(ToyDenoiser):
    def __init__(self):
        super().__init__()
        self.white_box = _Linear()

    def eps(self, x_t, t, cond=None):
        return self.white_box(x_t, t)


@pytest.mark.parametrize("variant", ["gsa1", "gsa2"])
def test_gsa_gradient_features_by_hand(variant):
    den = _WhiteBox()
    attack = GSAAttack(n_timesteps=4, variant=variant)
    assert attack.timesteps(den) == [249, 499, 749, 999]
    got = attack.features(den, X0, noise=_noise())
    a = den.alphas_cumprod[[249, 499, 749, 999]].double().numpy().reshape(1, 4, 1)
    e = _noise().randn((3, 4, 1, 2, 2), tag="gsa").double().numpy().reshape(3, 4, 4)
    x = X0.double().numpy().reshape(3, 1, 4)
    x_t = np.sqrt(a) * x + np.sqrt(1 - a) * e  # (image, timestep, pixel)
    r = 0.7 * x_t - 0.2 - e
    if variant == "gsa1":  # gradient of the loss averaged over timesteps and pixels
        expected = np.stack([np.abs((2 * r * x_t).mean((1, 2))), np.abs((2 * r).mean((1, 2)))], 1)
    else:  # one gradient per timestep, norms averaged
        expected = np.stack([np.abs((2 * r * x_t).mean(2)).mean(1), np.abs((2 * r).mean(2)).mean(1)], 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert den.white_box.w.requires_grad  # the network's own flags are left alone


def test_sima_timestep_is_chosen_on_calibration_data():
    class InformativeAt40(ToyDenoiser):
        def eps(self, x_t, t, cond=None):
            return x_t if int(torch.as_tensor(t).flatten()[0]) == 40 else torch.ones_like(x_t)

    den = InformativeAt40()
    small, large = X0 * 0.1, X0 * 3
    attack = SimAAttack().fit(den, members=small, holdout=large, seed=0)
    assert attack.timestep_ == 40
    assert attack.sweep_[40] == 1.0 and all(v == 0.5 for t, v in attack.sweep_.items() if t != 40)


# ---------------------------------------------------------------- cost and schedules


def _same_snr(den, t: int) -> int:
    """The index of ``den``'s schedule with the signal-to-noise ratio DDPM's linear schedule has at t."""
    ref = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    acp = den.alphas_cumprod.double()
    return int(((acp / (1 - acp)).log() - math.log(ref[t] / (1 - ref[t]))).abs().argmin())


@pytest.mark.parametrize("name", GRAY_BOX)
def test_scoring_cost_is_the_minimum_and_timesteps_follow_the_schedule(name):
    den = ToyDenoiser(num_train_timesteps=500)  # literature timesteps map by equal SNR, not by index
    attack = CLASSES[name]()
    attack.fit(den, members=X0, holdout=X0 * 2, seed=0)
    den.calls.clear()
    attack.score(den, X0, noise=_noise())
    rows = sum(n for _, n in den.calls)
    assert rows == attack.queries_per_image() * len(X0)
    ts = [t for ts, _ in den.calls for t in ts]
    snr = lambda t: _same_snr(den, t)
    expected = {"pia": [0, snr(200)], "pian": [0, snr(200)], "secmi": [*(snr(t) for t in range(0, 100, 10)), snr(100)],
                "sima": [getattr(attack, "timestep_", None)], "loss": [getattr(attack, "timestep_", None)]}[name]
    assert ts == expected
    assert all(t < 500 for t in ts)
    assert {"pia": 2, "pian": 2, "secmi": 11, "sima": 1, "loss": 4}[name] == attack.queries_per_image()


def test_bad_parameters_are_clear_errors():
    den = ToyDenoiser()
    with pytest.raises(InputError, match="secmi: need integers 1 <= k <= t_sec"):
        SecMIAttack(k=0).score(den, X0, noise=_noise())
    with pytest.raises(InputError, match="pia: p must be"):
        PIAAttack(p=-1).score(den, X0, noise=_noise())
    with pytest.raises(InputError, match="sima: timesteps"):
        SimAAttack(timesteps=(2000,)).fit(den, members=X0, holdout=X0, seed=0)
    with pytest.raises(InputError, match="gsa: variant"):
        GSAAttack(variant="gsa3").fit(_WhiteBox(), members=X0, holdout=X0, seed=0)


def test_every_attack_is_registered_with_its_metadata():
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    ids = set()
    for name in ALL_ATTACKS:
        cls = eps[name].load()
        assert cls is CLASSES[name] and cls.kind == "attack" and cls.references and cls.__doc__
        assert cls.threat_model in ("white-box", "gray-box", "black-box")
        ids.add(cls.id)
        rebuilt = cls(**cls().get_params())
        assert rebuilt.get_params() == cls().get_params()
    assert len(ids) == len(ALL_ATTACKS)
    assert GSAAttack.requires == ("white_box",) and GSAAttack.threat_model == "white-box"


# ---------------------------------------------------------------- oracles


REGISTRY = Registry([Registration(n, "attack", CLASSES[n], "test") for n in ALL_ATTACKS])


@pytest.fixture(scope="module")
def memorising_audit(digits_u8) -> dict:
    return memorising_oracle_audit(digits_u8, attacks=ALL_ATTACKS, registry=REGISTRY)


@pytest.fixture(scope="module")
def gaussian_audit(digits_u8) -> dict:
    return gaussian_oracle_audit(digits_u8, attacks=ALL_ATTACKS, registry=REGISTRY)


@pytest.mark.parametrize("name", GRAY_BOX)
def test_every_attack_separates_the_memorising_oracle(memorising_audit, name):
    res = plugin(memorising_audit, name)
    assert res["status"] == "ok", res["reason"]
    assert res["metrics"]["auc"]["value"] >= 0.95


@pytest.mark.parametrize("name", GRAY_BOX)
def test_every_attack_is_at_chance_on_the_gaussian_oracle(gaussian_audit, name):
    res = plugin(gaussian_audit, name)
    assert res["status"] == "ok", res["reason"]
    assert abs(res["metrics"]["auc"]["value"] - 0.5) <= 0.1


def test_gsa_is_skipped_without_white_box(memorising_audit, gaussian_audit):
    for results in (memorising_audit, gaussian_audit):
        res = plugin(results, "gsa")
        assert res["status"] == "skipped" and "white_box" in res["reason"]
        assert "gsa" not in results["ensemble"]["attacks"]


# ---------------------------------------------------------------- the built-in target


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_every_attack_detects_the_memorising_target(all_attacks_scan, name):
    res = plugin(all_attacks_scan, name)
    assert res["status"] == "ok", res["reason"]
    assert res["metrics"]["auc"]["value"] >= 0.9
    for key in ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "balanced_accuracy"):
        lo, hi = res["metrics"][key]["ci"]
        assert 0 <= lo <= hi <= 1
    assert res["queries_per_image"] == CLASSES[name]().queries_per_image() > 0
    assert res["threat_model"] == CLASSES[name].threat_model


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_every_attack_is_at_chance_on_the_null_control(all_attacks_null_scan, name):
    res = plugin(all_attacks_null_scan, name)
    assert res["status"] == "ok", res["reason"]
    assert abs(res["metrics"]["auc"]["value"] - 0.5) <= 0.1


@pytest.mark.slow
def test_ensemble_headline_is_the_strongest_attack(all_attacks_scan, all_attacks_null_scan):
    for results in (all_attacks_scan, all_attacks_null_scan):
        ens = results["ensemble"]
        assert sorted(ens["attacks"]) == sorted(ALL_ATTACKS)
        for key in ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "balanced_accuracy"):
            row = ens["metrics"][key]
            values = {p["name"]: p["metrics"][key]["value"] for p in results["plugins"]}
            assert row["value"] == max(values.values()) == values[row["attack"]]
            assert row["ci"] == plugin(results, row["attack"])["metrics"][key]["ci"]
    assert all_attacks_scan["ensemble"]["metrics"]["auc"]["value"] >= 0.9


def _result(name, auc, tpr, *, threat="gray-box", q=2.0, status="ok"):
    metric = lambda v: {"value": v, "ci": [v - 0.1, v + 0.05], "reliable": True, "note": ""}
    return {"name": name, "id": name, "kind": "attack", "status": status, "threat_model": threat,
            "queries_per_image": q, "metrics": {"auc": metric(auc), "tpr_at_fpr_0.01": metric(tpr)}}


def test_ensemble_view_picks_the_worst_case_and_breaks_ties_by_least_access():
    view = ensemble_view([
        _result("a", 0.80, 0.10), _result("b", 0.90, 0.05),
        _result("wb", 0.95, 0.30, threat="white-box", q=10), _result("cheap", 0.95, 0.02, q=1),
        _result("broken", 0.99, 0.99, status="error"),
        {"name": "nn", "kind": "detector", "status": "ok", "metrics": {"auc": {"value": 1.0}}},
    ])
    assert view["attacks"] == ["a", "b", "wb", "cheap"]
    auc = view["metrics"]["auc"]
    assert (auc["attack"], auc["value"], auc["tied"]) == ("cheap", 0.95, ["cheap", "wb"])
    assert view["metrics"]["tpr_at_fpr_0.01"]["attack"] == "wb"
    assert ensemble_view([])["metrics"] == {}
