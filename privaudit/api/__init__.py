"""The public plugin API: everything a plugin declares, receives and returns, in one module.

A plugin imports this module and the model layer (``privaudit.model.denoiser``, ``privaudit.model.latent``,
``privaudit.model.target``) and nothing of privaudit's flows: ``privaudit.audit.runner`` (scan),
``privaudit.mitigation.flow`` and ``privaudit.reports`` import plugins' outputs, never the reverse
(``import-linter`` contracts in pyproject.toml, run by ``make lint``). ARCHITECTURE.md shows the layers.

What a plugin declares (class attributes; checked by ``privaudit.testing.check_plugin``):

- ``name`` (what users type), ``id`` (stable, never reused), ``kind``, ``requires``
  (capabilities of the target: ``CAPABILITIES``), ``threat_model`` (``THREAT_MODELS``),
  ``references``; the class docstring is its documentation;
- ``parameter_constraints``: what each ``__init__`` parameter accepts, validated before any
  work starts (``validate``);
- ``metric_specs``: how each metric it reports reads (label, section, better direction, unit),
  so reports never guess from a name;
- detectors: ``severity_rules``, the rule set that judges their metrics; ``follows_target``:
  whether a scan that names no ``--detectors`` adds it for a target with the capabilities it
  requires (e.g. the prompt detectors for a text model; False for alternatives run on request).

What it receives: an attack gets a ``Denoiser`` and image tensors (``fit`` / ``score``); a
detector gets an ``AuditContext``; a mitigation a ``MitigationContext``. What it returns: scores,
a ``DetectorOutput``, a ``MitigationOutput`` (with ``Variant`` controls).

Parameters follow scikit-learn: keyword-only with defaults, and ``__init__`` only stores them
(``store_params(self, locals())``), so ``type(p)(**p.get_params())`` rebuilds a plugin; fitted
attributes end in ``_``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol

import numpy as np
import torch

from privaudit.api.params import InstanceOf, Interval, Options, SequenceOf, validate_params
from privaudit.api.stages import active_stages, transform_batches
from privaudit.data.prompts import read_prompt_file
from privaudit.data.sets import ImageSet, to_uint8
from privaudit.io.errors import Inconclusive, InputError, PluginError, PrivauditError
from privaudit.io.files import atomic_dir, write_json, write_text
from privaudit.io.images import png_data_uri
from privaudit.io.progress import announce, progress_bar
from privaudit.io.results import Metric
from privaudit.model.denoiser import Denoiser
from privaudit.model.latent import latent_of
from privaudit.model.noise import Noise, sample_generators, seed_of
from privaudit.stats.metrics import auc_interval, membership_metrics, proportion_ci
from privaudit.stats.search import KnnStream, choose_method, default_nlist, l2_normalize, search, train_ivf

__all__ = [
    "CAPABILITIES", "KINDS", "THREAT_MODELS", "AuditContext", "AuditSettings", "Denoiser", "DetectorOutput",
    "FeatureExtractor", "ImageSet", "InputError", "MembershipAttack", "Metric", "MetricSpec", "Mitigation",
    "MitigationContext", "MitigationOutput", "Noise", "Plugin", "PluginError", "PrivauditError", "ReplicationDetector",
    "Variant", "InstanceOf", "Interval", "Options", "SequenceOf", "validate_params", "KnnStream", "choose_method", "default_nlist", "l2_normalize", "search", "train_ivf", "atomic_dir", "auc_interval", "capabilities_of", "default_cache_dir", "membership_metrics", "png_data_uri",
    "proportion_ci", "progress_bar", "announce", "sample_generators", "seed_of", "read_prompt_file", "store_params", "to_uint8", "write_json", "write_text",
]

KINDS = ("attack", "detector", "mitigation", "feature")
CAPABILITIES = ("white_box", "sampling", "text")  # text: a text-conditional (latent) target
THREAT_MODELS = ("white-box", "gray-box", "black-box", "n/a")
SECTIONS = ("membership", "replication", "quality", "other")
DIRECTIONS = ("high", "low", "chance", None)  # which way is better; "chance": near 0.5 is better
UNITS = ("rate", "number", "count", "ratio", "seconds")


def capabilities_of(denoiser: Denoiser) -> set[str]:
    """What a target offers plugins: ``sampling`` (a scheduler), ``white_box`` (visible weights), ``text``."""
    caps = {"sampling"} if getattr(denoiser, "scheduler", None) is not None else set()
    if isinstance(denoiser.white_box, torch.nn.Module):
        caps.add("white_box")
    if latent_of(denoiser) is not None:
        caps.add("text")
    return caps


def default_cache_dir() -> Path:
    return Path(os.environ.get("PRIVAUDIT_CACHE", Path.home() / ".cache" / "privaudit"))


# ---------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class MetricSpec:
    """How a reported metric reads: ``label`` for people, the report ``section`` it belongs to,
    which way is ``better`` (``DIRECTIONS``), its ``unit`` (``UNITS``) and a one-line ``description``."""

    name: str
    label: str
    section: str = "other"
    better: str | None = None
    unit: str = "number"
    description: str = ""

    def __post_init__(self) -> None:
        if self.section not in SECTIONS or self.better not in DIRECTIONS or self.unit not in UNITS:
            raise PluginError(f"metric {self.name!r}: section must be one of {SECTIONS}, better one of "
                              f"{DIRECTIONS}, unit one of {UNITS}")

    def to_json(self) -> dict:
        return {"label": self.label, "section": self.section, "better": self.better, "unit": self.unit,
                "description": self.description}


def store_params(obj: object, params: Mapping[str, Any]) -> None:
    """Store ``__init__``'s keyword-only parameters on ``obj`` (call as ``store_params(self, locals())``)."""
    sig = inspect.signature(type(obj).__init__)
    for k, p in sig.parameters.items():
        if p.kind is p.KEYWORD_ONLY:
            setattr(obj, k, params[k])


class Plugin:
    """Base class: declarative metadata plus scikit-learn style parameters (see the module docstring)."""

    name: ClassVar[str]
    id: ClassVar[str]
    kind: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    threat_model: ClassVar[str] = "gray-box"
    references: ClassVar[tuple[str, ...]] = ()
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = ()
    parameter_constraints: ClassVar[dict[str, list]] = {}

    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}

    def validate(self) -> None:
        """Raise ``PluginError`` (exit 2) naming the parameter when a setting is outside its declared
        ``parameter_constraints`` (``privaudit.api.params``); the registry calls it before any work."""
        validate_params(type(self), self.get_params())

    def queries_per_image(self) -> float:
        """Model queries (network forward passes) the plugin spends per audited image."""
        return 0.0

    def missing(self, capabilities: set[str]) -> list[str]:
        """The required capabilities the target lacks (the plugin is then skipped with that reason)."""
        return [r for r in self.requires if r not in capabilities]

    @classmethod
    def summary(cls) -> str:
        return (inspect.getdoc(cls) or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def specs(cls) -> dict[str, MetricSpec]:
        """Declared metric specs by name, the kind's own first, then the plugin's (which override)."""
        out: dict[str, MetricSpec] = {}
        for klass in reversed(cls.__mro__):
            for s in vars(klass).get("metric_specs", ()):
                out[s.name] = s
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


MEMBERSHIP_SPECS = (
    MetricSpec("auc", "AUC", "membership", "chance", "number",
               "area under the ROC curve: 0.5 is guessing, 1.0 is perfect separation"),
    MetricSpec("tpr_at_fpr_0.01", "TPR @ 1% FPR", "membership", "low", "rate",
               "share of members identified while wrongly flagging 1% of unseen images"),
    MetricSpec("tpr_at_fpr_0.001", "TPR @ 0.1% FPR", "membership", "low", "rate",
               "share of members identified while wrongly flagging 0.1% of unseen images"),
    MetricSpec("balanced_accuracy", "balanced accuracy", "membership", "chance", "number",
               "at the threshold fitted on the calibration split; 0.5 is guessing"),
)


class MembershipAttack(Plugin):
    """Scores images; higher = more member-like.

    ``fit`` may make choices (a timestep, a classifier) and sees calibration data only.
    ``prepare(ctx)`` (optional) sees the audit's context first (e.g. its cached generated samples).
    ``score`` is called batch by batch on calibration and evaluation images alike and returns one
    float per image. Its randomness comes only from ``noise`` (``noise.randn(shape, tag=...)``),
    keyed per image, so an image's score does not depend on the batch, shard or worker it was
    scored in. (0.1 passed a per-batch ``generator``; such plugins still run, with one generator per
    batch and a DeprecationWarning, so their scores still depend on the batch.)
    """

    kind: ClassVar[str] = "attack"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = MEMBERSHIP_SPECS
    #: an attack an attacker who knows a sampling-time mitigation would run (cheap, black-box): ``privaudit
    #: mitigate`` adds every installed adaptive attack to each of its audits, before and after alike
    adaptive: ClassVar[bool] = False

    def prepare(self, ctx: "AuditContext") -> None:
        """Called by the audit once before ``fit`` with the audit's context: a black-box attack that
        compares images with the model's generated samples draws them here (``ctx.samples``, cached on
        disk and shared with the detectors). Nothing by default."""

    def fit(self, denoiser: Denoiser, *, members: torch.Tensor, holdout: torch.Tensor, seed: int) -> "MembershipAttack":
        return self

    def score(self, denoiser: Denoiser, x0: torch.Tensor, *, noise: Noise) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class DetectorOutput:
    """What a detector returns; the runner adds severity and provenance.

    ``details["false_positive_rate"]`` (when set) is the rate the replication rules compare the
    copy fraction's interval against.
    """

    metrics: dict[str, Metric]
    finding: str
    details: dict
    table: Any = None  # optional pandas DataFrame, one row per generated sample
    # optional pandas DataFrame, one row per member: ``member_id`` and any per-image evidence columns that
    # ``privaudit.audit.risk`` reads (copies, chance_copies, closest_sample, closest_distance, copy_radius,
    # duplicate_cluster, duplicates, duplicates_checked, prompt_flagged, prompt_score)
    members: Any = None


class ReplicationDetector(Plugin):
    """Compares generated images (or prompts) with members. ``detect(ctx)`` -> ``DetectorOutput``.

    ``severity_rules``: "replication" (copy fraction), "membership" (AUC/TPR, e.g. memorised
    prompt detection) or "none" (quality numbers: informative, never a risk level).
    """

    kind: ClassVar[str] = "detector"
    requires: ClassVar[tuple[str, ...]] = ("sampling",)
    threat_model: ClassVar[str] = "black-box"
    severity_rules: ClassVar[str] = "replication"
    follows_target: ClassVar[bool] = True

    def detect(self, ctx: "AuditContext") -> DetectorOutput:
        raise NotImplementedError


class FeatureExtractor(Plugin):
    """Image -> vector. ``fit(reference=...)`` may train on non-member images."""

    kind: ClassVar[str] = "feature"
    threat_model: ClassVar[str] = "n/a"

    def fit(self, *, reference: ImageSet | None = None) -> "FeatureExtractor":
        return self

    def transform(self, x: torch.Tensor) -> np.ndarray:
        """Images in [-1, 1], (n, C, H, W) -> float32 (n, d)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for reports: what space the features live in."""
        return f"{self.name} features ({type(self).__name__})"


class Mitigation(Plugin):
    """Produces a protected model folder from a target (``privaudit mitigate``).

    ``apply(ctx)`` -> ``MitigationOutput``; ``sweep(ctx, output)`` -> the settings to audit for the
    privacy/quality trade-off (``Variant``s with ``role`` "main", and "placebo" for a control that
    does the same without knowing the members).
    """

    kind: ClassVar[str] = "mitigation"
    threat_model: ClassVar[str] = "n/a"
    #: what the served pipeline carries besides the model, in words (e.g. "a guard classifier"); shown in the report
    carries: ClassVar[str] = ""
    #: True when what it carries holds training data (members' pixels or features): a leak surface of its own if the
    #: protected folder is published, so the report recommends keeping it server-side
    carries_training_data: ClassVar[bool] = False
    #: the kinds of model it protects: "pixel" (unconditional pixel UNets) and/or "text" (text-to-image latent
    #: pipelines); ``--method all`` runs the methods that fit the target, a named one that does not fails at once
    models: ClassVar[tuple[str, ...]] = ("pixel", "text")

    def apply(self, ctx: "MitigationContext") -> "MitigationOutput":
        raise NotImplementedError

    def sweep(self, ctx: "MitigationContext", output: "MitigationOutput") -> list["Variant"]:
        return []


HOOKS = {"attack": ("score",), "detector": ("detect",), "feature": ("transform",), "mitigation": ("apply",)}
KIND_BASES: dict[str, type] = {"attack": MembershipAttack, "detector": ReplicationDetector,
                               "feature": FeatureExtractor, "mitigation": Mitigation}


def declaration_problems(cls: type) -> list[str]:
    """What is wrong with a plugin class's declarations (cheap; run at registration, like pluggy's
    hook verification, so a bad plugin fails at load, not mid-run). Empty when it is fine."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        return ["not a subclass of privaudit.api.Plugin"]
    out = []
    for attr in ("name", "id", "kind"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            out.append(f"class attribute {attr!r} must be a non-empty string")
    kind = getattr(cls, "kind", None)
    if kind not in KINDS:
        out.append(f"kind {kind!r} is not one of {KINDS}")
    elif not issubclass(cls, KIND_BASES[kind]):
        out.append(f"kind {kind!r} plugins subclass privaudit.api.{KIND_BASES[kind].__name__}")
    else:
        for hook in HOOKS[kind]:
            if getattr(cls, hook) is getattr(KIND_BASES[kind], hook):
                out.append(f"does not implement {hook}()")
    if cls.threat_model not in THREAT_MODELS:
        out.append(f"threat_model {cls.threat_model!r} is not one of {THREAT_MODELS}")
    unknown = [r for r in cls.requires if r not in CAPABILITIES]
    if unknown:
        out.append(f"requires unknown capabilities {unknown} (known: {CAPABILITIES})")
    sig = inspect.signature(cls.__init__)
    for k, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
            out.append(f"__init__ parameter {k!r} must be keyword-only with a default")
    return out


# ---------------------------------------------------------------------------- contexts

class PluginLookup(Protocol):
    """What a context offers of the plugin registry (``privaudit.api.registry.Registry`` is one)."""

    def get(self, name: str, *, kind: str | None = None) -> Any: ...

    def create(self, name: str, *, kind: str | None = None, **params: Any) -> Plugin: ...


@dataclass(frozen=True)
class AuditSettings:
    """What to run and how. ``plugin_params`` maps a plugin name to its parameters."""

    attacks: tuple[str, ...] = ("loss",)
    detectors: tuple[str, ...] = ("nn",)
    plugin_params: dict[str, dict] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 128
    calibration_fraction: float = 0.5
    n_boot: int = 1000
    progress: bool = True
    cache_dir: Path | None = None
    prompt: str = "caption"  # text-conditional targets: condition attacks on captions or the empty prompt
    # default plugins (the user chose none): also run every detector that needs a capability only
    # some targets have (e.g. "text": prompt-level detectors) when this target has it
    follow_target: bool = False
    # where per-image work runs (``privaudit.audit.engine``): "local" (this process) or "ray"; results do not
    # depend on it. ``resume``: keep the finished shards of an interrupted run in the same folder.
    engine: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    resume: bool = False
    # empirical epsilon (privaudit.audit.epsilon): the delta of the bound, and whether members were assigned at
    # random (canaries): only then is eps_hat a DP lower bound, otherwise it measures distinguishability
    epsilon_delta: float = 1e-5
    randomized_membership: bool = False


_FITTED_FEATURES: dict[tuple, FeatureExtractor] = {}


class AuditContext:
    """What detectors see: the model, the data, cached samples and fitted feature extractors."""

    def __init__(self, *, denoiser: Denoiser, members: ImageSet, holdout: ImageSet, registry: PluginLookup,
                 settings: AuditSettings, reference: ImageSet | None = None):
        self.denoiser, self.members, self.holdout = denoiser, members, holdout
        self.registry, self.settings, self.reference = registry, settings, reference
        self.seed, self.progress = settings.seed, settings.progress
        self.sample_seconds: dict[str, float] = {}

    def samples(self, *, n: int, steps: int = 50, sampler: str = "ddim", seed: int | None = None) -> torch.Tensor:
        """``n`` samples in [-1, 1] (through the denoiser's ``draw_samples``), cached on disk by
        (model fingerprint, sampler, steps, seed, n; "keyed": samples seeded per index since 0.2)."""
        seed = self.seed if seed is None else seed
        key = hashlib.sha256(f"keyed|{self.denoiser.fingerprint}|{sampler}|{steps}|{seed}|{n}".encode()).hexdigest()[:24]
        cache = (self.settings.cache_dir or default_cache_dir()) / "samples" / f"{key}.npy"
        if cache.exists():
            return torch.from_numpy(np.load(cache))
        start = time.perf_counter()
        run = active_stages()
        if run is not None and type(self.denoiser).draw_samples is Denoiser.draw_samples:  # sharded, resumable
            x = run.samples(self.denoiser, n=n, steps=steps, sampler=sampler, seed=seed,
                            batch_size=self.settings.batch_size * 2, key=key)
        else:  # a denoiser with its own sampler (e.g. rejection sampling) draws the whole set itself
            x = self.denoiser.draw_samples(n=n, steps=steps, sampler=sampler, seed=seed,
                                           batch_size=self.settings.batch_size * 2, progress=self.progress)
        if not torch.isfinite(x).all():  # never cache or measure broken samples: distances would be inf/NaN
            raise Inconclusive(f"the model generated {int((~torch.isfinite(x)).flatten(1).any(1).sum())} of {n} "
                               "samples with NaN or infinite pixels")
        self.sample_seconds[key] = time.perf_counter() - start
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, x.numpy())
        os.replace(tmp, cache)
        return x

    def features(self, extractor: FeatureExtractor, images: ImageSet | torch.Tensor, *, label: str,
                 batch_size: int | None = None) -> np.ndarray:
        """Features of a whole set, float32 (n, d): ``extractor.transform`` on batches of ``batch_size``
        (default: the run's) images of ``images`` (an ImageSet, or a tensor in [-1, 1] such as
        ``samples``). During an audit this is an engine stage (``privaudit.audit.engine``): sharded, resumable,
        on Ray with ``--engine ray``; the features are the same as the plain loop's. ``label`` names the
        stage in the manifest. Fit the extractor first (``feature``): fitting stays in this process."""
        bs = int(batch_size or self.settings.batch_size)
        run = active_stages()
        if run is not None:
            return run.features(extractor, images, batch_size=bs, label=label)
        return transform_batches(extractor, images, batch_size=bs)

    def feature(self, name: str, **params) -> FeatureExtractor:
        """A fitted extractor, fitted once per process for the same plugin, parameters and reference
        set (extractors are seeded, so this only saves time: a mitigation audits many variants)."""
        cls = self.registry.get(name, kind="feature").cls
        ref = self.reference
        key = (cls, repr(sorted(params.items())), None if ref is None else (ref.source, hash(ref.ids)))
        if key not in _FITTED_FEATURES:
            extractor = self.registry.create(name, kind="feature", **params)
            assert isinstance(extractor, FeatureExtractor)
            _FITTED_FEATURES[key] = extractor.fit(reference=ref)
        return _FITTED_FEATURES[key]


@dataclass
class MitigationContext:
    """What a mitigation plugin sees: the raw model, the data, where to write, how to audit."""

    model_dir: Path
    pipeline: Any
    denoiser: Denoiser
    members: ImageSet
    holdout: ImageSet
    reference: ImageSet | None
    out: Path
    registry: PluginLookup
    settings: AuditSettings
    device: torch.device
    cache_dir: Path
    seed: int
    progress: bool
    # member ids the unprotected model's audit listed at risk (privaudit.audit.risk), rank order: a
    # mitigation may protect these only (targeted) beside all members (uniform)
    at_risk: tuple[str, ...] = ()

    def feature(self, name: str, **params) -> FeatureExtractor:
        """A fitted feature extractor (the same one the audit's detectors get)."""
        return AuditContext(denoiser=self.denoiser, members=self.members, holdout=self.holdout, registry=self.registry,
                            settings=self.settings, reference=self.reference).feature(name, **params)


ROLES = ("main", "placebo", "control")


@dataclass(frozen=True)
class Variant:
    """One way of serving the model, audited like the protected one.

    ``denoiser``: a Denoiser (gray-box attacks query its ``eps``; detectors sample it through its
    ``draw_samples``). ``role``: "main" (a setting of the mitigation itself, e.g. a sweep point),
    "placebo" (the same procedure without knowledge of the members: protection it also gives is
    not specific to the training set; compared with "main" at matched quality) or "control"
    (another baseline). ``probe(samples) -> dict``: extra metrics on its generated samples.
    ``details``: a dict, or a callable returning one after the audit.
    """

    name: str
    description: str
    denoiser: Denoiser
    family: str = "control"
    role: str = "control"
    params: dict = field(default_factory=dict)
    probe: Callable[[torch.Tensor], dict] | None = None
    details: dict | Callable[[], dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PluginError(f"variant {self.name!r}: role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class MitigationOutput:
    """What ``Mitigation.apply`` returns: the protected folder and its Denoiser (loaded back from the
    folder), the parameters used, ``details`` about what was trained (shown under ``details_title``),
    controls, warnings, the mitigation's own limits, and a ``probe`` for its samples."""

    protected_dir: Path
    denoiser: Denoiser
    params: dict
    details: dict
    details_title: str = "What the mitigation trained"
    controls: list[Variant] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    probe: Callable[[torch.Tensor], dict] | None = None
