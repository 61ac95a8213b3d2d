"""Head attribution, selection and ablation against brute force: dot products of run_with_cache's
hook_result with W_in for both eligibility rules, the mean + 2 std (ddof=1) active rule, the
selection thresholds at their edges, and ablation probabilities against a Python-hook ablation."""
import numpy as np
import pandas as pd
import pytest

import ctxlookup
from ctxlookup import _core
from ctxlookup.attribution import ablate_heads, eligible_layers, head_attribution, select_heads


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


def test_select_heads_thresholds_at_their_edges():
    rows = []
    # 4 prompts; head (0, h) active on h of them: fractions 0, .25, .5, .75, 1
    for pid in range(4):
        for h in range(5):
            rows.append(dict(layer=2, neuron=7, prompt_id=pid, head_layer=0, head=h, score=0.0, active=pid < h))
    sel = select_heads(pd.DataFrame(rows))
    assert sorted(sel["head"]) == [1, 2, 3]
    assert sel.set_index("head").active_fraction.to_dict() == {1: 0.25, 2: 0.5, 3: 0.75}
    assert (sel.n_prompts == 4).all()
    assert sorted(select_heads(pd.DataFrame(rows), low=0.5, high=1.0)["head"]) == [2, 3, 4]
    with pytest.raises(ValueError):
        select_heads(pd.DataFrame(rows), low=0.8, high=0.2)


def test_ablation_probabilities_match_python_hook(model):
    prompts = make_prompts(model, n=6, seed=2)
    prompts["layer"] = model.cfg.n_layers - 1
    prompts["neuron"] = 3
    att = head_attribution(model, prompts, retokenize=False)
    heads = pd.DataFrame([dict(layer=model.cfg.n_layers - 1, neuron=3, head_layer=0, head=1)])
    res = ablate_heads(model, prompts, heads, attribution=att, retokenize=False)
    assert len(res) == 6
    for r in res.itertuples():
        p = prompts[prompts.prompt_id == r.prompt_id].iloc[0]
        toks = np.array(p.tokens)[None]

        def zero(z, hook):
            z[:, :, 1] = 0

        for kw, col in (({}, "p_clean"), ({"fwd_hooks": [("blocks.0.attn.hook_z", zero)]}, "p_ablated")):
            lg = model.run_with_hooks(toks, **kw)[0, -1].astype(np.float64)
            pr = np.exp(lg - lg.max())
            pr /= pr.sum()
            assert getattr(r, col) == pytest.approx(pr[p.token_id], rel=1e-4, abs=1e-7)
        assert r.active == bool(att[(att.prompt_id == r.prompt_id) & (att.head_layer == 0) & (att["head"] == 1)].active.iloc[0])


def test_scanner_matches_brute_force_topk_with_ties(model):
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


def test_retokenized_inputs_are_bos_and_the_text_encoded_again(text_model_dir):
    """Protocols paper and authors-2023: attribution and ablation run BOS + to_tokens(text) like the
    authors' notebooks, and the ablation's probability is that of the neuron token re-encoded."""
    from ctxlookup.attribution import prompt_tokens

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


def test_mean_ablation_uses_the_prompts_mean_z(model):
    """mode='mean' without mean_z: each head's hook_z averaged over every position of the prompts
    (brute force from run_with_cache), then patched in for the ablated head."""
    from ctxlookup.attribution import mean_z

    prompts = make_prompts(model, n=5, seed=4)
    prompts["layer"], prompts["neuron"] = model.cfg.n_layers - 1, 2
    heads = pd.DataFrame([dict(layer=model.cfg.n_layers - 1, neuron=2, head_layer=0, head=1)])
    zs = []
    for t in prompts.tokens:
        _, cache = model.run_with_cache(np.array(t)[None], names_filter=lambda n: n.endswith("hook_z"))
        zs.append(np.stack([cache[f"blocks.{l}.attn.hook_z"][0] for l in range(model.cfg.n_layers)], 1))  # (pos, L, H, d)
    want = np.concatenate(zs).astype(np.float64).mean(0)
    got = mean_z(model, prompts, retokenize=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    res = ablate_heads(model, prompts, heads, mode="mean", retokenize=False)
    explicit = ablate_heads(model, prompts, heads, mode="mean", mean_z=got, retokenize=False)
    pd.testing.assert_frame_equal(res, explicit)
    p = prompts.iloc[0]

    def to_mean(z, hook):
        z[:, :, 1] = got[0, 1]

    lg = model.run_with_hooks(np.array(p.tokens)[None], fwd_hooks=[("blocks.0.attn.hook_z", to_mean)])[0, -1].astype(np.float64)
    pr = np.exp(lg - lg.max())
    assert res.p_ablated.iloc[0] == pytest.approx(pr[p.token_id] / pr.sum(), rel=1e-4, abs=1e-7)


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
