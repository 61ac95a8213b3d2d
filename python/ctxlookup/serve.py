"""``ctxlookup serve DIR``: a run's report (or any folder of HTML pages made from a run, such as a
neuroscope atlas) on http://127.0.0.1, with a live panel on every neuron page and neuron-head page
where a user types a text and sees the neuron and its heads on it.

Built on Starlette and uvicorn (``pip install 'ctxlookup[serve]'``). The run's model is loaded
once (:class:`ctxlookup.live.LiveEngine`); requests run in a thread pool and the forward passes in
the C core with the GIL released, so static pages keep being served during a pass.

``DIR`` is a run directory (its ``report/`` folder, written by ``ctxlookup report RUN_DIR``, is
served) or a folder of HTML pages (then ``--run RUN_DIR`` names the run, unless ``DIR``'s parent
is one). Every ``.html`` page is served with ``/_live/live.css`` and ``/_live/live.js`` added
before ``</body>``; the script finds the page's neuron (and head) from ``<body data-layer
data-neuron [data-head-layer data-head]>`` or, failing that, from the file name
(``L{layer}N{neuron}.html``, ``L{layer}N{neuron}_L{head_layer}H{head}.html``).

The JSON API (POST bodies are JSON objects of at most :data:`MAX_BODY` bytes; 413 beyond):

- ``GET /api/info[?layer=&neuron=[&head_layer=&head=]]``: limits, the protocol's rules, the
  explainer; the neuron's token and top example; the head's stored explanation;
- ``POST /api/neuron {layer, neuron, text[, position]}``: :meth:`LiveEngine.neuron`;
- ``POST /api/compare {layer, neuron, text_a, text_b}``: :meth:`LiveEngine.compare`;
- ``POST /api/classify {layer, neuron, head_layer, head, text[, position]}``: :meth:`LiveEngine.classify`.

Errors are ``{"error": message}`` with status 400 (bad JSON, invalid UTF-8, empty or whitespace
text, a malformed field), 404 (a neuron or head that does not exist, no explanation), 413 (too
large), 502 (the explainer failed); the server keeps serving after any of them.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
from typing import Optional, Tuple

from .live import LiveEngine, LiveError

__all__ = ["create_app", "resolve_dirs", "start", "add_cli", "MAX_BODY"]

MAX_BODY = 256 * 1024            # bytes of a request body
_DRAIN = 16 * 1024 * 1024        # a larger body is read (and dropped) up to this, then the connection closes
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_static")
INJECT = ('<link rel="stylesheet" href="/_live/live.css">'
          '<script src="/_live/live.js" defer></script>')


def resolve_dirs(directory: str, run: Optional[str] = None) -> Tuple[str, str]:
    """``(site folder, run directory)`` for ``ctxlookup serve DIR [--run RUN]``."""
    d = os.path.abspath(directory)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"{directory}: no such folder")
    if os.path.exists(os.path.join(d, "manifest.json")):
        site = os.path.join(d, "report")
        if not os.path.isfile(os.path.join(site, "index.html")):
            raise FileNotFoundError(f"{directory} is a run directory without a report; write it with "
                                    f"'ctxlookup report {directory}' first")
        return site, run and os.path.abspath(run) or d
    if run is None:
        parent = os.path.dirname(d)
        if os.path.exists(os.path.join(parent, "manifest.json")):
            return d, parent
        raise FileNotFoundError(f"{directory} is not a run directory (no manifest.json) and its parent is not "
                                f"either; name the run with --run RUN_DIR")
    if not os.path.exists(os.path.join(run, "manifest.json")):
        raise FileNotFoundError(f"--run {run} is not a run directory (no manifest.json)")
    return d, os.path.abspath(run)


def _inject(page: bytes) -> bytes:
    i = page.lower().rfind(b"</body>")
    tag = INJECT.encode()
    return page[:i] + tag + page[i:] if i >= 0 else page + tag


def create_app(site: str, engine: LiveEngine, max_body: int = MAX_BODY):
    """The Starlette application: ``site``'s files (HTML with the live panel) and the JSON API."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    site = os.path.realpath(site)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def body_of(request: Request) -> dict:
        cl = request.headers.get("content-length")
        if cl is not None and cl.strip().isdigit() and int(cl) > _DRAIN:
            raise LiveError(413, f"the request is {int(cl)} bytes; the limit is {max_body} bytes")
        chunks, n = [], 0
        async for c in request.stream():
            n += len(c)
            if n <= max_body:
                chunks.append(c)
            elif n > _DRAIN:
                break
        if n > max_body:
            raise LiveError(413, f"the request is {n} bytes{' or more' if n > _DRAIN else ''}; the limit is "
                                 f"{max_body} bytes ({max_body // 1024} KB): shorten the text (the model reads only "
                                 f"its first {engine.cfg.n_ctx} tokens)")
        raw = b"".join(chunks)
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LiveError(400, f"the request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset "
                                 f"{e.start})") from None
        try:
            obj = json.loads(s) if s.strip() else None
        except ValueError as e:
            raise LiveError(400, f"the request body is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise LiveError(400, "the request body must be a JSON object, e.g. "
                                 '{"layer": 3, "neuron": 43, "text": "..."}')
        return obj

    def need(obj: dict, *names: str) -> list:
        missing = [n for n in names if n not in obj or obj[n] is None]
        if missing:
            raise LiveError(400, f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
        return [obj[n] for n in names]

    def api(fn):
        async def endpoint(request: Request):
            try:
                return JSONResponse(await fn(request))
            except LiveError as e:
                return error(e.status, str(e))
        return endpoint

    @api
    async def info(request: Request):
        q = request.query_params
        args = [q.get(k) for k in ("layer", "neuron", "head_layer", "head")]
        return await run_in_threadpool(engine.info, *args)

    @api
    async def neuron(request: Request):
        obj = await body_of(request)
        layer, n, text = need(obj, "layer", "neuron", "text")
        return await run_in_threadpool(engine.neuron, layer, n, text, obj.get("position"))

    @api
    async def compare(request: Request):
        obj = await body_of(request)
        return await run_in_threadpool(engine.compare, *need(obj, "layer", "neuron", "text_a", "text_b"))

    @api
    async def classify(request: Request):
        obj = await body_of(request)
        args = need(obj, "layer", "neuron", "head_layer", "head", "text")
        return await run_in_threadpool(engine.classify, *args, obj.get("position"))

    async def page(request: Request):
        rel = request.path_params.get("path", "")
        p = os.path.realpath(os.path.join(site, rel))
        if p != site and not p.startswith(site + os.sep):
            return error(404, f"/{rel}: not found")
        if os.path.isdir(p):
            if rel and not rel.endswith("/"):
                return RedirectResponse(request.url.path + "/")
            p = os.path.join(p, "index.html")
        if not os.path.isfile(p):
            return Response(f"/{rel}: not found", status_code=404, media_type="text/plain")
        if p.endswith((".html", ".htm")):
            with open(p, "rb") as f:
                return Response(_inject(f.read()), media_type="text/html; charset=utf-8",
                                headers={"Cache-Control": "no-cache"})
        return FileResponse(p)

    posts = {"/api/neuron", "/api/compare", "/api/classify"}

    async def api_other(request: Request):
        path = request.url.path.rstrip("/")
        if path in posts:
            return error(405, f"{request.method} {path}: use POST with a JSON body")
        if path == "/api/info":
            return error(405, f"{request.method} {path}: use GET")
        return error(404, f"{path}: no such API endpoint (there are /api/info, {', '.join(sorted(posts))})")

    async def not_allowed(request: Request, exc: HTTPException):
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def crashed(request: Request, exc: Exception):  # a bug, not bad input: say so, keep serving
        return error(500, f"internal error ({type(exc).__name__}: {exc})")

    routes = [
        Route("/api/info", info, methods=["GET"]),
        Route("/api/neuron", neuron, methods=["POST"]),
        Route("/api/compare", compare, methods=["POST"]),
        Route("/api/classify", classify, methods=["POST"]),
        Route("/api/{rest:path}", api_other, methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]),
        Mount("/_live", app=StaticFiles(directory=STATIC), name="live"),
        Route("/{path:path}", page, methods=["GET", "HEAD"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_allowed, Exception: crashed})


class Server:
    """A running server (:func:`start`): ``url``, and :meth:`stop`."""

    def __init__(self, server, thread: threading.Thread, url: str):
        self._server, self._thread, self.url = server, thread, url

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)


def _bind(host: str, port: int):
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the server accepts them
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    return sock


def _url(host: str, sock) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"


def start(site: str, engine: LiveEngine, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Server:
    """Serve in a background thread (``port=0``: a free port); returns once it accepts connections."""
    import time

    import uvicorn

    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(site, engine), log_level=log_level, lifespan="off"))
    t = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True, name="ctxlookup-serve")
    t.start()
    t0 = time.time()
    while not server.started:
        if not t.is_alive() or time.time() - t0 > 30:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    return Server(server, t, _url(host, sock))


# =============================================================================== CLI
def add_cli(sub) -> None:
    """Add ``ctxlookup serve`` to the CLI's subcommands."""
    p = sub.add_parser("serve", help="serve a run's report with a live panel: type a text, watch a neuron and its heads",
                       description="Serve a run's report (or a folder of pages made from a run) on 127.0.0.1 with a "
                                   "live panel on every neuron and neuron-head page: type a text and see the neuron's "
                                   "activation on each token, its token's probability, and the heads' attribution. "
                                   "Needs the serve extra: pip install 'ctxlookup[serve]'.")
    p.add_argument("dir", metavar="DIR", help="a run directory (serves RUN_DIR/report) or a folder of HTML pages")
    p.add_argument("--run", help="the run directory, when DIR is a folder of pages (default: DIR's parent, if it is a run "
                                        "directory)")
    p.add_argument("--port", type=int, default=8000, help="the port (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (keep 127.0.0.1 unless you "
                                                       "mean to expose the model to the network)")
    p.add_argument("--model", help="the model folder, if it moved since the run (default: the manifest's)")
    p.add_argument("--explainer", choices=["offline", "openai", "none"],
                   help="who classifies typed texts against a head's explanation (default: the run's --explainer)")
    p.add_argument("--threads", type=int, help="threads per forward pass (default: the core's, one per CPU; on a "
                                               "machine busy with other work, 1 answers faster)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error (default: a one-line message)")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ValueError(f"ctxlookup serve needs Starlette and uvicorn ({e}); install them with "
                         f"pip install 'ctxlookup[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port (0 to 65535)")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: must be >= 1")
        from . import set_num_threads

        set_num_threads(args.threads)
    site, run = resolve_dirs(args.dir, args.run)
    engine = LiveEngine(run, model=args.model, explainer=args.explainer)
    sock = _bind(args.host, args.port)
    server = uvicorn.Server(uvicorn.Config(create_app(site, engine), log_level="warning", lifespan="off"))
    print(f"serving {site} with the live panel (run {run}, model {engine.model.path})")
    print(f"open {_url(args.host, sock)}/  (Ctrl-C stops)", flush=True)
    server.run(sockets=[sock])
    return 0
