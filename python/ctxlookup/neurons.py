"""Next-token neurons (METHOD §2): congruence of MLP neurons with tokens, glitch-token detection,
the random-neuron baseline and the an-neuron post's "mutually exclusive congruence" search.

Congruence of neuron ``i`` of layer ``l`` with token ``t`` is ``<W_out[l][i], u_t>`` where ``u_t``
is column ``t`` of ``W_U`` (``direction="unembed"``, the authors' notebooks, default) or row ``t``
of ``W_E`` (``direction="embed"``, the paper's text and the an-neuron post). A neuron's score is
its largest congruence over candidate tokens and its token is the argmax. The matrix is computed
blockwise in C (OpenBLAS): never ``(n_neurons, d_vocab)`` at once.
"""
from __future__ import annotations

import weakref
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from . import _core

__all__ = ["next_token_neurons", "random_neurons", "mutual_exclusive_congruence", "detect_glitch_tokens",
           "default_layers", "token_strings", "congruence", "token_counts", "frequency_direction",
           "top_congruent"]


def default_layers(model) -> tuple:
    """METHOD §2 defaults: ``(layers, top_k)``. GPT-2 large (36 layers): last 5, top 40; 24 layers
    (GPT-2 medium, Pythia-1.4b): last 4, top 20; otherwise (GPT-2 small, Pythia-160m): last 3, top 20."""
    L = model.cfg.n_layers
    if L >= 36:
        return list(range(L - 5, L)), 40
    if L >= 24:
        return list(range(L - 4, L)), 20
    return list(range(max(0, L - 3), L)), 20


def token_strings(model) -> list:
    """Each id of the model's vocabulary decoded alone (None for ids the tokenizer does not have)."""
    tok = model.tokenizer
    if tok is None:
        return [None] * model.cfg.d_vocab
    cache = _TOKEN_STRINGS.get(model)
    if cache is None:
        n = min(model.cfg.d_vocab, tok.vocab_size)
        cache = tok.to_str_tokens(np.arange(n, dtype=np.int32)) + [None] * (model.cfg.d_vocab - n)
        _TOKEN_STRINGS[model] = cache
    return cache


_TOKEN_STRINGS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its token strings


def _token_matrix(model, direction: str) -> np.ndarray:
    if direction == "unembed":
        return model.W_U.T  # (d_vocab, d_model), contiguous: the stored layout
    if direction == "embed":
        return model.W_E
    raise ValueError(f"direction must be 'unembed' or 'embed', got '{direction}'")


def _check_layers(model, layers) -> list:
    layers = [int(l) for l in layers]
    for l in layers:
        if not 0 <= l < model.cfg.n_layers:
            raise ValueError(f"layer {l} is outside [0, {model.cfg.n_layers})")
    return layers


def congruence(model, layer: int, neurons: Optional[Sequence[int]] = None, direction: str = "unembed") -> np.ndarray:
    """The dense congruence matrix ``(len(neurons), d_vocab)`` for a few neurons (for plots)."""
    _check_layers(model, [layer])
    W = model.W_out[layer]
    if neurons is not None:
        W = W[np.asarray(neurons)]
    return W @ _token_matrix(model, direction).T


def top_congruent(model, neurons, k: int = 10, k_neg: int = 5, direction: str = "unembed",
                  excluded: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """Each neuron's ``k`` most and ``k_neg`` least congruent tokens (the ``excluded`` token ids left
    out): ``[layer, neuron, side ("top"/"bottom"), rank, token_id, token, congruence]``, the top
    tokens by decreasing congruence, the bottom ones by increasing."""
    strs = token_strings(model)
    mask = np.zeros(model.cfg.d_vocab, bool)
    if excluded is not None:
        ids = np.asarray(list(excluded), np.int64)
        mask[ids[(ids >= 0) & (ids < len(mask))]] = True
    by_layer: dict = {}
    for l, n in sorted({(int(a), int(b)) for a, b in neurons}):
        by_layer.setdefault(l, []).append(n)
    rows = []
    for l, ns in by_layer.items():
        for c0 in range(0, len(ns), 256):
            chunk = ns[c0:c0 + 256]
            C = congruence(model, l, chunk, direction).astype(np.float32)      # (chunk, d_vocab)
            hi = np.where(mask, -np.inf, C)
            lo = np.where(mask, np.inf, C)
            for r, n in enumerate(chunk):
                top = np.argpartition(-hi[r], min(k, hi.shape[1] - 1))[:k]
                top = top[np.argsort(-hi[r][top])]
                bot = np.argpartition(lo[r], min(k_neg, lo.shape[1] - 1))[:k_neg]
                bot = bot[np.argsort(lo[r][bot])]
                for side, ids in (("top", top), ("bottom", bot)):
                    rows += [dict(layer=l, neuron=n, side=side, rank=j, token_id=int(t), token=strs[t],
                                  congruence=float(C[r, t])) for j, t in enumerate(ids)]
    df = pd.DataFrame(rows, columns=["layer", "neuron", "side", "rank", "token_id", "token", "congruence"])
    df.attrs.update(direction=direction, n_excluded=int(mask.sum()), k=int(k), k_neg=int(k_neg))
    return df.astype({"token": "object"})


def whole_word_mask(strings: Sequence[Optional[str]]) -> np.ndarray:
    """The authors' candidate filter: the decoded token starts with a space and is longer than 2 characters."""
    return np.array([s is not None and s.startswith(" ") and len(s) > 2 for s in strings], dtype=bool)


def detect_glitch_tokens(model, corpus=None, max_docs: int = 2000, norm_z: float = -4.0, min_count: int = 5,
                         frequency_z: Optional[float] = -3.0, counts: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Tokens that produce spurious top neurons, with the reason each was flagged.

    Reasons: ``padding`` (an embedding row the tokenizer never produces: padded vocabularies),
    ``unreachable`` (encoding the token's own text does not give the token back: BPE never emits
    it, so it was never trained as an input; special tokens excepted), ``low_embedding_norm`` (the
    centred embedding's norm is a robust outlier below the rest, z < ``norm_z`` with the median and
    1.4826 x MAD: the signature of under-trained tokens), and, with a ``corpus``, ``rare_in_corpus``
    (fewer than ``min_count`` occurrences in its first ``max_docs`` documents: BPE pieces that text
    almost always merges further, such as " citiz", are under-trained, and a neuron whose token
    the corpus never shows cannot be studied with prompts from it), and ``under_trained``: the
    token's unembedding lies abnormally far on the rare side of the model's token-frequency
    direction (:func:`frequency_direction` from the corpus counts): the centred unembedding's
    projection on it has a robust z (median, 1.4826 x MAD over the real tokens) below
    ``frequency_z`` (None: no such check). Tokens the model barely saw in training keep the push
    every softmax gives non-targets and little else, so their unembeddings line up along that
    direction, and neurons that write along it (token-frequency neurons) get their largest
    congruence with whichever such token is most extreme, whatever the neuron does. (On the
    4-layer demo model that preceded the bundled one it flagged 60 tokens, and without it 9 of the
    10 most congruent neurons pointed at one of them; on the bundled 6-layer model it flags 3; see the
    README.) ``corpus_count`` and ``frequency_z`` then give every flagged token's
    occurrences and projection z. ``counts``: the corpus's :func:`token_counts`, when the caller
    has them already (instead of ``corpus``). Returns a DataFrame ``[token_id, token, reason,
    norm_z]`` (and those two columns with a corpus).
    """
    V = model.cfg.d_vocab
    strings = token_strings(model)
    rows = []
    E = np.asarray(model.W_E, dtype=np.float64)
    norms = np.linalg.norm(E - E.mean(0), axis=1)
    tok = model.tokenizer
    n_real = tok.vocab_size if tok is not None else V
    med = np.median(norms[:n_real])
    mad = 1.4826 * np.median(np.abs(norms[:n_real] - med)) or 1e-12
    z = (norms - med) / mad
    special = set(tok.special_token_ids) if tok is not None else set()
    for t in range(n_real, V):
        rows.append((t, None, "padding", float(z[t])))
    if tok is not None:
        texts = [strings[i] for i in range(n_real)]
        encoded = tok.encode_batch([s if s is not None else "" for s in texts], allow_special=True)
        for t in range(n_real):
            if t in special:
                continue
            e = encoded[t]
            if len(e) != 1 or int(e[0]) != t:
                rows.append((t, strings[t], "unreachable", float(z[t])))
    flagged = {r[0] for r in rows}
    for t in np.nonzero(z[:n_real] < norm_z)[0]:
        if int(t) not in flagged:
            rows.append((int(t), strings[t], "low_embedding_norm", float(z[t])))
    if counts is not None:
        counts = _checked_counts(model, counts)
    elif corpus is not None and tok is not None:
        counts = token_counts(model, corpus, max_docs)
    if counts is not None:
        flagged = {r[0] for r in rows}
        for t in np.nonzero(counts[:n_real] < min_count)[0]:
            if int(t) not in flagged and int(t) not in special:
                rows.append((int(t), strings[t], "rare_in_corpus", float(z[t])))
        fz = _frequency_z(model, counts, n_real)
        if frequency_z is not None:
            flagged = {r[0] for r in rows}
            for t in np.nonzero(fz[:n_real] < frequency_z)[0]:
                if int(t) not in flagged and int(t) not in special:
                    rows.append((int(t), strings[t], "under_trained", float(z[t])))
    df = pd.DataFrame(rows, columns=["token_id", "token", "reason", "norm_z"]).sort_values("token_id", kind="stable")
    df = df.reset_index(drop=True)
    if counts is not None:
        df["corpus_count"] = counts[df["token_id"].to_numpy()]
        df["frequency_z"] = fz[df["token_id"].to_numpy()]
    return df


def _frequency_z(model, counts, n_real) -> np.ndarray:
    """Robust z of each token's centred unembedding projected on the frequency direction (median
    and 1.4826 x MAD over the ``n_real`` tokenizer tokens); negative is the rare side."""
    U = np.asarray(_token_matrix(model, "unembed"), dtype=np.float64)
    U = U - U[:n_real].mean(0)
    p = U @ frequency_direction(model, counts, "unembed")
    med = np.median(p[:n_real])
    mad = 1.4826 * np.median(np.abs(p[:n_real] - med)) or 1e-12
    return (p - med) / mad


def token_counts(model, corpus, max_docs: int = 2000, token_cache=None) -> np.ndarray:
    """How often each token id occurs in the first ``max_docs`` documents of ``corpus`` (int64,
    d_vocab). ``token_cache``: the corpus's :class:`ctxlookup.batching.DocTokens`."""
    from .batching import doc_tokens, first

    if model.tokenizer is None:
        raise ValueError("token counts need the model's tokenizer")
    V = model.cfg.d_vocab
    encoded = doc_tokens(model, list(first(corpus, max_docs)), prepend_bos=False, cache=token_cache)
    ids = np.concatenate(encoded) if encoded else np.zeros(0, np.int32)
    return np.bincount(ids[ids < V], minlength=V).astype(np.int64, copy=False)


def _checked_counts(model, counts) -> np.ndarray:
    """``counts`` as an array, after checking there is one non-negative count per token."""
    counts = np.asarray(counts)
    if counts.shape != (model.cfg.d_vocab,) or (counts < 0).any():
        raise ValueError(f"counts must be {model.cfg.d_vocab} non-negative numbers, one per token")
    return counts


def _log_frequency(model, counts) -> np.ndarray:
    """Centred log of add-one token counts."""
    f = np.log(_checked_counts(model, counts).astype(np.float64) + 1.0)
    return f - f.mean()


def _frequency(model, remove_frequency, direction):
    """``(direction vector, centred log frequency)`` for a ``remove_frequency`` argument (a corpus or
    per-token counts), or ``(None, None)``."""
    if remove_frequency is None:
        return None, None
    counts = remove_frequency if isinstance(remove_frequency, np.ndarray) else token_counts(model, remove_frequency)
    return frequency_direction(model, counts, direction), _log_frequency(model, counts)


def frequency_direction(model, counts, direction: str = "unembed") -> np.ndarray:
    """The residual-stream direction of token frequency: ``U @ f / |U @ f|``, where ``U`` is the
    token matrix of ``direction`` as ``(d_model, d_vocab)`` and ``f`` the centred log frequency of
    every token (add-one ``counts``). A vector ``w`` has logit pattern ``w @ U``; removing its
    component along this direction makes that pattern exactly uncorrelated with ``f``."""
    f = _log_frequency(model, counts)
    v = np.asarray(_token_matrix(model, direction), dtype=np.float64).T @ f
    n = np.linalg.norm(v)
    if n == 0:
        raise ValueError("the token counts are all equal: there is no frequency direction")
    return v / n


def _layer_weights(model, layer, freq_dir):
    W = model.W_out[layer]
    if freq_dir is None:
        return np.ascontiguousarray(W)
    W = np.asarray(W, dtype=np.float64)
    return np.ascontiguousarray(W - np.outer(W @ freq_dir, freq_dir), dtype=np.float32)


def _scores(W, U, allowed, top):
    return _core.congruence(W, U, allowed.astype(np.uint8) if allowed is not None else None, top)


def next_token_neurons(model, layers: Optional[Iterable[int]] = None, top_k: Optional[int] = None,
                       direction: str = "unembed", token_filter: Optional[str] = "whole_word",
                       exclude_glitch: bool = True, top_tokens: int = 5, glitch: Optional[pd.DataFrame] = None,
                       corpus=None, remove_frequency=None, token_rule: Optional[str] = None,
                       protocol: str = "paper") -> pd.DataFrame:
    """The ``top_k`` neurons per layer with the largest congruence to a candidate token.

    Returns a DataFrame with columns ``layer, neuron, token_id, token, congruence, rank`` (rank
    within its layer, 0 = most congruent) and ``top_token_ids, top_tokens, top_congruences`` (the
    neuron's best ``top_tokens`` candidates).

    ``token_rule`` (default: the ``protocol``'s, see :mod:`ctxlookup.protocols`) says how a
    neuron gets its token:

    - ``"skip"`` (protocols ``paper`` and ``authors-2023``; the authors' ``find_neurons``): the
      neuron's token is its argmax over **all** tokens; neurons are taken in order of that score,
      and a neuron whose token fails ``token_filter`` is skipped (``df.attrs["skipped_neurons"]``
      lists the ones met before the layer's ``top_k`` were found, with their tokens), as is one
      whose token is a glitch token (``df.attrs["excluded_neurons"]``; the authors rejected such
      neurons by hand).
    - ``"rename"`` (protocol ``ctxlookup``): only tokens passing ``token_filter`` and not glitch
      tokens are candidates, so every neuron is named after its best such token.

    ``token_filter="whole_word"`` accepts tokens that start with a space and are longer than 2
    characters (the authors'); None accepts every token. With ``exclude_glitch``, tokens from
    :func:`detect_glitch_tokens` (run with ``corpus``, the corpus the prompts will come from, when
    given; or the table ``glitch``) are not accepted; ``df.attrs["excluded_tokens"]`` lists them
    with reasons. Every value in ``df.attrs`` is JSON-serialisable (lists of records, not
    DataFrames), so ``to_parquet`` round-trips; ``pd.DataFrame(df.attrs["excluded_tokens"])``
    gives the table.

    ``remove_frequency`` (not the paper's; default None): a corpus, or per-token counts. Each
    neuron's output weights lose their component along :func:`frequency_direction` before the
    congruence is taken, so its logit pattern is uncorrelated with log token frequency. In small
    or briefly trained models the most congruent neurons are token-frequency neurons (Stolfo et
    al. 2024, "Confidence regulation neurons"): they raise or lower tokens by how common they
    are, and their "top token" is just the rarest or commonest candidate. ``df.attrs``
    records ``frequency_direction`` and, per selected neuron, the correlation its raw logit
    pattern had with log frequency (column ``frequency_r``).
    """
    from . import protocols

    token_rule = protocols.get(protocol).token_rule if token_rule is None else token_rule
    if token_rule not in ("skip", "rename"):
        raise ValueError(f"token_rule must be 'skip' or 'rename', got '{token_rule}'")
    d_layers, d_top = default_layers(model)
    layers = _check_layers(model, d_layers if layers is None else layers)
    top_k = d_top if top_k is None else int(top_k)
    if top_k < 1 or top_k > model.cfg.d_mlp:
        raise ValueError(f"top_k must be in [1, {model.cfg.d_mlp}], got {top_k}")
    U = np.ascontiguousarray(_token_matrix(model, direction))
    strings = token_strings(model)
    V = model.cfg.d_vocab
    if token_filter == "whole_word":
        if model.tokenizer is None:
            raise ValueError("token_filter='whole_word' needs the model's tokenizer; pass token_filter=None")
        allowed = whole_word_mask(strings)
    elif token_filter is None:
        allowed = np.ones(V, bool)
    else:
        raise ValueError(f"token_filter must be 'whole_word' or None, got '{token_filter}'")
    excluded_tokens = pd.DataFrame(columns=["token_id", "token", "reason", "norm_z"])
    if exclude_glitch:
        excluded_tokens = detect_glitch_tokens(model, corpus=corpus) if glitch is None else glitch
        clean = allowed.copy()
        clean[excluded_tokens["token_id"].to_numpy(dtype=np.int64)] = False
    else:
        clean = allowed
    if not clean.any():
        raise ValueError("no candidate tokens are left after filtering")
    freq_dir, f = _frequency(model, remove_frequency, direction)
    if freq_dir is not None:
        U64 = np.asarray(U, dtype=np.float64)  # (d_vocab, d_model)
        g, G, ssum = U64.T @ f, U64.T @ U64, U64.sum(0)
    rows, excluded_neurons, skipped_neurons = [], [], []
    bad = set(excluded_tokens["token_id"].tolist()) if exclude_glitch else set()

    def neuron_record(layer, n, ids, vals):
        t = int(ids[n, 0])
        return dict(layer=layer, neuron=int(n), token_id=t, token=strings[t], congruence=float(vals[n, 0]))

    for layer in layers:
        W = _layer_weights(model, layer, freq_dir)
        if token_rule == "rename":
            ids, vals = _scores(W, U, clean, top_tokens)
            order = np.lexsort((np.arange(len(vals)), -vals[:, 0]))[:top_k]
        else:  # the authors': the argmax over all tokens names the neuron; skip it when that token is not accepted
            ids, vals = _scores(W, U, None, top_tokens)
            picked = []
            for n in np.lexsort((np.arange(len(vals)), -vals[:, 0])):
                t = int(ids[n, 0])
                if not allowed[t]:
                    skipped_neurons.append(neuron_record(layer, n, ids, vals))
                elif t in bad:
                    excluded_neurons.append(neuron_record(layer, n, ids, vals))
                else:
                    picked.append(int(n))
                    if len(picked) == top_k:
                        break
            order = np.asarray(picked, dtype=np.int64)
        if freq_dir is not None:  # correlation of each selected neuron's raw logit pattern w @ U^T with f
            Wr = np.asarray(model.W_out[layer][order], dtype=np.float64)
            num = Wr @ g  # f is centred, so the pattern's mean drops out
            var = np.einsum("kd,de,ke->k", Wr, G, Wr) - (Wr @ ssum) ** 2 / V
            r_of = dict(zip(order.tolist(), num / (np.sqrt(np.maximum(var, 1e-300)) * np.linalg.norm(f))))
        for rank, n in enumerate(order):
            rows.append(dict(neuron_record(layer, n, ids, vals), rank=rank, top_token_ids=[int(i) for i in ids[n]],
                             top_tokens=[strings[i] for i in ids[n]], top_congruences=[float(v) for v in vals[n]],
                             **({"frequency_r": float(r_of[int(n)])} if freq_dir is not None else {})))
        if token_rule == "rename" and bad:  # the neurons that would have been selected through a glitch token
            ids_all, vals_all = _scores(W, U, allowed, 1)
            for n in np.lexsort((np.arange(len(vals_all)), -vals_all[:, 0]))[:top_k]:
                if int(ids_all[n, 0]) in bad:
                    excluded_neurons.append(neuron_record(layer, n, ids_all, vals_all))
    cols = ["layer", "neuron", "token_id", "token", "congruence", "rank", "top_token_ids", "top_tokens", "top_congruences"]
    df = pd.DataFrame(rows, columns=cols + (["frequency_r"] if freq_dir is not None else []))
    df.attrs.update(direction=direction, token_filter=token_filter, token_rule=token_rule, exclude_glitch=exclude_glitch,
                    frequency_direction=None if freq_dir is None else [float(x) for x in freq_dir],
                    excluded_tokens=_records(excluded_tokens), excluded_neurons=excluded_neurons,
                    skipped_neurons=skipped_neurons)
    return df


def _records(df: pd.DataFrame) -> list:
    """A table as JSON-serialisable records (NaN as None), for ``DataFrame.attrs``."""
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and v != v else v.item() if hasattr(v, "item") else v)
                    for k, v in rec.items()})
    return out


def random_neurons(model, layers: Optional[Iterable[int]] = None, n: int = 20, seed: int = 0,
                   direction: str = "unembed", token_filter: Optional[str] = "protocol",
                   remove_frequency=None, protocol: str = "paper") -> pd.DataFrame:
    """The §5.2.2 baseline: ``n`` neurons per layer drawn uniformly without replacement (seeded),
    each with its most congruent candidate token. Same columns as :func:`next_token_neurons`;
    ``remove_frequency`` as there (the tokens are then assigned after the projection).
    ``token_filter``: the candidate tokens, None (every token: the authors' baseline, protocols
    ``paper`` and ``authors-2023``) or ``"whole_word"`` (protocol ``ctxlookup``); by default the
    ``protocol``'s."""
    from . import protocols

    if token_filter == "protocol":
        token_filter = protocols.get(protocol).random_token_filter
    d_layers, _ = default_layers(model)
    layers = _check_layers(model, d_layers if layers is None else layers)
    if not 1 <= n <= model.cfg.d_mlp:
        raise ValueError(f"n must be in [1, {model.cfg.d_mlp}], got {n}")
    rng = np.random.default_rng(seed)
    U = np.ascontiguousarray(_token_matrix(model, direction))
    strings = token_strings(model)
    allowed = whole_word_mask(strings) if token_filter == "whole_word" and model.tokenizer is not None else None
    freq_dir, _ = _frequency(model, remove_frequency, direction)
    rows = []
    for layer in layers:
        picked = np.sort(rng.choice(model.cfg.d_mlp, size=n, replace=False))
        W = np.ascontiguousarray(_layer_weights(model, layer, freq_dir)[picked])
        ids, vals = _core.congruence(W, U, None if allowed is None else allowed.astype(np.uint8), 5)
        for rank, (nr, i, v) in enumerate(zip(picked, ids, vals)):
            rows.append(dict(layer=layer, neuron=int(nr), token_id=int(i[0]), token=strings[i[0]], congruence=float(v[0]),
                             rank=rank, top_token_ids=[int(x) for x in i], top_tokens=[strings[x] for x in i],
                             top_congruences=[float(x) for x in v]))
    df = pd.DataFrame(rows)
    df.attrs.update(direction=direction, seed=seed, baseline="random", token_filter=token_filter,
                    frequency_direction=None if freq_dir is None else [float(x) for x in freq_dir])
    return df


def mutual_exclusive_congruence(model, top: int = 20, direction: str = "embed", layers=None) -> pd.DataFrame:
    """The an-neuron post's search over all neurons of all layers (or ``layers``) and all tokens:
    pairs where the neuron's top token is ``t`` and ``t``'s top neuron is that neuron, scored by
    (top1 - top2 congruence over tokens, for the neuron) x (top1 - top2 over neurons, for the token).
    Returns the best ``top`` pairs: ``[layer, neuron, token_id, token, congruence, neuron_gap, token_gap, score]``.
    """
    layers = _check_layers(model, range(model.cfg.n_layers) if layers is None else layers)
    U = np.ascontiguousarray(_token_matrix(model, direction))
    V, M = model.cfg.d_vocab, model.cfg.d_mlp
    col_idx = np.full((V, 2), -1, np.int64)
    col_val = np.full((V, 2), -np.inf, np.float32)
    per_neuron = []
    for i, layer in enumerate(layers):
        ids, vals = _core.congruence(np.ascontiguousarray(model.W_out[layer]), U, None, 2, col_idx, col_val, i * M)
        per_neuron.append((layer, ids, vals))
    strings = token_strings(model)
    rows = []
    for i, (layer, ids, vals) in enumerate(per_neuron):
        for n in range(M):
            t = int(ids[n, 0])
            if col_idx[t, 0] != i * M + n:
                continue
            ng = float(vals[n, 0] - vals[n, 1])
            tg = float(col_val[t, 0] - col_val[t, 1]) if col_idx[t, 1] >= 0 else float("inf")
            rows.append(dict(layer=layer, neuron=n, token_id=t, token=strings[t], congruence=float(vals[n, 0]),
                             neuron_gap=ng, token_gap=tg, score=ng * tg))
    df = pd.DataFrame(rows, columns=["layer", "neuron", "token_id", "token", "congruence", "neuron_gap", "token_gap", "score"])
    return df.sort_values(["score", "layer", "neuron"], ascending=[False, True, True], kind="stable").head(top).reset_index(drop=True)
