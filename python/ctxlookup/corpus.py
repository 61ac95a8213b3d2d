"""Corpora, streamed: a corpus is never held in memory whole.

A :class:`Corpus` yields :class:`Document` records ``(doc_id, text, subset)``. ``doc_id`` is the
document's 0-based index in the source's order, stable across runs; ``subset`` is the label that
travels with every result (``meta.pile_set_name`` in the Pile, ``meta.subset`` in ctxlookup's own
corpora, or None).

Sources: a JSONL / JSONL.gz file in the Pile's shape (``{"text": ..., "meta": {...}}``), a
Parquet file, a folder of text files (``*.txt``, ``*.md``, any extension with ``glob``), a pandas
DataFrame, or any iterable of strings (or of ``(text, subset)`` pairs).

Bad input: a JSONL line that is not JSON or has no text field raises :class:`CorpusError` naming
the file and line. Text files that are not UTF-8 are skipped and counted in ``corpus.skipped``
(``{"non_utf8": n, "empty": n}``); empty documents are skipped and counted too (their ids stay
reserved so ids remain stable).
"""
from __future__ import annotations

import glob as _glob
import gzip
import hashlib
import io
import json
import operator
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Union

__all__ = ["Corpus", "Document", "CorpusError"]


class CorpusError(ValueError):
    """A corpus file is malformed (the message names the file and line)."""


@dataclass(frozen=True)
class Document:
    doc_id: int
    text: str
    subset: Optional[str] = None


def _subset_of(meta) -> Optional[str]:
    if isinstance(meta, dict):
        for key in ("pile_set_name", "subset"):
            v = meta.get(key)
            if isinstance(v, str):
                return v
    return None


class Corpus:
    """A streamed corpus of documents with stable ids and subset labels.

    ``Corpus(source, text_field="text", limit=None, name=None, glob="*.txt")``.
    Iterate to stream :class:`Document` s; ``corpus.get(ids)`` fetches some documents by id in one
    streaming pass.
    """

    def __init__(self, source, text_field: str = "text", limit: Optional[int] = None, name: Optional[str] = None,
                 glob: str = "*.txt"):
        self.source = source
        self.text_field = text_field
        if limit is not None:
            try:
                ok = not isinstance(limit, bool) and operator.index(limit) >= 1
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"limit must be a positive int (documents) or None, got {limit!r}")
            limit = operator.index(limit)
        self.limit = limit
        self.glob = glob
        self.skipped = {"non_utf8": 0, "empty": 0}
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if not os.path.exists(path):
                raise FileNotFoundError(f"corpus {path}: no such file or folder")
            self.path = path
            self.name = name or os.path.basename(path.rstrip("/"))
            if os.path.isdir(path):
                self._kind = "dir"
            elif path.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
                self._kind = "jsonl"
            elif path.endswith(".parquet"):
                self._kind = "parquet"
            elif path.endswith((".txt", ".md")):
                self._kind = "textfile"
            else:
                raise CorpusError(f"corpus {path}: unknown format (expected .jsonl, .jsonl.gz, .parquet, a .txt file "
                                  f"or a folder of text files)")
        else:
            self.path = None
            self.name = name or type(source).__name__
            try:
                import pandas as pd

                is_df = isinstance(source, pd.DataFrame)
            except ImportError:  # pragma: no cover
                is_df = False
            self._kind = "dataframe" if is_df else "iterable"
            if self._kind == "dataframe" and text_field not in source.columns:
                raise CorpusError(f"corpus DataFrame has no '{text_field}' column (columns: {list(source.columns)})")
            if self._kind == "iterable" and iter(source) is source:
                raise TypeError("a one-shot iterator cannot be streamed twice; pass a list, a file or a DataFrame")

    @classmethod
    def demo(cls, split: str = "train", limit: Optional[int] = None) -> "Corpus":
        """The compact corpus bundled with the package (``split`` "train" or "test"; 900 and 450
        documents), its first ``limit`` documents when given."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got '{split}'")
        path = os.path.join(os.path.dirname(__file__), "data", "corpus", f"{split}.jsonl.gz")
        if not os.path.exists(path):
            raise FileNotFoundError(f"the demo corpus is not bundled in this installation ({path})")
        return cls(path, limit=limit, name=f"demo-{split}")

    # ---------------------------------------------------------------- streaming
    def __iter__(self) -> Iterator[Document]:
        self.skipped = {"non_utf8": 0, "empty": 0}
        n = 0
        for doc in self._raw():
            if self.limit is not None and doc.doc_id >= self.limit:
                break
            if not doc.text:
                self.skipped["empty"] += 1
                continue
            n += 1
            yield doc

    def _raw(self) -> Iterator[Document]:
        kind = self._kind
        if kind == "jsonl":
            yield from self._jsonl()
        elif kind == "parquet":
            yield from self._parquet()
        elif kind == "dir":
            files = sorted(_glob.glob(os.path.join(self.path, "**", self.glob), recursive=True))
            for i, f in enumerate(files):
                text = self._read_text(f)
                if text is None:
                    continue
                yield Document(i, text, os.path.relpath(os.path.dirname(f), self.path) if os.path.dirname(f) != self.path.rstrip("/") else None)
        elif kind == "textfile":
            text = self._read_text(self.path)
            if text is not None:
                yield Document(0, text, None)
        elif kind == "dataframe":
            df = self.source
            sub = next((c for c in ("subset", "pile_set_name") if c in df.columns), None)
            metas = df["meta"] if "meta" in df.columns and sub is None else None
            for i, text in enumerate(df[self.text_field]):
                subset = df[sub].iat[i] if sub else (_subset_of(metas.iat[i]) if metas is not None else None)
                if not isinstance(text, str):
                    raise CorpusError(f"corpus DataFrame row {i}: '{self.text_field}' is {type(text).__name__}, not str")
                yield Document(i, text, subset)
        else:
            for i, item in enumerate(self.source):
                if isinstance(item, Document):
                    yield Document(i, item.text, item.subset)
                elif isinstance(item, str):
                    yield Document(i, item, None)
                elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                    yield Document(i, item[0], item[1])
                elif isinstance(item, dict) and isinstance(item.get(self.text_field), str):
                    yield Document(i, item[self.text_field], _subset_of(item.get("meta")) or item.get("subset"))
                else:
                    raise CorpusError(f"corpus item {i}: expected a str, (text, subset) or a dict with "
                                      f"'{self.text_field}', got {type(item).__name__}")

    def _read_text(self, path: str) -> Optional[str]:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.skipped["non_utf8"] += 1
            return None

    def _jsonl(self) -> Iterator[Document]:
        opener = gzip.open if self.path.endswith(".gz") else open
        with opener(self.path, "rb") as fb:
            for lineno, raw in enumerate(io.BufferedReader(fb) if opener is gzip.open else fb, start=1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{self.path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{self.path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(self.text_field), str):
                    raise CorpusError(f"{self.path}:{lineno}: field '{self.text_field}' is missing or not a string")
                yield Document(lineno - 1, obj[self.text_field], _subset_of(obj.get("meta")) or
                               (obj.get("subset") if isinstance(obj.get("subset"), str) else None))

    def _parquet(self) -> Iterator[Document]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        names = pf.schema_arrow.names
        if self.text_field not in names:
            raise CorpusError(f"{self.path}: no '{self.text_field}' column (columns: {names})")
        cols = [self.text_field] + [c for c in ("meta", "subset", "pile_set_name") if c in names]
        i = 0
        for batch in pf.iter_batches(columns=cols, batch_size=1024):
            d = batch.to_pydict()
            for j, text in enumerate(d[self.text_field]):
                subset = (d["subset"][j] if "subset" in d else d["pile_set_name"][j] if "pile_set_name" in d
                          else _subset_of(d["meta"][j]) if "meta" in d else None)
                if not isinstance(text, str):
                    raise CorpusError(f"{self.path}: row {i}: '{self.text_field}' is not a string")
                yield Document(i, text, subset)
                i += 1

    def count(self) -> int:
        """The number of documents (an upper bound: empty ones are skipped when iterating), cheaply:
        lines of a JSONL file, rows of Parquet metadata, files in a folder, ``len`` of in-memory sources."""
        if self._kind == "jsonl":
            opener = gzip.open if self.path.endswith(".gz") else open
            n = 0
            with opener(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    n += block.count(b"\n")
                if block and not block.endswith(b"\n"):
                    n += 1
        elif self._kind == "parquet":
            import pyarrow.parquet as pq

            n = pq.ParquetFile(self.path).metadata.num_rows
        elif self._kind == "dir":
            n = len(_glob.glob(os.path.join(self.path, "**", self.glob), recursive=True))
        elif self._kind == "textfile":
            n = 1
        else:
            n = len(self.source)
        return n if self.limit is None else min(n, self.limit)

    # ---------------------------------------------------------------- access
    def get(self, doc_ids: Iterable[int]) -> dict:
        """``{doc_id: Document}`` for the given ids, in one streaming pass (KeyError if absent)."""
        want = set(int(i) for i in doc_ids)
        out = {}
        if not want:
            return out
        last = max(want)
        for doc in self:
            if doc.doc_id in want:
                out[doc.doc_id] = doc
                if len(out) == len(want):
                    break
            if doc.doc_id > last:
                break
        missing = want - set(out)
        if missing:
            raise KeyError(f"corpus {self.name}: no documents with ids {sorted(missing)[:10]}")
        return out

    def fingerprint(self) -> str:
        """A short hash identifying the source (file size and mtime, or the content of small sources)."""
        h = hashlib.sha256()
        h.update(f"{self._kind}|{self.text_field}|{self.limit}".encode())
        if self.path is not None:
            for p in ([self.path] if not os.path.isdir(self.path) else
                      sorted(_glob.glob(os.path.join(self.path, "**", self.glob), recursive=True))):
                st = os.stat(p)
                h.update(f"{os.path.relpath(p, self.path)}|{st.st_size}|{int(st.st_mtime)}".encode())
        else:
            for doc in self:
                h.update(doc.text.encode("utf-8", "surrogatepass"))
                h.update(b"\0")
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, kind={self._kind}{'' if self.limit is None else f', limit={self.limit}'})"
