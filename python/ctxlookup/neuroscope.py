"""Neuroscope: for every neuron of the chosen layers, the texts that activate it most, in one pass.

``neuroscope(model, corpus, out)`` streams the corpus once through the model (to the deepest
chosen layer, no unembedding) and keeps, for every neuron (C core, ``cl_scope``):

- the top-``k`` documents by the document's maximum ``mlp.hook_post`` (BOS never counts), with
  the position of the maximum; ties go to the smaller document id, then the earlier position;
- a histogram of every token's activation with ``bins`` bins over the neuron's observed range:
  bin width a power of two, edges on multiples of it (0 is always an edge), the width the
  smallest that spans [min, max] in ``bins`` bins. The bins depend on (min, max) alone, so
  partial histograms merge exactly in any order;
- ``samples`` token examples per activation band (a band is ``bins / 16`` bins), drawn uniformly
  and reproducibly: the tokens with the smallest hash of (document, position). With the band's
  share of tokens below and above it, these are the examples per activation quantile.

Outputs in ``out``: Parquet tables ``top_examples``, ``histograms``, ``quantile_examples`` and
``neurons`` (each neuron's summary with its logit attribution ``W_out[layer][neuron] @ W_U``: the
tokens it raises and lowers most), ``manifest.json``, the shard records (``shards/``) and, with
``site=True``, a static site (``site/index.html``; see :mod:`ctxlookup.neuroscope_site`).

The pass is sharded and resumable (:mod:`ctxlookup.distributed`): completed shards are recorded
and skipped on a rerun; ``workers=N`` or ``scheduler=ADDRESS`` run the shards on Dask, with tables
identical to the in-process pass.
"""
from __future__ import annotations

import json
import os
import time
from functools import partial
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import _core, distributed
from .batching import observe_docs

__all__ = ["neuroscope", "Atlas", "add_cli"]

TABLES = ["top_examples", "histograms", "quantile_examples", "neurons"]


class Atlas(dict):
    """The atlas's tables by name (DataFrames), with ``.out`` (its folder) and ``.manifest``."""

    def __init__(self, out: str, tables: dict, manifest: dict):
        super().__init__(tables)
        self.out = out
        self.manifest = manifest

    @classmethod
    def load(cls, out: str) -> "Atlas":
        with open(os.path.join(out, "manifest.json")) as f:
            manifest = json.load(f)
        return cls(out, {t: pd.read_parquet(os.path.join(out, f"{t}.parquet")) for t in TABLES}, manifest)


# ---------------------------------------------------------------------- the shard task (runs on workers)
def _scan_task(model, batches, spec) -> dict:
    sc = _core.Scope(np.array(spec["layers"], np.int32), model.cfg.d_mlp, spec["k"], spec["bins"], spec["samples"])
    stats = _scan_batches(model, sc, batches, spec)
    return dict(state=sc.state(), meta=stats)


def _scan_batches(model, sc, batches, spec) -> dict:
    stats = dict(docs=0, tokens=0, skipped_empty=0)
    for docs in batches:
        observe_docs(model, docs, spec["prepend_bos"], spec["max_tokens"], partial(_core.scope_batch, model.core, sc),
                     stats)
    return stats


def _merge(a: dict, b: dict, spec: dict) -> dict:
    sa = _core.Scope(np.array(spec["layers"], np.int32), spec["d_mlp"], spec["k"], spec["bins"], spec["samples"])
    sb = _core.Scope(np.array(spec["layers"], np.int32), spec["d_mlp"], spec["k"], spec["bins"], spec["samples"])
    sa.set_state(a["state"])
    sb.set_state(b["state"])
    sa.merge(sb)
    meta = {key: a["meta"][key] + b["meta"][key] for key in a["meta"]}
    return dict(state=sa.state(), meta=meta)


class _Merge:
    """The merge with its spec bound (picklable for Dask)."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, a, b):
        return _merge(a, b, self.spec)


# ---------------------------------------------------------------------- tables
def tables_from_state(state: dict, layers: Sequence[int], d_mlp: int, skip: int, bins_per_band: int,
                      neurons=None) -> dict:
    """The state's arrays as the top_examples, histograms and quantile_examples tables and the
    activation columns of ``neurons`` (positions are the document's own tokens: BOS excluded).
    ``neurons``: for a scope of chosen neurons, their (layers, neuron indices) arrays in the
    scope's order (default: every neuron of ``layers``)."""
    if neurons is None:
        layer_of = np.repeat(np.array(layers, np.int64), d_mlp)
        neuron_of = np.tile(np.arange(d_mlp, dtype=np.int64), len(layers))
    else:
        layer_of, neuron_of = (np.asarray(a, np.int64) for a in neurons)
    n = len(layer_of)
    # top examples
    cnt = state["top_count"].astype(np.int64)
    k = state["top_act"].shape[1]
    mask = np.arange(k)[None, :] < cnt[:, None]
    jj, rr = np.nonzero(mask)
    top = pd.DataFrame(dict(layer=layer_of[jj], neuron=neuron_of[jj], rank=rr, doc_id=state["top_doc"][jj, rr],
                            position=state["top_pos"][jj, rr].astype(np.int64) - skip,
                            activation=state["top_act"][jj, rr]))
    # histograms: the bins from the first to the one holding the maximum
    width = np.ldexp(1.0, state["hist_exp"].astype(np.int64))
    start = state["hist_start"].astype(np.int64)
    vmax = state["vmax"].astype(np.float64)
    nonempty = state["total"] > 0
    last = np.where(nonempty, np.floor(vmax / width).astype(np.int64) - start, -1)
    B = state["hist"].shape[1]
    hmask = np.arange(B)[None, :] <= last[:, None]
    hj, hb = np.nonzero(hmask)
    lo = (start[hj] + hb) * width[hj]
    hist = pd.DataFrame(dict(layer=layer_of[hj], neuron=neuron_of[hj], bin=hb, lo=lo, hi=lo + width[hj],
                             count=state["hist"][hj, hb]))
    # quantile examples: each band's share of tokens below and above, and its samples
    cum = np.cumsum(state["hist"], axis=1)
    total = np.maximum(state["total"], 1)
    off = start % bins_per_band
    S = state["s_act"].shape[2]
    smask = np.arange(S)[None, None, :] < state["s_count"][:, :, None]
    qj, qb, qr = np.nonzero(smask)
    first_bin = np.clip(qb * bins_per_band - off[qj], 0, B - 1)
    last_bin = np.clip((qb + 1) * bins_per_band - off[qj] - 1, 0, B - 1)
    below = np.where(first_bin > 0, cum[qj, np.maximum(first_bin - 1, 0)], 0)
    band_lo = (start[qj] + first_bin) * width[qj]
    quant = pd.DataFrame(dict(layer=layer_of[qj], neuron=neuron_of[qj], band=qb, lo=band_lo,
                              hi=(start[qj] + last_bin + 1) * width[qj],
                              band_tokens=cum[qj, last_bin] - below, quantile_lo=below / total[qj],
                              quantile_hi=cum[qj, last_bin] / total[qj], sample=qr, doc_id=state["s_doc"][qj, qb, qr],
                              position=state["s_pos"][qj, qb, qr].astype(np.int64) - skip,
                              activation=state["s_act"][qj, qb, qr]))
    # neuron summaries (activation side); bin edges sit on 0, so the share of tokens >= 0 is exact
    grid = start[:, None] + np.arange(B)[None, :]
    nonneg = np.where(grid >= 0, state["hist"], 0).sum(axis=1)
    has_top = cnt > 0
    neurons = pd.DataFrame(dict(layer=layer_of, neuron=neuron_of, tokens=state["total"], nonfinite=state["nonfinite"],
                                min=np.where(nonempty, state["vmin"], np.nan), max=np.where(nonempty, state["vmax"], np.nan),
                                frac_nonneg=nonneg / total, bin_width=width,
                                top_activation=np.where(has_top, state["top_act"][:, 0], np.nan),
                                top_doc=np.where(has_top, state["top_doc"][:, 0], -1),
                                top_position=np.where(has_top, state["top_pos"][:, 0].astype(np.int64) - skip, -1)))
    assert len(neurons) == n
    return dict(top_examples=top, histograms=hist, quantile_examples=quant, neurons=neurons)


def logit_attribution(model, layers: Sequence[int], top: int = 10, chunk: int = 512) -> pd.DataFrame:
    """Each neuron's ``W_out[layer][neuron] @ W_U``: the ``top`` tokens it raises most and the
    ``top`` it lowers most (ids, strings, values), a row per neuron."""
    W_out, W_U = model.W_out, model.W_U  # (n_layers, d_mlp, d_model), (d_model, d_vocab)
    V = W_U.shape[1]
    top = min(top, V)
    tok = model.tokenizer
    names = (lambda ids: [tok.decode([int(i)]) for i in ids]) if tok is not None else (lambda ids: [str(int(i)) for i in ids])
    rows = []
    for layer in layers:
        for a in range(0, W_out.shape[1], chunk):
            logits = np.asarray(W_out[layer, a:a + chunk], np.float32) @ np.asarray(W_U, np.float32)
            hi = np.argpartition(-logits, top - 1, axis=1)[:, :top]
            lo = np.argpartition(logits, top - 1, axis=1)[:, :top]
            for r in range(logits.shape[0]):
                # ties in value go to the smaller token id, so the lists are reproducible
                h = sorted(hi[r], key=lambda t: (-logits[r, t], t))
                l = sorted(lo[r], key=lambda t: (logits[r, t], t))
                rows.append((layer, a + r, [int(t) for t in h], names(h), [float(logits[r, t]) for t in h],
                             [int(t) for t in l], names(l), [float(logits[r, t]) for t in l]))
    return pd.DataFrame(rows, columns=["layer", "neuron", "top_token_ids", "top_tokens", "top_logits",
                                       "bottom_token_ids", "bottom_tokens", "bottom_logits"])


# ---------------------------------------------------------------------- the API
def _resolve_model(model, process_weights: bool):
    from .model import Model

    if isinstance(model, Model):
        return model
    p = bool(process_weights)
    return Model.from_pretrained(model, fold_ln=p, center_writing_weights=p, center_unembed=p, fold_value_biases=p)


def _model_flags(model) -> dict:
    c = model.cfg
    return dict(fold_ln=bool(c.fold_ln), center_writing_weights=bool(c.center_writing_weights),
                center_unembed=bool(c.center_unembed), fold_value_biases=bool(c.fold_value_biases))


def _atomic_json(path, obj):
    tmp = path + ".incomplete"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def neuroscope(model="demo", corpus=None, out: str = "neuroscope", layers: Optional[Sequence[int]] = None,
               k: int = 20, bins: int = 64, samples: int = 3, shard_docs: int = 200, batch_tokens: int = 8192,
               max_tokens: Optional[int] = None, prepend_bos: bool = True, workers: Optional[int] = None,
               scheduler: Optional[str] = None, threads: Optional[int] = None, process_weights: bool = True,
               logit_tokens: int = 10, site: bool = True, progress: bool = True) -> Atlas:
    """Build (or resume) the atlas of every neuron of ``layers`` (default all) over ``corpus``.

    ``model``: a name or folder (as :meth:`Model.from_pretrained`, weights processed as
    TransformerLens does when ``process_weights``) or a loaded :class:`Model` (its folder is what
    workers load). ``corpus``: a path or a :class:`Corpus` read from a path (default for the demo
    model: the bundled train corpus); each shard task reopens it. ``k``: top documents per neuron; ``bins``: histogram bins
    (16 x a power of two); ``samples``: examples per band. Documents are cut to ``max_tokens``
    (default: the model's context) and batched by ``batch_tokens`` as in ``max_activating``;
    ``shard_docs`` documents (whole batches) make a shard, the unit of work, recording and resuming.
    ``workers`` / ``scheduler`` / ``threads``: see :mod:`ctxlookup.distributed`.

    Returns an :class:`Atlas` (the tables); ``out`` holds them as Parquet, ``manifest.json``, and
    the site when ``site``. A rerun with the same arguments reuses the recorded shards.
    """
    from .corpus import Corpus

    t0 = time.perf_counter()
    m = _resolve_model(model, process_weights)
    if m.path is None:
        raise ValueError("the model must come from a folder (Model.load / from_pretrained), which workers load")
    if corpus is None:
        if model != "demo":
            raise ValueError("corpus is required (a JSONL[.gz], Parquet or folder of text files)")
        corpus = Corpus.demo("train")
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    L = m.cfg.n_layers
    layers = sorted(set(int(x) for x in (range(L) if layers is None else layers)))
    if not layers:
        raise ValueError("no layers given")
    bad = [x for x in layers if not 0 <= x < L]
    if bad:
        raise ValueError(f"layer {bad[0]} is outside [0, {L})")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    max_tokens = m.cfg.n_ctx if max_tokens is None else min(int(max_tokens), m.cfg.n_ctx)
    skip = 1 if prepend_bos else 0
    if max_tokens <= skip:
        raise ValueError(f"max_tokens = {max_tokens} leaves no document tokens")
    _core.Scope(np.array(layers, np.int32), m.cfg.d_mlp, k, bins, samples)  # checks bins, samples early
    local = workers is None and scheduler is None
    spec = dict(model_path=os.path.abspath(m.path), model_flags=_model_flags(m), layers=layers, d_mlp=m.cfg.d_mlp, k=k,
                bins=bins, samples=samples, prepend_bos=bool(prepend_bos), max_tokens=max_tokens,
                corpus=distributed.corpus_spec(corpus))
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    shards = distributed.plan_shards(corpus, batch_tokens, max_tokens, shard_docs)
    if not shards:
        raise ValueError(f"corpus {corpus.name} has no documents")
    key = dict(spec, corpus=dict(spec["corpus"], fingerprint=corpus.fingerprint()), batch_tokens=batch_tokens,
               shard_docs=shard_docs, kind="neuroscope")
    plan = distributed.plan_hash(shards, key)
    merged, run_stats = distributed.run_shards(_scan_task, _Merge(spec), spec, shards, os.path.join(out, "shards"), plan,
                                               workers=workers, scheduler=scheduler, threads=threads,
                                               progress=progress, desc="neuroscope")
    tables = tables_from_state(merged["state"], layers, m.cfg.d_mlp, skip, bins // 16)
    attr = logit_attribution(m, layers, top=logit_tokens)
    tables["neurons"] = tables["neurons"].merge(attr, on=["layer", "neuron"], how="left")
    for name in TABLES:
        tables[name].to_parquet(os.path.join(out, f"{name}.parquet.incomplete"), index=False)
        os.replace(os.path.join(out, f"{name}.parquet.incomplete"), os.path.join(out, f"{name}.parquet"))
    from . import __version__

    manifest = dict(kind="neuroscope", ctxlookup_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    model=dict(path=spec["model_path"], config=m.cfg.to_dict()), corpus=dict(key["corpus"], name=corpus.name),
                    options=dict(layers=layers, k=k, bins=bins, samples=samples, shard_docs=shard_docs,
                                 batch_tokens=batch_tokens, max_tokens=max_tokens, prepend_bos=bool(prepend_bos),
                                 process_weights=bool(process_weights), logit_tokens=logit_tokens),
                    plan=plan, shards=[dict(index=s.index, docs=s.docs, first_doc=s.batches[0][0],
                                            last_doc=s.batches[-1][-1]) for s in shards],
                    scan=dict(merged["meta"], **run_stats,
                              engine="local" if local else ("scheduler" if scheduler else f"LocalCluster({workers})")),
                    tables={t: len(tables[t]) for t in TABLES})
    atlas = Atlas(out, tables, manifest)
    if site:
        from .neuroscope_site import build_site

        manifest["site"] = build_site(atlas, m, corpus, progress=progress)
    manifest["wall_s"] = round(time.perf_counter() - t0, 3)
    _atomic_json(os.path.join(out, "manifest.json"), manifest)
    return atlas


# ---------------------------------------------------------------------- CLI
def add_cli(sub) -> None:
    """``ctxlookup neuroscope --model M --corpus C --out DIR [--layers ...] [--k 20] [--workers N | --scheduler A]``."""
    p = sub.add_parser("neuroscope", help="the atlas of every neuron: top texts, histograms, quantile examples, site",
                       description="One streaming pass over a corpus keeping, for every neuron of the chosen layers, "
                                   "the top-k documents, an activation histogram and examples per activation band; "
                                   "Parquet tables, a manifest and a static site in --out. Resumable; --workers or "
                                   "--scheduler run the shards on Dask with identical tables.")
    p.add_argument("--model", default="demo", help="checkpoint folder, Hugging Face name, or 'demo' (default)")
    p.add_argument("--corpus", help="JSONL[.gz], Parquet or folder of text files (default: the bundled corpus for the "
                                    "demo model; required otherwise)")
    p.add_argument("--out", default="neuroscope", help="output folder (default: %(default)s)")
    p.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",") if x.strip()], help="comma-separated layer indices, e.g. 4,5 (default: all)")
    p.add_argument("--k", type=int, default=20, help="top documents per neuron (default %(default)s)")
    p.add_argument("--bins", type=int, default=64, help="histogram bins, 16 x a power of two (default %(default)s)")
    p.add_argument("--samples", type=int, default=3, help="examples per activation band (default %(default)s)")
    p.add_argument("--shard-docs", type=int, default=200, help="documents per shard (default %(default)s)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per forward batch (default %(default)s)")
    p.add_argument("--max-docs", type=int, help="use at most the first N documents (default: all)")
    p.add_argument("--no-process-weights", dest="process_weights", action="store_false",
                   help="use the raw weights (default: processed as TransformerLens does)")
    p.add_argument("--no-site", dest="site", action="store_false", help="tables only (default: tables and the static site)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (default: one)")
    distributed.add_cli_options(p)
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    from .corpus import Corpus

    corpus = None
    if args.corpus:
        corpus = Corpus(args.corpus, limit=args.max_docs)
    elif args.model == "demo":
        corpus = Corpus.demo("train")
        corpus.limit = args.max_docs
    atlas = neuroscope(args.model, corpus, out=args.out, layers=args.layers, k=args.k, bins=args.bins,
                       samples=args.samples, shard_docs=args.shard_docs, batch_tokens=args.batch_tokens,
                       workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                       process_weights=args.process_weights, site=args.site, progress=args.progress)
    sc = atlas.manifest["scan"]
    print(f"neuroscope: {len(atlas['neurons'])} neurons, {sc['docs']} documents, {sc['tokens']} tokens; "
          f"{sc['scanned_shards']} shards scanned, {sc['reused_shards']} reused ({sc['engine']})")
    print(f"tables: {atlas.out}")
    if "site" in atlas.manifest:
        print(f"site: file://{atlas.manifest['site']['index']}")
    return 0
