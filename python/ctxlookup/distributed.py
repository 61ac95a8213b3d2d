"""Sharded corpus passes, in-process or on a Dask cluster, merged exactly and resumable.

The engine behind ``ctxlookup.neuroscope`` and ``replicate --workers/--scheduler``:

1. **Plan.** The driver streams the corpus once (text lengths only) and forms the same
   token-budgeted batches as the in-process scan (``scan.max_activating``): a batch closes when
   its estimated tokens reach ``batch_tokens``. The forward pass is not bitwise invariant to how
   documents are grouped into a batch (GEMM shapes change), so a shard is a run of whole batches
   and every document is computed in exactly the batch it has in the in-process pass: results are
   identical, not merely close.
2. **Scan.** Each shard is one task: it loads the model from its folder (memory-mapped
   safetensors; loaded once per worker process and reused), reopens the corpus from its path, and
   returns a partial state (arrays + JSON-able metadata).
3. **Record.** The driver writes every finished shard's partial to ``record_dir`` (atomically)
   before using it; a rerun loads recorded shards instead of scanning them again, so a killed
   driver resumes. A record made by another plan (corpus, batches, options) is refused.
4. **Merge.** Partials are merged pairwise in a tree (on the cluster when there is one). Each
   partial carries the shard ids it covers: merging two that overlap raises, and the final one
   must cover every shard exactly once.

Workers: ``workers=N`` starts a ``LocalCluster`` of N processes with one task thread each;
``scheduler="tcp://host:8786"`` uses an existing cluster (every worker must read the model
folder and the corpus at the same paths). Each task sets the C core's threads to ``threads``
(default: the machine's cores divided by its workers), so N workers x T threads never exceed
the cores. A worker that dies mid-task has its task recomputed elsewhere by the scheduler
(``distributed.scheduler.allowed-failures``, 3 by default); a task that raises is retried once,
then the run fails with a :class:`ShardError` naming the worker, the shard and the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

__all__ = ["ShardError", "Shard", "plan_shards", "run_shards", "cluster", "add_cli_options", "load_model", "open_corpus"]


class ShardError(RuntimeError):
    """A shard could not be scanned or merged; the message names the worker, the shard and the file."""


@dataclass
class Shard:
    index: int
    batches: List[List[int]]                      # document ids, batch by batch
    docs: int = field(init=False)

    def __post_init__(self):
        self.docs = sum(len(b) for b in self.batches)

    def describe(self) -> str:
        return f"shard {self.index} (documents {self.batches[0][0]}-{self.batches[-1][-1]})"


def plan_batches(corpus, batch_tokens: int, max_tokens: int) -> List[List[int]]:
    """Document ids grouped exactly as ``scan.max_activating`` groups them into forward passes."""
    out, cur, tok = [], [], 0
    for doc in corpus:
        cur.append(doc.doc_id)
        tok += min(len(doc.text) // 2 + 2, max_tokens)  # the scan's cheap over-estimate of its tokens
        if tok >= batch_tokens:
            out.append(cur)
            cur, tok = [], 0
    if cur:
        out.append(cur)
    return out


def plan_shards(corpus, batch_tokens: int, max_tokens: int, shard_docs: int) -> List[Shard]:
    """Whole batches grouped into shards of at least ``shard_docs`` documents (the last may be smaller)."""
    if shard_docs < 1:
        raise ValueError(f"shard_docs must be >= 1, got {shard_docs}")
    shards, cur = [], []
    for b in plan_batches(corpus, batch_tokens, max_tokens):
        cur.append(b)
        if sum(len(x) for x in cur) >= shard_docs:
            shards.append(Shard(len(shards), cur))
            cur = []
    if cur:
        shards.append(Shard(len(shards), cur))
    return shards


def plan_hash(shards: List[Shard], key: dict) -> str:
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for s in shards:
        h.update(json.dumps(s.batches).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- worker side
_MODELS: Dict[tuple, object] = {}


def load_model(path: str, flags: dict):
    """The model at ``path`` with weight-processing ``flags``, loaded once per process."""
    from .model import Model

    key = (path, tuple(sorted(flags.items())))
    if key not in _MODELS:
        _MODELS.clear()  # one model per worker process at a time
        _MODELS[key] = Model.load(path, **flags)
    return _MODELS[key]


def open_corpus(spec: dict):
    from .corpus import Corpus

    return Corpus(spec["path"], text_field=spec["text_field"], limit=spec["limit"], glob=spec["glob"])


def corpus_spec(corpus) -> dict:
    if getattr(corpus, "path", None) is None:
        raise ValueError(f"corpus {corpus.name} is held in memory and cannot be sent to workers; give a file or "
                         f"folder path (JSONL[.gz], Parquet, a folder of text files)")
    return dict(path=os.path.abspath(corpus.path), text_field=corpus.text_field, limit=corpus.limit, glob=corpus.glob)


def shard_documents(corpus, shard: Shard):
    """The shard's documents, batch by batch (lists of Documents), streamed from the corpus."""
    want = [set(b) for b in shard.batches]
    first, last = shard.batches[0][0], shard.batches[-1][-1]
    got: Dict[int, object] = {}
    for doc in corpus:
        if doc.doc_id > last:
            break
        if doc.doc_id >= first:
            got[doc.doc_id] = doc
    missing = [d for b in want for d in b if d not in got]
    if missing:
        raise ValueError(f"documents {missing[:5]} are missing: the corpus changed since the shards were planned")
    return [[got[d] for d in b] for b in shard.batches]


def _where() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address} on {socket.gethostname()}"
    except (ImportError, ValueError):
        return f"the driver on {socket.gethostname()} (pid {os.getpid()})"


def _threads_here(threads) -> int:
    if isinstance(threads, int):
        return threads
    host = socket.gethostname()
    per_host = (threads or {}).get(host, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, per_host))


def run_task(task: Callable, spec: dict, shard: Shard, threads) -> dict:
    """Run ``task(model, corpus, shard, spec)`` on one shard where this process is (worker or
    driver), with errors turned into a :class:`ShardError` naming the place, shard and file."""
    from . import _core

    _core.set_num_threads(_threads_here(threads))
    where = _where()
    try:
        model = load_model(spec["model_path"], spec["model_flags"])
    except Exception as e:
        raise ShardError(f"{where}, {shard.describe()}: cannot open the model {spec['model_path']}: {e}") from None
    try:
        corpus = open_corpus(spec["corpus"])
        batches = shard_documents(corpus, shard)
    except Exception as e:
        raise ShardError(f"{where}, {shard.describe()}: cannot read the corpus {spec['corpus']['path']}: {e}") from None
    try:
        part = task(model, batches, spec)
    except Exception as e:
        raise ShardError(f"{where}, {shard.describe()}: the scan failed: {type(e).__name__}: {e}") from None
    part["shards"] = [shard.index]
    return part


def merge_parts(merge: Callable, a: dict, b: dict) -> dict:
    overlap = set(a["shards"]) & set(b["shards"])
    if overlap:
        raise ShardError(f"shards {sorted(overlap)} would be merged twice")
    out = merge(a, b)
    out["shards"] = sorted(a["shards"] + b["shards"])
    return out


# ---------------------------------------------------------------------- records
def _record_path(record_dir: str, index: int) -> str:
    return os.path.join(record_dir, f"shard-{index:05d}.npz")


def save_record(record_dir: str, plan: str, part: dict) -> None:
    path = _record_path(record_dir, part["shards"][0])
    tmp = path + ".incomplete.npz"
    meta = json.dumps(dict(plan=plan, shards=part["shards"], meta=part["meta"]))
    np.savez(tmp, __meta__=np.array(meta), **part["state"])
    os.replace(tmp, path)


def load_record(record_dir: str, plan: str, index: int) -> Optional[dict]:
    path = _record_path(record_dir, index)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            state = {k: z[k] for k in z.files if k != "__meta__"}
    except Exception:
        return None  # torn or unreadable: scan the shard again
    if meta.get("plan") != plan or meta.get("shards") != [index]:
        raise ShardError(f"{path} was recorded by another run (other corpus, model or options); use another output "
                         f"folder or delete {record_dir} to start over")
    return dict(state=state, meta=meta["meta"], shards=[index])


# ---------------------------------------------------------------------- clusters
def cluster(workers: Optional[int] = None, scheduler: Optional[str] = None, timeout: float = 10.0):
    """A ``(client, close)`` pair: a LocalCluster of ``workers`` processes, or a client of the
    scheduler at ``scheduler``. Raises ConnectionError naming an unreachable scheduler."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("workers and schedulers need Dask: pip install 'ctxlookup[cluster]' "
                          "(dask[distributed])") from None
    import logging

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise ConnectionError(f"could not reach the Dask scheduler at {scheduler} within {timeout:g} s: {e}") from None
        return client, client.close
    if workers is None or workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    lc = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR)
    client = Client(lc)

    def close():
        client.close()
        lc.close()

    return client, close


def threads_plan(client, threads: Optional[int]):
    """``threads`` as given, else {host: workers on it}: each task then takes its machine's cores
    divided by that."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return int(threads)
    per_host: Dict[str, int] = {}
    for w in client.scheduler_info()["workers"].values():
        host = w.get("host") or w.get("name")
        per_host[host] = per_host.get(host, 0) + 1
    if client is not None and not per_host:
        raise ShardError("the Dask cluster has no workers")
    # workers report their IP address; tasks see their hostname: map both to the count
    hosts = {}
    for h, n in per_host.items():
        hosts[h] = n
        try:
            hosts[socket.gethostbyaddr(h)[0]] = n
        except OSError:
            pass
    hosts.setdefault(socket.gethostname(), max(per_host.values()))
    return hosts


# ---------------------------------------------------------------------- the engine
def run_shards(task: Callable, merge: Callable, spec: dict, shards: List[Shard], record_dir: Optional[str],
               plan: str, workers: Optional[int] = None, scheduler: Optional[str] = None,
               threads: Optional[int] = None, progress: bool = True, desc: str = "shards") -> tuple:
    """Scan every shard (recorded ones are loaded), merge all partials exactly; returns
    ``(merged partial, stats)`` with stats ``{shards, reused_shards, scanned_shards, wall_s}``."""
    t0 = time.perf_counter()
    if record_dir:
        os.makedirs(record_dir, exist_ok=True)
    done: Dict[int, dict] = {}
    for s in shards:
        rec = load_record(record_dir, plan, s.index) if record_dir else None
        if rec is not None:
            done[s.index] = rec
    todo = [s for s in shards if s.index not in done]
    bar = _bar(len(shards), desc) if progress else None
    if bar is not None:
        bar.update(len(done))
    try:
        if workers is None and scheduler is None:
            result = _run_local(task, merge, spec, todo, done, record_dir, plan, threads, bar)
        else:
            result = _run_cluster(task, merge, spec, todo, done, record_dir, plan, workers, scheduler, threads, bar)
    finally:
        if bar is not None:
            bar.close()
    want = sorted(s.index for s in shards)
    if result["shards"] != want:
        missing = sorted(set(want) - set(result["shards"]))
        raise ShardError(f"the merged result covers shards {result['shards'][:10]}..., not all {len(want)}: "
                         f"missing {missing[:10]}")
    stats = dict(shards=len(shards), reused_shards=len(done), scanned_shards=len(todo),
                 wall_s=round(time.perf_counter() - t0, 3))
    return result, stats


def _bar(total, desc):
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="shard")
    except ImportError:  # pragma: no cover
        return None


def _tree(parts: list, merge2: Callable) -> dict:
    while len(parts) > 1:
        nxt = [merge2(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _run_local(task, merge, spec, todo, done, record_dir, plan, threads, bar):
    from . import _core

    before = _core.get_num_threads()
    parts = dict(done)
    try:
        for s in todo:
            part = run_task(task, spec, s, threads if threads is not None else before)
            if record_dir:
                save_record(record_dir, plan, part)
            parts[s.index] = part
            if bar is not None:
                bar.update(1)
    finally:
        _core.set_num_threads(before)
    return _tree([parts[i] for i in sorted(parts)], lambda a, b: merge_parts(merge, a, b))


def _run_cluster(task, merge, spec, todo, done, record_dir, plan, workers, scheduler, threads, bar):
    from distributed import as_completed

    client, close = cluster(workers=workers, scheduler=scheduler)
    futures = []
    try:
        tplan = threads_plan(client, threads)
        futures = [client.submit(run_task, task, spec, s, tplan, key=f"ctxlookup-{plan}-shard-{s.index}", retries=1,
                                 pure=False) for s in todo]
        by_index = {}
        for fut in as_completed(futures):
            if fut.status == "error":
                exc = fut.exception()
                raise exc if isinstance(exc, ShardError) else ShardError(f"a shard task failed: {exc!r}")
            part = fut.result()
            if record_dir:
                save_record(record_dir, plan, part)
            by_index[part["shards"][0]] = fut
            if bar is not None:
                bar.update(1)
        # the tree reduction runs on the cluster; recorded shards join it from the driver
        parts = [by_index[i] if i in by_index else client.scatter([done[i]], hash=False)[0] for i in sorted(list(by_index) + list(done))]
        merged = _tree(parts, lambda a, b: client.submit(merge_parts, merge, a, b, pure=False))
        return merged.result() if hasattr(merged, "result") else merged
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        close()


def add_cli_options(p, threads: bool = True) -> None:
    """``--workers N`` / ``--scheduler ADDRESS`` (and ``--threads T``) on a CLI subcommand."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, help="scan on a local Dask cluster of N worker processes (default: in "
                                                "this process)")
    g.add_argument("--scheduler", help="scan on an existing Dask cluster (tcp://host:8786); workers must read the "
                                       "model and corpus at the same paths (default: none)")
    if threads:
        p.add_argument("--threads", type=int, help="C threads per task (default: in-process, the core's setting; "
                                                   "workers: the machine's cores / its workers)")
