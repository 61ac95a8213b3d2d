"""LLM client benchmark: throughput at a fixed concurrency, and the requests-per-minute limiter.

1. Throughput: N classification requests (max_tokens=1) against the mock OpenAI server
   (tests/mock_openai.py, run as a separate process) answering after a fixed latency, at a given
   concurrency, with a fresh cache. The ideal wall time is N * latency / concurrency; the target
   is within 1.2x of it. A rerun must be served from the cache with zero requests.
2. Limiter: requests at a configured rpm for a short window; the rate the server saw
   ((n - 1) / (last - first start) * 60) must be within 5 % of the limit, and no 10-second window
   may hold more than limit / 6 + 1 requests.

    python benchmarks/bench_llm.py [--n 2000] [--latency 0.2] [--concurrency 32] [--rpm 600] [--rpm-seconds 20]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MockProcess:
    """tests/mock_openai.py in its own process, so the server does not share the client's GIL."""

    def __init__(self, latency):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "mock_openai.py"), "--latency", str(latency)],
                                     stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError("the mock server did not start")

    def stats(self):
        with urllib.request.urlopen(self.base_url.rsplit("/v1", 1)[0] + "/_stats") as r:
            return json.loads(r.read())

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def throughput(args, tmp):
    from ctxlookup.llm import Client

    srv = MockProcess(args.latency)
    try:
        cache = os.path.join(tmp, "throughput.sqlite3")
        client = Client(model="gpt-4o-mini", base_url=srv.base_url, api_key="sk-bench", cache=cache,
                        concurrency=args.concurrency, progress=False)
        reqs = [[{"role": "system", "content": "Answer yes or no."},
                 {"role": "user", "content": f"Does neuron {i} fire on the token ' the'? Example {i * 7919 % 10007}."}]
                for i in range(args.n)]
        t0 = time.perf_counter()
        res = client.complete_many(reqs, max_tokens=1, temperature=0, stage="classify")
        wall = time.perf_counter() - t0
        errors = sum(r.error is not None for r in res)
        sent = srv.stats()["total"]
        ideal = args.n * args.latency / args.concurrency
        t0 = time.perf_counter()
        res2 = client.complete_many(reqs, max_tokens=1, temperature=0, stage="classify")
        rerun = time.perf_counter() - t0
        sent2 = srv.stats()["total"] - sent
        ok = errors == 0 and sent == args.n and sent2 == 0 and all(r.cached for r in res2) and wall <= 1.2 * ideal
        return {"n": args.n, "latency_s": args.latency, "concurrency": args.concurrency, "wall_s": wall, "ideal_s": ideal,
                "ratio": wall / ideal, "requests_sent": sent, "errors": errors, "max_in_flight": client.last_stats["max_in_flight"],
                "rerun_s": rerun, "rerun_requests": sent2, "pass": ok}
    finally:
        srv.close()


def limiter(args, tmp):
    from ctxlookup.llm import Client

    srv = MockProcess(0.05)
    try:
        n = int(round(args.rpm * args.rpm_seconds / 60)) + 1
        client = Client(model="gpt-4o-mini", base_url=srv.base_url, api_key="sk-bench", cache=os.path.join(tmp, "rpm.sqlite3"),
                        concurrency=32, rpm=args.rpm, progress=False)
        t0 = time.perf_counter()
        res = client.complete_many([f"rpm {i}" for i in range(n)], max_tokens=1)
        wall = time.perf_counter() - t0
        times = sorted(srv.stats()["times"])
        rate = (len(times) - 1) / (times[-1] - times[0]) * 60
        win, j, worst = 10.0, 0, 0
        for i in range(len(times)):
            while times[i] - times[j] >= win:
                j += 1
            worst = max(worst, i - j + 1)
        allowed = args.rpm * win / 60 + 1
        ok = abs(rate / args.rpm - 1) <= 0.05 and worst <= allowed and all(r.ok for r in res)
        return {"rpm": args.rpm, "requests": n, "wall_s": wall, "measured_rpm": rate, "error_pct": 100 * (rate / args.rpm - 1),
                "max_in_10s": worst, "allowed_in_10s": allowed, "pass": ok}
    finally:
        srv.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rpm", type=float, default=600)
    ap.add_argument("--rpm-seconds", type=float, default=20)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = throughput(args, tmp)
        print(f"throughput: {t['n']} requests, latency {t['latency_s']} s, concurrency {t['concurrency']}: "
              f"wall {t['wall_s']:.2f} s vs ideal {t['ideal_s']:.2f} s = {t['ratio']:.3f}x (target <= 1.2x); "
              f"{t['requests_sent']} sent, {t['errors']} errors, max in flight {t['max_in_flight']}; "
              f"rerun {t['rerun_s']:.2f} s with {t['rerun_requests']} requests -> {'PASS' if t['pass'] else 'FAIL'}")
        lim = limiter(args, tmp)
        print(f"limiter: rpm {lim['rpm']:.0f}, {lim['requests']} requests in {lim['wall_s']:.2f} s: measured "
              f"{lim['measured_rpm']:.1f} rpm ({lim['error_pct']:+.2f} %, target within 5 %); busiest 10 s window "
              f"{lim['max_in_10s']} requests (allowed {lim['allowed_in_10s']:.0f}) -> {'PASS' if lim['pass'] else 'FAIL'}")
    print(json.dumps({"throughput": t, "limiter": lim}))
    sys.exit(0 if t["pass"] and lim["pass"] else 1)


if __name__ == "__main__":
    main()
