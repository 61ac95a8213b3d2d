"""The max-activating scan (METHOD §3).

``max_activating`` makes one pass over a corpus for all neurons together: documents are
tokenized (BOS prepended, cut to the model's context), run in token-budgeted batches up to the
deepest layer needed (no unembedding), and a C observer keeps each neuron's top-k documents by
``psi(doc)`` = the largest ``mlp.hook_post`` over the document's positions (the BOS position never
counts). Ties are broken by smaller document id, then earlier position. Memory is O(neurons x k).
A long scan checkpoints to ``checkpoint`` and resumes from it. The prompts' truncation:
:mod:`ctxlookup.truncate`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np
import pandas as pd

from . import _core
from .batching import DocTokens, as_corpus, context_length, doc_batches, doc_tokens, progress as progress_bar

__all__ = ["max_activating", "neuron_table", "check_neurons"]


def neuron_table(neurons) -> pd.DataFrame:
    """Neurons as a DataFrame with ``layer, neuron`` (and any extra columns, e.g. ``token_id``)."""
    if isinstance(neurons, pd.DataFrame):
        if not {"layer", "neuron"} <= set(neurons.columns):
            raise ValueError("the neurons DataFrame needs 'layer' and 'neuron' columns")
        keep = [c for c in ("layer", "neuron", "token_id", "token") if c in neurons.columns]
        df = neurons[keep].drop_duplicates(["layer", "neuron"]).reset_index(drop=True)
    else:
        pairs = [(int(l), int(n)) for l, n in neurons]
        df = pd.DataFrame(pairs, columns=["layer", "neuron"]).drop_duplicates().reset_index(drop=True)
    if len(df) == 0:
        raise ValueError("no neurons given")
    return df


def check_neurons(model, table: pd.DataFrame) -> None:
    """ValueError naming the first neuron of ``table`` outside the model."""
    bad = table[(table.layer < 0) | (table.layer >= model.cfg.n_layers)]
    if len(bad):
        raise ValueError(f"layer {int(bad.layer.iloc[0])} is outside [0, {model.cfg.n_layers})")
    bad = table[(table.neuron < 0) | (table.neuron >= model.cfg.d_mlp)]
    if len(bad):
        raise ValueError(f"neuron {int(bad.neuron.iloc[0])} is outside [0, {model.cfg.d_mlp})")


def max_activating(model, neurons, corpus, k: int = 20, max_tokens: Optional[int] = None,
                   batch_tokens: int = 8192, prepend_bos: bool = True, checkpoint: Optional[str] = None,
                   checkpoint_every: float = 60.0, progress: bool = True,
                   token_cache: Optional[DocTokens] = None) -> pd.DataFrame:
    """Top-``k`` documents per neuron by the neuron's maximum activation.

    Returns ``[layer, neuron, rank, doc_id, position, activation, subset]`` (plus ``token_id`` and
    ``token`` when ``neurons`` carries them). ``position`` indexes the document's own tokens (BOS
    excluded): the prompt is ``doc_tokens[:position + 1]``. Documents are cut to ``max_tokens``
    tokens (default: the model's context, BOS included). ``df.attrs`` records the documents and
    tokens scanned, documents skipped (empty or tokenizing to nothing) and neurons with fewer than
    ``k`` documents (a corpus smaller than ``k``). ``token_cache``: the corpus's
    :class:`ctxlookup.batching.DocTokens`, so documents another stage encoded are not encoded again.
    """
    table = neuron_table(neurons)
    check_neurons(model, table)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    corpus = as_corpus(corpus)
    max_tokens = context_length(model, max_tokens)
    skip = 1 if prepend_bos else 0
    if max_tokens <= skip:
        raise ValueError(f"max_tokens = {max_tokens} leaves no document tokens")
    scanner = _core.Scanner(table.layer.to_numpy(np.int32), table.neuron.to_numpy(np.int32), model.cfg.d_mlp, k)
    meta = dict(neurons=table[["layer", "neuron"]].values.tolist(), k=k, max_tokens=max_tokens, prepend_bos=prepend_bos,
                corpus=corpus.fingerprint(), model=str(model.path))
    start_doc, subsets, stats = 0, {}, dict(docs=0, tokens=0, skipped_empty=0)
    if checkpoint and os.path.exists(checkpoint):
        with np.load(checkpoint, allow_pickle=False) as z:
            saved = json.loads(str(z["meta"]))
            if saved["meta"] != meta:
                raise ValueError(f"checkpoint {checkpoint} belongs to a different scan (model, corpus, neurons or "
                                 f"options differ); remove it to start over")
            scanner.set_state(z["act"], z["doc"], z["pos"], z["count"])
            start_doc, stats = saved["next_doc"], saved["stats"]
            subsets = {int(a): b for a, b in saved["subsets"].items()}

    def save(next_doc):
        state = scanner.state()
        live = set(int(d) for d in np.unique(state["doc"]) if d >= 0)
        for d in list(subsets):
            if d not in live:
                del subsets[d]
        tmp = checkpoint + ".incomplete.npz"
        np.savez(tmp, meta=json.dumps(dict(meta=meta, next_doc=next_doc, stats=stats, subsets=subsets)), **state)
        os.replace(tmp, checkpoint)

    bar = progress_bar(corpus.count(), "scan", enabled=progress)
    if bar is not None and start_doc:
        bar.update(min(start_doc, bar.total or start_doc))
        bar.set_postfix_str(f"resumed at doc {start_doc}")
    t0, last_save = time.perf_counter(), time.perf_counter()

    def run(docs):
        toks = doc_tokens(model, docs, prepend_bos, max_tokens, cache=token_cache)
        keep = [i for i, t in enumerate(toks) if len(t) > skip]
        stats["skipped_empty"] += len(toks) - len(keep)
        if keep:
            lens = np.array([len(toks[i]) for i in keep], np.int32)
            _core.scan_batch(model.core, scanner, np.concatenate([toks[i] for i in keep]), lens,
                             np.array([docs[i].doc_id for i in keep], np.int64), skip)
            stats["tokens"] += int(lens.sum())
        for d in docs:
            subsets[d.doc_id] = d.subset
        stats["docs"] += len(docs)
        if bar is not None:
            bar.update(len(docs))
            bar.set_postfix(tok_s=f"{stats['tokens'] / max(time.perf_counter() - t0, 1e-9):.0f}")

    try:
        for docs in doc_batches((d for d in corpus if d.doc_id >= start_doc), batch_tokens, max_tokens):
            run(docs)
            if checkpoint and time.perf_counter() - last_save > checkpoint_every:
                save(docs[-1].doc_id + 1)
                last_save = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
    stats["skipped_empty"] += corpus.skipped.get("empty", 0)
    stats["skipped_non_utf8"] = corpus.skipped.get("non_utf8", 0)
    if stats["docs"] == 0:
        raise ValueError(f"corpus {corpus.name} has no documents")
    if checkpoint:
        save(10 ** 18)  # complete: a rerun loads the final state and scans nothing
    st = scanner.state()
    rows = []
    for j, (layer, neuron) in enumerate(table[["layer", "neuron"]].itertuples(index=False)):
        for r in range(int(st["count"][j])):
            d = int(st["doc"][j, r])
            rows.append((int(layer), int(neuron), r, d, int(st["pos"][j, r]) - skip, float(st["act"][j, r]), subsets.get(d)))
    df = pd.DataFrame(rows, columns=["layer", "neuron", "rank", "doc_id", "position", "activation", "subset"])
    extra = [c for c in ("token_id", "token") if c in table.columns]
    if extra:
        df = df.merge(table, on=["layer", "neuron"], how="left")
    short = [(int(l), int(n)) for (l, n), c in zip(table[["layer", "neuron"]].values, st["count"]) if c < k]
    df.attrs.update(corpus=corpus.name, k=k, max_tokens=max_tokens, prepend_bos=prepend_bos,
                    short_neurons=short, **stats)
    return df


