"""The one place that turns documents and prompts into model input.

Every stage that runs the model on text gets its input here:

- :func:`with_bos`: BOS prepended to token rows (the model's BOS id, or a clear error when it has
  none); :func:`context_length`: a token limit cut to the model's context.
- :func:`doc_tokens`: documents tokenized, BOS first when asked, cut to a token limit; with a
  :class:`DocTokens` cache a document is encoded once per run however many stages read it.
- :func:`prompt_tokens`: truncated prompts as the model reads them (BOS + their tokens, or BOS +
  their text encoded again under the authors' protocols).
- :func:`doc_batches`: documents grouped by a cheap over-estimate of their tokens (the scan and the
  evidence pass); :func:`token_batches`: token rows grouped by length under a token budget
  (truncation, attribution, ablation); :func:`observe_docs`: one batch of documents through an
  observer pass of the core (the scan, its shards on Dask, the Neuroscope pass).
- :func:`progress`: a tqdm bar (None without tqdm).
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np

__all__ = ["require_bos", "with_bos", "context_length", "as_corpus", "DocTokens", "doc_tokens", "prompt_tokens", "first",
           "doc_batches", "token_batches", "observe_docs", "progress"]


def require_bos(model, why: str = "prepend_bos=True") -> int:
    """The model's BOS id; ValueError naming ``why`` BOS was wanted when the model has none."""
    bos = model.bos_token_id
    if bos is None:
        raise ValueError(f"{why} but the model has no BOS token id (neither its tokenizer nor config.json names one)")
    return int(bos)


def with_bos(model, rows: Iterable[np.ndarray], prepend_bos: bool = True, why: str = "prepend_bos=True") -> list:
    """Token rows as int32 arrays, each with the model's BOS id first when ``prepend_bos``."""
    if not prepend_bos:
        return [np.asarray(r, np.int32) for r in rows]
    head = np.array([require_bos(model, why)], np.int32)
    return [np.concatenate([head, np.asarray(r, np.int32)]) for r in rows]


def context_length(model, max_tokens: Optional[int] = None) -> int:
    """``max_tokens`` cut to the model's context (``n_ctx`` when None)."""
    n_ctx = model.cfg.n_ctx
    return n_ctx if max_tokens is None else min(int(max_tokens), n_ctx)


def as_corpus(corpus):
    """A :class:`ctxlookup.Corpus` (a path or a list of texts is opened as one)."""
    from .corpus import Corpus

    return corpus if isinstance(corpus, Corpus) else Corpus(corpus)


class DocTokens:
    """A corpus's documents encoded once: ``doc_id`` -> its token ids (no BOS, not cut), for
    ``max_cached_tokens`` tokens at most (documents past that are encoded again when asked,
    so a large corpus costs no more memory than the budget). One cache belongs to one corpus and
    one tokenizer: a run directory keeps one per corpus."""

    def __init__(self, max_cached_tokens: int = 1 << 26):
        self.rows: Dict[int, np.ndarray] = {}
        self.budget = int(max_cached_tokens)
        self.held = 0
        self.encoded = 0  # documents encoded (for the run's statistics and the tests)

    def get(self, model, docs: list) -> List[np.ndarray]:
        """Token ids of each :class:`ctxlookup.Document` of ``docs``, encoding only those not held."""
        missing = [d for d in docs if d.doc_id not in self.rows]
        got = {}
        if missing:
            enc = model.require_tokenizer().encode_batch([d.text for d in missing])
            self.encoded += len(missing)
            for d, r in zip(missing, enc):
                got[d.doc_id] = r
                if self.held + len(r) <= self.budget:
                    self.rows[d.doc_id] = r
                    self.held += len(r)
        return [self.rows[d.doc_id] if d.doc_id in self.rows else got[d.doc_id] for d in docs]


def doc_tokens(model, docs: list, prepend_bos: bool = True, max_tokens: Optional[int] = None,
               cache: Optional[DocTokens] = None) -> List[np.ndarray]:
    """Documents -> int32 token rows, BOS first when ``prepend_bos``, each cut to ``max_tokens``
    (BOS included; None: not cut). ``docs``: :class:`ctxlookup.Document` s, or texts (which
    bypass ``cache``)."""
    if docs and isinstance(docs[0], str):
        rows = model.require_tokenizer().encode_batch(list(docs))
    elif cache is not None:
        rows = cache.get(model, list(docs))
    else:
        rows = model.require_tokenizer().encode_batch([d.text for d in docs])
    rows = with_bos(model, rows, prepend_bos)
    return rows if max_tokens is None else [r[:max_tokens] for r in rows]


def prompt_tokens(model, prompts, retokenize: bool = False) -> list:
    """Each prompt's model input: its ``tokens``, after BOS when the prompts were made with one
    (``prompts.attrs["prepend_bos"]``, default True).

    ``retokenize=True`` (the authors', protocols ``paper`` and ``authors-2023``): BOS and the
    prompt's ``text`` encoded again, as their attribution and ablation ran ``to_tokens(text)`` on
    the truncated text after its line breaks became spaces (which can tokenize differently from
    the truncated tokens)."""
    if retokenize:
        if "text" not in prompts.columns:
            raise ValueError("retokenize needs the prompts' 'text' column")
        encoded = model.require_tokenizer().encode_batch(list(prompts["text"]))
        out = with_bos(model, encoded, why="retokenize prepends BOS,")
        if any(len(a) == 1 for a in out):
            raise ValueError("a prompt has no tokens")
        return out
    bos = prompts.attrs.get("prepend_bos", True)
    out = with_bos(model, (np.asarray(list(t), np.int32) for t in prompts["tokens"]), bos,
                   why="the prompts expect a BOS token")
    if any(len(a) == 0 for a in out):
        raise ValueError("a prompt has no tokens")
    return out


def doc_batches(docs: Iterable, batch_tokens: int, max_tokens: int) -> Iterator[list]:
    """Documents in order, grouped until a cheap over-estimate of their tokens (``len(text) // 2 +
    2``, at most ``max_tokens`` each) reaches ``batch_tokens``; the last group may be smaller."""
    buf, est = [], 0
    for doc in docs:
        buf.append(doc)
        est += min(len(doc.text) // 2 + 2, max_tokens)
        if est >= batch_tokens:
            yield buf
            buf, est = [], 0
    if buf:
        yield buf


def observe_docs(model, docs: list, prepend_bos: bool, max_tokens: int, observe, stats: dict,
                 cache: Optional[DocTokens] = None) -> None:
    """One batch of documents through an observer pass: each document's tokens (:func:`doc_tokens`),
    those with no token past BOS left out, the rest concatenated and given to ``observe(tokens,
    lengths, doc_ids, skip)`` (``skip``: leading positions that never count, 1 with BOS). ``stats``
    (``docs``, ``tokens``, ``skipped_empty``) is updated in place."""
    skip = 1 if prepend_bos else 0
    toks = doc_tokens(model, docs, prepend_bos, max_tokens, cache=cache)
    keep = [i for i, t in enumerate(toks) if len(t) > skip]
    stats["skipped_empty"] += len(toks) - len(keep)
    stats["docs"] += len(docs)
    if keep:
        lens = np.array([len(toks[i]) for i in keep], np.int32)
        observe(np.concatenate([toks[i] for i in keep]), lens, np.array([docs[i].doc_id for i in keep], np.int64), skip)
        stats["tokens"] += int(lens.sum())


def first(docs: Iterable, n: Optional[int]) -> Iterable:
    """The first ``n`` of ``docs`` (all when None)."""
    return docs if n is None else itertools.islice(docs, n)


def token_batches(lengths, batch_tokens: int) -> Iterator[np.ndarray]:
    """Indices of rows grouped shortest first, each group's lengths summing to at most
    ``batch_tokens`` (a longer row makes a group alone)."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    i = 0
    while i < len(order):
        j, tot = i, 0
        while j < len(order) and (tot + lengths[order[j]] <= batch_tokens or j == i):
            tot += lengths[order[j]]
            j += 1
        yield order[i:j]
        i = j


def progress(total: Optional[int] = None, desc: str = "", unit: str = "doc", enabled: bool = True):
    """A tqdm bar, or None when not ``enabled`` or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit=unit, smoothing=0.1)
