"""Selecting the heads to explain (METHOD §4): the heads active on a middle share of a neuron's
prompts (25% to 75% by default), from :func:`ctxlookup.head_attribution`'s table. (Named
``selection`` rather than ``select``, the standard library's module.)
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["select_heads"]


def select_heads(attribution: pd.DataFrame, low: float = 0.25, high: Optional[float] = 0.75, low_strict: bool = False,
                 order: str = "sorted") -> pd.DataFrame:
    """The heads to explain: ``[layer, neuron, head_layer, head, active_fraction, n_prompts]``.

    A head of a neuron is kept when the number of the neuron's n prompts it is active on, c,
    satisfies ``low * n <= c <= high * n`` (default, the paper and the authors' 2024 code: 25% to
    75%, both inclusive, compared as fractions to 1e-12). ``low_strict=True``: ``c > low * n``
    exactly (the authors' 2023 code, which made their recorded data); ``high=None``: no upper bound
    (also 2023). ``n`` counts the prompts of the neuron in ``attribution``.

    ``order``: ``"sorted"`` (default) by neuron and head; ``"first_active"``: neurons in the order
    they first appear in ``attribution``, and each neuron's heads in the order they first are
    active, prompt by prompt in table order, within a prompt by ``score`` descending when the table
    has scores, else in table order (the order of the authors' lists of explained heads).
    """
    if order not in ("sorted", "first_active"):
        raise ValueError(f"order must be 'sorted' or 'first_active', got {order!r}")
    if not 0 <= low <= 1 or (high is not None and not low <= high <= 1):
        raise ValueError(f"need 0 <= low <= high <= 1 (high may be None), got low={low}, high={high}")
    keys = ["layer", "neuron", "head_layer", "head"]
    g = attribution.groupby(keys, sort=True)["active"]
    df = g.agg(active_fraction="mean", n_prompts="size", n_active="sum").reset_index()
    if low_strict:
        keep = df.n_active > low * df.n_prompts
    else:
        keep = df.active_fraction >= low - 1e-12
    if high is not None:
        keep &= df.active_fraction <= high + 1e-12
    sel = df[keep].drop(columns="n_active")
    if order == "first_active" and len(sel):
        a = attribution.reset_index(drop=True)
        row = pd.Series(np.arange(len(a)), index=a.index)
        neuron_pos = row.groupby([a.layer, a.neuron], sort=False).transform("min")
        prompt_pos = row.groupby([a.layer, a.neuron, a.prompt_id], sort=False).transform("min")
        within = -a["score"].astype(np.float64) if "score" in a.columns else row.astype(np.float64)
        act = pd.DataFrame({**{k: a[k] for k in keys}, "n": neuron_pos, "p": prompt_pos, "w": within})[a.active.astype(bool)]
        act = act.sort_values(["n", "p", "w"], kind="stable").drop_duplicates(keys)
        rank = {k: i for i, k in enumerate(act[keys].itertuples(index=False, name=None))}
        sel = sel.assign(_r=[rank.get(k, len(rank)) for k in sel[keys].itertuples(index=False, name=None)])
        sel = sel.sort_values("_r", kind="stable").drop(columns="_r")
    return sel.reset_index(drop=True)
