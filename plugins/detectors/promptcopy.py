"""Prompt-level replication and mode collapse on text-to-image models.

For each prompt, generate ``n_per_prompt`` images (DDIM, ``steps`` steps, classifier-free
guidance ``guidance_scale``, seeded per prompt and draw) and embed them with a
``FeatureExtractor`` (``pixels`` by default). Per prompt:

- ``copy_fraction``: the share of its generations closer to a member than the
  ``quantile`` (1%) quantile of real holdout images' nearest-member distances: the
  calibrated copy criterion of the ``nn`` detector, at a known false-positive rate;
- ``diversity``: the mean pairwise distance between its generations (mode collapse: a
  prompt whose generations all land on one training image has diversity near 0);
- ``max_clique``: the largest set of its generations that are pairwise near-identical,
  i.e. closer to each other than the ``quantile`` quantile of the distance from a real
  holdout image to its nearest *other* holdout image (two distinct real images are that
  close only ``quantile`` of the time). Carlini et al. ("Extracting Training Data from
  Diffusion Models", USENIX Security 2023) flag a prompt whose generations form a clique of
  near-identical images (10 of 500 there); here a prompt is ``collapsed`` when
  ``max_clique >= clique_size``. The clique is found exactly (Bron-Kerbosch with pivoting).
- ``own_copy_fraction`` (member captions only): the share of generations whose nearest
  member is the very image the caption belongs to.

Prompts: ``prompts`` (a file, one per line, optional tab + label as for ``memprompt``, or
a list); by default ``n_prompts`` member captions (a seeded subset), plus as many holdout
captions when ``unseen_prompts`` is true, so a reader sees whether collapse is specific to
training captions. Headline metrics average over member-caption prompts where labels exist.
Run on a raw and a CPSample-protected model (``privaudit mitigate``), the before/after
difference is the mitigation's effect on per-prompt variety and copying.

Threat model: black box (generated images only). Queries: ``steps * 2`` UNet evaluations
per generated image (conditional and unconditional branch).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from privaudit.api import (
    DetectorOutput,
    InputError,
    InstanceOf,
    Interval,
    Metric,
    MetricSpec,
    ReplicationDetector,
    SequenceOf,
    png_data_uri,
    proportion_ci,
    read_prompt_file,
    store_params,
    to_uint8,
)


def max_clique(adj: np.ndarray) -> int:
    """Size of the largest clique of an undirected graph given as a boolean adjacency matrix."""
    n = len(adj)
    nbrs = [set(np.flatnonzero(adj[i]).tolist()) - {i} for i in range(n)]
    best = min(n, 1)

    def expand(size: int, cand: set[int], excl: set[int]) -> None:
        nonlocal best
        if not cand and not excl:
            best = max(best, size)
            return
        if size + len(cand) <= best:
            return  # cannot beat the best clique found
        pivot = max(cand | excl, key=lambda v: len(nbrs[v] & cand))
        for v in list(cand - nbrs[pivot]):
            expand(size + 1, cand & nbrs[v], excl & nbrs[v])
            cand.remove(v)
            excl.add(v)

    expand(0, set(range(n)), set())
    return best


FEATURE_BATCH = 1024  # images per extractor.transform call (ctx.features: an engine stage)


class PromptReplicationDetector(ReplicationDetector):
    """Per prompt: copies of members, near-identical cliques among its generations, and diversity."""

    name = "promptcopy"
    id = "PA-TXT-002"
    requires = ("sampling", "text")
    metric_specs = (
        MetricSpec("copy_fraction", "per-prompt copies (calibrated)", "replication", "low", "rate",
                   "generations for training captions closer to a member than all but q of real unseen images"),
        MetricSpec("copied_prompt_fraction", "prompts with a copy", "replication", "low", "rate",
                   "training captions with at least one generation that copies a member"),
        MetricSpec("collapsed_prompt_fraction", "collapsed prompts", "replication", "low", "rate",
                   "prompts whose generations form a clique of near-identical images"),
        MetricSpec("mean_diversity", "within-prompt diversity", "replication", "high", "number",
                   "mean pairwise distance between a prompt's generations (near 0: collapse)"),
        MetricSpec("holdout_diversity", "diversity of real images", "replication", None, "number",
                   "mean pairwise distance between real holdout images"),
        MetricSpec("own_copy_fraction", "copies of the caption's own image", "replication", "low", "rate",
                   "generations whose nearest member is the image the caption belongs to"),
        MetricSpec("unseen_copy_fraction", "copies for unseen captions", "replication", None, "rate",
                   "the copy fraction for holdout captions (prompts never trained on)"),
        MetricSpec("unseen_mean_diversity", "diversity for unseen captions", "replication", None, "number",
                   "within-prompt diversity for holdout captions"),
    )
    references = ("Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023",
                  "Kazdan et al., CPSample: Classifier Protected Sampling for Guarding Training Data During "
                  "Diffusion, ICLR 2025",)

    parameter_constraints = {
        "prompts": [None, InstanceOf(str), SequenceOf(InstanceOf(str))], "n_prompts": [Interval(int, 1, None)],
        "unseen_prompts": [InstanceOf(bool)], "n_per_prompt": [Interval(int, 1, 10_000)],
        "steps": [Interval(int, 1, 10_000)], "guidance_scale": [Interval(float, 0, 100)], "features": [InstanceOf(str)],
        "quantile": [Interval(float, 0, 1, closed="neither")], "clique_size": [Interval(int, 2, None)],
        "n_examples": [Interval(int, 0, 1000)], "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, prompts: str | tuple[str, ...] | None = None, n_prompts: int = 32,
                 unseen_prompts: bool = True, n_per_prompt: int = 8, steps: int = 25, guidance_scale: float = 7.5,
                 features: str = "pixels", quantile: float = 0.01, clique_size: int = 4, n_examples: int = 6,
                 batch_size: int = 256):
        store_params(self, locals())

    def queries_per_image(self) -> float:
        return float(2 * self.steps)  # per generated image

    def _check(self) -> None:
        for k in ("n_prompts", "n_per_prompt", "steps", "batch_size"):
            v = getattr(self, k)
            if not (isinstance(v, int) and v >= 1):
                raise InputError(f"promptcopy: {k} must be an integer >= 1, got {v!r}")
        if self.n_per_prompt < 2:
            raise InputError("promptcopy: n_per_prompt must be >= 2 to measure diversity")
        if not (isinstance(self.clique_size, int) and 2 <= self.clique_size <= self.n_per_prompt):
            raise InputError(f"promptcopy: clique_size must be an integer in [2, n_per_prompt={self.n_per_prompt}], "
                             f"got {self.clique_size!r}")
        if not 0 < self.quantile < 1:
            raise InputError(f"promptcopy: quantile must lie strictly between 0 and 1, got {self.quantile!r}")

    def _prompts(self, ctx) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(prompts, labels 1/0/-1, index of the member each member caption belongs to or -1)."""
        if self.prompts is not None:
            if isinstance(self.prompts, str):
                p, y = read_prompt_file(self.prompts)
            else:
                p, y = [str(x) for x in self.prompts], None
            y = np.full(len(p), -1) if y is None else y
            caps = list(ctx.members.captions)
            owner = np.array([caps.index(x) if x in caps else -1 for x in p])
            return p, y, owner
        rng = np.random.default_rng(ctx.seed)
        out, labels, owner = [], [], []
        sets = ((ctx.members, 1), (ctx.holdout, 0)) if self.unseen_prompts else ((ctx.members, 1),)
        for images, label in sets:
            caps = list(images.captions)
            idx = np.arange(len(caps))
            if len(caps) > self.n_prompts:
                idx = np.sort(rng.choice(len(caps), self.n_prompts, replace=False))
            out += [caps[i] for i in idx]
            labels += [label] * len(idx)
            owner += list(idx) if label == 1 else [-1] * len(idx)
        return out, np.asarray(labels, int), np.asarray(owner, int)

    def detect(self, ctx) -> DetectorOutput:
        import faiss
        from scipy.spatial.distance import cdist, pdist

        from privaudit.model.latent import generate

        self._check()
        prompts, y, owner = self._prompts(ctx)
        if not prompts:
            return DetectorOutput(metrics={}, finding="No prompts: the member folder carries no captions "
                                  "(metadata.jsonl / metadata.csv) and no prompt file was given "
                                  "(--param promptcopy.prompts=FILE).", details={})
        extractor = ctx.feature(self.features)
        fm = ctx.features(extractor, ctx.members, label="members", batch_size=FEATURE_BATCH)
        fh = ctx.features(extractor, ctx.holdout, label="holdout", batch_size=FEATURE_BATCH)
        index = faiss.IndexFlatL2(fm.shape[1])
        index.add(np.ascontiguousarray(fm))
        dh = np.sqrt(np.maximum(index.search(np.ascontiguousarray(fh), 1)[0][:, 0], 0))
        copy_thr = float(np.quantile(dh, self.quantile))
        dhh = cdist(fh, fh)
        np.fill_diagonal(dhh, np.inf)
        dup_thr = float(np.quantile(dhh.min(1), self.quantile))

        n, g = len(prompts), self.n_per_prompt
        x = generate(ctx.denoiser, prompts, n_per_prompt=g, steps=self.steps, guidance_scale=self.guidance_scale,
                     seed=ctx.seed, batch_size=self.batch_size, progress=ctx.progress)
        fx = ctx.features(extractor, x, label="generations", batch_size=FEATURE_BATCH)
        d2, nn = index.search(np.ascontiguousarray(fx), 1)
        dist, nn = np.sqrt(np.maximum(d2[:, 0], 0)).reshape(n, g), nn[:, 0].reshape(n, g)
        copy = dist < copy_thr
        div = np.empty(n)
        clique = np.empty(n, int)
        for i in range(n):
            f = fx[i * g:(i + 1) * g]
            div[i] = pdist(f).mean()
            clique[i] = max_clique(cdist(f, f) < dup_thr)
        collapsed = clique >= self.clique_size
        own = np.where(owner[:, None] >= 0, nn == owner[:, None], False).mean(1)
        member_ids = np.asarray(ctx.members.ids)
        top_member = [pd.Series(member_ids[r[c]]).value_counts().index[0] if c.any() else "" for r, c in zip(nn, copy)]
        table = pd.DataFrame({"prompt": prompts, "label": y, "diversity": div, "copy_fraction": copy.mean(1),
                              "max_clique": clique, "collapsed": collapsed, "own_copy_fraction":
                              np.where(owner >= 0, own, np.nan), "most_copied_member": top_member,
                              "min_member_distance": dist.min(1)})

        focus = y == 1 if (y == 1).any() else np.ones(n, bool)  # headline: member captions where known
        rng = np.random.default_rng(ctx.seed)
        boot = [div[focus][rng.integers(focus.sum(), size=focus.sum())].mean() for _ in range(ctx.settings.n_boot)]
        k_copy, n_gen = int(copy[focus].sum()), int(focus.sum()) * g
        frac = lambda m: Metric(float(m.mean()), proportion_ci(int(m.sum()), len(m)))
        real_div = float(pdist(fh).mean())
        metrics = {
            "copy_fraction": Metric(k_copy / n_gen, proportion_ci(k_copy, n_gen),
                                    note=f"generations for {int(focus.sum())} prompts, calibrated at {self.quantile:.0%}"),
            "copied_prompt_fraction": frac(copy[focus].any(1)),
            "collapsed_prompt_fraction": frac(collapsed[focus]),
            "mean_diversity": Metric(float(div[focus].mean()), tuple(np.quantile(boot, [0.025, 0.975]).tolist()),
                                     note=f"mean pairwise {self.features} distance within a prompt; real holdout "
                                          f"images: {real_div:.3f}"),
            "holdout_diversity": Metric(real_div, note="mean pairwise distance between real holdout images"),
        }
        if (owner >= 0).any():
            metrics["own_copy_fraction"] = Metric(float(own[owner >= 0].mean()),
                                                  note="generations whose nearest member is the caption's own image")
        unseen = y == 0
        if unseen.any() and (y == 1).any():
            metrics["unseen_copy_fraction"] = Metric(float(copy[unseen].mean()),
                                                     note="copy fraction for holdout captions (prompts never trained on)")
            metrics["unseen_mean_diversity"] = Metric(float(div[unseen].mean()))

        worst = np.lexsort((div, -clique))[: self.n_examples]
        x8 = to_uint8(x)
        examples = [{"prompt": prompts[i], "label": int(y[i]), "diversity": round(float(div[i]), 4),
                     "max_clique": int(clique[i]), "copy_fraction": float(copy[i].mean()),
                     "generations_png": [png_data_uri(im, scale=4) for im in x8[i * g:(i + 1) * g]],
                     "nearest_member_png": png_data_uri(ctx.members.uint8([int(nn[i, 0])])[0], scale=4),
                     "nearest_member_id": str(member_ids[nn[i, 0]])} for i in worst]
        details = {"false_positive_rate": self.quantile, "copy_threshold": copy_thr, "near_identical_threshold": dup_thr,
                   "clique_size": self.clique_size, "n_prompts": n, "n_per_prompt": g, "features": self.features,
                   "guidance_scale": self.guidance_scale, "steps": self.steps, "examples": examples}
        who = "training captions" if (y == 1).any() else "prompts"
        finding = (f"For {int(focus.sum())} {who}, {metrics['copy_fraction'].value:.1%} of {g} generations each are "
                   f"copies of members; {metrics['collapsed_prompt_fraction'].value:.0%} of prompts collapse "
                   f"(>= {self.clique_size} of {g} generations near-identical); mean within-prompt diversity "
                   f"{div[focus].mean():.3f} vs {real_div:.3f} between real images.")
        if "unseen_copy_fraction" in metrics:
            finding += (f" Unseen captions: {metrics['unseen_copy_fraction'].value:.1%} copies, diversity "
                        f"{metrics['unseen_mean_diversity'].value:.3f}.")
        n_mem = len(member_ids)
        per_member = pd.DataFrame({  # privaudit.audit.risk: copies of each member over every generation
            "member_id": member_ids, "copies": np.bincount(nn[copy], minlength=n_mem),
            "chance_copies": max(self.quantile, float(np.mean(dh < copy_thr))) * n * g / max(n_mem, 1)})
        return DetectorOutput(metrics=metrics, finding=finding, details=details, table=table, members=per_member)
