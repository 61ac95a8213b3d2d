"""The max-activating scan on real text (tiny.jsonl, the real GPT-2 tokenizer) against brute force
(per-document forward passes for the top-k), and the core's scanner on random checkpoints with ties."""
import numpy as np
import pandas as pd
import pytest

import ctxlookup
from conftest import SHARED
from ctxlookup import Corpus, _core, max_activating, truncate

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


@pytest.fixture(scope="module", params=["gpt2-tied-gelu_new", "neox-parallel-rot0.25"])
def checkpoint_model(request, checkpoint):
    return ctxlookup.Model.load(checkpoint(request.param)[0], fold_ln=True, center_writing_weights=True, tokenizer=False)


def test_scanner_matches_brute_force_topk_with_ties(checkpoint_model):
    model = checkpoint_model
    rng = np.random.default_rng(5)
    docs = [rng.integers(0, model.cfg.d_vocab, int(rng.integers(1, 30))) for _ in range(40)]
    docs[7] = docs[3].copy()  # identical documents tie exactly: the smaller doc id ranks first
    layers = np.array([0, model.cfg.n_layers - 1, model.cfg.n_layers - 1], np.int32)
    neurons = np.array([5, 0, 11], np.int32)
    k = 6
    sc = _core.Scanner(layers, neurons, model.cfg.d_mlp, k)
    for b0 in range(0, 40, 9):  # several batches
        chunk = docs[b0:b0 + 9]
        _core.scan_batch(model._core, sc, np.concatenate(chunk).astype(np.int32),
                         np.array([len(d) for d in chunk], np.int32), np.arange(b0, b0 + len(chunk), dtype=np.int64), 1)
    st = sc.state()
    for j, (l, n) in enumerate(zip(layers, neurons)):
        cand = []
        for d, toks in enumerate(docs):
            if len(toks) <= 1:
                continue
            _, cache = model.run_with_cache(toks[None], names_filter=f"blocks.{l}.mlp.hook_post")
            a = cache[f"blocks.{l}.mlp.hook_post"][0, 1:, n]
            cand.append((-float(a.max()), d, int(a.argmax()) + 1))
        cand.sort()
        want = cand[:k]
        assert st["count"][j] == min(k, len(cand))
        np.testing.assert_array_equal(st["doc"][j][:len(want)], [w[1] for w in want])
        np.testing.assert_array_equal(st["pos"][j][:len(want)], [w[2] for w in want])
        np.testing.assert_allclose(st["act"][j][:len(want)], [-w[0] for w in want], atol=1e-5)
    if 3 in st["doc"][0] and 7 in st["doc"][0]:
        assert list(st["doc"][0]).index(3) < list(st["doc"][0]).index(7)
