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
- :func:`score_histogram`, :func:`ablation_plot`: the two figures (the paper's Figures 5 and 6,
  also named :func:`figure5` and :func:`figure6`), saved as PNG and SVG.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

__all__ = ["score_statistics", "subset_counts", "ablation_comparison", "rising_comparison", "score_histogram",
           "ablation_plot", "figure5", "figure6", "PUBLISHED_MEAN_E"]

PUBLISHED_MEAN_E = {"gpt2-small": 0.650, "gpt2-medium": 0.610, "gpt2-large": 0.575, "pythia-160m": 0.621,
                    "pythia-1.4b": 0.574, "gpt2-large random": 0.558}


def _valid(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s[np.isfinite(s)]


STATISTICS_COLUMNS = ["label", "n_heads", "mean", "std", "skew", "skewtest_z", "skewtest_p", "skew_p_greater",
                      "skew_p_less", "ks_D", "ks_p"]


def score_statistics(scores, baseline=None, label: str = "model", ddof: int = 1) -> pd.DataFrame:
    """One row: ``[label, n_heads, mean, std, skew, skewtest_z, skewtest_p, skew_p_greater,
    skew_p_less, ks_D, ks_p]``.

    ``scores``: explanation scores E (NaN, e.g. one-class heads, are left out).

    - ``std``: ``np.std(ddof=ddof)``; ``ddof=1`` (default) the sample standard deviation,
      ``ddof=0`` the authors' ``np.std`` (the paper's and the recorded data's numbers).
    - ``skew``: ``scipy.stats.skew`` (biased, as the authors). The paper reads it as Fig. 5's
      caption says: a *negative* skew means the mass lies to the right of the mean (many heads
      with high E, a tail of low ones), the good direction for explanations; a positive skew (the
      random-neuron baseline's +0.230) the opposite.
    - ``skewtest_z``: ``scipy.stats.skewtest``'s z (needs at least 8 scores; NaN otherwise).
      ``skew_p_greater``: its p-value for ``alternative="greater"`` (H1: skew > 0), the test the
      authors printed; ``skew_p_less``: for ``alternative="less"`` (H1: skew < 0, the paper's good
      direction). ``skewtest_p`` repeats ``skew_p_greater`` (kept for older readers).
    - ``ks_D``, ``ks_p``: two-sample Kolmogorov-Smirnov test against ``baseline`` (the
      random-neuron scores); NaN without one.
    """
    from scipy import stats

    s = _valid(scores)
    row = dict(label=label, n_heads=int(s.size), mean=float(s.mean()) if s.size else np.nan,
               std=float(s.std(ddof=ddof)) if s.size > ddof else np.nan,
               skew=float(stats.skew(s)) if s.size > 2 else np.nan, skewtest_z=np.nan, skewtest_p=np.nan,
               skew_p_greater=np.nan, skew_p_less=np.nan, ks_D=np.nan, ks_p=np.nan)
    if s.size >= 8:
        g = stats.skewtest(s, alternative="greater")
        le = stats.skewtest(s, alternative="less")
        row.update(skewtest_z=float(g.statistic), skewtest_p=float(g.pvalue), skew_p_greater=float(g.pvalue),
                   skew_p_less=float(le.pvalue))
    if baseline is not None:
        b = _valid(baseline)
        if s.size and b.size:
            k = stats.ks_2samp(s, b)
            row.update(ks_D=float(k.statistic), ks_p=float(k.pvalue))
    return pd.DataFrame([row], columns=STATISTICS_COLUMNS)


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
    """The §5.4 check as the authors compute it: per head, the mean decrease of the token's
    probability (``decrease = p_clean - p_ablated``, not its absolute value) on the head's active
    prompts and on its inactive ones (``np.mean`` in the column's dtype; NaN where a head has no
    such prompt); ``df.attrs["ks"]`` holds ``scipy.stats.ks_2samp`` of the active means against
    the inactive means across heads, NaN means left out of each list, as
    ``{"D": ..., "p": ..., "n_active": ..., "n_inactive": ...}``.

    ``ablation``: ``[layer, neuron, head_layer, head, decrease, active]`` rows, one per head and
    prompt (:func:`ctxlookup.ablate_heads` with ``attribution``)."""
    from scipy import stats

    if ablation["active"].isna().any():
        raise ValueError("ablation results need the 'active' column (pass attribution to ablate_heads)")
    keys = ["layer", "neuron", "head_layer", "head"]
    rows = []
    for k, g in ablation.groupby(keys, sort=True):
        d = g["decrease"].to_numpy()
        m = g["active"].to_numpy(bool)
        rows.append((*k, np.mean(d[m]) if m.any() else np.nan, np.mean(d[~m]) if (~m).any() else np.nan))
    g = pd.DataFrame(rows, columns=keys + ["mean_decrease_active", "mean_decrease_inactive"])
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


def _fmt_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.3g}"


def score_histogram(scores, baseline=None, path_base: str = "figure5", title: str = "Head explanation scores",
                    style: str = "overlay") -> list:
    """The histogram of explanation scores (the paper's Figure 5, :func:`figure5`); PNG and SVG paths.

    ``style="overlay"`` (default): one histogram of E (20 bins) for the model's heads, with the
    random-neuron ``baseline`` overlaid. ``style="paper"``: the paper's form (the authors' 2024
    ``7_results.ipynb``): one panel per model, a histogram with 9 bins over [0, 1]
    (``np.linspace(0, 1, 10)``), the right three bars highlighted, titled "Distribution of Head
    Explanation Scores" with the model's name, the skewness, the mean and the KS p-value against
    ``baseline`` (when given; the baseline gets its own panel, without a KS value, as Fig. 5d).
    ``scores``: an array of E, or for several models a dict ``{name: E}`` (one panel each);
    ``title`` names the single model's panel.
    """
    if style not in ("overlay", "paper"):
        raise ValueError(f"style must be 'overlay' or 'paper', got {style!r}")
    if style == "paper":
        return _score_histogram_paper(scores, baseline, path_base, title)
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


PAPER_FIGURE5_BINS = np.linspace(0, 1, 10)  # 9 bins, as the authors' 2024 7_results.ipynb


def _score_histogram_paper(scores, baseline, path_base: str, title: str) -> list:
    from matplotlib.figure import Figure

    panels = list(scores.items()) if isinstance(scores, dict) else [(title, scores)]
    if baseline is not None:
        panels.append(("random neurons", None))
    fig = Figure(figsize=(5 * len(panels), 4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, sc) in zip(axes, panels):
        is_base = sc is None
        s = _valid(baseline if is_base else sc)
        st = score_statistics(s, None if is_base else baseline).iloc[0]
        _, _, bars = ax.hist(s, PAPER_FIGURE5_BINS, linewidth=0.5, edgecolor="black")
        for bar in list(bars)[-3:]:
            bar.set_facecolor((1.0, 0.5, 0.5))
        lines = [f"Skewness = {st['skew']:+.3f}", f"Mean = {st['mean']:.3f}"]
        if not is_base and baseline is not None:
            lines.append(f"KS p-value = {_fmt_p(st['ks_p'])}")
        ax.set_title(f"Distribution of Head Explanation Scores\n{name} (n={s.size})\n" + "\n".join(lines), fontsize=9)
        ax.set_xlabel("Head Explanation Score")
        ax.set_ylabel("Number of Heads")
        ax.set_xlim(0, 1)
    return _save(fig, path_base)


def ablation_plot(comparison, path_base: str = "figure6", title: str = "Ablation: probability decrease",
                  style: str = "histogram") -> list:
    """The ablation check's plot (the paper's Figure 6, :func:`figure6`); PNG and SVG paths.
    ``comparison``: :func:`ablation_comparison`'s table, or for several models a dict ``{name: table}``.

    ``style="histogram"`` (default): the distribution across heads of the mean probability decrease
    after ablation, active vs inactive prompts, overlaid. ``style="paper"``: the paper's form (the
    authors' ``8_head_ablation.ipynb``): box plots of the per-head mean decrease, active and
    inactive side by side for each model, a dashed line at 0, the KS p-value in each label.
    """
    if style not in ("histogram", "paper"):
        raise ValueError(f"style must be 'histogram' or 'paper', got {style!r}")
    if style == "paper":
        return _ablation_plot_paper(comparison, path_base, title)
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


def _ablation_plot_paper(comparison, path_base: str, title: str) -> list:
    panels = list(comparison.items()) if isinstance(comparison, dict) else [("", comparison)]
    fig, ax = _figure(figsize=(max(5.0, 2.2 * len(panels)), 4))
    data, labels = [], []
    for name, comp in panels:
        ks = comp.attrs.get("ks", {})
        p = f"\np={_fmt_p(ks.get('p', np.nan))}" if ks else ""
        prefix = f"{name}\n" if name else ""
        data += [_valid(comp.mean_decrease_active), _valid(comp.mean_decrease_inactive)]
        labels += [f"{prefix}Active", f"{prefix}Inactive{p}"]
    ax.plot([0.5, len(data) + 0.5], [0, 0], linestyle="--", color="k", linewidth=0.8)
    ax.boxplot(data, flierprops=dict(marker="o", markersize=6, markerfacecolor="none", markeredgecolor="k",
                                     markeredgewidth=0.1))
    ax.set_xticks(range(1, len(data) + 1))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("Decrease in token probability")
    ax.set_title("Decrease in token probability after ablating attention head" if title == "Ablation: probability decrease"
                 else title, fontsize=9)
    return _save(fig, path_base)


#: the paper's numbering: Figure 5 is :func:`score_histogram`, Figure 6 :func:`ablation_plot`
figure5 = score_histogram
figure6 = ablation_plot
