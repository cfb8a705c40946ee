"""GSA: gradient-based white-box membership inference (Pang et al., PoPETs 2025).

Signal: the gradient of the training loss with respect to the model's weights. Training
drove the loss gradient of each member towards zero, so members have small gradients, layer
by layer. For each image, x0 is noised at ``n_timesteps`` timesteps spread evenly over the
schedule (99, 199, ..., 999 on a 1000-step schedule for the default 10), and the feature
vector holds one L2 norm per parameter tensor of the raw network (``denoiser.white_box``; of a
LoRA fine-tune, the adapter's tensors only, what the fine-tune trained):

- ``variant="gsa1"`` (default, the paper's cheaper variant): the gradient of the loss
  averaged over the timesteps, ``|| d/dW mean_t ||eps_t - eps_theta(x_t, t)||^2 ||`` per tensor W;
- ``variant="gsa2"``: one gradient per timestep, norms averaged over timesteps.

A classifier on the (log) feature vectors gives the score: ``classifier="logistic"``
(default: standardised logistic regression, class-balanced) or ``"boosting"`` (sklearn
histogram gradient boosting, the analogue of the paper's XGBoost), with ``decision_function``
as the membership score.

Variant used here (differs from the paper): the paper trains shadow models on data the
attacker owns and fits the classifier on shadow-model gradients. An auditor holds the real
labels, so we fit the classifier on the *target* model's gradients of the labelled
calibration split (members vs holdout) and report on the disjoint evaluation split: no
shadow models, and the result is the auditor's worst case rather than a realistic
shadow-model attacker (usually stronger).

Per-sample gradients use ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``), in
chunks that bound memory at about ``max_grad_floats`` floats of per-sample gradients.
The network is the denoiser's ``white_box``: ``f(x_t, t[, cond])`` returning the noise
prediction (the model layer converts v / x0 predictions, so the loss is always the eps loss). On text-conditional targets the denoiser
view has ``conditioning(n)`` (each row's caption embedding) and the network takes it as a
third argument: gradients are taken at each image's own caption, vmapped with the image. Guidance added by a mitigation (CPSample)
is bypassed: a white-box attacker uses the raw weights.

Threat model: white box (weights and gradients). Queries per image: ``n_timesteps`` forward
passes plus as many backward rows (one backward pass over the stacked timesteps for gsa1).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from privaudit.api import InputError, Interval, MembershipAttack, Noise, Options, store_params
from privaudit.model.denoiser import audited_parameters, cond_map, signal_noise

VARIANTS = ("gsa1", "gsa2")
CLASSIFIERS = ("logistic", "boosting")


class GSAAttack(MembershipAttack):
    """GSA: per-parameter-tensor gradient norms of the loss over timesteps, then a classifier."""

    name = "gsa"
    id = "PA-MIA-006"
    threat_model = "white-box"
    requires = ("white_box",)
    references = ("Pang et al., White-box Membership Inference Attacks against Diffusion Models, PoPETs 2025",)

    parameter_constraints = {"n_timesteps": [Interval(int, 1, 1000)], "variant": [Options(*VARIANTS)],
                             "classifier": [Options(*CLASSIFIERS)], "max_grad_floats": [Interval(int, 1, None)],
                             "fit_batch_size": [Interval(int, 1, None)]}

    def __init__(self, *, n_timesteps: int = 10, variant: str = "gsa1", classifier: str = "logistic",
                 max_grad_floats: int = 1 << 27, fit_batch_size: int = 128):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(self.n_timesteps)

    def _check(self) -> None:
        if not (isinstance(self.n_timesteps, int) and self.n_timesteps >= 1):
            raise InputError(f"gsa: n_timesteps must be an integer >= 1, got {self.n_timesteps!r}")
        if self.variant not in VARIANTS:
            raise InputError(f"gsa: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.classifier not in CLASSIFIERS:
            raise InputError(f"gsa: classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")

    def timesteps(self, denoiser) -> list[int]:
        """``n_timesteps`` timesteps spread evenly over the schedule, ending at the last one."""
        T = len(denoiser.alphas_cumprod)
        return sorted({max(0, round((i + 1) * T / self.n_timesteps) - 1) for i in range(self.n_timesteps)})

    def features(self, denoiser, x0: torch.Tensor, *, noise: Noise,
                 cond: torch.Tensor | None = None) -> np.ndarray:
        """Per-image gradient norms, (B, number of parameter tensors), float64. ``cond``: per-image
        conditioning (B, ...) passed to the network as its third argument (text models)."""
        from torch.func import functional_call, grad, vmap

        self._check()
        module = denoiser.white_box
        if not isinstance(module, torch.nn.Module):
            raise InputError("gsa: the target exposes no white-box network (denoiser.white_box)")
        # a LoRA fine-tune: gradients of the adapter's parameters only; the frozen base weights are constants
        params = {k: v.detach() for k, v in audited_parameters(module).items()}
        buffers = {k: v.detach() for k, v in module.named_buffers()}
        buffers.update({k: v.detach() for k, v in module.named_parameters() if k not in params})
        names = list(params)
        ts = torch.tensor(self.timesteps(denoiser), device=x0.device)
        sig, noi = signal_noise(denoiser.alphas_cumprod, ts, x0)  # (k, 1, 1, 1) each
        eps = noise.randn((len(x0), len(ts), *x0.shape[1:]), tag="gsa", device=x0.device)

        def loss(p, x, e, t, a, s, c):  # x (C, H, W); e (k, C, H, W): the mean loss over k timesteps
            x_t = a * x + s * e
            args = (x_t, t) if c is None else (x_t, t, cond_map(lambda e: e.expand(len(x_t), *e.shape), c))
            return (functional_call(module, (p, buffers), args) - e).pow(2).mean()  # white_box returns eps

        def norms(g) -> torch.Tensor:
            return torch.stack([g[k].norm() for k in names])

        n_params = sum(v.numel() for v in params.values())
        if self.variant == "gsa1":
            per_image = lambda x, e, c=None: norms(grad(loss)(params, x, e, ts, sig, noi, c))
            per_row = n_params
        else:
            one_t = lambda x, e, t, a, s, c: norms(grad(loss)(params, x, e[None], t[None], a[None], s[None], c))
            per_image = lambda x, e, c=None: vmap(one_t, in_dims=(None, 0, 0, 0, 0, None))(x, e, ts, sig, noi, c).mean(0)
            per_row = n_params * len(ts)
        chunk = max(1, int(self.max_grad_floats // per_row))
        was_training = module.training
        module.eval()
        try:
            with torch.enable_grad(), warnings.catch_warnings():
                # vmap falls back to a per-sample loop for attention on CPU; correct, just says so
                warnings.filterwarnings("ignore", message="There is a performance drop")
                inputs = (x0, eps) if cond is None else (x0, eps, cond_map(lambda e: e.to(x0.device), cond))
                out = vmap(per_image, in_dims=(0,) * len(inputs), chunk_size=chunk)(*inputs)
        finally:
            module.train(was_training)
        return out.detach().double().cpu().numpy()

    def _make_classifier(self, seed: int):
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.classifier == "boosting":
            return HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))

    @staticmethod
    def _log(f: np.ndarray) -> np.ndarray:
        # norms span orders of magnitude across layers; a tensor whose gradient is zero up to float32 rounding
        # (below 1e-6 of the image's largest norm) is floored there: its rounding noise, which differs with
        # the batch cut and thread count, must not become a feature the classifier weighs
        return np.log(np.maximum(f, 1e-6 * f.max(axis=1, keepdims=True)) + 1e-12)

    def fit(self, denoiser, *, members, holdout, seed):
        self._check()
        bs = max(1, int(self.fit_batch_size))
        feats = []
        for x in (members, holdout):
            cond = denoiser.conditioning(len(x))  # per set, before chunking: it is bound by set size
            noise = Noise.for_images(x, seed=seed, stream="gsa/fit")
            feats += [self.features(denoiser, x[i:i + bs], noise=noise[i:i + bs],
                                    cond=None if cond is None else cond_map(lambda e, i=i: e[i:i + bs], cond))
                      for i in range(0, len(x), bs)]
        X = self._log(np.concatenate(feats))
        y = np.r_[np.ones(len(members)), np.zeros(len(holdout))]
        self.classifier_ = self._make_classifier(seed).fit(X, y)
        self.n_features_ = X.shape[1]
        self.timesteps_ = self.timesteps(denoiser)
        return self

    def score(self, denoiser, x0, *, noise):
        if not hasattr(self, "classifier_"):
            raise InputError("gsa: call fit() on labelled calibration data before score()")
        X = self._log(self.features(denoiser, x0, noise=noise, cond=denoiser.conditioning(len(x0))))
        return torch.from_numpy(np.asarray(self.classifier_.decision_function(X), dtype=np.float64))
