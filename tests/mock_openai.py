"""A mock OpenAI-compatible chat-completion server for tests and benchmarks (real HTTP on 127.0.0.1).

It answers ``POST .../chat/completions`` (any path prefix, any query string, so Azure-style URLs
work) deterministically from the messages: :func:`mock_answer` and :func:`mock_usage` say what
it returns, so a test can check every answer. It counts everything: requests per prompt, status
codes sent, start times, tokens served.

Faults are asked for in the prompt text (the last message), so each request can get its own::

    [fault 429 x2 ra=1]      the first 2 attempts get 429 with "Retry-After: 1"
    [fault 429 x1 ra_ms=300] ... with "retry-after-ms: 300"
    [fault 500 x2]           the first 2 attempts get 500 (any 4xx/5xx code works the same way)
    [fault stall x1 s=3]     the first attempt waits 3 s before answering (past a client timeout)
    [fault malformed x1]     the first attempt gets 200 with a truncated JSON body
    [fault reset x1]         the first attempt gets the start of a response, then a TCP reset
    [fault drop x1]          the first attempt's connection is reset (RST) before any byte is sent
                             (libcurl itself retries this once on a reused connection)
    [fault 400]              every attempt gets 400 with an OpenAI-style error object (no "xN": always)
    [fault echoauth]         every attempt gets 401 whose error message quotes the Authorization header
    [fault surrogate]        the answer ends with a lone UTF-16 surrogate escape ("\\ud83d", half an emoji),
                             valid JSON that a model can send

Server-wide settings: ``latency`` (seconds before each answer), ``burst=(n, window_s)`` (more than
n requests within window_s seconds get 429 with ``Retry-After: burst_retry_after``), ``api_key``
(requests without ``Authorization: Bearer <key>`` or ``api-key: <key>`` get 401).

In a test::

    with MockOpenAI(latency=0.01) as srv:
        client = Client(model="gpt-4o-mini", base_url=srv.base_url, api_key="sk-test")
        ...
        assert srv.count("prompt text") == 1

As a process (benchmarks)::

    python tests/mock_openai.py --latency 0.2   # prints "http://127.0.0.1:PORT/v1", serves until killed

and ``GET /_stats`` returns the counters as JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["MockOpenAI", "mock_answer", "mock_usage", "prompt_of"]

_FAULT = re.compile(r"\[fault (\w+)(?: x(\d+))?((?: \w+=[\d.]+)*)\]")


def prompt_of(messages) -> str:
    """The text the server keys everything on: the last message's content."""
    return messages[-1]["content"]


def mock_answer(messages, max_tokens=None) -> str:
    """The content the mock returns: "Yes"/"No" (as GPT-4 answers) when max_tokens == 1 (a classification), else a
    short deterministic string derived from all message contents."""
    h = hashlib.sha256("\x1e".join(m["role"] + "\x1f" + m["content"] for m in messages).encode()).hexdigest()
    if max_tokens == 1:
        return "Yes" if int(h[0], 16) % 2 == 0 else "No"
    return f"answer {h[:12]}"


def mock_usage(messages, max_tokens=None) -> dict:
    """The usage the mock reports: prompt = ceil(chars / 4) + 4 per message; completion = 1 for
    max_tokens == 1, else 3."""
    chars = sum(len(m["content"]) for m in messages)
    prompt = -(-chars // 4) + 4 * len(messages)
    completion = 1 if max_tokens == 1 else 3
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    wbufsize = -1  # headers and body leave in one write (flushed in _send)
    server: "_Server"

    def setup(self):
        super().setup()
        # no Nagle delay on small writes, as real servers do (else ~40 ms per response with delayed ACKs)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body: bytes, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _error(self, status, message, type_="invalid_request_error", code=None, headers=()):
        body = json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()
        self._send(status, body, headers)

    def do_GET(self):
        if self.path.startswith("/_stats"):
            self._send(200, json.dumps(self.server.mock.stats()).encode())
        else:
            self._error(404, "not found")

    def do_POST(self):
        mock = self.server.mock
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        path = self.path.split("?", 1)[0]
        if not path.endswith("/chat/completions"):
            self._error(404, f"unknown path {path}")
            return
        t = time.time()
        try:
            req = json.loads(raw)
            messages = req["messages"]
            prompt = prompt_of(messages)
        except (ValueError, KeyError, IndexError, TypeError):
            self._error(400, "could not parse the request body")
            return
        auth = self.headers.get("Authorization") or ""
        apikey_hdr = self.headers.get("api-key") or ""
        with mock.lock:
            attempt = mock._by_prompt[prompt] + 1
            mock._by_prompt[prompt] = attempt
            mock._requests.append({"t": t, "prompt": prompt, "path": self.path, "attempt": attempt,
                                   "auth": auth, "api_key_header": apikey_hdr, "body": req})
            burst_hit = False
            if mock.burst:
                limit, window = mock.burst
                q = mock._recent
                while q and q[0] < t - window:
                    q.popleft()
                if len(q) >= limit:
                    burst_hit = True
                else:
                    q.append(t)
        if mock.api_key is not None and auth != f"Bearer {mock.api_key}" and apikey_hdr != mock.api_key:
            return self._reply_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if burst_hit:
            return self._reply_error(429, "Rate limit reached for requests (mock burst limit).", "requests",
                                     "rate_limit_exceeded", [("Retry-After", str(mock.burst_retry_after))])
        for m in _FAULT.finditer(prompt):
            kind, times, args = m.group(1), m.group(2), dict(a.split("=") for a in m.group(3).split())
            if times is not None and attempt > int(times):
                continue
            if kind in ("reset", "drop"):
                mock._count_status(kind)
                try:
                    if kind == "reset":  # a response cut short: headers and a few bytes, then RST
                        self.connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                                b"Content-Length: 400\r\n\r\n{\"id\": ")
                        time.sleep(0.02)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                except OSError:
                    pass
                finally:
                    self.close_connection = True
                    self.wfile = _Sink()
                return
            if kind == "stall":
                time.sleep(float(args.get("s", 5)))
                break  # then answer normally (the client has usually given up)
            if kind == "malformed":
                mock._count_status(200)
                self._send(200, b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess')
                return
            if kind == "echoauth":
                return self._reply_error(401, f"Incorrect API key provided: {auth!r} ({apikey_hdr!r}).",
                                         "invalid_request_error", "invalid_api_key")
            if kind.isdigit():
                status = int(kind)
                headers = []
                if "ra" in args:
                    headers.append(("Retry-After", args["ra"]))
                if "ra_ms" in args:
                    headers.append(("retry-after-ms", args["ra_ms"]))
                typ = "requests" if status == 429 else ("server_error" if status >= 500 else "invalid_request_error")
                return self._reply_error(status, f"mock fault {status} on attempt {attempt}", typ, f"mock_{status}", headers)
        if mock.latency:
            time.sleep(mock.latency)
        max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
        content = mock_answer(messages, max_tokens)
        if "[fault surrogate]" in prompt:
            content += "\ud83d"  # json.dumps writes it as the escape "\\ud83d"
        usage = mock_usage(messages, max_tokens)
        body = {"id": f"chatcmpl-{attempt}", "object": "chat.completion", "created": int(t), "model": req.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "length" if max_tokens == 1 else "stop"}],
                "usage": usage}
        with mock.lock:
            mock._served[prompt] += 1
            mock._tokens["prompt_tokens"] += usage["prompt_tokens"]
            mock._tokens["completion_tokens"] += usage["completion_tokens"]
        mock._count_status(200)
        self._send(200, json.dumps(body).encode())

    def _reply_error(self, status, message, type_, code, headers=()):
        self.server.mock._count_status(status)
        self._error(status, message, type_, code, headers)


class _Sink:
    """Stands in for the write side of a connection that was reset on purpose."""

    closed = False

    def write(self, b):
        return len(b)

    def flush(self):
        pass

    def close(self):
        self.closed = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a client that went away is not news
        pass


class MockOpenAI:
    """The mock server, in a background thread of this process. See the module docstring."""

    def __init__(self, latency: float = 0.0, burst=None, burst_retry_after: float = 1, api_key=None,
                 host: str = "127.0.0.1", port: int = 0):
        self.latency = latency
        self.burst = burst
        self.burst_retry_after = burst_retry_after
        self.api_key = api_key
        self.lock = threading.Lock()
        self._by_prompt: Counter = Counter()
        self._served: Counter = Counter()
        self._status: Counter = Counter()
        self._tokens: Counter = Counter()
        self._requests: list = []
        self._recent: deque = deque()
        self._srv = _Server((host, port), _Handler)
        self._srv.mock = self
        self._thread = None

    @property
    def base_url(self) -> str:
        host, port = self._srv.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "MockOpenAI":
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _count_status(self, status) -> None:
        with self.lock:
            self._status[str(status)] += 1

    # ---- what happened ----
    def count(self, prompt: str) -> int:
        """Requests received whose last message was `prompt` (every attempt counts)."""
        with self.lock:
            return self._by_prompt[prompt]

    def served(self, prompt: str) -> int:
        """Successful (200, well-formed) answers sent for `prompt`."""
        with self.lock:
            return self._served[prompt]

    @property
    def total(self) -> int:
        with self.lock:
            return len(self._requests)

    @property
    def requests(self) -> list:
        """Every request received: dicts with t (time.time()), prompt, path, attempt, auth, body."""
        with self.lock:
            return list(self._requests)

    def reset(self) -> None:
        with self.lock:
            self._by_prompt.clear()
            self._served.clear()
            self._status.clear()
            self._tokens.clear()
            self._requests.clear()
            self._recent.clear()

    def stats(self) -> dict:
        with self.lock:
            return {"total": len(self._requests), "status": dict(self._status), "tokens": dict(self._tokens),
                    "served": sum(self._served.values()), "distinct_prompts": len(self._by_prompt),
                    "times": [r["t"] for r in self._requests]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    a = ap.parse_args(argv)
    srv = MockOpenAI(latency=a.latency, host=a.host, port=a.port)
    print(srv.base_url, flush=True)
    try:
        srv._srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
