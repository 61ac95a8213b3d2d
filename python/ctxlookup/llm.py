"""The LLM client: OpenAI-compatible chat completions, many at once, cached, costed.

Any server that speaks ``POST {base_url}/chat/completions`` works: OpenAI, Azure OpenAI, vLLM,
llama.cpp's server, Ollama. The requests go through the C core (libcurl's multi interface, with
the GIL released): many in flight at once, a requests-per-minute and a tokens-per-minute limit,
a per-attempt timeout, and retries with exponential backoff and jitter on 408/409/429/5xx,
connection failures, resets, timeouts and malformed bodies, honouring ``Retry-After`` (and
``retry-after-ms``). Ctrl-C stops a batch within about 50 ms::

    from ctxlookup.llm import Client

    client = Client(model="gpt-4o-mini", rpm=500)          # OPENAI_BASE_URL / OPENAI_API_KEY
    results = client.complete_many(
        [[{"role": "user", "content": f"Explain neuron {i}"}] for i in range(1000)],
        max_tokens=200, temperature=0, stage="explain")
    results[0].content, results[0].usage, results[0].cached, results[0].error
    print(client.usage_report())                          # tokens and USD per stage

**Cache.** Every answer is written to a SQLite file the moment it arrives (one committed row per
answer, WAL journal), keyed by a SHA-256 of (base_url, model, messages, parameters). A rerun of a
finished, interrupted (Ctrl-C) or killed run serves those answers from the file and sends only
what is missing; identical requests inside one batch are sent once. Failed requests are not
cached, so a rerun tries them again. The API key is not part of the key, nor stored anywhere.
A file that is not a ctxlookup cache (damaged, or another program's) raises :class:`CacheError`
naming it. When an answer cannot be written (a full disk), it is still returned and kept in
memory for the rest of the process (answers already paid for are never dropped); the failure is
reported once, as a :class:`CacheWriteWarning` and in :attr:`ResponseCache.write_error`, and the
unsaved answers are written as soon as a later write succeeds. Answers are stored exactly, lone
UTF-16 surrogates included (as UTF-8 with surrogates, in a BLOB).

**Cost.** Usage reported by the server is accounted per ``stage=`` label, priced by
:data:`PRICES` (USD per million input / output tokens; override with ``prices=``). Answers from
the cache cost nothing and are counted separately. ``dry_run=True`` sends nothing and returns an
:class:`Estimate`: prompt tokens are approximated as ``ceil(characters / 4)`` per message plus 4
per message and 3 per request (OpenAI's chat framing); completion tokens at ``max_tokens``, an
upper bound. Four characters a token holds for English prose with OpenAI's tokenizers; code,
numbers and other languages take more tokens, so treat the estimate as +-30 %.

**Secrets.** The key is read from ``api_key=`` or ``OPENAI_API_KEY``, sent only in the
``Authorization`` (or Azure's ``api-key``) header, and kept out of reprs, :meth:`Client.manifest`,
the cache file and error messages (a server that echoes it back has it replaced by
``[redacted]``).

**Threads.** The batch runs on the calling thread with the GIL released; Ctrl-C is seen only when
that is the main thread. One batch at a time per Client: concurrent calls on one Client work but
do not share the rpm / tpm budget.

**Errors.** A request that still fails after its retries does not raise: its :class:`Result` has
``error`` set, e.g. ``"HTTP 429 after 7 attempts: Rate limit reached ... (type=requests,
code=rate_limit_exceeded)"`` or ``"no response after 7 attempts: Operation timed out after 60000
milliseconds with 0 bytes received"``. Invalid arguments raise ``ValueError`` / ``TypeError``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from . import _core

__all__ = ["Client", "Result", "Estimate", "StageUsage", "ResponseCache", "CacheError", "CacheWriteWarning", "PRICES",
           "estimate_tokens", "default_cache_path", "request_body"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: USD per million (input, output) tokens, as OpenAI publishes them (the gpt-4o and gpt-4.1 rows checked
#: against copies of OpenAI's pricing page from March-April 2026, gpt-4-turbo's $10/$30 likewise; the
#: older rows are OpenAI's last published figures; verify before a large run). A model name is
#: matched exactly, else by the longest key it starts with ("gpt-4o-2024-08-06" -> "gpt-4o"). Override or extend with ``Client(prices={...})``. Models with no
#: entry (local servers) cost 0 and :attr:`Client.price` is None.
PRICES: Dict[str, Tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-4-0125-preview": (10.0, 30.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-32k": (60.0, 120.0),
    "gpt-4": (30.0, 60.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-2024-05-13": (5.0, 15.0),
    "gpt-4o": (2.50, 10.0),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.0, 8.0),
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "gpt-3.5-turbo": (0.50, 1.50),
}

Messages = Union[str, Sequence[Mapping[str, str]]]
_MESSAGE_KEYS = ("role", "content", "name")
_REDACTED = "[redacted]"


class _Secret:
    """Holds the API key; shows as *** in reprs, vars() and tracebacks' locals."""

    __slots__ = ("_v",)

    def __init__(self, v: Optional[str]):
        self._v = v or None

    def __bool__(self) -> bool:
        return self._v is not None

    def __repr__(self) -> str:
        return "'***'" if self._v else "None"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("the API key cannot be pickled")


def default_cache_path() -> str:
    """``$CTXLOOKUP_LLM_CACHE``, else ``$XDG_CACHE_HOME/ctxlookup/llm-cache.sqlite3`` (``~/.cache/...``)."""
    env = os.environ.get("CTXLOOKUP_LLM_CACHE")
    if env:
        return env
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "ctxlookup", "llm-cache.sqlite3")


def estimate_tokens(messages: Messages) -> int:
    """Approximate prompt tokens: ``ceil(len(content) / 4) + 4`` per message, plus 3 per request.

    No tokenizer is needed; good to about +-30 % for English text with OpenAI's tokenizers (code,
    digits and other scripts take more tokens per character)."""
    msgs = _normalize_messages(messages)
    return sum(-(-len(m["content"]) // 4) + 4 for m in msgs) + 3


def _normalize_messages(messages: Messages) -> List[Dict[str, str]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, Mapping):
        raise TypeError("a request is a list of message dicts (or a str), not a single dict")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {k} must be a dict with 'role' and 'content', not {type(m).__name__}")
        extra = set(m) - set(_MESSAGE_KEYS)
        if extra:
            raise ValueError(f"message {k}: unsupported keys {sorted(extra)} (supported: role, content, name)")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise TypeError(f"message {k}: '{key}' must be a str")
        if "name" in m and m["name"] is not None and not isinstance(m["name"], str):
            raise TypeError(f"message {k}: 'name' must be a str")
        out.append({key: m[key] for key in _MESSAGE_KEYS if m.get(key) is not None})
    if not out:
        raise ValueError("a request needs at least one message")
    return out


def request_body(model: str, messages, max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                 max_tokens_param: str = "max_tokens") -> str:
    """The JSON body :class:`Client` sends for one chat request, from the core's own serializer
    (the one every request goes through): ``model``, ``messages``, then ``max_tokens`` (under
    ``max_tokens_param``) and ``temperature`` when given."""
    return _core._llm_body(model, _normalize_messages(messages), max_tokens, temperature, None, max_tokens_param)


@dataclass
class Result:
    """One request's outcome. ``error`` is None on success; then ``content`` is the answer (None only
    if the model returned no text, e.g. a refusal) and ``usage`` the server's token counts."""

    content: Optional[str]
    usage: Optional[Dict[str, Optional[int]]]
    cached: bool
    error: Optional[str] = None
    finish_reason: Optional[str] = None
    cost: float = 0.0       # USD at the client's price (for a cached answer: what it cost when fetched)
    attempts: int = 0       # HTTP attempts made in this call (0 for a cached answer)
    status: Optional[int] = None  # HTTP status of the last attempt (None for a cached answer)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StageUsage:
    """Accounting for one stage (label) in this client's lifetime."""

    requests: int = 0            # answers fetched from the server
    cached: int = 0              # answers served from the cache (not sent)
    errors: int = 0              # requests that failed after their retries
    prompt_tokens: int = 0       # of the fetched answers
    completion_tokens: int = 0
    cost: float = 0.0            # USD spent on the fetched answers
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    cached_cost: float = 0.0     # USD the cached answers would have cost (saved)

    def __iadd__(self, other: "StageUsage") -> "StageUsage":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass
class Estimate:
    """What a batch would cost, computed without sending anything (``dry_run=True``)."""

    model: str
    requests: int                # requests in the batch
    unique: int                  # distinct requests (duplicates are sent once)
    cached: int                  # distinct requests already in the cache
    to_send: int                 # distinct requests that would be sent
    prompt_tokens: int           # estimated, of those to send (chars / 4, see estimate_tokens)
    completion_tokens: Optional[int]  # upper bound: to_send * max_tokens (None without max_tokens)
    cost: float                  # USD, prompt estimate + completion upper bound; 0 without a price
    price: Optional[Tuple[float, float]]  # USD per 1M (input, output) tokens, None if unknown

    def __str__(self) -> str:
        comp = "?" if self.completion_tokens is None else f"<= {self.completion_tokens:,}"
        price = "no price known (cost 0)" if self.price is None else f"${self.price[0]}/${self.price[1]} per 1M in/out"
        return (f"{self.to_send:,} of {self.requests:,} requests to send ({self.unique:,} distinct, {self.cached:,} cached); "
                f"~{self.prompt_tokens:,} prompt tokens (chars/4), completion {comp}; "
                f"estimated cost ${self.cost:.4f} for {self.model} ({price})")


class CacheError(RuntimeError):
    """The cache file is damaged or is not a ctxlookup response cache."""


class CacheWriteWarning(UserWarning):
    """An answer could not be written to the cache file (a full disk); it is kept in memory."""


_COLUMNS = ("key", "base_url", "model", "stage", "request", "content", "finish_reason", "response_model",
            "prompt_tokens", "completion_tokens", "cost", "created")


def _to_sql(x):
    """A str SQLite can store: UTF-8 as it is; one with lone surrogates as UTF-8 bytes with surrogates."""
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return x.encode("utf-8", "surrogatepass")
    return x


def _from_sql(x):
    return x.decode("utf-8", "surrogatepass") if isinstance(x, bytes) else x


class ResponseCache:
    """The persistent answer store: a SQLite file, one row per answered request.

    Rows are written one committed transaction each (WAL journal), so a killed process loses at
    most the answers still in flight. Several processes may share a file. Columns: key (SHA-256 hex),
    base_url, model, stage (of the first fetch), request (JSON of messages and parameters; never
    the API key), content, finish_reason, response_model, prompt_tokens, completion_tokens, cost,
    created (Unix time)."""

    _SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
        key TEXT PRIMARY KEY, base_url TEXT NOT NULL, model TEXT NOT NULL, stage TEXT, request TEXT NOT NULL,
        content TEXT, finish_reason TEXT, response_model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
        cost REAL, created REAL NOT NULL)"""

    def __init__(self, path: Union[str, os.PathLike, None]):
        self.path = ":memory:" if path is None else os.fspath(path)
        fresh = self.path != ":memory:" and not os.path.exists(self.path)
        if fresh:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._lock = threading.Lock()
        self._unsaved: Dict[str, tuple] = {}   # rows a write failed for (a full disk), kept for this process
        self.write_error: Optional[str] = None  # the first write failure, if any
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            if fresh:
                os.chmod(self.path, 0o600)  # prompts and answers may be private
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(self._SCHEMA)
            cols = tuple(r[1] for r in self._db.execute("PRAGMA table_info(responses)"))
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise CacheError(f"{self.path} is not a readable ctxlookup response cache ({e}); move it aside (its "
                             f"answers will be fetched, and paid for, again) or give another cache path") from None
        if cols != _COLUMNS:
            self._db.close()
            raise CacheError(f"{self.path} holds a 'responses' table that is not a ctxlookup response cache "
                             f"(columns {', '.join(cols)}); give another cache path")

    def get_many(self, keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        """key -> row (a dict) for the keys present."""
        out: Dict[str, Dict[str, Any]] = {}
        keys = list(keys)
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                try:
                    cur = self._db.execute(
                        "SELECT key, content, finish_reason, prompt_tokens, completion_tokens, cost FROM responses "
                        f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                except sqlite3.DatabaseError as e:
                    raise CacheError(f"{self.path} is damaged ({e}); move it aside (its answers will be fetched, "
                                     f"and paid for, again) or give another cache path") from None
                for key, content, fr, pt, ct, cost in cur:
                    out[key] = {"content": _from_sql(content), "finish_reason": _from_sql(fr), "prompt_tokens": pt,
                                "completion_tokens": ct, "cost": cost}
            for key in keys:
                row = self._unsaved.get(key)
                if row is not None and key not in out:
                    out[key] = {"content": _from_sql(row[5]), "finish_reason": _from_sql(row[6]), "prompt_tokens": row[8],
                                "completion_tokens": row[9], "cost": row[10]}
        return out

    def put(self, key: str, *, base_url: str, model: str, stage: str, request: str, content: Optional[str],
            finish_reason: Optional[str], response_model: Optional[str], prompt_tokens: Optional[int],
            completion_tokens: Optional[int], cost: float) -> bool:
        """Store one answer (committed before returning); an existing row for the key is kept.

        Never raises for a failed write (a full disk, an I/O error): the row is kept in memory
        (:meth:`get_many` serves it), :attr:`write_error` says why, and False is returned; the
        kept rows are written with the next write that succeeds."""
        row = tuple(_to_sql(x) for x in (key, base_url, model, stage, request, content, finish_reason, response_model,
                                         prompt_tokens, completion_tokens, cost, time.time()))
        with self._lock:
            try:
                self._db.execute("INSERT OR IGNORE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
            except (sqlite3.Error, OSError) as e:
                self._unsaved[key] = row
                if self.write_error is None:
                    self.write_error = f"{type(e).__name__}: {e}"
                return False
            if self._unsaved:
                self._flush_locked()
        return not self._unsaved

    def _flush_locked(self) -> None:
        for k, row in list(self._unsaved.items()):
            try:
                self._db.execute("INSERT OR IGNORE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
            except (sqlite3.Error, OSError):
                return
            del self._unsaved[k]

    def flush(self) -> int:
        """Try again to write the answers kept in memory; returns how many are still unsaved."""
        with self._lock:
            self._flush_locked()
            return len(self._unsaved)

    @property
    def unsaved(self) -> int:
        """Answers held in memory only, because writing them failed."""
        return len(self._unsaved)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def summary(self) -> Dict[str, Dict[str, Any]]:
        """Everything ever fetched into this file, per stage: answers, tokens, USD."""
        with self._lock:
            rows = self._db.execute(
                "SELECT COALESCE(stage, ''), COUNT(*), SUM(COALESCE(prompt_tokens, 0)), "
                "SUM(COALESCE(completion_tokens, 0)), SUM(COALESCE(cost, 0)) FROM responses GROUP BY 1").fetchall()
        return {s: {"answers": n, "prompt_tokens": p, "completion_tokens": c, "cost": cost} for s, n, p, c, cost in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Client:
    """A chat-completion client for an OpenAI-compatible server, with a persistent cache.

    Parameters
    ----------
    model: the model (Azure: the deployment name also goes in the URL; give it here for the cache key and prices).
    base_url: default ``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``. Requests go to
        ``{base_url}/chat/completions``; a query string stays at the end (Azure:
        ``https://R.openai.azure.com/openai/deployments/D?api-version=2024-06-01``).
    api_key: default ``$OPENAI_API_KEY``; None or "" sends no key (local servers).
    auth: ``"bearer"`` (``Authorization: Bearer KEY``), ``"api-key"`` (Azure's ``api-key: KEY``), or
        ``"auto"``: api-key for ``*.azure.com`` hosts, bearer otherwise.
    cache: path of the SQLite cache file; None: :func:`default_cache_path`; False: in memory only.
    concurrency: requests in flight at most.
    rpm, tpm: requests / tokens per minute at most (None: no limit). Tokens are counted per request
        as :func:`estimate_tokens` + max_tokens, as OpenAI's limiter counts them.
    timeout: seconds for one attempt (connect, send, wait, receive); connect_timeout for the connection.
    max_retries: attempts after the first, for 408/409/429/5xx, network failures, timeouts and
        malformed answers; backoff_base * 2**k seconds (k = 0, 1, ...) times a random factor in
        [0.5, 1), capped at backoff_max; a Retry-After from the server is honoured instead, up to
        retry_after_max seconds (a longer one fails the request at once).
    prices: ``{model: (usd_per_1M_input, usd_per_1M_output)}`` added to / overriding :data:`PRICES`.
    headers: extra HTTP headers ``{name: value}`` (e.g. ``OpenAI-Organization``).
    max_tokens_param: body field for max_tokens ("max_completion_tokens" for OpenAI's reasoning models).
    dry_run: default of :meth:`complete_many`'s ``dry_run``.
    progress: show a tqdm progress bar for batches (if tqdm is installed).
    """

    def __init__(self, model: str = "gpt-4-1106-preview", base_url: Optional[str] = None, api_key: Optional[str] = None, *,
                 auth: str = "auto", cache: Union[str, os.PathLike, None, bool] = None, concurrency: int = 16,
                 rpm: Optional[float] = None, tpm: Optional[float] = None, timeout: float = 120.0,
                 connect_timeout: float = 15.0, max_retries: int = 6, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, retry_after_max: float = 300.0,
                 prices: Optional[Mapping[str, Tuple[float, float]]] = None, headers: Optional[Mapping[str, str]] = None,
                 max_tokens_param: str = "max_tokens", dry_run: bool = False, progress: bool = True):
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty str")
        self.model = model
        base = base_url if base_url is not None else (os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        self.base_url = base.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.__key = _Secret(key)
        if auth == "auto":
            host = (parts.hostname or "").lower()
            auth = "api-key" if host.endswith(".azure.com") else "bearer"
        if auth not in ("bearer", "api-key"):
            raise ValueError(f"auth must be 'auto', 'bearer' or 'api-key', got {auth!r}")
        self.auth = auth
        self.extra_headers = dict(headers or {})
        for k, v in self.extra_headers.items():
            if not isinstance(k, str) or not isinstance(v, str) or any(c in k + v for c in "\r\n") or ":" in k:
                raise ValueError("headers must map str names (without ':') to str values, without line breaks")
        self.prices = dict(PRICES)
        self.prices.update(prices or {})
        for m, p in self.prices.items():
            if len(p) != 2 or any((not isinstance(x, (int, float))) or x < 0 for x in p):
                raise ValueError(f"price for {m!r} must be (usd_per_1M_input, usd_per_1M_output) >= 0")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 4096:
            raise ValueError(f"concurrency must be an int in [1, 4096], got {concurrency!r}")
        self.concurrency = concurrency
        self.rpm, self.tpm = rpm, tpm
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.max_retries = int(max_retries)
        self.backoff_base, self.backoff_max, self.retry_after_max = float(backoff_base), float(backoff_max), float(retry_after_max)
        for name in ("rpm", "tpm"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number or None, got {v!r}")
        self.max_tokens_param = max_tokens_param
        self.dry_run = dry_run
        self.progress = progress
        if cache is False:
            cache_path = None
        elif cache is None or cache is True:
            cache_path = default_cache_path()
        else:
            cache_path = os.fspath(cache)
        self.cache = ResponseCache(cache_path)
        self._cache_warned = False
        self.usage: Dict[str, StageUsage] = {}
        self.last_stats: Optional[Dict[str, Any]] = None
        self._limiter = (0.0, 0.0, 0.0)

    # ---- identity ----
    def __repr__(self) -> str:
        key = "set" if self.__key else "none"
        return (f"Client(model={self.model!r}, base_url={self.base_url!r}, api_key=<{key}>, cache={self.cache.path!r}, "
                f"concurrency={self.concurrency}, rpm={self.rpm}, tpm={self.tpm})")

    def __getstate__(self):
        raise TypeError("ctxlookup.llm.Client is not picklable (it holds an API key and a database connection)")

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        base = self.base_url
        query = ""
        if "?" in base:
            base, query = base.split("?", 1)
            base = base.rstrip("/")
            query = "?" + query
        if not base.endswith("/chat/completions"):
            base += "/chat/completions"
        return base + query

    @property
    def price(self) -> Optional[Tuple[float, float]]:
        """USD per million (input, output) tokens for this model, or None if unknown."""
        if self.model in self.prices:
            return tuple(self.prices[self.model])
        best = max((k for k in self.prices if self.model.startswith(k)), key=len, default=None)
        return tuple(self.prices[best]) if best else None

    def cost(self, prompt_tokens: Optional[int], completion_tokens: Optional[int]) -> float:
        """USD for these token counts at this model's price (0 when unknown)."""
        p = self.price
        if p is None:
            return 0.0
        return ((prompt_tokens or 0) * p[0] + (completion_tokens or 0) * p[1]) / 1e6

    def manifest(self) -> Dict[str, Any]:
        """The settings that matter for reproducing a run (for run manifests); never the key."""
        return {"model": self.model, "base_url": self.base_url, "auth": self.auth, "api_key_set": bool(self.__key),
                "cache": self.cache.path, "concurrency": self.concurrency, "rpm": self.rpm, "tpm": self.tpm,
                "timeout": self.timeout, "max_retries": self.max_retries, "price_per_1M": self.price,
                "max_tokens_param": self.max_tokens_param, "extra_header_names": sorted(self.extra_headers)}

    def _headers(self) -> List[str]:
        out = [f"{k}: {v}" for k, v in self.extra_headers.items()]
        if self.__key:
            k = self.__key._v
            out.append(f"Authorization: Bearer {k}" if self.auth == "bearer" else f"api-key: {k}")
        return out

    def _redact(self, text: Optional[str]) -> Optional[str]:
        if text is None or not self.__key:
            return text
        return text.replace(self.__key._v, _REDACTED)

    def _cache_key(self, messages: List[Dict[str, str]], params: Dict[str, Any]) -> Tuple[str, str]:
        request = json.dumps({"messages": messages, "params": params}, sort_keys=True, ensure_ascii=False,
                             separators=(",", ":"))
        ident = json.dumps([self.base_url, self.model], ensure_ascii=False) + request
        return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest(), request

    # ---- requests ----
    def complete(self, messages: Messages, *, max_tokens: Optional[int] = None, temperature: Optional[float] = 0,
                 stage: str = "default", **params) -> Result:
        """One request (see :meth:`complete_many`); returns its :class:`Result` (check ``.error``), or an
        :class:`Estimate` when the client was made with ``dry_run=True``."""
        out = self.complete_many([messages], max_tokens=max_tokens, temperature=temperature, stage=stage,
                                 progress=False, **params)
        return out if isinstance(out, Estimate) else out[0]

    def estimate(self, requests: Iterable[Messages], *, max_tokens: Optional[int] = None,
                 temperature: Optional[float] = 0, **params) -> Estimate:
        """The cost of :meth:`complete_many` with these arguments, sending nothing."""
        return self.complete_many(requests, max_tokens=max_tokens, temperature=temperature, dry_run=True, **params)

    def complete_many(self, requests: Iterable[Messages], *, max_tokens: Optional[int] = None,
                      temperature: Optional[float] = 0, stage: str = "default", dry_run: Optional[bool] = None,
                      progress: Optional[bool] = None, **params) -> Union[List[Result], Estimate]:
        """Answer many requests; returns one :class:`Result` per request, in order.

        requests: each a list of ``{"role", "content"[, "name"]}`` dicts, or a str (one user message).
        max_tokens, temperature: sent when not None. Other keyword arguments (top_p, seed, stop,
        response_format, ...) go into the request body as they are; all of them are part of the cache key.
        stage: the accounting label (see :attr:`usage`, :meth:`usage_report`).
        dry_run: send nothing; return an :class:`Estimate` of the cost of what is not cached.

        Answers already in the cache are not sent; the rest go out concurrently and each is written
        to the cache as soon as it arrives, so an interrupted call loses nothing that was answered.
        A request that fails after its retries gets ``error`` set; the others are unaffected.
        Ctrl-C raises KeyboardInterrupt (answers received so far are in the cache)."""
        if not isinstance(stage, str):
            raise TypeError("stage must be a str")
        dry_run = self.dry_run if dry_run is None else dry_run
        progress = self.progress if progress is None else progress
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0):
            raise ValueError(f"max_tokens must be a non-negative int or None, got {max_tokens!r}")
        if temperature is not None and not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number or None, got {temperature!r}")
        if self.max_tokens_param in params:
            raise ValueError(f"give {self.max_tokens_param} as max_tokens=")
        for reserved in ("model", "messages", "stream"):
            if reserved in params:
                raise ValueError(f"'{reserved}' cannot be passed as a parameter" +
                                 (" (streaming is not supported)" if reserved == "stream" else ""))
        msgs = [_normalize_messages(m) for m in requests]
        body_params = {"max_tokens": max_tokens, "temperature": temperature, **params}
        body_params = {k: v for k, v in body_params.items() if v is not None}
        try:
            extra_json = json.dumps(params, ensure_ascii=False) if params else None
        except (TypeError, ValueError) as e:
            raise TypeError(f"parameters must be JSON-serializable: {e}") from None

        keys, request_json, groups = [], {}, {}
        for i, m in enumerate(msgs):
            k, req = self._cache_key(m, body_params)
            keys.append(k)
            if k not in groups:
                groups[k] = []
                request_json[k] = req
            groups[k].append(i)
        rows = self.cache.get_many(list(groups))
        to_send = [k for k in groups if k not in rows]
        first = {k: idx[0] for k, idx in groups.items()}

        if dry_run:
            prompt = sum(estimate_tokens(msgs[first[k]]) for k in to_send)
            comp = None if max_tokens is None else max_tokens * len(to_send)
            return Estimate(model=self.model, requests=len(msgs), unique=len(groups), cached=len(rows),
                            to_send=len(to_send), prompt_tokens=prompt, completion_tokens=comp,
                            cost=self.cost(prompt, comp), price=self.price)

        acct = self.usage.setdefault(stage, StageUsage())
        results: List[Optional[Result]] = [None] * len(msgs)

        def assign(k: str, res: Result) -> None:
            for n, i in enumerate(groups[k]):
                results[i] = res if n == 0 else dataclasses.replace(res)

        for k, row in rows.items():
            pt, ct = row["prompt_tokens"], row["completion_tokens"]
            usage = None if pt is None and ct is None else {
                "prompt_tokens": pt, "completion_tokens": ct, "total_tokens": (pt or 0) + (ct or 0)}
            c = self.cost(pt, ct)
            assign(k, Result(content=row["content"], usage=usage, cached=True, finish_reason=row["finish_reason"], cost=c))
            acct.cached += 1
            acct.cached_prompt_tokens += pt or 0
            acct.cached_completion_tokens += ct or 0
            acct.cached_cost += c

        if to_send:
            bar = _progress_bar(len(to_send), stage) if progress else None

            def on_done(i: int, d: Dict[str, Any]) -> None:
                k = to_send[i]
                if d["ok"]:
                    u = d["usage"] or {}
                    pt, ct = u.get("prompt_tokens"), u.get("completion_tokens")
                    c = self.cost(pt, ct)
                    content = self._redact(d["content"])
                    # the answer is paid for: it goes into the results first, and a cache that cannot
                    # store it (a full disk) keeps it in memory and is reported once
                    assign(k, Result(content=content, usage=d["usage"], cached=False, finish_reason=d["finish_reason"],
                                     cost=c, attempts=d["attempts"], status=d["status"]))
                    if not self.cache.put(k, base_url=self.base_url, model=self.model, stage=stage,
                                          request=self._redact(request_json[k]), content=content,
                                          finish_reason=self._redact(d["finish_reason"]),
                                          response_model=self._redact(d["model"]), prompt_tokens=pt,
                                          completion_tokens=ct, cost=c):
                        self._warn_cache()
                    acct.requests += 1
                    acct.prompt_tokens += pt or 0
                    acct.completion_tokens += ct or 0
                    acct.cost += c
                else:
                    assign(k, Result(content=None, usage=None, cached=False, error=self._error_message(d),
                                     attempts=d["attempts"], status=d["status"] or None))
                    acct.errors += 1
                if bar is not None:
                    bar.update(1)

            specs = [(msgs[first[k]], max_tokens, temperature, extra_json) for k in to_send]
            tokens = [float(estimate_tokens(msgs[first[k]]) + (max_tokens or 0)) for k in to_send]
            try:
                stats = _core._llm_run(
                    self.url, self._headers(), self.model, specs, on_done, tokens=tokens,
                    concurrency=self.concurrency, rpm=float(self.rpm or 0), tpm=float(self.tpm or 0),
                    timeout=self.timeout, connect_timeout=self.connect_timeout, max_retries=self.max_retries,
                    backoff_base=self.backoff_base, backoff_max=self.backoff_max,
                    retry_after_max=self.retry_after_max, max_tokens_field=self.max_tokens_param,
                    limiter=self._limiter)
            except ConnectionError as e:  # libcurl could not be set up: make sure no secret is in the text
                raise ConnectionError(self._redact(str(e))) from None
            finally:
                if bar is not None:
                    bar.close()
            self._limiter = stats.pop("limiter")
            self.last_stats = stats
        return results  # type: ignore[return-value]

    @property
    def cache_error(self) -> Optional[str]:
        """Why the cache could not store an answer (None if every write succeeded)."""
        return self.cache.write_error

    def _warn_cache(self) -> None:
        if self._cache_warned:
            return
        self._cache_warned = True
        warnings.warn(f"the LLM response cache {self.cache.path} cannot store answers ({self.cache.write_error}); "
                      f"answers are kept in memory for this process and written when a write succeeds again; "
                      f"free disk space, or a later run fetches (and pays for) them again",
                      CacheWriteWarning, stacklevel=2)

    def check(self, timeout: float = 20.0) -> Dict[str, Any]:
        """Before a batch: one cheap request (``max_tokens=1``, no retries, not cached) that the
        server is reachable, takes the key and knows the model. Raises at once, naming what is
        wrong: ``ValueError`` when no key is set for OpenAI's own server (``OPENAI_API_KEY``),
        ``ConnectionError`` when the server cannot be reached (the URL), ``PermissionError`` on
        401 / 403 (the key is rejected) or a spent quota, ``ValueError`` on 404 (the model or the
        URL's path) or another 4xx. A 429 rate limit or a 5xx passes (the batch's
        retries handle those). Returns ``{"status", "seconds"}``; the tokens are accounted as
        stage ``"check"``."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        if not self.__key and host == "api.openai.com":
            raise ValueError(f"no API key for {self.base_url}: set OPENAI_API_KEY (or --base-url for a server "
                             f"that needs none)")
        spec = ([{"role": "user", "content": "Say yes."}], 1, 0, None)
        out: Dict[str, Any] = {}

        def on_done(i: int, d: Dict[str, Any]) -> None:
            out.update(d)

        t0 = time.perf_counter()
        try:
            stats = _core._llm_run(self.url, self._headers(), self.model, [spec], on_done, tokens=[16.0],
                                   concurrency=1, rpm=0.0, tpm=0.0, timeout=float(timeout),
                                   connect_timeout=min(float(timeout), self.connect_timeout), max_retries=0,
                                   backoff_base=self.backoff_base, backoff_max=self.backoff_max,
                                   retry_after_max=self.retry_after_max, max_tokens_field=self.max_tokens_param,
                                   limiter=(0.0, 0.0, 0.0))
        except ConnectionError as e:
            raise ConnectionError(self._redact(str(e))) from None
        del stats
        seconds = round(time.perf_counter() - t0, 3)
        status = out.get("status") or None
        if out.get("ok"):
            u = out.get("usage") or {}
            acct = self.usage.setdefault("check", StageUsage())
            acct.requests += 1
            acct.prompt_tokens += u.get("prompt_tokens") or 0
            acct.completion_tokens += u.get("completion_tokens") or 0
            acct.cost += self.cost(u.get("prompt_tokens"), u.get("completion_tokens"))
            return {"status": status, "seconds": seconds}
        err = out.get("error") or {}
        why = self._error_message(out) if out else "no result"
        if err.get("kind") == "transport":
            raise ConnectionError(f"cannot reach the LLM server at {self.url}: {self._redact(err.get('message')) or 'connection failed'} "
                                  f"(check --base-url / OPENAI_BASE_URL and the network)")
        if status in (401, 403):
            key = "the API key (OPENAI_API_KEY) was rejected" if self.__key else "no API key was sent (set OPENAI_API_KEY)"
            raise PermissionError(f"the LLM server at {self.url} refused the request: {key}; {why}")
        if status == 429 and err.get("code") == "insufficient_quota":
            raise PermissionError(f"the LLM server at {self.url} refused the request: the account's quota is spent; {why}")
        if status == 404:
            raise ValueError(f"the LLM server at {self.url} answered 404 for model '{self.model}' (a wrong --llm-model, "
                              f"or a --base-url without the API's path such as /v1?); {why}")
        if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
            raise ValueError(f"the LLM server at {self.url} refused a one-token request for model '{self.model}': {why}")
        if err.get("kind") == "format":
            raise ConnectionError(f"the server at {self.url} does not answer like an OpenAI-compatible API: {why}")
        return {"status": status, "seconds": seconds}

    def _error_message(self, d: Dict[str, Any]) -> str:
        e, n, status = d["error"], d["attempts"], d["status"]
        tries = f"after {n} attempt{'s' if n != 1 else ''}"
        if e["kind"] == "http":
            msg = f"HTTP {status} {tries}"
            if e.get("message"):
                msg += f": {e['message']}"
            extra = [f"{f}={e[f]}" for f in ("type", "code") if e.get(f)]
            if extra:
                msg += f" ({', '.join(extra)})"
            if e.get("detail"):
                msg += f"; {e['detail']}"
        elif e["kind"] == "transport":
            msg = f"no response {tries}: {e.get('message') or 'connection failed'}"
        else:
            msg = f"malformed response (HTTP {status}) {tries}: {e.get('message')}"
        return self._redact(msg)

    # ---- accounting ----
    def total_usage(self) -> StageUsage:
        """The sum over stages."""
        tot = StageUsage()
        for u in self.usage.values():
            tot += u
        return tot

    def usage_report(self) -> str:
        """A small table: per stage, answers fetched / cached / failed, tokens and USD."""
        p = self.price
        head = f"model {self.model}, " + ("no price known" if p is None else f"${p[0]} / ${p[1]} per 1M input / output tokens")
        lines = [head, f"{'stage':<16}{'fetched':>9}{'cached':>8}{'errors':>8}{'prompt tok':>12}{'compl tok':>11}{'USD':>10}{'saved USD':>11}"]
        for name, u in list(self.usage.items()) + [("total", self.total_usage())]:
            lines.append(f"{name:<16}{u.requests:>9}{u.cached:>8}{u.errors:>8}{u.prompt_tokens:>12}{u.completion_tokens:>11}"
                         f"{u.cost:>10.4f}{u.cached_cost:>11.4f}")
        return "\n".join(lines)

    def close(self) -> None:
        """Close the cache file."""
        self.cache.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _progress_bar(total: int, stage: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"llm[{stage}]", unit="req", dynamic_ncols=True)
