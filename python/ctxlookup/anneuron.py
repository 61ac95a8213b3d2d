"""The "We Found An Neuron in GPT-2" tools (METHOD §7): logit lens, activation patching by layer
and position or by single neuron, and the neuron's activation against the model's prediction.

Everything returns NumPy arrays or DataFrames that plot directly.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

__all__ = ["logit_lens", "activation_patching", "activation_vs_prediction", "next_token_evidence",
           "logit_diff_metric"]


def _ln_final(model, x: np.ndarray) -> np.ndarray:
    """ln_final applied to residual vectors x (..., d_model), with its own scale (as the model)."""
    x = x.astype(np.float64)
    x = x - x.mean(-1, keepdims=True)
    x = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + model.cfg.eps)
    if model.cfg.normalization_type == "LN":
        x = x * model.ln_final_w + model.ln_final_b
    return x


def _one_sequence(model, tokens):
    if isinstance(tokens, str):
        toks, lens = model.to_tokens(tokens, return_lengths=True)
        return toks[0, : lens[0]]
    a = np.asarray(tokens)
    if a.ndim == 2:
        if a.shape[0] != 1:
            raise ValueError("give one sequence")
        a = a[0]
    return a


def logit_lens(model, tokens, token_a: int, token_b: int, pos: int = -1) -> pd.DataFrame:
    """Logit difference ``logit(token_a) - logit(token_b)`` read off the residual stream at ``pos``
    after the embedding and after every attention and MLP layer, through ``ln_final`` and ``W_U``.

    Returns ``[stage, layer, component, logit_diff]`` (component: "embed", "attn", "mlp"); the last
    row equals the model's own logit difference.
    """
    toks = _one_sequence(model, tokens)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
    names += [f"blocks.{l}.hook_attn_out" for l in range(model.cfg.n_layers)]
    names += [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    logits, cache = model.run_with_cache(toks[None], names_filter=names, pos=np.array([pos if pos >= 0 else len(toks) + pos]))
    direction = model.W_U[:, token_a].astype(np.float64) - model.W_U[:, token_b].astype(np.float64)
    bias = float(model.b_U[token_a]) - float(model.b_U[token_b])
    rows = []

    def diff(x):
        return float(_ln_final(model, x[0]) @ direction + bias)

    resid = cache["blocks.0.hook_resid_pre"]
    rows.append(("embed", -1, "embed", diff(resid)))
    for l in range(model.cfg.n_layers):
        pre = cache[f"blocks.{l}.hook_resid_pre"].astype(np.float64)
        mid = pre + cache[f"blocks.{l}.hook_attn_out"]
        rows.append((f"attn {l}", l, "attn", diff(mid)))
        rows.append((f"mlp {l}", l, "mlp", diff(mid + cache[f"blocks.{l}.hook_mlp_out"])))
    return pd.DataFrame(rows, columns=["stage", "layer", "component", "logit_diff"])


def logit_diff_metric(token_a: int, token_b: int) -> Callable[[np.ndarray], np.ndarray]:
    """A metric for :func:`activation_patching`: per-row logit difference at the last position."""
    def metric(last_logits):
        return last_logits[:, token_a] - last_logits[:, token_b]
    return metric


def activation_patching(model, clean, corrupted, metric: Union[Callable, tuple], by: str = "layer_pos",
                        hook: str = "resid_pre", layer: Optional[int] = None, pos: int = -1,
                        batch_size: int = 64) -> np.ndarray:
    """Patch activations of the clean run into the corrupted run and measure the recovery,
    ``(patched - corrupted) / (clean - corrupted)`` of ``metric`` (a callable on last-position
    logits ``(rows, d_vocab)`` returning one value per row, or ``("logit_diff", a, b)``).

    ``by="layer_pos"``: ``hook`` in ``resid_pre``, ``attn_out``, ``mlp_out`` patched at one
    (layer, position) at a time: returns ``(n_layers, n_pos)``. ``by="neuron"``: each neuron of
    ``layer``'s ``mlp.hook_post`` patched alone at position ``pos``: returns ``(d_mlp,)``. Every
    sweep runs as batched forward passes (``batch_size`` patched copies per pass).
    """
    if isinstance(metric, tuple):
        if metric[0] != "logit_diff" or len(metric) != 3:
            raise ValueError("metric must be a callable or ('logit_diff', token_a, token_b)")
        metric = logit_diff_metric(metric[1], metric[2])
    clean_t, corr_t = _one_sequence(model, clean), _one_sequence(model, corrupted)
    if clean_t.shape != corr_t.shape:
        raise ValueError(f"clean and corrupted must have the same number of tokens ({len(clean_t)} != {len(corr_t)})")
    T = len(clean_t)
    if by == "layer_pos":
        if hook not in ("resid_pre", "attn_out", "mlp_out"):
            raise ValueError(f"hook must be resid_pre, attn_out or mlp_out, got '{hook}'")
        names = [f"blocks.{l}.hook_{hook}" for l in range(model.cfg.n_layers)]
    elif by == "neuron":
        if layer is None or not 0 <= layer < model.cfg.n_layers:
            raise ValueError(f"by='neuron' needs a layer in [0, {model.cfg.n_layers})")
        names = [f"blocks.{layer}.mlp.hook_post"]
    else:
        raise ValueError(f"by must be 'layer_pos' or 'neuron', got '{by}'")
    clean_logits, clean_cache = model.run_with_cache(clean_t[None], names_filter=names, logits_pos="last")
    corr_logits, corr_cache = model.run_with_cache(corr_t[None], names_filter=names, logits_pos="last")
    m_clean, m_corr = float(metric(clean_logits)[0]), float(metric(corr_logits)[0])
    denom = m_clean - m_corr
    if denom == 0:
        raise ValueError("the metric is the same on the clean and corrupted runs: nothing to recover")

    def run(name, patches):  # patches: (rows, T, F) full activations
        out = np.empty(len(patches))
        for i in range(0, len(patches), batch_size):
            p = patches[i:i + batch_size]
            toks = np.repeat(corr_t[None], len(p), axis=0)
            logits = model.run_with_hooks(toks, patch={name: p}, logits_pos="last")
            out[i:i + batch_size] = metric(logits)
        return out

    if by == "layer_pos":
        result = np.empty((model.cfg.n_layers, T))
        for l, name in enumerate(names):
            base, src = corr_cache[name][0], clean_cache[name][0]
            patches = np.repeat(base[None], T, axis=0)
            patches[np.arange(T), np.arange(T)] = src
            result[l] = run(name, patches)
        return (result - m_corr) / denom
    name = names[0]
    base, src = corr_cache[name][0], clean_cache[name][0]
    p_idx = pos if pos >= 0 else T + pos
    M = model.cfg.d_mlp
    result = np.empty(M)
    for j0 in range(0, M, batch_size):
        js = np.arange(j0, min(M, j0 + batch_size))
        patches = np.repeat(base[None], len(js), axis=0)
        patches[np.arange(len(js)), p_idx, js] = src[p_idx, js]
        result[js] = run(name, patches)
    return (result - m_corr) / denom


def _neuron_positions(model, neurons, corpus, max_docs, max_tokens, batch_tokens, progress=False):
    """One pass over ``corpus``: every neuron's activation (``[positions, len(neurons)]``, float32)
    and the model's top prediction (``[positions]``) at every position but BOS, and the number of
    documents read. ``progress``: a tqdm bar over documents."""
    from .search import _as_corpus, doc_tokens, progress_bar

    neurons = [(int(l), int(i)) for l, i in neurons]
    for l, i in neurons:
        if not 0 <= l < model.cfg.n_layers or not 0 <= i < model.cfg.d_mlp:
            raise ValueError(f"neuron {(l, i)} is outside the model")
    corpus = _as_corpus(corpus)
    max_tokens = model.cfg.n_ctx if max_tokens is None else min(max_tokens, model.cfg.n_ctx)
    layers = sorted({l for l, _ in neurons})
    names = [f"blocks.{l}.mlp.hook_post" for l in layers]
    acts, tops, buf = [], [], []

    def flush():
        toks = [t for t in doc_tokens(model, buf, True, max_tokens) if len(t) > 1]
        n_read = len(buf)
        buf.clear()
        if toks:
            logits, cache = model.run_with_cache(toks, names_filter=names)
            for b, t in enumerate(toks):
                n = len(t)
                acts.append(np.stack([cache[f"blocks.{l}.mlp.hook_post"][b, 1:n, i] for l, i in neurons], axis=1))
                tops.append(logits[b, 1:n].argmax(-1))
        if bar is not None:
            bar.update(n_read)

    bar = None
    if progress:
        total = corpus.count()
        bar = progress_bar(total=total if max_docs is None else min(total, max_docs), desc="next-token evidence")
    tok_count, n_docs = 0, 0
    try:
        for doc in corpus:
            if max_docs is not None and n_docs >= max_docs:
                break
            n_docs += 1
            buf.append(doc.text)
            tok_count += min(len(doc.text) // 2 + 2, max_tokens)
            if tok_count >= batch_tokens:
                flush()
                tok_count = 0
        if buf:
            flush()
    finally:
        if bar is not None:
            bar.close()
    if not acts:
        raise ValueError("the corpus gave no positions")
    return np.concatenate(acts).astype(np.float32), np.concatenate(tops), n_docs


def _neuron_token(model, layer, idx):
    """The neuron's most congruent token (``W_out @ W_U``), any token."""
    from .neurons import congruence

    return int(np.argmax(congruence(model, layer, [idx])[0]))


def _bin_fractions(which, is_top, n_bins):
    """Per bin: positions, positions where the token is top, and their fraction (NaN when empty)."""
    n = np.bincount(which, minlength=n_bins)
    k = np.bincount(which, weights=is_top, minlength=n_bins).astype(np.int64)
    return n, k, np.where(n > 0, k / np.maximum(n, 1), np.nan)


def activation_vs_prediction(model, neuron: Sequence[int], corpus, token_id: Optional[int] = None, bins=10,
                             binning: str = "width", max_docs: Optional[int] = 500, max_tokens: Optional[int] = None,
                             batch_tokens: int = 4096) -> pd.DataFrame:
    """For every position of the corpus: the neuron's activation, and whether the model's top
    prediction there is the neuron's token (by default its most congruent token, ``W_out @ W_U``).
    Returns, per activation bin, ``[bin_low, bin_high, n_positions, n_top, fraction_top]``.

    ``bins``: a count or explicit edges. ``binning``: ``"width"`` (equal-width bins over the
    observed range, as the an-neuron post plots it) or ``"quantile"`` (bins holding equal numbers of
    positions, so the sparse high-activation end is not left to a handful of positions; edges
    that coincide are merged). ``df.attrs["positions"]`` holds the raw ``(activation, is_top)``
    arrays. The BOS position never counts.
    """
    layer, idx = int(neuron[0]), int(neuron[1])
    acts, tops, _ = _neuron_positions(model, [(layer, idx)], corpus, max_docs, max_tokens, batch_tokens)
    if token_id is None:
        token_id = _neuron_token(model, layer, idx)
    a, t = acts[:, 0], tops == token_id
    if binning == "width":
        edges = np.histogram_bin_edges(a, bins=bins)
    elif binning == "quantile":
        if not isinstance(bins, (int, np.integer)):
            raise ValueError("quantile binning takes a count of bins")
        edges = np.unique(np.quantile(a.astype(np.float64), np.linspace(0, 1, int(bins) + 1)))
        if len(edges) < 2:
            edges = np.array([a.min(), a.max()], np.float64)
    else:
        raise ValueError(f"binning must be 'width' or 'quantile', not {binning!r}")
    n, k, frac = _bin_fractions(np.clip(np.digitize(a, edges[1:-1]), 0, len(edges) - 2), t, len(edges) - 1)
    df = pd.DataFrame({"bin_low": edges[:-1].astype(float), "bin_high": edges[1:].astype(float),
                       "n_positions": n.astype(np.int64), "n_top": k, "fraction_top": frac})
    df.attrs.update(neuron=(layer, idx), token_id=token_id, positions=(a, t))
    return df


def _width_bins(a, bins, min_positions):
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
                        batch_tokens: int = 4096, progress: bool = False) -> pd.DataFrame:
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
    ``min_positions`` as given. ``progress``: a tqdm bar.
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

    acts, tops, n_docs = _neuron_positions(model, pairs, corpus, max_docs, max_tokens, batch_tokens, progress)
    rows = []
    for j, ((layer, idx), tok) in enumerate(zip(pairs, tokens)):
        tok = _neuron_token(model, layer, idx) if tok is None else int(tok)
        a, t = acts[:, j].astype(np.float64), tops == tok
        n_top, n_pos = int(t.sum()), len(a)
        if 0 < n_top < n_pos:
            r = rankdata(a)
            auc = (r[t].sum() - n_top * (n_top + 1) / 2) / (n_top * (n_pos - n_top))
        else:
            auc = np.nan
        if binning == "width":
            which, n_bins, edges = _width_bins(a, int(bins), int(min_positions))
        else:
            which, n_bins = np.empty(n_pos, np.int64), min(int(bins), n_pos)
            order = np.argsort(a, kind="stable")
            parts = np.array_split(order, n_bins)
            for b, part in enumerate(parts):
                which[part] = b
            edges = np.append([a[part[0]] for part in parts], a[order[-1]])  # each bin's lowest, then the top
        counts, _, frac = _bin_fractions(which, t, n_bins)  # no bin is empty here
        rho = spearmanr(np.arange(n_bins), frac).statistic if n_bins >= 3 and np.ptp(frac) > 0 else np.nan
        rising = bool(n_top > 0 and rho >= 0.8 and frac[-1] >= 2 * frac[0])
        rows.append((layer, idx, tok, n_pos, n_top, n_top / n_pos, float(auc), n_bins,
                     tuple(float(x) for x in frac), tuple(int(x) for x in counts), tuple(float(x) for x in edges),
                     float(frac[0]), float(frac[-1]), float(rho), rising))
    df = pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)
    df.attrs.update(n_docs=n_docs, bins=int(bins), binning=binning, min_positions=int(min_positions))
    return df
