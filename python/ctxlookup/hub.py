"""Hugging Face Hub downloads into the Hugging Face cache, offline first.

:func:`download` fetches what ctxlookup needs from a model repository (``config.json``, the
safetensors weights, single-file or sharded with their index, and the tokenizer files that exist)
into the cache layout of ``huggingface_hub``, byte for byte::

    <cache>/models--org--name/blobs/<etag>                 the files (LFS files: etag = sha256)
    <cache>/models--org--name/snapshots/<commit>/<file>    relative symlinks to the blobs
    <cache>/models--org--name/refs/<revision>              the commit a branch or tag pointed to
    <cache>/models--org--name/.no_exist/<commit>/<file>    files known to be absent

so a cache filled by ``transformers`` is used as it is, and what ctxlookup downloads is used by
``transformers``. The cache is ``cache_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``. Offline first: when the cache already holds every file for the
revision, no network call is made at all. ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``)
never touches the network. ``HF_ENDPOINT`` names a mirror; ``HF_TOKEN`` (or the token saved by
``huggingface-cli login``) opens gated and private repositories.

The transfers run in the C core over libcurl (``_core._hub_fetch``) with the GIL released:
several files at once, resumed with an HTTP Range after an interruption (a dropped connection,
Ctrl-C, a killed process: the bytes already written to ``blobs/<etag>.incomplete`` are kept),
size and sha256 checked against the Hub's headers, renamed into ``blobs/`` only when complete
and verified, retried with backoff on 429, 5xx, resets and stalls. Ctrl-C stops cleanly; the
next call resumes.

TransformerLens's model names are accepted as aliases (:data:`ALIASES`): ``gpt2``,
``gpt2-small``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``pythia-70m`` ... ``pythia-12b``
and their ``-deduped`` forms.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

from . import _core

__all__ = [
    "download", "resolve_name", "hub_cache_dir", "cached_snapshot", "cached_revisions", "ALIASES",
    "HubError", "RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "EntryNotFoundError",
    "OfflineError", "DownloadError", "HashMismatchError", "DiskFullError",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_PYTORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# ---------------------------------------------------------------------------------------------- names

def _aliases() -> Dict[str, str]:
    a = {"gpt2": "openai-community/gpt2", "gpt2-small": "openai-community/gpt2",
         "gpt2-medium": "openai-community/gpt2-medium", "gpt2-large": "openai-community/gpt2-large",
         "gpt2-xl": "openai-community/gpt2-xl", "distilgpt2": "distilbert/distilgpt2",
         "pythia": "EleutherAI/pythia-70m", "pythia-v0": "EleutherAI/pythia-70m-v0"}
    # Pythia: the current names, and the sizes the suite was first published under (TransformerLens keeps both)
    sizes = [("14m", None), ("31m", None), ("70m", "19m"), ("160m", "125m"), ("410m", "350m"), ("1b", "800m"),
             ("1.4b", "1.3b"), ("2.8b", "2.7b"), ("6.9b", "6.7b"), ("12b", "13b")]
    for size, old in sizes:
        for suffix in ("",) if size in ("14m", "31m") else ("", "-deduped", "-v0", "-deduped-v0"):
            repo = f"EleutherAI/pythia-{size}{suffix}"
            a[f"pythia-{size}{suffix}"] = repo
            if old:
                a[f"pythia-{old}{suffix}"] = repo
                a[f"EleutherAI/pythia-{old}{suffix}"] = repo
    return a


#: TransformerLens model name -> Hugging Face repository id.
ALIASES: Dict[str, str] = _aliases()

# repositories that were renamed on the Hub: their old ids' cache folders (filled by
# `from_pretrained("gpt2")` in transformers) hold the same files
_LEGACY_IDS = {
    "openai-community/gpt2": ("gpt2",), "openai-community/gpt2-medium": ("gpt2-medium",),
    "openai-community/gpt2-large": ("gpt2-large",), "openai-community/gpt2-xl": ("gpt2-xl",),
    "distilbert/distilgpt2": ("distilgpt2",),
}


def resolve_name(name: str) -> str:
    """A TransformerLens alias or a Hub repository id -> the repository id (``gpt2-small`` ->
    ``openai-community/gpt2``). ValueError for a name that cannot be a repository id."""
    name = os.fspath(name).strip()
    repo = ALIASES.get(name, ALIASES.get(name.lower(), name))
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo or len(repo) > 96:
        raise ValueError(f"'{name}' is neither a local folder nor a Hugging Face repository id ('org/name', e.g. "
                         f"'openai-community/gpt2') nor a known alias (e.g. 'gpt2-small', 'pythia-70m'; see "
                         f"ctxlookup.hub.ALIASES)")
    return repo


# ---------------------------------------------------------------------------------------------- errors

class HubError(OSError):
    """A Hugging Face Hub download failed; the message says what to do."""


class RepositoryNotFoundError(HubError, FileNotFoundError):
    """The repository does not exist, or is private and the token (``HF_TOKEN``) gives no access."""


class GatedRepoError(HubError, PermissionError):
    """The repository is gated: accept its conditions on the Hub and set ``HF_TOKEN``."""


class RevisionNotFoundError(HubError, FileNotFoundError):
    """The branch, tag or commit does not exist in the repository."""


class EntryNotFoundError(HubError, FileNotFoundError):
    """A required file is not in the repository at this revision."""


class OfflineError(HubError, ConnectionError):
    """The Hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) and the cache lacks what is needed."""


class DownloadError(HubError):
    """A transfer failed after its retries; what was received is kept and the next call resumes."""


class HashMismatchError(DownloadError):
    """A downloaded file does not have the size or sha256 the Hub announced; nothing was cached."""


class DiskFullError(DownloadError):
    """The disk holding the cache is full."""


# ---------------------------------------------------------------------------------------------- environment

def _true(v: Optional[str]) -> bool:
    return (v or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _expand(p: str) -> str:
    return os.path.expandvars(os.path.expanduser(p))


def _hf_home() -> str:
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                           "huggingface")
    return _expand(os.environ.get("HF_HOME") or default)


def hub_cache_dir(cache_dir: Union[str, os.PathLike, None] = None) -> str:
    """The cache folder, as ``huggingface_hub`` chooses it: ``cache_dir``, else ``HF_HUB_CACHE``,
    else ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub`` (``HF_HOME`` defaults to
    ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``)."""
    if cache_dir is not None:
        return _expand(os.fspath(cache_dir))
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return _expand(env) if env else os.path.join(_hf_home(), "hub")


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _offline() -> bool:
    return _true(os.environ.get("HF_HUB_OFFLINE")) or _true(os.environ.get("TRANSFORMERS_OFFLINE"))


def _env_float(name: str, default: float) -> float:
    try:
        v = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return v if v > 0 else default


def _token(token: Union[str, bool, None]) -> Optional[str]:
    """token=str: that token; False: none; None: HF_TOKEN, else the saved token (huggingface-cli login)."""
    if token is False:
        return None
    if isinstance(token, str):
        return token.strip() or None
    if _true(os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN")):
        return None
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if env and env.strip():
        return env.strip()
    path = _expand(os.environ.get("HF_TOKEN_PATH") or os.path.join(_hf_home(), "token"))
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- cache layout

def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _normalize_etag(etag: Optional[str]) -> Optional[str]:
    # huggingface_hub's normalisation, exactly: W/"x" and "x" -> x
    if etag is None:
        return None
    return etag.lstrip("W/").strip('"')


def _safe_relpath(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"'{name}' is not a valid file name inside a repository")
    return os.path.join(*parts)


def _read_ref(storage: str, revision: str) -> Optional[str]:
    try:
        with open(os.path.join(storage, "refs", revision), encoding="utf-8") as f:
            commit = f.read().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def _write_ref(storage: str, revision: str, commit: str) -> None:
    if revision == commit:
        return
    path = os.path.join(storage, "refs", revision)
    if _read_ref(storage, revision) == commit:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(commit)
    os.replace(tmp, path)


def _tag_cache(cache: str) -> None:
    # the Cache Directory Tagging Standard file huggingface_hub writes, so backup tools skip the cache
    path = os.path.join(cache, "CACHEDIR.TAG")
    if not os.path.exists(path):
        with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as f:
            f.write("Signature: 8a477f597d28d172789f06886806bc55\n"
                    "# This file is a cache directory tag created by huggingface_hub.\n"
                    "# For information about cache directory tags, see:\n#\thttps://bford.info/cachedir/\n")


def _mark_absent(storage: str, commit: str, name: str) -> None:
    path = os.path.join(storage, ".no_exist", commit, _safe_relpath(name))
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "a").close()


def _is_absent(storage: str, commit: str, name: str) -> bool:
    return os.path.isfile(os.path.join(storage, ".no_exist", commit, _safe_relpath(name)))


def _link(blob: str, pointer: str) -> None:
    """snapshots/<commit>/<file> -> ../../blobs/<etag>, a relative symlink as huggingface_hub makes."""
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(pointer)
    try:
        os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), pointer)
    except FileExistsError:
        if os.path.realpath(pointer) != os.path.realpath(blob):
            raise
    except OSError:  # no symlinks on this filesystem: a copy, as huggingface_hub does
        shutil.copyfile(blob, pointer)


def _storages(cache: str, repo_id: str) -> List[str]:
    return [os.path.join(cache, _repo_folder(r)) for r in (repo_id,) + _LEGACY_IDS.get(repo_id, ())]


def _snapshot_state(storage: str, commit: str, files: Optional[Sequence[str]]) -> Tuple[bool, bool]:
    """(usable, complete) for snapshots/<commit>: usable = config and weights are there; complete =
    also the tokenizer, or every tokenizer file is known to be absent (default file set); with
    explicit ``files``, both mean every one of them is there."""
    snap = os.path.join(storage, "snapshots", commit)

    def has(name):
        return os.path.isfile(os.path.join(snap, _safe_relpath(name)))

    if not os.path.isdir(snap):
        return False, False
    if files is not None:
        ok = all(has(f) for f in files)
        return ok, ok
    if not has(CONFIG):
        return False, False
    if has(WEIGHTS):
        usable = True
    elif has(WEIGHTS_INDEX):
        try:
            shards = _shards(os.path.join(snap, WEIGHTS_INDEX))
        except (OSError, ValueError):
            return False, False
        usable = all(has(s) for s in shards)
    else:
        usable = False
    tok = has("tokenizer.json") or (has("vocab.json") and has("merges.txt"))
    complete = usable and (tok or all(has(f) or _is_absent(storage, commit, f) for f in TOKENIZER_FILES))
    return usable, complete


def cached_snapshot(repo_id: str, revision: str = "main", cache_dir=None, files: Optional[Sequence[str]] = None,
                    usable: bool = False) -> Optional[str]:
    """The cached snapshot folder of ``repo_id`` at ``revision`` if it holds everything
    :func:`download` would fetch (``usable=True``: config and weights suffice), else None. Reads
    ``refs/<revision>`` for a branch or tag; makes no network call."""
    repo_id = resolve_name(repo_id)
    cache = hub_cache_dir(cache_dir)
    for storage in _storages(cache, repo_id):
        commit = revision if _COMMIT.match(revision) else _read_ref(storage, revision)
        if not commit:
            continue
        u, c = _snapshot_state(storage, commit, files)
        if c or (usable and u):
            return os.path.join(storage, "snapshots", commit)
    return None


def cached_revisions(repo_id: str, cache_dir=None) -> Dict[str, List[str]]:
    """What the cache holds for a repository: ``{"refs": ["main -> 1a2b3c4", ...], "snapshots":
    ["1a2b3c4...: config.json, model.safetensors", ...]}`` (for error messages)."""
    repo_id = resolve_name(repo_id)
    out: Dict[str, List[str]] = {"refs": [], "snapshots": []}
    for storage in _storages(hub_cache_dir(cache_dir), repo_id):
        refs = os.path.join(storage, "refs")
        for root, _, names in os.walk(refs):
            for n in sorted(names):
                rev = os.path.relpath(os.path.join(root, n), refs).replace(os.sep, "/")
                out["refs"].append(f"{rev} -> {(_read_ref(storage, rev) or '?')[:12]}")
        snaps = os.path.join(storage, "snapshots")
        for commit in sorted(os.listdir(snaps)) if os.path.isdir(snaps) else []:
            names = sorted(os.path.relpath(os.path.join(r, n), os.path.join(snaps, commit))
                           for r, _, ns in os.walk(os.path.join(snaps, commit)) for n in ns)
            out["snapshots"].append(f"{commit[:12]}: {', '.join(names) or '(empty)'}")
    return out


def _describe_cache(repo_id: str, cache: str) -> str:
    c = cached_revisions(repo_id, cache)
    if not c["snapshots"]:
        return f"Nothing of {repo_id} is in the cache ({cache})."
    return (f"The cache ({cache}) holds for {repo_id}: refs [{'; '.join(c['refs']) or 'none'}], snapshots "
            f"[{'; '.join(c['snapshots'])}].")


def _shards(index_path: str) -> List[str]:
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise ValueError(f"{index_path}: no weight_map of tensor name -> shard file")
    shards = sorted(set(wm.values()))
    for s in shards:
        _safe_relpath(s)
    return shards


# ---------------------------------------------------------------------------------------------- transfers

class _Fetcher:
    """One download call's connection settings; runs batches through the C core."""

    def __init__(self, repo_id, endpoint, token, *, max_workers, timeout, stall_timeout, max_retries, backoff,
                 progress):
        self.repo_id, self.endpoint, self.token = repo_id, endpoint, token
        self.headers = (f"Authorization: Bearer {token}",) if token else ()
        self.progress = progress
        self.opts = dict(concurrency=max(1, int(max_workers)), connect_timeout=float(timeout),
                         head_timeout=float(timeout), stall_timeout=float(stall_timeout),
                         max_retries=int(max_retries), backoff_base=float(backoff), backoff_max=30 * float(backoff))

    def url(self, revision: str, name: str) -> str:
        return f"{self.endpoint}/{self.repo_id}/resolve/{quote(revision, safe='')}/{quote(name)}"

    def head(self, revision: str, names: Sequence[str]) -> Dict[str, dict]:
        reqs = [("HEAD", self.url(revision, n), True, None, None, None, None) for n in names]
        return dict(zip(names, _core._hub_fetch(reqs, self.headers, **self.opts)))

    def get(self, reqs: list, total: int, initial: int, label: Optional[str]) -> list:
        bar = _ProgressBar(total, initial, label, len(reqs)) if self.progress and reqs and label else None
        try:
            return _core._hub_fetch(reqs, self.headers, progress=bar.update if bar else None, **self.opts)
        finally:
            if bar:
                bar.close()


class _ProgressBar:
    """tqdm (bytes, bytes/s) when installed, else a plain line on a terminal's stderr."""

    def __init__(self, total: int, initial: int, label: str, n_files: int):
        self.initial, self.n_files, self.label = initial, n_files, label
        self.t0, self.last = time.monotonic(), 0.0
        self.done = 0
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=label, dynamic_ncols=True, smoothing=0.1)
            self.bar.set_postfix_str(f"0/{n_files} files", refresh=False)
        except ImportError:
            self.bar = None
            self.total = total
            self.tty = sys.stderr.isatty()

    def update(self, received: int, finished: int) -> None:
        if self.bar is not None:
            delta = self.initial + received - self.bar.n
            if finished != self.done:
                self.done = finished
                self.bar.set_postfix_str(f"{finished}/{self.n_files} files", refresh=False)
            if delta:
                self.bar.update(delta)
            return
        now = time.monotonic()
        if self.tty and (now - self.last > 0.5 or finished == self.n_files):
            self.last = now
            rate = received / max(now - self.t0, 1e-9)
            sys.stderr.write(f"\r{self.label}: {(self.initial + received) / 2**20:.1f}/{self.total / 2**20:.1f} MiB, "
                             f"{rate / 2**20:.1f} MiB/s, {finished}/{self.n_files} files")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.tty:
            sys.stderr.write("\n")


@contextlib.contextmanager
def _locks(paths: Iterable[str]):
    """Exclusive flock on each path (huggingface_hub's `.locks/<repo>/<etag>.lock`, so the two never
    write the same blob at once), taken in sorted order."""
    import fcntl

    fds = []
    try:
        for p in sorted(set(paths)):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o664)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                sys.stderr.write(f"ctxlookup: waiting for another process that is downloading the same file "
                                 f"(lock {p})\n")
                fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait
        yield
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# ---------------------------------------------------------------------------------------------- errors from responses

def _http_error(repo_id: str, revision: str, name: str, r: dict, token: Optional[str], endpoint: str,
                cache: str) -> HubError:
    status, code, msg = r["status"], r.get("error_code"), r.get("error_message")
    where = f"{endpoint}/{repo_id}"
    if _network_failure(r):
        return DownloadError(
            f"Could not get {name} of {repo_id} from {endpoint} after {r['attempts']} attempts: {r['error']}. Run "
            f"again (what was downloaded is kept); if this machine is offline, set HF_HUB_OFFLINE=1 to use only the "
            f"cache. {_describe_cache(repo_id, cache)}")
    if code == "GatedRepo":
        return GatedRepoError(
            f"{repo_id} is a gated repository: open {where} while logged in and accept its conditions, then set "
            f"HF_TOKEN to an access token of that account (https://huggingface.co/settings/tokens) "
            f"({'the token in use has no access yet' if token else 'no token is set'}).")
    if code == "RepoNotFound" or status == 401 or (status == 404 and code is None and name == CONFIG and
                                                   not r.get("commit")):
        hint = ("The token in use (HF_TOKEN) was not accepted or has no access to it." if token else
                "If it is private, set HF_TOKEN to an access token with read access (https://huggingface.co/settings/tokens).")
        return RepositoryNotFoundError(
            f"Repository '{repo_id}' was not found on {endpoint}: check the name (an 'org/name' id such as "
            f"'openai-community/gpt2', or an alias such as 'gpt2-small' or 'pythia-70m'). {hint}")
    if code == "RevisionNotFound":
        return RevisionNotFoundError(
            f"Revision '{revision}' does not exist in {repo_id}: pass revision= a branch, tag or commit hash of the "
            f"repository (default 'main'; see {where}/tree/main).")
    if code == "EntryNotFound" or status == 404:
        if name == CONFIG:
            return EntryNotFoundError(
                f"{repo_id} has no config.json at revision '{revision}': it is not a transformers checkpoint that "
                f"ctxlookup can load (GPT-2 or GPT-NeoX / Pythia).")
        return EntryNotFoundError(f"'{name}' does not exist in {repo_id} at revision '{revision}'.")
    if status == 429 or status >= 500:
        return DownloadError(
            f"The Hub at {endpoint} answered HTTP {status} for {name} of {repo_id} after {r['attempts']} attempts "
            f"(overloaded or down): try again later. {_describe_cache(repo_id, cache)}")
    return DownloadError(f"HTTP {status} for {name} of {repo_id} from {r.get('url') or endpoint}"
                         f"{': ' + msg if msg else ''}.")


def _offline_error(repo_id: str, revision: str, endpoint: str, cache: str, why: str) -> OfflineError:
    return OfflineError(
        f"Could not reach {endpoint} to get {repo_id} (revision '{revision}'): {why}. {_describe_cache(repo_id, cache)} "
        f"If this machine is offline, download the model where there is a network (the cache folder can be copied) "
        f"and set HF_HUB_OFFLINE=1 to use only the cache; behind a proxy set HTTPS_PROXY; for a mirror set HF_ENDPOINT.")


def _network_failure(r: dict) -> bool:
    return r["failure"] in ("network", "timeout")


# ---------------------------------------------------------------------------------------------- download

def download(repo_id: str, revision: str = "main", cache_dir: Union[str, os.PathLike, None] = None,
             files: Optional[Sequence[str]] = None, *, token: Union[str, bool, None] = None,
             local_files_only: bool = False, refresh: bool = False, progress: bool = True, max_workers: int = 8,
             timeout: Optional[float] = None, stall_timeout: Optional[float] = None, max_retries: int = 5,
             backoff: float = 1.0) -> str:
    """Download a model repository's files into the Hugging Face cache; returns the snapshot folder.

    ``repo_id``: a Hub repository id (``"EleutherAI/pythia-70m"``) or an alias (:data:`ALIASES`).
    ``revision``: a branch, tag or commit hash. ``files``: the files to fetch (all required); by
    default ``config.json``, ``model.safetensors`` or ``model.safetensors.index.json`` and the shards
    it names, and whichever of ``tokenizer.json``, ``vocab.json``, ``merges.txt``,
    ``tokenizer_config.json``, ``special_tokens_map.json`` exist.

    Offline first: if the cache already holds every file for ``revision`` (a branch or tag resolved
    through ``refs/``), the folder is returned with no network call; ``refresh=True`` asks the Hub
    for the branch's latest commit anyway. ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``: the
    cache only (config and weights must be there). If the Hub cannot be reached and the cache has
    config and weights for the revision, they are used with a warning.

    ``token``: a Hub access token; default ``HF_TOKEN``, else the saved login; ``False`` sends none.
    ``progress``: a tqdm bar (bytes, bytes/s). ``max_workers`` files at once. ``timeout``: seconds
    to connect and for metadata requests (default ``HF_HUB_ETAG_TIMEOUT``, else 10);
    ``stall_timeout``: an attempt that receives nothing for this long is retried (default
    ``HF_HUB_DOWNLOAD_TIMEOUT``, else 30); ``max_retries`` and ``backoff`` (first wait, doubling)
    for 429 / 5xx / dropped connections / stalls (a retry after bytes arrived resumes from the byte
    offset and does not count against ``max_retries``).

    Raises :class:`RepositoryNotFoundError`, :class:`GatedRepoError`, :class:`RevisionNotFoundError`,
    :class:`EntryNotFoundError` (all FileNotFoundError or PermissionError), :class:`OfflineError`,
    :class:`DownloadError`, :class:`HashMismatchError`, :class:`DiskFullError`, each saying what to
    do, and KeyboardInterrupt on Ctrl-C (the next call resumes).
    """
    repo_id = resolve_name(repo_id)
    if not isinstance(revision, str) or not revision or ".." in revision or revision.startswith("/"):
        raise ValueError(f"revision must be a branch, tag or commit hash, got {revision!r}")
    if files is not None:
        files = list(dict.fromkeys(files))
        for f in files:
            _safe_relpath(f)
        if not files:
            raise ValueError("files is empty")
    cache = hub_cache_dir(cache_dir)
    endpoint = _endpoint()
    found = None if refresh else cached_snapshot(repo_id, revision, cache, files)
    if found:
        return found
    if local_files_only or _offline():
        found = cached_snapshot(repo_id, revision, cache, files, usable=True)
        if found:
            return found
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        raise OfflineError(
            f"{repo_id} (revision '{revision}') is not fully in the cache and {why}, so nothing is downloaded. "
            f"{_describe_cache(repo_id, cache)} Unset HF_HUB_OFFLINE (and pass local_files_only=False) to download "
            f"it, or pass the cache folder that holds it (cache_dir=, HF_HUB_CACHE or HF_HOME).")

    tok = _token(token)
    if timeout is None:
        timeout = _env_float("HF_HUB_ETAG_TIMEOUT", 10.0)
    if stall_timeout is None:
        stall_timeout = _env_float("HF_HUB_DOWNLOAD_TIMEOUT", 30.0)
    fetcher = _Fetcher(repo_id, endpoint, tok, max_workers=max_workers, timeout=timeout, stall_timeout=stall_timeout,
                       max_retries=max_retries, backoff=backoff, progress=progress)
    # a renamed repository's old cache folder (transformers' `from_pretrained("gpt2")` fills models--gpt2) is
    # completed in place rather than downloaded again under the new id
    storage = next((s for s in _storages(cache, repo_id) if os.path.isdir(os.path.join(s, "snapshots"))),
                   os.path.join(cache, _repo_folder(repo_id)))
    first = files[0] if files is not None else CONFIG

    # 1. the revision's commit, from the first file's metadata
    r = fetcher.head(revision, [first])[first]
    if not r["ok"]:
        if _network_failure(r) or r["status"] == 429 or r["status"] >= 500:
            fallback = cached_snapshot(repo_id, revision, cache, files, usable=True)
            why = r["error"] or f"HTTP {r['status']}"
            if fallback:
                warnings.warn(f"ctxlookup: could not reach {endpoint} ({why}); using the cached {fallback}",
                              RuntimeWarning, stacklevel=2)
                return fallback
            if _network_failure(r):
                raise _offline_error(repo_id, revision, endpoint, cache, why)
        raise _http_error(repo_id, revision, first, r, tok, endpoint, cache)
    commit = r["commit"]
    if not commit or not _COMMIT.match(commit):
        raise HubError(f"{endpoint} answered without an X-Repo-Commit header, so it does not look like a Hugging Face "
                       f"Hub: check HF_ENDPOINT (and any proxy).")
    os.makedirs(storage, exist_ok=True)
    _tag_cache(cache)
    _write_ref(storage, revision, commit)

    # 2. which files exist at that commit, and their metadata (HEADs in parallel)
    meta: Dict[str, dict] = {first: r}
    if files is not None:
        wanted, optional = list(files), set()
    else:
        wanted, optional = [CONFIG, WEIGHTS, WEIGHTS_INDEX, *TOKENIZER_FILES], {WEIGHTS, WEIGHTS_INDEX, *TOKENIZER_FILES}
    rest = [n for n in wanted if n not in meta and not (n in optional and _is_absent(storage, commit, n))]
    meta.update(fetcher.head(commit, rest))
    present = []
    for n in wanted:
        m = meta.get(n)
        if m is None:
            continue
        if m["ok"]:
            present.append(n)
        elif n in optional and m["status"] == 404 and m.get("error_code") in (None, "EntryNotFound"):
            _mark_absent(storage, commit, n)
        else:
            raise _http_error(repo_id, commit, n, m, tok, endpoint, cache)
    if files is None:
        if WEIGHTS in present and WEIGHTS_INDEX in present:
            present.remove(WEIGHTS_INDEX)
        if WEIGHTS not in present and WEIGHTS_INDEX not in present:
            pt = fetcher.head(commit, list(_PYTORCH_WEIGHTS))
            if any(m["ok"] for m in pt.values()):
                raise EntryNotFoundError(
                    f"{repo_id} (revision '{revision}') has its weights only as PyTorch pickles (pytorch_model.bin); "
                    f"ctxlookup reads safetensors only. Convert once with transformers: "
                    f"AutoModelForCausalLM.from_pretrained('{repo_id}').save_pretrained(folder, "
                    f"safe_serialization=True), then pass that folder; or use a revision that has model.safetensors "
                    f"(e.g. the 'refs/pr/N' conversion branch the Hub's safetensors bot opens).")
            raise EntryNotFoundError(f"{repo_id} (revision '{revision}') has no model.safetensors nor "
                                     f"model.safetensors.index.json: there are no weights ctxlookup can read.")

    # 3. the files: the index first (it names the shards), then everything else at once
    label = repo_id.split("/")[-1]
    if files is None and WEIGHTS_INDEX in present:
        _fetch_files(fetcher, storage, commit, [WEIGHTS_INDEX], meta, cache, None)
        present.remove(WEIGHTS_INDEX)
        index_path = os.path.join(storage, "snapshots", commit, WEIGHTS_INDEX)
        try:
            shards = _shards(index_path)
        except ValueError as e:
            raise HubError(f"{repo_id}: {WEIGHTS_INDEX} is malformed ({e})") from None
        new = [s for s in shards if s not in meta]
        meta.update(fetcher.head(commit, new))
        for s in shards:
            if not meta[s]["ok"]:
                raise _http_error(repo_id, commit, s, meta[s], tok, endpoint, cache)
        present += shards
    _fetch_files(fetcher, storage, commit, present, meta, cache, label)
    return os.path.join(storage, "snapshots", commit)


def _fetch_files(fetcher: _Fetcher, storage: str, commit: str, names: Sequence[str], meta: Dict[str, dict],
                 cache: str, label: Optional[str]) -> None:
    """Bring each named file into snapshots/<commit>/, downloading the blobs not yet cached (with a
    progress bar named ``label``; None: no bar)."""
    snap = os.path.join(storage, "snapshots", commit)
    blobs_dir = os.path.join(storage, "blobs")
    locks_dir = os.path.join(cache, ".locks", os.path.basename(storage))
    todo: Dict[str, dict] = {}  # blob path -> what to fetch
    pointers: List[Tuple[str, str]] = []
    for n in names:
        m = meta[n]
        etag = _normalize_etag(m.get("linked_etag") or m.get("etag"))
        if not etag or "/" in etag or etag in (".", ".."):
            raise HubError(f"{fetcher.endpoint} sent no usable ETag for {n} of {fetcher.repo_id}; it does not look like "
                           f"a Hugging Face Hub (check HF_ENDPOINT).")
        blob = os.path.join(blobs_dir, etag)
        pointer = os.path.join(snap, _safe_relpath(n))
        pointers.append((blob, pointer))
        if os.path.exists(pointer) or os.path.exists(blob) or blob in todo:
            continue
        size = m.get("linked_size")
        if size is None and not m.get("location"):
            size = m.get("content_length")
        sha = etag.lower() if m.get("linked_etag") and _SHA256.match(etag) else None  # LFS: the etag is the sha256
        # at the commit, not the branch: what is fetched is what the HEAD described even if the branch moves
        url, auth = (m["location"], False) if m.get("location") else (fetcher.url(commit, n), True)
        todo[blob] = dict(name=n, url=url, auth=auth, size=size, sha=sha, etag=etag)
    if todo:
        os.makedirs(blobs_dir, exist_ok=True)
        with _locks(os.path.join(locks_dir, f"{t['etag']}.lock") for t in todo.values()):
            for blob in [b for b in todo if os.path.exists(b)]:  # another process finished it meanwhile
                del todo[blob]
            _transfer(fetcher, todo, blobs_dir, cache, label)
    for blob, pointer in pointers:
        if not os.path.exists(pointer):
            _link(blob, pointer)


def _transfer(fetcher: _Fetcher, todo: Dict[str, dict], blobs_dir: str, cache: str, label: Optional[str]) -> None:
    if not todo:
        return
    reqs, have, total = [], 0, 0
    for blob, t in todo.items():
        part = blob + ".incomplete"
        with contextlib.suppress(OSError):
            n = os.path.getsize(part)
            if t["size"] is None or n <= t["size"]:
                have += n
        total += t["size"] or 0
        reqs.append(("GET", t["url"], t["auth"], part, blob, t["size"], t["sha"]))
    need = total - have
    try:
        free = shutil.disk_usage(blobs_dir).free
    except OSError:
        free = None
    if free is not None and need > free:
        e = DiskFullError(
            f"Not enough disk space for {fetcher.repo_id}: {need / 1e9:.2f} GB more are needed in {blobs_dir} but "
            f"{free / 1e9:.2f} GB are free. Free some space, or put the cache on a bigger disk with HF_HUB_CACHE "
            f"(or cache_dir=, or HF_HOME).")
        e.errno = errno.ENOSPC
        raise e
    results = fetcher.get(reqs, total, have, label)
    failures = [(t, r) for t, r in zip(todo.values(), results) if not r["ok"]]
    if not failures:
        return
    order = ("disk", "hash", "size", "io", "http", "timeout", "network", "cancelled")
    t, r = min(failures, key=lambda tr: order.index(tr[1]["failure"]) if tr[1]["failure"] in order else len(order))
    others = f" ({len(failures) - 1} other file(s) failed too)" if len(failures) > 1 else ""
    name, repo = t["name"], fetcher.repo_id
    kind = r["failure"]
    if kind == "disk":
        e = DiskFullError(
            f"The disk holding the cache is full: downloading {name} of {repo} stopped after {r['bytes']} bytes "
            f"({r['error']}). Free some space, or put the cache on a bigger disk with HF_HUB_CACHE (or cache_dir=); "
            f"the partial file is kept and the next call resumes it{others}.")
        e.errno = errno.ENOSPC
        raise e
    if kind in ("hash", "size"):
        raise HashMismatchError(
            f"{name} of {repo} arrived corrupted: {r['error']}. Nothing was added to the cache. Run again to "
            f"download it afresh; if it happens again, something between you and {fetcher.endpoint} (a proxy, a "
            f"mirror set with HF_ENDPOINT) alters the file{others}.")
    if kind == "http":
        if r["status"] in (401, 403) and not t["auth"]:
            hint = "The signed download link was refused (it may have expired): run again."
        elif r["status"] == 429 or r["status"] >= 500:
            hint = "The server is overloaded or down: try again later; what was received is kept and resumed."
        else:
            hint = "Run again; what was received is kept and resumed."
        raise DownloadError(f"Downloading {name} of {repo} failed with HTTP {r['status']} after {r['attempts']} "
                            f"attempts. {hint}{others}")
    if kind in ("network", "timeout"):
        raise DownloadError(
            f"Downloading {name} of {repo} failed after {r['attempts']} attempts: {r['error']}. {r['bytes']} bytes "
            f"are kept and the next call resumes from there. If the network is down, set HF_HUB_OFFLINE=1 to use "
            f"only what is cached{others}.")
    raise DownloadError(f"Downloading {name} of {repo} failed: {r['error']}{others}.")
