"""The an-neuron check of many neurons (next_token_evidence, one batched pass over a corpus) against
each document run alone, with scipy's Mann-Whitney U and Spearman as oracles; the width bins' merging."""
import numpy as np
import pytest

import ctxlookup
import pandas as pd

from conftest import REORDER_RTOL, SHARED
from ctxlookup.evidence import next_token_evidence


# ---- activation against prediction: the batched one-pass scan against one document at a time ----

@pytest.fixture(scope="module")
def text_model(text_model_dir):
    return ctxlookup.Model.load(text_model_dir)


def _brute_positions(model, neurons, texts):
    """Each document alone: BOS + tokens cut to n_ctx; activations at every position but BOS."""
    acts, tops = [], []
    for text in texts:
        ids = np.concatenate([[model.bos_token_id], model.tokenizer.encode(text)])[: model.cfg.n_ctx]
        if len(ids) < 2:
            continue
        names = sorted({f"blocks.{l}.mlp.hook_post" for l, _ in neurons})
        logits, cache = model.run_with_cache(ids[None], names_filter=names)
        acts.append(np.stack([cache[f"blocks.{l}.mlp.hook_post"][0, 1:, i] for l, i in neurons], 1))
        tops.append(logits[0, 1:].argmax(-1))
    return np.concatenate(acts).astype(np.float64), np.concatenate(tops)


N_DOCS = 25


@pytest.fixture(scope="module")
def tiny_texts():
    corpus = ctxlookup.Corpus(SHARED / "data" / "corpus" / "tiny.jsonl")
    return [d.text for _, d in zip(range(N_DOCS), corpus)]


def _brute_width_groups(x, bins, min_positions):
    edges = np.linspace(x.min(), x.max(), bins + 1)
    raw = np.clip(np.digitize(x, edges[1:-1]), 0, bins - 1)
    groups, cur = [], []
    for b in reversed(range(bins)):
        cur.append(b)
        if np.isin(raw, cur).sum() >= min_positions:
            groups.append(cur)
            cur = []
    if cur:
        if groups:
            groups[-1] += cur
        else:
            groups.append(cur)
    return [np.isin(raw, g) for g in reversed(groups)]


@pytest.mark.parametrize("binning", ["width", "quantile"])
def test_next_token_evidence_matches_scipy(text_model, tiny_texts, binning):
    from scipy.stats import mannwhitneyu, spearmanr

    neurons = [(2, 11), (1, 40), (2, 70), (0, 3)]
    a, tops = _brute_positions(text_model, neurons, tiny_texts)
    common = np.bincount(tops).argsort()[::-1]
    tokens = [int(common[0]), int(common[1]), int(common[0]), text_model.cfg.d_vocab - 1]
    assert not (tops == tokens[3]).any()  # one token never predicted: no AUC
    frame = pd.DataFrame({"layer": [l for l, _ in neurons], "neuron": [i for _, i in neurons], "token_id": tokens})
    corpus = ctxlookup.Corpus(SHARED / "data" / "corpus" / "tiny.jsonl")
    bins, minp = 6, 150
    ev = next_token_evidence(text_model, frame, corpus, bins=bins, binning=binning, min_positions=minp,
                             max_docs=N_DOCS, batch_tokens=500)
    assert ev[["layer", "neuron", "token_id"]].values.tolist() == frame.values.tolist()
    assert ev.attrs == dict(n_docs=N_DOCS, bins=bins, binning=binning, min_positions=minp)
    for j, row in ev.iterrows():
        x, t = a[:, j], tops == tokens[j]
        assert row.n_positions == len(x) and row.n_top == t.sum()
        if t.any():
            # the stage's activations come from batches, the oracle's from one document at a time: the same
            # numbers up to float32 reordering (REORDER_RTOL), so near-ties may swap. The AUC must lie between
            # scipy's with every positive pushed down and every negative up by that much, and the reverse.
            d = REORDER_RTOL * float(np.abs(x).max())
            n_pairs = t.sum() * (~t).sum()
            lo = mannwhitneyu(x[t] - d, x[~t] + d).statistic / n_pairs
            hi = mannwhitneyu(x[t] + d, x[~t] - d).statistic / n_pairs
            assert lo - 1e-12 <= row.auc <= hi + 1e-12 and hi - lo < 1e-3
        else:
            assert np.isnan(row.auc) and np.isnan(row.bin_spearman) and not row.rising
        if binning == "quantile":
            masks = [np.isin(np.arange(len(x)), p) for p in np.array_split(np.argsort(x, kind="stable"), bins)]
        else:
            masks = _brute_width_groups(x, bins, minp)
            assert all(m.sum() >= minp for m in masks)
        frac = [t[m].mean() for m in masks]
        assert row.n_bins == len(masks) and list(row.bin_counts) == [int(m.sum()) for m in masks]
        # the edges bound their bins: each bin's activations lie between its two edges
        edges = np.asarray(row.bin_edges)
        assert len(edges) == len(masks) + 1 and (np.diff(edges) >= 0).all() and edges[-1] == pytest.approx(x.max())
        d = REORDER_RTOL * float(np.abs(x).max())  # batched vs one document at a time, as for the AUC
        for b, m in enumerate(masks):
            assert x[m].min() >= edges[b] - d and x[m].max() <= edges[b + 1] + d
            if binning == "quantile":
                assert x[m].min() == pytest.approx(edges[b], rel=0, abs=d)
        np.testing.assert_allclose(row.bin_fractions, frac, atol=1e-12)
        assert row.fraction_top_bin == pytest.approx(frac[-1]) and row.fraction_lowest_bin == pytest.approx(frac[0])
        if np.ptp(frac) > 0 and len(frac) >= 3:
            rho = spearmanr(np.arange(len(frac)), frac).statistic
            assert row.bin_spearman == pytest.approx(rho)
            assert row.rising == bool(t.any() and rho >= 0.8 and frac[-1] >= 2 * frac[0])
    # without token ids: each neuron's most congruent token
    plain = next_token_evidence(text_model, neurons[:2], corpus, max_docs=3)
    want = [int(np.argmax(text_model.W_out[l][i] @ text_model.W_U)) for l, i in neurons[:2]]
    assert plain.token_id.tolist() == want
    with pytest.raises(ValueError, match="no neurons"):
        next_token_evidence(text_model, [], corpus)
    with pytest.raises(ValueError, match="binning"):
        next_token_evidence(text_model, neurons[:1], corpus, binning="log")


def test_width_bins_merge_from_the_top():
    from ctxlookup.evidence import width_bins as _width_bins

    a = np.concatenate([np.zeros(500), np.linspace(1, 10, 40)])  # the bulk at 0, a sparse tail
    which, n, edges = _width_bins(a, 10, 100)
    assert n == 1 and edges.tolist() == [0, 10]  # the tail never reaches 100: it all joins the lowest bin
    which, n, edges = _width_bins(a, 10, 20)
    counts = np.bincount(which)
    assert n == len(counts) and (counts >= 20).all() and counts[0] >= 500
    assert (np.diff(which[np.argsort(a, kind="stable")]) >= 0).all()  # bins follow the activation order
    # merged bins keep the equal-width grid's edges: 0, 1, ..., 10 with some left out
    assert len(edges) == n + 1 and edges[0] == 0 and edges[-1] == 10
    assert np.allclose(edges, np.round(edges)) and (np.diff(edges) > 0).all()
    for b in range(n):
        inside = a[which == b]
        assert inside.min() >= edges[b] and (inside.max() < edges[b + 1] or b == n - 1)
