"""Training the CPSample guard on noised members with fixed random labels.

Step 1-2 of CPSample (Kazdan et al., ICLR 2025, arXiv 2409.07025):
every member gets a fixed label y_i ~ Bernoulli(1/2) (seeded, saved beside the guard);
the guard minimises binary cross-entropy on x_t = sqrt(abar_t) x_i + sqrt(1 - abar_t) eps
with t uniform over the training schedule, until its accuracy on members in the
low-noise band t < ``fit_t`` * T reaches ``target_accuracy`` (early stop), or the step
budget runs out (then ``reached_target_`` is False and the caller must say so).

Member specificity (``nonmember_weight`` > 0): images never trained on (the user's
reference set, never the evaluation holdout) are noised the same way and pulled towards
p = 1/2 with weight ``nonmember_weight``. Without it a classifier that memorised random
labels is confident almost everywhere, on unseen images too, and guidance then perturbs
every sample rather than steering away from members (the placebo control shows it).

Stopping rule. Reaching ``target_accuracy`` on members is not enough: that happens early
(after 100 steps on the 32 latents of the text fixture) while the guard is still confident
on a large share of unseen images, so its gate would fire on them too. When non-members
are given, a seeded slice of them (``val_fraction``, at most 256 images) is held aside,
never trained on, and training stops only when, in addition, the guard's gate at the
sampling ``alpha`` fires on at most ``max_unseen_gate`` of those images in the same
low-noise band. Measured (1 thread, 3000-step budget): text-fixture latents, low band,
alpha 0.4: stopping on member accuracy alone (100 steps) gated 100% of members and 53% of
holdout latents; training on (3000 steps) 100% and 4%.

Accuracy is measured on fixed noise draws (seeded), per noise band; with random labels,
the accuracy on unseen images is 1/2 in expectation whatever the guard learned, so the
report also gives the guard's mean confidence |p - 1/2| and its gate rate on members,
unseen images and generated samples, which is what decides where guidance fires.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from privaudit.model.denoiser import add_noise

BAND_EDGES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # fractions of the training schedule


def random_labels(n: int, *, seed: int) -> np.ndarray:
    """Fixed random 0/1 labels, one per member, seeded: a random half of the members get 1.

    Each label is marginally Bernoulli(1/2) as in the paper; balancing the counts removes the
    majority-label prior a classifier otherwise learns at high noise (with i.i.d. labels on
    64 members it predicted the majority label with p ~ 0.69 on pure noise, so a gate with
    alpha > 0.31 fired on every sample).
    """
    labels = np.zeros(n, dtype=np.uint8)
    labels[: (n + 1) // 2] = 1
    return np.random.default_rng([seed, 0x5EED]).permutation(labels)


def band_names(num_train_timesteps: int) -> list[str]:
    e = [round(f * num_train_timesteps) for f in BAND_EDGES]
    return [f"t{a}-{b - 1}" for a, b in zip(e[:-1], e[1:])]


@dataclass(frozen=True)
class GuardEval:
    """Per-band accuracy and confidence of a guard on one image set (fixed noise draws)."""

    accuracy: dict[str, float]
    confidence: dict[str, float]  # mean |p - 1/2|
    gate_rate: dict[str, float]  # fraction with max(p, 1-p) > 1 - alpha

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "confidence": self.confidence, "gate_rate": self.gate_rate}


@torch.no_grad()
def evaluate_guard(guard: torch.nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, *,
                   alphas_cumprod: torch.Tensor, alpha: float, draws: int = 4, seed: int = 0,
                   batch_size: int = 1024) -> GuardEval:
    """Accuracy (where labels are given), confidence and gate rate per noise band."""
    device = next(guard.parameters()).device
    T = len(alphas_cumprod)
    acp = alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(seed)
    edges = [round(f * T) for f in BAND_EDGES]
    acc, conf, gate = {}, {}, {}
    for name, lo, hi in zip(band_names(T), edges[:-1], edges[1:]):
        hits, c_sum, g_sum, n = 0.0, 0.0, 0.0, 0
        for _ in range(draws):
            for s in range(0, len(x0), batch_size):
                x = x0[s:s + batch_size].to(device)
                t = torch.randint(lo, hi, (len(x),), generator=gen).to(device)
                eps = torch.randn(x.shape, generator=gen).to(device)
                p = torch.sigmoid(guard(add_noise(x, t, eps, acp), t))
                if labels is not None:
                    hits += ((p > 0.5).float() == labels[s:s + batch_size].to(device).float()).sum().item()
                c_sum += (p - 0.5).abs().sum().item()
                g_sum += (torch.maximum(p, 1 - p) > 1 - alpha).sum().item()
                n += len(x)
        acc[name] = hits / n if labels is not None else float("nan")
        conf[name] = c_sum / n
        gate[name] = g_sum / n
    return GuardEval(accuracy={k: round(v, 4) for k, v in acc.items()} if labels is not None else {},
                     confidence={k: round(v, 4) for k, v in conf.items()},
                     gate_rate={k: round(v, 4) for k, v in gate.items()})


def _low_noise_logits(guard: torch.nn.Module, x0: torch.Tensor, *, alphas_cumprod: torch.Tensor, fit_t: float,
                      draws: int, seed: int) -> torch.Tensor:
    """Guard logits (draws, N) on ``x0`` noised at t uniform in [0, fit_t * T) (seeded draws)."""
    device = next(guard.parameters()).device
    T = len(alphas_cumprod)
    gen = torch.Generator().manual_seed(seed)
    out = []
    was_training = guard.training
    guard.eval()
    with torch.no_grad():
        acp = alphas_cumprod.to(device)
        for _ in range(draws):
            for s in range(0, len(x0), 1024):
                x = x0[s:s + 1024].to(device)
                t = torch.randint(0, max(1, round(fit_t * T)), (len(x),), generator=gen).to(device)
                eps = torch.randn(x.shape, generator=gen).to(device)
                out.append(guard(add_noise(x, t, eps, acp), t).cpu())
    guard.train(was_training)
    return torch.cat(out).view(draws, len(x0))


def fit_accuracy(guard: torch.nn.Module, x0: torch.Tensor, labels: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                 fit_t: float, draws: int = 4, seed: int = 0) -> float:
    """Accuracy on members over t uniform in [0, fit_t * T): the first early-stopping criterion."""
    logits = _low_noise_logits(guard, x0, alphas_cumprod=alphas_cumprod, fit_t=fit_t, draws=draws, seed=seed)
    return ((logits > 0) == labels.cpu().bool()).sum().item() / logits.numel()


def unseen_gate_rate(guard: torch.nn.Module, x0: torch.Tensor, *, alpha: float, alphas_cumprod: torch.Tensor,
                     fit_t: float, draws: int = 4, seed: int = 0) -> float:
    """Share of noised ``x0`` (t < fit_t * T) where the gate fires, max(p, 1 - p) > 1 - alpha:
    the second early-stopping criterion, on held-aside never-trained-on images."""
    p = torch.sigmoid(_low_noise_logits(guard, x0, alphas_cumprod=alphas_cumprod, fit_t=fit_t, draws=draws, seed=seed))
    return (torch.maximum(p, 1 - p) > 1 - alpha).sum().item() / p.numel()


@dataclass(frozen=True)
class TrainStats:
    steps: int
    seconds: float
    final_loss: float
    fit_accuracy: float
    reached_target: bool
    history: list  # (step, fit accuracy[, unseen gate rate]) at each evaluation
    unseen_gate_rate: float | None = None  # on the held-aside non-members at the end (None: none held aside)
    reached_specificity: bool = True


@contextmanager
def cpu_threads(n: int | None, device: torch.device):
    """Cap torch's intra-op threads on CPU for a block (restored after).

    A guard's layers are tiny: on a loaded 2-core machine, 2 threads made a training step
    40x slower than 1 thread (2.6 s vs 64 ms) through oversubscription.
    """
    if device.type != "cpu" or not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(min(old, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_guard(guard: torch.nn.Module, *, members: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor,
                nonmembers: torch.Tensor | None = None, nonmember_weight: float = 0.0, max_steps: int = 3000,
                batch_size: int = 128, lr: float = 2e-3, target_accuracy: float = 0.99, fit_t: float = 0.5,
                alpha: float = 0.4, max_unseen_gate: float | None = 0.05, val_fraction: float = 0.1,
                eval_every: int = 100, seed: int = 0, progress: bool = True, threads: int | None = 1) -> TrainStats:
    """Fit ``guard`` in place; returns its training statistics (see the module docstring).

    ``alpha``, ``max_unseen_gate``, ``val_fraction``: the specificity half of the stopping rule
    (``max_unseen_gate=None`` stops on member accuracy alone). ``threads``: torch intra-op
    threads on CPU while training (None: leave as is).
    """
    with cpu_threads(threads, next(guard.parameters()).device):
        return _train(guard, members=members, labels=labels, alphas_cumprod=alphas_cumprod, nonmembers=nonmembers,
                      nonmember_weight=nonmember_weight, max_steps=max_steps, batch_size=batch_size, lr=lr,
                      target_accuracy=target_accuracy, fit_t=fit_t, alpha=alpha, max_unseen_gate=max_unseen_gate,
                      val_fraction=val_fraction, eval_every=eval_every, seed=seed, progress=progress)


def split_unseen(nonmembers: torch.Tensor, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training part, held-aside part) of the non-members: a seeded ``fraction``, at most 256,
    at least 1 when there are 2 or more."""
    n = len(nonmembers)
    n_val = min(256, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    perm = torch.from_numpy(np.random.default_rng([seed, 0x7A1]).permutation(len(nonmembers)))
    return nonmembers[perm[n_val:].to(nonmembers.device)], nonmembers[perm[:n_val].to(nonmembers.device)]


def _train(guard, *, members, labels, alphas_cumprod, nonmembers, nonmember_weight, max_steps, batch_size, lr,
           target_accuracy, fit_t, alpha, max_unseen_gate, val_fraction, eval_every, seed, progress) -> TrainStats:
    from privaudit.api import progress_bar

    device = next(guard.parameters()).device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    T = len(alphas_cumprod)
    acp = alphas_cumprod.to(device)
    members, y = members.to(device), labels.float().to(device)
    use_nm = nonmembers is not None and nonmember_weight > 0 and len(nonmembers) > 0
    nm, val = None, None
    if use_nm:
        nm, val = split_unseen(nonmembers.to(device), fraction=val_fraction if max_unseen_gate is not None else 0.0,
                               seed=seed)
        val = val if len(val) else None
    gate = None
    opt = torch.optim.AdamW(guard.parameters(), lr=lr, weight_decay=0.0)
    guard.train().requires_grad_(True)
    start = time.perf_counter()
    losses: list[float] = []
    history: list[tuple[int, float]] = []
    acc, step = 0.0, 0
    bar = progress_bar(total=max_steps, desc="training CPSample guard", disable=not progress, unit="step")
    for step in range(1, max_steps + 1):
        idx = torch.randint(len(members), (batch_size,), generator=gen).to(device)
        t = torch.randint(T, (batch_size,), generator=gen).to(device)
        eps = torch.randn((batch_size, *members.shape[1:]), generator=gen).to(device)
        loss = F.binary_cross_entropy_with_logits(guard(add_noise(members[idx], t, eps, acp), t), y[idx])
        if use_nm:
            j = torch.randint(len(nm), (batch_size,), generator=gen).to(device)
            tn = torch.randint(T, (batch_size,), generator=gen).to(device)
            en = torch.randn((batch_size, *nm.shape[1:]), generator=gen).to(device)
            half = torch.full((batch_size,), 0.5, device=device)
            loss = loss + nonmember_weight * F.binary_cross_entropy_with_logits(guard(add_noise(nm[j], tn, en, acp), tn), half)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        bar.update(1)
        if step % eval_every == 0 or step == max_steps:
            acc = fit_accuracy(guard, members, labels, alphas_cumprod=alphas_cumprod, fit_t=fit_t, seed=seed + 1)
            recent = torch.stack(losses[-eval_every:]).mean().item()
            if val is not None:
                gate = unseen_gate_rate(guard, val, alpha=alpha, alphas_cumprod=alphas_cumprod, fit_t=fit_t,
                                        seed=seed + 2)
                history.append((step, round(acc, 4), round(gate, 4)))
                bar.set_postfix(loss=f"{recent:.3f}", acc=f"{acc:.3f}", unseen_gate=f"{gate:.3f}")
            else:
                history.append((step, round(acc, 4)))
                bar.set_postfix(loss=f"{recent:.3f}", acc=f"{acc:.3f}")
            if acc >= target_accuracy and (gate is None or gate <= max_unseen_gate):
                break
    bar.close()
    guard.eval().requires_grad_(False)
    final = torch.stack(losses[-min(len(losses), eval_every):]).mean().item() if losses else float("nan")
    return TrainStats(steps=step, seconds=round(time.perf_counter() - start, 2), final_loss=round(final, 5),
                      fit_accuracy=round(acc, 4), reached_target=acc >= target_accuracy, history=history,
                      unseen_gate_rate=None if gate is None else round(gate, 4),
                      reached_specificity=gate is None or gate <= max_unseen_gate)
