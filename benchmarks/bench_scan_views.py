"""replicate's scan stage on the demo, before and after it kept the activation views: the plain
scan (``max_activating``, the scanner alone) against ``max_activating_histograms`` (the scanner and
a scope of the same neurons, in the same pass), on the neurons the demo run selects.

    python benchmarks/bench_scan_views.py [--docs N] [--reps R]

Both run the same corpus, k and batches on the same threads, interleaved, best of ``--reps``;
documents are encoded inside each timing (the stage reuses a token cache, so the stage's own
difference is a little larger in relative terms).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from ctxlookup.corpus import Corpus  # noqa: E402
from ctxlookup.replicate import replicate  # noqa: E402
from ctxlookup.scan import max_activating, max_activating_histograms  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    with tempfile.TemporaryDirectory() as tmp:
        run = replicate("demo", os.path.join(tmp, "run"), until="neurons", progress=False)
        neurons = run.read("neurons").drop_duplicates(["layer", "neuron"])[["layer", "neuron", "token_id", "token"]]
        p = run.protocol
        k = max([p.scan_k, p.prompts_per_neuron] + list(run.opts.table3 or []))
        corpus = Corpus.demo("train", limit=args.docs)
        kw = dict(k=k, batch_tokens=run.opts.batch_tokens, progress=False)
        best = {"scan": 1e9, "scan + views": 1e9}
        loads = []
        for _ in range(args.reps):
            for name, fn in (("scan", max_activating), ("scan + views", max_activating_histograms)):
                loads.append(os.getloadavg()[0])
                t0 = time.perf_counter()
                res = fn(run.model, neurons, corpus, **kw)
                best[name] = min(best[name], time.perf_counter() - t0)
        tokens = (res[0] if isinstance(res, tuple) else res).attrs["tokens"]
    print(f"CPU: {cpu}, {os.cpu_count()} cores; load average during the runs {min(loads):.1f}-{max(loads):.1f}")
    print(f"demo: {len(neurons)} neurons over layers {sorted(set(neurons.layer))}, k = {k}, {tokens} tokens")
    for name, t in best.items():
        print(f"  {name:<13} {t:7.2f} s")
    print(f"  extra cost of the views: {100 * (best['scan + views'] / best['scan'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
