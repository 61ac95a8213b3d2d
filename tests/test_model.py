"""Forward-pass parity with Hugging Face transformers (PyTorch, CPU, float32) on random checkpoints.

Oracles: transformers' logits, hidden_states and attentions; PyTorch forward hooks on the same
transformers modules for activations transformers does not return; NumPy from the same weights
for rotary. Tolerance: conftest.ATOL.
"""
import numpy as np
import pytest
import torch

import ctxlookup
from conftest import (ALL_CONFIGS, ATOL, LONG_CONFIGS, GPT2_CONFIGS, NEOX_CONFIGS, assert_same_up_to_reordering, max_err_rows,
                      padded_batch)

LENGTHS = [17, 9, 1, 12]


def hf_run(model, toks, mask, **kw):
    with torch.no_grad():
        return model(torch.tensor(toks), attention_mask=torch.tensor(mask), output_hidden_states=True,
                     output_attentions=True, **kw)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_logits_hidden_states_attentions(checkpoint, name):
    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder)
    toks, lens, mask = padded_batch(model.cfg.d_vocab, LENGTHS)
    out = hf_run(hf, toks, mask)
    logits, cache = model.run_with_cache(toks, lengths=lens)
    assert logits.shape == (4, 17, model.cfg.d_vocab) and logits.dtype == np.float32
    assert max_err_rows(logits, out.logits.numpy(), lens) < ATOL
    L = model.cfg.n_layers
    for i in range(L):
        assert max_err_rows(cache[f"blocks.{i}.hook_resid_pre"], out.hidden_states[i].numpy(), lens) < ATOL
        hf_pat = out.attentions[i].numpy()
        for b, n in enumerate(lens):
            np.testing.assert_allclose(cache[f"blocks.{i}.attn.hook_pattern"][b, :, :n, :n], hf_pat[b, :, :n, :n], atol=ATOL)
    assert max_err_rows(cache["ln_final.hook_normalized"], out.hidden_states[L].numpy(), lens) < ATOL
    # padding is zero, and the causal mask holds
    assert np.all(logits[2, 1:] == 0)
    pat = cache["blocks.0.attn.hook_pattern"]
    assert np.all(np.triu(pat[0, :, :, :], k=1) == 0)
    np.testing.assert_allclose(pat[0].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", LONG_CONFIGS)
def test_long_sequences_blocked_attention(checkpoint, name):
    """Sequences of 256+ tokens take the BLAS-blocked attention path (query blocks of 128)."""
    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder)
    toks, lens, mask = padded_batch(model.cfg.d_vocab, [700, 300, 257, 40], seed=13)
    want = hf_run(hf, toks, mask).logits.numpy()
    assert max_err_rows(model(toks, lengths=lens), want, lens) < ATOL
    # the materialised path (pattern hooked) agrees with the blocked path
    logits, cache = model.run_with_cache(toks, lengths=lens, names_filter="blocks.1.attn.hook_pattern")
    assert max_err_rows(logits, want, lens) < ATOL


@pytest.mark.parametrize("name,dtype", [("gpt2-tied-gelu_new", "float16"), ("neox-parallel-rot0.25", "bfloat16"),
                                        ("neox-sequential-rot1.0-5heads", "float16")])
def test_half_precision_checkpoints(checkpoint, name, dtype):
    folder, hf = checkpoint(name, dtype=dtype)
    model = ctxlookup.Model.load(folder)
    toks, lens, mask = padded_batch(model.cfg.d_vocab, LENGTHS, seed=1)
    assert max_err_rows(model(toks, lengths=lens), hf_run(hf, toks, mask).logits.numpy(), lens) < ATOL
    assert not model.cfg.extra["W_E_in_place"]  # converted once into float32


@pytest.mark.parametrize("name", ["gpt2-untied-relu-3heads", "neox-parallel-rot0.25"])
def test_sharded_checkpoint(checkpoint, name):
    import os

    folder, hf = checkpoint(name, shard="40KB")
    files = os.listdir(folder)
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    model = ctxlookup.Model.load(folder)
    toks, lens, mask = padded_batch(model.cfg.d_vocab, LENGTHS, seed=2)
    assert max_err_rows(model(toks, lengths=lens), hf_run(hf, toks, mask).logits.numpy(), lens) < ATOL


@pytest.mark.parametrize("name", ["gpt2-tied-gelu_new", "neox-parallel-rot0.25"])
def test_each_row_alone_equals_padded_batch(checkpoint, name):
    model = ctxlookup.Model.load(checkpoint(name)[0])
    toks, lens, _ = padded_batch(model.cfg.d_vocab, LENGTHS, seed=3)
    batch_logits, batch_cache = model.run_with_cache(toks, lengths=lens, names_filter=lambda n: "hook_result" in n)
    for b, n in enumerate(lens):
        alone_logits, alone_cache = model.run_with_cache(toks[b:b + 1, :n], names_filter=lambda n: "hook_result" in n)
        assert_same_up_to_reordering(batch_logits[b, :n], alone_logits[0])
        for k in batch_cache:
            assert_same_up_to_reordering(batch_cache[k][b, :n], alone_cache[k][0])
    # the list-of-arrays form is the same batch
    ragged = [toks[b, :n] for b, n in enumerate(lens)]
    np.testing.assert_array_equal(model(ragged), model(toks, lengths=lens))


def _torch_hooks(hf, is_neox):
    """Register forward hooks on the transformers modules; returns (store, handles)."""
    store, handles = {}, []
    blocks = hf.gpt_neox.layers if is_neox else hf.transformer.h

    def save(key, fn):
        def hook(mod, inp, out):
            store[key] = fn(inp, out)
        return hook

    for i, blk in enumerate(blocks):
        if is_neox:
            mods = dict(ln1=blk.input_layernorm, ln2=blk.post_attention_layernorm, qkv=blk.attention.query_key_value,
                        o=blk.attention.dense, fc=blk.mlp.dense_h_to_4h, proj=blk.mlp.dense_4h_to_h, attn=blk.attention,
                        mlp=blk.mlp)
        else:
            mods = dict(ln1=blk.ln_1, ln2=blk.ln_2, qkv=blk.attn.c_attn, o=blk.attn.c_proj, fc=blk.mlp.c_fc,
                        proj=blk.mlp.c_proj, attn=blk.attn, mlp=blk.mlp)
        for ln in ("ln1", "ln2"):
            handles.append(mods[ln].register_forward_hook(save(f"{i}.{ln}.in", lambda inp, out: inp[0].clone())))
            handles.append(mods[ln].register_forward_hook(save(f"{i}.{ln}.out", lambda inp, out: out.clone())))
        handles.append(mods["qkv"].register_forward_hook(save(f"{i}.qkv", lambda inp, out: out.clone())))
        handles.append(mods["o"].register_forward_hook(save(f"{i}.z", lambda inp, out: inp[0].clone())))
        handles.append(mods["fc"].register_forward_hook(save(f"{i}.pre", lambda inp, out: out.clone())))
        handles.append(mods["proj"].register_forward_hook(save(f"{i}.post", lambda inp, out: inp[0].clone())))
        handles.append(mods["attn"].register_forward_hook(save(f"{i}.attn_out", lambda inp, out: out[0].clone())))
        handles.append(mods["mlp"].register_forward_hook(save(f"{i}.mlp_out", lambda inp, out: out.clone())))
    return store, handles


def _rotary_np(x, rotary_dim, base):
    """NeoX rotate-half on the first rotary_dim dims; x (B, T, H, d_head), positions 0..T-1."""
    half = rotary_dim // 2
    inv = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))
    ang = np.arange(x.shape[1])[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    out = x.astype(np.float64).copy()
    x1, x2 = x[..., :half], x[..., half:rotary_dim]
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half:rotary_dim] = x2 * cos + x1 * sin
    return out


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_hooks_transformers_does_not_output(checkpoint, name):
    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder)
    c = model.cfg
    is_neox = name in NEOX_CONFIGS
    toks, lens, mask = padded_batch(c.d_vocab, LENGTHS, seed=4)
    store, handles = _torch_hooks(hf, is_neox)
    try:
        hf_run(hf, toks, mask)
    finally:
        for h in handles:
            h.remove()
    _, cache = model.run_with_cache(toks, lengths=lens)
    B, T, H, dh, D = len(lens), toks.shape[1], c.n_heads, c.d_head, c.d_model
    for i in range(c.n_layers):
        qkv = store[f"{i}.qkv"].numpy()
        if is_neox:
            q, k, v = np.split(qkv.reshape(B, T, H, 3 * dh), 3, axis=-1)
        else:
            q, k, v = (a.reshape(B, T, H, dh) for a in np.split(qkv, 3, axis=-1))
        z = store[f"{i}.z"].numpy().reshape(B, T, H, dh)
        W_O = model.W_O[i]
        expect = {
            "attn.hook_q": q, "attn.hook_k": k, "attn.hook_v": v, "attn.hook_z": z,
            "attn.hook_result": np.einsum("bthd,hdm->bthm", z, W_O),
            "mlp.hook_pre": store[f"{i}.pre"].numpy(), "mlp.hook_post": store[f"{i}.post"].numpy(),
            "hook_attn_out": store[f"{i}.attn_out"].numpy(), "hook_mlp_out": store[f"{i}.mlp_out"].numpy(),
            "ln1.hook_normalized": store[f"{i}.ln1.out"].numpy(), "ln2.hook_normalized": store[f"{i}.ln2.out"].numpy(),
        }
        for ln in ("ln1", "ln2"):
            x = store[f"{i}.{ln}.in"].numpy().astype(np.float64)
            expect[f"{ln}.hook_scale"] = np.sqrt(x.var(-1, keepdims=True) + c.eps)
        if c.rotary_dim:
            expect["attn.hook_rot_q"] = _rotary_np(q, c.rotary_dim, c.rotary_base)
            expect["attn.hook_rot_k"] = _rotary_np(k, c.rotary_dim, c.rotary_base)
        else:
            expect["hook_resid_mid"] = store[f"{i + 1}.ln2.in"].numpy() if False else store[f"{i}.ln2.in"].numpy()
        if not c.parallel_attn_mlp and c.rotary_dim:
            expect["hook_resid_mid"] = store[f"{i}.ln2.in"].numpy()
        qs = expect.get("attn.hook_rot_q", q).astype(np.float64)
        ks = expect.get("attn.hook_rot_k", k).astype(np.float64)
        scale = c.extra["attn_scale"] / ((i + 1) if c.extra["scale_attn_by_inverse_layer_idx"] else 1)
        scores = np.einsum("bqhd,bkhd->bhqk", qs, ks) * scale
        for suffix, want in expect.items():
            got = cache[f"blocks.{i}.{suffix}"]
            assert got.shape == want.shape, (suffix, got.shape, want.shape)
            err = max_err_rows(got, want, lens)
            assert err < ATOL, f"blocks.{i}.{suffix}: max error {err}"
        got_scores = cache[f"blocks.{i}.attn.hook_attn_scores"]
        for b, n in enumerate(lens):
            tri = np.tril(np.ones((n, n), bool))
            np.testing.assert_allclose(got_scores[b][:, :n, :n][:, tri], scores[b][:, :n, :n][:, tri], atol=ATOL)
            assert np.all(np.isneginf(got_scores[b][:, :n, :n][:, ~tri]))


def _ablate_hf_head(hf, is_neox, layer, head, d_head):
    blk = hf.gpt_neox.layers[layer] if is_neox else hf.transformer.h[layer]
    o = blk.attention.dense if is_neox else blk.attn.c_proj

    def pre(mod, args):
        z = args[0].clone()
        z[..., head * d_head:(head + 1) * d_head] = 0
        return (z,)

    return o.register_forward_pre_hook(pre)


@pytest.mark.parametrize("name", ["gpt2-tied-gelu_new", "neox-parallel-rot0.25", "neox-sequential-rot1.0-5heads"])
def test_zero_ablation_matches_python_hook_on_transformers(checkpoint, name):
    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder)
    toks, lens, mask = padded_batch(model.cfg.d_vocab, LENGTHS, seed=5)
    h = _ablate_hf_head(hf, name in NEOX_CONFIGS, 1, 1, model.cfg.d_head)
    try:
        want = hf_run(hf, toks, mask).logits.numpy()
    finally:
        h.remove()
    got = model.run_with_hooks(toks, lengths=lens, ablate_heads=[(1, 1)])
    assert max_err_rows(got, want, lens) < ATOL
    clean = model(toks, lengths=lens)
    assert max_err_rows(got, clean, lens) > 1e-3  # the ablation did something

    # the same with a Python callback
    def zero_head(z, hook):
        z[:, :, 1, :] = 0

    got_cb = model.run_with_hooks(toks, [("blocks.1.attn.hook_z", zero_head)], lengths=lens)
    assert max_err_rows(got_cb, want, lens) < ATOL


def test_mean_ablation_and_set_neurons_equal_callbacks(checkpoint):
    model = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])
    c = model.cfg
    toks, lens, _ = padded_batch(c.d_vocab, LENGTHS, seed=6)
    mean_z = np.random.RandomState(0).randn(c.n_layers, c.n_heads, c.d_head).astype(np.float32)

    def set_mean(z, hook):
        z[:, :, 2, :] = mean_z[0, 2]
        return z

    def set_neuron(post, hook):
        post[:, :, 5] = 3.0
        return post

    a = model.run_with_hooks(toks, lengths=lens, ablate_heads=[(0, 2)], head_ablation="mean", mean_z=mean_z,
                             set_neurons=[(1, 5, 3.0)])
    b = model.run_with_hooks(toks, [("blocks.0.attn.hook_z", set_mean), ("blocks.1.mlp.hook_post", set_neuron)],
                             lengths=lens)
    for i, n in enumerate(lens):
        np.testing.assert_allclose(a[i, :n], b[i, :n], atol=1e-6)
    _, cache = model.run_with_cache(toks, lengths=lens, names_filter="blocks.1.mlp.hook_post", set_neurons=[(1, 5, 3.0)])
    assert np.all(cache["blocks.1.mlp.hook_post"][0, :, 5] == 3.0)


def test_patching_resid_reproduces_source_run(checkpoint):
    model = ctxlookup.Model.load(checkpoint("neox-parallel-rot0.25")[0])
    rng = np.random.RandomState(7)
    clean = rng.randint(0, model.cfg.d_vocab, size=(2, 11))
    corrupt = rng.randint(0, model.cfg.d_vocab, size=(2, 11))
    clean_logits, cache = model.run_with_cache(clean, names_filter="blocks.1.hook_resid_pre")
    patched = model.run_with_hooks(corrupt, patch={"blocks.1.hook_resid_pre": cache["blocks.1.hook_resid_pre"]})
    np.testing.assert_allclose(patched, clean_logits, atol=1e-5)
    # patching an attention pattern: the pattern of the clean run, everything else corrupt
    _, pc = model.run_with_cache(clean, names_filter="blocks.0.attn.hook_pattern")
    _, out = model.run_with_cache(corrupt, names_filter="blocks.0.attn.hook_pattern",
                                  patch={"blocks.0.attn.hook_pattern": pc["blocks.0.attn.hook_pattern"]})
    np.testing.assert_array_equal(out["blocks.0.attn.hook_pattern"], pc["blocks.0.attn.hook_pattern"])


def test_callback_errors_propagate_and_shapes_are_checked(checkpoint):
    model = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])
    toks = np.arange(10)[None] % model.cfg.d_vocab

    def boom(x, hook):
        raise KeyError("from the hook " + hook.name)

    with pytest.raises(KeyError, match="from the hook blocks.0.mlp.hook_pre"):
        model.run_with_hooks(toks, [("blocks.0.mlp.hook_pre", boom)])
    with pytest.raises(ValueError, match="wrong shape"):
        model.run_with_hooks(toks, [("blocks.0.mlp.hook_pre", lambda x, hook: x[:, :3])])
    seen = []
    model.run_with_hooks(toks, [(lambda n: n.endswith("hook_resid_post"), lambda x, hook: seen.append(hook.layer()))])
    assert seen == list(range(model.cfg.n_layers))


def test_stop_at_layer_and_pos(checkpoint):
    model = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])
    toks, lens, _ = padded_batch(model.cfg.d_vocab, LENGTHS, seed=8)
    full_logits, full = model.run_with_cache(toks, lengths=lens)
    logits, part = model.run_with_cache(toks, lengths=lens, stop_at_layer=2,
                                        names_filter=lambda n: n.startswith(("blocks.0", "blocks.1")))
    assert logits is None
    for k, v in part.items():
        np.testing.assert_array_equal(v, full[k])
    with pytest.raises(ValueError, match="not reached with stop_at_layer"):
        model.run_with_cache(toks, lengths=lens, stop_at_layer=1, names_filter="blocks.2.mlp.hook_post")
    _, last = model.run_with_cache(toks, lengths=lens, pos="last", names_filter=["blocks.1.mlp.hook_post",
                                                                                  "blocks.1.attn.hook_pattern"])
    post = last["blocks.1.mlp.hook_post"]
    assert post.shape == (4, model.cfg.d_mlp)
    for b, n in enumerate(lens):
        np.testing.assert_array_equal(post[b], full["blocks.1.mlp.hook_post"][b, n - 1])
        np.testing.assert_array_equal(last["blocks.1.attn.hook_pattern"][b], full["blocks.1.attn.hook_pattern"][b, :, n - 1])
    pos = np.array([[0, 5], [1, 2], [0, 0], [11, 3]])
    _, two = model.run_with_cache(toks, lengths=lens, pos=pos, names_filter="blocks.0.hook_resid_post")
    assert two["blocks.0.hook_resid_post"].shape == (4, 2, model.cfg.d_model)
    np.testing.assert_array_equal(two["blocks.0.hook_resid_post"][3, 0], full["blocks.0.hook_resid_post"][3, 11])
    with pytest.raises(ValueError, match="outside sequence 2"):
        model.run_with_cache(toks, lengths=lens, pos=np.array([[0], [0], [1], [0]]), names_filter="blocks.0.hook_resid_post")
    assert full["blocks.0.attn.hook_pattern"].shape == (4, model.cfg.n_heads, 17, 17)
    assert full["ln1.hook_scale".join(["blocks.0.", ""])].shape == (4, 17, 1)


@pytest.mark.parametrize("mmap", [False, True])
def test_weights_are_read_only_views_in_transformerlens_layout(checkpoint, mmap):
    folder, hf = checkpoint("gpt2-tied-gelu_new")
    model = ctxlookup.Model.load(folder, mmap=mmap)
    c = model.cfg
    shapes = dict(W_E=(c.d_vocab, c.d_model), W_pos=(c.n_ctx, c.d_model), W_Q=(c.n_layers, c.n_heads, c.d_model, c.d_head),
                  W_O=(c.n_layers, c.n_heads, c.d_head, c.d_model), b_Q=(c.n_layers, c.n_heads, c.d_head),
                  W_in=(c.n_layers, c.d_model, c.d_mlp), W_out=(c.n_layers, c.d_mlp, c.d_model),
                  W_U=(c.d_model, c.d_vocab), b_U=(c.d_vocab,), ln1_w=(c.n_layers, c.d_model))
    for name, shape in shapes.items():
        w = getattr(model, name)
        assert w.shape == shape and w.dtype == np.float32, name
        assert not w.flags.writeable
        with pytest.raises(ValueError):
            w[(0,) * w.ndim] = 1.0
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    c_attn = sd["transformer.h.1.attn.c_attn.weight"]
    D, dh = c.d_model, c.d_head
    for h in range(c.n_heads):
        np.testing.assert_array_equal(model.W_Q[1, h], c_attn[:, h * dh:(h + 1) * dh])
        np.testing.assert_array_equal(model.W_V[1, h], c_attn[:, 2 * D + h * dh: 2 * D + (h + 1) * dh])
    np.testing.assert_array_equal(model.W_U, sd["transformer.wte.weight"].T)
    # F32 embeddings used from the mapping only when asked; by default every weight is a private copy
    assert c.extra["W_E_in_place"] == mmap and c.extra["W_U_in_place"] == mmap
    assert np.shares_memory(model.W_E, model.W_U)
    # views keep the model alive
    w = model.W_in
    del model
    assert float(np.abs(w).sum()) > 0


def test_neox_weights_match_per_head_packing(checkpoint):
    folder, hf = checkpoint("neox-sequential-rot1.0-5heads")
    model = ctxlookup.Model.load(folder)
    c = model.cfg
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    qkv = sd["gpt_neox.layers.0.attention.query_key_value.weight"].reshape(c.n_heads, 3, c.d_head, c.d_model)
    for h in range(c.n_heads):
        np.testing.assert_array_equal(model.W_K[0, h], qkv[h, 1].T)
    np.testing.assert_array_equal(model.W_U, sd.get("embed_out.weight", sd.get("lm_head.weight")).T)
    np.testing.assert_array_equal(model.W_out[1], sd["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"].T)
    assert model.cfg.positional_embedding_type == "rotary" and "hook_pos_embed" not in model.hook_names
    assert "blocks.0.hook_resid_mid" in model.hook_names  # sequential NeoX has resid_mid


def test_cfg_and_hook_names(checkpoint):
    model = ctxlookup.Model.load(checkpoint("neox-parallel-rot0.25")[0])
    c = model.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.d_head, c.d_mlp, c.d_vocab, c.n_ctx) == (3, 64, 4, 16, 128, 112, 64)
    assert c.act_fn == "gelu" and c.rotary_dim == 4 and c.parallel_attn_mlp and c.eps == pytest.approx(1e-5)
    assert c.arch == "GPTNeoXForCausalLM"
    assert "blocks.0.hook_resid_mid" not in model.hook_names and "blocks.2.attn.hook_rot_q" in model.hook_names
    assert model.hook_names[0] == "hook_embed" and model.hook_names[-1] == "ln_final.hook_normalized"
    _, cache = model.run_with_cache(np.arange(5)[None], names_filter=lambda n: True)
    assert set(cache) == set(model.hook_names)
    assert cache["post", 1] is cache["blocks.1.mlp.hook_post"]


def test_threads_setting(checkpoint):
    model = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])
    toks, lens, _ = padded_batch(model.cfg.d_vocab, LENGTHS, seed=9)
    before = ctxlookup.get_num_threads()
    try:
        ctxlookup.set_num_threads(1)
        one = model(toks, lengths=lens)
        ctxlookup.set_num_threads(2)
        two = model(toks, lengths=lens)
    finally:
        ctxlookup.set_num_threads(before)
    np.testing.assert_allclose(one, two, atol=1e-6)
    with pytest.raises(ValueError):
        ctxlookup.set_num_threads(0)


def test_logits_at_last_position_only(checkpoint):
    model = ctxlookup.Model.load(checkpoint("neox-parallel-rot0.25")[0])
    toks, lens, _ = padded_batch(model.cfg.d_vocab, LENGTHS, seed=14)
    full = model(toks, lengths=lens)
    last = model(toks, lengths=lens, logits_pos="last")
    assert last.shape == (4, model.cfg.d_vocab)
    np.testing.assert_allclose(last, full[np.arange(4), lens - 1], atol=1e-5)
    with pytest.raises(ValueError, match="logits_pos"):
        model(toks, lengths=lens, logits_pos="first")
