"""Forward-pass benchmark: ctxlookup vs transformers vs TransformerLens, in one process.

Identical random weights of GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257),
2 threads everywhere, batch 8 x 128 and 1 x 1024 tokens; with logits only, and with every
``attn.hook_result`` and ``mlp.hook_post`` captured. Prints tokens/s and ratios, the GEMM share
of ctxlookup's time and its speed against plain OpenBLAS sgemm (OpenBLAS's own threads) at
the same shapes, the machine's limit
(plain-sgemm GFLOP/s divided by the model's FLOPs per token), and the resident memory that
loading a checkpoint adds, against the weights' bytes.

    python benchmarks/bench_forward.py [--threads 2] [--reps 5] [--quick]
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def best_interleaved(fns, rounds):
    """Best wall time of each function over `rounds` rounds, the functions taking turns in every
    round (after one warm-up each), so a slow patch of a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


PLAIN_SGEMM_CHILD = """
import json, sys
from ctxlookup import _core
shapes = json.loads(sys.stdin.read())
print(json.dumps([_core._sgemm_bench(M, N, K, tB, 5, th) for M, N, K, tB, th in shapes]))
"""


def gemm_account(model, toks, threads, reps=3):
    """Forwards with GEMM accounting on, the one with the least GEMM time kept (of ``reps``): (wall
    seconds, seconds inside GEMMs, the same GEMMs' seconds as plain OpenBLAS sgemm calls on
    OpenBLAS's own threads, GEMM FLOPs).

    The core records every GEMM's shape. A GEMM the forward splits over its threads is compared
    with OpenBLAS running the whole shape on `threads` threads; a GEMM that runs as one task of a
    parallel loop (attention blocks) with single-threaded OpenBLAS at that shape, both counted
    as thread-seconds divided by the team size. The plain sgemm calls run in a fresh interpreter
    that has nothing else loaded (no OpenMP pool, no PyTorch), so the baseline is OpenBLAS at
    its best on this machine."""
    from ctxlookup import _core

    best = None
    for _ in range(reps):  # the forward's best run, as the baseline is OpenBLAS's best call
        _core._blas_stats(1)
        t0 = time.perf_counter()
        model(toks)
        total = time.perf_counter() - t0
        st = _core._blas_stats(0)
        if best is None or st["seconds"] < best[1]["seconds"]:
            best = (total, st)
    total, st = best
    assert st["dropped_shapes"] == 0, "more GEMM shapes than the accounting table holds"
    assert all(e["transA"] == 0 for e in st["shapes"])
    shapes = [(e["M"], e["N"], e["K"], e["transB"], 1 if e["in_task"] else threads) for e in st["shapes"]]
    out = subprocess.run([sys.executable, "-c", PLAIN_SGEMM_CHILD], input=json.dumps(shapes), capture_output=True,
                         text=True, check=True)
    secs = json.loads(out.stdout.strip().splitlines()[-1])
    plain = sum(t * e["calls"] / (e["team"] if e["in_task"] else 1) for t, e in zip(secs, st["shapes"]))
    return total, st["seconds"], plain, st["flops"]


def model_flops_per_token(cfg, T):
    D, M, V, L = cfg["d_model"], cfg["d_mlp"], cfg["d_vocab"], cfg["n_layers"]
    dense = 2 * L * (3 * D * D + D * D + 2 * D * M) + 2 * D * V
    attn = 2 * L * 2 * D * (T + 1) / 2  # causal half: q.k and p.v over (T+1)/2 keys on average
    return dense + attn


def load_rss_child(folder):
    """Run in a fresh interpreter: RSS added by Model.load, in bytes."""
    code = (
        "import resource, ctxlookup, json, sys\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "def rss():\n"
        "    return status('VmRSS')\n"
        "base = rss()\n"
        "m = ctxlookup.Model.load(sys.argv[1])\n"
        "peak = status('VmHWM')  # per address space: not inherited across fork+exec, unlike ru_maxrss\n"
        "print(json.dumps({'base': base, 'after': rss(), 'peak': peak}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="rounds; each framework's best round counts")
    ap.add_argument("--quick", action="store_true", help="fewer layers, for a smoke run")
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    import transformers

    import ctxlookup
    from ctxlookup import _core

    torch.set_num_threads(args.threads)
    ctxlookup.set_num_threads(args.threads)
    n_layer = 2 if args.quick else 12
    hf_cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    tmp = tempfile.mkdtemp(prefix="bench-forward-")
    hf.save_pretrained(tmp)
    weight_bytes = sum(p.numel() * 4 for p in hf.parameters())

    rss = load_rss_child(tmp)
    model = ctxlookup.Model.load(tmp)
    cfg = model.cfg.to_dict()

    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(tmp, hf_model=transformers.GPT2LMHeadModel.from_pretrained(tmp).eval())
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.set_use_attn_result(True)
    hooked = lambda n: n.endswith("attn.hook_result") or n.endswith("mlp.hook_post")

    rows = []
    for B, T in [(8, 128), (1, 1024)]:
        toks = np.random.default_rng(0).integers(0, 50257, size=(B, T))
        tt = torch.tensor(toks)
        with torch.no_grad():
            res = best_interleaved({
                "transformers logits": lambda: hf(tt),
                "TransformerLens hooks": lambda: bridge.run_with_cache(tt, names_filter=hooked),
                "ctxlookup logits": lambda: model(toks),
                "ctxlookup hooks": lambda: model.run_with_cache(toks, names_filter=hooked),
            }, args.reps)

        # GEMM share and speed: time inside the core's GEMMs vs plain OpenBLAS sgemm at the same shapes
        total, inside, plain, flops = gemm_account(model, toks, args.threads, args.reps)
        gflops_plain = flops / plain / 1e9
        limit_tok_s = gflops_plain * 1e9 / model_flops_per_token(cfg, T)
        ntok = B * T
        rows.append(dict(
            shape=f"{B}x{T}", tokens=ntok,
            **{f"{k} tok/s": ntok / v for k, v in res.items()},
            ratio_vs_transformers=res["transformers logits"] / res["ctxlookup logits"],
            ratio_hooks_vs_transformerlens=res["TransformerLens hooks"] / res["ctxlookup hooks"],
            gemm_share_of_time=inside / total,
            gemm_efficiency_vs_plain_sgemm=plain / inside,
            plain_sgemm_gflops=gflops_plain,
            machine_limit_tok_s=limit_tok_s,
            fraction_of_limit=(ntok / res["ctxlookup logits"]) / limit_tok_s,
        ))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, threads={args.threads}, "
          f"numpy {np.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: GPT-2-small shape, {n_layer} layers, weights {weight_bytes / 2**20:.0f} MiB")
    for r in rows:
        print(f"\n== batch {r['shape']}")
        for k, v in r.items():
            if k != "shape":
                print(f"  {k:34s} {v:12.3f}" if isinstance(v, float) else f"  {k:34s} {v}")
    added = rss["peak"] - rss["base"]
    print(f"\nload: peak RSS added {added / 2**20:.0f} MiB = {added / weight_bytes:.2f}x the weights' bytes "
          f"(after load {(rss['after'] - rss['base']) / 2**20:.0f} MiB)")
    print(json.dumps({"rows": rows, "load_peak_ratio": added / weight_bytes}))


if __name__ == "__main__":
    main()
