"""Neuroscope's pass on the demo model (every neuron of all 6 layers, the 900-document demo corpus):
the cost of keeping every neuron's state over a plain forward to the last layer, in-process vs 2
local Dask workers, and a projection for GPT-2 small over the paper's corpus.

    python benchmarks/bench_neuroscope.py [--docs N] [--reps R] [--overhead-only]

The plain forward and the scope pass run the same batches through the same entry point
(``_core.scope_batch``; the baseline observes nothing at the last layer's ``mlp.hook_post``), on
the same threads, interleaved, best of ``--reps``.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import ctxlookup  # noqa: E402
from ctxlookup import _core, distributed  # noqa: E402
from ctxlookup.corpus import Corpus  # noqa: E402
from ctxlookup.neuroscope import neuroscope  # noqa: E402
from ctxlookup.search import doc_tokens as _doc_tokens  # noqa: E402


def cpu_info():
    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model.strip():
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    fl = line.split(":", 1)[1].split()
                    flags = " ".join(x for x in fl if x in ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"))
                    break
    except OSError:
        pass
    return model, flags


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--overhead-only", action="store_true", help="only the plain forward vs the scope pass")
    ap.add_argument("--threads", type=int, help="C threads (default: the library's)")
    args = ap.parse_args()
    model_name, flags = cpu_info()
    print(f"CPU: {model_name}; flags: {flags}; cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f}")
    m = ctxlookup.Model.from_pretrained("demo", fold_ln=True, center_writing_weights=True, center_unembed=True,
                                        fold_value_biases=True)
    corpus = Corpus.demo("train")
    corpus.limit = args.docs
    L, M = m.cfg.n_layers, m.cfg.d_mlp
    batches = distributed.plan_batches(corpus, 8192, m.cfg.n_ctx)
    docs = {d.doc_id: d for d in corpus}
    packed = []
    for b in batches:
        toks = _doc_tokens(m, [docs[i].text for i in b], True, m.cfg.n_ctx)
        packed.append((np.concatenate(toks), np.array([len(t) for t in toks], np.int32), np.array(b, np.int64)))
    n_tok = sum(int(p[1].sum()) for p in packed)
    if args.threads:
        ctxlookup.set_num_threads(args.threads)
    threads = _core.get_num_threads()
    print(f"demo model: {L} layers x {M} neurons = {L * M}; {len(docs)} documents, {n_tok} tokens; {threads} threads")

    def plain():
        for t, l, d in packed:
            _core.scope_batch(m._core, None, t, l, d, 1, L)

    def scope():
        sc = _core.Scope(np.arange(L, dtype=np.int32), M, 20, 64, 3)
        for t, l, d in packed:
            _core.scope_batch(m._core, sc, t, l, d, 1)
        return sc

    best = {"plain": 1e9, "scope": 1e9}
    cpu = {"plain": 1e9, "scope": 1e9}  # process CPU time: less sensitive than wall time to other jobs' load
    for _ in range(args.reps):
        for name, fn in (("plain", plain), ("scope", scope)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    over = best["scope"] / best["plain"] - 1
    print(f"CPU time: plain {cpu['plain']:.2f} s, scope {cpu['scope']:.2f} s; overhead "
          f"{100 * (cpu['scope'] / cpu['plain'] - 1):.1f}%")
    per_val = (best["scope"] - best["plain"]) / (n_tok * L * M) * threads
    print(f"plain forward to layer {L - 1}: {best['plain']:.2f} s ({best['plain'] / n_tok * 1e6:.1f} us/token)")
    print(f"with every neuron's state:  {best['scope']:.2f} s ({best['scope'] / n_tok * 1e6:.1f} us/token); "
          f"overhead {100 * over:.1f}% ({per_val * 1e9:.2f} core-ns per neuron-token)")

    if args.overhead_only:
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        return
    import tempfile

    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, kw in (("in-process", dict(threads=threads)), ("2 local workers", dict(workers=2, threads=max(1, threads // 2)))):
            t0 = time.perf_counter()
            a = neuroscope(m, corpus, out=os.path.join(tmp, label.replace(" ", "_")), shard_docs=150, site=False,
                           progress=False, **kw)
            res[label] = (time.perf_counter() - t0, a.manifest["scan"]["wall_s"])
            print(f"atlas {label}: {res[label][0]:.1f} s total, {res[label][1]:.1f} s in the pass "
                  f"({a.manifest['scan']['shards']} shards)")
    speedup = res["in-process"][1] / res["2 local workers"][1]
    print(f"2 workers vs in-process (the pass): {speedup:.2f}x")

    # projection: GPT-2 small (12 x 3072 neurons) over the paper's 10,000 documents (~7.4M tokens);
    # forward cost per token scaled from the demo by FLOPs (2 x block parameters + attention at 1024 tokens)
    def flops(n_layers, d, d_mlp, ctx):
        return n_layers * (2 * (4 * d * d + 2 * d * d_mlp) + 2 * 2 * ctx / 2 * d)

    fwd_demo = best["plain"] * threads / n_tok  # core-seconds per token
    ratio = flops(12, 768, 3072, 1024) / flops(L, m.cfg.d_model, M, np.mean([len(p[1]) and p[1].mean() for p in packed]))
    fwd = fwd_demo * ratio
    state = per_val * 12 * 3072
    tokens = 7.4e6
    print(f"projection GPT-2 small: forward {fwd * 1e3:.2f} core-ms/token (demo x {ratio:.1f} FLOPs), state "
          f"{state * 1e3:.3f} core-ms/token")
    for machines in (1, 8, 32):
        h = tokens * (fwd + state) / (2 * machines) / 3600
        print(f"  {machines:>2} machine(s) of 2 cores: {h:.2f} h")


if __name__ == "__main__":
    main()
