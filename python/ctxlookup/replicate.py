"""``ctxlookup replicate``: the whole paper in one command, in stages, resumable.

Stages, in order (each is also a subcommand; running one runs what it needs first):

=================  ============================================================================
``neurons``        next-token neurons per layer, and the random-neuron baseline (METHOD §2)
``scan``           max-activating documents of every neuron on ``--corpus`` (METHOD §3)
``truncate``       the prompts, truncated to keep 80% of the activation
``test_scan``      the same on ``--test-corpus`` (10 per neuron)
``test_truncate``  test prompts
``attribution``    head attribution on the prompts and test prompts (METHOD §4)
``select``         heads active on 25-75% of a neuron's prompts
``explain``        an explanation per selected head (LLM or the offline explainer, METHOD §5)
``score``          the explanations scored on the test prompts (and each test prompt's answer)
``ablation``       the ablation check (METHOD §6)
``stats``          statistics, Tables 3 and 4, Figures 5 and 6
``evidence``       not the paper's: the an-neuron post's check of every neuron on the test corpus
                   (``next_token_evidence``: does its activation predict its token being the top
                   prediction?), and are the next-token neurons so more often than the random
                   ones (Fisher's exact test)? ``--evidence-docs`` documents (500; 0 skips it)
=================  ============================================================================

A run directory holds every stage's tables (Parquet and CSV), the figures, the LLM response cache
and ``manifest.json`` (package version, model files and their sha256, every option, seeds, prompt
templates, LLM model and base URL without the key, token usage and cost, wall time per stage).
A rerun skips stages that are complete and valid; a run killed at any point and restarted
finishes with the same result and no repeated LLM request (the scan checkpoints, LLM answers
are cached as they arrive, tables are written atomically before a stage is marked complete).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

STAGES = ["neurons", "scan", "truncate", "test_scan", "test_truncate", "attribution", "select", "explain", "score",
          "ablation", "stats", "evidence"]

# the tables each stage writes
OUTPUTS = {
    "neurons": ["neurons", "excluded_tokens"],
    "scan": ["max_acts"],
    "truncate": ["prompts"],
    "test_scan": ["test_max_acts"],
    "test_truncate": ["test_prompts"],
    "attribution": ["attribution", "test_attribution"],
    "select": ["heads"],
    "explain": ["explanations"],
    "score": ["scores", "predictions"],
    "ablation": ["ablation", "ablation_by_head"],
    "stats": ["statistics", "table3", "table4"],
    "evidence": ["evidence"],
}


EXCLUDED_TOKEN_COLUMNS = ["token_id", "token", "reason", "norm_z"]


class RunMismatch(ValueError):
    """The output folder holds a run made with other options or other model files: resuming it
    would mix two runs' tables."""


@dataclass
class Options:
    """Every option of a replication (the CLI's flags, one to one)."""

    model: str = "demo"
    out: str = "runs/replicate"
    protocol: str = "paper"                       # ctxlookup.protocols: "paper", "authors-2023" or "ctxlookup"
    corpus: Optional[str] = None
    test_corpus: Optional[str] = None
    layers: Optional[List[int]] = None            # default: METHOD §2 per model size
    neurons_per_layer: Optional[int] = None       # default: METHOD §2 per model size
    random_per_layer: int = 20
    # None: the protocol's rule (ctxlookup.protocols); a value overrides it
    prompts_per_neuron: Optional[int] = None
    test_prompts_per_neuron: Optional[int] = None
    table3: Optional[List[int]] = field(default_factory=lambda: [10, 20, 30])
    explainer: str = "offline"                    # "offline" or "openai"
    llm_model: str = "gpt-4-1106-preview"
    base_url: Optional[str] = None
    llm_concurrency: int = 16
    rpm: Optional[float] = None
    seed: int = 0
    process_weights: bool = True                  # fold_ln, center_writing_weights, center_unembed, fold_value_biases
    direction: str = "unembed"
    remove_frequency: bool = False                # not the paper's: see neurons.next_token_neurons
    rule: Optional[str] = None                    # eligible heads: "authors" or "architecture"
    active_rule: Optional[str] = None             # "mean+2sd" or "top3"
    truncation: Optional[str] = None              # "binary" or "exact"
    keep: float = 0.8
    max_prompt_tokens: int = 100
    low: Optional[float] = None
    high: Optional[float] = None
    ablation: str = "zero"
    evidence_docs: int = 500                      # test-corpus documents for the an-neuron check (0: skip it)
    max_docs: Optional[int] = None                # cap each corpus (quick runs)
    batch_tokens: int = 8192
    progress: bool = True
    # --- the scans on Dask (ctxlookup.distributed): same tables, so not part of the key
    workers: Optional[int] = None                 # a LocalCluster of N worker processes
    scheduler: Optional[str] = None               # an existing cluster's scheduler address

    def key(self) -> dict:
        """The options that determine results (not where or how verbosely they are written)."""
        d = dataclasses.asdict(self)
        for k in ("out", "progress", "llm_concurrency", "rpm", "workers", "scheduler"):
            d.pop(k)
        return d


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".incomplete"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, pd.DataFrame):
        return o.to_dict(orient="records")
    if isinstance(o, pd.Series):
        return o.to_dict()
    return str(o)


class Run:
    """A run directory: tables, manifest, and the stages' state."""

    def __init__(self, opts: Options):
        if int(opts.evidence_docs) < 0:
            raise ValueError(f"evidence_docs must be >= 0 (0 skips the an-neuron check), got {opts.evidence_docs}")
        from . import protocols

        self.opts = opts
        # the protocol's rules, with the options that override single rules
        self.protocol = protocols.get(opts.protocol, rule=opts.rule, active_rule=opts.active_rule,
                                      truncation=opts.truncation, low=opts.low, high=opts.high,
                                      prompts_per_neuron=opts.prompts_per_neuron,
                                      test_prompts_per_neuron=opts.test_prompts_per_neuron)
        self.dir = os.path.abspath(opts.out)
        os.makedirs(self.dir, exist_ok=True)
        self.manifest_path = os.path.join(self.dir, "manifest.json")
        self.manifest = self._load_manifest()
        self._model = None
        self._client = None
        self.tables: Dict[str, pd.DataFrame] = {}

    # ------------------------------------------------------------------ manifest
    def _load_manifest(self) -> dict:
        if os.path.exists(self.manifest_path):
            with open(self.manifest_path) as f:
                m = json.load(f)
            # an option added after the run was made counts as its default
            defaults = {f.name: f.default for f in dataclasses.fields(Options) if f.default is not dataclasses.MISSING}
            old = dict({k: v for k, v in defaults.items() if k in self.opts.key()}, **m.get("options_key", {}))
            if old != self.opts.key():
                diff = sorted(k for k in set(old) | set(self.opts.key()) if old.get(k) != self.opts.key().get(k))
                raise RunMismatch(f"{self.dir} holds a run made with other options ({', '.join(diff)}); "
                                 f"use another --out, or the same options to resume")
            return m
        from . import __version__
        from .explain import CLASSIFY_TEMPLATE, EXPLAIN_TEMPLATE

        return dict(ctxlookup_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    options=dataclasses.asdict(self.opts), options_key=self.opts.key(), stages={},
                    protocol=self.protocol.as_dict(),
                    templates=dict(explain=EXPLAIN_TEMPLATE, classify=CLASSIFY_TEMPLATE),
                    seeds=dict(random_neurons=self.opts.seed),
                    python=sys.version.split()[0], platform=platform.platform(),
                    numpy=np.__version__, pandas=pd.__version__)

    def save_manifest(self) -> None:
        _atomic_json(self.manifest_path, self.manifest)

    # ------------------------------------------------------------------ tables
    def path(self, name: str, ext: str = "parquet") -> str:
        return os.path.join(self.dir, f"{name}.{ext}")

    def write(self, name: str, df: pd.DataFrame) -> None:
        """Write a table as Parquet and CSV, atomically. Its ``attrs`` go to the manifest (the stage
        returns them), not into the files."""
        attrs, df.attrs = df.attrs, {}
        try:
            for ext in ("parquet", "csv"):
                tmp = self.path(name, ext) + ".incomplete"
                if ext == "parquet":
                    df.to_parquet(tmp, index=False)
                else:
                    df.to_csv(tmp, index=False)
                os.replace(tmp, self.path(name, ext))
        finally:
            df.attrs = attrs
        self.tables[name] = df

    def read(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            df = pd.read_parquet(self.path(name))
            df.attrs.update(self.manifest["stages"].get(self._stage_of(name), {}).get("attrs", {}).get(name, {}))
            self.tables[name] = df
        return self.tables[name]

    @staticmethod
    def _stage_of(table: str) -> str:
        return next(s for s, outs in OUTPUTS.items() if table in outs)

    def complete(self, stage: str) -> bool:
        rec = self.manifest["stages"].get(stage)
        if not rec or not rec.get("complete"):
            return False
        for name in OUTPUTS[stage]:
            try:
                pd.read_parquet(self.path(name), columns=[])
            except Exception:
                return False  # missing or unreadable: redo the stage
        return True

    # ------------------------------------------------------------------ resources
    @property
    def model(self):
        if self._model is None:
            from .model import Model

            p = self.opts.process_weights
            self._model = Model.from_pretrained(self.opts.model, fold_ln=p, center_writing_weights=p, center_unembed=p,
                                                fold_value_biases=p)
            files = sorted(f for f in os.listdir(self._model.path) if os.path.isfile(os.path.join(self._model.path, f)))
            hashes = {f: _sha256(os.path.join(self._model.path, f)) for f in files}
            before = self.manifest.get("model", {}).get("files")
            if before is not None and before != hashes:
                changed = sorted(f for f in set(before) | set(hashes) if before.get(f) != hashes.get(f))
                self._model = None
                raise RunMismatch(f"{self.dir} holds a run made with other model files ({', '.join(changed)} "
                                 f"changed since); use another --out, or delete it to start over")
            self.manifest["model"] = dict(name=self.opts.model, path=self._model.path, config=self._model.cfg.to_dict(),
                                          files=hashes)
        return self._model

    @property
    def client(self):
        if self._client is None:
            if self.opts.explainer == "offline":
                from .explain import OfflineExplainer

                self._client = OfflineExplainer()
                self.manifest["llm"] = dict(explainer="offline")
            elif self.opts.explainer == "openai":
                from .llm import Client

                self._client = Client(model=self.opts.llm_model, base_url=self.opts.base_url,
                                      cache=os.path.join(self.dir, "llm_cache.sqlite3"),
                                      concurrency=self.opts.llm_concurrency, rpm=self.opts.rpm,
                                      progress=self.opts.progress)
                self.manifest["llm"] = dict(explainer="openai", **self._client.manifest())
            else:
                raise ValueError(f"explainer must be 'offline' or 'openai', got '{self.opts.explainer}'")
        return self._client

    def corpus(self, which: str):
        from .corpus import Corpus

        src = self.opts.corpus if which == "train" else self.opts.test_corpus
        if src is None:
            if self.opts.model == "demo":
                return Corpus.demo("train" if which == "train" else "test")
            raise ValueError(f"--{'corpus' if which == 'train' else 'test-corpus'} is required for model {self.opts.model}")
        return Corpus(src, limit=self.opts.max_docs)

    # ------------------------------------------------------------------ running
    def run(self, until: Optional[str] = None) -> dict:
        stages = STAGES if until is None else STAGES[: STAGES.index(until) + 1]
        for stage in stages:
            if self.complete(stage):
                continue
            t0 = time.perf_counter()
            attrs = getattr(self, f"_stage_{stage}")() or {}
            rec = dict(complete=True, wall_s=round(time.perf_counter() - t0, 3), attrs=attrs,
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            if self._client is not None and hasattr(self._client, "usage"):
                rec["llm_usage"] = _usage_dict(self._client)
            self.manifest["stages"][stage] = rec
            self.save_manifest()
        if self._client is not None:
            self.manifest["llm_usage"] = _usage_dict(self._client)
            self.save_manifest()
        return self.manifest

    # ------------------------------------------------------------------ stages
    def _stage_neurons(self):
        from .neurons import default_layers, detect_glitch_tokens, next_token_neurons, random_neurons, token_counts

        m = self.model
        d_layers, d_top = default_layers(m)
        layers = self.opts.layers or d_layers
        top = self.opts.neurons_per_layer or d_top
        counts = token_counts(m, self.corpus("train"))  # the prompts' corpus: glitch check and frequency direction
        freq = counts if self.opts.remove_frequency else None
        nt = next_token_neurons(m, layers=layers, top_k=top, direction=self.opts.direction,
                                glitch=detect_glitch_tokens(m, counts=counts), remove_frequency=freq,
                                token_rule=self.protocol.token_rule)
        rnd = random_neurons(m, layers=layers, n=min(self.opts.random_per_layer, m.cfg.d_mlp), seed=self.opts.seed,
                             direction=self.opts.direction, remove_frequency=freq,
                             token_filter=self.protocol.random_token_filter)
        cols = ["layer", "neuron", "token_id", "token", "congruence", "rank"]
        neurons = pd.concat([nt[cols].assign(group="next_token"), rnd[cols].assign(group="random")], ignore_index=True)
        self.write("neurons", neurons)
        self.write("excluded_tokens", pd.DataFrame(nt.attrs["excluded_tokens"], columns=EXCLUDED_TOKEN_COLUMNS
                                                   ).astype({"token": "object"}))
        # like the authors' rejected_neurons_with_token: the neurons passed over, with their tokens
        return {"neurons": dict(layers=list(map(int, layers)), per_layer=int(top), token_rule=nt.attrs["token_rule"],
                                excluded_neurons=nt.attrs["excluded_neurons"],
                                skipped_neurons=nt.attrs["skipped_neurons"])}

    def _unique_neurons(self) -> pd.DataFrame:
        return self.read("neurons").drop_duplicates(["layer", "neuron"])[["layer", "neuron", "token_id", "token"]]

    def _scan(self, which: str, k: int, name: str):
        from .search import max_activating

        ma = max_activating(self.model, self._unique_neurons(), self.corpus(which), k=k,
                            batch_tokens=self.opts.batch_tokens, checkpoint=os.path.join(self.dir, f"{name}.ckpt.npz"),
                            progress=self.opts.progress,
                            workers=self.opts.workers, scheduler=self.opts.scheduler)  # Dask, when given
        self.write(name, ma)
        return {name: {k2: v for k2, v in ma.attrs.items()}}

    def _stage_scan(self):
        counts = [self.protocol.scan_k, self.protocol.prompts_per_neuron] + list(self.opts.table3 or [])
        return self._scan("train", max(counts), "max_acts")

    def _stage_test_scan(self):
        # the authors kept 30 test documents and used the first n that survived truncation
        p = self.protocol
        k = max(p.scan_k, p.test_prompts_per_neuron) if p.count_after_drop else p.test_prompts_per_neuron
        return self._scan("test", k, "test_max_acts")

    def _truncate(self, src: str, name: str, which: str):
        from .search import truncate

        ma = self.read(src)
        tr = truncate(self.model, ma, self.corpus(which), keep=self.opts.keep, max_prompt_tokens=self.opts.max_prompt_tokens,
                      method=self.protocol.truncation, newlines=self.protocol.newlines)
        attrs = dict(tr.attrs)
        if name == "test_prompts":
            tr = self._first_prompts(tr, self.protocol.test_prompts_per_neuron)
            attrs["kept_per_neuron"] = self.protocol.test_prompts_per_neuron
        self.write(name, tr)
        return {name: attrs}

    def _stage_truncate(self):
        return self._truncate("max_acts", "prompts", "train")

    def _stage_test_truncate(self):
        return self._truncate("test_max_acts", "test_prompts", "test")

    def _stage_attribution(self):
        from .attribution import head_attribution

        out = {}
        for src, name in (("prompts", "attribution"), ("test_prompts", "test_attribution")):
            p = self.protocol
            att = head_attribution(self.model, self.read(src), rule=p.rule, active_rule=p.active_rule,
                                   retokenize=p.retokenize)
            att.attrs.pop("activation", None)
            self.write(name, att)
            out[name] = dict(att.attrs)
        return out

    def _first_prompts(self, p: pd.DataFrame, n: Optional[int]) -> pd.DataFrame:
        """Each neuron's first ``n`` prompts: the first n kept after truncation (the authors'
        ``prompts[:n]``, protocols paper and authors-2023), or those of scan rank < n. Under the
        authors' protocols a text that repeats among them counts once, at its first place (their
        prompts were the keys of a dict: the attribution, selection and scores saw each text once;
        the same text gives the same attribution, so which copy stays does not matter)."""
        if n is not None:
            if self.protocol.count_after_drop:
                p = p[p.sort_values("rank", kind="stable").groupby(["layer", "neuron"]).cumcount().reindex(p.index) < n]
            else:
                p = p[p["rank"] < n]
        if self.protocol.dedupe_text:
            p = p.sort_values("rank", kind="stable").drop_duplicates(["layer", "neuron", "text"]).sort_index()
        return p

    def _prompts_upto(self, n: Optional[int]) -> pd.DataFrame:
        return self._first_prompts(self.read("prompts"), n)

    def _select(self, n: Optional[int]) -> pd.DataFrame:
        from .attribution import select_heads

        prompts = self._prompts_upto(n)
        att = self.read("attribution")
        att = att[att.prompt_id.isin(prompts.prompt_id)]
        p = self.protocol
        heads = select_heads(att, p.low, p.high, low_strict=p.low_strict)
        groups = self.read("neurons")[["layer", "neuron", "group"]]
        return heads.merge(groups, on=["layer", "neuron"], how="left")

    def _stage_select(self):
        rows = []
        for n in self._prompt_counts():
            rows.append(self._select(n).assign(n_prompts_per_neuron=n))
        heads = pd.concat(rows, ignore_index=True)
        self.write("heads", heads)
        return {}

    def _prompt_counts(self) -> list:
        return sorted(set([self.protocol.prompts_per_neuron] + list(self.opts.table3 or [])))

    def _stage_explain(self):
        from .explain import explain_heads

        heads, rows = self.read("heads"), []
        for n in self._prompt_counts():
            h = heads[heads.n_prompts_per_neuron == n].drop_duplicates(["layer", "neuron", "head_layer", "head"])
            prompts = self._prompts_upto(n)
            att = self.read("attribution")
            ex = explain_heads(h, prompts, att[att.prompt_id.isin(prompts.prompt_id)], self.client, stage=f"explain-{n}",
                               version=self.protocol.template_version, temperature=self.protocol.temperature)
            rows.append(ex.assign(n_prompts_per_neuron=n))
        self.write("explanations", pd.concat(rows, ignore_index=True))
        return {}

    def _stage_score(self):
        from .explain import score_explanations

        ex, rows, preds = self.read("explanations"), [], []
        for n in self._prompt_counts():
            e = ex[ex.n_prompts_per_neuron == n].reset_index(drop=True)
            p = self.protocol
            sc, pr = score_explanations(e, self.read("test_prompts"), self.read("test_attribution"), self.client,
                                        stage=f"classify-{n}", return_predictions=True, version=p.template_version,
                                        one_class=p.one_class, parse=p.parse, temperature=p.temperature)
            rows.append(sc)
            preds.append(pr)
        scores = pd.concat(rows, ignore_index=True).merge(
            self.read("neurons")[["layer", "neuron", "group"]], on=["layer", "neuron"], how="left")
        self.write("scores", scores)
        # the classifier's answer on each test prompt (the scores' confusion counts, one row per answer)
        self.write("predictions", pd.concat(preds, ignore_index=True))
        return {}

    def _stage_ablation(self):
        from .attribution import ablate_heads
        from .stats import ablation_comparison

        n = self.protocol.prompts_per_neuron
        heads = self.read("heads")
        heads = heads[(heads.n_prompts_per_neuron == n) & (heads.group == "next_token")]
        heads = heads.drop_duplicates(["layer", "neuron", "head_layer", "head"])
        if self.protocol.ablation_prompts == "test":  # §5.4: the test prompts, activity from their attribution
            prompts, att = self.read("test_prompts"), self.read("test_attribution")
        else:
            prompts, att = self._prompts_upto(n), self.read("attribution")
        ab = ablate_heads(self.model, prompts, heads, attribution=att[att.prompt_id.isin(prompts.prompt_id)],
                          mode=self.opts.ablation, retokenize=self.protocol.retokenize)
        self.write("ablation", ab)
        comp = ablation_comparison(ab) if len(ab) else pd.DataFrame(
            columns=["layer", "neuron", "head_layer", "head", "mean_decrease_active", "mean_decrease_inactive"])
        ks = comp.attrs.get("ks", {})
        self.write("ablation_by_head", comp)
        return {"ablation_by_head": {"ks": ks, "prompts": self.protocol.ablation_prompts}}

    def _stage_stats(self):
        from .stats import figure5, figure6, score_statistics, subset_counts

        scores, n, ddof = self.read("scores"), self.protocol.prompts_per_neuron, self.protocol.ddof
        main = scores[scores.n_prompts_per_neuron == n]
        model_E = main[main.group == "next_token"].E
        rand_E = main[main.group == "random"].E
        stats = pd.concat([score_statistics(model_E, rand_E, label=f"{self.opts.model} next-token neurons", ddof=ddof),
                           score_statistics(rand_E, label=f"{self.opts.model} random neurons", ddof=ddof)],
                          ignore_index=True)
        self.write("statistics", stats)
        t3 = pd.concat([score_statistics(scores[(scores.n_prompts_per_neuron == c) & (scores.group == "next_token")].E,
                                         label=str(c), ddof=ddof).assign(prompts_per_neuron=c)
                        for c in self._prompt_counts()], ignore_index=True)
        self.write("table3", t3)
        heads = self.read("heads")
        heads = heads[(heads.n_prompts_per_neuron == n) & (heads.group == "next_token")].drop_duplicates(
            ["layer", "neuron", "head_layer", "head"])
        prompts = self._prompts_upto(n)
        t4 = subset_counts(prompts, self.read("attribution"), heads)
        self.write("table4", t4.assign(subsets=t4.subsets.map(lambda s: ",".join(map(str, s)))))
        figs = figure5(model_E, rand_E, path_base=os.path.join(self.dir, "figure5"),
                       title=f"Head explanation scores ({self.opts.model})", style=self.protocol.figure_style)
        comp = self.read("ablation_by_head")
        comp.attrs["ks"] = self.manifest["stages"]["ablation"]["attrs"]["ablation_by_head"]["ks"]
        figs += figure6(comp, path_base=os.path.join(self.dir, "figure6"), style=self.protocol.figure_style)
        return {"figures": [os.path.basename(p) for p in figs],
                "table4": {"histogram": {int(k): int(v) for k, v in t4.attrs["histogram"].items()}}}

    def _stage_evidence(self):
        """The an-neuron post's check on every selected neuron (not part of the paper's method): on
        the test corpus, does the neuron's activation predict its token being the model's top
        prediction (:func:`ctxlookup.next_token_evidence`)?"""
        from .anneuron import EVIDENCE_COLUMNS, next_token_evidence
        from .stats import rising_comparison

        neurons = self._unique_neurons()
        n, docs, binning = int(self.opts.evidence_docs), 0, {}
        if n == 0 or not len(neurons):
            ev = pd.DataFrame(columns=EVIDENCE_COLUMNS + ["group"])
        else:
            ev = next_token_evidence(self.model, neurons, self.corpus("test"), max_docs=n,
                                     batch_tokens=self.opts.batch_tokens, progress=self.opts.progress)
            docs = ev.attrs["n_docs"]
            binning = {k: ev.attrs[k] for k in ("bins", "binning", "min_positions")}
            # a row per neuron and group, as the scores (a neuron can be in both groups)
            ev = ev.merge(self.read("neurons")[["layer", "neuron", "group"]], on=["layer", "neuron"], how="left")
            ev["bin_fractions"], ev["bin_counts"], ev["bin_edges"] = (ev[c].map(list) for c in
                                                                      ("bin_fractions", "bin_counts", "bin_edges"))
        self.write("evidence", ev)
        summary = {g: dict(neurons=int((ev.group == g).sum()), rising=int(ev.rising[ev.group == g].sum()))
                   for g in sorted(set(ev.group))} if len(ev) else {}
        out = dict(docs=docs, by_group=summary, **binning)
        if {"next_token", "random"} <= set(summary):
            out["vs_random"] = rising_comparison(ev)
        return {"evidence": out}


def evidence_summary(manifest: dict) -> List[str]:
    """The evidence stage's result in words, a line per neuron group (none before the stage ran)."""
    ev = manifest.get("stages", {}).get("evidence", {}).get("attrs", {}).get("evidence", {})
    lines = [f"an-neuron check on {ev['docs']} test documents: {c['rising']} of {c['neurons']} {group.replace('_', '-')} "
             f"neurons make their token the top prediction more often as they activate more"
             for group, c in ev.get("by_group", {}).items()]
    vs = ev.get("vs_random")
    if vs:
        lines.append(f"next-token vs random neurons rising: Fisher's exact test, one-sided p = {vs['p']:.2g}")
    return lines


def _usage_dict(client) -> dict:
    u = getattr(client, "usage", None)
    if isinstance(u, dict):
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in u.items()}
    return dict(u or {})


def replicate(model: str = "demo", out: str = "runs/replicate", until: Optional[str] = None, **options) -> Run:
    """Run (or resume) a replication; returns the :class:`Run` (tables via ``run.read(name)``).

    Keyword options are :class:`Options` fields; ``until`` stops after that stage.
    """
    opts = Options(model=model, out=out, **options)
    if until is not None and until not in STAGES:
        raise ValueError(f"unknown stage '{until}'; stages: {', '.join(STAGES)}")
    run = Run(opts)
    run.run(until)
    return run
