"""The ablation check (METHOD §6, the paper's §5.4): the probability of a neuron's token with and
without each selected head, on the neuron's prompts.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from .batching import prompt_tokens, token_batches

__all__ = ["ablate_heads", "mean_z"]


def _softmax_prob(logits_last: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    x = logits_last.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(-1, keepdims=True)
    return p[np.arange(len(token_ids)), token_ids]


def ablate_heads(model, prompts: pd.DataFrame, heads: pd.DataFrame, attribution: Optional[pd.DataFrame] = None,
                 mode: str = "zero", mean_z: Optional[np.ndarray] = None, batch_tokens: int = 16384,
                 retokenize: Optional[bool] = None, protocol: str = "paper") -> pd.DataFrame:
    """The ablation check (§5.4): for each selected neuron-head pair and each of the neuron's
    prompts, the probability of the neuron's token at the last position with and without the head
    (``hook_z`` zeroed, or replaced by ``mean_z`` with ``mode="mean"``). Zeroing ``hook_z`` is the
    authors' zeroing of the head's value vectors (``hook_v[:, :, head]``): the pattern-weighted sum
    of zero vectors is zero. The paper ablates on the **test** prompts, with each head's activity
    from the test attribution: pass those.

    Returns ``[layer, neuron, head_layer, head, prompt_id, p_clean, p_ablated, decrease, active]``
    (``active`` from ``attribution`` when given). ``prompts`` need ``token_id`` (the neuron's
    token). With ``retokenize`` (default: the ``protocol``'s) the inputs are BOS + the prompt's
    text encoded again and the probability is that of the first token of the neuron's token
    string encoded again, as the authors' notebook computed both. ``mode="mean"`` without
    ``mean_z`` uses :func:`mean_z` of these prompts (each head's ``hook_z`` averaged over every
    position of every prompt, TransformerLens's mean ablation over the data at hand).
    """
    from . import protocols

    retokenize = protocols.get(protocol).retokenize if retokenize is None else bool(retokenize)
    if "token_id" not in prompts.columns:
        raise ValueError("prompts need a 'token_id' column (the neuron's token)")
    toks = prompt_tokens(model, prompts, retokenize)
    lengths = np.array([len(t) for t in toks])
    by_neuron = {k: np.nonzero(((prompts.layer == k[0]) & (prompts.neuron == k[1])).to_numpy())[0]
                 for k in set(zip(prompts.layer, prompts.neuron))}
    token_ids = prompts["token_id"].to_numpy(np.int64)
    if retokenize and "token" in prompts.columns:
        first = {t: int(e[0]) for t, e in zip(*_unique_encoded(model, prompts["token"]))}
        token_ids = np.array([first[t] for t in prompts["token"]], np.int64)

    if mode == "mean" and mean_z is None:
        mean_z = _mean_z(model, toks, batch_tokens)

    def last_probs(idx, **kw):
        out = np.empty(len(idx))
        for sub in token_batches(lengths[idx], batch_tokens):
            rows = idx[sub]
            last = model.run_with_hooks([toks[i] for i in rows], logits_pos="last", **kw)
            out[sub] = _softmax_prob(last, token_ids[rows])
        return out

    clean = {k: last_probs(v) for k, v in by_neuron.items()}
    active = None
    if attribution is not None:
        active = attribution.set_index(["prompt_id", "head_layer", "head"])["active"]
    rows = []
    for h in heads.itertuples(index=False):
        idx = by_neuron.get((h.layer, h.neuron))
        if idx is None or len(idx) == 0:
            continue
        abl = last_probs(idx, ablate_heads=[(int(h.head_layer), int(h.head))], head_ablation=mode, mean_z=mean_z)
        for j, i in enumerate(idx):
            pid = prompts.prompt_id.iat[i]
            act = bool(active.get((pid, h.head_layer, h.head), False)) if active is not None else None
            rows.append((h.layer, h.neuron, h.head_layer, h.head, pid, clean[(h.layer, h.neuron)][j], abl[j],
                         clean[(h.layer, h.neuron)][j] - abl[j], act))
    df = pd.DataFrame(rows, columns=["layer", "neuron", "head_layer", "head", "prompt_id", "p_clean", "p_ablated",
                                     "decrease", "active"])
    df.attrs.update(mode=mode, retokenize=retokenize)
    return df


def mean_z(model, prompts: pd.DataFrame, batch_tokens: int = 16384, retokenize: Optional[bool] = None,
           protocol: str = "paper") -> np.ndarray:
    """``(n_layers, n_heads, d_head)``: each head's ``hook_z`` averaged over every position of every
    prompt's input (:func:`ctxlookup.batching.prompt_tokens`), for ``ablate_heads(mode="mean")``."""
    from . import protocols

    retokenize = protocols.get(protocol).retokenize if retokenize is None else bool(retokenize)
    return _mean_z(model, prompt_tokens(model, prompts, retokenize), batch_tokens)


def _mean_z(model, toks: list, batch_tokens: int) -> np.ndarray:
    c = model.cfg
    total = np.zeros((c.n_layers, c.n_heads, c.d_head), np.float64)
    n = 0
    lengths = np.array([len(t) for t in toks])
    names = [f"blocks.{l}.attn.hook_z" for l in range(c.n_layers)]
    for idx in token_batches(lengths, batch_tokens):
        _, cache = model.run_with_cache([toks[i] for i in idx], names_filter=lambda k: k in names)
        for b, i in enumerate(idx):
            for l, k in enumerate(names):
                total[l] += cache[k][b, :lengths[i]].sum(0, dtype=np.float64)
        n += int(lengths[idx].sum())
    if n == 0:
        raise ValueError("mean ablation needs at least one prompt token")
    return (total / n).astype(np.float32)


def _unique_encoded(model, tokens):
    uniq = sorted(set(tokens))
    enc = model.require_tokenizer().encode_batch(uniq)
    for t, e in zip(uniq, enc):
        if len(e) == 0:
            raise ValueError(f"the neuron token {t!r} encodes to no tokens")
    return uniq, enc
