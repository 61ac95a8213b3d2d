"""ctxlookup.distributed: the Dask engine gives tables identical to the in-process pass (Neuroscope
and replicate's scan), survives a killed worker, resumes after a killed driver, never merges a
shard twice, and names the worker, shard and file when something is wrong."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest



import ctxlookup
from ctxlookup import distributed
from ctxlookup.corpus import Corpus
from ctxlookup.neuroscope import TABLES, neuroscope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = dict(layers=[0, 1], k=5, bins=16, samples=2, batch_tokens=2048, site=False, progress=False, threads=1)
N_DOCS = 60


def demo_corpus():
    c = Corpus.demo("train")
    c.limit = N_DOCS
    return c


def same_tables(a, b):
    for t in TABLES:
        pd.testing.assert_frame_equal(a[t], b[t], check_exact=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return neuroscope("demo", demo_corpus(), out=str(out / "atlas"), shard_docs=30, **KW)


@pytest.fixture(scope="module")
def cluster():
    client, close = distributed.cluster(workers=2)
    yield client
    close()


def test_two_local_workers_identical_to_in_process(reference, tmp_path):
    got = neuroscope("demo", demo_corpus(), out=str(tmp_path / "a"), shard_docs=15, workers=2, **KW)
    assert got.manifest["scan"]["engine"] == "LocalCluster(2)" and got.manifest["scan"]["scanned_shards"] >= 3
    same_tables(got, reference)


def test_replicate_scan_on_cluster_identical(cluster, tmp_path):
    from ctxlookup.replicate import Options
    from ctxlookup.scan import max_activating_histograms

    model = ctxlookup.Model.from_pretrained("demo", fold_ln=True, center_writing_weights=True, center_unembed=True,
                                            fold_value_biases=True)
    neurons = [(0, n) for n in range(0, 1024, 41)] + [(1, n) for n in range(3, 1024, 53)]
    before = ctxlookup.get_num_threads()
    ctxlookup.set_num_threads(1)
    try:
        local, lviews = max_activating_histograms(model, neurons, demo_corpus(), k=6, batch_tokens=2048, progress=False)
    finally:
        ctxlookup.set_num_threads(before)
    remote, rviews = max_activating_histograms(model, neurons, demo_corpus(), k=6, batch_tokens=2048, progress=False,
                                               scheduler=cluster.scheduler.address, threads=1, shard_docs=20,
                                               checkpoint=str(tmp_path / "scan.ckpt.npz"))
    pd.testing.assert_frame_equal(remote, local, check_exact=True)
    for name in ("histograms", "quantile_examples"):  # the scopes' states merged across shards
        assert len(lviews[name]) > 0
        pd.testing.assert_frame_equal(rviews[name], lviews[name], check_exact=True)
    assert {k: v for k, v in remote.attrs.items() if k != "shards"} == local.attrs
    assert remote.attrs["shards"]["scanned_shards"] == len(os.listdir(tmp_path / "scan.ckpt.npz.shards"))
    # replicate passes --workers/--scheduler through; they do not change the run's key
    assert Options(workers=2).key() == Options().key() == Options(scheduler="tcp://x:1").key()


def test_killed_worker_still_identical(reference, cluster, tmp_path):
    out = tmp_path / "k"
    result = {}

    def run():
        try:
            result["atlas"] = neuroscope("demo", demo_corpus(), out=str(out), shard_docs=4,
                                         scheduler=cluster.scheduler.address, **KW)
        except BaseException as e:  # pragma: no cover - reported below
            result["error"] = e

    pids = cluster.run(os.getpid)
    th = threading.Thread(target=run)
    th.start()
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline and th.is_alive():
        busy = [w for w, keys in cluster.processing().items() if keys and w in pids]
        recorded = os.path.isdir(out / "shards") and any(f.endswith(".npz") and "incomplete" not in f
                                                         for f in os.listdir(out / "shards"))
        if busy and recorded:
            victim = busy[0]
            os.kill(pids[victim], signal.SIGKILL)  # mid-task: it is processing a shard
        time.sleep(0.02)
    th.join(300)
    assert victim is not None, "the run ended before a worker could be killed"
    assert "error" not in result, result.get("error")
    same_tables(result["atlas"], reference)
    assert result["atlas"].manifest["scan"]["shards"] == len(result["atlas"].manifest["shards"])


def test_killed_driver_resumes_from_recorded_shards(reference, tmp_path):
    out = tmp_path / "d"
    code = ("from ctxlookup.cli import main; main(['neuroscope', '--out', %r, '--max-docs', '%d', '--layers', '0,1', "
            "'--k', '5', '--bins', '16', '--samples', '2', '--batch-tokens', '2048', '--shard-docs', '4', "
            "'--threads', '1', '--no-site', '--no-progress'])" % (str(out), N_DOCS))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    shards = out / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len([f for f in os.listdir(shards) if "incomplete" not in f]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    recorded = len([f for f in os.listdir(shards) if "incomplete" not in f])
    got = neuroscope("demo", demo_corpus(), out=str(out), shard_docs=4, **KW)
    sc = got.manifest["scan"]
    assert sc["reused_shards"] == recorded >= 2 and sc["scanned_shards"] == sc["shards"] - recorded
    same_tables(got, reference)


def test_no_shard_merged_twice_or_dropped():
    a = dict(state={}, meta={}, shards=[0, 1])
    b = dict(state={}, meta={}, shards=[1, 2])
    with pytest.raises(distributed.ShardError, match=r"shards \[1\] would be merged twice"):
        distributed.merge_parts(lambda x, y: dict(meta={}), a, b)


def test_unreachable_scheduler_is_named():
    t0 = time.time()
    with pytest.raises(ConnectionError, match=r"tcp://127\.0\.0\.1:9 "):
        distributed.cluster(scheduler="tcp://127.0.0.1:9", timeout=2)
    assert time.time() - t0 < 30


def test_worker_that_cannot_open_the_model_is_named(cluster, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(ctxlookup.model.demo_model_path("demo"), folder)
    model = ctxlookup.Model.load(str(folder))
    shutil.rmtree(folder)  # the driver holds it mapped; workers cannot open it
    with pytest.raises(distributed.ShardError) as e:
        neuroscope(model, demo_corpus(), out=str(tmp_path / "m"), shard_docs=30,
                   scheduler=cluster.scheduler.address, **KW)
    msg = str(e.value)
    assert "worker tcp://" in msg and "shard " in msg and str(folder) in msg and "cannot open the model" in msg


def test_corpus_that_fails_to_decode_is_named(cluster, tmp_path):
    good = tmp_path / "good.jsonl"
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": d.text}) for d in demo_corpus()]
    good.write_text("\n".join(lines) + "\n")
    bad.write_text("\n".join(lines[:40] + ['{"text": "cut'] + lines[41:]) + "\n")
    # on the driver: the plan's pass names the file and line, and nothing is recorded
    with pytest.raises(ctxlookup.corpus.CorpusError, match=r"bad\.jsonl:41: not valid JSON"):
        neuroscope("demo", str(bad), out=str(tmp_path / "c"), **KW)
    assert not os.path.exists(tmp_path / "c" / "shards") or not os.listdir(tmp_path / "c" / "shards")
    # on a worker (its copy of the corpus differs from the driver's): worker, shard and file named
    model = ctxlookup.Model.from_pretrained("demo")
    shards = distributed.plan_shards(Corpus(str(good)), 2048, 256, 20)
    spec = dict(model_path=model.path, model_flags={}, layers=[0], d_mlp=1024, k=2, bins=16, samples=1,
                prepend_bos=True, max_tokens=256, corpus=distributed.corpus_spec(Corpus(str(bad))))
    from ctxlookup.neuroscope import _Merge, _scan_task

    with pytest.raises(distributed.ShardError) as e:
        distributed.run_shards(_scan_task, _Merge(spec), spec, shards, str(tmp_path / "rec"), "p",
                               scheduler=cluster.scheduler.address, threads=1, progress=False)
    msg = str(e.value)
    assert "worker tcp://" in msg and "shard " in msg and str(bad) in msg and ":41: not valid JSON" in msg
