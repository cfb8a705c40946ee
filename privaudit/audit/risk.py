"""Per-image risk: which members are exposed, ranked, from the evidence the audit already computed.

Released models generalise and reproduce the few images they saw many times (Carlini et al. 2023:
nearly every image extracted from Stable Diffusion was duplicated in LAION), so their average
membership numbers sit near chance while a handful of people's images are fully exposed. The
question is then *which* images are at risk. Nothing new is queried here: the inputs are the
attacks' per-image scores (``scores.csv``) and the detectors' per-member tables
(``DetectorOutput.members``, columns below).

Evidence per member, and how each is judged against chance:

- **reproduced**: ``copies``, the generated samples whose nearest member is this image (or any file
  of its duplicate cluster) and that lie within the detector's calibrated copy radius. A detector
  also states ``chance_copies``, the copies a member would receive by chance: its holdout
  false-positive rate times the samples, spread over the members as unseen images' near neighbours
  are (``nn``: a typical image in a dense region expects more stray copies than an unusual one); a
  duplicate cluster occupies one place in image space, so it gets one member's chance. A cluster is reproduced
  when P(Poisson(chance) >= copies), Bonferroni-corrected over the clusters, is at most
  ``alpha`` (0.05): one stray sample within the radius is what chance gives, several are not.
  The spread is estimated from a few hundred unseen images: an approximation, stated.
- **duplicated**: ``duplicates``, the other members in its duplicate cluster (identical pixels, or
  closer to another member than all but a small calibrated fraction of unseen images come to any
  member). Duplicated images are the ones models memorise: deduplicate before the next run. Duplication
  is a cause, not evidence of exposure: on its own it ranks a member higher and puts it on ``watch``
  (small images hold natural near-duplicate pairs, e.g. two writers' identical 8x8 digits).
- **singled out**: each attack's score against the *evaluation* holdout, as a percentile and a
  p-value (1 + holdout at or above) / (holdout + 1); the ensemble p-value is the smallest over the
  attacks times their number (Bonferroni), and a member is singled out when its Benjamini-Hochberg
  q-value is at most ``alpha``, one hypothesis per distinct image (a duplicate cluster counts once, with
  its smallest p-value: its copies must not relax the threshold for everyone else). With a few hundred holdout images the smallest
  possible p-value is about 1/(holdout + 1), so membership alone rarely singles out anyone: say so,
  never read silence as safety. Calibration members (``split``) helped fit the attacks; their
  scores lean towards members.
- **memorised prompt** (text models): ``prompt_p``, its caption's memorised-prompt score against the
  unseen captions' (a p-value like an attack's, in the same Bonferroni and Benjamini-Hochberg
  correction); ``prompt_flagged``, the detector's own flag at its calibrated quantile, flags about that
  share of unseen captions too, so alone it only puts a member on ``watch``.

A member is **at risk** when the model exposes it: reproduced (level high) or singled out (medium). A
member that is only duplicated, has a copy that chance explains, or only a flagged caption, is listed
as ``watch`` (ranked above the rest) but not at risk, so a model that memorised nothing lists no one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import poisson

from privaudit.stats.metrics import proportion_ci

ALPHA = 0.05
LEVELS = ("high", "medium", "watch", "low")
TOP = 20  # distinct images (a duplicate cluster's first file) shown in the report and results.json
MEMBER_COLUMNS = ("copies", "chance_copies", "closest_sample", "closest_distance", "copy_radius",
                  "duplicate_cluster", "duplicates", "duplicates_checked", "prompt_flagged", "prompt_score", "prompt_p")


@dataclass(frozen=True)
class Risk:
    """The ranked per-member table (``at_risk.csv``) and its summary (``results.json["at_risk"]``)."""

    table: pd.DataFrame
    summary: dict


def member_evidence(member_ids: list[str], tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per member: the detectors' per-member columns; ``copies`` and ``chance_copies`` summed over
    detectors, the others from the first detector that has them."""
    out = pd.DataFrame({"member_id": list(member_ids)})
    out["copies"], out["chance_copies"] = 0, 0.0
    for name, t in tables.items():
        if t is None or "member_id" not in t:
            continue
        t = t.drop_duplicates("member_id").set_index("member_id").reindex(out["member_id"])
        for col in ("copies", "chance_copies"):
            if col in t:
                out[col] = out[col] + t[col].fillna(0).to_numpy()
        for col in MEMBER_COLUMNS[2:]:
            if col in t and col not in out:
                out[col] = t[col].to_numpy()
    if "duplicate_cluster" not in out:
        out["duplicate_cluster"], out["duplicates"] = np.arange(len(out)), 0
    out["duplicate_cluster"] = pd.to_numeric(out["duplicate_cluster"], errors="coerce").fillna(-1).astype(int)
    lone = out["duplicate_cluster"] < 0  # a member no detector clustered is its own cluster
    out.loc[lone, "duplicate_cluster"] = out["duplicate_cluster"].max() + 1 + np.arange(int(lone.sum()))
    return out


def membership_evidence(scores: pd.DataFrame, attacks: list[str]) -> pd.DataFrame:
    """Per member: each attack's percentile and p-value against the evaluation holdout and the Bonferroni
    ensemble p-value over the attacks."""
    m = scores[scores["set"] == "member"].reset_index(drop=True)
    out = pd.DataFrame({"member_id": m["image_id"].astype(str), "split": m.get("split", "evaluation")})
    hold = scores[(scores["set"] == "holdout") & (scores.get("split", "evaluation") == "evaluation")]
    ps = []
    for a in attacks:
        h = np.sort(hold[a].to_numpy(float))
        h = h[np.isfinite(h)]
        s = m[a].to_numpy(float)
        if not len(h):
            continue
        below = np.searchsorted(h, s, side="left")  # holdout strictly below the member's score
        out[f"{a}_percentile"] = 100.0 * below / len(h)
        p = (1.0 + len(h) - below) / (len(h) + 1.0)
        out[f"{a}_p"] = p
        ps.append(p)
    out["membership_p"] = np.minimum(1.0, np.min(ps, axis=0) * len(ps)) if ps else np.nan
    return out


def cluster_q(p: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values with one hypothesis per duplicate cluster (its files are one image: its
    smallest p-value), given back to every file of the cluster. Counting a duplicated image once per file
    would let its copies relax the threshold for everyone else."""
    p = np.asarray(p, float)
    if not np.isfinite(p).any():
        return np.full(len(p), np.nan)
    per = pd.Series(np.where(np.isfinite(p), p, 1.0)).groupby(np.asarray(cluster)).min()
    q = pd.Series(benjamini_hochberg(per.to_numpy()), index=per.index)
    return q.reindex(cluster).to_numpy()


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up, monotone)."""
    p = np.asarray(p, float)
    n = len(p)
    if not n:
        return p
    order = np.argsort(p, kind="stable")
    q = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def per_image_risk(*, member_ids: list[str], scores: pd.DataFrame, attacks: list[str],
                   member_tables: dict[str, pd.DataFrame], ensemble: dict | None = None,
                   alpha: float = ALPHA) -> Risk:
    """Rank the members by risk (module docstring) and summarise the worst case."""
    ev = member_evidence(member_ids, member_tables)
    mem = membership_evidence(scores, [a for a in attacks if a in scores])
    t = ev.merge(mem, on="member_id", how="left")
    if "prompt_p" in t:  # the caption's memorisation score is one more per-image test beside the attacks
        n_tests = len([c for c in t if c.endswith("_percentile")]) + 1
        ps = [t[c].to_numpy(float) for c in t if c.endswith("_p") and c not in ("membership_p", "copy_p")]
        t["membership_p"] = np.minimum(1.0, np.nanmin(np.vstack(ps), axis=0) * n_tests)
    cl = t.groupby("duplicate_cluster")
    t["cluster_size"] = cl["member_id"].transform("size")
    t["cluster_copies"] = cl["copies"].transform("sum").astype(int)
    # chance copies fall in a region of image space: a cluster of near-identical files is one region, so its
    # chance is one file's (spreading chance per file would let duplication hide a reproduced image)
    lam = cl["chance_copies"].transform("max").to_numpy(float)
    n_clusters = int(t["duplicate_cluster"].nunique())
    k = t["cluster_copies"].to_numpy()
    p = np.where(k > 0, poisson.sf(k - 1, np.maximum(lam, 1e-12)), 1.0)
    t["copy_p"] = np.minimum(1.0, p * n_clusters)
    t["membership_q"] = cluster_q(t["membership_p"].to_numpy(float), t["duplicate_cluster"].to_numpy())
    flagged = t["prompt_flagged"].fillna(False).astype(bool) if "prompt_flagged" in t else pd.Series(False, index=t.index)
    q = t["membership_q"].to_numpy(float)
    reproduced = (k > 0) & (t["copy_p"].to_numpy() <= alpha)
    duplicated = t["cluster_size"].to_numpy() > 1
    singled = np.isfinite(q) & (q <= alpha)
    level, reason = [], []
    for i in range(len(t)):
        why = []
        if reproduced[i]:
            why.append(f"reproduced: {k[i]} generated sample(s) within the copy radius of this image"
                       + (" or its duplicates" if duplicated[i] else "") + f" ({lam[i]:.2g} expected by chance)")
        elif k[i] > 0:
            why.append(f"{k[i]} sample(s) within the copy radius, as chance would give ({lam[i]:.2g} expected)")
        if duplicated[i]:
            why.append(f"duplicated: {int(t['cluster_size'].iat[i]) - 1} other member file(s) are copies of it")
        if flagged.iat[i]:
            why.append("its caption scores above most unseen captions as a memorised prompt")
        if singled[i]:
            why.append(f"membership score above the unseen images (q = {q[i]:.2g})")
        lvl = ("high" if reproduced[i] else "medium" if singled[i]
               else "watch" if k[i] > 0 or flagged.iat[i] or duplicated[i] else "low")
        level.append(lvl)
        reason.append("; ".join(why) or "not distinguishable from unseen images")
    t["level"], t["reason"] = level, reason
    t["at_risk"] = t["level"].isin(("high", "medium"))
    rank = t["level"].map({lv: i for i, lv in enumerate(LEVELS)})
    t = (t.assign(_r=rank, _p=t["membership_p"].fillna(1.0))
         .sort_values(["_r", "cluster_copies", "cluster_size", "_p", "member_id"],
                      ascending=[True, False, False, True, True], kind="stable")
         .drop(columns=["_r", "_p"]).reset_index(drop=True))
    t.insert(0, "rank", np.arange(1, len(t) + 1))
    return Risk(t, summarise(t, n_clusters=n_clusters, ensemble=ensemble or {}, alpha=alpha,
                             n_attacks=len([c for c in t if c.endswith("_percentile")])))


def summarise(t: pd.DataFrame, *, n_clusters: int, ensemble: dict, alpha: float, n_attacks: int) -> dict:
    """The worst case in numbers and one sentence."""
    rep = t[t["level"] == "high"]
    n_rep = int(rep["duplicate_cluster"].nunique())
    lo, hi = proportion_ci(n_rep, n_clusters) if n_clusters else (0.0, 1.0)
    tpr = (ensemble.get("metrics") or {}).get("tpr_at_fpr_0.001")
    dup_files = int((t["cluster_size"] > 1).sum())
    distinct = f"{n_clusters} distinct" if n_clusters != len(t) else f"{len(t)}"
    if n_rep:
        head = (f"{n_rep} of {distinct} members {'is' if n_rep == 1 else 'are'} reproduced by the model "
                f"({n_rep / max(n_clusters, 1):.1%}, 95% CI {lo:.1%}-{hi:.1%})")
    else:
        head = f"none of {distinct} members is reproduced beyond chance"
    others = int((~t["at_risk"]).sum())
    tail = (f"; the other {others} member file(s) are not distinguishable from unseen images one by one"
            if others and n_attacks else "")
    if tpr:
        tail += (f" (strongest attack {tpr.get('attack')}: TPR {tpr.get('value', float('nan')):.3f} at 0.1% FPR"
                 + (f", 95% CI {tpr['ci'][0]:.3f}-{tpr['ci'][1]:.3f}" if tpr.get("ci") else "") + ")")
    top = t[t["at_risk"]].drop_duplicates("duplicate_cluster").head(TOP)  # one row per distinct image
    return {
        "sentence": head + tail + ".",
        "n_members": int(len(t)), "n_distinct": n_clusters, "n_at_risk": int(t["at_risk"].sum()),
        "n_reproduced": n_rep, "n_reproduced_files": int(len(rep)), "reproduced_ci": [lo, hi],
        "n_duplicated_files": dup_files, "n_duplicate_clusters": int(t.loc[t["cluster_size"] > 1, "duplicate_cluster"].nunique()),
        "n_singled_out": int((t["membership_q"] <= alpha).sum()) if "membership_q" in t else 0,
        "n_watch": int((t["level"] == "watch").sum()),
        "tpr_at_fpr_0.001": tpr, "alpha": alpha, "levels": {lv: int((t["level"] == lv).sum()) for lv in LEVELS},
        "top": [{k: _plain(v) for k, v in row.items()} for row in top.to_dict("records")],
        "rule": ("reproduced (high): more generated copies of the image or its duplicates than chance gives "
                 f"(Poisson, Bonferroni over {n_clusters} distinct images, at {alpha:g}); singled out by the attacks "
                 f"(Benjamini-Hochberg q <= {alpha:g} over the distinct images; medium); duplicated, a copy chance "
                 "explains or a flagged caption alone: watch, not at risk"),
    }


def _plain(v):
    """A JSON-ready scalar (NaN -> None)."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v
