"""Shared fixtures: small random checkpoints written by Hugging Face transformers.

Every checkpoint is a real ``save_pretrained`` folder, with all parameters (LayerNorms included)
drawn at a scale that makes attention patterns and activations far from uniform, so parity
tests can fail. Tolerance for float32 parity with transformers is stated once: ATOL.
"""
import os
import pathlib

import numpy as np
import pytest

ATOL = 1e-4  # max |ctxlookup - oracle| for float32 activations, logits and patterns
# One computation done twice with its float32 sums in another order (a padded batch against each row
# alone: the BLAS kernel tiles a 40-row GEMM differently from a 7-row one, and on some CPUs, e.g. an
# AVX2-only AMD EPYC, its edge tiles round differently) agrees to a few units in the last place of the
# largest value: REORDER_RTOL x max |value|. Not a parity tolerance: two different implementations get ATOL.
REORDER_RTOL = 8 * float(np.finfo(np.float32).eps)


def assert_same_up_to_reordering(got, want):
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=REORDER_RTOL * float(np.abs(want).max(initial=0.0)))
# `make sanitize-py` runs the binding tests against an AddressSanitizer build of the core, which is
# several times slower: there the corpus-wide checks take a sample (every 20th document).
SANITIZE = bool(os.environ.get("CTXLOOKUP_SANITIZE"))
SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GPT2_CONFIGS = {
    # name: kwargs for GPT2Config
    "gpt2-tied-gelu_new": dict(n_embd=48, n_layer=3, n_head=4, n_positions=64, vocab_size=97),
    "gpt2-untied-relu-3heads": dict(n_embd=36, n_layer=2, n_head=3, n_positions=40, vocab_size=101, n_inner=50,
                                    activation_function="relu", tie_word_embeddings=False),
    "gpt2-long-context": dict(n_embd=32, n_layer=2, n_head=2, n_positions=700, vocab_size=61),
    "gpt2-gelu-layerscale": dict(n_embd=48, n_layer=2, n_head=6, n_positions=64, vocab_size=89,
                                 activation_function="gelu", scale_attn_by_inverse_layer_idx=True),
}
NEOX_CONFIGS = {
    "neox-parallel-rot0.25": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, intermediate_size=128,
                                  vocab_size=112, max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=True),
    "neox-sequential-rot1.0-5heads": dict(hidden_size=80, num_attention_heads=5, num_hidden_layers=2,
                                          intermediate_size=96, vocab_size=97, max_position_embeddings=48,
                                          rotary_pct=1.0, rotary_emb_base=500, use_parallel_residual=False),
    "neox-parallel-tied-gelu_new": dict(hidden_size=64, num_attention_heads=2, num_hidden_layers=2,
                                        intermediate_size=256, vocab_size=128, max_position_embeddings=64,
                                        rotary_pct=0.5, tie_word_embeddings=True, hidden_act="gelu_new"),
}
NEOX_CONFIGS["neox-long-context"] = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64,
                                         vocab_size=61, max_position_embeddings=700, rotary_pct=0.5)
LONG_CONFIGS = ["gpt2-long-context", "neox-long-context"]
ALL_CONFIGS = [n for n in list(GPT2_CONFIGS) + list(NEOX_CONFIGS) if n not in LONG_CONFIGS]


def randomize(model, seed=0, std=0.15):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "ln" in n or "norm" in n:
                p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(std * noise)
    model.eval()
    return model


def build_hf(name, seed=0):
    import transformers

    if name in GPT2_CONFIGS:
        cfg = transformers.GPT2Config(**GPT2_CONFIGS[name], bos_token_id=0, eos_token_id=0, attn_implementation="eager")
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.GPTNeoXConfig(**NEOX_CONFIGS[name], bos_token_id=0, eos_token_id=0, attn_implementation="eager")
        model = transformers.GPTNeoXForCausalLM(cfg)
    randomize(model, seed)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(name, dtype="float32", shard=None) -> (folder, hf model in float32 with the same weights)."""
    cache = {}

    def make(name, dtype="float32", shard=None):
        key = (name, dtype, shard)
        if key not in cache:
            import torch

            model = build_hf(name)
            folder = tmp_path_factory.mktemp(f"{name}-{dtype}-{shard or 'single'}")
            if dtype != "float32":
                model = model.to(getattr(torch, dtype))
            kw = {"max_shard_size": shard} if shard else {}
            model.save_pretrained(folder, **kw)
            if dtype != "float32":
                # the oracle sees exactly the stored (rounded) weights; a fresh float32 model keeps
                # its non-persistent buffers (NeoX's rotary inv_freq) unrounded
                rounded = {k: v.float() for k, v in model.state_dict().items()}
                model = build_hf(name)
                model.load_state_dict(rounded)
            model = model.eval()
            cache[key] = (str(folder), model)
        return cache[key]

    return make


def padded_batch(vocab, lengths, seed=0):
    rng = np.random.RandomState(seed)
    T = max(lengths)
    toks = rng.randint(0, vocab, size=(len(lengths), T)).astype(np.int64)
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return toks, np.array(lengths), mask


def max_err_rows(a, b, lengths, axis_pos=1):
    """max |a - b| over real positions only."""
    errs = []
    for i, n in enumerate(lengths):
        sl = [i] + [slice(None)] * (a.ndim - 1)
        sl[axis_pos] = slice(0, n)
        errs.append(np.abs(np.asarray(a)[tuple(sl)] - np.asarray(b)[tuple(sl)]).max())
    return float(max(errs))


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory):
    """A random GPT-2 (small dims, the real GPT-2 vocabulary) with the real GPT-2 tokenizer files."""
    import shutil
    from ctxlookup.checkpoints import random_checkpoint

    folder = tmp_path_factory.mktemp("text-gpt2")
    random_checkpoint(folder, arch="gpt2", n_layers=3, d_model=32, n_heads=4, d_vocab=50257, n_ctx=256, seed=3, std=0.3)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED / "data" / "tokenizers" / "gpt2" / f, folder)
    return str(folder)


@pytest.fixture(scope="session")
def report_run_dir(text_model_dir, tmp_path_factory):
    """A replication run for the report's tests (test_report.py, test_report_data.py)."""
    from test_report import make_run

    return make_run(text_model_dir, tmp_path_factory)
