"""The an-neuron tools against explicit computations: the logit lens against a NumPy
re-computation from cached residuals and the model's own logits; activation patching against
explicit patched runs one at a time; activation against prediction (one batched pass over a
corpus) against each document run alone, with scipy's Mann-Whitney U and Spearman as oracles."""
import numpy as np
import pytest

import ctxlookup

from conftest import SHARED
from test_evidence import N_DOCS, _brute_positions, text_model, tiny_texts  # noqa: F401 (fixtures)
from ctxlookup.anneuron import activation_patching, activation_vs_prediction, logit_lens


@pytest.fixture(scope="module", params=["gpt2-tied-gelu_new", "neox-parallel-rot0.25"])
def model(request, checkpoint):
    return ctxlookup.Model.load(checkpoint(request.param)[0], fold_ln=True, tokenizer=False)


def test_logit_lens_ends_at_the_models_logit_difference(model):
    toks = np.arange(3, 15)
    df = logit_lens(model, toks, 5, 9)
    assert len(df) == 1 + 2 * model.cfg.n_layers
    logits = model(toks[None])[0, -1]
    assert df.logit_diff.iloc[-1] == pytest.approx(float(logits[5] - logits[9]), abs=1e-4)
    # an intermediate stage, recomputed by hand
    _, cache = model.run_with_cache(toks[None], names_filter=["blocks.1.hook_resid_pre"])
    x = cache["blocks.1.hook_resid_pre"][0, -1].astype(np.float64)
    x = (x - x.mean()) / np.sqrt(((x - x.mean()) ** 2).mean() + model.cfg.eps)
    want = x @ (model.W_U[:, 5] - model.W_U[:, 9]) + model.b_U[5] - model.b_U[9]
    assert df.logit_diff.iloc[2 * 1] == pytest.approx(want, abs=1e-4)  # after mlp 0 = resid_pre of block 1


def test_activation_patching_matches_explicit_runs(model):
    rng = np.random.default_rng(1)
    clean = rng.integers(0, model.cfg.d_vocab, 9)
    corrupt = clean.copy()
    corrupt[2] = (corrupt[2] + 1) % model.cfg.d_vocab
    metric = ("logit_diff", 3, 4)

    def m(toks, **kw):
        lg = model.run_with_hooks(toks[None], logits_pos="last", **kw)
        return float(lg[0, 3] - lg[0, 4])

    mc, mx = m(clean), m(corrupt)
    res = activation_patching(model, clean, corrupt, metric, by="layer_pos", hook="resid_pre", batch_size=4)
    assert res.shape == (model.cfg.n_layers, 9)
    _, cc = model.run_with_cache(clean[None], names_filter="blocks.1.hook_resid_pre")
    _, xc = model.run_with_cache(corrupt[None], names_filter="blocks.1.hook_resid_pre")
    for p in (0, 2, 8):
        patch = xc["blocks.1.hook_resid_pre"].copy()
        patch[0, p] = cc["blocks.1.hook_resid_pre"][0, p]
        want = (m(corrupt, patch={"blocks.1.hook_resid_pre": patch}) - mx) / (mc - mx)
        assert res[1, p] == pytest.approx(want, abs=1e-4)
    np.testing.assert_allclose(res[0, :2], 0, atol=1e-5)  # positions before the change carry nothing at layer 0
    assert res[0, 2] == pytest.approx(1.0, abs=1e-4)       # the changed token's residual carries everything
    layer = model.cfg.n_layers - 1
    neu = activation_patching(model, clean, corrupt, metric, by="neuron", layer=layer, batch_size=50)
    assert neu.shape == (model.cfg.d_mlp,)
    _, cc = model.run_with_cache(clean[None], names_filter=f"blocks.{layer}.mlp.hook_post")
    for j in (0, 7, model.cfg.d_mlp - 1):
        want = (m(corrupt, set_neurons=[(layer, j, float(cc[f"blocks.{layer}.mlp.hook_post"][0, -1, j]))]) - mx) / (mc - mx)
        # set_neurons sets every position; at the last layer only the last position reaches the last logits
        assert neu[j] == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="same number of tokens"):
        activation_patching(model, clean, corrupt[:5], metric)


def test_activation_vs_prediction_bins_every_position(text_model, tiny_texts):
    neuron = (2, 11)
    a, tops = _brute_positions(text_model, [neuron], tiny_texts)
    token = int(np.bincount(tops).argmax())  # a token the random model does predict
    corpus = ctxlookup.Corpus(SHARED / "data" / "corpus" / "tiny.jsonl")
    df = activation_vs_prediction(text_model, neuron, corpus, token_id=token, bins=7, max_docs=N_DOCS, batch_tokens=300)
    got_a, got_t = df.attrs["positions"]
    np.testing.assert_allclose(got_a, a[:, 0], atol=1e-4)
    assert (got_t == (tops == token)).all()
    counts, edges = np.histogram(a[:, 0], bins=7)
    assert df.n_positions.tolist() == counts.tolist()
    assert df.n_top.sum() == (tops == token).sum()
    np.testing.assert_allclose(df.bin_low, edges[:-1], atol=1e-4)
    q = activation_vs_prediction(text_model, neuron, corpus, token_id=token, bins=5, binning="quantile", max_docs=N_DOCS)
    assert q.n_positions.sum() == len(a) and q.n_positions.max() - q.n_positions.min() <= 0.02 * len(a)
    with pytest.raises(ValueError, match="binning"):
        activation_vs_prediction(text_model, neuron, corpus, binning="log", max_docs=2)
    with pytest.raises(ValueError, match="outside the model"):
        activation_vs_prediction(text_model, (0, text_model.cfg.d_mlp), corpus, max_docs=2)
