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
import sys
import time
from typing import Optional

import numpy as np
import pandas as pd

from . import _core
from .batching import DocTokens, as_corpus, context_length, doc_batches, observe_docs, progress as progress_bar

__all__ = ["max_activating", "max_activating_histograms", "neuron_table", "check_neurons"]

# The activation views kept with max_activating_histograms: Neuroscope's defaults
HIST_BINS, HIST_SAMPLES = 64, 3


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
                   token_cache: Optional[DocTokens] = None, workers: Optional[int] = None,
                   scheduler: Optional[str] = None, threads: Optional[int] = None,
                   shard_docs: int = 200) -> pd.DataFrame:
    """Top-``k`` documents per neuron by the neuron's maximum activation.

    Returns ``[layer, neuron, rank, doc_id, position, activation, subset]`` (plus ``token_id`` and
    ``token`` when ``neurons`` carries them). ``position`` indexes the document's own tokens (BOS
    excluded): the prompt is ``doc_tokens[:position + 1]``. Documents are cut to ``max_tokens``
    tokens (default: the model's context, BOS included). ``df.attrs`` records the documents and
    tokens scanned, documents skipped (empty or tokenizing to nothing) and neurons with fewer than
    ``k`` documents (a corpus smaller than ``k``). ``token_cache``: the corpus's
    :class:`ctxlookup.batching.DocTokens`, so documents another stage encoded are not encoded again.

    ``workers`` / ``scheduler``: the same scan as shards of ``shard_docs`` documents on Dask
    (:mod:`ctxlookup.distributed`), each shard recorded next to ``checkpoint`` (in
    ``checkpoint + ".shards"``) and merged exactly: the table is identical to the in-process scan's
    when the C thread count per task (``threads``) equals the in-process one. The workers encode
    their own documents (``token_cache`` is not used).
    """
    return _scan(model, neurons, corpus, k, max_tokens, batch_tokens, prepend_bos, checkpoint, checkpoint_every,
                 progress, token_cache, workers, scheduler, threads, shard_docs, None)[0]


def max_activating_histograms(model, neurons, corpus, k: int = 20, bins: int = HIST_BINS, samples: int = HIST_SAMPLES,
                              max_tokens: Optional[int] = None, batch_tokens: int = 8192, prepend_bos: bool = True,
                              checkpoint: Optional[str] = None, checkpoint_every: float = 60.0, progress: bool = True,
                              token_cache: Optional[DocTokens] = None, workers: Optional[int] = None,
                              scheduler: Optional[str] = None, threads: Optional[int] = None,
                              shard_docs: int = 200):
    """:func:`max_activating` plus, in the same pass, each neuron's activation histogram and
    examples per activation quantile (the C scope of :mod:`ctxlookup.neuroscope`, kept for these
    neurons only).

    Returns ``(max_acts, views)``: ``max_acts`` is exactly what :func:`max_activating` returns;
    ``views`` holds the ``histograms`` and ``quantile_examples`` tables with the columns, and for
    each neuron the rows, that :func:`ctxlookup.neuroscope.neuroscope` gives with the same
    ``bins``, ``samples``, ``batch_tokens`` and ``max_tokens`` on the same corpus, neurons sorted by
    (layer, neuron). Checkpointing and ``workers`` / ``scheduler`` as for :func:`max_activating`.
    """
    return _scan(model, neurons, corpus, k, max_tokens, batch_tokens, prepend_bos, checkpoint, checkpoint_every,
                 progress, token_cache, workers, scheduler, threads, shard_docs, dict(bins=int(bins), samples=int(samples)))


def _scope_for(table: pd.DataFrame, d_mlp: int, views: dict):
    """The scope of the table's neurons (sorted by layer, neuron) and those neurons."""
    pairs = table[["layer", "neuron"]].drop_duplicates().sort_values(["layer", "neuron"])
    layers, nrns = pairs.layer.to_numpy(np.int32), pairs.neuron.to_numpy(np.int32)
    return _core.Scope(layers, d_mlp, 1, views["bins"], views["samples"], neurons=nrns), layers, nrns


def _views(state: dict, layers, nrns, d_mlp: int, skip: int, views: dict) -> dict:
    from .neuroscope import tables_from_state

    t = tables_from_state(state, sorted(set(int(x) for x in layers)), d_mlp, skip, views["bins"] // 16,
                          neurons=(layers, nrns))
    return dict(histograms=t["histograms"], quantile_examples=t["quantile_examples"])


def _scan(model, neurons, corpus, k, max_tokens, batch_tokens, prepend_bos, checkpoint, checkpoint_every, progress,
          token_cache, workers, scheduler, threads, shard_docs, views):
    table = neuron_table(neurons)
    check_neurons(model, table)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    corpus = as_corpus(corpus)
    max_tokens = context_length(model, max_tokens)
    skip = 1 if prepend_bos else 0
    if max_tokens <= skip:
        raise ValueError(f"max_tokens = {max_tokens} leaves no document tokens")
    if workers is not None or scheduler is not None:
        return _max_activating_sharded(model, table, corpus, k, max_tokens, batch_tokens, prepend_bos, checkpoint,
                                       progress, workers, scheduler, threads, shard_docs, views)
    scanner = _core.Scanner(table.layer.to_numpy(np.int32), table.neuron.to_numpy(np.int32), model.cfg.d_mlp, k)
    scope = _scope_for(table, model.cfg.d_mlp, views) if views else None
    meta = dict(neurons=table[["layer", "neuron"]].values.tolist(), k=k, max_tokens=max_tokens, prepend_bos=prepend_bos,
                corpus=corpus.fingerprint(), model=str(model.path))
    if views:
        meta["views"] = views  # a checkpoint of the scan alone does not resume this one
    start_doc, subsets, stats = 0, {}, dict(docs=0, tokens=0, skipped_empty=0)
    if checkpoint and os.path.exists(checkpoint):
        with np.load(checkpoint, allow_pickle=False) as z:
            saved = json.loads(str(z["meta"]))
            plain = {a: b for a, b in saved["meta"].items() if a != "views"}
            if saved["meta"] != meta and views and plain == {a: b for a, b in meta.items() if a != "views"}:
                # a checkpoint of this scan without the histograms (an older ctxlookup): start over
                print(f"scan: {checkpoint} holds the scan without histograms; starting over", file=sys.stderr)
                saved = None
            elif saved["meta"] != meta:
                raise ValueError(f"checkpoint {checkpoint} belongs to a different scan (model, corpus, neurons or "
                                 f"options differ); remove it to start over")
            if saved is not None:
                scanner.set_state(z["act"], z["doc"], z["pos"], z["count"])
                if scope is not None:
                    scope[0].set_state({f[len("scope_"):]: z[f] for f in z.files if f.startswith("scope_")})
                start_doc, stats = saved["next_doc"], saved["stats"]
                subsets = {int(a): b for a, b in saved["subsets"].items()}

    def save(next_doc):
        state = scanner.state()
        live = set(int(d) for d in np.unique(state["doc"]) if d >= 0)
        for d in list(subsets):
            if d not in live:
                del subsets[d]
        if scope is not None:
            state.update({"scope_" + f: a for f, a in scope[0].state().items()})
        tmp = checkpoint + ".incomplete.npz"
        np.savez(tmp, meta=json.dumps(dict(meta=meta, next_doc=next_doc, stats=stats, subsets=subsets)), **state)
        os.replace(tmp, checkpoint)

    bar = progress_bar(corpus.count(), "scan", enabled=progress)
    if bar is not None and start_doc:
        bar.update(min(start_doc, bar.total or start_doc))
        bar.set_postfix_str(f"resumed at doc {start_doc}")
    t0, last_save = time.perf_counter(), time.perf_counter()

    def observe(tokens, lengths, doc_ids, skip_first):
        _core.scan_batch(model.core, scanner, tokens, lengths, doc_ids, skip_first, scope and scope[0])

    def run(docs):
        observe_docs(model, docs, prepend_bos, max_tokens, observe, stats, cache=token_cache)
        for d in docs:
            subsets[d.doc_id] = d.subset
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
    df = _table_from_state(table, scanner.state(), subsets, k, skip, corpus.name, max_tokens, prepend_bos, stats)
    return df, (_views(scope[0].state(), scope[1], scope[2], model.cfg.d_mlp, skip, views) if scope else None)


def _table_from_state(table, st, subsets, k, skip, corpus_name, max_tokens, prepend_bos, stats) -> pd.DataFrame:
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
    df.attrs.update(corpus=corpus_name, k=k, max_tokens=max_tokens, prepend_bos=prepend_bos,
                    short_neurons=short, **stats)
    return df


# ---------------------------------------------------------------------- the scan as shards (Dask)
def _scanner_task(model, batches, spec) -> dict:
    """One shard of max_activating's scan: the batches exactly as the in-process scan forms them."""
    table = pd.DataFrame(dict(layer=spec["layers"], neuron=spec["neurons"]))
    sc = _core.Scanner(table.layer.to_numpy(np.int32), table.neuron.to_numpy(np.int32), model.cfg.d_mlp, spec["k"])
    scope = _scope_for(table, model.cfg.d_mlp, spec["views"])[0] if spec.get("views") else None
    stats, subsets = dict(docs=0, tokens=0, skipped_empty=0), {}
    for docs in batches:
        observe_docs(model, docs, spec["prepend_bos"], spec["max_tokens"],
                     lambda t, lens, ids, skip: _core.scan_batch(model.core, sc, t, lens, ids, skip, scope), stats)
        subsets.update({str(d.doc_id): d.subset for d in docs})
    state = sc.state()
    live = set(str(int(d)) for d in np.unique(state["doc"]) if d >= 0)
    part = dict(state=state, meta=dict(stats=stats, subsets={d: v for d, v in subsets.items() if d in live}))
    if scope is not None:
        part["scope"] = scope.state()
    return part


class _ScanMerge:
    """Two partial scans -> one (picklable for Dask): the top-k lists, and the scopes when kept."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, a: dict, b: dict) -> dict:
        out = _merge_scanner(a, b)
        if self.spec.get("views"):
            table = pd.DataFrame(dict(layer=self.spec["layers"], neuron=self.spec["neurons"]))
            sa, sb = (_scope_for(table, self.spec["d_mlp"], self.spec["views"])[0] for _ in range(2))
            sa.set_state(a["scope"])
            sb.set_state(b["scope"])
            sa.merge(sb)
            out["scope"] = sa.state()
        return out


def _merge_scanner(a: dict, b: dict) -> dict:
    """Two partial top-k states -> one, exactly: activation descending, doc id, position; empty slots last."""
    A, B = a["state"], b["state"]
    k = A["act"].shape[1]
    act = np.concatenate([A["act"], B["act"]], axis=1)
    doc = np.concatenate([A["doc"], B["doc"]], axis=1)
    pos = np.concatenate([A["pos"], B["pos"]], axis=1)
    order = np.lexsort((pos, doc, -act, doc < 0), axis=-1)[:, :k]
    state = dict(act=np.take_along_axis(act, order, 1), doc=np.take_along_axis(doc, order, 1),
                 pos=np.take_along_axis(pos, order, 1),
                 count=np.minimum(A["count"] + B["count"], k).astype(np.int32))
    live = set(str(int(d)) for d in np.unique(state["doc"]) if d >= 0)
    subsets = {d: v for src in (a, b) for d, v in src["meta"]["subsets"].items() if d in live}
    stats = {key: a["meta"]["stats"][key] + b["meta"]["stats"][key] for key in a["meta"]["stats"]}
    return dict(state=state, meta=dict(stats=stats, subsets=subsets))


def _max_activating_sharded(model, table, corpus, k, max_tokens, batch_tokens, prepend_bos, checkpoint, progress,
                            workers, scheduler, threads, shard_docs, views):
    from . import distributed

    if model.path is None:
        raise ValueError("a sharded scan needs a model loaded from a folder (workers load it from there)")
    c = model.cfg
    spec = dict(model_path=os.path.abspath(model.path),
                model_flags=dict(fold_ln=bool(c.fold_ln), center_writing_weights=bool(c.center_writing_weights),
                                 center_unembed=bool(c.center_unembed), fold_value_biases=bool(c.fold_value_biases)),
                corpus=distributed.corpus_spec(corpus), layers=table.layer.astype(int).tolist(),
                neurons=table.neuron.astype(int).tolist(), k=k, max_tokens=max_tokens, prepend_bos=bool(prepend_bos))
    if views:
        spec.update(views=views, d_mlp=int(c.d_mlp))
    shards = distributed.plan_shards(corpus, batch_tokens, max_tokens, shard_docs)
    if not shards:
        raise ValueError(f"corpus {corpus.name} has no documents")
    plan = distributed.plan_hash(shards, dict(spec, fingerprint=corpus.fingerprint(), kind="max_activating"))
    merged, run = distributed.run_shards(_scanner_task, _ScanMerge(spec), spec, shards,
                                         checkpoint + ".shards" if checkpoint else None, plan, workers=workers,
                                         scheduler=scheduler, threads=threads, progress=progress, desc="scan")
    stats = dict(merged["meta"]["stats"])
    stats["skipped_empty"] += corpus.skipped.get("empty", 0)
    stats["skipped_non_utf8"] = corpus.skipped.get("non_utf8", 0)
    subsets = {int(d): v for d, v in merged["meta"]["subsets"].items()}
    df = _table_from_state(table, merged["state"], subsets, k, 1 if prepend_bos else 0, corpus.name, max_tokens,
                           prepend_bos, stats)
    df.attrs["shards"] = run
    if not views:
        return df, None
    _, layers, nrns = _scope_for(table, c.d_mlp, views)
    return df, _views(merged["scope"], layers, nrns, c.d_mlp, 1 if prepend_bos else 0, views)
