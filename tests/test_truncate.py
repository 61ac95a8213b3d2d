"""Truncation on real text (tiny.jsonl, the real GPT-2 tokenizer) against brute force: exhaustive
suffix search for exact truncation, and an independent implementation of the authors' binary search."""
import numpy as np
import pandas as pd
import pytest

from ctxlookup import max_activating, truncate
from test_scan import NEURONS, act_at_last, corpus, model  # noqa: F401 (fixtures)


def _authors_trunc(model, toks, layer, neuron, og_act, act_ratio=0.8):
    """find_truncated_texts' loop (code-2023/src/neuron_texts.py) written out: floor midpoint, strict
    '>', start 0 and the last position never probed, the activation of the last probe recorded."""
    start, end = 0, len(toks) - 1
    mid = (start + end) // 2
    if start == mid:
        return mid, og_act
    last = None
    while start != mid:
        last = act_at_last(model, toks[mid:], layer, neuron)
        if last > act_ratio * og_act:
            start = mid
        else:
            end = mid
        mid = (start + end) // 2
    return mid, last


def test_exact_truncation_against_exhaustive_search(model, corpus):
    ma = max_activating(model, NEURONS, corpus, k=4, progress=False)
    tr = truncate(model, ma, corpus, method="exact", max_prompt_tokens=60, protocol="ctxlookup")
    docs = corpus.get(ma.doc_id.unique())
    kept = 0
    for r in ma.itertuples():
        toks = model.tokenizer.encode(docs[r.doc_id].text)[: r.position + 1]
        want = None
        for n in range(1, min(len(toks), 59) + 1):  # shortest suffix first
            if act_at_last(model, np.concatenate([[50256], toks[-n:]]), r.layer, r.neuron) >= 0.8 * r.activation:
                want = len(toks) - n
                break
        got = tr[(tr.layer == r.layer) & (tr.neuron == r.neuron) & (tr.doc_id == r.doc_id)]
        if want is None or r.activation <= 0:
            assert len(got) == 0
            continue
        kept += 1
        g = got.iloc[0]
        assert g.start == want and list(g.tokens) == list(toks[want:]) and g.n_tokens == len(toks) - want
        assert g.activation >= 0.8 * r.activation - 1e-6 and g.full_activation == pytest.approx(r.activation)
        assert "\n" not in g.text
    assert kept == len(tr) and kept > 5
    assert tr.attrs["dropped"]["too_long"] + tr.attrs["dropped"]["non_positive"] == len(ma) - kept


def test_binary_truncation_is_the_authors_search(model, corpus):
    ma = max_activating(model, NEURONS, corpus, k=4, progress=False)
    tr = truncate(model, ma, corpus, method="binary")
    assert tr.attrs["prepend_bos"] is False and tr.attrs["newlines"] == "lf"  # the default protocol: paper
    pd.testing.assert_frame_equal(tr, truncate(model, ma, corpus))
    docs = corpus.get(ma.doc_id.unique())
    n_checked = 0
    for r in ma.itertuples():
        toks = model.tokenizer.encode(docs[r.doc_id].text)[: r.position + 1]
        start, act = _authors_trunc(model, toks, r.layer, r.neuron, r.activation)
        got = tr[(tr.layer == r.layer) & (tr.neuron == r.neuron) & (tr.doc_id == r.doc_id)]
        if len(toks) - start >= 100 or r.activation <= 0:
            assert len(got) == 0
        else:
            n_checked += 1
            g = got.iloc[0]
            assert g.start == start and list(g.tokens) == list(toks[start:])
            assert g.probe_activation == pytest.approx(act, abs=1e-4)  # the authors' trunc_act
            assert g.activation == pytest.approx(act_at_last(model, toks[start:], r.layer, r.neuron), abs=1e-4)
            assert g.text == model.tokenizer.decode(toks[start:]).replace("\n", " ")
    assert n_checked > 5
