"""The max-activating scan and truncation on real text (tiny.jsonl, the real GPT-2 tokenizer)
against brute force: per-document forward passes for the top-k, exhaustive suffix search for exact
truncation, and an independent implementation of the authors' binary search."""
import numpy as np
import pandas as pd
import pytest

import ctxlookup
from conftest import SHARED
from ctxlookup import Corpus, max_activating, truncate

TINY = SHARED / "data" / "corpus" / "tiny.jsonl"
NEURONS = [(1, 3), (2, 0), (2, 17), (2, 100)]


@pytest.fixture(scope="module")
def model(text_model_dir):
    return ctxlookup.Model.load(text_model_dir, fold_ln=True, center_writing_weights=True, center_unembed=True)


@pytest.fixture(scope="module")
def corpus():
    return Corpus(TINY, limit=40)


def act_at_last(model, toks, layer, neuron):
    _, c = model.run_with_cache(np.asarray(toks)[None], names_filter=f"blocks.{layer}.mlp.hook_post", pos="last")
    return float(c[f"blocks.{layer}.mlp.hook_post"][0, neuron])


def test_tokenizer_conveniences(model):
    toks, lens = model.to_tokens(["Hello world", "a"], return_lengths=True)
    assert toks.shape == (2, 3) and list(lens) == [3, 2] and toks[0, 0] == 50256 and toks[1, 2] == 50256
    assert model.to_str_tokens("Hello world") == ["<|endoftext|>", "Hello", " world"]
    assert model.to_single_token(" world") == 995
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("Hello world")
    assert model.to_string(toks[0, 1:]) == "Hello world"
    np.testing.assert_array_equal(model(["Hello world", "a"]), model(toks, lengths=lens))
    _, cache = model.run_with_cache("Hello world", names_filter="blocks.0.hook_resid_post")
    assert cache["blocks.0.hook_resid_post"].shape == (1, 3, 32)
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (50256, 50256, 50256)


def test_scan_matches_brute_force(model, corpus):
    k = 5
    ma = max_activating(model, NEURONS, corpus, k=k, batch_tokens=700, progress=False)  # several batches
    docs = list(corpus)
    toks = model.tokenizer.encode_batch([d.text for d in docs])
    for layer, neuron in NEURONS:
        cand = []
        for d, t in zip(docs, toks):
            t = np.concatenate([[50256], t])[: model.cfg.n_ctx]
            _, c = model.run_with_cache(t[None], names_filter=f"blocks.{layer}.mlp.hook_post")
            a = c[f"blocks.{layer}.mlp.hook_post"][0, 1:, neuron]  # BOS never counts
            cand.append((-float(a.max()), d.doc_id, int(a.argmax())))
        cand.sort()
        got = ma[(ma.layer == layer) & (ma.neuron == neuron)].sort_values("rank")
        assert list(got.doc_id) == [c[1] for c in cand[:k]]
        assert list(got.position) == [c[2] for c in cand[:k]]
        np.testing.assert_allclose(got.activation, [-c[0] for c in cand[:k]], atol=1e-5)
        assert set(got.subset) <= {d.subset for d in docs}
    assert ma.attrs["docs"] == 40 and ma.attrs["short_neurons"] == []
    big = max_activating(model, [(2, 0)], Corpus(TINY, limit=3), k=10, progress=False)
    assert len(big) == 3 and big.attrs["short_neurons"] == [(2, 0)]  # k larger than the corpus


def test_scan_resumes_from_checkpoint(model, corpus, tmp_path):
    ck = str(tmp_path / "scan.npz")

    class Killed(Corpus):
        def __iter__(self):
            for i, d in enumerate(super().__iter__()):
                if i == 25:
                    raise KeyboardInterrupt
                yield d

    with pytest.raises(KeyboardInterrupt):
        max_activating(model, NEURONS, Killed(TINY, limit=40), k=5, batch_tokens=300, checkpoint=ck,
                       checkpoint_every=0, progress=False)
    resumed = max_activating(model, NEURONS, corpus, k=5, batch_tokens=300, checkpoint=ck, progress=False)
    fresh = max_activating(model, NEURONS, corpus, k=5, batch_tokens=300, progress=False)
    pd.testing.assert_frame_equal(resumed, fresh)
    again = max_activating(model, NEURONS, corpus, k=5, batch_tokens=300, checkpoint=ck, progress=False)
    pd.testing.assert_frame_equal(again, fresh)  # complete: nothing rescanned
    with pytest.raises(ValueError, match="different scan"):
        max_activating(model, NEURONS[:2], corpus, k=5, checkpoint=ck, progress=False)


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


def test_bad_input(model, corpus, tmp_path):
    with pytest.raises(ValueError, match="neuron 9999 is outside"):
        max_activating(model, [(1, 9999)], corpus, progress=False)
    with pytest.raises(ValueError, match="layer 7 is outside"):
        max_activating(model, [(7, 1)], corpus, progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n')
    with pytest.raises(ValueError, match="has no documents"):
        max_activating(model, [(1, 1)], Corpus(empty), progress=False)
    with pytest.raises(ValueError, match="no neurons"):
        max_activating(model, [], corpus, progress=False)
    with pytest.raises(ValueError, match="method"):
        truncate(model, pd.DataFrame(columns=["layer", "neuron", "doc_id", "position", "activation"]), corpus, method="x")
