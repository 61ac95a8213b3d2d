"""Corpus: every source form, stable ids and subset labels, streaming access, and bad input.
Oracle: the JSON / Parquet / pandas readers on the same data."""
import gzip
import json

import pandas as pd
import pytest

from conftest import SHARED
from ctxlookup import Corpus, CorpusError


DOCS = [("alpha beta", "a"), ("", "b"), ("gamma\ndelta", None), ("épsilon", "c")]


def write_jsonl(path, docs, gz=False):
    lines = [json.dumps({"text": t, "meta": {"pile_set_name": s} if s else {}}, ensure_ascii=False) for t, s in docs]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_ids_subsets_and_empty_docs(tmp_path, gz):
    c = Corpus(write_jsonl(tmp_path / ("c.jsonl.gz" if gz else "c.jsonl"), DOCS, gz))
    docs = list(c)
    assert [(d.doc_id, d.text, d.subset) for d in docs] == [(0, "alpha beta", "a"), (2, "gamma\ndelta", None), (3, "épsilon", "c")]
    assert c.skipped["empty"] == 1
    assert c.count() == 4
    assert c.get([3, 0]) == {3: docs[2], 0: docs[0]}
    with pytest.raises(KeyError, match=r"ids \[9\]"):
        c.get([9])


def test_real_corpus_files_stream():
    c = Corpus(SHARED / "data" / "corpus" / "tiny.jsonl")
    docs = list(c)
    assert len(docs) == 200 and {d.subset for d in docs} >= {"email", "code", "bible"}
    assert Corpus(SHARED / "data" / "corpus" / "heldout-10k.jsonl.gz").count() == 10000
    lim = Corpus(SHARED / "data" / "corpus" / "heldout-10k.jsonl.gz", limit=5)
    assert [d.doc_id for d in lim] == [0, 1, 2, 3, 4]


def test_parquet_dataframe_iterable_and_folder(tmp_path):
    df = pd.DataFrame({"text": ["one", "two", "three"], "subset": ["x", "y", "x"]})
    df.to_parquet(tmp_path / "c.parquet")
    assert [(d.text, d.subset) for d in Corpus(tmp_path / "c.parquet")] == list(zip(df.text, df.subset))
    assert [(d.doc_id, d.subset) for d in Corpus(df)] == [(0, "x"), (1, "y"), (2, "x")]
    assert [d.text for d in Corpus(["a", ("b", "s"), {"text": "c", "meta": {"subset": "m"}}])] == ["a", "b", "c"]
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first")
    (folder / "sub" / "b.txt").write_text("second")
    (folder / "bad.txt").write_bytes(b"\xff\xfe not utf-8 \xc3")
    c = Corpus(folder)
    got = [(d.text, d.subset) for d in c]
    assert got == [("first", None), ("second", "sub")]
    assert c.skipped["non_utf8"] == 1


def test_bad_input_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not valid JSON"):
        list(Corpus(p))
    p.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: field 'text' is missing"):
        list(Corpus(p))
    p.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not UTF-8"):
        list(Corpus(p))
    with pytest.raises(FileNotFoundError):
        Corpus(tmp_path / "missing.jsonl")
    with pytest.raises(CorpusError, match="unknown format"):
        Corpus(_touch(tmp_path / "x.csv"))
    with pytest.raises(TypeError, match="one-shot iterator"):
        Corpus(iter(["a"]))
    with pytest.raises(CorpusError, match="no 'text' column"):
        Corpus(pd.DataFrame({"body": ["x"]}))


def _touch(p):
    p.write_text("")
    return p


def test_fingerprint_changes_with_content(tmp_path):
    a = Corpus(["x", "y"]).fingerprint()
    assert a == Corpus(["x", "y"]).fingerprint() != Corpus(["x", "z"]).fingerprint()
