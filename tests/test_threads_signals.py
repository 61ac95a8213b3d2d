"""The forward pass releases the GIL (another Python thread runs meanwhile) and Ctrl-C (SIGINT)
stops a long call with KeyboardInterrupt, leaving the process and the model usable."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import ctxlookup
from ctxlookup.checkpoints import random_checkpoint


def test_gil_is_released_during_forward(tmp_path):
    folder = random_checkpoint(tmp_path / "m", n_layers=6, d_model=256, n_heads=4, d_vocab=500, n_ctx=1024)
    model = ctxlookup.Model.load(folder)
    toks = np.random.default_rng(0).integers(0, 500, (4, 1024))
    t0 = time.perf_counter()
    model(toks)
    one = time.perf_counter() - t0
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    th = threading.Thread(target=ticker)
    th.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max(3 * one, 0.5):
        model(toks)
    done.set()
    th.join()
    gaps = np.diff(ticks)
    # with the GIL held for a whole forward, the ticker would stall for `one` seconds at a time
    assert len(ticks) > 50 and gaps.max() < max(one / 2, 0.05), (len(ticks), gaps.max(), one)


def test_ctrl_c_stops_a_long_forward_cleanly(tmp_path):
    folder = random_checkpoint(tmp_path / "m", n_layers=24, d_model=256, n_heads=4, d_vocab=500, n_ctx=1024)
    code = textwrap.dedent(f"""
        import sys, time, numpy as np, ctxlookup
        m = ctxlookup.Model.load({str(folder)!r})
        toks = np.random.default_rng(0).integers(0, 500, (16, 1024))
        print("ready", flush=True)
        t0 = time.perf_counter()
        try:
            m(toks)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print(f"interrupted after {{time.perf_counter() - t0:.2f}}", flush=True)
        print("still alive", m(toks[:1, :8]).shape, flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ctxlookup.__file__)))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    out = p.stdout.read()  # not communicate(): it reads the raw pipe and loses what readline buffered
    assert p.returncode == 0, out
    assert "interrupted after" in out and "still alive (1, 8, 500)" in out, out
