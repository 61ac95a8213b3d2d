"""Head attribution, head selection and the ablation check (METHOD §4 and §6).

``score[(k, i), (l, j)] = <h_(k,i), W_in[l][:, j]>``: head i of layer k's output in the residual
stream (``attn.hook_result``, without ``b_O``) at the prompt's last token, against neuron j of
layer l's input weight. Computed in C inside the forward pass as ``<z, W_O[k, i] W_in[l][:, j]>``,
so no per-head result tensor is ever built. A head is **active** on a prompt when its score
exceeds the mean + 2 sample standard deviations (ddof=1) of the scores of all eligible heads on
that prompt.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from . import _core

__all__ = ["head_attribution", "select_heads", "ablate_heads", "prompt_tokens", "eligible_layers", "active_heads",
           "mean_z", "active_threshold", "token_batches"]

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


def prompt_tokens(model, prompts: pd.DataFrame, retokenize: bool = False) -> list:
    """Each prompt's model input: its ``tokens``, after BOS when the prompts were made with one.

    ``retokenize=True`` (the authors', protocols ``paper`` and ``authors-2023``): BOS and the
    prompt's ``text`` encoded again, as their attribution and ablation ran ``to_tokens(text)`` on
    the truncated text after its line breaks became spaces (which can tokenize differently from
    the truncated tokens)."""
    if retokenize:
        if "text" not in prompts.columns:
            raise ValueError("retokenize needs the prompts' 'text' column")
        if model.bos_token_id is None:
            raise ValueError("retokenize prepends BOS, but the model has no BOS token")
        encoded = model._need_tokenizer().encode_batch(list(prompts["text"]))
        out = [np.concatenate([[model.bos_token_id], e]).astype(np.int32) for e in encoded]
        if any(len(a) == 1 for a in out):
            raise ValueError("a prompt has no tokens")
        return out
    bos = prompts.attrs.get("prepend_bos", True)
    head = [model.bos_token_id] if bos else []
    if bos and model.bos_token_id is None:
        raise ValueError("the prompts expect a BOS token but the model has none")
    out = []
    for t in prompts["tokens"]:
        a = np.asarray(head + list(t), np.int32)
        if len(a) == 0:
            raise ValueError("a prompt has no tokens")
        out.append(a)
    return out


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


def token_batches(lengths, batch_tokens):
    """Indices of sequences (``lengths``) grouped shortest first into batches of at most
    ``batch_tokens`` tokens in all (a longer sequence alone)."""
    order = np.argsort(lengths, kind="stable")
    i = 0
    while i < len(order):
        j, tot = i, 0
        while j < len(order) and (tot + lengths[order[j]] <= batch_tokens or j == i):
            tot += lengths[order[j]]
            j += 1
        yield order[i:j]
        i = j


def head_attribution(model, prompts: pd.DataFrame, rule: Optional[str] = None, batch_tokens: int = 16384,
                     active_rule: Optional[str] = None, retokenize: Optional[bool] = None,
                     protocol: str = "paper") -> pd.DataFrame:
    """Long DataFrame ``[layer, neuron, prompt_id, head_layer, head, score, active]``, one row per
    prompt and eligible head. ``prompts``: the output of :func:`ctxlookup.truncate` (``layer,
    neuron, prompt_id, tokens``, and ``text`` to retokenize). ``df.attrs["activation"]`` maps
    prompt_id to the neuron's activation at the last token, recomputed in the same pass.

    ``rule`` (eligible heads, :func:`eligible_layers`), ``active_rule`` (:func:`active_heads`) and
    ``retokenize`` (:func:`prompt_tokens`) default to the ``protocol``'s (:mod:`ctxlookup.protocols`).
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
    toks = prompt_tokens(model, prompts, retokenize)
    lengths = np.array([len(t) for t in toks])
    layers = prompts["layer"].to_numpy(np.int32)
    neurons = prompts["neuron"].to_numpy(np.int32)
    pids = prompts["prompt_id"].to_numpy()
    scores = np.empty((len(toks), model.cfg.n_layers, H), np.float32)
    acts = np.empty(len(toks), np.float32)
    for idx in token_batches(lengths, batch_tokens):
        s, a = _core.attribute_batch(model._core, np.concatenate([toks[i] for i in idx]), lengths[idx].astype(np.int32),
                                     layers[idx], neurons[idx])
        scores[idx], acts[idx] = s, a
    frames = []
    for i in range(len(toks)):
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
    prompt's input (:func:`prompt_tokens`), for ``ablate_heads(mode="mean")``."""
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
    enc = model._need_tokenizer().encode_batch(uniq)
    for t, e in zip(uniq, enc):
        if len(e) == 0:
            raise ValueError(f"the neuron token {t!r} encodes to no tokens")
    return uniq, enc
