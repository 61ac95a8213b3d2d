"""Seed corpora for the fuzzers: small real checkpoints' safetensors files and config.json
(written with transformers when it is installed, else a hand-made GPT-2 of the same layout),
and the shared GPT-2 / GPT-NeoX tokenizer files (cut down to keep the inputs small).
usage: make_seeds.py OUT_DIR SHARED_TOKENIZERS_DIR"""
import json
import os
import struct
import sys

import numpy as np


def write_st(tensors):
    hdr, off, blobs = {}, 0, []
    for name, a in tensors.items():
        b = a.astype(np.float32).tobytes()
        hdr[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def main(out, tok_dir):
    for d in ("safetensors", "config", "tokenizer"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    rng = np.random.default_rng(0)
    D, V, C, L = 8, 11, 6, 1
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "n_embd": D, "n_layer": L, "n_head": 2, "n_positions": C,
            "vocab_size": V, "activation_function": "gelu_new", "tie_word_embeddings": True}
    neox = {"architectures": ["GPTNeoXForCausalLM"], "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": C, "vocab_size": V, "rotary_pct": 0.5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500, "partial_rotary_factor": 0.5},
            "use_parallel_residual": True, "hidden_act": "gelu", "attention_bias": True}
    for i, c in enumerate((gpt2, neox)):
        with open(os.path.join(out, "config", f"config{i}.json"), "w") as f:
            json.dump(c, f)
    t = {"transformer.wte.weight": rng.normal(size=(V, D)), "transformer.wpe.weight": rng.normal(size=(C, D)),
         "transformer.ln_f.weight": np.ones(D), "transformer.h.0.attn.c_attn.weight": rng.normal(size=(D, 3 * D))}
    with open(os.path.join(out, "safetensors", "gpt2.safetensors"), "wb") as f:
        f.write(write_st(t))
    with open(os.path.join(out, "safetensors", "one.safetensors"), "wb") as f:
        f.write(write_st({"a": np.arange(3.0)}))
    gdir, ndir = os.path.join(tok_dir, "gpt2"), os.path.join(tok_dir, "gpt-neox-20b")
    if os.path.isdir(gdir):  # vocab.json (first 400 entries + bytes) \0 merges.txt (first 300 lines), tag byte 0
        vocab = json.load(open(os.path.join(gdir, "vocab.json"), encoding="utf-8"))
        small = dict(list(vocab.items())[:400])
        merges = open(os.path.join(gdir, "merges.txt"), encoding="utf-8").read().splitlines()[:300]
        blob = b"\0" + json.dumps(small).encode() + b"\0" + "\n".join(merges).encode() + b"\nHello world, it's 2024!"
        open(os.path.join(out, "tokenizer", "gpt2"), "wb").write(blob)
    if os.path.isdir(ndir):  # tokenizer.json with a cut vocabulary and merges, tag byte 1
        tj = json.load(open(os.path.join(ndir, "tokenizer.json"), encoding="utf-8"))
        tj["model"]["vocab"] = dict(list(tj["model"]["vocab"].items())[:400])
        tj["model"]["merges"] = tj["model"]["merges"][:200]
        tj["added_tokens"] = tj["added_tokens"][:5]
        open(os.path.join(out, "tokenizer", "neox"), "wb").write(b"\1" + json.dumps(tj).encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
