"""Token windows (ctxlookup.windows): each example's tokens around its maximum and the neuron's
activation on each, checked against the model run on each document alone (run_with_cache), and
the token texts against the tokenizer's decoding."""
import numpy as np
import pandas as pd
import pytest

import ctxlookup
from conftest import SHARED
from ctxlookup.search import doc_tokens, max_activating, truncate
from ctxlookup.windows import WINDOW_COLUMNS, example_windows, token_texts

# A neuron's activation after a few layers, run in a batch of other sequences vs alone: the BLAS
# reorderings of every layer add up (about 10 float32 ulps of the window's largest value measured)
BATCH_RTOL, BATCH_ATOL = 1e-4, 1e-5


def same_activations(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=BATCH_RTOL,
                               atol=BATCH_ATOL)


@pytest.fixture(scope="module")
def scanned(text_model_dir):
    model = ctxlookup.Model.from_pretrained(text_model_dir)
    corpus = ctxlookup.Corpus(str(SHARED / "data" / "corpus" / "tiny.jsonl"), limit=60)
    ma = max_activating(model, [(1, 3), (2, 7)], corpus, k=5, batch_tokens=2048, progress=False)
    pr = truncate(model, ma, corpus)
    docs = corpus.get(ma.doc_id.unique())
    return model, ma, pr, {d: docs[d].text for d in docs}


def test_windows_are_the_model_on_each_document_alone(scanned):
    model, ma, pr, texts = scanned
    win = example_windows(model, ma, pr, texts=texts, batch_tokens=300)
    assert list(win.columns) == WINDOW_COLUMNS and len(win) == len(ma)
    assert win.attrs == dict(before=40, after=10, max_before=160, prepend_bos=True, max_tokens=model.cfg.n_ctx,
                             prompt_bos=True)
    starts = {(r.layer, r.neuron, r.doc_id): r.start for r in pr.itertuples()}
    for r, w in zip(ma.itertuples(), win.itertuples()):
        assert (w.layer, w.neuron, w.rank, w.doc_id, w.context) == (r.layer, r.neuron, r.rank, r.doc_id, "document")
        ids = doc_tokens(model, [texts[r.doc_id]], True, model.cfg.n_ctx)[0]           # BOS first
        _, cache = model.run_with_cache(ids[None], names_filter=[f"blocks.{r.layer}.mlp.hook_post"])
        alone = cache[f"blocks.{r.layer}.mlp.hook_post"][0, 1:, r.neuron]             # document tokens
        start = starts.get((r.layer, r.neuron, r.doc_id))
        first = max(0, r.position - 40 if start is None else min(r.position - 40, start - 3), r.position - 160)
        end = min(len(ids) - 1, r.position + 11)
        assert (w.first, w.doc_len) == (first, len(ids) - 1)
        assert list(w.tokens) == ids[1:][first:end].tolist()
        same_activations(w.acts, alone[first:end])
        same_activations(w.acts[r.position - first], r.activation)
        assert "".join(w.strs) == model.tokenizer.decode(w.tokens)


def test_without_the_document_the_prompt_alone(scanned):
    model, ma, pr, texts = scanned
    keep = set(list(texts)[:2])
    win = example_windows(model, ma, pr, texts={d: t for d, t in texts.items() if d in keep}, prompt_bos=False)
    prompts = {(p.layer, p.neuron, p.doc_id): p for p in pr.itertuples()}
    for w in win.itertuples():
        if w.doc_id in keep:
            assert w.context == "document"
            continue
        p = prompts[(w.layer, w.neuron, w.doc_id)]
        assert w.context == "prompt" and (w.first, w.doc_len) == (p.start, -1) and list(w.tokens) == list(p.tokens)
        same_activations(w.acts[-1], p.activation)  # the kept prompt's own activation
    # rows with neither the document nor a prompt are left out
    assert len(win) == sum(1 for r in ma.itertuples() if r.doc_id in keep or (r.layer, r.neuron, r.doc_id) in prompts)


def test_characters_split_over_tokens_are_shown_whole(text_model_dir):
    tok = ctxlookup.Tokenizer.load(text_model_dir)
    for text in ["They couldn\u2019t keep \u201cyou\u201d \u65e5\u672c\u8a9e ok", "\U0001f389\U0001f389 fun", "plain text",
                 "\u4e2d\u6587\u6587\u672c\u7684\u6d4b\u8bd5\uff0c\u5305\u62ec\u6807\u70b9\u3002" * 3]:
        ids = tok.encode(text)
        strs = token_texts(tok, ids)
        assert len(strs) == len(ids) and "".join(strs) == text and not any("\ufffd" in s for s in strs)
    assert token_texts(tok, tok.encode("couldn\u2019t"))[-3:] == ["", "\u2019", "t"]


def test_a_model_without_tokenizer_is_named(checkpoint):
    model = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0], tokenizer=False)
    ma = pd.DataFrame(dict(layer=[0], neuron=[0], rank=[0], doc_id=[0], position=[0], activation=[1.0]))
    with pytest.raises(ValueError, match="has no tokenizer files"):
        example_windows(model, ma, texts={0: "x"})
