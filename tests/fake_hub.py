"""A stand-in for the Hugging Face Hub's file endpoints, on 127.0.0.1 (real HTTP, for tests).

What it serves, as the Hub does (huggingface_hub's file_download.py and the Hub's answers):

- ``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{path}`` (revision: a branch, a tag or a
  commit; URL-quoted, so ``refs%2Fpr%2F1`` works). Every answer carries ``X-Repo-Commit``.
  A regular (git) file: 200 with ``ETag: "<git blob sha1>"`` and the body (Range honoured).
  An LFS file (``*.safetensors``, ``*.bin``, or larger than ``lfs_threshold``): 302 to the
  second server, the "CDN" (another port, so another origin, like ``cdn-lfs.hf.co``), with
  ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``, ``ETag`` and ``Location``.
- ``HEAD`` / ``GET /repos/<sha256>?sig=...`` on the CDN: the bytes, with ``Accept-Ranges``,
  ``Range`` -> 206 + ``Content-Range`` (416 past the end).
- Errors with the Hub's ``X-Error-Code``: a missing repository, or a private one without the
  token -> 401 ``RepoNotFound``; a gated one without the token -> 401 ``GatedRepo``; a missing
  revision -> 404 ``RevisionNotFound``; a missing file -> 404 ``EntryNotFound`` (with
  ``X-Repo-Commit``). A renamed repository answers 307 to its new id (relative ``Location``),
  as ``gpt2`` -> ``openai-community/gpt2`` does.

Faults, queued per file name with :meth:`FakeHub.fault` and used up one request at a time by
the requests that serve that file's bytes (``where="cdn"``, the default: CDN GETs; ``"resolve"``:
the Hub's HEAD / GET)::

    hub.fault("model.safetensors", "drop", at=0.5)     # send half the body, then close the connection
    hub.fault("model.safetensors", 500, times=2)       # two HTTP 500s (any status; 429 gets Retry-After)
    hub.fault("model.safetensors", "corrupt")          # one byte flipped, size unchanged
    hub.fault("model.safetensors", "stall", at=0.25, seconds=30)  # a quarter, then silence
    hub.fault("model.safetensors", "slow", rate=200_000, times=None)  # bytes/s; times=None: forever

Everything is logged (``hub.log``: server, method, path, Range, Authorization, status, bytes
sent, start and end times), so a test can check that a retry asked for ``Range: bytes=<offset>-``. Use::

    with FakeHub() as hub:
        commit = hub.add_repo("org/model", {"config.json": b"{...}", "model.safetensors": data})
        os.environ["HF_ENDPOINT"] = hub.endpoint

As a process (``python tests/fake_hub.py FOLDER REPO_ID [--rate BYTES_PER_S]``) it serves the
files of FOLDER as REPO_ID, prints the endpoint and serves until killed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub", "git_sha1", "sha256"]

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".pt", ".ckpt")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Repo:
    def __init__(self, gated, private):
        self.gated, self.private = gated, private
        self.commits = {}  # commit -> {path: bytes}
        self.refs = {}     # branch / tag -> commit


class FakeHub:
    def __init__(self, token: str | None = None, lfs_threshold: int = 10 << 20):
        self.token = token
        self.lfs_threshold = lfs_threshold
        self.repos: dict = {}
        self.renamed: dict = {}
        self.blobs: dict = {}  # sha256 -> (bytes, file name)
        self.faults = defaultdict(deque)
        self.log: list = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._servers = []

    # ------------------------------------------------------------------ content
    def add_repo(self, repo_id: str, files: dict, revision: str = "main", gated: bool = False,
                 private: bool = False) -> str:
        """Add (or add a commit to) a repository; ``revision`` (a branch or tag) then points to the
        new commit, which is returned (40 hex digits derived from the content)."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, _Repo(gated, private))
            repo.gated, repo.private = gated, private
            files = {k: bytes(v) for k, v in files.items()}
            h = hashlib.sha1(repo_id.encode() + b"\0" + str(len(repo.commits)).encode())
            for name in sorted(files):
                h.update(name.encode() + b"\0" + git_sha1(files[name]).encode())
            commit = h.hexdigest()
            repo.commits[commit] = files
            repo.refs[revision] = commit
            for name, data in files.items():
                if self.is_lfs(name, data):
                    self.blobs[sha256(data)] = (data, name)
            return commit

    def rename(self, old_id: str, new_id: str) -> None:
        """Requests to ``old_id`` get 307 to ``new_id`` (as the Hub does for renamed repositories)."""
        self.renamed[old_id] = new_id

    def is_lfs(self, name: str, data: bytes) -> bool:
        return name.endswith(LFS_SUFFIXES) or len(data) >= self.lfs_threshold

    def fault(self, name: str, kind, times=1, where: str = "cdn", **kw) -> None:
        """Queue a fault for the next ``times`` requests serving ``name`` (None: every one)."""
        with self.lock:
            self.faults[(where, name)].append(dict(kind=kind, left=times, **kw))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, where: str, name: str):
        with self.lock:
            q = self.faults.get((where, name))
            if not q:
                return None
            f = q[0]
            if f["left"] is not None:
                f["left"] -= 1
                if f["left"] <= 0:
                    q.popleft()
            return f

    # ------------------------------------------------------------------ log
    def requests(self, server: str | None = None, method: str | None = None, contains: str | None = None) -> list:
        with self.lock:
            return [r for r in self.log if (server is None or r["server"] == server) and
                    (method is None or r["method"] == method) and (contains is None or contains in r["path"])]

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()

    def bytes_sent(self, contains: str) -> int:
        with self.lock:
            return sum(r["sent"] for r in self.log if contains in r["path"])

    # ------------------------------------------------------------------ servers
    def start(self) -> "FakeHub":
        for role in ("hub", "cdn"):
            srv = _Server(("127.0.0.1", 0), _Handler)
            srv.fake, srv.role = self, role
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(srv)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers = []

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog (5) drops connections opened at once: 1 s SYN retries


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._handle(head=True)

    def do_GET(self):
        self._handle(head=False)

    # ------------------------------------------------------------------ plumbing
    def _record(self, status, sent=0):
        fake = self.server.fake
        now = time.monotonic()
        entry = dict(server=self.server.role, method=self.command, path=self.path, range=self.headers.get("Range"),
                     auth=self.headers.get("Authorization"), status=status, sent=sent, t=now, t_end=now)
        with fake.lock:
            fake.log.append(entry)
        return entry

    def _simple(self, status, headers=None, body=b"", head=False):
        entry = self._record(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
            entry["sent"] = len(body)

    def _error(self, status, code, message, head, commit=None):
        h = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        if commit:
            h["X-Repo-Commit"] = commit
        body = ('{"error":"%s"}' % message).encode()
        self._simple(status, h, body, head)

    def _authorized(self) -> bool:
        tok = self.server.fake.token
        return tok is not None and self.headers.get("Authorization") == f"Bearer {tok}"

    # ------------------------------------------------------------------ routes
    def _handle(self, head):
        fake = self.server.fake
        path = urlsplit(self.path).path
        if self.server.role == "cdn":
            return self._cdn(path, head)
        parts = path.split("/")
        if "resolve" not in parts[1:]:
            return self._simple(404, {"Content-Type": "text/plain"}, b"not found", head)
        k = parts.index("resolve", 1)
        repo_id = "/".join(parts[1:k])
        if len(parts) < k + 3:
            return self._simple(404, {}, b"", head)
        revision = unquote(parts[k + 1])
        name = unquote("/".join(parts[k + 2:]))
        if repo_id in fake.renamed:
            new = f"/{fake.renamed[repo_id]}/resolve/{parts[k + 1]}/{'/'.join(parts[k + 2:])}"
            return self._simple(307, {"Location": new}, b"", head)
        repo = fake.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            return self._error(401, "RepoNotFound", "Repository not found", head)
        if repo.gated and not self._authorized():
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                                 f"to it and be authenticated to access it. Please log in.", head)
        commit = repo.refs.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        files = repo.commits[commit]
        if name not in files:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"{revision}\"", head, commit)
        data = files[name]
        f = fake._take_fault("resolve", name)
        if f and isinstance(f["kind"], int):
            h = {"Retry-After": str(f.get("retry_after", 0))} if f["kind"] == 429 else {}
            return self._simple(f["kind"], h, b"server error", head)
        if f and f["kind"] == "stall":
            self._record("stall")
            fake.stop_event.wait(f.get("seconds", 30))
            self.close_connection = True
            return
        if fake.is_lfs(name, data):
            digest = sha256(data)
            loc = f"{fake.cdn}/repos/{digest}?sig={hashlib.md5(commit.encode()).hexdigest()}"
            body = f"Found. Redirecting to {loc}".encode()
            return self._simple(302, {"Location": loc, "X-Repo-Commit": commit, "ETag": f'"{digest}"',
                                      "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data)),
                                      "Content-Type": "text/plain; charset=utf-8"}, body, head)
        self._serve_bytes(data, head, {"X-Repo-Commit": commit, "ETag": f'"{git_sha1(data)}"',
                                       "Content-Type": "text/plain; charset=utf-8"}, None)

    def _cdn(self, path, head):
        fake = self.server.fake
        if not path.startswith("/repos/"):
            return self._simple(404, {}, b"", head)
        digest = path[len("/repos/"):]
        if digest not in fake.blobs:
            return self._simple(404, {}, b"NoSuchKey", head)
        data, name = fake.blobs[digest]
        fault = None if head else fake._take_fault("cdn", name)
        if fault and isinstance(fault["kind"], int):
            h = {"Retry-After": str(fault.get("retry_after", 0))} if fault["kind"] == 429 else {}
            return self._simple(fault["kind"], h, b"<Error>SlowDown</Error>", head)
        self._serve_bytes(data, head, {"ETag": f'"{digest}"', "Content-Type": "binary/octet-stream"}, fault)

    def _serve_bytes(self, data, head, headers, fault):
        total = len(data)
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-") and rng[6:-1].isdigit():
            start = int(rng[6:-1])
            if start >= total and total > 0:
                self._record(416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        if fault and fault["kind"] == "corrupt" and body:
            i = len(body) // 2
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
        entry = self._record(status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        kind = fault["kind"] if fault else None
        cut = len(body)
        if kind in ("drop", "stall"):
            at = fault.get("at", 0.5)
            cut = int(total * at) - start if isinstance(at, float) else int(at) - start
            cut = max(0, min(cut, len(body)))
        rate = fault.get("rate") if kind == "slow" else None
        pos = 0
        try:
            while pos < cut:
                n = min(cut - pos, 16384 if rate is None else max(1, int(rate / 20)))
                self.wfile.write(body[pos:pos + n])
                pos += n
                entry["sent"], entry["t_end"] = pos, time.monotonic()
                if rate is not None:
                    self.wfile.flush()
                    if self.server.fake.stop_event.wait(n / rate):
                        break
            self.wfile.flush()
            if kind == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
            elif kind == "stall":
                self.server.fake.stop_event.wait(fault.get("seconds", 30))
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True


def _serve_folder(folder: str, repo_id: str, rate: float | None) -> None:
    files = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, folder).replace(os.sep, "/")] = f.read()
    hub = FakeHub().start()
    hub.add_repo(repo_id, files)
    if rate:
        for n in files:
            hub.fault(n, "slow", rate=rate, times=None)
    print(hub.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("repo_id")
    ap.add_argument("--rate", type=float, default=None, help="bytes/s per CDN transfer")
    a = ap.parse_args()
    _serve_folder(a.folder, a.repo_id, a.rate)
    sys.exit(0)
