"""Build the compact demo corpus bundled with the package (``ctxlookup.Corpus.demo``).

    python -m ctxlookup.demo.corpus --data ../shared/data/corpus --seed 1234

Only sources that ``shared/data/README.md`` allows inside the project: State of the Union
addresses (``speeches``), Moby-Dick (``novels``), the King James Bible (``bible``), fortunes
(``quotes``), the Python 3.11 documentation (``docs``) and Python standard-library code
(``code``). The train part is drawn from ``train.jsonl.gz``, the test part from
``heldout-10k.jsonl.gz`` (disjoint documents and source items), stratified by subset, seeded.
Output: ``train.jsonl.gz`` and ``test.jsonl.gz`` (gzip with mtime 0: byte-reproducible) in
``python/ctxlookup/data/corpus/``, each document ``{"text", "meta": {"subset", "source"}}``.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import sys

ALLOWED = {("speeches", "sotu"), ("novels", "moby-dick"), ("bible", "kjv"), ("quotes", "fortunes"),
           ("docs", "python3.11-doc"), ("code", "python3.11-stdlib")}


def allowed_for_shipping(meta: dict) -> bool:
    return (meta.get("subset"), meta.get("source", "").split(":")[0]) in ALLOWED


def sample(path: str, n: int, seed: str) -> list:
    by_subset = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            if allowed_for_shipping(o["meta"]):
                by_subset.setdefault(o["meta"]["subset"], []).append(o)
    rng = random.Random(seed)
    per = n // len(by_subset)
    out = []
    for s in sorted(by_subset):
        docs = by_subset[s]
        rng.shuffle(docs)
        out += docs[:per]
    rng.shuffle(out)
    return out


def write(path: str, docs: list) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as g:
        for o in docs:
            g.write((json.dumps({"text": o["text"], "meta": o["meta"]}, ensure_ascii=False) + "\n").encode())
    tmp = path + ".incomplete"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("CTXLOOKUP_DATA", "../shared/data/corpus"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "corpus"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--train", type=int, default=900)
    ap.add_argument("--test", type=int, default=450)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train = sample(os.path.join(args.data, "train.jsonl.gz"), args.train, f"{args.seed}/demo-train")
    test = sample(os.path.join(args.data, "heldout-10k.jsonl.gz"), args.test, f"{args.seed}/demo-test")
    assert not {d["text"] for d in train} & {d["text"] for d in test}
    write(os.path.join(args.out, "train.jsonl.gz"), train)
    write(os.path.join(args.out, "test.jsonl.gz"), test)
    for name in ("train.jsonl.gz", "test.jsonl.gz"):
        p = os.path.join(args.out, name)
        print(f"{p}: {os.path.getsize(p):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
