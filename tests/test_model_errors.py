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
