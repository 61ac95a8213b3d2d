"""Pipeline benchmark: the max-activating scan and truncation, against the authors' method.

One run, the same random GPT-2-small-shaped weights (12 layers, 768, 12 heads, vocab 50257, the
real GPT-2 tokenizer) and the same 200 documents of the pile-style corpus:

1. the scan for 60 neurons (20 in each of the last 3 layers) with ctxlookup, against the authors'
   method: TransformerLens, batch 1, a full forward per document with a hook per neuron;
2. the scan's throughput against a plain forward pass to the same layer (run_with_cache with
   stop_at_layer and nothing cached) on the same token batches;
3. exact truncation of 20 prompts against the binary search.

    python benchmarks/bench_pipeline.py [--docs 200] [--threads 2] [--quick]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4 layers instead of 12, for a smoke run")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    import transformers

    import ctxlookup
    from ctxlookup.batching import doc_tokens

    torch.set_num_threads(args.threads)
    ctxlookup.set_num_threads(args.threads)
    n_layer = 4 if args.quick else 12
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=n_layer, n_embd=768, n_head=12, vocab_size=50257)).eval()
    with torch.no_grad():  # a larger init than HF's so activations vary between documents
        for p in hf.parameters():
            p.mul_(3.0) if p.dim() > 1 else None
    tmp = tempfile.mkdtemp(prefix="bench-pipeline-")
    hf.save_pretrained(tmp)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(SHARED, "tokenizers", "gpt2", f), tmp)
    model = ctxlookup.Model.load(tmp)
    corpus = ctxlookup.Corpus(os.path.join(SHARED, "corpus", "pile-style-10k.jsonl.gz"), limit=args.docs)
    layers = list(range(n_layer - 3, n_layer))
    rng = np.random.default_rng(0)
    neurons = [(l, int(n)) for l in layers for n in np.sort(rng.choice(3072, 20, replace=False))]
    docs = list(corpus)
    toks = doc_tokens(model, docs, True, model.cfg.n_ctx)
    n_tok = sum(len(t) for t in toks)

    # 1. ctxlookup scan
    t0 = time.perf_counter()
    ma = ctxlookup.max_activating(model, neurons, corpus, k=20, progress=False)
    t_scan = time.perf_counter() - t0

    # 2. plain forward to the same layer, same batches (the scan's batching: ~8192 tokens)
    def plain():
        buf, tot = [], 0
        for t in toks:
            buf.append(t)
            tot += len(t)
            if tot >= 8192:
                model.run_with_cache(buf, names_filter=[f"blocks.{n_layer - 1}.mlp.hook_post"], stop_at_layer=n_layer, pos="last", return_logits=False)
                buf, tot = [], 0
        if buf:
            model.run_with_cache(buf, names_filter=[f"blocks.{n_layer - 1}.mlp.hook_post"], stop_at_layer=n_layer, pos="last", return_logits=False)
    t0 = time.perf_counter()
    plain()
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()  # tokenizing is part of the scan: its share, alone
    doc_tokens(model, docs, True, model.cfg.n_ctx)
    t_tok = time.perf_counter() - t0

    # 3. the authors' method: TransformerLens, batch 1, full forward, a hook per neuron
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(tmp, hf_model=hf)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    best = {nr: [] for nr in neurons}

    def make_hook(layer, n):
        def hook(act, hook):
            best[(layer, n)].append(float(act[0, 1:, n].max()))
        return hook
    hooks = [(f"blocks.{l}.mlp.hook_post", make_hook(l, n)) for l, n in neurons]  # a hook per neuron
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in toks:
            bridge.run_with_hooks(torch.tensor(t[None].astype(np.int64)), fwd_hooks=hooks)
    t_tl = time.perf_counter() - t0
    # same answer: the top document per neuron
    agree = 0
    for nr in neurons:
        want = int(np.argmax(best[nr]))
        got = ma[(ma.layer == nr[0]) & (ma.neuron == nr[1]) & (ma["rank"] == 0)].doc_id.iloc[0]
        agree += docs[want].doc_id == got
    # 4. truncation: 20 prompts, exact vs binary
    sample = ma[ma["rank"] == 0].head(20)
    t0 = time.perf_counter()
    ex = ctxlookup.truncate(model, sample, corpus, method="exact")
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    bi = ctxlookup.truncate(model, sample, corpus, method="binary")
    t_binary = time.perf_counter() - t0

    print(f"machine: {os.cpu_count()} cpus, threads={args.threads}; model: GPT-2-small shape, {n_layer} layers; "
          f"{len(docs)} documents, {n_tok} tokens; {len(neurons)} neurons in layers {layers}")
    print(f"scan, ctxlookup:                  {t_scan:8.2f} s  {n_tok / t_scan:9.0f} tok/s")
    print(f"scan, authors' method (TL, b=1):  {t_tl:8.2f} s  {n_tok / t_tl:9.0f} tok/s   speed-up {t_tl / t_scan:.1f}x")
    print(f"plain forward to layer {n_layer}:       {t_plain:8.2f} s  {n_tok / t_plain:9.0f} tok/s   "
          f"scan / plain throughput {t_plain / t_scan:.3f} (tokenizing alone {t_tok:.2f} s)")
    print(f"top document agrees with TL:      {agree}/{len(neurons)}")
    print(f"truncation of 20 prompts: exact {t_exact:.2f} s ({len(ex)} kept), binary {t_binary:.2f} s ({len(bi)} kept), "
          f"exact / binary = {t_exact / t_binary:.2f}")


if __name__ == "__main__":
    sys.exit(main())
