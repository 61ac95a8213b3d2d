"""The bundled demo corpus: present, within the size limit, disjoint train/test, only the sources
the data README allows to ship, and rebuilt byte for byte by its builder."""
import os

import pytest

from conftest import SHARED
from ctxlookup import Corpus
from ctxlookup.demo import corpus as builder


def test_demo_corpus_shape_and_provenance():
    train, test = list(Corpus.demo("train")), list(Corpus.demo("test"))
    assert len(train) == 900 and len(test) == 450
    assert not {d.text for d in train} & {d.text for d in test}
    assert {d.subset for d in train} == {"speeches", "novels", "bible", "quotes", "docs", "code"}
    data = os.path.join(os.path.dirname(builder.__file__), "..", "data", "corpus")
    total = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
    assert total <= 5 * 2 ** 20
    import gzip
    import json

    for f in ("train.jsonl.gz", "test.jsonl.gz"):
        for line in gzip.open(os.path.join(data, f), "rt"):
            assert builder.allowed_for_shipping(json.loads(line)["meta"])
    with pytest.raises(ValueError):
        Corpus.demo("validation")


def test_builder_is_reproducible(tmp_path):
    builder.main(["--data", str(SHARED / "data" / "corpus"), "--out", str(tmp_path)])
    data = os.path.join(os.path.dirname(builder.__file__), "..", "data", "corpus")
    for f in ("train.jsonl.gz", "test.jsonl.gz"):
        assert (tmp_path / f).read_bytes() == open(os.path.join(data, f), "rb").read()
