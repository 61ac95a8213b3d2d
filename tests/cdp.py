"""A small headless-Chromium driver over the Chrome DevTools Protocol (websocket-client only).

``Browser()`` starts ``chromium --headless=new --remote-debugging-port=0`` with a fresh profile,
reads the port it chose from ``DevToolsActivePort`` and attaches to its page. ``open(url)``
navigates and waits for the load event; every console error, uncaught exception, failed request
and JavaScript dialog seen since is in ``problems()``. ``eval(js)`` returns a JSON value;
``screenshot()`` returns PNG bytes.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Browser:
    def __init__(self, exe=None, width=1280, height=1600, timeout=60.0):
        import websocket  # websocket-client

        self.exe = exe or find_chromium()
        if self.exe is None:
            raise FileNotFoundError("no chromium on PATH")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="ctxlookup-chromium-")
        args = [self.exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                "--mute-audio", "--hide-scrollbars", f"--window-size={width},{height}",
                "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                "about:blank"]
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        t0 = time.time()
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if self.proc.poll() is not None or time.time() - t0 > timeout:
                self.close()
                raise RuntimeError(f"chromium did not start: {self.chromium_log()[-2000:]}")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        ws_url = None
        while ws_url is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.loads(r.read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                ws_url = pages[0]["webSocketDebuggerUrl"]
            elif time.time() - t0 > timeout:
                raise RuntimeError("chromium has no page target")
            else:
                time.sleep(0.1)
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._id = 0
        self.events = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    # ------------------------------------------------------------------ protocol
    def send(self, method, **params):
        self._id += 1
        mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(method)

    def wait_event(self, method, since=0, timeout=None):
        deadline = time.time() + (timeout or self.timeout)
        while True:
            for ev in self.events[since:]:
                if ev["method"] == method:
                    return ev
            if time.time() > deadline:
                raise TimeoutError(f"no {method} event")
            import websocket

            self.ws.settimeout(max(0.05, deadline - time.time()))
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            finally:
                self.ws.settimeout(self.timeout)
            if "method" in msg:
                self.events.append(msg)

    # ------------------------------------------------------------------ pages
    def open(self, url):
        """Navigate and wait for the load event (plus a moment for late console messages)."""
        mark = len(self.events)
        res = self.send("Page.navigate", url=url)
        if res.get("errorText"):
            raise RuntimeError(f"navigating to {url}: {res['errorText']}")
        self.wait_event("Page.loadEventFired", since=mark)
        self.eval("1")  # drain events that arrived with the load
        return mark

    def wait_navigation(self, since):
        self.wait_event("Page.loadEventFired", since=since)
        self.eval("1")

    def eval(self, expression):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}...: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def screenshot(self):
        return base64.b64decode(self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"])

    def problems(self, since=0):
        """Console errors, exceptions, failed requests and dialogs among the events since ``since``."""
        out = []
        for ev in self.events[since:]:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails', {}).get('text')} "
                           f"{p.get('exceptionDetails', {}).get('exception', {}).get('description', '')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
            elif m == "Network.responseReceived" and p.get("response", {}).get("status", 200) >= 400:
                out.append(f"HTTP {p['response']['status']}: {p['response'].get('url')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def requests(self, since=0):
        return [ev["params"]["request"]["url"] for ev in self.events[since:] if ev["method"] == "Network.requestWillBeSent"]

    def chromium_log(self):
        try:
            with open(os.path.join(self.profile, "chromium.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self):
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
