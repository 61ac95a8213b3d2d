"""Small, dependency-free file helpers: write a safetensors file, make a random checkpoint.

``save_safetensors`` writes the format ctxlookup reads (8-byte little-endian header length,
JSON header, tensors back to back). ``random_checkpoint`` writes a Hugging Face-format GPT-2 or
GPT-NeoX folder with random weights: handy for examples and tests with no PyTorch installed.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import numpy as np

__all__ = ["save_safetensors", "random_checkpoint"]

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
           np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}


def save_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> array) to ``path`` in the safetensors format (atomically)."""
    header, offset, arrays = {}, 0, []
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _DTYPES:
            raise TypeError(f"tensor '{name}': dtype {a.dtype} is not supported ({sorted(map(str, _DTYPES))})")
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.incomplete"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


def random_checkpoint(folder, arch: str = "gpt2", n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
                      d_mlp: int | None = None, d_vocab: int = 256, n_ctx: int = 128, seed: int = 0,
                      std: float = 0.2) -> str:
    """Write a random GPT-2 (``arch="gpt2"``) or GPT-NeoX (``"neox"``) checkpoint into ``folder``."""
    rng = np.random.default_rng(seed)
    d_mlp = d_mlp or 4 * d_model
    os.makedirs(folder, exist_ok=True)

    def w(*shape):
        return (std * rng.standard_normal(shape)).astype(np.float32)

    def ln():
        return (1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32), (0.1 * rng.standard_normal(d_model)).astype(np.float32)

    t = {}
    if arch == "gpt2":
        cfg = dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                   n_inner=d_mlp, n_positions=n_ctx, vocab_size=d_vocab, activation_function="gelu_new",
                   layer_norm_epsilon=1e-5, tie_word_embeddings=True)
        t["transformer.wte.weight"], t["transformer.wpe.weight"] = w(d_vocab, d_model), w(n_ctx, d_model)
        for i in range(n_layers):
            p = f"transformer.h.{i}."
            t[p + "ln_1.weight"], t[p + "ln_1.bias"] = ln()
            t[p + "ln_2.weight"], t[p + "ln_2.bias"] = ln()
            t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = w(d_model, 3 * d_model), w(3 * d_model)
            t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = w(d_model, d_model), w(d_model)
            t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = w(d_model, d_mlp), w(d_mlp)
            t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = w(d_mlp, d_model), w(d_model)
        t["transformer.ln_f.weight"], t["transformer.ln_f.bias"] = ln()
    elif arch == "neox":
        cfg = dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", hidden_size=d_model,
                   num_hidden_layers=n_layers, num_attention_heads=n_heads, intermediate_size=d_mlp,
                   max_position_embeddings=n_ctx, vocab_size=d_vocab, hidden_act="gelu", rotary_pct=0.25,
                   rotary_emb_base=10000, use_parallel_residual=True, layer_norm_eps=1e-5, tie_word_embeddings=False)
        t["gpt_neox.embed_in.weight"], t["embed_out.weight"] = w(d_vocab, d_model), w(d_vocab, d_model)
        for i in range(n_layers):
            p = f"gpt_neox.layers.{i}."
            t[p + "input_layernorm.weight"], t[p + "input_layernorm.bias"] = ln()
            t[p + "post_attention_layernorm.weight"], t[p + "post_attention_layernorm.bias"] = ln()
            t[p + "attention.query_key_value.weight"], t[p + "attention.query_key_value.bias"] = w(3 * d_model, d_model), w(3 * d_model)
            t[p + "attention.dense.weight"], t[p + "attention.dense.bias"] = w(d_model, d_model), w(d_model)
            t[p + "mlp.dense_h_to_4h.weight"], t[p + "mlp.dense_h_to_4h.bias"] = w(d_mlp, d_model), w(d_mlp)
            t[p + "mlp.dense_4h_to_h.weight"], t[p + "mlp.dense_4h_to_h.bias"] = w(d_model, d_mlp), w(d_model)
        t["gpt_neox.final_layer_norm.weight"], t["gpt_neox.final_layer_norm.bias"] = ln()
    else:
        raise ValueError(f"arch must be 'gpt2' or 'neox', got '{arch}'")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_safetensors(os.path.join(folder, "model.safetensors"), t, {"format": "pt"})
    return str(folder)
