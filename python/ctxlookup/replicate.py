"""``ctxlookup replicate``: the whole paper in one command, in stages, resumable.

Stages, in order (each is also a subcommand; running one runs what it needs first):

=================  ============================================================================
``neurons``        next-token neurons per layer, and the random-neuron baseline (METHOD §2)
``scan``           max-activating documents of every neuron on ``--corpus`` (METHOD §3); from the
                   same pass each neuron's activation histogram and examples per activation
                   quantile (tables ``histograms``, ``quantile_examples``, as Neuroscope's)
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
``examples``       for the report: each scanned document's tokens around its maximum with the
                   neuron's activation on each, and each neuron's most and least congruent tokens
=================  ============================================================================

A run directory holds every stage's tables (Parquet and CSV), the figures, the LLM response cache
and ``manifest.json`` (package version, model files and their sha256, every option, seeds, prompt
templates, LLM model and base URL without the key, token usage and cost, wall time per stage).
A rerun skips stages that are complete and valid; a run killed at any point and restarted
finishes with the same result and no repeated LLM request (the scan checkpoints, LLM answers
are cached as they arrive, tables are written atomically before a stage is marked complete).

The manifest records each stage's output files with their sha256 (and, for Parquet, the schema:
column names and types). A stage is complete only while its Parquet and CSV files are there with
those hashes: a missing, damaged or replaced file makes the stage run again, and when that
changes its outputs the stages after it run again too. One run at a time: a run holds an OS lock
on ``run.lock`` in the directory (``fcntl.flock``, released by the kernel when the process dies,
so a killed run never blocks the next); a second run on the directory raises :class:`RunLocked`
at once, naming the first run's process id and host. Without ``out`` the directory is
``runs/<model>-<hash>``, the hash of the options that differ from the defaults, so different
experiments do not share a directory by default. A full disk raises :class:`DiskFull` and leaves
no half-written file; a damaged or foreign manifest, table or checkpoint raises
:class:`RunFileError` naming the file (never a raw parser traceback).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

STAGES = ["neurons", "scan", "truncate", "test_scan", "test_truncate", "attribution", "select", "explain", "score",
          "ablation", "stats", "evidence", "examples"]

# the tables each stage writes
OUTPUTS = {
    "neurons": ["neurons", "excluded_tokens"],
    "scan": ["max_acts", "histograms", "quantile_examples"],
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
    "examples": ["examples", "test_examples", "quantile_windows", "top_tokens"],
}


EXCLUDED_TOKEN_COLUMNS = ["token_id", "token", "reason", "norm_z"]

LOCK_FILE = "run.lock"


class RunMismatch(ValueError):
    """The output folder holds a run made with other options or other model files: resuming it
    would mix two runs' tables."""


class RunLocked(RuntimeError):
    """Another run (this process or another, on this host or another sharing the folder) is
    working on the run directory; ``holder`` is what it wrote into the lock file (pid, host,
    started, command), empty if unknown."""

    def __init__(self, directory: str, holder: dict):
        self.directory, self.holder = directory, holder
        who = (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}" if holder else
               "another process (it has not written its id)")
        since = f", started {holder['started']}" if holder.get("started") else ""
        super().__init__(f"{directory} is in use by {who}{since}; wait for it to finish, or use another --out")


class RunFileError(ValueError):
    """A file of the run directory is damaged or is not what ctxlookup wrote (the message names
    the file and how to repair the run)."""


class DiskFull(OSError):
    """No space left on the device (or quota) for the run directory; nothing half-written is left
    behind, and rerunning the same command after freeing space resumes the run."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _disk_full(e: BaseException) -> bool:
    """Whether an OSError (or pyarrow's, or SQLite's) says the disk or quota is full."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(w in text for w in ("No space left on device", "Disk quota exceeded", "database or disk is full",
                                   f"errno {errno.ENOSPC}]", f"Errno {errno.ENOSPC}]"))


@dataclass
class Options:
    """Every option of a replication (the CLI's flags, one to one)."""

    model: str = "demo"
    out: Optional[str] = None                     # default: default_out(options), runs/<model>-<hash>
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


def _templates(version: str) -> dict:
    """The prompt texts a run sends, for its manifest: ctxlookup's templates, or, for the authors'
    versions (assembled piece by piece in explain.py), each request built with placeholders."""
    from .explain import EXPLAIN_TEMPLATE, build_explain_prompt
    from .score import CLASSIFY_TEMPLATE, build_classify_prompt

    if version == "ctxlookup":
        return dict(version=version, explain=EXPLAIN_TEMPLATE, classify=CLASSIFY_TEMPLATE)
    return dict(version=version,
                explain=build_explain_prompt("{token}", ["{active prompt}"], ["{inactive prompt}"], version=version),
                classify=build_classify_prompt("{explanation}", "{test prompt}", "{token}", version=version))


def default_out(opts: Options) -> str:
    """``runs/<model>-<hash>``: the model's last path component, and the first 8 hex digits of the
    sha256 of the model as given and the result-determining options that differ from their
    defaults (an option added in a later version leaves existing experiments' folders unchanged)."""
    base = Options(model=opts.model).key()
    changed = {k: v for k, v in opts.key().items() if k == "model" or base.get(k) != v}
    digest = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(str(opts.model)))).strip("._") or "model"
    return os.path.join("runs", f"{name}-{digest}")


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _disk_full_error(directory: str, what: str, e: BaseException) -> DiskFull:
    try:
        free = f"{shutil.disk_usage(directory).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"no space left on the device of {directory} while writing {what} ({free}; {e}); "
                    f"free some space and rerun the same command to resume")


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".incomplete"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and _disk_full(e):
            raise _disk_full_error(os.path.dirname(path), os.path.basename(path), e) from None
        raise


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


class _DirLock:
    """An exclusive ``fcntl.flock`` on ``DIR/run.lock``, whose content names the holder (JSON: pid,
    host, started, command). The kernel drops the lock when its process dies, so a lock file left
    by a killed run blocks nothing; the file itself is never deleted (that would let two processes
    lock two different files of one name)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunLocked(self.directory, holder) from None
        except BaseException:
            os.close(fd)
            raise
        me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  command=" ".join(sys.argv)[:2000])
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the name is missing
        self.fd = fd

    @staticmethod
    def _holder(fd: int) -> dict:
        deadline = time.monotonic() + 1.0  # the holder writes its id just after it locks
        while True:
            try:
                text = os.pread(fd, 8192, 0).decode("utf-8", "replace")
                holder = json.loads(text)
                if isinstance(holder, dict):
                    return holder
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.02)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # drops the flock
            self.fd = None


def _file_id(path: str):
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class Run:
    """A run directory: tables, manifest, and the stages' state.

    :meth:`run` holds the directory's lock for its whole duration (see :class:`RunLocked`) and
    reads the manifest again under it, so a run that finished meanwhile is seen."""

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
        self.dir = os.path.abspath(opts.out or default_out(opts))
        os.makedirs(self.dir, exist_ok=True)
        self.manifest_path = os.path.join(self.dir, "manifest.json")
        self._manifest_id = None
        self._lock = _DirLock(self.dir)
        try:
            self.manifest = self._load_manifest()
        except RunMismatch:
            with self.locked():  # a run of other options still at work: say that (RunLocked), not RunMismatch
                pass
            raise
        self._model = None
        self._client = None
        self._written: Dict[str, dict] = {}
        self.tables: Dict[str, pd.DataFrame] = {}
        self._token_caches: dict = {}  # corpus ("train", "test") -> its documents encoded once (batching.DocTokens)
        self._head_scores: Dict[str, np.ndarray] = {}  # prompts table -> truncation's head scores of its rows

    # ------------------------------------------------------------------ manifest
    def _read_manifest_file(self) -> dict:
        """The manifest on disk, checked to be one ctxlookup wrote (else :class:`RunFileError`)."""
        what = f"{self.manifest_path} is damaged or not a ctxlookup run manifest"
        fix = "move the folder aside (or delete it) to start over, or use another --out"
        try:
            with open(self.manifest_path, "rb") as f:
                ident = os.fstat(f.fileno())
                m = json.loads(f.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise RunFileError(f"{what} ({type(e).__name__}: {e}); {fix}") from None
        if not isinstance(m, dict) or not isinstance(m.get("options_key"), dict) or not isinstance(m.get("stages"), dict) \
                or not all(isinstance(r, dict) for r in m["stages"].values()):
            raise RunFileError(f"{what} (expected a JSON object with 'options_key' and 'stages' objects); {fix}")
        self._manifest_id = (ident.st_ino, ident.st_size, ident.st_mtime_ns)
        return m

    def _load_manifest(self) -> dict:
        if os.path.exists(self.manifest_path):
            m = self._read_manifest_file()
            # an option added after the run was made counts as its default
            defaults = {f.name: f.default for f in dataclasses.fields(Options) if f.default is not dataclasses.MISSING}
            old = dict({k: v for k, v in defaults.items() if k in self.opts.key()}, **m.get("options_key", {}))
            if old != self.opts.key():
                diff = sorted(k for k in set(old) | set(self.opts.key()) if old.get(k) != self.opts.key().get(k))
                raise RunMismatch(f"{self.dir} holds a run made with other options ({', '.join(diff)}); "
                                 f"use another --out, or the same options to resume")
            return m
        from ._version import __version__

        return dict(ctxlookup_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    options=dataclasses.asdict(self.opts), options_key=self.opts.key(), stages={},
                    protocol=self.protocol.as_dict(),
                    templates=_templates(self.protocol.template_version),
                    seeds=dict(random_neurons=self.opts.seed),
                    python=sys.version.split()[0], platform=platform.platform(),
                    numpy=np.__version__, pandas=pd.__version__)

    def _reload_if_changed(self) -> None:
        """Under the lock: take the manifest as another run left it, if it changed since we read it."""
        try:
            now = _file_id(self.manifest_path)
        except FileNotFoundError:
            now = None
        if now != self._manifest_id and now is not None:
            self.manifest = self._load_manifest()
            self.tables.clear()
            self._head_scores.clear()
            self._model = None   # re-checked against the manifest's model files when next used
            self._client = None

    def save_manifest(self) -> None:
        _atomic_json(self.manifest_path, self.manifest)
        self._manifest_id = _file_id(self.manifest_path)

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def locked(self):
        """Hold the run directory's lock (re-entrant within this Run); raises :class:`RunLocked`
        at once when another run holds it."""
        if self._lock.fd is not None:
            yield self
            return
        self._lock.acquire()
        try:
            yield self
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ tables
    def path(self, name: str, ext: str = "parquet") -> str:
        return os.path.join(self.dir, f"{name}.{ext}")

    def write(self, name: str, df: pd.DataFrame) -> None:
        """Write a table as Parquet and CSV, atomically, and note their sha256 and the Parquet schema
        for the manifest. Its ``attrs`` go to the manifest (the stage returns them), not into the
        files. A full disk raises :class:`DiskFull` and leaves no ``.incomplete`` file."""
        import pyarrow.parquet as pq

        attrs, df.attrs = df.attrs, {}
        rec: dict = {}
        tmp = None
        try:
            for ext in ("parquet", "csv"):
                tmp = self.path(name, ext) + ".incomplete"
                if ext == "parquet":
                    df.to_parquet(tmp, index=False)
                    schema = pq.read_schema(tmp)
                    rec["schema"] = [[f.name, str(f.type)] for f in schema]
                else:
                    df.to_csv(tmp, index=False)
                rec[ext] = dict(sha256=file_sha256(tmp), bytes=os.path.getsize(tmp))
                os.replace(tmp, self.path(name, ext))
                tmp = None
        except BaseException as e:
            if tmp is not None:
                _remove(tmp)
            if isinstance(e, OSError) and _disk_full(e):
                raise _disk_full_error(self.dir, f"table {name}", e) from None
            raise
        finally:
            df.attrs = attrs
        rec["rows"] = int(len(df))
        self._written[name] = rec
        self.tables[name] = df

    def read(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            p = self.path(name)
            try:
                df = pd.read_parquet(p)
            except FileNotFoundError:
                raise
            except Exception as e:  # pyarrow's errors for a damaged file are many (OSError, ArrowInvalid, ...)
                raise RunFileError(f"{p} is damaged ({type(e).__name__}: {e}); rerun the same replicate command "
                                   f"on {self.dir} to redo its stage") from None
            df.attrs.update(self.manifest["stages"].get(self._stage_of(name), {}).get("attrs", {}).get(name, {}))
            self.tables[name] = df
        return self.tables[name]

    @staticmethod
    def _stage_of(table: str) -> str:
        return next(s for s, outs in OUTPUTS.items() if table in outs)

    def complete(self, stage: str) -> bool:
        """Whether the stage ran to the end and its output files are as it wrote them."""
        return self.problem(stage) is None

    def problem(self, stage: str) -> Optional[str]:
        """Why the stage must run (again), or None when it is complete and its outputs intact:
        a Parquet or CSV file missing, or not the file the stage wrote (sha256), or a figure so."""
        rec = self.manifest["stages"].get(stage)
        if not rec or not rec.get("complete"):
            return "not run to the end"
        outputs = rec.get("outputs")
        if not isinstance(outputs, dict):
            return self._adopt_legacy(stage, rec)
        for name in OUTPUTS[stage]:
            want = outputs.get(name)
            if not isinstance(want, dict):
                return f"{name} is not in the manifest"
            for ext in ("parquet", "csv"):
                bad = self._file_problem(f"{name}.{ext}", (want.get(ext) or {}).get("sha256"))
                if bad:
                    return bad
        for f, h in (rec.get("files") or {}).items():
            bad = self._file_problem(f, h)
            if bad:
                return bad
        return None

    def _file_problem(self, fname: str, sha: Optional[str]) -> Optional[str]:
        p = os.path.join(self.dir, fname)
        if not os.path.isfile(p):
            return f"{fname} is missing"
        if file_sha256(p) != sha:
            return f"{fname} is not the file the stage wrote (sha256 differs)"
        return None

    def _adopt_legacy(self, stage: str, rec: dict) -> Optional[str]:
        """A stage recorded before outputs had hashes: valid if every Parquet file reads in full and
        its CSV twin reads; then its hashes are recorded (saved with the next manifest write)."""
        import pyarrow.parquet as pq

        outputs = {}
        for name in OUTPUTS[stage]:
            try:
                table = pq.read_table(self.path(name))
                pd.read_csv(self.path(name, "csv"), nrows=1)
            except FileNotFoundError as e:
                return f"{os.path.basename(e.filename or name)} is missing"
            except Exception as e:
                return f"{name} does not read ({type(e).__name__}: {e})"
            outputs[name] = {"schema": [[f.name, str(f.type)] for f in table.schema], "rows": int(table.num_rows),
                             **{ext: dict(sha256=file_sha256(self.path(name, ext)), bytes=os.path.getsize(self.path(name, ext)))
                                for ext in ("parquet", "csv")}}
        rec["outputs"] = outputs
        return None

    def _check_checkpoints(self) -> None:
        """A scan checkpoint that does not read (damaged, truncated, not ours) is removed with a note:
        it holds only progress, and the scan starts over without it."""
        for p in glob.glob(os.path.join(glob.escape(self.dir), "*.ckpt.npz")):
            try:
                with np.load(p, allow_pickle=False) as z:
                    for k in z.files:
                        z[k]
                    json.loads(str(z["meta"]))
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
                print(f"replicate: {p} is damaged ({type(e).__name__}: {e}); removed, its scan starts over",
                      file=sys.stderr)
                _remove(p)

    def _cleanup_incomplete(self) -> None:
        """Half-written files of this run (we hold the lock, so every one is ours)."""
        for p in glob.glob(os.path.join(glob.escape(self.dir), "*.incomplete*")):
            _remove(p)

    # ------------------------------------------------------------------ resources
    @property
    def model(self):
        if self._model is None:
            from .model import Model

            p = self.opts.process_weights
            self._model = Model.from_pretrained(self.opts.model, fold_ln=p, center_writing_weights=p, center_unembed=p,
                                                fold_value_biases=p)
            files = sorted(f for f in os.listdir(self._model.path) if os.path.isfile(os.path.join(self._model.path, f)))
            hashes = {f: file_sha256(os.path.join(self._model.path, f)) for f in files}
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
    def llm_client(self):
        """The explainer the run's LLM stages used in this process (None when none ran)."""
        return self._client

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

    def token_cache(self, which: str):
        """The ``which`` corpus's documents as encoded by the model's tokenizer, kept for the run's
        later stages (:class:`ctxlookup.batching.DocTokens`)."""
        from .batching import DocTokens

        return self._token_caches.setdefault(which, DocTokens())

    def corpus(self, which: str):
        from .corpus import Corpus

        src = self.opts.corpus if which == "train" else self.opts.test_corpus
        if src is None:
            if self.opts.model == "demo":
                return Corpus.demo("train" if which == "train" else "test", limit=self.opts.max_docs)
            raise ValueError(f"--{'corpus' if which == 'train' else 'test-corpus'} is required for model {self.opts.model}")
        return Corpus(src, limit=self.opts.max_docs)

    # ------------------------------------------------------------------ running
    def run(self, until: Optional[str] = None, announce: Optional[bool] = None) -> dict:
        """Run the stages up to ``until`` (all by default) that are not complete, holding the run
        directory's lock throughout. A stage whose outputs come out different from what the manifest
        recorded (it was damaged and redone, or never recorded) makes the stages after it run
        again; a full disk raises :class:`DiskFull` with no half-written file left. ``announce``
        (default: the ``progress`` option): a line on stderr as each stage starts and ends
        (``[3/12] truncate: ...``). With the OpenAI explainer, one one-token request checks the
        server and the key before the first stage when an LLM stage is still to run
        (:meth:`ctxlookup.llm.Client.check`), so a wrong key or URL fails at once."""
        announce = self.opts.progress if announce is None else announce
        stages = STAGES if until is None else STAGES[: STAGES.index(until) + 1]
        with self.locked():
            self._reload_if_changed()
            self._check_checkpoints()
            todo = {s for s in stages if self.problem(s) is not None}
            if self.opts.explainer == "openai" and {"explain", "score"} & todo:
                if announce:
                    _say(f"checking the LLM server ({self.client.url}, model {self.opts.llm_model})")
                self.client.check()
            doing = "the manifest"
            try:
                for i, stage in enumerate(stages, 1):
                    tag = f"[{i}/{len(stages)}] {stage}"
                    why = self.problem(stage)
                    if why is None:
                        if announce:
                            _say(f"{tag}: complete (kept from the earlier run)")
                        continue
                    old = self.manifest["stages"].get(stage) or {}
                    if old.get("complete") and self.opts.progress:
                        print(f"replicate: redoing {stage}: {why}", file=sys.stderr)
                    if announce:
                        _say(f"{tag}: {_stage_title(stage, self.opts, self.protocol)}")
                    self._written, doing = {}, f"stage {stage}"
                    t0 = time.perf_counter()
                    with _Elapsed(stage, self.opts.progress and stage not in self._stages_with_bars()):
                        attrs = getattr(self, f"_stage_{stage}")() or {}
                    rec = dict(complete=True, wall_s=round(time.perf_counter() - t0, 3), attrs=attrs,
                               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               outputs={n: self._written[n] for n in OUTPUTS[stage]})
                    if announce:
                        _say(f"{' ' * len(tag)}  done in {rec['wall_s']:.1f} s")
                    figures = [f for f in attrs.get("figures", []) if isinstance(f, str)] if isinstance(attrs, dict) else []
                    if figures:
                        rec["files"] = {f: file_sha256(os.path.join(self.dir, f)) for f in figures}
                    if self._client is not None and hasattr(self._client, "usage"):
                        rec["llm_usage"] = _usage_dict(self._client)
                    if getattr(self._client, "cache_error", None):
                        rec["llm_cache_error"] = self._client.cache_error
                    if _fingerprint(old) != _fingerprint(json.loads(json.dumps(rec, default=_json_default))):
                        # the later stages used other inputs: they run again
                        for later in STAGES[STAGES.index(stage) + 1:]:
                            self.manifest["stages"].pop(later, None)
                    self.manifest["stages"][stage] = rec
                    doing = "the manifest"
                    self.save_manifest()
                if self._client is not None:
                    self.manifest["llm_usage"] = _usage_dict(self._client)
                    self.save_manifest()
            except OSError as e:
                if not _disk_full(e):
                    raise
                self._cleanup_incomplete()
                if isinstance(e, DiskFull):
                    raise
                raise _disk_full_error(self.dir, doing, e) from None
        return self.manifest

    def _stages_with_bars(self) -> set:
        """The stages that show a progress bar of their own (the others get :class:`_Elapsed`)."""
        own = {"scan", "truncate", "test_scan", "test_truncate", "evidence"}
        return own | ({"explain", "score"} if self.opts.explainer == "openai" else set())

    # ------------------------------------------------------------------ stages
    def _stage_neurons(self):
        from .neurons import default_layers, detect_glitch_tokens, next_token_neurons, random_neurons, token_counts

        m = self.model
        d_layers, d_top = default_layers(m)
        layers = self.opts.layers or d_layers
        top = self.opts.neurons_per_layer or d_top
        counts = token_counts(m, self.corpus("train"), token_cache=self.token_cache("train"))  # the prompts' corpus: glitch check and frequency direction
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

    def _scan(self, which: str, k: int, name: str, views: bool = False):
        """The scan of one corpus; with ``views``, each neuron's activation histogram and examples
        per activation quantile from the same pass (tables ``histograms`` and ``quantile_examples``,
        as :mod:`ctxlookup.neuroscope` makes them)."""
        from .scan import max_activating, max_activating_histograms

        fn = max_activating_histograms if views else max_activating
        res = fn(self.model, self._unique_neurons(), self.corpus(which), k=k, batch_tokens=self.opts.batch_tokens,
                 checkpoint=os.path.join(self.dir, f"{name}.ckpt.npz"), progress=self.opts.progress,
                 token_cache=self.token_cache(which), workers=self.opts.workers,
                 scheduler=self.opts.scheduler)  # Dask, when given
        ma, tables = res if views else (res, {})
        self.write(name, ma)
        for t, df in tables.items():
            self.write(t, df)
        return {name: {k2: v for k2, v in ma.attrs.items()}}

    def _stage_scan(self):
        counts = [self.protocol.scan_k, self.protocol.prompts_per_neuron] + list(self.opts.table3 or [])
        return self._scan("train", max(counts), "max_acts", views=True)

    def _stage_test_scan(self):
        # the authors kept 30 test documents and used the first n that survived truncation
        p = self.protocol
        k = max(p.scan_k, p.test_prompts_per_neuron) if p.count_after_drop else p.test_prompts_per_neuron
        return self._scan("test", k, "test_max_acts")

    def _truncate(self, src: str, name: str, which: str):
        from .truncate import truncate

        ma = self.read(src)
        # the final pass's head scores are the attribution of these prompts when it runs their tokens
        keep_scores = not self.protocol.retokenize
        tr = truncate(self.model, ma, self.corpus(which), keep=self.opts.keep, max_prompt_tokens=self.opts.max_prompt_tokens,
                      method=self.protocol.truncation, newlines=self.protocol.newlines, progress=self.opts.progress,
                      token_cache=self.token_cache(which), head_scores=keep_scores)
        scores = tr.attrs.pop("head_scores", None)
        attrs = dict(tr.attrs)
        if name == "test_prompts":
            tr = self._first_prompts(tr, self.protocol.test_prompts_per_neuron)
            attrs["kept_per_neuron"] = self.protocol.test_prompts_per_neuron
        self.write(name, tr)
        if scores is not None:
            self._head_scores[name] = scores[tr.index.to_numpy()]
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
            prompts = self.read(src)
            # protocol ctxlookup: truncation already ran these very inputs and kept their head scores
            scores = self._head_scores.get(src) if not p.retokenize else None
            if scores is not None and len(scores) != len(prompts):
                scores = None
            att = head_attribution(self.model, prompts, rule=p.rule, active_rule=p.active_rule,
                                   retokenize=p.retokenize, head_scores=scores)
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
        from .selection import select_heads

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
        from .score import score_explanations

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
        from .ablation import ablate_heads
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
        from .stats import ablation_plot, score_histogram, score_statistics, subset_counts

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
        figs = score_histogram(model_E, rand_E, path_base=os.path.join(self.dir, "figure5"),
                       title=f"Head explanation scores ({self.opts.model})", style=self.protocol.figure_style)
        comp = self.read("ablation_by_head")
        comp.attrs["ks"] = self.manifest["stages"]["ablation"]["attrs"]["ablation_by_head"]["ks"]
        # the protocol's figure style: "paper", or "overlay" (overlaid histograms, for the ablation plot "histogram")
        figs += ablation_plot(comp, path_base=os.path.join(self.dir, "figure6"),
                              style="paper" if self.protocol.figure_style == "paper" else "histogram")
        return {"figures": [os.path.basename(p) for p in figs],
                "table4": {"histogram": {int(k): int(v) for k, v in t4.attrs["histogram"].items()}}}

    def _stage_evidence(self):
        """The an-neuron post's check on every selected neuron (not part of the paper's method): on
        the test corpus, does the neuron's activation predict its token being the model's top
        prediction (:func:`ctxlookup.next_token_evidence`)?"""
        from .evidence import EVIDENCE_COLUMNS, next_token_evidence
        from .stats import rising_comparison

        neurons = self._unique_neurons()
        n, docs, binning = int(self.opts.evidence_docs), 0, {}
        if n == 0 or not len(neurons):
            ev = pd.DataFrame(columns=EVIDENCE_COLUMNS + ["group"])
        else:
            ev = next_token_evidence(self.model, neurons, self.corpus("test"), max_docs=n,
                                     batch_tokens=self.opts.batch_tokens, progress=self.opts.progress,
                                     token_cache=self.token_cache("test"))
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

    # ------------------------------------------------------------------ the report's data
    def _stage_examples(self):
        """What the report shows and no other stage stores: every scanned document's tokens around
        its maximum, with the neuron's activation on each (:func:`ctxlookup.windows.example_windows`;
        ``examples`` and ``test_examples``), the tokens around each histogram band's samples
        (``quantile_windows``), and each neuron's most and least congruent tokens
        (:func:`ctxlookup.neurons.top_congruent`; ``top_tokens``)."""
        from .neurons import top_congruent
        from .windows import QUANT_AFTER, QUANT_BEFORE, example_windows, quantile_rows

        out = {}
        for which, src, prompts, name in (("train", "max_acts", "prompts", "examples"),
                                          ("test", "test_max_acts", "test_prompts", "test_examples")):
            ma, pr = self.read(src), self.read(prompts)
            docs = self.corpus(which).get(ma.doc_id.unique())
            win = example_windows(self.model, ma, pr, texts={d: docs[d].text for d in docs},
                                  prepend_bos=ma.attrs.get("prepend_bos", True), max_tokens=ma.attrs.get("max_tokens"),
                                  prompt_bos=pr.attrs.get("prepend_bos", True), batch_tokens=self.opts.batch_tokens)
            self.write(name, win)
            out[name] = dict(win.attrs)
        # the tokens around each histogram band's sampled positions (the scan stored where they are)
        q = quantile_rows(self.read("quantile_examples"))
        docs = self.corpus("train").get(q.doc_id.unique()) if len(q) else {}
        scan = self.read("max_acts").attrs
        win = example_windows(self.model, q, texts={d: docs[d].text for d in docs}, before=QUANT_BEFORE,
                              after=QUANT_AFTER, max_before=QUANT_BEFORE, prepend_bos=scan.get("prepend_bos", True),
                              max_tokens=scan.get("max_tokens"), batch_tokens=self.opts.batch_tokens)
        self.write("quantile_windows", win)
        out["quantile_windows"] = dict(win.attrs)
        top = top_congruent(self.model, self._unique_neurons()[["layer", "neuron"]].values,
                            direction=self.opts.direction, excluded=self.read("excluded_tokens").token_id.to_numpy())
        self.write("top_tokens", top)
        out["top_tokens"] = dict(top.attrs)
        return out


def _stage_title(stage: str, o: Options, p) -> str:
    """What a stage does, in the words announced as it starts (``p``: the run's protocol rules)."""
    scan_k = max([p.scan_k, p.prompts_per_neuron] + list(o.table3 or []))
    test_k = max(p.scan_k, p.test_prompts_per_neuron) if p.count_after_drop else p.test_prompts_per_neuron
    search = "the authors' binary search" if p.truncation == "binary" else "the shortest suffix"
    upper = "" if p.high is None or p.high >= 1 else f"-{p.high:.0%}"
    return {
        "neurons": f"next-token neurons per layer, and the random baseline (protocol {p.name})",
        "scan": f"the top {scan_k} documents of every neuron on the corpus",
        "truncate": f"the prompts: a suffix keeping {o.keep:.0%} of each maximum ({search})",
        "test_scan": f"the top {test_k} documents of every neuron on the test corpus",
        "test_truncate": f"the test prompts ({p.test_prompts_per_neuron} per neuron)",
        "attribution": f"head attribution on the prompts and the test prompts (active: {p.active_rule})",
        "select": f"heads active on {'more than ' if p.low_strict else ''}{p.low:.0%}{upper} of a neuron's prompts",
        "explain": f"an explanation per selected head ({o.explainer} explainer, {p.template_version} prompts)",
        "score": "the explanations scored on the test prompts",
        "ablation": f"the {o.ablation}-ablation check on the {p.ablation_prompts} prompts",
        "stats": "statistics, Tables 3 and 4, Figures 5 and 6",
        "evidence": f"the an-neuron check on {min(o.evidence_docs, o.max_docs or o.evidence_docs)} test documents"
                    if o.evidence_docs else
                    "the an-neuron check (skipped: --evidence-docs 0)",
        "examples": "each scanned document's tokens around its maximum, with the neuron's activation, for the report",
    }[stage]


class _Elapsed:
    """A tqdm line with a stage's elapsed time, ticking every half second on a thread, for the
    stages that have no progress bar of their own; gone when the stage ends."""

    def __init__(self, stage: str, enabled: bool):
        self.stage, self.enabled, self.bar = stage, enabled, None

    def __enter__(self):
        if self.enabled and sys.stderr.isatty():  # in a log file it would be a line every half second
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover
                return self
            import threading

            self.bar = tqdm(total=None, desc=self.stage, bar_format="{desc}: {elapsed} elapsed", leave=False)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._tick, name=f"ctxlookup-{self.stage}-elapsed", daemon=True)
            self.thread.start()
        return self

    def _tick(self):
        while not self.stop.wait(0.5):
            self.bar.refresh()

    def __exit__(self, *exc):
        if self.bar is not None:
            self.stop.set()
            self.thread.join()
            self.bar.close()
        return False


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


def repair_command(manifest: dict, directory: str) -> str:
    """The ``ctxlookup replicate`` command that resumes the run in ``directory`` (its options as the
    manifest records them, the defaults left out): it redoes the stages whose files are damaged."""
    import shlex

    opts = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    defaults = dataclasses.asdict(Options())
    words = ["ctxlookup", "replicate", "--model", str(opts.get("model", "demo")), "--out", directory]
    for k, v in opts.items():
        if k in ("model", "out", "progress") or k not in defaults or v == defaults[k]:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            words.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list) or v is None:
            words += [flag, ",".join(map(str, v or []))]
        else:
            words += [flag, str(v)]
    return " ".join(shlex.quote(w) for w in words)


def _fingerprint(rec: dict):
    """What the later stages depend on in a stage record: its outputs' hashes and its attrs."""
    outs = rec.get("outputs") or {}
    return ({n: {e: (o.get(e) or {}).get("sha256") for e in ("parquet", "csv")} for n, o in outs.items()},
            rec.get("attrs"), rec.get("files"))


def _usage_dict(client) -> dict:
    u = getattr(client, "usage", None)
    if isinstance(u, dict):
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in u.items()}
    return dict(u or {})


def _run_errors():
    from .llm import CacheError

    return (RunLocked, RunMismatch, RunFileError, DiskFull, CacheError)


#: the errors that say what is wrong with a run directory in one line (the CLI prints them so, exit 2)
RUN_ERRORS = _run_errors()


def replicate(model: str = "demo", out: Optional[str] = None, until: Optional[str] = None, **options) -> Run:
    """Run (or resume) a replication; returns the :class:`Run` (tables via ``run.read(name)``).

    Keyword options are :class:`Options` fields; ``until`` stops after that stage. ``out``: the run
    directory (default :func:`default_out`: ``runs/<model>-<hash of the options>``). Raises
    :class:`RunLocked` when another run is working on it, :class:`RunMismatch` when it holds another
    experiment, :class:`RunFileError` for a damaged manifest, :class:`DiskFull` for a full disk.
    """
    opts = Options(model=model, out=out, **options)
    if until is not None and until not in STAGES:
        raise ValueError(f"unknown stage '{until}'; stages: {', '.join(STAGES)}")
    run = Run(opts)
    run.run(until)
    return run
