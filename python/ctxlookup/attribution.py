"""Head attribution (METHOD §4): which attention heads drive a neuron on a prompt.

``score[(k, i), (l, j)] = <h_(k,i), W_in[l][:, j]>``: head i of layer k's output in the residual
stream (``attn.hook_result``, without ``b_O``) at the prompt's last token, against neuron j of
layer l's input weight. Computed in C inside the forward pass as ``<z, W_O[k, i] W_in[l][:, j]>``,
so no per-head result tensor is ever built. A head is **active** on a prompt when its score
exceeds the mean + 2 sample standard deviations (ddof=1) of the scores of all eligible heads on
that prompt. The same pass gives the neuron's activation at the last token, which the
truncation (:mod:`ctxlookup.truncate`) uses to evaluate its candidates. Selecting the heads to
explain: :mod:`ctxlookup.selection`; the ablation check: :mod:`ctxlookup.ablation`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from . import _core
from .batching import prompt_tokens, token_batches

__all__ = ["head_attribution", "attribute", "eligible_layers", "active_heads", "active_threshold", "ACTIVE_RULES"]

ACTIVE_RULES = ("mean+2sd", "top3")


def eligible_layers(model, layer: int, rule: str) -> int:
    """Number of head layers eligible for a neuron of ``layer``: heads of layers ``< n`` are.

    ``rule="architecture"`` (default): heads that can reach the MLP input: ``k <= l`` for a
    sequential block (GPT-2), ``k < l`` for a parallel one (Pythia). ``rule="authors"``: ``k < l``.
    """
    if rule == "architecture":
        return layer if model.cfg.parallel_attn_mlp else layer + 1
    if rule == "authors":
        return layer
    raise ValueError(f"rule must be 'architecture' or 'authors', got '{rule}'")


def active_heads(scores: np.ndarray, active_rule: str = "mean+2sd") -> np.ndarray:
    """Which of one prompt's eligible heads are active, from their scores (flattened, in
    ``layer * n_heads + head`` order). ``"mean+2sd"``: score > mean + 2 sample standard deviations
    (ddof=1; the paper, the 2024 code); ``"top3"``: the 3 largest scores (the recorded 2023 data,
    ``torch.topk(k=3)``; ties to the lower index)."""
    s = np.asarray(scores, dtype=np.float64)
    if active_rule == "mean+2sd":
        return s > active_threshold(s, active_rule)
    if active_rule == "top3":
        out = np.zeros(s.shape, bool)
        out[np.argsort(-s, kind="stable")[:3]] = True
        return out
    raise ValueError(f"active_rule must be one of {', '.join(ACTIVE_RULES)}, got '{active_rule}'")


def active_threshold(scores: np.ndarray, active_rule: str = "mean+2sd") -> float:
    """The score a head had to exceed to count as active on one prompt (``scores``: the prompt's
    eligible heads): mean + 2 sample standard deviations for ``"mean+2sd"``; for ``"top3"``, just
    below the third largest score (ties at it are broken by index, see :func:`active_heads`)."""
    s = np.asarray(scores, dtype=np.float64)
    if active_rule == "mean+2sd":
        return float(s.mean() + 2 * s.std(ddof=1)) if s.size > 1 else float("inf")
    if active_rule == "top3":
        return float(np.nextafter(np.sort(s)[-3], -np.inf)) if s.size >= 3 else float("-inf")
    raise ValueError(f"active_rule must be one of {', '.join(ACTIVE_RULES)}, got '{active_rule}'")


def attribute(model, inputs: list, layers, neurons, batch_tokens: int = 16384, on_batch=None):
    """The core's attribution pass over token rows ``inputs`` (model input, BOS included), row i
    for neuron ``(layers[i], neurons[i])``, in batches of at most ``batch_tokens`` tokens (shortest
    first): ``(scores, activations)``, ``scores`` ``(rows, n_layers, n_heads)`` float32 (every head,
    eligible or not) and each neuron's activation at its row's last token. ``on_batch(n)`` is
    called after each batch of ``n`` rows."""
    lengths = np.array([len(t) for t in inputs])
    layers, neurons = np.asarray(layers, np.int32), np.asarray(neurons, np.int32)
    scores = np.empty((len(inputs), model.cfg.n_layers, model.cfg.n_heads), np.float32)
    acts = np.empty(len(inputs), np.float32)
    for idx in token_batches(lengths, batch_tokens):
        s, a = _core.attribute_batch(model.core, np.concatenate([inputs[i] for i in idx]).astype(np.int32),
                                     lengths[idx].astype(np.int32), layers[idx], neurons[idx])
        scores[idx], acts[idx] = s, a
        if on_batch is not None:
            on_batch(len(idx))
    return scores, acts


def head_attribution(model, prompts: pd.DataFrame, rule: Optional[str] = None, batch_tokens: int = 16384,
                     active_rule: Optional[str] = None, retokenize: Optional[bool] = None,
                     protocol: str = "paper", head_scores: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Long DataFrame ``[layer, neuron, prompt_id, head_layer, head, score, active]``, one row per
    prompt and eligible head. ``prompts``: the output of :func:`ctxlookup.truncate` (``layer,
    neuron, prompt_id, tokens``, and ``text`` to retokenize). ``df.attrs["activation"]`` maps
    prompt_id to the neuron's activation at the last token, recomputed in the same pass.

    ``rule`` (eligible heads, :func:`eligible_layers`), ``active_rule`` (:func:`active_heads`) and
    ``retokenize`` (:func:`ctxlookup.batching.prompt_tokens`) default to the ``protocol``'s
    (:mod:`ctxlookup.protocols`).

    ``head_scores``: the ``(prompts, n_layers, n_heads)`` scores of exactly these prompts' inputs,
    already computed (:func:`ctxlookup.truncate`'s ``head_scores`` with exact truncation): no
    forward pass is run, and ``activation`` is the prompts' own column. Not with ``retokenize``.
    """
    from . import protocols

    proto = protocols.get(protocol)
    rule = proto.rule if rule is None else rule
    active_rule = proto.active_rule if active_rule is None else active_rule
    retokenize = proto.retokenize if retokenize is None else bool(retokenize)
    if active_rule not in ACTIVE_RULES:
        raise ValueError(f"active_rule must be one of {', '.join(ACTIVE_RULES)}, got '{active_rule}'")
    for c in ("layer", "neuron", "prompt_id", "tokens"):
        if c not in prompts.columns:
            raise ValueError(f"prompts need a '{c}' column")
    H = model.cfg.n_heads
    layers = prompts["layer"].to_numpy(np.int32)
    neurons = prompts["neuron"].to_numpy(np.int32)
    pids = prompts["prompt_id"].to_numpy()
    if head_scores is None:
        scores, acts = attribute(model, prompt_tokens(model, prompts, retokenize), layers, neurons, batch_tokens)
    else:
        if retokenize:
            raise ValueError("head_scores are the scores of the prompts' tokens; with retokenize the inputs differ")
        scores = np.asarray(head_scores, np.float32)
        if scores.shape != (len(prompts), model.cfg.n_layers, H):
            raise ValueError(f"head_scores must have shape {(len(prompts), model.cfg.n_layers, H)} (prompts, n_layers, "
                             f"n_heads), got {scores.shape}")
        if "activation" not in prompts.columns:
            raise ValueError("with head_scores the prompts need their 'activation' column")
        acts = prompts["activation"].to_numpy(np.float32)
    frames = []
    for i in range(len(prompts)):
        n_el = eligible_layers(model, int(layers[i]), rule)
        if n_el == 0:
            continue
        s = scores[i, :n_el].reshape(-1)
        frames.append(pd.DataFrame({
            "layer": int(layers[i]), "neuron": int(neurons[i]), "prompt_id": pids[i],
            "head_layer": np.repeat(np.arange(n_el), H), "head": np.tile(np.arange(H), n_el),
            "score": s, "active": active_heads(s, active_rule)}))
    cols = ["layer", "neuron", "prompt_id", "head_layer", "head", "score", "active"]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    df.attrs.update(rule=rule, active_rule=active_rule, retokenize=retokenize,
                    activation=dict(zip(pids.tolist(), acts.tolist())),
                    no_eligible_heads=int(sum(eligible_layers(model, int(l), rule) == 0 for l in layers)))
    return df[cols]
