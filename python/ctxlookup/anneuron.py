"""The "We Found An Neuron in GPT-2" post's tools for looking at one neuron (METHOD §7): logit lens,
activation patching by layer and position or by single neuron, and the neuron's activation against
the model's prediction. They are analysis tools, not stages of the pipeline; the post's check run
over every neuron of a replication is :mod:`ctxlookup.evidence`.

Everything returns NumPy arrays or DataFrames that plot directly.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .evidence import bin_fractions, neuron_positions, neuron_token

__all__ = ["logit_lens", "activation_patching", "activation_vs_prediction", "logit_diff_metric"]


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
    acts, tops, _ = neuron_positions(model, [(layer, idx)], corpus, max_docs, max_tokens, batch_tokens)
    if token_id is None:
        token_id = neuron_token(model, layer, idx)
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
    n, k, frac = bin_fractions(np.clip(np.digitize(a, edges[1:-1]), 0, len(edges) - 2), t, len(edges) - 1)
    df = pd.DataFrame({"bin_low": edges[:-1].astype(float), "bin_high": edges[1:].astype(float),
                       "n_positions": n.astype(np.int64), "n_top": k, "fraction_top": frac})
    df.attrs.update(neuron=(layer, idx), token_id=token_id, positions=(a, t))
    return df
