"""Bad input to the model: every case is a Python exception naming the file, tensor, field or
hook and what was expected. One test per case."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

import ctxlookup
from ctxlookup import FormatError


@pytest.fixture
def ckpt(checkpoint, tmp_path):
    """A writable copy of a small GPT-2 checkpoint."""
    src, _ = checkpoint("gpt2-tied-gelu_new")
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def read_st(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_truncated_file(ckpt):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(FormatError, match=r"model.safetensors: tensor '.*': data_offsets end \d+ is outside .*truncated"):
        ctxlookup.Model.load(ckpt)


def test_file_shorter_than_header(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(FormatError, match="too short for a safetensors file"):
        ctxlookup.Model.load(ckpt)


def test_header_length_outside_file(ckpt):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 10 ** 12) + raw[8:])
    with pytest.raises(FormatError, match="header length 1000000000000 does not fit"):
        ctxlookup.Model.load(ckpt)


def test_header_not_json(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 8) + b"{not js}")
    with pytest.raises(FormatError, match="header is not valid JSON"):
        ctxlookup.Model.load(ckpt)


def test_offsets_outside_file(ckpt):
    f = ckpt / "model.safetensors"
    hdr, data = read_st(f)
    name = "transformer.ln_f.bias"
    b, e = hdr[name]["data_offsets"]
    hdr[name]["data_offsets"] = [len(data) + 8, len(data) + 8 + (e - b)]
    write_st(f, hdr, data)
    with pytest.raises(FormatError, match=f"tensor '{name}': data_offsets end .* outside"):
        ctxlookup.Model.load(ckpt)


def test_overlapping_tensors(ckpt):
    f = ckpt / "model.safetensors"
    hdr, data = read_st(f)
    a, b = "transformer.ln_f.bias", "transformer.ln_f.weight"
    hdr[b]["data_offsets"] = hdr[a]["data_offsets"]
    write_st(f, hdr, data)
    with pytest.raises(FormatError, match="overlaps tensor"):
        ctxlookup.Model.load(ckpt)


def test_offsets_disagree_with_shape(ckpt):
    f = ckpt / "model.safetensors"
    hdr, data = read_st(f)
    hdr["transformer.ln_f.bias"]["shape"] = [47]
    write_st(f, hdr, data)
    with pytest.raises(FormatError, match="'transformer.ln_f.bias': data_offsets span 192 bytes but dtype F32 and its shape need 188"):
        ctxlookup.Model.load(ckpt)


def test_wrong_dtype(ckpt):
    f = ckpt / "model.safetensors"
    hdr, data = read_st(f)
    hdr["transformer.ln_f.bias"]["dtype"] = "I32"
    write_st(f, hdr, data)
    with pytest.raises(FormatError, match="tensor 'transformer.ln_f.bias' has dtype I32; F32, F16 or BF16 expected"):
        ctxlookup.Model.load(ckpt)


def test_unknown_dtype(ckpt):
    f = ckpt / "model.safetensors"
    hdr, data = read_st(f)
    hdr["transformer.ln_f.bias"]["dtype"] = "F42"
    write_st(f, hdr, data)
    with pytest.raises(FormatError, match="unknown dtype 'F42'"):
        ctxlookup.Model.load(ckpt)


def test_wrong_shape(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["n_inner"] = 100
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"tensor 'transformer.h.0.mlp.c_fc.weight' has shape \[48, 192\]; config.json implies \[48, 100\]"):
        ctxlookup.Model.load(ckpt)


def test_missing_tensor(ckpt):
    f = ckpt / "model.safetensors"
    hdr, data = read_st(f)
    name = "transformer.h.1.mlp.c_proj.bias"
    b, e = hdr.pop(name)["data_offsets"]
    # close the hole so only the missing name is wrong
    for v in hdr.values():
        if isinstance(v, dict) and "data_offsets" in v and v["data_offsets"][0] >= e:
            v["data_offsets"] = [v["data_offsets"][0] - (e - b), v["data_offsets"][1] - (e - b)]
    write_st(f, hdr, data[:b] + data[e:])
    with pytest.raises(FormatError, match=f"tensor '{name}' is missing from the checkpoint"):
        ctxlookup.Model.load(ckpt)


def test_unknown_architecture(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="config.json: architecture 'LlamaForCausalLM' is not supported"):
        ctxlookup.Model.load(ckpt)


def test_config_missing_field_and_bad_value(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["n_embd"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="config.json: field 'n_embd' is missing"):
        ctxlookup.Model.load(ckpt)
    cfg["n_embd"] = 48
    cfg["activation_function"] = "swish"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="field 'activation_function' is 'swish'"):
        ctxlookup.Model.load(ckpt)


def test_no_checkpoint_in_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2,
                                                      "n_positions": 8, "vocab_size": 10}))
    with pytest.raises(OSError, match="no model.safetensors or model.safetensors.index.json"):
        ctxlookup.Model.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ctxlookup.Model.load(tmp_path / "nope")


def test_shard_missing_from_index(checkpoint, tmp_path):
    src, _ = checkpoint("neox-parallel-rot0.25", shard="40KB")
    dst = tmp_path / "sharded"
    shutil.copytree(src, dst)
    shard = sorted(p for p in os.listdir(dst) if p.endswith(".safetensors"))[1]
    os.remove(dst / shard)
    with pytest.raises(OSError, match=f"{shard}: cannot open"):
        ctxlookup.Model.load(dst)


@pytest.fixture(scope="module")
def model(checkpoint):
    return ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])


def test_token_ids_out_of_range(model):
    toks = np.array([[1, 2, 3, 97, 4]])
    with pytest.raises(ValueError, match=r"token id 97 at sequence 0, position 3 is outside the vocabulary \[0, 97\)"):
        model(toks)
    with pytest.raises(ValueError, match="token id -1"):
        model([np.array([1, 2]), np.array([-1])])


def test_sequence_longer_than_context(model):
    with pytest.raises(ValueError, match="sequence 0 has 65 tokens, more than the model's context n_ctx = 64"):
        model(np.zeros((1, 65), np.int64))


def test_empty_batch_and_empty_sequence(model):
    with pytest.raises(ValueError, match="empty batch"):
        model(np.zeros((0, 5), np.int64))
    with pytest.raises(ValueError, match="empty batch"):
        model([])
    with pytest.raises(ValueError, match=r"lengths\[1\] = 0 is outside"):
        model(np.zeros((2, 5), np.int64), lengths=[5, 0])


def test_unknown_hook_names(model):
    toks = np.zeros((1, 4), np.int64)
    with pytest.raises(ValueError, match="unknown hook name 'blocks.0.mlp.hook_postt'"):
        model.run_with_cache(toks, names_filter="blocks.0.mlp.hook_postt")
    with pytest.raises(ValueError, match="unknown hook name 'blocks.9.hook_resid_pre'"):
        model.run_with_hooks(toks, [("blocks.9.hook_resid_pre", lambda x, hook: x)])
    with pytest.raises(ValueError, match="unknown hook name 'hook_rot_q'"):
        model.run_with_cache(toks, names_filter=["hook_rot_q"])


def test_bad_token_arrays(model):
    with pytest.raises(TypeError, match="integer token ids"):
        model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="right-padded"):
        model(np.zeros((1, 3), np.int64), attention_mask=np.array([[0, 1, 1]]))
    with pytest.raises(ValueError, match=r"patch for hook 'blocks.0.hook_resid_pre' has shape \(1, 3\), expected \(1, 3, 48\)"):
        model.run_with_hooks(np.zeros((1, 3), np.int64), patch={"blocks.0.hook_resid_pre": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="neuron 500 is outside"):
        model.run_with_hooks(np.zeros((1, 3), np.int64), set_neurons=[(0, 500, 1.0)])
    with pytest.raises(ValueError, match="head 4 is outside"):
        model.run_with_hooks(np.zeros((1, 3), np.int64), ablate_heads=[(0, 4)])


# ---- hostile checkpoints: sizes, memory maps, config.json as transformers reads it, API ranges ----

from conftest import ATOL  # noqa: E402


def test_hostile_config_sizes_are_a_format_error_not_a_heap_overflow(tmp_path):
    """Sizes whose products wrap size_t once allocated a small arena that the copies overran."""
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "n_embd": 39432, "n_layer": 999924320, "n_inner": 155053,
        "n_positions": 1, "vocab_size": 1, "n_head": 1}))
    tensors = {"transformer.wte.weight": [1, 1], "transformer.wpe.weight": [1, 1], "transformer.ln_f.weight": [1]}
    hdr, off = {}, 0
    for name, shape in tensors.items():
        hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + 4]}
        off += 4
    write_st(tmp_path / "model.safetensors", hdr, b"\0" * off)
    with pytest.raises(FormatError, match=r"config.json: field 'n_layer' is 999924320; it must be in \[1, 1024\]"):
        ctxlookup.Model.load(tmp_path)
    # every size within bounds, but far more weights than the three small tensors hold
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(n_layer=1024, n_embd=39432, n_inner=155053)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"implies at least \d+ weights, but the checkpoint holds only 3"):
        ctxlookup.Model.load(tmp_path)


@pytest.mark.parametrize("field,value", [("n_embd", 70000), ("vocab_size", 1 << 23), ("n_positions", 0),
                                         ("n_head", 2000), ("n_inner", 1 << 19)])
def test_config_sizes_bounded(ckpt, field, value):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg[field] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=f"field '{field}' is {value}; it must be in"):
        ctxlookup.Model.load(ckpt)


def _rewrite_same_size(f):
    """Overwrite every weight byte of f in place with other values (same size, same inode)."""
    raw = bytearray(f.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    data = np.frombuffer(bytes(raw[8 + n:]), np.float32) * -0.5 + 0.25
    with open(f, "r+b") as fh:
        fh.seek(8 + n)
        fh.write(data.astype(np.float32).tobytes())


def test_private_copies_by_default_unaffected_by_file_changes(ckpt):
    model = ctxlookup.Model.load(ckpt)
    toks = np.arange(12)[None] % model.cfg.d_vocab
    before = model(toks)
    mapped = ctxlookup.Model.load(ckpt, mmap=True)  # W_E (= W_U, tied) and W_pos in the mapping instead
    assert model._core.arena_nbytes - mapped._core.arena_nbytes == 4 * (model.W_E.size + model.W_pos.size)
    assert not model.cfg.extra["W_E_in_place"] and not model.cfg.extra["W_U_in_place"]
    f = ckpt / "model.safetensors"
    _rewrite_same_size(f)
    np.testing.assert_array_equal(model(toks), before)
    os.truncate(f, 100)
    np.testing.assert_array_equal(model(toks), before)  # no SIGBUS: nothing is read from the file any more
    assert np.isfinite(model.W_E).all()


@pytest.mark.parametrize("change", ["truncate", "same-size rewrite"])
def test_mmap_weights_refuse_a_changed_file(ckpt, change):
    import time

    model = ctxlookup.Model.load(ckpt, mmap=True)
    assert model.cfg.extra["W_E_in_place"]
    toks = np.arange(12)[None] % model.cfg.d_vocab
    model(toks)
    f = ckpt / "model.safetensors"
    time.sleep(0.02)  # the file system's clock tick: a change within the tick of the last write keeps the mtime
    if change == "truncate":
        os.truncate(f, f.stat().st_size // 2)
    else:
        _rewrite_same_size(f)
    with pytest.raises(OSError, match=r"model.safetensors: the checkpoint file was modified after the model was loaded"):
        model(toks)
    with pytest.raises(OSError, match="modified after the model was loaded"):
        model.run_with_cache(toks, names_filter="blocks.0.hook_resid_pre")
    fresh = ctxlookup.Model.load(ckpt, mmap=True) if change != "truncate" else None
    if fresh is not None:
        assert np.isfinite(fresh(toks)).all()


def _hf_logits(folder, toks):
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(torch.tensor(toks)).logits.numpy(), hf


def test_config_duplicate_key_last_wins_as_transformers(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("activation_function", None)
    body = json.dumps(cfg)[:-1]
    (ckpt / "config.json").write_text(body + ', "activation_function": "relu", "activation_function": "gelu_new"}')
    toks = np.arange(20)[None] % cfg["vocab_size"]
    want, hf = _hf_logits(ckpt, toks)
    assert hf.config.activation_function == "gelu_new"
    model = ctxlookup.Model.load(ckpt)
    assert model.cfg.act_fn == "gelu_new"
    assert np.abs(model(toks) - want).max() < ATOL


@pytest.fixture
def neox_ckpt(checkpoint, tmp_path):
    src, _ = checkpoint("neox-parallel-rot0.25")
    dst = tmp_path / "neox"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fields,rotary_dim", [
    ({"rotary_pct": 0.5, "partial_rotary_factor": 1.0}, 8),                   # rotary_pct wins
    ({"partial_rotary_factor": 1.0, "rotary_pct": 0.5}, 8),                   # whatever the order
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 500, "partial_rotary_factor": 1.0},
      "rotary_pct": 0.5, "rotary_emb_base": 10}, 16),                         # rope_parameters wins
    ({"rope_theta": 77, "rotary_emb_base": 500, "rotary_pct": 0.5}, 8),       # top-level rope_theta unread
])
def test_config_rotary_fields_precedence_as_transformers(neox_ckpt, fields, rotary_dim):
    cfg = json.loads((neox_ckpt / "config.json").read_text())
    for k in ("rotary_pct", "rotary_emb_base", "rope_theta", "partial_rotary_factor", "rope_parameters", "rope_scaling"):
        cfg.pop(k, None)
    cfg.update(fields)
    (neox_ckpt / "config.json").write_text(json.dumps(cfg))
    toks = np.arange(40)[None] % cfg["vocab_size"]
    want, hf = _hf_logits(neox_ckpt, toks)
    model = ctxlookup.Model.load(neox_ckpt)
    assert model.cfg.rotary_dim == rotary_dim == hf.gpt_neox.layers[0].attention.rotary_ndims
    assert model.cfg.rotary_base == pytest.approx(hf.config.rope_parameters["rope_theta"])
    assert np.abs(model(toks) - want).max() < ATOL


def test_config_tied_with_separate_unembedding_uses_it_as_transformers(neox_ckpt):
    cfg = json.loads((neox_ckpt / "config.json").read_text())
    assert not cfg.get("tie_word_embeddings")
    cfg["tie_word_embeddings"] = True
    (neox_ckpt / "config.json").write_text(json.dumps(cfg))
    toks = np.arange(30)[None] % cfg["vocab_size"]
    want, hf = _hf_logits(neox_ckpt, toks)
    assert hf.get_output_embeddings().weight.data_ptr() != hf.get_input_embeddings().weight.data_ptr()
    model = ctxlookup.Model.load(neox_ckpt)
    assert not model.cfg.tied_embeddings
    assert np.abs(model(toks) - want).max() < ATOL


def test_ids_range_checked_before_the_int32_cast(model):
    V = model.cfg.d_vocab
    with pytest.raises(ValueError, match=rf"token id {2**32 + 3} at sequence 0, position 1 is outside the vocabulary \[0, {V}\)"):
        model([[1, 2**32 + 3]])
    with pytest.raises(ValueError, match=rf"token id {2**32 + 3} at sequence 1, position 0"):
        model([np.array([1, 2]), np.array([2**32 + 3])])
    toks = np.zeros((2, 5), np.int64)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 2.5 is not an integer"):
        model(toks, lengths=[2.5, 5])
    with pytest.raises(ValueError, match=rf"lengths\[1\] = {2**32 + 3} is outside the int32 range"):
        model(toks, lengths=[5, 2**32 + 3])
    with pytest.raises(ValueError, match=rf"pos\[0\]\[0\] = {2**32 + 1} is outside sequence 0's 5 tokens"):
        model.run_with_cache(toks, pos=[2**32 + 1, 1], names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match=r"pos\[1\] = 2.5 is not an integer"):
        model.run_with_cache(toks, pos=[1, 2.5], names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match=r"pos = 2.5 is not an integer"):
        model.run_with_cache(toks, pos=2.5, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match=r"stop_at_layer = 2.5 is not an integer"):
        model.run_with_cache(toks, stop_at_layer=2.5)
    with pytest.raises(ValueError, match=rf"stop_at_layer {2**32 + 1} is outside"):
        model.run_with_cache(toks, stop_at_layer=2**32 + 1)
    with pytest.raises(ValueError, match=r"layer = 0.5 is not an integer"):
        model.run_with_hooks(toks, set_neurons=[(0.5, 1, 1.0)])
    # the binding checks too, for callers of _core directly
    core = model._core
    with pytest.raises(ValueError, match=rf"tokens\[1\] \(flat index\) = {2**32 + 3} is outside the int32 range"):
        core.forward(np.array([1, 2**32 + 3]), np.array([2]), 2)
    with pytest.raises(ValueError, match=rf"pos\[1\] \(flat index\) = {2**32 + 1} is outside the int32 range"):
        core.forward(np.array([1, 2]), np.array([2]), 2, pos=np.array([[0, 2**32 + 1]]))
    with pytest.raises(TypeError, match="lengths must be an array of integers, got dtype"):
        core.forward(np.array([1, 2]), np.array([2.0]), 2)
    np.testing.assert_array_equal(model([[1, 3]]), core.forward(np.array([1, 3], np.uint64), np.array([2], np.int64), 2)[0])


@pytest.mark.parametrize("name,hook", [("gpt2-tied-gelu_new", "hook_q"), ("gpt2-tied-gelu_new", "hook_k"),
                                       ("neox-parallel-rot0.25", "hook_q"), ("neox-parallel-rot0.25", "hook_k")])
def test_nan_patched_into_q_or_k_propagates_as_in_pytorch(checkpoint, name, hook):
    """A NaN in one query feature: transformers' eager attention gives NaN in that query's pattern
    row; in one key feature: NaN in every row of that head's pattern (the causal mask is added to
    the scores, and NaN + mask is NaN); downstream, pattern @ v spreads a NaN value to every
    query (0 * NaN), as do the logits."""
    import torch

    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder)
    c = model.cfg
    T, t0, h0, layer = 9, 4, 1, 0
    toks = (np.arange(T)[None] * 7 + 3) % c.d_vocab
    _, clean = model.run_with_cache(toks, names_filter=f"blocks.{layer}.attn.{hook}")
    act = clean[f"blocks.{layer}.attn.{hook}"].copy()
    act[0, t0, h0, 2] = np.nan
    logits, cache = model.run_with_cache(toks, patch={f"blocks.{layer}.attn.{hook}": act},
                                         names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"]

    # the same NaN in transformers: the projection's output feature for (q or k, head h0, dim 2) at t0
    dh, D = c.d_head, c.d_model
    s = 0 if hook == "hook_q" else 1
    if name.startswith("gpt2"):
        mod, feat = hf.transformer.h[layer].attn.c_attn, s * D + h0 * dh + 2
    else:
        mod, feat = hf.gpt_neox.layers[layer].attention.query_key_value, (h0 * 3 + s) * dh + 2
    def put_nan(_m, _i, out):
        out = out.clone()
        out[0, t0, feat] = float("nan")
        return out
    handle = mod.register_forward_hook(put_nan)
    try:
        with torch.no_grad():
            out = hf(torch.tensor(toks), output_attentions=True)
    finally:
        handle.remove()
    want_p = out.attentions[layer].numpy()
    nan_rows = np.isnan(want_p)
    assert nan_rows.any() and not nan_rows.all()
    np.testing.assert_array_equal(np.isnan(pattern), nan_rows)
    assert np.abs(np.nan_to_num(pattern) - np.nan_to_num(want_p)).max() < ATOL
    want_l = out.logits.numpy()
    np.testing.assert_array_equal(np.isnan(logits), np.isnan(want_l))
    fin = ~np.isnan(want_l)
    assert not fin.any() or np.abs(logits[fin] - want_l[fin]).max() < ATOL


def test_non_utf8_tensor_name_is_the_named_format_error(ckpt):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = raw[8:8 + n].replace(b'"transformer.ln_f.bias"', b'"transformer.ln_f.\xff\xfeas"')  # same length
    f.write_bytes(raw[:8] + hdr + raw[8 + n:])
    with pytest.raises(FormatError, match=r"tensor 'transformer.ln_f.bias' is missing"):
        ctxlookup.Model.load(ckpt)
    hdr = raw[8:8 + n].replace(b'"transformer.ln_f.bias":{"dtype":"F32"', b'"transformer.ln_f.\xff\xfeas":{"dtype":"Q99"')
    assert hdr != raw[8:8 + n]
    f.write_bytes(raw[:8] + hdr + raw[8 + n:])
    with pytest.raises(FormatError, match=r"tensor 'transformer.ln_f.\\xff\\xfeas': unknown dtype 'Q99'"):
        ctxlookup.Model.load(ckpt)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_fifo_instead_of_a_checkpoint_file_is_refused_at_once(ckpt, name):
    os.remove(ckpt / name)
    os.mkfifo(ckpt / name)
    with pytest.raises(OSError, match=rf"{name}: is a FIFO \(named pipe\), not a regular file"):
        ctxlookup.Model.load(ckpt)
