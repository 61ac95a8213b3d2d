"""Token windows: each max-activating document's tokens around its maximum, with the neuron's
activation on every one of them (the coloured examples of the report).

The truncate stages of ``ctxlookup replicate`` store them (tables ``examples`` and
``test_examples``), so a report reads them instead of loading the model and the corpora again.
A window runs from ``first`` (a document token index, BOS excluded) to the maximum plus
``after`` tokens: ``before`` tokens before the maximum, or from 3 tokens before the truncated
prompt's start when that is earlier, never more than ``max_before``. Activations are those of
the document read from its start (``context="document"``, as the scan saw it), or, when the
document is not at hand, of the truncated prompt alone (``context="prompt"``, ending at the
maximum).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import pandas as pd

__all__ = ["example_windows", "quantile_rows", "token_texts", "WINDOW_COLUMNS", "BEFORE", "AFTER", "MAX_BEFORE",
           "QUANT_BEFORE", "QUANT_AFTER"]

BEFORE = 40          # tokens shown before a maximum (more when the truncated prompt starts earlier)
AFTER = 10           # tokens shown after it
MAX_BEFORE = 160     # never more than this many before it
QUANT_BEFORE, QUANT_AFTER = 8, 3  # tokens shown around a quantile example (as the Neuroscope atlas shows them)

WINDOW_COLUMNS = ["layer", "neuron", "rank", "doc_id", "context", "first", "doc_len", "tokens", "strs", "acts"]


def token_texts(tok, ids) -> List[str]:
    """Each token's text; a character split over several byte-level tokens goes to the token that
    completes it (the others get ""), instead of a replacement character each."""
    ids = np.asarray(ids, np.int32)
    orig = list(tok.to_str_tokens(ids))
    strs = list(orig)
    bad = "\ufffd"
    i = 0
    while i < len(orig):
        if bad not in orig[i]:
            i += 1
            continue
        j = i
        while j < len(orig) and bad in orig[j]:
            j += 1
        # the run of tokens that decode to replacement characters alone, and the token after it (which
        # may finish their character): each prefix of it that decodes cleanly goes to its last token
        end = j + 1 if j < len(orig) and bad not in orig[j] else j
        start = i
        for k in range(i, end):
            text = tok.decode(ids[start:k + 1])
            if not text.endswith(bad) and text.count(bad) < sum(orig[q].count(bad) for q in range(start, k + 1)):
                for q in range(start, k):
                    strs[q] = ""
                strs[k] = text
                start = k + 1
        i = end
    return strs


def _rank(r) -> int:
    v = getattr(r, "rank", None)
    try:
        return int(v) if v is not None and np.isfinite(float(v)) else -1
    except (TypeError, ValueError):
        return -1


def quantile_rows(quantile_examples: pd.DataFrame) -> pd.DataFrame:
    """The scan's ``quantile_examples`` as rows for :func:`example_windows`: ``layer, neuron, rank,
    doc_id, position`` plus the band's columns, by neuron, band and sample, ``rank`` counting each
    neuron's examples from 0 in that order (the key the report matches windows on)."""
    q = quantile_examples.sort_values(["layer", "neuron", "band", "sample"], kind="stable").reset_index(drop=True)
    return q.assign(rank=q.groupby(["layer", "neuron"]).cumcount())


def example_windows(model, max_acts: pd.DataFrame, prompts: Optional[pd.DataFrame] = None,
                    texts: Optional[Dict[int, str]] = None, before: int = BEFORE, after: int = AFTER,
                    max_before: int = MAX_BEFORE, prepend_bos: bool = True, max_tokens: Optional[int] = None,
                    prompt_bos: bool = True, batch_tokens: int = 4096, progress: bool = False) -> pd.DataFrame:
    """One row per row of ``max_acts`` (``layer, neuron, rank, doc_id, position``): its window,
    columns :data:`WINDOW_COLUMNS` (``tokens``: ids; ``strs``: their texts, :func:`token_texts`;
    ``acts``: the neuron's activation on each, float32; ``doc_len``: the document's tokens, BOS
    excluded, or -1 for a prompt-alone window).

    ``texts``: ``doc_id -> text`` of the documents (tokenized as the scan did: ``prepend_bos``,
    cut to ``max_tokens``); a row whose document is missing falls back to its truncated prompt
    from ``prompts`` (matched on ``layer, neuron, rank, doc_id``; run with BOS first when
    ``prompt_bos``), and a row with neither is left out. Sequences run in batches of about
    ``batch_tokens`` tokens, each up to the deepest layer it needs.
    """
    from .batching import doc_tokens, progress as progress_bar, token_batches

    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"the model at {model.path} has no tokenizer files")
    max_tokens = model.cfg.n_ctx if max_tokens is None else min(int(max_tokens), model.cfg.n_ctx)
    skip = 1 if prepend_bos else 0
    texts = texts or {}
    ids = sorted(int(d) for d in set(max_acts.doc_id.astype(int)) if int(d) in texts)
    docs = dict(zip(ids, doc_tokens(model, [texts[i] for i in ids], prepend_bos, max_tokens))) if ids else {}
    pmap = {}
    if prompts is not None and len(prompts):
        for p in prompts.itertuples(index=False):
            pmap[(int(p.layer), int(p.neuron), _rank(p), int(p.doc_id))] = p
    head = [model.bos_token_id] if prompt_bos and model.bos_token_id is not None else []
    # each window: (row fields, sequence key, lo, hi) over the sequence; a document prefix is shared
    seqs: Dict[tuple, np.ndarray] = {}
    plan = []
    for r in max_acts.itertuples(index=False):
        layer, neuron, rank, doc, pos = int(r.layer), int(r.neuron), _rank(r), int(r.doc_id), int(r.position)
        p = pmap.get((layer, neuron, rank, doc))
        d = docs.get(doc)
        if d is not None and len(d) - skip > pos:
            doc_len = len(d) - skip
            lo = pos - before
            if p is not None:
                lo = min(lo, int(p.start) - 3)
            first = max(0, lo, pos - max_before)
            end = min(doc_len, pos + after + 1)
            key = ("doc", doc)
            if key not in seqs or len(seqs[key]) < skip + end:
                seqs[key] = d[: skip + end]
            plan.append(((layer, neuron, rank, doc, "document", first, doc_len), key, skip + first, skip + end))
        elif p is not None and len(p.tokens):
            key = ("prompt", int(p.prompt_id))
            seqs[key] = np.asarray(head + [int(t) for t in p.tokens], np.int32)
            plan.append(((layer, neuron, rank, doc, "prompt", int(p.start), -1), key, len(head),
                         len(head) + len(p.tokens)))
    by_seq: Dict[tuple, list] = {}
    for item in plan:
        by_seq.setdefault(item[1], []).append(item)
    keys = list(by_seq)
    found: Dict[int, dict] = {}
    bar = progress_bar(total=len(keys), desc="token windows", unit="seq") if progress and keys else None
    for idx in token_batches(np.array([len(seqs[k]) for k in keys]), batch_tokens) if keys else ():
        batch = [keys[i] for i in idx]
        layers = sorted({item[0][0] for k in batch for item in by_seq[k]})
        _, cache = model.run_with_cache([seqs[k] for k in batch], names_filter=[f"blocks.{l}.mlp.hook_post" for l in layers],
                                        stop_at_layer=max(layers) + 1, return_logits=False)
        for b, k in enumerate(batch):
            for (layer, neuron, rank, doc, ctx, first, doc_len), _, lo, hi in by_seq[k]:
                t = seqs[k][lo:hi]
                a = np.asarray(cache[f"blocks.{layer}.mlp.hook_post"][b, lo:hi, neuron], np.float32)
                found[(layer, neuron, rank, doc)] = dict(
                    layer=layer, neuron=neuron, rank=rank, doc_id=doc, context=ctx, first=first, doc_len=doc_len,
                    tokens=[int(x) for x in t], strs=token_texts(tok, t), acts=[float(x) for x in a])
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    rows = [found[f[:4]] for f, *_ in plan]
    df = pd.DataFrame(rows, columns=WINDOW_COLUMNS)
    df.attrs.update(before=int(before), after=int(after), max_before=int(max_before), prepend_bos=bool(prepend_bos),
                    max_tokens=int(max_tokens), prompt_bos=bool(prompt_bos))
    return df
