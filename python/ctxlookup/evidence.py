"""The an-neuron check of every neuron of a run (the replicate ``evidence`` stage; not the paper's
method): does a neuron's activation on a corpus predict its token being the model's top
prediction (:func:`next_token_evidence`)? One pass over the corpus for all neurons.

The post's tools for looking at one neuron (logit lens, activation patching, activation against
prediction) are in :mod:`ctxlookup.anneuron`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from .batching import DocTokens, as_corpus, context_length, doc_batches, doc_tokens, first, progress as progress_bar

__all__ = ["next_token_evidence", "EVIDENCE_COLUMNS", "neuron_positions", "neuron_token", "bin_fractions", "width_bins"]


def neuron_positions(model, neurons, corpus, max_docs: Optional[int], max_tokens: Optional[int], batch_tokens: int,
                     progress: bool = False, token_cache: Optional[DocTokens] = None):
    """One pass over the first ``max_docs`` documents of ``corpus`` (each BOS first, cut to
    ``max_tokens``): every neuron's activation (``[positions, len(neurons)]``, float32) and the
    model's top prediction (``[positions]``) at every position but BOS, and the number of documents
    read. ``progress``: a tqdm bar over documents; ``token_cache``: the corpus's
    :class:`ctxlookup.batching.DocTokens`."""
    neurons = [(int(l), int(i)) for l, i in neurons]
    for l, i in neurons:
        if not 0 <= l < model.cfg.n_layers or not 0 <= i < model.cfg.d_mlp:
            raise ValueError(f"neuron {(l, i)} is outside the model")
    corpus = as_corpus(corpus)
    max_tokens = context_length(model, max_tokens)
    names = [f"blocks.{l}.mlp.hook_post" for l in sorted({l for l, _ in neurons})]
    acts, tops, n_docs = [], [], 0
    bar = None
    if progress:
        total = corpus.count()
        bar = progress_bar(total if max_docs is None else min(total, max_docs), "next-token evidence")
    try:
        for docs in doc_batches(first(corpus, max_docs), batch_tokens, max_tokens):
            n_docs += len(docs)
            toks = [t for t in doc_tokens(model, docs, True, max_tokens, cache=token_cache) if len(t) > 1]
            if toks:
                logits, cache = model.run_with_cache(toks, names_filter=names)
                for b, t in enumerate(toks):
                    n = len(t)
                    acts.append(np.stack([cache[f"blocks.{l}.mlp.hook_post"][b, 1:n, i] for l, i in neurons], axis=1))
                    tops.append(logits[b, 1:n].argmax(-1))
            if bar is not None:
                bar.update(len(docs))
    finally:
        if bar is not None:
            bar.close()
    if not acts:
        raise ValueError("the corpus gave no positions")
    return np.concatenate(acts).astype(np.float32), np.concatenate(tops), n_docs


def neuron_token(model, layer: int, idx: int) -> int:
    """The neuron's most congruent token (``W_out @ W_U``), any token."""
    from .neurons import congruence

    return int(np.argmax(congruence(model, layer, [idx])[0]))


def bin_fractions(which, is_top, n_bins: int):
    """Per bin: positions, positions where the token is top, and their fraction (NaN when empty)."""
    n = np.bincount(which, minlength=n_bins)
    k = np.bincount(which, weights=is_top, minlength=n_bins).astype(np.int64)
    return n, k, np.where(n > 0, k / np.maximum(n, 1), np.nan)


def width_bins(a, bins: int, min_positions: int):
    """Equal-width bins over the observed range, then adjacent bins merged from the top down until
    each holds at least ``min_positions`` positions (what is left at the bottom joins the lowest
    bin). Returns the bin index of every position, the number of bins and their edges
    (``n_bins + 1`` values, the merged bins' outer edges)."""
    edges = np.linspace(a.min(), a.max(), bins + 1)
    raw = np.clip(np.digitize(a, edges[1:-1]), 0, bins - 1)
    n = np.bincount(raw, minlength=bins)
    new = np.empty(bins, np.int64)  # raw bin -> merged bin, counted from the top
    k, held = 0, 0
    for b in range(bins - 1, -1, -1):
        new[b] = k
        held += n[b]
        if held >= min_positions:
            k, held = k + 1, 0
    n_bins = max(k, 1)
    new = np.minimum(new, n_bins - 1)
    merged = (n_bins - 1) - new  # raw bin -> merged bin, counted from the bottom
    starts = [0] + [b for b in range(1, bins) if merged[b] != merged[b - 1]]
    return merged[raw], n_bins, np.append(edges[starts], edges[-1])


EVIDENCE_COLUMNS = ["layer", "neuron", "token_id", "n_positions", "n_top", "base_rate", "auc", "n_bins", "bin_fractions",
                    "bin_counts", "bin_edges", "fraction_lowest_bin", "fraction_top_bin", "bin_spearman", "rising"]


def next_token_evidence(model, neurons, corpus, bins: int = 10, binning: str = "width", min_positions: int = 100,
                        max_docs: Optional[int] = 500, max_tokens: Optional[int] = None,
                        batch_tokens: int = 4096, progress: bool = False, token_cache: Optional[DocTokens] = None
                        ) -> pd.DataFrame:
    """Is each neuron a next-token neuron in the an-neuron post's sense: does its activation on
    ``corpus`` predict its token being the model's top prediction? One pass over the corpus for
    all neurons.

    ``neurons``: ``(layer, neuron)`` pairs, or a DataFrame with ``layer``, ``neuron`` and
    optionally ``token_id`` columns (for example :func:`next_token_neurons`' result); without
    ``token_id`` the neuron's most congruent token is used.

    Bins (``binning``): ``"width"`` (default, the post's plot): ``bins`` equal-width bins over the
    observed activation range, adjacent bins merged from the top down until each holds at least
    ``min_positions`` positions, so the sparse high end is not judged on a handful of positions
    (the bulk of positions, where the neuron is off, sits in the lowest bin); ``"quantile"``:
    ``bins`` equal-count bins by rank (sizes differing by at most one, tied activations split
    in corpus order).

    One row per neuron: ``layer, neuron, token_id, n_positions, n_top`` (positions where the
    token is the top prediction), ``base_rate`` (``n_top / n_positions``), ``auc`` (the probability
    that a position where the token is top has a higher activation than one where it is not,
    ties counting half: the Mann-Whitney U statistic over the product of the group sizes; NaN
    when ``n_top`` is 0), ``n_bins``, ``bin_fractions`` and ``bin_counts`` (tuples, lowest bin
    first), ``bin_edges`` (``n_bins + 1`` activations: bin b holds the activations from edge b up
    to edge b + 1, the last edge the largest activation seen), ``fraction_lowest_bin``,
    ``fraction_top_bin``, ``bin_spearman`` (Spearman correlation of bin rank with the bin's top
    fraction; NaN with fewer than 3 bins or a constant fraction), and ``rising``: ``n_top > 0``,
    ``bin_spearman >= 0.8`` and a top-bin fraction at least twice the lowest bin's.
    ``df.attrs``: ``n_docs`` (the documents read, at most ``max_docs``), ``bins``, ``binning`` and
    ``min_positions`` as given. ``progress``: a tqdm bar. ``token_cache``: the corpus's
    :class:`ctxlookup.batching.DocTokens` (documents another stage encoded are not encoded again).
    """
    if isinstance(neurons, pd.DataFrame):
        pairs = list(zip(neurons["layer"].astype(int), neurons["neuron"].astype(int)))
        tokens = list(neurons["token_id"].astype(int)) if "token_id" in neurons else [None] * len(pairs)
    else:
        pairs = [(int(l), int(i)) for l, i in neurons]
        tokens = [None] * len(pairs)
    if not pairs:
        raise ValueError("no neurons given")
    if int(bins) < 2:
        raise ValueError("bins must be at least 2")
    if binning not in ("width", "quantile"):
        raise ValueError(f"binning must be 'width' or 'quantile', not {binning!r}")
    from scipy.stats import rankdata, spearmanr

    acts, tops, n_docs = neuron_positions(model, pairs, corpus, max_docs, max_tokens, batch_tokens, progress, token_cache)
    rows = []
    for j, ((layer, idx), tok) in enumerate(zip(pairs, tokens)):
        tok = neuron_token(model, layer, idx) if tok is None else int(tok)
        a, t = acts[:, j].astype(np.float64), tops == tok
        n_top, n_pos = int(t.sum()), len(a)
        if 0 < n_top < n_pos:
            r = rankdata(a)
            auc = (r[t].sum() - n_top * (n_top + 1) / 2) / (n_top * (n_pos - n_top))
        else:
            auc = np.nan
        if binning == "width":
            which, n_bins, edges = width_bins(a, int(bins), int(min_positions))
        else:
            which, n_bins = np.empty(n_pos, np.int64), min(int(bins), n_pos)
            order = np.argsort(a, kind="stable")
            parts = np.array_split(order, n_bins)
            for b, part in enumerate(parts):
                which[part] = b
            edges = np.append([a[part[0]] for part in parts], a[order[-1]])  # each bin's lowest, then the top
        counts, _, frac = bin_fractions(which, t, n_bins)  # no bin is empty here
        rho = spearmanr(np.arange(n_bins), frac).statistic if n_bins >= 3 and np.ptp(frac) > 0 else np.nan
        rising = bool(n_top > 0 and rho >= 0.8 and frac[-1] >= 2 * frac[0])
        rows.append((layer, idx, tok, n_pos, n_top, n_top / n_pos, float(auc), n_bins,
                     tuple(float(x) for x in frac), tuple(int(x) for x in counts), tuple(float(x) for x in edges),
                     float(frac[0]), float(frac[-1]), float(rho), rising))
    df = pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)
    df.attrs.update(n_docs=n_docs, bins=int(bins), binning=binning, min_positions=int(min_positions))
    return df
