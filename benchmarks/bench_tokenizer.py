"""Tokenizer throughput: ctxlookup's C tokenizer against Hugging Face `tokenizers`.

    python benchmarks/bench_tokenizer.py [--docs N] [--repeat R] [--md FILE]  (FILE: a Markdown section, as in benchmarks/RESULTS.md)

Encodes the documents of the pile-style corpus (gzip JSONL, field `text`) with GPT-2
(vocab.json + merges.txt) and GPT-NeoX-20B (tokenizer.json), the same files on both sides, and
reports UTF-8 input bytes per second (best of --repeat runs):

  single, 1 thread   a Python loop of encode(text), one call per document
                     (HF: Tokenizer.encode, which also builds offsets and tokens; ours: encode,
                     ids only; ours+offsets: encode_with_offsets, which matches what HF computes)
  batch, 1 thread    HF: encode_batch with TOKENIZERS_PARALLELISM=false (sequential, in Rust);
                     ours: encode_batch(num_threads=1)
  batch, N threads   HF: encode_batch and encode_batch_fast (no offsets) on Rayon's pool;
                     ours: encode_batch(num_threads=N), N = the machine's cores

Every run checks that both sides produce identical ids.
"""
import argparse
import gzip
import json
import os
import platform
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = next((d for d in (os.environ.get("CTXLOOKUP_SHARED_DATA"), os.path.join(HERE, "..", "shared", "data"),
                                 os.path.join(HERE, "..", "..", "shared", "data"), "/work/shared/data")
                     if d and os.path.isdir(os.path.join(d, "corpus"))), "/work/shared/data")


def load_docs(path, limit):
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if limit and len(docs) >= limit:
                break
    return docs


def best_time(fn, repeat):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def hf_tokenizers(data):
    import tokenizers
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

    g = os.path.join(data, "tokenizers", "gpt2")
    m = models.BPE.from_file(os.path.join(g, "vocab.json"), os.path.join(g, "merges.txt"))
    gpt2 = tokenizers.Tokenizer(m)
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    gpt2.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    neox = tokenizers.Tokenizer.from_file(os.path.join(data, "tokenizers", "gpt-neox-20b", "tokenizer.json"))
    return {"gpt2": (gpt2, g), "gpt-neox-20b": (neox, os.path.join(data, "tokenizers", "gpt-neox-20b"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--docs", type=int, default=0, help="limit the number of documents (0: all 10,000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--md", default=None, help="also write the table as Markdown to this file")
    args = ap.parse_args()

    import tokenizers

    import ctxlookup
    from ctxlookup.tokenizer import Tokenizer

    docs = load_docs(os.path.join(args.data, "corpus", "pile-style-10k.jsonl.gz"), args.docs)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    rows = []
    for name, (hf, path) in hf_tokenizers(args.data).items():
        ours = Tokenizer.load(path)
        ref_ids = None

        def record(impl, mode, seconds, ids):
            nonlocal ref_ids
            ids = [list(x) for x in ids]
            if ref_ids is None:
                ref_ids = ids
            assert ids == ref_ids, f"{impl} {mode}: ids differ"
            rows.append((name, mode, impl, seconds, nbytes / seconds / 1e6))
            print(f"{name:13s} {mode:18s} {impl:28s} {seconds:7.2f} s {nbytes / seconds / 1e6:8.2f} MB/s", flush=True)

        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        t, out = best_time(lambda: [hf.encode(d).ids for d in docs], args.repeat)
        record("HF Tokenizer.encode", "single, 1 thread", t, out)
        t, out = best_time(lambda: [ours.encode(d) for d in docs], args.repeat)
        record("ctxlookup encode", "single, 1 thread", t, out)
        t, out = best_time(lambda: [ours.encode_with_offsets(d)[0] for d in docs], args.repeat)
        record("ctxlookup encode_with_offsets", "single, 1 thread", t, out)
        t, out = best_time(lambda: [e.ids for e in hf.encode_batch(docs)], args.repeat)
        record("HF encode_batch", "batch, 1 thread", t, out)
        t, out = best_time(lambda: ours.encode_batch(docs, num_threads=1), args.repeat)
        record("ctxlookup encode_batch", "batch, 1 thread", t, out)
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        mode = f"batch, {args.threads} threads"
        t, out = best_time(lambda: [e.ids for e in hf.encode_batch(docs)], args.repeat)
        record("HF encode_batch", mode, t, out)
        t, out = best_time(lambda: [e.ids for e in hf.encode_batch_fast(docs)], args.repeat)
        record("HF encode_batch_fast", mode, t, out)
        t, out = best_time(lambda: ours.encode_batch(docs, num_threads=args.threads), args.repeat)
        record("ctxlookup encode_batch", mode, t, out)

    header = (f"{len(docs)} documents of pile-style-10k, {nbytes / 1e6:.1f} MB of UTF-8; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"tokenizers {tokenizers.__version__}; best of {args.repeat}")
    lines = [header, "", "| tokenizer | mode | implementation | seconds | MB/s | vs HF |",
             "|---|---|---|---:|---:|---:|"]
    for name, mode, impl, sec, mbs in rows:
        base = [r for r in rows if r[0] == name and r[1] == mode and r[2].startswith("HF")]
        ratio = mbs / max(b[4] for b in base) if base and not impl.startswith("HF") else 1.0
        lines.append(f"| {name} | {mode} | {impl} | {sec:.2f} | {mbs:.2f} | {ratio:.1f}x |")
    for name in dict.fromkeys(r[0] for r in rows):
        one = [r for r in rows if r[0] == name and r[1] == "batch, 1 thread" and r[2].startswith("ctx")][0]
        many = [r for r in rows if r[0] == name and r[1].endswith("threads") and r[2].startswith("ctx")][0]
        lines.append("")
        lines.append(f"{name}: ctxlookup encode_batch scales {many[4] / one[4]:.2f}x from 1 to {args.threads} threads.")
    table = "\n".join(lines)
    print()
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write("# Tokenizer benchmark\n\n`python benchmarks/bench_tokenizer.py --md FILE`\n\n")
            f.write(table + "\n\n")
            f.write("Modes (input bytes per second, the same files on both sides, ids checked identical):\n\n")
            for line in __doc__.split("Every run")[0].split("reports UTF-8 input bytes per second (best of --repeat runs):")[1].strip("\n").splitlines():
                f.write(("  " + line.rstrip()) if line.strip() else "")
                f.write("\n")


if __name__ == "__main__":
    main()
