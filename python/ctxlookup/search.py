"""Max-activating prompts and their truncation (METHOD §3).

``max_activating`` makes one pass over a corpus for all neurons together: documents are
tokenized (BOS prepended, cut to the model's context), run in token-budgeted batches up to the
deepest layer needed (no unembedding), and a C observer keeps each neuron's top-k documents by
``psi(doc)`` = the largest ``mlp.hook_post`` over the document's positions (the BOS position never
counts). Ties are broken by smaller document id, then earlier position. Memory is O(neurons x k).
A long scan checkpoints to ``checkpoint`` and resumes from it.

``truncate`` cuts each prompt (the document up to and including its maximum) to the shortest
suffix that keeps at least ``keep`` x psi at its last token.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from . import _core
from .corpus import Corpus

__all__ = ["max_activating", "truncate", "neuron_table"]


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


def _check_neurons(model, table: pd.DataFrame) -> None:
    bad = table[(table.layer < 0) | (table.layer >= model.cfg.n_layers)]
    if len(bad):
        raise ValueError(f"layer {int(bad.layer.iloc[0])} is outside [0, {model.cfg.n_layers})")
    bad = table[(table.neuron < 0) | (table.neuron >= model.cfg.d_mlp)]
    if len(bad):
        raise ValueError(f"neuron {int(bad.neuron.iloc[0])} is outside [0, {model.cfg.d_mlp})")


def _as_corpus(corpus) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else Corpus(corpus)


def doc_tokens(model, texts, prepend_bos: bool, max_tokens: int):
    """Tokenize documents -> list of int32 arrays (BOS first when asked), cut to max_tokens."""
    tok = model._need_tokenizer()
    rows = tok.encode_batch(list(texts))
    if prepend_bos:
        bos = model.bos_token_id
        if bos is None:
            raise ValueError("prepend_bos=True but the model has no BOS token id")
        rows = [np.concatenate([np.array([bos], np.int32), r]) for r in rows]
    return [r[:max_tokens] for r in rows]


def progress_bar(total=None, desc="", unit="doc"):
    """A tqdm bar (None without tqdm)."""
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, smoothing=0.1)
    except ImportError:  # pragma: no cover
        return None


def max_activating(model, neurons, corpus, k: int = 20, max_tokens: Optional[int] = None,
                   batch_tokens: int = 8192, prepend_bos: bool = True, checkpoint: Optional[str] = None,
                   checkpoint_every: float = 60.0, progress: bool = True, workers: Optional[int] = None,
                   scheduler: Optional[str] = None, threads: Optional[int] = None,
                   shard_docs: int = 200) -> pd.DataFrame:
    """Top-``k`` documents per neuron by the neuron's maximum activation.

    Returns ``[layer, neuron, rank, doc_id, position, activation, subset]`` (plus ``token_id`` and
    ``token`` when ``neurons`` carries them). ``position`` indexes the document's own tokens (BOS
    excluded): the prompt is ``doc_tokens[:position + 1]``. Documents are cut to ``max_tokens``
    tokens (default: the model's context, BOS included). ``df.attrs`` records the documents and
    tokens scanned, documents skipped (empty or tokenizing to nothing) and neurons with fewer than
    ``k`` documents (a corpus smaller than ``k``).

    ``workers`` / ``scheduler``: the same scan as shards of ``shard_docs`` documents on Dask
    (:mod:`ctxlookup.distributed`), each shard recorded next to ``checkpoint`` (in
    ``checkpoint + ".shards"``) and merged exactly: the table is identical to the in-process scan's
    when the C thread count per task (``threads``) equals the in-process one.
    """
    table = neuron_table(neurons)
    _check_neurons(model, table)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    corpus = _as_corpus(corpus)
    max_tokens = model.cfg.n_ctx if max_tokens is None else min(int(max_tokens), model.cfg.n_ctx)
    skip = 1 if prepend_bos else 0
    if max_tokens <= skip:
        raise ValueError(f"max_tokens = {max_tokens} leaves no document tokens")
    if workers is not None or scheduler is not None:
        return _max_activating_sharded(model, table, corpus, k, max_tokens, batch_tokens, prepend_bos, checkpoint,
                                       progress, workers, scheduler, threads, shard_docs)
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

    bar = progress_bar(total=corpus.count(), desc="scan") if progress else None
    if bar is not None and start_doc:
        bar.update(min(start_doc, bar.total or start_doc))
        bar.set_postfix_str(f"resumed at doc {start_doc}")
    buf_docs, buf_ids, buf_tok = [], [], 0
    t0, last_save, next_doc = time.perf_counter(), time.perf_counter(), start_doc

    def flush():
        nonlocal buf_docs, buf_ids, buf_tok
        if not buf_docs:
            return
        toks = doc_tokens(model, [d.text for d in buf_docs], prepend_bos, max_tokens)
        keep = [i for i, t in enumerate(toks) if len(t) > skip]
        stats["skipped_empty"] += len(toks) - len(keep)
        if keep:
            lens = np.array([len(toks[i]) for i in keep], np.int32)
            _core.scan_batch(model._core, scanner, np.concatenate([toks[i] for i in keep]), lens,
                             np.array([buf_ids[i] for i in keep], np.int64), skip)
            stats["tokens"] += int(lens.sum())
        for d in buf_docs:
            subsets[d.doc_id] = d.subset
        stats["docs"] += len(buf_docs)
        if bar is not None:
            bar.update(len(buf_docs))
            bar.set_postfix(tok_s=f"{stats['tokens'] / max(time.perf_counter() - t0, 1e-9):.0f}")
        buf_docs, buf_ids, buf_tok = [], [], 0

    try:
        for doc in corpus:
            if doc.doc_id < start_doc:
                continue
            buf_docs.append(doc)
            buf_ids.append(doc.doc_id)
            buf_tok += min(len(doc.text) // 2 + 2, max_tokens)  # a cheap over-estimate of its tokens
            if buf_tok >= batch_tokens:
                flush()
                next_doc = doc.doc_id + 1
                if checkpoint and time.perf_counter() - last_save > checkpoint_every:
                    save(next_doc)
                    last_save = time.perf_counter()
        flush()
    finally:
        if bar is not None:
            bar.close()
    stats["skipped_empty"] += corpus.skipped.get("empty", 0)
    stats["skipped_non_utf8"] = corpus.skipped.get("non_utf8", 0)
    if stats["docs"] == 0:
        raise ValueError(f"corpus {corpus.name} has no documents")
    if checkpoint:
        save(10 ** 18)  # complete: a rerun loads the final state and scans nothing
    return _table_from_state(table, scanner.state(), subsets, k, skip, corpus.name, max_tokens, prepend_bos, stats)


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
    sc = _core.Scanner(np.array(spec["layers"], np.int32), np.array(spec["neurons"], np.int32), model.cfg.d_mlp,
                       spec["k"])
    skip = 1 if spec["prepend_bos"] else 0
    stats, subsets = dict(docs=0, tokens=0, skipped_empty=0), {}
    for docs in batches:
        toks = doc_tokens(model, [d.text for d in docs], spec["prepend_bos"], spec["max_tokens"])
        keep = [i for i, t in enumerate(toks) if len(t) > skip]
        stats["skipped_empty"] += len(toks) - len(keep)
        stats["docs"] += len(docs)
        if keep:
            lens = np.array([len(toks[i]) for i in keep], np.int32)
            _core.scan_batch(model._core, sc, np.concatenate([toks[i] for i in keep]), lens,
                             np.array([docs[i].doc_id for i in keep], np.int64), skip)
            stats["tokens"] += int(lens.sum())
        subsets.update({str(d.doc_id): d.subset for d in docs})
    state = sc.state()
    live = set(str(int(d)) for d in np.unique(state["doc"]) if d >= 0)
    return dict(state=state, meta=dict(stats=stats, subsets={d: v for d, v in subsets.items() if d in live}))


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
                            workers, scheduler, threads, shard_docs) -> pd.DataFrame:
    from . import distributed

    if model.path is None:
        raise ValueError("a sharded scan needs a model loaded from a folder (workers load it from there)")
    c = model.cfg
    spec = dict(model_path=os.path.abspath(model.path),
                model_flags=dict(fold_ln=bool(c.fold_ln), center_writing_weights=bool(c.center_writing_weights),
                                 center_unembed=bool(c.center_unembed), fold_value_biases=bool(c.fold_value_biases)),
                corpus=distributed.corpus_spec(corpus), layers=table.layer.astype(int).tolist(),
                neurons=table.neuron.astype(int).tolist(), k=k, max_tokens=max_tokens, prepend_bos=bool(prepend_bos))
    shards = distributed.plan_shards(corpus, batch_tokens, max_tokens, shard_docs)
    if not shards:
        raise ValueError(f"corpus {corpus.name} has no documents")
    plan = distributed.plan_hash(shards, dict(spec, fingerprint=corpus.fingerprint(), kind="max_activating"))
    merged, run = distributed.run_shards(_scanner_task, _merge_scanner, spec, shards,
                                         checkpoint + ".shards" if checkpoint else None, plan, workers=workers,
                                         scheduler=scheduler, threads=threads, progress=progress, desc="scan")
    stats = dict(merged["meta"]["stats"])
    stats["skipped_empty"] += corpus.skipped.get("empty", 0)
    stats["skipped_non_utf8"] = corpus.skipped.get("non_utf8", 0)
    subsets = {int(d): v for d, v in merged["meta"]["subsets"].items()}
    df = _table_from_state(table, merged["state"], subsets, k, 1 if prepend_bos else 0, corpus.name, max_tokens,
                           prepend_bos, stats)
    df.attrs["shards"] = run
    return df


def _last_acts(model, prompts, layer_of, neuron_of, batch_tokens=16384, on_batch=None):
    """Activation of each prompt's neuron at its last token: batched forward passes to the layer.
    ``on_batch(n)`` is called after each batch of ``n`` prompts."""
    from .attribution import token_batches

    out = np.empty(len(prompts), np.float32)
    lengths = np.array([len(p) for p in prompts])
    for idx in token_batches(lengths, batch_tokens):
        _, acts = _core.attribute_batch(model._core, np.concatenate([prompts[x] for x in idx]).astype(np.int32),
                                        lengths[idx].astype(np.int32), np.array([layer_of[x] for x in idx], np.int32),
                                        np.array([neuron_of[x] for x in idx], np.int32))
        out[idx] = acts
        if on_batch is not None:
            on_batch(len(idx))
    return out


def truncate(model, max_acts: pd.DataFrame, corpus, keep: float = 0.8, max_prompt_tokens: int = 100,
             method: Optional[str] = None, prepend_bos: Optional[bool] = None, chunk: int = 16,
             newlines: Optional[str] = None, protocol: str = "paper", progress: bool = True) -> pd.DataFrame:
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
    corpus = _as_corpus(corpus)
    need = {"layer", "neuron", "doc_id", "position", "activation"}
    if not need <= set(max_acts.columns):
        raise ValueError(f"max_acts needs columns {sorted(need)}")
    docs = corpus.get(max_acts.doc_id.unique())
    scan_bos = max_acts.attrs.get("prepend_bos", True)
    max_tokens = max_acts.attrs.get("max_tokens", model.cfg.n_ctx)
    texts = {d: docs[d].text for d in docs}
    ids = list(texts)
    toks = dict(zip(ids, doc_tokens(model, [texts[i] for i in ids], scan_bos, max_tokens)))
    skip = 1 if scan_bos else 0
    bos = np.array([model.bos_token_id], np.int32) if prepend_bos else np.zeros(0, np.int32)
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

    bar = progress_bar(total=len(live), desc="truncate", unit="prompt") if progress else None
    passes = [0]

    def counted(n):  # after each batch of forward passes
        passes[0] += n
        if bar is not None:
            bar.set_postfix(passes=passes[0])

    def settled(n):  # n more prompts truncated or dropped
        if bar is not None and n:
            bar.update(n)

    def evaluate(cands):  # cands: list of (row index, start) -> activations
        ps = [np.concatenate([bos, prompts[i][s:]]) for i, s in cands]
        return _last_acts(model, ps, [L[i] for i, _ in cands], [N[i] for i, _ in cands], on_batch=counted)

    if method == "exact":
        pending = set(live)
        for lo in range(1, max_prompt_tokens, chunk):
            hi = min(lo + chunk, max_prompt_tokens)  # suffix lengths lo .. hi-1
            n_before = len(pending)
            cands = [(i, len(prompts[i]) - n) for i in sorted(pending) for n in range(lo, hi) if n <= len(prompts[i])]
            if not cands:
                break
            acts = evaluate(cands)
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
            for (i, m), a in zip(mids, evaluate(mids)):
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
    final = evaluate([(i, int(starts[i])) for i in keep_idx]) if keep_idx else np.zeros(0, np.float32)
    if bar is not None:
        bar.close()
    tok = model._need_tokenizer()
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
    return df
