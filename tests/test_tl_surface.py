"""The TransformerLens surface: to_tokens / to_str_tokens, return_type and the loss, cfg fields, and
ActivationCache's indexing and helpers, against TransformerLens on the same weights
(TransformerBridge.boot_transformers + enable_compatibility_mode, as tests/test_processing.py).
Tolerance: conftest.ATOL."""
import copy
import numpy as np
import pytest
import torch

import ctxlookup
from conftest import ATOL, padded_batch

tb = pytest.importorskip("transformer_lens.model_bridge")


PROC = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def _bridge(folder, hf, processed=True):
    b = tb.TransformerBridge.boot_transformers(folder, hf_model=copy.deepcopy(hf))  # processing folds weights in place: never the shared fixture model
    b.enable_compatibility_mode(disable_warnings=True, no_processing=not processed)
    b.set_use_attn_result(True)
    b.cfg.default_prepend_bos = True
    return b


def _close(ours, theirs, what):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0, err_msg=what)


# TransformerLens's default processing (fold_ln, centring) on two, none on the third
@pytest.fixture(scope="module", params=[("gpt2-tied-gelu_new", True), ("neox-sequential-rot1.0-5heads", False),
                                        ("neox-parallel-rot0.25", True)], ids=lambda p: f"{p[0]}-{'proc' if p[1] else 'raw'}")
def pair(request, checkpoint):
    name, processed = request.param
    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder, **(PROC if processed else {}))
    bridge = _bridge(folder, hf, processed)
    toks = np.random.RandomState(5).randint(0, model.cfg.d_vocab, size=(3, 11))
    logits, cache = model.run_with_cache(toks)
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(torch.tensor(toks))
    return model, bridge, toks, cache, tl_cache


def test_cache_helpers_match_transformerlens(pair):
    model, bridge, toks, cache, tl = pair
    L = model.cfg.n_layers
    has_mid = "blocks.0.hook_resid_mid" in model.hook_names
    with torch.no_grad():
        for kw in [{}, dict(apply_ln=True), dict(layer=1, apply_ln=True), dict(pos_slice=-1), dict(pos_slice=(2, 7)),
                   dict(layer=1, mlp_input=has_mid, apply_ln=True), dict(incl_mid=has_mid, layer=L - 1)]:
            ours, labels = cache.accumulated_resid(return_labels=True, **kw)
            theirs, tl_labels = tl.accumulated_resid(return_labels=True, **kw)
            assert labels == tl_labels
            _close(ours, theirs, f"accumulated_resid {kw}")
        for kw in [{}, dict(apply_ln=True), dict(mode="attn"), dict(mode="mlp", layer=1), dict(layer=1, mlp_input=True),
                   dict(pos_slice=[0, 4], apply_ln=True), dict(incl_embeds=False)]:
            ours, labels = cache.decompose_resid(return_labels=True, **kw)
            theirs, tl_labels = tl.decompose_resid(return_labels=True, **kw)
            assert labels == tl_labels
            _close(ours, theirs, f"decompose_resid {kw}")
        for kw in [{}, dict(incl_remainder=True), dict(layer=1, apply_ln=True), dict(pos_slice=-1, apply_ln=True),
                   dict(layer=0, incl_remainder=True)]:
            ours, labels = cache.stack_head_results(return_labels=True, **kw)
            theirs, tl_labels = tl.stack_head_results(return_labels=True, **kw)
            assert labels == tl_labels
            _close(ours, theirs, f"stack_head_results {kw}")
        for kw in [dict(layer=1), dict(layer=L, incl_remainder=True, neuron_slice=(0, 7)),
                   dict(layer=1, apply_ln=True, pos_slice=-1), dict(layer=1, neuron_slice=3, mlp_input=has_mid,
                                                                    incl_remainder=True)]:
            ours, labels = cache.stack_neuron_results(return_labels=True, **kw)
            theirs, tl_labels = tl.stack_neuron_results(return_labels=True, **kw)
            assert labels == tl_labels
            _close(ours, theirs, f"stack_neuron_results {kw}")
        stack = cache.decompose_resid()
        tl_stack = tl.decompose_resid()
        answer, wrong = toks[:, -1], toks[:, 0]
        _close(cache.logit_attrs(stack, answer), tl.logit_attrs(tl_stack, torch.tensor(answer)), "logit_attrs (batch,)")
        _close(cache.logit_attrs(stack, answer, incorrect_tokens=wrong),
               tl.logit_attrs(tl_stack, torch.tensor(answer), incorrect_tokens=torch.tensor(wrong)), "logit diff attrs")
        _close(cache.logit_attrs(stack, 5), tl.logit_attrs(tl_stack, 5), "logit_attrs int")
        _close(cache.logit_attrs(stack, toks), tl.logit_attrs(tl_stack, torch.tensor(toks)), "logit_attrs (batch, pos)")
        last = cache.decompose_resid(pos_slice=-1)
        _close(cache.logit_attrs(last, answer, pos_slice=-1),
               tl.logit_attrs(tl.decompose_resid(pos_slice=-1), torch.tensor(answer), pos_slice=-1), "logit_attrs pos")
        _close(cache.apply_ln_to_stack(stack, layer=1, mlp_input=True),
               tl.apply_ln_to_stack(tl_stack, layer=1, mlp_input=True), "apply_ln_to_stack ln2")


def test_decomposition_sums_to_the_residual_stream(pair):
    """Checks that need no oracle: the components sum to the final residual stream, and their
    logit attributions sum to the attribution of the whole stream (cached-scale LN is linear)."""
    model, _, toks, cache, _ = pair
    resid = cache["resid_post", -1]
    np.testing.assert_allclose(cache.decompose_resid().sum(0), resid, atol=ATOL)
    np.testing.assert_allclose(cache.stack_head_results(incl_remainder=True).sum(0), resid, atol=ATOL)
    np.testing.assert_allclose(cache.stack_neuron_results(model.cfg.n_layers, incl_remainder=True).sum(0), resid,
                               atol=ATOL)
    t = toks[:, 0]
    total = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), t, pos_slice=-1).sum(0)
    x = resid[:, -1] - resid[:, -1].mean(-1, keepdims=True)
    x = x / cache["ln_final.hook_scale"][:, -1]
    np.testing.assert_allclose(total, np.einsum("bd,db->b", x, model.W_U[:, t]), atol=ATOL)
    # with ln_final's weight and bias and b_U, the same stream gives the model's logits
    logits = model(toks)[:, -1]
    want = logits[np.arange(len(t)), t]
    if model.cfg.normalization_type == "LN":  # else folded into W_U and b_U
        x = x * model.ln_final_w + model.ln_final_b
    got = np.einsum("bd,db->b", x, model.W_U[:, t]) + model.b_U[t]
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_cache_indexing(pair):
    model, _, toks, cache, tl = pair
    L = model.cfg.n_layers
    assert cache["resid_post", -1] is cache[f"blocks.{L - 1}.hook_resid_post"]
    assert cache["post", 1] is cache["blocks.1.mlp.hook_post"]
    assert cache["pattern", 0, "attn"] is cache["blocks.0.attn.hook_pattern"]
    assert cache["k1"] is cache["blocks.1.attn.hook_k"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["normalized", 0, "ln2"] is cache["blocks.0.ln2.hook_normalized"]
    assert cache["embed"] is cache["hook_embed"]
    for key in [("resid_post", -1), ("post", 1), ("pattern", 0, "attn"), "k1", "scale", ("z", -1)]:
        _close(cache[key], tl[key], str(key))
    assert ("post", L - 1) in cache and ("post", L) not in cache and "no_such" not in cache
    for bad in (L, -L - 1, 12):
        with pytest.raises(KeyError, match=rf"model has {L} layers: 0\.\.{L - 1}"):
            cache["post", bad]
        with pytest.raises(IndexError):
            cache["resid_pre", bad]
    with pytest.raises(KeyError, match="out of range"):
        cache.accumulated_resid(layer=L + 1)
    # dict behaviour is kept
    assert isinstance(cache, dict) and set(cache) == set(model.hook_names) and len(dict(cache)) == len(cache)
    _, partial = model.run_with_cache(toks, names_filter="blocks.0.mlp.hook_post")
    with pytest.raises(KeyError, match="names_filter left it out"):
        partial["post", 1]
    with pytest.raises(KeyError, match="not in this cache"):
        partial["hook_nothing"]
    if "blocks.0.hook_resid_mid" not in model.hook_names:
        with pytest.raises(KeyError, match="not a hook of this model"):
            cache["resid_mid", 0]
    with pytest.raises(KeyError, match="LayerNorm scale"):
        partial.apply_ln_to_stack(np.zeros((1, 3, 11, model.cfg.d_model), np.float32))


def test_remove_batch_dim(pair):
    model, _, toks, _, _ = pair
    _, cache = model.run_with_cache(toks[:1])
    full = {k: v.copy() for k, v in cache.items()}
    assert cache.remove_batch_dim() is cache and not cache.has_batch_dim
    for k, v in full.items():
        np.testing.assert_array_equal(cache[k], v[0])
    np.testing.assert_allclose(cache.accumulated_resid(apply_ln=True), model.run_with_cache(toks[:1])[1]
                               .accumulated_resid(apply_ln=True)[:, 0], atol=1e-6)
    _, batch = model.run_with_cache(toks)
    with pytest.raises(ValueError, match="batch size 3"):
        batch.remove_batch_dim()


def test_loss_matches_transformerlens(pair):
    model, bridge, toks, _, _ = pair
    with torch.no_grad():
        tl_loss = bridge(torch.tensor(toks), return_type="loss")
        tl_tok = bridge(torch.tensor(toks), return_type="loss", loss_per_token=True)
        tl_logits, tl_both = bridge(torch.tensor(toks), return_type="both")
    _close(np.asarray(model(toks, return_type="loss")), tl_loss, "loss")
    _close(model(toks, return_type="loss", loss_per_token=True), tl_tok, "loss_per_token")
    logits, loss = model(toks, return_type="both")
    _close(logits, tl_logits, "both: logits")
    _close(np.asarray(loss), tl_both, "both: loss")
    assert model(toks, return_type=None) is None
    # padded rows: TransformerLens given the attention mask, ctxlookup given the lengths
    ptoks, lens, mask = padded_batch(model.cfg.d_vocab, [11, 6, 2], seed=4)
    with torch.no_grad():
        tl_pad = bridge(torch.tensor(ptoks), return_type="loss", attention_mask=torch.tensor(mask))
        tl_pad_tok = bridge(torch.tensor(ptoks), return_type="loss", attention_mask=torch.tensor(mask),
                            loss_per_token=True)
    _close(np.asarray(model(ptoks, return_type="loss", lengths=lens)), tl_pad, "padded loss")
    _close(model(ptoks, return_type="loss", attention_mask=mask, loss_per_token=True), tl_pad_tok, "padded per token")
    # the same through run_with_cache and run_with_hooks
    loss_c, cache = model.run_with_cache(toks, return_type="loss", names_filter="blocks.0.hook_resid_pre")
    _close(np.asarray(loss_c), tl_loss, "run_with_cache loss")
    _close(np.asarray(model.run_with_hooks(toks, return_type="loss")), tl_loss, "run_with_hooks loss")
    with torch.no_grad():
        tl_abl = bridge.run_with_hooks(torch.tensor(toks), return_type="loss",
                                       fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a * 0)])
    ours = model.run_with_hooks(toks, return_type="loss", fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a * 0)])
    _close(np.asarray(ours), tl_abl, "run_with_hooks loss, ablated")


def test_return_type_errors(checkpoint):
    model = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])
    toks = np.arange(6)[None]
    for f in (lambda: model(toks, return_type="logit"), lambda: model.run_with_cache(toks, return_type="str"),
              lambda: model.run_with_hooks(toks, return_type="predictions")):
        with pytest.raises(ValueError, match="return_type must be one of 'logits', 'loss', 'both' or None"):
            f()
    with pytest.raises(ValueError, match="at least 2 tokens"):
        model(toks[:, :1], return_type="loss")
    with pytest.raises(ValueError, match="drop logits_pos"):
        model(toks, return_type="loss", logits_pos="last")
    with pytest.raises(ValueError, match="stops early"):
        model.run_with_cache(toks, return_type="loss", stop_at_layer=1)


def test_cfg_fields(checkpoint):
    folder, hf = checkpoint("neox-parallel-rot0.25")
    model = ctxlookup.Model.load(folder)
    c = model.cfg
    # TransformerLens counts the attention and MLP weight matrices only
    assert c.n_params == sum(getattr(model, w).size for w in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"))
    assert c.d_vocab_out == c.d_vocab == hf.config.vocab_size and c.dtype == "float32"
    assert c.model_name == folder.rstrip("/").split("/")[-1]
    # gpt2-small's count in TransformerLens's model table: 85M = 84,934,656
    small = ctxlookup.model.Config._from_core(dict(model._core.config(), n_layers=12, d_model=768, n_heads=12, d_head=64,
                                                   d_mlp=3072))
    assert small.n_params == 84_934_656
    assert ctxlookup.Model.from_pretrained("demo").cfg.model_name == "demo"


@pytest.fixture(scope="module")
def text_pair(text_model_dir):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(text_model_dir).eval()
    return ctxlookup.Model.load(text_model_dir), _bridge(text_model_dir, hf, processed=False)


TEXTS = ["Hello world", "The cat sat on the mat, and then it slept.", "a"]


def test_to_tokens_matches_transformerlens(text_pair):
    model, bridge = text_pair
    for inp in (TEXTS[1], TEXTS):
        for side in ("right", "left"):
            for bos in (True, False):
                ours = model.to_tokens(inp, prepend_bos=bos, padding_side=side)
                theirs = bridge.to_tokens(inp, prepend_bos=bos, padding_side=side).numpy()
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{inp!r} {side} {bos}")
    assert model.to_tokens("Hello").shape == (1, 2)
    toks, lens = model.to_tokens(TEXTS, return_lengths=True)
    assert lens.tolist() == [len(bridge.to_tokens(t)[0]) for t in TEXTS]
    assert model.to_str_tokens(TEXTS) == [bridge.to_str_tokens(t) for t in TEXTS]
    assert model.to_str_tokens(TEXTS[1]) == bridge.to_str_tokens(TEXTS[1])
    one = model.to_tokens(TEXTS[1])
    assert model.to_str_tokens(one) == bridge.to_str_tokens(torch.tensor(one))
    assert model.to_str_tokens(toks) == [model.to_str_tokens(r) for r in toks]  # rows of a 2-D array
    assert model.to_string(one[0]) == bridge.to_string(torch.tensor(one[0]))
    assert model.to_string(toks[:, :3]) == bridge.to_string(torch.tensor(toks[:, :3]))
    assert model.to_single_token(" world") == bridge.to_single_token(" world")
    # the output feeds the model directly, and equals the logits TransformerLens computes
    with torch.no_grad():
        want = bridge(TEXTS[1]).numpy()
    _close(model(model.to_tokens(TEXTS[1])), want, "model(to_tokens(text))")
    _close(model(TEXTS[1]), want, "model(text)")


def test_to_tokens_errors(text_pair):
    model, _ = text_pair
    with pytest.raises(TypeError, match="input must be a string or a list of strings, got int"):
        model.to_tokens(123)
    with pytest.raises(TypeError, match="list holding int"):
        model.to_tokens(["a", 3])
    with pytest.raises(ValueError, match="padding_side"):
        model.to_tokens("a", padding_side="middle")
    with pytest.raises(ValueError, match="empty list"):
        model.to_tokens([])
