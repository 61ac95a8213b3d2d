"""Head attribution against brute force: dot products of run_with_cache's hook_result with W_in
for both eligibility rules, the mean + 2 std (ddof=1) and top-3 active rules; exact truncation's
kept head scores are the attribution of the same inputs."""
import numpy as np
import pandas as pd
import pytest

import ctxlookup
from ctxlookup import _core
from ctxlookup.ablation import ablate_heads
from ctxlookup.attribution import eligible_layers, head_attribution


def make_prompts(model, n=12, seed=0, bos=False):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        layer = int(rng.integers(0, model.cfg.n_layers))
        rows.append(dict(layer=layer, neuron=int(rng.integers(0, model.cfg.d_mlp)), prompt_id=i,
                         tokens=list(rng.integers(1, model.cfg.d_vocab, int(rng.integers(1, 20)))),
                         token_id=int(rng.integers(0, model.cfg.d_vocab))))
    df = pd.DataFrame(rows)
    df.attrs["prepend_bos"] = bos
    return df


@pytest.fixture(scope="module", params=["gpt2-tied-gelu_new", "neox-parallel-rot0.25"])
def model(request, checkpoint):
    return ctxlookup.Model.load(checkpoint(request.param)[0], fold_ln=True, center_writing_weights=True, tokenizer=False)


@pytest.mark.parametrize("active_rule", ["mean+2sd", "top3"])
@pytest.mark.parametrize("rule", ["architecture", "authors"])
def test_attribution_matches_hook_result_dot_w_in(model, rule, active_rule):
    prompts = make_prompts(model)
    att = head_attribution(model, prompts, rule=rule, batch_tokens=40, active_rule=active_rule,
                           retokenize=False)  # several batches
    H = model.cfg.n_heads
    for p in prompts.itertuples():
        toks = np.array(p.tokens)[None]
        _, cache = model.run_with_cache(toks, pos="last", names_filter=lambda n: "hook_result" in n or "hook_post" in n)
        w = model.W_in[p.layer][:, p.neuron].astype(np.float64)
        n_el = p.layer + (0 if (model.cfg.parallel_attn_mlp or rule == "authors") else 1)
        assert n_el == eligible_layers(model, p.layer, rule)
        got = att[att.prompt_id == p.prompt_id]
        assert len(got) == n_el * H
        if n_el == 0:
            continue
        want = np.stack([cache[f"blocks.{k}.attn.hook_result"][0] @ w for k in range(n_el)])  # (n_el, H)
        np.testing.assert_allclose(got.score.to_numpy(), want.reshape(-1), rtol=1e-4, atol=1e-4)
        s = want.reshape(-1)
        if active_rule == "mean+2sd":
            active = s > s.mean() + 2 * s.std(ddof=1)
        else:  # the 2023 code's torch.topk(k=3) over the eligible heads
            active = np.isin(np.arange(s.size), np.argsort(-s)[:3])
        np.testing.assert_array_equal(got.active.to_numpy(), active)
        assert att.attrs["activation"][p.prompt_id] == pytest.approx(
            float(cache[f"blocks.{p.layer}.mlp.hook_post"][0, p.neuron]), abs=1e-5)


def test_retokenized_inputs_are_bos_and_the_text_encoded_again(text_model_dir):
    """Protocols paper and authors-2023: attribution and ablation run BOS + to_tokens(text) like the
    authors' notebooks, and the ablation's probability is that of the neuron token re-encoded."""
    from ctxlookup.batching import prompt_tokens

    m = ctxlookup.Model.load(text_model_dir, fold_ln=True)
    texts = ["The cat sat on the mat.  And then", "Numbers: 1 2 3 4 and so", "x"]
    enc = m.tokenizer.encode_batch(texts)
    prompts = pd.DataFrame(dict(layer=2, neuron=[5, 6, 7], prompt_id=[0, 1, 2], text=texts,
                                tokens=[[1, 2], [3], [4]], token=[" on", " the", " cat"],
                                token_id=[m.to_single_token(t) for t in (" on", " the", " cat")]))
    toks = prompt_tokens(m, prompts, retokenize=True)
    for t, e in zip(toks, enc):
        assert t.tolist() == [m.bos_token_id] + list(e)
    att = head_attribution(m, prompts)  # default protocol: paper
    assert att.attrs["retokenize"] and att.attrs["active_rule"] == "mean+2sd" and att.attrs["rule"] == "authors"
    for p, t in zip(prompts.itertuples(), toks):
        _, cache = m.run_with_cache(t[None], pos="last", names_filter=lambda n: "hook_result" in n)
        w = m.W_in[2][:, p.neuron].astype(np.float64)
        want = np.stack([cache[f"blocks.{k}.attn.hook_result"][0] @ w for k in range(2)]).reshape(-1)
        np.testing.assert_allclose(att[att.prompt_id == p.prompt_id].score.to_numpy(), want, rtol=1e-4, atol=1e-4)
    res = ablate_heads(m, prompts, pd.DataFrame([dict(layer=2, neuron=6, head_layer=1, head=0)]), attribution=att)
    lg = m.run_with_hooks(toks[1][None])[0, -1].astype(np.float64)
    pr = np.exp(lg - lg.max())
    pr /= pr.sum()
    assert res.p_clean.iloc[0] == pytest.approx(pr[m.to_single_token(" the")], rel=1e-4)


def test_analysis_bindings_check_integer_arrays_before_the_cast(model):
    """Token, length, layer, neuron and doc-id arrays go through the bindings' one int converter:
    a value outside int32 (int64 for doc ids) is a ValueError naming the array and the flat index,
    never a silent wrap (2**32 + 3 would alias token 3), and a non-integer dtype a TypeError."""
    toks, lens = np.array([1, 2**32 + 3, 5], np.int64), np.array([3], np.int32)
    tl, tn = np.array([0], np.int32), np.array([1], np.int32)
    with pytest.raises(ValueError, match=r"tokens\[1\] \(flat index\) = 4294967299 is outside the int32 range"):
        _core.attribute_batch(model._core, toks, lens, tl, tn)
    with pytest.raises(ValueError, match=r"lengths\[0\] .* = 4294967299 is outside the int32 range"):
        _core.attribute_batch(model._core, toks[[0, 2, 0]], np.array([2**32 + 3], np.uint64), tl, tn)
    with pytest.raises(ValueError, match=r"target_neurons\[0\] .* = -4294967295 is outside"):
        _core.attribute_batch(model._core, toks[[0, 2, 0]], lens, tl, np.array([-(2**32) + 1]))
    with pytest.raises(TypeError, match="target_layers must be an array of integers"):
        _core.attribute_batch(model._core, toks[[0, 2, 0]], lens, np.array([0.5]), tn)
    with pytest.raises(ValueError, match=r"neurons\[0\] .* = 4294967297 is outside the int32 range"):
        _core.Scanner(np.array([0], np.int32), np.array([2**32 + 1]), model.cfg.d_mlp, 2)
    sc = _core.Scanner(np.array([0], np.int32), np.array([1], np.int32), model.cfg.d_mlp, 2)
    with pytest.raises(ValueError, match=r"tokens\[1\] .* = 4294967299 is outside the int32 range"):
        _core.scan_batch(model._core, sc, toks, lens, np.array([0], np.int64), 0)
    with pytest.raises(ValueError, match=r"doc_ids\[0\] .* = 9223372036854775808 is outside the int64 range"):
        _core.scan_batch(model._core, sc, toks[[0, 2, 0]], lens, np.array([2**63], np.uint64), 0)
    assert sc.state()["count"][0] == 0  # nothing ran
    # in range, any integer dtype is accepted and means the same as int32
    s64, a64 = _core.attribute_batch(model._core, toks[[0, 2, 0]], lens.astype(np.uint64), tl.astype(np.int8), tn)
    s32, a32 = _core.attribute_batch(model._core, toks[[0, 2, 0]].astype(np.int32), lens, tl, tn)
    np.testing.assert_array_equal(s64, s32)
    np.testing.assert_array_equal(a64, a32)
