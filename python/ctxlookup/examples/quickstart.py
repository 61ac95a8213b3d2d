"""The quickest end-to-end run of ctxlookup's core, with no network and no PyTorch.

It writes a small random GPT-2 checkpoint, loads it, runs a padded batch with hooks, finds the
neuron most congruent with a token (``<W_out[i], W_U[:, t]>``), and scores every attention head's
contribution to that neuron's input at the last token (``<hook_result, W_in[:, i]>``), the two
quantities at the heart of "Interpreting Context Look-ups in Transformers".
"""
import os
import sys
import tempfile
import time

import numpy as np

import ctxlookup
from ctxlookup.checkpoints import random_checkpoint


def main(out_dir=None) -> int:
    out_dir = out_dir or tempfile.mkdtemp(prefix="ctxlookup-quickstart-")
    folder = random_checkpoint(os.path.join(out_dir, "random-gpt2"), arch="gpt2", n_layers=3, d_model=64, n_heads=4,
                               d_vocab=512, n_ctx=128, seed=0)
    model = ctxlookup.Model.load(folder, fold_ln=True, center_writing_weights=True, center_unembed=True)
    print(model)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.cfg.d_vocab, size=(4, 32))
    lengths = np.array([32, 20, 9, 27])
    t0 = time.perf_counter()
    logits, cache = model.run_with_cache(tokens, lengths=lengths, pos="last",
                                         names_filter=lambda n: n.endswith(("attn.hook_result", "mlp.hook_post")))
    dt = time.perf_counter() - t0
    print(f"forward: {int(lengths.sum())} tokens, logits {logits.shape}, {len(cache)} hooks cached in {dt * 1e3:.1f} ms")

    layer = model.cfg.n_layers - 1
    congruence = model.W_out[layer] @ model.W_U  # (d_mlp, d_vocab)
    neuron, token = np.unravel_index(np.argmax(congruence), congruence.shape)
    print(f"most congruent neuron: L{layer}.N{neuron} -> token {token} (congruence {congruence[neuron, token]:.3f})")

    w_in = model.W_in[layer][:, neuron]  # (d_model,)
    scores = np.stack([cache[f"blocks.{l}.attn.hook_result"] @ w_in for l in range(layer + 1)], axis=1)  # (B, L, H)
    for b in range(len(lengths)):
        s = scores[b].reshape(-1)
        active = s > s.mean() + 2 * s.std(ddof=1)
        heads = [f"L{i // model.cfg.n_heads}H{i % model.cfg.n_heads}" for i in np.nonzero(active)[0]]
        act = cache[f"blocks.{layer}.mlp.hook_post"][b, neuron]
        print(f"  prompt {b}: neuron activation {act:+.3f}, active heads: {', '.join(heads) or 'none'}")
    print(f"checkpoint written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
