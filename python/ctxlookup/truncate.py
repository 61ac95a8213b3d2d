"""Truncation of the max-activating prompts (METHOD §3).

``truncate`` cuts each prompt (the document up to and including its maximum) to the shortest
suffix that keeps at least ``keep`` x psi at its last token (``method="exact"``), or runs the
authors' binary search (``method="binary"``). Every candidate is evaluated by the attribution pass
(:func:`ctxlookup.attribution.attribute`), which returns each prompt's head scores along with the
activation: with ``head_scores=True`` the final pass keeps them, so that the attribution of
the same inputs (:func:`ctxlookup.head_attribution`'s ``head_scores``) needs no second pass.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from .attribution import attribute
from .batching import DocTokens, as_corpus, doc_tokens, progress as progress_bar, with_bos

__all__ = ["truncate"]


def truncate(model, max_acts: pd.DataFrame, corpus, keep: float = 0.8, max_prompt_tokens: int = 100,
             method: Optional[str] = None, prepend_bos: Optional[bool] = None, chunk: int = 16,
             newlines: Optional[str] = None, protocol: str = "paper", progress: bool = True,
             token_cache: Optional[DocTokens] = None, head_scores: bool = False) -> pd.DataFrame:
    """Truncated prompts: ``[layer, neuron, prompt_id, rank, doc_id, subset, text, tokens, n_tokens,
    activation, full_activation, start]`` (plus ``token_id, token`` when ``max_acts`` has them).

    ``method`` and ``newlines`` default to the ``protocol``'s (:mod:`ctxlookup.protocols`).

    ``method="exact"`` (protocol ``ctxlookup``): the shortest suffix of the prompt whose
    activation at its last token is at least ``keep`` x psi, found by evaluating candidate starts
    from the shortest suffix up, ``chunk`` lengths at a time for every prompt together, with no
    monotonicity assumed; only suffixes shorter than ``max_prompt_tokens`` are candidates, since
    longer ones are dropped anyway; ``activation`` is the kept suffix's.

    ``method="binary"`` (protocols ``paper`` and ``authors-2023``): the authors' search
    (``find_truncated_texts``) step for step: ``start = 0``, ``end = n - 1``, probe the floor
    midpoint, keep it as the new start when the activation is strictly greater than ``keep`` x psi,
    else make it the new end, until the midpoint equals the start; start 0 and the last position
    are never probed, and a prompt of at most 2 tokens keeps start 0 unprobed. The extra column
    ``probe_activation`` is what the authors recorded as ``trunc_act``: the activation of the *last
    probe*, which can belong to a start that was rejected (psi itself when nothing was probed);
    ``activation`` is, for both methods, the kept prompt's own activation at its last token.

    ``prepend_bos`` defaults to True for exact (as psi was measured) and False for binary (the
    authors ran truncated prompts without BOS). ``tokens`` holds the prompt's ids without BOS;
    ``text`` is its decoded text with line breaks as spaces: ``newlines="lf"`` replaces "\\n" only
    (the authors'), ``"all"`` also "\\r\\n" and "\\r". Prompts of ``max_prompt_tokens`` or more tokens,
    and prompts whose psi is not positive, are dropped; ``df.attrs["dropped"]`` counts them.
    ``progress``: a tqdm bar of the prompts settled (truncated or dropped), with the forward passes run.
    ``token_cache``: the corpus's :class:`ctxlookup.batching.DocTokens` (the scan's documents are not
    encoded again). ``head_scores=True``: ``df.attrs["head_scores"]`` holds the head scores of
    each kept prompt's model input (BOS, when ``prepend_bos``, and ``tokens``) from the final pass,
    ``(rows, n_layers, n_heads)`` in row order (for :func:`ctxlookup.head_attribution`).
    """
    from . import protocols

    proto = protocols.get(protocol)
    method = proto.truncation if method is None else method
    newlines = proto.newlines if newlines is None else newlines
    if method not in ("exact", "binary"):
        raise ValueError(f"method must be 'exact' or 'binary', got '{method}'")
    if newlines not in ("lf", "all"):
        raise ValueError(f"newlines must be 'lf' or 'all', got '{newlines}'")
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    prepend_bos = (method == "exact") if prepend_bos is None else prepend_bos
    corpus = as_corpus(corpus)
    need = {"layer", "neuron", "doc_id", "position", "activation"}
    if not need <= set(max_acts.columns):
        raise ValueError(f"max_acts needs columns {sorted(need)}")
    docs = corpus.get(max_acts.doc_id.unique())
    scan_bos = max_acts.attrs.get("prepend_bos", True)
    max_tokens = max_acts.attrs.get("max_tokens", model.cfg.n_ctx)
    ids = list(docs)
    toks = dict(zip(ids, doc_tokens(model, [docs[i] for i in ids], scan_bos, max_tokens, cache=token_cache)))
    skip = 1 if scan_bos else 0
    rows = list(max_acts.itertuples(index=False))
    prompts = [toks[r.doc_id][skip:skip + r.position + 1] for r in rows]  # document tokens, no BOS
    for r, p in zip(rows, prompts):
        if len(p) != r.position + 1:
            raise ValueError(f"document {r.doc_id} has {len(p)} tokens, fewer than position {r.position} + 1: "
                             f"max_acts was made from a different corpus or tokenizer")
    thresholds = np.array([keep * r.activation for r in rows], np.float32)
    starts = np.full(len(rows), -1, np.int64)
    live = [i for i, r in enumerate(rows) if r.activation > 0]
    dropped = dict(non_positive=len(rows) - len(live), too_long=0)
    L = [r.layer for r in rows]
    N = [r.neuron for r in rows]

    bar = progress_bar(len(live), "truncate", "prompt", enabled=progress)
    passes = [0]

    def counted(n):  # after each batch of forward passes
        passes[0] += n
        if bar is not None:
            bar.set_postfix(passes=passes[0])

    def settled(n):  # n more prompts truncated or dropped
        if bar is not None and n:
            bar.update(n)

    def evaluate(cands):  # cands: list of (row index, start) -> (head scores, activations at the last token)
        ps = with_bos(model, [prompts[i][s:] for i, s in cands], prepend_bos)
        return attribute(model, ps, [L[i] for i, _ in cands], [N[i] for i, _ in cands], on_batch=counted)

    if method == "exact":
        pending = set(live)
        for lo in range(1, max_prompt_tokens, chunk):
            hi = min(lo + chunk, max_prompt_tokens)  # suffix lengths lo .. hi-1
            n_before = len(pending)
            cands = [(i, len(prompts[i]) - n) for i in sorted(pending) for n in range(lo, hi) if n <= len(prompts[i])]
            if not cands:
                break
            _, acts = evaluate(cands)
            for (i, s), a in zip(cands, acts):
                if i in pending and a >= thresholds[i]:
                    starts[i] = s  # shortest first: the first pass within the chunk wins
                    pending.discard(i)
            left = {i for i in pending if len(prompts[i]) >= hi}
            settled(n_before - len(left))
            pending = left
        settled(len(pending))  # too long
        dropped["too_long"] = sum(1 for i in live if starts[i] < 0)
    else:  # the authors' search, every prompt's probe of a round in one batch
        lo_s = {i: 0 for i in live}
        hi_s = {i: len(prompts[i]) - 1 for i in live}
        probe = {i: float(rows[i].activation) for i in live}  # psi when nothing is probed
        n_active = len(live)
        while True:
            mids = [(i, (lo_s[i] + hi_s[i]) // 2) for i in live if (lo_s[i] + hi_s[i]) // 2 != lo_s[i]]
            settled(n_active - len(mids))
            n_active = len(mids)
            if not mids:
                break
            for (i, m), a in zip(mids, evaluate(mids)[1]):
                probe[i] = float(a)
                if a > thresholds[i]:
                    lo_s[i] = m
                else:
                    hi_s[i] = m
        for i in live:
            if len(prompts[i]) - lo_s[i] < max_prompt_tokens:
                starts[i] = lo_s[i]
            else:
                dropped["too_long"] += 1
    keep_idx = [i for i in range(len(rows)) if starts[i] >= 0]
    shape = (0, model.cfg.n_layers, model.cfg.n_heads)
    scores, final = evaluate([(i, int(starts[i])) for i in keep_idx]) if keep_idx else \
        (np.zeros(shape, np.float32), np.zeros(0, np.float32))
    if bar is not None:
        bar.close()
    tok = model.require_tokenizer()
    out = []
    for pid, (i, a) in enumerate(zip(keep_idx, final)):
        r, t = rows[i], prompts[i][int(starts[i]):]
        text = tok.decode(t).replace("\n", " ") if newlines == "lf" else \
            tok.decode(t).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
        rec = dict(layer=r.layer, neuron=r.neuron, prompt_id=pid, rank=getattr(r, "rank", None), doc_id=r.doc_id,
                   subset=getattr(r, "subset", None), text=text, tokens=[int(x) for x in t], n_tokens=len(t),
                   activation=float(a), full_activation=float(r.activation), start=int(starts[i]))
        if method == "binary":
            rec["probe_activation"] = probe[i]
        for c in ("token_id", "token"):
            if hasattr(r, c):
                rec[c] = getattr(r, c)
        out.append(rec)
    cols = ["layer", "neuron", "prompt_id", "rank", "doc_id", "subset", "text", "tokens", "n_tokens", "activation",
            "full_activation", "start"] + (["probe_activation"] if method == "binary" else []) + \
        [c for c in ("token_id", "token") if c in max_acts.columns]
    df = pd.DataFrame(out, columns=cols)
    df.attrs.update(method=method, keep=keep, max_prompt_tokens=max_prompt_tokens, prepend_bos=bool(prepend_bos),
                    newlines=newlines, dropped=dropped)
    if head_scores:
        df.attrs["head_scores"] = scores
    return df
