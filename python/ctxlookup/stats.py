"""Statistics and figures of the paper (METHOD §5, §6), computed with scipy and drawn with matplotlib.

- :func:`score_statistics`: per model, the number of heads, mean, std, skewness
  (``scipy.stats.skew``; negative = mass on the right), ``skewtest(alternative="greater")`` and a
  two-sample Kolmogorov-Smirnov test against the random-neuron baseline (Fig. 5, Table 3 rows).
- :func:`subset_counts`: Table 4, how many distinct corpus subsets each neuron-head pair's prompts
  come from.
- :func:`ablation_comparison`: the §5.4 check: per head, the mean decrease of the token's
  probability on its active vs its inactive prompts, and a two-sample KS test across heads.
- :func:`rising_comparison`: not the paper's: do the next-token neurons pass the an-neuron post's
  check (:func:`ctxlookup.next_token_evidence`'s ``rising``) more often than the random ones?
  Fisher's exact test, one-sided.
- :func:`figure5`, :func:`figure6`: the two figures, saved as PNG and SVG.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

__all__ = ["score_statistics", "subset_counts", "ablation_comparison", "rising_comparison", "figure5", "figure6",
           "PUBLISHED_MEAN_E"]

PUBLISHED_MEAN_E = {"gpt2-small": 0.650, "gpt2-medium": 0.610, "gpt2-large": 0.575, "pythia-160m": 0.621,
                    "pythia-1.4b": 0.574, "gpt2-large random": 0.558}


def _valid(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s[np.isfinite(s)]


def score_statistics(scores, baseline=None, label: str = "model") -> pd.DataFrame:
    """One row: ``[label, n_heads, mean, std, skew, skewtest_z, skewtest_p, ks_D, ks_p]``.

    ``scores``: explanation scores E (NaN, e.g. one-class heads, are left out). ``std`` is the
    sample standard deviation (ddof=1). ``skewtest`` needs at least 8 scores (NaN otherwise);
    the KS columns need ``baseline`` (the random-neuron scores).
    """
    from scipy import stats

    s = _valid(scores)
    row = dict(label=label, n_heads=int(s.size), mean=float(s.mean()) if s.size else np.nan,
               std=float(s.std(ddof=1)) if s.size > 1 else np.nan,
               skew=float(stats.skew(s)) if s.size > 2 else np.nan, skewtest_z=np.nan, skewtest_p=np.nan,
               ks_D=np.nan, ks_p=np.nan)
    if s.size >= 8:
        t = stats.skewtest(s, alternative="greater")
        row.update(skewtest_z=float(t.statistic), skewtest_p=float(t.pvalue))
    if baseline is not None:
        b = _valid(baseline)
        if s.size and b.size:
            k = stats.ks_2samp(s, b)
            row.update(ks_D=float(k.statistic), ks_p=float(k.pvalue))
    return pd.DataFrame([row])


def subset_counts(prompts: pd.DataFrame, attribution: pd.DataFrame, heads: pd.DataFrame,
                  which: str = "active") -> pd.DataFrame:
    """Table 4: per neuron-head pair, the number of distinct corpus subsets among its prompts
    (``which``: "active" prompts of the head, or "all" of the neuron's prompts), and the table of
    how many pairs have 1, 2, ... subsets in ``df.attrs["histogram"]``."""
    if which not in ("active", "all"):
        raise ValueError("which must be 'active' or 'all'")
    sub = prompts.set_index("prompt_id")["subset"]
    rows = []
    for h in heads.itertuples(index=False):
        a = attribution[(attribution.layer == h.layer) & (attribution.neuron == h.neuron) &
                        (attribution.head_layer == h.head_layer) & (attribution["head"] == h.head)]
        pids = a[a.active].prompt_id if which == "active" else a.prompt_id
        subsets = sub.reindex(pids.unique()).dropna()
        rows.append(dict(layer=h.layer, neuron=h.neuron, head_layer=h.head_layer, head=h.head,
                         n_prompts=int(len(pids.unique())), n_subsets=int(subsets.nunique()),
                         subsets=sorted(set(subsets))))
    df = pd.DataFrame(rows, columns=["layer", "neuron", "head_layer", "head", "n_prompts", "n_subsets", "subsets"])
    df.attrs["histogram"] = df.n_subsets.value_counts().sort_index().rename_axis("n_subsets").rename("n_pairs")
    return df


def ablation_comparison(ablation: pd.DataFrame) -> pd.DataFrame:
    """Per head: mean decrease of the token's probability on its active and on its inactive
    prompts; ``df.attrs["ks"]`` holds the two-sample KS test across heads (active vs inactive
    means) as ``{"D": ..., "p": ..., "n_active": ..., "n_inactive": ...}``."""
    from scipy import stats

    if ablation["active"].isna().any():
        raise ValueError("ablation results need the 'active' column (pass attribution to ablate_heads)")
    g = ablation.groupby(["layer", "neuron", "head_layer", "head", "active"])["decrease"].mean().unstack("active")
    g = g.rename(columns={True: "mean_decrease_active", False: "mean_decrease_inactive"}).reset_index()
    for c in ("mean_decrease_active", "mean_decrease_inactive"):
        if c not in g.columns:
            g[c] = np.nan
    a, i = _valid(g.mean_decrease_active), _valid(g.mean_decrease_inactive)
    ks = dict(D=np.nan, p=np.nan, n_active=int(a.size), n_inactive=int(i.size))
    if a.size and i.size:
        k = stats.ks_2samp(a, i)
        ks.update(D=float(k.statistic), p=float(k.pvalue))
    g.attrs["ks"] = ks
    return g


def rising_comparison(evidence: pd.DataFrame, group: str = "next_token", baseline: str = "random") -> dict:
    """Do the ``group`` neurons of an evidence table (:func:`ctxlookup.next_token_evidence` with a
    ``group`` column, as the replicate ``evidence`` stage writes) pass the an-neuron check
    (``rising``) more often than the ``baseline`` ones? Fisher's exact test on the 2 x 2 table
    (group / baseline by rising / not), one-sided (``alternative="greater"``).

    Returns ``{"rising": k, "neurons": n, "baseline_rising": k0, "baseline_neurons": n0,
    "odds_ratio": ..., "p": ...}``; the test's fields are NaN when either group is empty.
    """
    from scipy import stats

    for c in ("group", "rising"):
        if c not in evidence.columns:
            raise ValueError(f"the evidence table has no '{c}' column")
    a = evidence.rising[evidence.group == group].astype(bool)
    b = evidence.rising[evidence.group == baseline].astype(bool)
    out = dict(rising=int(a.sum()), neurons=int(a.size), baseline_rising=int(b.sum()), baseline_neurons=int(b.size),
               odds_ratio=np.nan, p=np.nan)
    if a.size and b.size:
        t = stats.fisher_exact([[out["rising"], a.size - out["rising"]], [out["baseline_rising"], b.size - out["baseline_rising"]]],
                               alternative="greater")
        out.update(odds_ratio=float(t.statistic), p=float(t.pvalue))
    return out


def _figure(figsize=(5, 3.5)):
    """A Figure with one Axes, made without pyplot: no global backend or state is touched, so
    inline plots in Jupyter keep working around a replication."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, path_base: str) -> list:
    os.makedirs(os.path.dirname(os.path.abspath(path_base)), exist_ok=True)
    out = []
    for ext in ("png", "svg"):
        p = f"{path_base}.{ext}"
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    return out


def figure5(scores, baseline=None, path_base: str = "figure5", title: str = "Head explanation scores") -> list:
    """Histogram of E for the model's heads (and the random-neuron baseline); PNG and SVG paths."""
    fig, ax = _figure()
    bins = np.linspace(0, 1, 21)
    s = _valid(scores)
    ax.hist(s, bins=bins, alpha=0.7, label=f"next-token neurons (n={s.size}, mean {s.mean():.3f})" if s.size else "no scores")
    if baseline is not None:
        b = _valid(baseline)
        ax.hist(b, bins=bins, alpha=0.5, label=f"random neurons (n={b.size}, mean {b.mean():.3f})" if b.size else "no baseline")
    ax.set_xlabel("explanation score E = (TPR + TNR) / 2")
    ax.set_ylabel("heads")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path_base)


def figure6(comparison: pd.DataFrame, path_base: str = "figure6", title: str = "Ablation: probability decrease") -> list:
    """Distribution across heads of the mean probability decrease after ablation, on active vs
    inactive prompts; PNG and SVG paths."""
    fig, ax = _figure()
    a, i = _valid(comparison.mean_decrease_active), _valid(comparison.mean_decrease_inactive)
    lo = min([0.0] + list(a) + list(i))
    hi = max([1e-6] + list(a) + list(i))
    bins = np.linspace(lo, hi, 21)
    ax.hist(a, bins=bins, alpha=0.7, label=f"active prompts (n={a.size})")
    ax.hist(i, bins=bins, alpha=0.5, label=f"inactive prompts (n={i.size})")
    ks = comparison.attrs.get("ks", {})
    if ks and np.isfinite(ks.get("D", np.nan)):
        title += f"\nKS D={ks['D']:.3f}, p={ks['p']:.2g}"
    ax.set_xlabel("mean decrease of the token's probability")
    ax.set_ylabel("heads")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path_base)
