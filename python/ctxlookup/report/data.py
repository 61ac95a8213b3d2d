"""A run directory as the report reads it: its manifest, its tables, and the examples to colour.

Everything the pages show is read from what the pipeline stored: the tables (E, TPR, TNR,
attribution scores and active flags, ablation effects, predictions, evidence), the stages'
records in ``manifest.json`` (options, the protocol, binning), each neuron's most congruent
tokens and the token windows of its max-activating examples with the neuron's activation on each token
(tables ``top_tokens``, ``examples`` and ``test_examples``, which the ``examples`` stage of
:func:`ctxlookup.replicate` writes, :mod:`ctxlookup.windows`).

A run made before those two tables existed (or a report asking for other windows, or for
``context="prompt"``) falls back to computing them with the run's model
(``manifest["model"]["path"]``, processed as ``manifest["options"]["process_weights"]`` says) on
the corpora the manifest names, through the pipeline's own functions
(:func:`ctxlookup.windows.example_windows`, :func:`ctxlookup.neurons.top_congruent`). Without the
corpus, the truncated prompts alone are coloured; without the model, prompts are shown as plain
text, and the page says so.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd

from ..attribution import active_threshold
from ..windows import AFTER, BEFORE, MAX_BEFORE, QUANT_AFTER, QUANT_BEFORE

__all__ = ["RunData", "Example", "Band", "BEFORE", "AFTER", "MAX_BEFORE", "QUANT_BEFORE", "QUANT_AFTER", "isnum",
           "cell"]



def isnum(x) -> bool:
    """A finite number (not a bool)."""
    try:
        return x is not None and not isinstance(x, (bool, np.bool_)) and np.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def cell(x) -> Optional[str]:
    """A table cell as a string, or None for missing values (None, NaN, pd.NA)."""
    if x is None or x is pd.NA:
        return None
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)


def _load_manifest(path: str) -> dict:
    """A run's manifest, checked to be one (else a RunFileError naming the file, not a parser traceback)."""
    from ..replicate import RunFileError

    try:
        with open(path, "rb") as f:
            m = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        m, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "expected a JSON object with 'options' and 'stages' objects"
    if not isinstance(m, dict) or not isinstance(m.get("options", {}), dict) or not isinstance(m.get("stages", {}), dict) \
            or not all(isinstance(r, dict) for r in m.get("stages", {}).values()):
        raise RunFileError(f"{path} is damaged or not a ctxlookup run manifest ({why}); the run cannot be reported")
    return m


@dataclass
class Example:
    """One max-activating document of a neuron, as the report shows it."""

    split: str                       # "train" (the prompts) or "test" (the test prompts)
    layer: int
    neuron: int
    rank: int
    doc_id: int
    subset: Optional[str]
    position: int                    # the maximum, in document tokens (BOS excluded)
    activation: float                # the neuron's maximum on the document (full context)
    prompt_id: Optional[int] = None  # None when truncation dropped the document
    start: Optional[int] = None      # the truncated prompt's first token, in document tokens
    prompt_activation: Optional[float] = None
    n_tokens: Optional[int] = None
    text: Optional[str] = None       # the truncated prompt's text
    first: int = 0                   # document index of strs[0]
    doc_len: Optional[int] = None    # document tokens (BOS excluded), when known
    strs: Optional[List[str]] = None
    acts: Optional[np.ndarray] = None
    context: str = "none"            # "document", "prompt" (truncated prompt alone) or "none"
    prompt_tokens: Optional[np.ndarray] = None   # the truncated prompt's ids (BOS excluded)


@dataclass
class Band:
    """One activation band of a neuron's histogram and its sampled tokens (the scan's
    ``quantile_examples`` rows of the band): activations in ``[lo, hi)``, ``tokens`` of the
    corpus's tokens in it, the share of tokens below it ``quantile_lo`` and up to its top
    ``quantile_hi``; each example's ``activation`` and ``position`` are the stored ones."""

    band: int
    lo: float
    hi: float
    tokens: int
    quantile_lo: float
    quantile_hi: float
    examples: List[Example]


class RunData:
    """A run directory's manifest, tables and examples, loaded on demand.

    ``run``: a run directory, or the :class:`ctxlookup.replicate.Run` that :func:`ctxlookup.replicate`
    returns. ``model`` (a :class:`ctxlookup.Model` or a folder), ``corpus`` and ``test_corpus``
    override where the manifest says they are (for a run directory that moved machines);
    ``model=False``: never load the model (a run made before the stored windows is then shown
    as plain text).
    """

    def __init__(self, run, model=None, corpus=None, test_corpus=None, batch_tokens: int = 4096,
                 before: int = BEFORE, after: int = AFTER, context: str = "document"):
        if context not in ("document", "prompt"):
            raise ValueError(f"context must be 'document' or 'prompt', got '{context}'")
        self.context = context
        if isinstance(run, RunData):
            run = run.dir
        d = getattr(run, "dir", None) if not isinstance(run, (str, os.PathLike)) else None
        self.dir = os.path.abspath(os.fspath(d if d is not None else run))
        path = os.path.join(self.dir, "manifest.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{self.dir} is not a run directory (no manifest.json); make one with "
                                    f"ctxlookup replicate")
        self.manifest = _load_manifest(path)
        self.mtime = os.path.getmtime(path)
        self.options = dict(self.manifest.get("options", {}))
        self.batch_tokens, self.before, self.after = int(batch_tokens), int(before), int(after)
        self._tables: Dict[str, pd.DataFrame] = {}
        self._model_arg, self._model, self._model_tried = model, None, False
        self.model_problem: Optional[str] = None
        self._corpus_arg = {"train": corpus, "test": test_corpus}
        self.corpus_problem: Dict[str, str] = {}
        self._examples: Dict[Tuple[str, int, int], List[Example]] = {}
        self.mismatches = 0                # recomputed maxima that differ from the run's
        self._cache: dict = {}

    # ------------------------------------------------------------------ tables
    def table(self, name: str) -> pd.DataFrame:
        """A table of the run (an empty DataFrame when the run has not written it)."""
        if name not in self._tables:
            self._tables[name] = self._read_table(name)
        return self._tables[name]

    def _read_table(self, name: str) -> pd.DataFrame:
        """A table as its stage wrote it: a file that the manifest records and that is missing, not
        the recorded file (sha256) or unreadable raises RunFileError naming it and the command that
        redoes its stage; a table of a stage that has not run is empty."""
        from ..replicate import OUTPUTS, RunFileError, file_sha256, repair_command

        p = os.path.join(self.dir, f"{name}.parquet")
        stage = next((s for s, outs in OUTPUTS.items() if name in outs), None)
        rec = self.manifest.get("stages", {}).get(stage, {}) if stage else {}
        want = ((rec.get("outputs") or {}).get(name) or {}).get("parquet", {}).get("sha256") if rec.get("complete") else None

        def damaged(why: str):
            return RunFileError(f"{p} {why}; to redo its stage ({stage}) run: "
                                f"{repair_command(self.manifest, self.dir)}")

        if not os.path.exists(p):
            if want:
                raise damaged("is missing")
            return pd.DataFrame()
        if want and file_sha256(p) != want:
            raise damaged("is not the file its stage wrote (its sha256 differs from manifest.json)")
        try:
            return pd.read_parquet(p)
        except Exception as e:  # pyarrow's errors for a damaged file are many (OSError, ArrowInvalid, ...)
            raise damaged(f"is damaged ({type(e).__name__}: {e})") from None

    def has(self, name: str) -> bool:
        return len(self.table(name).columns) > 0

    def stage_attrs(self, stage: str, table: str) -> dict:
        return self.manifest.get("stages", {}).get(stage, {}).get("attrs", {}).get(table, {}) or {}

    @property
    def protocol(self) -> dict:
        """The run's protocol rules (``ctxlookup.protocols``); a run made before protocols existed
        followed today's ``ctxlookup`` rules with its own options."""
        from .. import protocols

        rec = self.manifest.get("protocol")
        if rec:
            return rec
        o = self.options
        return protocols.get("ctxlookup", rule=o.get("rule"), truncation=o.get("truncation"), low=o.get("low"),
                             high=o.get("high"), prompts_per_neuron=o.get("prompts_per_neuron"),
                             test_prompts_per_neuron=o.get("test_prompts_per_neuron")).as_dict()

    @property
    def main_n(self) -> int:
        """Prompts per neuron of the main analysis (the statistics, Figure 5, the ablation)."""
        return int(self.protocol.get("prompts_per_neuron") or 20)

    @property
    def model_name(self) -> str:
        m = self.manifest.get("model", {}).get("name") or self.options.get("model") or "model"
        m = str(m)
        return os.path.basename(m.rstrip("/")) if os.sep in m else m

    @property
    def neurons(self) -> pd.DataFrame:
        """One row per neuron: ``layer, neuron, token_id, token, congruence, rank, group``."""
        if "neurons" not in self._cache:
            nt = self.table("neurons")
            if not len(nt.columns):
                df = pd.DataFrame(columns=["layer", "neuron", "token_id", "token", "congruence", "rank", "group"])
            else:
                df = nt.copy()
                groups = df.groupby(["layer", "neuron"])["group"].agg(lambda g: "+".join(sorted(set(map(str, g)))))
                df = df.sort_values("group").drop_duplicates(["layer", "neuron"]).drop(columns="group")
                df = df.merge(groups.rename("group").reset_index(), on=["layer", "neuron"])
                df = df.sort_values(["layer", "neuron"]).reset_index(drop=True)
            self._cache["neurons"] = df
        return self._cache["neurons"]

    def neuron_info(self, layer: int, neuron: int) -> dict:
        n = self.neurons
        r = n[(n.layer == layer) & (n.neuron == neuron)]
        if len(r):
            return r.iloc[0].to_dict()
        ma = self.table("max_acts")
        tok = None
        if len(ma.columns) and "token" in ma.columns:
            m = ma[(ma.layer == layer) & (ma.neuron == neuron)]
            tok = m.token.iloc[0] if len(m) else None
        return dict(layer=layer, neuron=neuron, token=tok, token_id=None, congruence=None, rank=None, group=None)

    @property
    def pairs(self) -> pd.DataFrame:
        """One row per neuron-head pair that was selected (for any prompt count), with the main
        analysis's numbers: ``layer, neuron, head_layer, head, n_main, active_fraction, E, TPR,
        TNR, one_class, explanation, mean_decrease_active, mean_decrease_inactive, group, token``.
        ``n_main`` is the prompt count the numbers are for: the run's ``prompts_per_neuron``, or
        the largest count the pair was selected at."""
        if "pairs" in self._cache:
            return self._cache["pairs"]
        key = ["layer", "neuron", "head_layer", "head"]
        parts = []
        for name in ("heads", "explanations", "scores"):
            t = self.table(name)
            if len(t.columns) and set(key) <= set(t.columns):
                parts.append(t[key + (["n_prompts_per_neuron"] if "n_prompts_per_neuron" in t.columns else [])])
        if not parts:
            df = pd.DataFrame(columns=key + ["n_main"])
        else:
            allp = pd.concat(parts, ignore_index=True)
            if "n_prompts_per_neuron" not in allp.columns:
                allp["n_prompts_per_neuron"] = self.main_n
            allp["n_prompts_per_neuron"] = allp["n_prompts_per_neuron"].fillna(self.main_n).astype(int)
            allp["is_main"] = allp.n_prompts_per_neuron == self.main_n
            allp = allp.sort_values(["is_main", "n_prompts_per_neuron"], ascending=False)
            df = allp.drop_duplicates(key)[key + ["n_prompts_per_neuron"]].rename(columns={"n_prompts_per_neuron": "n_main"})
            for c in key:
                df[c] = df[c].astype(int)
        heads = self.table("heads")
        if len(heads.columns):
            h = heads.copy()
            if "n_prompts_per_neuron" not in h.columns:
                h["n_prompts_per_neuron"] = self.main_n
            h = h.drop_duplicates(key + ["n_prompts_per_neuron"])
            df = df.merge(h[key + ["n_prompts_per_neuron", "active_fraction"]].rename(
                columns={"n_prompts_per_neuron": "n_main"}), on=key + ["n_main"], how="left")
        scores = self.table("scores")
        cols = ["E", "TPR", "TNR", "one_class", "explanation"]
        if len(scores.columns):
            s = scores.copy()
            if "n_prompts_per_neuron" not in s.columns:
                s["n_prompts_per_neuron"] = self.main_n
            s = s.drop_duplicates(key + ["n_prompts_per_neuron"])
            df = df.merge(s[key + ["n_prompts_per_neuron"] + [c for c in cols if c in s.columns]].rename(
                columns={"n_prompts_per_neuron": "n_main"}), on=key + ["n_main"], how="left")
        else:
            ex = self.table("explanations")
            if len(ex.columns):
                e = ex.copy()
                if "n_prompts_per_neuron" not in e.columns:
                    e["n_prompts_per_neuron"] = self.main_n
                df = df.merge(e.drop_duplicates(key + ["n_prompts_per_neuron"])[
                    key + ["n_prompts_per_neuron", "explanation"]].rename(columns={"n_prompts_per_neuron": "n_main"}),
                    on=key + ["n_main"], how="left")
        ab = self.table("ablation_by_head")
        if len(ab.columns):
            df = df.merge(ab[key + ["mean_decrease_active", "mean_decrease_inactive"]], on=key, how="left")
        info = self.neurons[["layer", "neuron", "group", "token"]]
        df = df.merge(info, on=["layer", "neuron"], how="left")
        for c in ("active_fraction", "E", "TPR", "TNR", "one_class", "explanation", "mean_decrease_active",
                  "mean_decrease_inactive", "group", "token"):
            if c not in df.columns:
                df[c] = None
        df = df.sort_values(key).reset_index(drop=True)
        self._cache["pairs"] = df
        return df

    def pair_keys(self) -> set:
        if "pair_keys" not in self._cache:
            self._cache["pair_keys"] = set(map(tuple, self.pairs[["layer", "neuron", "head_layer", "head"]]
                                               .astype(int).values.tolist()))
        return self._cache["pair_keys"]

    def rows_of(self, name: str, layer: int, neuron: int, head_layer: int, head: int) -> pd.DataFrame:
        """The rows of table ``name`` for one neuron-head pair (grouped once, looked up after)."""
        key = f"by-pair-{name}"
        if key not in self._cache:
            t = self.table(name)
            cols = ["layer", "neuron", "head_layer", "head"]
            self._cache[key] = ({k: g for k, g in t.groupby(cols, sort=False)}
                                if len(t) and set(cols) <= set(t.columns) else {})
            self._cache[key + "-empty"] = t.iloc[:0]
        got = self._cache[key].get((int(layer), int(neuron), int(head_layer), int(head)))
        return got if got is not None else self._cache[key + "-empty"]

    def score_rows(self, layer, neuron, head_layer, head) -> pd.DataFrame:
        """The pair's scores (or explanations, before scoring), one row per prompt count."""
        name = "scores" if self.has("scores") else "explanations"
        m = self.rows_of(name, layer, neuron, head_layer, head)
        if "n_prompts_per_neuron" in m.columns:
            m = m.sort_values("n_prompts_per_neuron")
        return m

    # ------------------------------------------------------------------ attribution
    def attribution_index(self, split: str) -> dict:
        """``prompt_id -> (threshold, {(head_layer, head): (score, active)})`` for one split."""
        key = f"att-{split}"
        if key not in self._cache:
            att = self.table("attribution" if split == "train" else "test_attribution")
            out = {}
            if len(att.columns):
                pid = att.prompt_id.to_numpy()
                order = np.argsort(pid, kind="stable")
                pid = pid[order]
                hl = att.head_layer.to_numpy()[order]
                hh = att["head"].to_numpy()[order]
                sc = att.score.to_numpy(np.float64)[order]
                ac = att.active.to_numpy(bool)[order]
                bounds = np.flatnonzero(np.diff(pid)) + 1
                for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(pid)]):
                    s = sc[lo:hi]
                    thr = active_threshold(s, self.protocol.get("active_rule", "mean+2sd"))
                    out[int(pid[lo])] = (thr, {(int(a), int(b)): (float(c), bool(d))
                                               for a, b, c, d in zip(hl[lo:hi], hh[lo:hi], s, ac[lo:hi])})
            self._cache[key] = out
        return self._cache[key]

    # ------------------------------------------------------------------ model and corpora
    @property
    def model(self):
        """The run's model (or None, with the reason in ``model_problem``)."""
        if self._model is None and not self._model_tried:
            self._model_tried = True
            arg = self._model_arg
            if arg is False:
                self.model_problem = "the report was made without the model"
                return None
            if arg is not None and not isinstance(arg, (str, os.PathLike)):
                self._model = arg
                return arg
            from ..model import Model

            p = bool(self.options.get("process_weights", True))
            kw = dict(fold_ln=p, center_writing_weights=p, center_unembed=p, fold_value_biases=p)
            cands = [os.fspath(arg)] if arg is not None else [
                self.manifest.get("model", {}).get("path"), self.options.get("model")]
            tried = []
            for c in cands:
                if not c:
                    continue
                tried.append(str(c))
                try:
                    if c == "demo" or os.path.isdir(c):
                        self._model = Model.from_pretrained(c, **kw)
                        break
                except Exception as e:  # a broken or missing checkpoint: render without it
                    self.model_problem = f"the model at {c} could not be loaded ({e})"
            if self._model is None and self.model_problem is None:
                self.model_problem = f"the model folder was not found ({', '.join(tried) or 'not recorded'})"
            if self._model is not None and self._model.tokenizer is None:
                self.model_problem = f"the model at {self._model.path} has no tokenizer files"
                self._model = None
        return self._model

    def corpus(self, split: str):
        """The corpus the scan read for ``split`` ("train" or "test"), or None."""
        key = f"corpus-{split}"
        if key in self._cache:
            return self._cache[key]
        from ..corpus import Corpus

        src = self._corpus_arg.get(split)
        c = None
        if src is not None and not isinstance(src, (str, os.PathLike)):
            c = src
        else:
            src = src if src is not None else self.options.get("corpus" if split == "train" else "test_corpus")
            limit = self.options.get("max_docs")
            try:
                if src is None:
                    if self.options.get("model") == "demo":
                        c = Corpus.demo(split)
                    else:
                        self.corpus_problem[split] = "no corpus recorded"
                else:
                    found = next((p for p in (src, os.path.join(self.dir, src), os.path.join(os.path.dirname(self.dir), src))
                                  if os.path.exists(p)), None)
                    if found is None:
                        self.corpus_problem[split] = f"the corpus {src} was not found"
                    else:
                        c = Corpus(found, limit=limit)
            except Exception as e:
                self.corpus_problem[split] = f"the corpus could not be opened ({e})"
        self._cache[key] = c
        return c

    # ------------------------------------------------------------------ evidence
    def evidence_row(self, layer: int, neuron: int) -> Optional[dict]:
        """The run's an-neuron check of one neuron (the evidence table's row), or None."""
        if "evidence_rows" not in self._cache:
            ev = self.table("evidence")
            rows = {}
            if len(ev.columns) and len(ev):
                for r in ev.drop_duplicates(["layer", "neuron"]).to_dict(orient="records"):
                    rows[int(r["layer"]), int(r["neuron"])] = r
            self._cache["evidence_rows"] = rows
        return self._cache["evidence_rows"].get((int(layer), int(neuron)))

    # ------------------------------------------------------------------ examples
    def _example_rows(self, split: str, keys: set) -> List[Example]:
        ma = self.table("max_acts" if split == "train" else "test_max_acts")
        pr = self.table("prompts" if split == "train" else "test_prompts")
        if not len(ma.columns):
            # no scan table: the prompts alone (max position = the prompt's last token)
            if not len(pr.columns):
                return []
            ma = pr.assign(position=pr.start + pr.n_tokens - 1, activation=pr.full_activation)
        sel = ma[[(int(a), int(b)) in keys for a, b in zip(ma.layer, ma.neuron)]]
        pmap = {}
        if len(pr.columns):
            for r in pr.itertuples(index=False):
                pmap[(int(r.layer), int(r.neuron), int(r.rank) if isnum(r.rank) else -1, int(r.doc_id))] = r
        out = []
        for r in sel.itertuples(index=False):
            rank = int(r.rank) if isnum(getattr(r, "rank", None)) else -1
            p = pmap.get((int(r.layer), int(r.neuron), rank, int(r.doc_id)))
            ex = Example(split=split, layer=int(r.layer), neuron=int(r.neuron), rank=rank, doc_id=int(r.doc_id),
                         subset=cell(getattr(r, "subset", None)), position=int(r.position),
                         activation=float(r.activation))
            if p is not None:
                ex.prompt_id, ex.start = int(p.prompt_id), int(p.start)
                ex.prompt_activation, ex.n_tokens, ex.text = float(p.activation), int(p.n_tokens), str(p.text)
                ex.prompt_tokens = np.asarray(p.tokens, dtype=np.int64)
            out.append(ex)
        out.sort(key=lambda e: (e.layer, e.neuron, e.rank, e.doc_id))
        return out

    def examples(self, layer: int, neuron: int, split: str = "train") -> List[Example]:
        """The neuron's max-activating examples (``split`` "train" or "test"), by rank, with their
        tokens and activations around the maximum."""
        k = (split, int(layer), int(neuron))
        if k not in self._examples:
            self.prepare([(layer, neuron)])
        return self._examples.get(k, [])

    def stored_windows(self, split: str) -> Optional[pd.DataFrame]:
        """The windows the examples stage stored for ``split``, or None when the run has none or the
        report asks for others (other ``before``/``after``, or ``context="prompt"``)."""
        name = "examples" if split == "train" else "test_examples"
        if self.context != "document" or not self.has(name):
            return None
        rec = self.stage_attrs("examples", name)
        if (rec.get("before", BEFORE), rec.get("after", AFTER)) != (self.before, self.after):
            return None
        return self.table(name)

    def prepare(self, neurons: Iterable[Tuple[int, int]], progress: bool = False) -> None:
        """Attach the windows of many neurons' examples at once: the stored ones, or, for a run made
        before they were stored, computed with the model (batched forward passes)."""
        keys = {(int(a), int(b)) for a, b in neurons}
        todo = [(s, l, n) for s in ("train", "test") for l, n in keys if (s, l, n) not in self._examples]
        if not todo:
            return
        exs = {s: self._example_rows(s, {(l, n) for s2, l, n in todo if s2 == s}) for s in ("train", "test")}
        for s, l, n in todo:
            self._examples[(s, l, n)] = []
        for s in exs:
            for e in exs[s]:
                self._examples[(s, e.layer, e.neuron)].append(e)
        for split in ("train", "test"):
            if not exs[split]:
                continue
            win = self.stored_windows(split)
            if win is not None:
                self._attach(exs[split], win)
            else:
                win = self._compute_windows(split, exs[split], progress)
                if win is not None:
                    self._attach(exs[split], win)
                    self._cache.pop(f"windows-{id(win)}", None)

    def _attach(self, exs: List[Example], win: pd.DataFrame) -> None:
        key = f"windows-{id(win)}"
        if key not in self._cache:
            self._cache[key] = {(int(r.layer), int(r.neuron), int(r.rank), int(r.doc_id)): r
                                for r in win.itertuples(index=False)}
        by = self._cache[key]
        for e in exs:
            r = by.get((e.layer, e.neuron, e.rank, e.doc_id))
            if r is None:
                continue
            e.first, e.context = int(r.first), str(r.context)
            e.doc_len = int(r.doc_len) if int(r.doc_len) >= 0 else None
            e.strs, e.acts = list(r.strs), np.asarray(r.acts, np.float32)
            if e.context == "document":
                got = float(e.acts[e.position - e.first])
                if abs(got - e.activation) > 1e-3 * max(1.0, abs(e.activation)):
                    self.mismatches += 1

    def _compute_windows(self, split: str, exs: List[Example], progress: bool) -> Optional[pd.DataFrame]:
        """The windows of ``exs`` computed with the model, for a run that did not store them."""
        model = self.model
        if model is None:
            return None
        from ..windows import example_windows

        scan = self.stage_attrs("scan" if split == "train" else "test_scan", "max_acts" if split == "train" else "test_max_acts")
        trunc = self.stage_attrs("truncate" if split == "train" else "test_truncate",
                                 "prompts" if split == "train" else "test_prompts")
        texts: Dict[int, str] = {}
        corpus = self.corpus(split) if self.context == "document" else None
        if corpus is not None:
            try:
                texts = {i: d.text for i, d in corpus.get({e.doc_id for e in exs}).items()}
            except Exception as err:  # a corpus that changed, or lost documents
                self.corpus_problem[split] = f"the corpus's documents could not be read ({err})"
        rows = pd.DataFrame([dict(layer=e.layer, neuron=e.neuron, rank=e.rank, doc_id=e.doc_id, position=e.position)
                             for e in exs])
        prompts = pd.DataFrame([dict(layer=e.layer, neuron=e.neuron, rank=e.rank, doc_id=e.doc_id, prompt_id=e.prompt_id,
                                     start=e.start, tokens=list(e.prompt_tokens)) for e in exs if e.prompt_id is not None],
                               columns=["layer", "neuron", "rank", "doc_id", "prompt_id", "start", "tokens"])
        return example_windows(model, rows, prompts, texts=texts, before=self.before, after=self.after,
                               prepend_bos=bool(scan.get("prepend_bos", True)), max_tokens=scan.get("max_tokens"),
                               prompt_bos=bool(trunc.get("prepend_bos", True)), batch_tokens=self.batch_tokens,
                               progress=progress)

    def coloured(self, layer: Optional[int] = None, neuron: Optional[int] = None) -> bool:
        """Whether the examples (of one neuron, or of all prepared so far) have their activations,
        stored or computed with the model (True when there are none)."""
        exs = [e for (s, l, n), v in self._examples.items() for e in v if layer is None or (l, n) == (layer, neuron)]
        return not exs or any(e.acts is not None for e in exs)

    def scale(self, layer: int, neuron: int) -> float:
        """The colour scale of a neuron: its largest activation over its examples."""
        vals = [e.activation for s in ("train", "test") for e in self._examples.get((s, layer, neuron), [])]
        vals += [float(np.max(e.acts)) for s in ("train", "test") for e in self._examples.get((s, layer, neuron), [])
                 if e.acts is not None and len(e.acts)]
        m = max([v for v in vals if np.isfinite(v)], default=0.0)
        return m if m > 0 else 1.0

    # ------------------------------------------------------------------ histogram and quantile examples
    def _by_neuron(self, name: str) -> dict:
        key = f"by-neuron-{name}"
        if key not in self._cache:
            t = self.table(name)
            self._cache[key] = ({(int(l), int(n)): g for (l, n), g in t.groupby(["layer", "neuron"], sort=False)}
                                if len(t) and {"layer", "neuron"} <= set(t.columns) else {})
        return self._cache[key]

    def histogram(self, layer: int, neuron: int) -> Optional[pd.DataFrame]:
        """The neuron's activation histogram as the scan stored it (table ``histograms``: columns
        ``bin, lo, hi, count``, by bin), or None when the run has no such table or it lacks the
        neuron."""
        g = self._by_neuron("histograms").get((int(layer), int(neuron)))
        return None if g is None else g.sort_values("bin").reset_index(drop=True)

    def bands(self, layer: int, neuron: int) -> List[Band]:
        """The neuron's examples per activation band (table ``quantile_examples``), highest band
        first, each example with its tokens around the position (:meth:`prepare_quantiles`); []
        when the run has no such table."""
        k = (int(layer), int(neuron))
        if k not in self._cache.setdefault("bands", {}):
            self.prepare_quantiles([k])
        return self._cache["bands"].get(k, [])

    def prepare_quantiles(self, neurons: Iterable[Tuple[int, int]], progress: bool = False) -> None:
        """The bands of many neurons at once, with their examples' token windows (``QUANT_BEFORE``
        tokens before the sampled token, ``QUANT_AFTER`` after) as the examples stage stored them
        (``quantile_windows``); for a run made before that table, read with the run's model on the
        train corpus (one batched pass). A window's activation at the sample that differs from the
        stored one is counted in ``mismatches``; without windows the bands are shown without text."""
        store = self._cache.setdefault("bands", {})
        todo = sorted({(int(a), int(b)) for a, b in neurons} - set(store))
        if not todo or not self.has("quantile_examples"):
            for k in todo:
                store[k] = []
            return
        from ..windows import example_windows, quantile_rows

        q = quantile_rows(self.table("quantile_examples"))
        want = set(todo)
        q = q[[k in want for k in zip(q.layer.astype(int), q.neuron.astype(int))]]
        rows = []
        for k in todo:
            store[k] = []
        for r in q.itertuples(index=False):
            bands = store[(int(r.layer), int(r.neuron))]
            if not bands or bands[-1].band != int(r.band):
                bands.append(Band(band=int(r.band), lo=float(r.lo), hi=float(r.hi), tokens=int(r.band_tokens),
                                  quantile_lo=float(r.quantile_lo), quantile_hi=float(r.quantile_hi), examples=[]))
            e = Example(split="q", layer=int(r.layer), neuron=int(r.neuron), rank=int(r.rank), doc_id=int(r.doc_id),
                        subset=None, position=int(r.position), activation=float(r.activation))
            bands[-1].examples.append(e)
            rows.append(e)
        for k in todo:
            store[k].reverse()
        if not rows:
            return
        if self.has("quantile_windows"):  # stored by the examples stage
            self._attach(rows, self.table("quantile_windows"))
            return
        if self.model is None or self.corpus("train") is None:  # a run made before the stored windows
            return
        try:
            texts = {i: d.text for i, d in self.corpus("train").get({e.doc_id for e in rows}).items()}
        except Exception as err:  # a corpus that changed, or lost documents
            self.corpus_problem["train"] = f"the corpus's documents could not be read ({err})"
            return
        scan = self.stage_attrs("scan", "max_acts")
        win = example_windows(self.model, q, texts=texts, before=QUANT_BEFORE, after=QUANT_AFTER,
                              max_before=QUANT_BEFORE, prepend_bos=bool(scan.get("prepend_bos", True)),
                              max_tokens=scan.get("max_tokens"), batch_tokens=self.batch_tokens, progress=progress)
        self._attach(rows, win)
        self._cache.pop(f"windows-{id(win)}", None)

    # ------------------------------------------------------------------ congruence
    def top_tokens(self, layer: int, neuron: int) -> Optional[dict]:
        """The neuron's most and least congruent tokens (the run's excluded tokens left out):
        ``dict(top=[(id, text, congruence)], bottom=[...], direction, n_excluded)``, or None
        when the run did not store them and there is no model to compute them."""
        self.prepare_congruence([(layer, neuron)])
        return self._cache.get("congr", {}).get((int(layer), int(neuron)))

    def prepare_congruence(self, neurons: Iterable[Tuple[int, int]]) -> None:
        """Each neuron's top tokens: the stored ones, else (a neuron the table does not hold, or a run
        made before it) computed with the model when there is one."""
        store = self._cache.setdefault("congr", {})
        todo = sorted({(int(a), int(b)) for a, b in neurons} - set(store))
        if todo and self.has("top_tokens"):
            self._store_congruence(self.table("top_tokens"), self.stage_attrs("examples", "top_tokens"), set(todo))
            todo = [k for k in todo if k not in store]
        if todo and self.model is not None:
            from ..neurons import top_congruent

            excl = self.table("excluded_tokens")
            tt = top_congruent(self.model, todo, direction=self.options.get("direction", "unembed"),
                               excluded=excl.token_id.to_numpy() if len(excl.columns) else None)
            self._store_congruence(tt, tt.attrs, set(todo))

    def _store_congruence(self, tt: pd.DataFrame, rec: dict, want: set) -> None:
        store = self._cache["congr"]
        for (l, n), g in tt.groupby(["layer", "neuron"], sort=False):
            if (int(l), int(n)) not in want:
                continue
            side = {s: [(int(r.token_id), cell(r.token), float(r.congruence))
                        for r in gg.sort_values("rank").itertuples(index=False)] for s, gg in g.groupby("side")}
            store[(int(l), int(n))] = dict(top=side.get("top", []), bottom=side.get("bottom", []),
                                           direction=rec.get("direction", self.options.get("direction", "unembed")),
                                           n_excluded=int(rec.get("n_excluded", 0)))
