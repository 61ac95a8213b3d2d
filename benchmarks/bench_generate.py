"""Generation benchmark: ctxlookup's generate (key-value cache in the C core) vs transformers'
generate, greedy, on the same random weights, in one process.

GPT-2-small shape by default (12 layers, d_model 768, 12 heads, vocab 50257), batch 1, a prompt of
``--prompt`` tokens and ``--new`` new tokens, ``--threads`` threads everywhere, eos never stops
either side. Prints the CPU, tokens/s of each (new tokens over the whole call, prefill included,
best of ``--reps`` rounds taken in turns), ctxlookup without its cache, and checks that both
produce the same tokens.

    python benchmarks/bench_generate.py [--threads 2] [--reps 3] [--prompt 32] [--new 64] [--small]
"""
import argparse
import platform
import sys
import tempfile
import time

import numpy as np


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--small", action="store_true", help="a 4-layer, d_model 256 model instead of GPT-2-small's shape")
    args = ap.parse_args(argv)

    import torch
    import transformers

    import ctxlookup

    torch.set_num_threads(args.threads)
    ctxlookup.set_num_threads(args.threads)
    shape = dict(n_layer=4, n_embd=256, n_head=8) if args.small else dict(n_layer=12, n_embd=768, n_head=12)
    cfg = transformers.GPT2Config(**shape, vocab_size=50257, n_positions=1024, bos_token_id=50256, eos_token_id=50256)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tempfile.mkdtemp(prefix="bench-generate-")
    hf.save_pretrained(folder)
    model = ctxlookup.Model.load(folder)
    prompt = np.random.RandomState(0).randint(0, 50000, size=(1, args.prompt))
    tp = torch.tensor(prompt)

    def run_hf():
        with torch.no_grad():
            return hf.generate(tp, attention_mask=torch.ones_like(tp), do_sample=False, max_new_tokens=args.new,
                               min_new_tokens=args.new, pad_token_id=50256).numpy()

    def run_cl():
        return model.generate(prompt, max_new_tokens=args.new, do_sample=False, stop_at_eos=False)

    def run_cl_nocache():
        return model.generate(prompt, max_new_tokens=args.new, do_sample=False, stop_at_eos=False,
                              use_past_kv_cache=False)

    runs = {"transformers generate": run_hf, "ctxlookup generate": run_cl, "ctxlookup, no cache": run_cl_nocache}
    outs = {k: fn() for k, fn in runs.items()}  # warm-up, and the outputs to compare
    best = {k: float("inf") for k in runs}
    for _ in range(args.reps):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    print(f"CPU: {cpu_name()}; {args.threads} threads; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: GPT-2 {shape}, vocab 50257; batch 1, prompt {args.prompt}, {args.new} new tokens, greedy")
    for k, t in best.items():
        print(f"{k:>24}: {args.new / t:8.1f} tok/s  ({t * 1e3:.0f} ms)")
    print(f"ratio ctxlookup / transformers: {best['transformers generate'] / best['ctxlookup generate']:.2f}x; "
          f"cache speed-up: {best['ctxlookup, no cache'] / best['ctxlookup generate']:.2f}x")
    same = np.array_equal(outs["ctxlookup generate"], outs["transformers generate"])
    print(f"same tokens as transformers: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
