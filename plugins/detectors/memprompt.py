"""Memorised-prompt detection from the magnitude of text-conditional noise predictions.

Wen et al. ("Detecting, Explaining, and Mitigating Memorization in Diffusion Models",
ICLR 2024) observe that a memorised prompt pulls generation towards one training image
from the first sampling steps on: the text-conditional part of the noise prediction,
``d_t = ||eps(x_t, prompt) - eps(x_t, "")||_2``, is consistently large for memorised
prompts and small otherwise. The score of a prompt is ``d_t`` averaged over the first
``n_steps`` steps of a DDIM sampling run (``steps`` in all, classifier-free guidance
``guidance_scale``, as the model would be used) and over ``n_seeds`` initial noises.
The same seeds are used for every prompt (common random numbers), so prompts are compared
on equal terms. Higher = more likely memorised.

Prompts come from ``prompts``: a text file, one prompt per line (blank lines and lines
starting with ``#`` ignored), optionally followed by a tab and a label (``1``/``member``/
``memorised`` or ``0``/``holdout``/``unseen``); or a list of prompts. By default the
members' captions (label 1) and the holdout's captions (label 0), each capped at
``max_prompts`` (a seeded subset), are used: unseen prompts of the same form as the
training captions.

With labels: AUC of member vs unseen prompts (bootstrap interval) and TPR at low FPR,
judged by the membership severity rules; ``memorised_fraction`` is the share of member
prompts scoring above the ``1 - quantile`` quantile of unseen prompts (a calibrated flag
with false-positive rate about ``quantile``). Without labels, prompts are ranked, and flagged
only above an explicit ``threshold``. CPSample guidance (a wrapper's additive term) cancels
in the difference, so this measures the model, not the guard.

Threat model: gray box (noise predictions for chosen prompts). Queries per prompt:
``2 * n_steps * n_seeds`` UNet evaluations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from privaudit.api import (
    MEMBERSHIP_SPECS,
    DetectorOutput,
    InputError,
    InstanceOf,
    Interval,
    Metric,
    MetricSpec,
    ReplicationDetector,
    SequenceOf,
    membership_metrics,
    proportion_ci,
    read_prompt_file,
    store_params,
)


@torch.no_grad()
def text_guidance_magnitude(denoiser, prompts: list[str], *, steps: int, n_steps: int, guidance_scale: float,
                            n_seeds: int, seed: int, batch_size: int = 256) -> np.ndarray:
    """Per prompt, ||eps(x_t, prompt) - eps(x_t, "")|| over the first ``n_steps`` of ``steps`` DDIM steps."""
    from privaudit.model.denoiser import cond_tile, denoise, sampling_scheduler
    from privaudit.model.latent import latent_of

    lat = latent_of(denoiser)
    sched = sampling_scheduler(denoiser, "ddim", steps)
    ts = sched.timesteps[:n_steps]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n_seeds, *lat.sample_shape), generator=gen)  # shared by all prompts
    per_chunk = max(1, batch_size // n_seeds)
    out = np.zeros(len(prompts))
    for s in range(0, len(prompts), per_chunk):
        chunk = prompts[s:s + per_chunk]
        z = noise.repeat(len(chunk), 1, 1, 1).to(denoiser.device)
        cond = lat.prompt_embeddings([p for p in chunk for _ in range(n_seeds)])
        empty = cond_tile(lat.prompt_embeddings([""]), len(z))
        total = torch.zeros(len(z), device=denoiser.device)

        def add(t, eu, ec, total=total):
            total += (ec - eu).flatten(1).norm(dim=1)

        denoise(denoiser, z, scheduler=sched, cond=cond, uncond=empty, guidance_scale=guidance_scale, timesteps=ts,
                on_eps=add)
        out[s:s + len(chunk)] = (total / len(ts)).view(len(chunk), n_seeds).mean(1).cpu().numpy()
    return out


class MemorisedPromptDetector(ReplicationDetector):
    """Memorised prompts: magnitude of the text-conditional noise prediction (Wen et al. 2024)."""

    name = "memprompt"
    id = "PA-TXT-001"
    requires = ("sampling", "text")
    threat_model = "gray-box"
    severity_rules = "membership"  # member vs unseen prompts: an AUC, judged like an attack
    metric_specs = (*MEMBERSHIP_SPECS, MetricSpec(
        "memorised_fraction", "memorised prompts", "membership", "low", "rate",
        "training captions scoring above the 1 - q quantile of unseen captions (q = the false-positive rate)"))
    references = ("Wen et al., Detecting, Explaining, and Mitigating Memorization in Diffusion Models, ICLR 2024",)
    signal_words = "text-conditional noise magnitude"

    parameter_constraints = {
        "prompts": [None, InstanceOf(str), SequenceOf(InstanceOf(str))], "steps": [Interval(int, 1, 10_000)],
        "n_steps": [Interval(int, 1, 10_000)], "guidance_scale": [Interval(float, 0, 100)],
        "n_seeds": [Interval(int, 1, 1024)], "max_prompts": [Interval(int, 1, None)],
        "quantile": [Interval(float, 0, 1, closed="neither")], "threshold": [None, Interval(float, None, None)],
        "n_top": [Interval(int, 0, 10_000)], "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, prompts: str | tuple[str, ...] | None = None, steps: int = 50, n_steps: int = 10,
                 guidance_scale: float = 7.5, n_seeds: int = 4, max_prompts: int = 256, quantile: float = 0.01,
                 threshold: float | None = None, n_top: int = 10, batch_size: int = 256):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(2 * self.n_steps * self.n_seeds)  # per prompt

    def _check(self) -> None:
        for k in ("steps", "n_steps", "n_seeds", "max_prompts", "batch_size"):
            v = getattr(self, k)
            if not (isinstance(v, int) and v >= 1):
                raise InputError(f"memprompt: {k} must be an integer >= 1, got {v!r}")
        if self.n_steps > self.steps:
            raise InputError(f"memprompt: n_steps ({self.n_steps}) exceeds steps ({self.steps})")
        if not 0 < self.quantile < 1:
            raise InputError(f"memprompt: quantile must lie strictly between 0 and 1, got {self.quantile!r}")

    def prompt_scores(self, denoiser, prompts: list[str], *, seed: int) -> np.ndarray:
        """Per prompt, the memorisation score (higher = more likely memorised)."""
        return text_guidance_magnitude(denoiser, prompts, steps=self.steps, n_steps=self.n_steps,
                                       guidance_scale=self.guidance_scale, n_seeds=self.n_seeds, seed=seed,
                                       batch_size=self.batch_size)

    def _prompts(self, ctx) -> tuple[list[str], np.ndarray | None, str]:
        if isinstance(self.prompts, (str, Path)):
            p, y = read_prompt_file(self.prompts)
            return p, y, str(self.prompts)
        if self.prompts is not None:
            return [str(p) for p in self.prompts], None, "given list"
        rng = np.random.default_rng(ctx.seed)
        out, labels = [], []
        for images, label in ((ctx.members, 1), (ctx.holdout, 0)):
            caps = list(images.captions)
            if len(caps) > self.max_prompts:
                caps = [caps[i] for i in np.sort(rng.choice(len(caps), self.max_prompts, replace=False))]
            out += caps
            labels += [label] * len(caps)
        return out, np.asarray(labels, int), "member and holdout captions"

    def detect(self, ctx) -> DetectorOutput:
        self._check()
        prompts, y, source = self._prompts(ctx)
        if not prompts:
            return DetectorOutput(metrics={}, finding="No prompts to rank: the member and holdout folders carry no "
                                  "captions (metadata.jsonl / metadata.csv) and no prompt file was given "
                                  "(--param memprompt.prompts=FILE).", details={"source": source})
        s = self.prompt_scores(ctx.denoiser, prompts, seed=ctx.seed)
        metrics: dict[str, Metric] = {}
        details: dict = {"source": source, "n_prompts": len(prompts)}
        flagged = np.zeros(len(s), bool)
        labelled = y is not None and (y == 1).sum() >= 2 and (y == 0).sum() >= 2
        if labelled:
            metrics = membership_metrics(s[y == 1], s[y == 0], n_boot=ctx.settings.n_boot, seed=ctx.seed)
            thr = float(np.quantile(s[y == 0], 1 - self.quantile))
            flagged = s > thr
            k, n = int(flagged[y == 1].sum()), int((y == 1).sum())
            metrics["memorised_fraction"] = Metric(k / n, proportion_ci(k, n),
                                                   note=f"member prompts above the {1 - self.quantile:.0%} quantile of unseen prompts")
            details.update(threshold=thr, false_positive_rate=self.quantile)
        elif self.threshold is not None:
            flagged = s > float(self.threshold)
            details["threshold"] = float(self.threshold)
        order = np.argsort(-s, kind="stable")
        table = pd.DataFrame({"prompt": prompts, "label": y if y is not None else np.full(len(s), -1),
                              "score": s, "rank": np.argsort(order) + 1, "flagged": flagged})
        details["top"] = [{"prompt": prompts[i], "score": round(float(s[i]), 5),
                           "label": None if y is None else int(y[i]), "flagged": bool(flagged[i])}
                          for i in order[: self.n_top]]
        if labelled:
            auc = metrics["auc"]
            finding = (f"{self.signal_words.capitalize()} separates {int((y == 1).sum())} training captions from "
                       f"{int((y == 0).sum())} unseen captions with AUC {auc.value:.3f} (95% CI {auc.ci[0]:.3f}-"
                       f"{auc.ci[1]:.3f}); {metrics['memorised_fraction'].value:.0%} of training captions score above "
                       f"{1 - self.quantile:.0%} of unseen ones: those prompts are likely memorised.")
        else:
            top = prompts[order[0]]
            finding = (f"Ranked {len(prompts)} prompts by {self.signal_words}; the highest is {top!r} "
                       f"({s[order[0]]:.3f}). No labels: pass a label column to measure separation"
                       + (f"; {int(flagged.sum())} above threshold {self.threshold}." if self.threshold is not None else "."))
        return DetectorOutput(metrics=metrics, finding=finding, details=details, table=table,
                              members=_member_prompts(members, prompts, y, s, flagged)
                              if labelled and (members := getattr(ctx, "members", None)) is not None else None)


def _member_prompts(members, prompts: list[str], y: np.ndarray, s: np.ndarray, flagged: np.ndarray):
    """Per member (``privaudit.audit.risk``): its caption's score, its p-value against the unseen captions'
    scores, and the detector's flag; members whose caption was not scored get no value."""
    unseen = np.sort(s[y == 0])
    p = (1.0 + len(unseen) - np.searchsorted(unseen, s, side="left")) / (len(unseen) + 1.0)
    by_caption = {c: (float(sc), float(pv), bool(f)) for c, lab, sc, pv, f in zip(prompts, y, s, p, flagged) if lab == 1}
    rows = [by_caption.get(c, (np.nan, np.nan, False)) for c in members.captions]
    return pd.DataFrame({"member_id": list(members.ids), "prompt_score": [r[0] for r in rows],
                         "prompt_p": [r[1] for r in rows], "prompt_flagged": [r[2] for r in rows]})
