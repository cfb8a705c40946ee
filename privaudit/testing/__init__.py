"""Contract checks for plugins, for third-party authors to run in their own test suites.

``check_plugin(cls)`` is privaudit's ``sklearn.utils.estimator_checks.check_estimator``: it
raises ``AssertionError`` listing every way ``cls`` breaks the plugin contract documented in
``privaudit.api``, or returns the list of checks that passed. Use it in a test::

    from privaudit.testing import check_plugin
    from my_package import BrightnessAttack

    def test_contract():
        check_plugin(BrightnessAttack)

What it checks:

- declarations (as at registration): ``name``, ``id``, ``kind``, ``threat_model``, ``requires``,
  the kind's hook implemented, ``__init__`` parameters keyword-only with defaults;
- a docstring (the plugin's documentation), ``references`` as strings, ``metric_specs`` as
  ``MetricSpec`` with unique names;
- scikit-learn's parameter rules: ``__init__`` only stores its parameters (no other attribute,
  no fitted ``*_`` attribute), ``type(p)(**p.get_params())`` rebuilds it, ``validate()`` accepts
  the defaults, and every declared parameter constraint rejects a value outside it;
- ``queries_per_image()`` a finite number >= 0;
- behaviour, for kinds that can be exercised without a model (``behaviour=True``):
  an attack is fitted and scores a tiny image set through a closed-form oracle denoiser (one
  finite score per image, the same score for an image whatever batch it is in); a feature extractor
  is fitted on a tiny reference set and maps images to a finite (n, d) float array,
  deterministically. Plugins that require capabilities the oracle lacks (``white_box``, ``text``)
  get the declaration checks only. ``params`` are passed to the constructor for the behaviour
  checks (e.g. a file a feature extractor needs).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch

from privaudit.api import (
    KINDS,
    FeatureExtractor,
    MembershipAttack,
    MetricSpec,
    Plugin,
    PrivauditError,
    declaration_problems,
)


def check_plugin(cls: type, *, params: dict[str, Any] | None = None, behaviour: bool = True) -> list[str]:
    """Check ``cls`` against the plugin contract; raise ``AssertionError`` listing every failure."""
    problems: list[str] = []
    passed: list[str] = []

    def check(name: str, fn) -> None:
        try:
            msg = fn()
        except Exception as e:  # noqa: BLE001 - a failing plugin check is a finding, reported with the others
            msg = f"raised {e.__class__.__name__}: {e}"
        if msg:
            problems.append(f"{name}: {msg}")
        else:
            passed.append(name)

    check("declarations", lambda: "; ".join(declaration_problems(cls)))
    if problems or not issubclass(cls, Plugin):  # nothing else can be trusted
        raise AssertionError(_message(cls, problems))
    check("docstring", lambda: None if cls.summary() else "the class docstring is the plugin's documentation; add one")
    check("references", lambda: None if isinstance(cls.references, tuple) and all(isinstance(r, str) for r in cls.references)
          else "references must be a tuple of strings")
    check("metric_specs", lambda: _check_specs(cls))
    check("init_only_stores", lambda: _check_init(cls))
    check("get_params_round_trip", lambda: _check_round_trip(cls))
    check("defaults_valid", lambda: cls().validate())
    check("constraints_reject", lambda: _check_constraints(cls))
    check("queries_per_image", lambda: _check_queries(cls))
    if behaviour and issubclass(cls, MembershipAttack) and not set(cls.requires) - {"sampling"}:
        check("attack_scores", lambda: _check_attack(cls, params or {}))
    if behaviour and issubclass(cls, FeatureExtractor):
        check("feature_transform", lambda: _check_feature(cls, params or {}))
    if problems:
        raise AssertionError(_message(cls, problems))
    return passed


def _message(cls: type, problems: list[str]) -> str:
    return f"{getattr(cls, '__name__', cls)} breaks the privaudit plugin contract:\n- " + "\n- ".join(problems)


def _check_specs(cls: type[Plugin]) -> str | None:
    specs = cls.metric_specs
    if not isinstance(specs, tuple) or not all(isinstance(s, MetricSpec) for s in specs):
        return "metric_specs must be a tuple of privaudit.api.MetricSpec"
    names = [s.name for s in specs]
    return f"duplicate metric names {sorted({n for n in names if names.count(n) > 1})}" if len(set(names)) < len(names) \
        else None


def _check_init(cls: type[Plugin]) -> str | None:
    p = cls()
    params = p.get_params()
    extra = sorted(set(vars(p)) - set(params))
    if extra:
        return f"__init__ sets attributes that are not its parameters: {extra} (only store parameters; compute in fit)"
    src = inspect.getsource(cls.__init__) if cls.__init__ is not Plugin.__init__ else ""
    return "__init__ must not validate or compute (raise in validate())" if "raise " in src else None


def _check_round_trip(cls: type[Plugin]) -> str | None:
    p = cls()
    q = type(p)(**p.get_params())
    return None if repr(q.get_params()) == repr(p.get_params()) else "type(p)(**p.get_params()) changes the parameters"


# values outside almost any declared constraint: each declared parameter must reject at least one
_OUTSIDE: tuple[object, ...] = (-1, 0, -0.5, 1.5, 10 ** 12, float("nan"), float("inf"), "not-a-valid-value", True, None, (), [])


def _check_constraints(cls: type[Plugin]) -> str | None:
    """Every ``__init__`` parameter is declared in ``parameter_constraints``, and each declaration
    rejects some value (``validate`` raises ``PrivauditError``): a declaration that accepts
    anything is no declaration."""
    constraints = getattr(cls, "parameter_constraints", None)
    sig = inspect.signature(cls.__init__)
    params = [k for k, prm in sig.parameters.items() if prm.kind is prm.KEYWORD_ONLY]
    if not params:
        return None
    if constraints is None:
        return "no parameter_constraints declared"
    undeclared = [k for k in params if k not in constraints]
    if undeclared:
        return f"parameters without a declared constraint: {undeclared}"
    vacuous = []
    for key in params:
        for bad in _OUTSIDE:
            try:
                cls(**{key: bad}).validate()
            except PrivauditError:
                break
            except Exception:  # noqa: BLE001 - failing differently still is not validation
                continue
        else:
            vacuous.append(key)
    return f"validate() accepts every probe value for {vacuous}: declare what they allow" if vacuous else None


def _check_queries(cls: type[Plugin]) -> str | None:
    q = cls().queries_per_image()
    return None if isinstance(q, (int, float)) and math.isfinite(q) and q >= 0 else f"queries_per_image() returned {q!r}"


def _tiny_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 4, 4), generator=g) * 2 - 1


def _check_attack(cls: type[MembershipAttack], params: dict) -> str | None:
    from privaudit.testing.oracles import EmpiricalOracle

    members, holdout = _tiny_images(6, 1), _tiny_images(6, 2)
    oracle = EmpiricalOracle(members)
    attack = cls(**params)
    attack.validate()
    attack.fit(oracle, members=members[:3], holdout=holdout[:3], seed=0)
    from privaudit.model.noise import Noise

    s1 = attack.score(oracle, members, noise=Noise.for_images(members, seed=7, stream=cls.name))
    s2 = attack.score(oracle, members[:4], noise=Noise.for_images(members[:4], seed=7, stream=cls.name))
    s1, s2 = torch.as_tensor(s1).detach().cpu().double(), torch.as_tensor(s2).detach().cpu().double()
    if s1.shape != (len(members),):
        return f"score() returned shape {tuple(s1.shape)} for {len(members)} images; expected ({len(members)},)"
    if not torch.isfinite(s1).all():
        return "score() returned non-finite values on finite images"
    if not torch.allclose(s1[:4], s2, rtol=1e-4, atol=1e-6):
        return ("score() of an image changes with the batch it is scored in "
                "(draw randomness only from `noise`, which is keyed per image)")
    return None


def _check_feature(cls: type[FeatureExtractor], params: dict) -> str | None:
    from privaudit.data.sets import ImageSet

    rng = np.random.default_rng(0)
    ref = ImageSet.from_array(rng.integers(0, 256, (32, 1, 8, 8), dtype=np.uint8), name="reference")
    ext = cls(**params)
    ext.validate()
    ext.fit(reference=ref)
    x = ref.tensor(range(5))
    f1, f2 = ext.transform(x), ext.transform(x)
    if not isinstance(f1, np.ndarray) or f1.ndim != 2 or len(f1) != len(x):
        return f"transform() must return a (n, d) numpy array, got {type(f1).__name__} {getattr(f1, 'shape', '')}"
    if not np.isfinite(f1).all():
        return "transform() returned non-finite values"
    if not np.allclose(f1, f2):
        return "transform() is not deterministic"
    if not isinstance(ext.describe(), str) or not ext.describe():
        return "describe() must return a one-line description"
    return None


__all__ = ["check_plugin", "KINDS"]
