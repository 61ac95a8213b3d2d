"""Hub downloads (ctxlookup.hub, the C core's _hub_fetch) against a real HTTP stand-in of the Hub.

tests/fake_hub.py serves, on 127.0.0.1, the endpoints the Hub serves for files (HEAD / GET
/{repo}/resolve/{revision}/{file}, LFS files redirected to a second server playing the CDN, with
X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size, Content-Range and the Hub's X-Error-Code), and
a small random checkpoint written here. Checked: the exact huggingface_hub cache layout, both
ways (huggingface_hub and transformers load offline what ctxlookup downloaded; ctxlookup loads,
with no request at all, what huggingface_hub downloaded, also under a renamed repository's old
id); offline-first and HF_HUB_OFFLINE; faults: a connection dropped half-way (the retry asks
for Range from that byte offset), 500 and 429 then success, a wrong hash (an error, nothing
corrupt left), a bad partial file left by an earlier run, a stall (timeout, then resume);
errors that say what to do (not found, gated / private with HF_TOKEN, revision, pytorch-only,
no network, disk full); Ctrl-C in a subprocess then a resumed rerun; the GIL released while
downloading; sharded checkpoints fetched in parallel.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import ctxlookup
from ctxlookup import _core, hub
from ctxlookup.checkpoints import random_checkpoint, save_safetensors
from ctxlookup.model import Model

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SHARED  # noqa: E402
from fake_hub import FakeHub, git_sha1, sha256  # noqa: E402

REPO = "org/tiny"
FAST = dict(backoff=0.01, stall_timeout=1.0, timeout=3.0, progress=False)
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ctxlookup.__file__)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The served files: a random GPT-2 (about 500 kB of safetensors) with GPT-2's tokenizer files."""
    folder = tmp_path_factory.mktemp("tiny")
    random_checkpoint(folder, arch="gpt2", n_layers=2, d_model=64, n_heads=4, d_vocab=256, n_ctx=128, seed=1)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED / "data" / "tokenizers" / "gpt2" / f, folder)
    files = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    return str(folder), files


@pytest.fixture(scope="module")
def sharded(ckpt, tmp_path_factory):
    """The same weights in two shards with model.safetensors.index.json."""
    from safetensors.numpy import load_file

    folder = tmp_path_factory.mktemp("tiny-sharded")

    tensors = load_file(os.path.join(ckpt[0], "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    wm = {}
    for k, part in enumerate((names[:half], names[half:])):
        fn = f"model-{k + 1:05d}-of-00002.safetensors"
        save_safetensors(folder / fn, {n: tensors[n] for n in part}, {"format": "pt"})
        wm.update({n: fn for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    shutil.copy(os.path.join(ckpt[0], "config.json"), folder)
    return {n: (folder / n).read_bytes() for n in os.listdir(folder)}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private HF_HOME / HF_HUB_CACHE, no token, online."""
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
              "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return tmp_path / "cache"


@pytest.fixture
def fake(ckpt, env, monkeypatch):
    with FakeHub(token="hf_secret_token_123") as h:
        h.commit = h.add_repo(REPO, ckpt[1])
        monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
        yield h


def storage(cache, repo=REPO):
    return os.path.join(cache, "models--" + repo.replace("/", "--"))


def etag_of(name, data):
    return sha256(data) if name.endswith(".safetensors") else git_sha1(data)


def check_layout(cache, repo, commit, files, revision="main"):
    """The huggingface_hub layout: refs/<rev> = commit, blobs/<etag> = the bytes, snapshot entries
    are relative symlinks to them, nothing half-written left."""
    st = storage(cache, repo)
    if revision != commit:
        with open(os.path.join(st, "refs", revision)) as f:
            assert f.read() == commit
    snap = os.path.join(st, "snapshots", commit)
    for name, data in files.items():
        p = os.path.join(snap, name)
        assert os.path.islink(p), p
        target = os.readlink(p)
        assert target == os.path.join("..", "..", "blobs", etag_of(name, data)), target
        with open(p, "rb") as f:
            assert f.read() == data, name
    assert not [n for n in os.listdir(os.path.join(st, "blobs")) if n.endswith(".incomplete")]


# ---------------------------------------------------------------------------------------------- basics

def test_download_layout_load_and_offline_first(fake, ckpt, env):
    folder = hub.download(REPO, **FAST)
    assert folder == os.path.join(storage(env), "snapshots", fake.commit)
    check_layout(env, REPO, fake.commit, ckpt[1])
    # optional files that do not exist are recorded as huggingface_hub does
    for n in ("tokenizer.json", "model.safetensors.index.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(storage(env), ".no_exist", fake.commit, n))
    # the big file came from the "CDN" with no token (none was set here anyway) and with no Range
    cdn = fake.requests("cdn", "GET")
    assert len(cdn) == 1 and cdn[0]["range"] is None and cdn[0]["sent"] == len(ckpt[1]["model.safetensors"])

    # offline first: everything is cached, so no request at all
    fake.clear_log()
    m = Model.from_pretrained(REPO, progress=False)
    assert fake.log == []
    ref = Model.load(ckpt[0])
    np.testing.assert_array_equal(m.W_E, ref.W_E)
    toks = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(m(toks), ref(toks))
    assert m.tokenizer is not None and m.path == folder

    # HF_HUB_OFFLINE with the server gone: the cache alone
    fake.stop()
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        assert hub.download(REPO) == folder
        with pytest.raises(hub.OfflineError) as ei:
            hub.download("org/other")
        msg = str(ei.value)
        assert "HF_HUB_OFFLINE" in msg and "Nothing of org/other is in the cache" in msg
    finally:
        del os.environ["HF_HUB_OFFLINE"]


def test_cache_location_and_token_from_the_environment(monkeypatch, tmp_path):
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
              "HF_TOKEN_PATH", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.hub_cache_dir() == os.path.join(str(tmp_path), ".cache", "huggingface", "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == os.path.join(str(tmp_path / "xdg"), "huggingface", "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == os.path.join(str(tmp_path / "home"), "hub")
    monkeypatch.setenv("HF_HUB_CACHE", "~/hubcache")
    assert hub.hub_cache_dir() == os.path.join(str(tmp_path), "hubcache")
    assert hub.hub_cache_dir(tmp_path / "explicit") == str(tmp_path / "explicit")
    # the token: HF_TOKEN, else the file `huggingface-cli login` saves in HF_HOME
    assert hub._token(None) is None
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").write_text("hf_from_file\n")
    assert hub._token(None) == "hf_from_file"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hub._token(None) == "hf_from_env" and hub._token("hf_arg") == "hf_arg" and hub._token(False) is None
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    assert hub._token(None) is None


def test_aliases():
    assert hub.resolve_name("gpt2") == hub.resolve_name("gpt2-small") == "openai-community/gpt2"
    for size in ("medium", "large", "xl"):
        assert hub.resolve_name(f"gpt2-{size}") == f"openai-community/gpt2-{size}"
    for size in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"):
        assert hub.resolve_name(f"pythia-{size}") == f"EleutherAI/pythia-{size}"
    for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"):
        assert hub.resolve_name(f"pythia-{size}-deduped") == f"EleutherAI/pythia-{size}-deduped"
    assert hub.resolve_name("pythia-1.3b-deduped") == "EleutherAI/pythia-1.4b-deduped"  # TransformerLens's old names
    assert hub.resolve_name("EleutherAI/pythia-160m-seed1") == "EleutherAI/pythia-160m-seed1"  # any repo id
    for bad in ("a/b/c", "../x", "org/--x", ""):
        with pytest.raises(ValueError, match="repository id"):
            hub.resolve_name(bad)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        Model.from_pretrained("./no/such/folder")


def test_alias_sharded_parallel_and_revisions(fake, sharded, env):
    """gpt2-small -> openai-community/gpt2, sharded, both shards in flight at once; branches and commits."""
    commit = fake.add_repo("openai-community/gpt2", sharded)
    for n in sharded:
        if n.endswith(".safetensors"):
            fake.fault(n, "slow", rate=400_000)
    m = Model.from_pretrained("gpt2-small", **{k: v for k, v in FAST.items() if k == "progress"})
    check_layout(env, "openai-community/gpt2", commit, sharded)
    shard_gets = fake.requests("cdn", "GET")
    assert len(shard_gets) == 2
    a, b = shard_gets
    assert a["t"] < b["t_end"] and b["t"] < a["t_end"], "the two shards were not downloaded in parallel"
    assert m.cfg.n_layers == 2 and m.tokenizer is None

    # a branch (Pythia's checkpoints are branches) and a commit hash
    c2 = fake.add_repo("openai-community/gpt2", {**sharded, "config.json": sharded["config.json"] + b"\n"},
                       revision="step1")
    f2 = hub.download("gpt2", revision="step1", **FAST)
    assert f2.endswith(c2)
    with open(os.path.join(storage(env, "openai-community/gpt2"), "refs", "step1")) as f:
        assert f.read() == c2
    fake.clear_log()
    assert hub.download("gpt2", revision=commit, **FAST).endswith(commit)
    assert fake.log == []  # a cached commit needs nothing
    # main moves on the Hub: the cache keeps answering until refresh=True asks
    c3 = fake.add_repo("openai-community/gpt2", {**sharded, "config.json": sharded["config.json"] + b"\n\n"})
    assert hub.download("gpt2", **FAST).endswith(commit) and fake.log == []
    assert hub.download("gpt2", refresh=True, **FAST).endswith(c3)
    with pytest.raises(hub.RevisionNotFoundError, match="revision="):
        hub.download("gpt2", revision="no-such-branch", **FAST)


# ---------------------------------------------------------------------------------------------- faults

def test_resume_after_dropped_connection(fake, ckpt, env):
    data = ckpt[1]["model.safetensors"]
    fake.fault("model.safetensors", "drop", at=0.5)
    hub.download(REPO, **FAST)
    check_layout(env, REPO, fake.commit, ckpt[1])
    gets = fake.requests("cdn", "GET")
    half = int(len(data) * 0.5)
    assert [g["range"] for g in gets] == [None, f"bytes={half}-"]
    assert gets[0]["sent"] == half and gets[1]["status"] == 206 and gets[1]["sent"] == len(data) - half


def test_500_and_429_then_success(fake, ckpt, env):
    fake.fault("model.safetensors", 500, times=2)
    fake.fault("model.safetensors", 429, retry_after=0)
    fake.fault("config.json", 503, where="resolve")  # the metadata request too
    hub.download(REPO, **FAST)
    check_layout(env, REPO, fake.commit, ckpt[1])
    assert [g["status"] for g in fake.requests("cdn", "GET")] == [500, 500, 429, 200]
    assert [g["status"] for g in fake.requests("hub", "HEAD", "/main/config.json")] == [503, 200]


def test_wrong_hash_leaves_nothing_corrupt(fake, ckpt, env):
    data = ckpt[1]["model.safetensors"]
    fake.fault("model.safetensors", "corrupt", times=None)
    with pytest.raises(hub.HashMismatchError) as ei:
        hub.download(REPO, **FAST)
    msg = str(ei.value)
    assert "sha256 mismatch" in msg and "Nothing was added to the cache" in msg and "Run again" in msg
    st = storage(env)
    blobs = os.listdir(os.path.join(st, "blobs"))
    assert sha256(data) not in blobs and not [b for b in blobs if b.endswith(".incomplete")]
    assert not os.path.lexists(os.path.join(st, "snapshots", fake.commit, "model.safetensors"))
    assert hub.cached_snapshot(REPO, usable=True) is None
    # the server is fixed: the next call succeeds
    fake.clear_faults()
    hub.download(REPO, **FAST)
    check_layout(env, REPO, fake.commit, ckpt[1])


def test_bad_partial_file_from_an_earlier_run(fake, ckpt, env):
    """A .incomplete whose bytes are wrong: the resumed result fails the sha256, so it starts over once."""
    data = ckpt[1]["model.safetensors"]
    blobs = os.path.join(storage(env), "blobs")
    os.makedirs(blobs)
    with open(os.path.join(blobs, sha256(data) + ".incomplete"), "wb") as f:
        f.write(b"\0" * 1000)
    hub.download(REPO, **FAST)
    check_layout(env, REPO, fake.commit, ckpt[1])
    assert [g["range"] for g in fake.requests("cdn", "GET")] == ["bytes=1000-", None]


def test_stall_times_out_then_resumes(fake, ckpt, env):
    data = ckpt[1]["model.safetensors"]
    fake.fault("model.safetensors", "stall", at=0.25, seconds=20)
    t0 = time.monotonic()
    hub.download(REPO, **FAST)
    assert time.monotonic() - t0 < 8
    check_layout(env, REPO, fake.commit, ckpt[1])
    assert [g["range"] for g in fake.requests("cdn", "GET")] == [None, f"bytes={int(len(data) * 0.25)}-"]
    # a server that never recovers: an error after the retries, the bytes kept for later
    shutil.rmtree(env)
    fake.clear_log()
    fake.fault("model.safetensors", "stall", at=0.25, seconds=20, times=None)
    with pytest.raises(hub.DownloadError) as ei:
        hub.download(REPO, max_retries=1, **FAST)
    assert "stalled" in str(ei.value) and "resumes" in str(ei.value)
    part = os.path.join(storage(env), "blobs", sha256(data) + ".incomplete")
    assert os.path.getsize(part) == int(len(data) * 0.25)


# ---------------------------------------------------------------------------------------------- errors

def test_error_messages(fake, ckpt, env, monkeypatch, tmp_path):
    with pytest.raises(hub.RepositoryNotFoundError) as ei:
        hub.download("org/missing", **FAST)
    assert isinstance(ei.value, FileNotFoundError) and "HF_TOKEN" in str(ei.value) and "org/missing" in str(ei.value)

    fake.add_repo("org/gated", ckpt[1], gated=True)
    with pytest.raises(hub.GatedRepoError) as ei:
        hub.download("org/gated", **FAST)
    assert isinstance(ei.value, PermissionError)
    assert "HF_TOKEN" in str(ei.value) and "accept its conditions" in str(ei.value) and "no token is set" in str(ei.value)
    fake.add_repo("org/private", ckpt[1], private=True)
    with pytest.raises(hub.RepositoryNotFoundError, match="HF_TOKEN"):
        hub.download("org/private", **FAST)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    fake.clear_log()
    hub.download("org/gated", **FAST)
    hub.download("org/private", **FAST)
    assert all(r["auth"] == "Bearer hf_secret_token_123" for r in fake.requests("hub"))
    assert fake.requests("cdn") and all(r["auth"] is None for r in fake.requests("cdn"))  # never to the CDN
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret")
    with pytest.raises(hub.RepositoryNotFoundError, match="was not accepted") as ei:
        hub.download("org/private", refresh=True, **FAST)
    assert "hf_wrong_secret" not in str(ei.value)  # the token is never in a message
    monkeypatch.delenv("HF_TOKEN")

    pt = {"config.json": ckpt[1]["config.json"], "pytorch_model.bin": b"\x80\x02pickle"}
    fake.add_repo("org/pytorch-only", pt)
    with pytest.raises(hub.EntryNotFoundError) as ei:
        hub.download("org/pytorch-only", **FAST)
    assert "safetensors" in str(ei.value) and "save_pretrained" in str(ei.value)
    fake.add_repo("org/not-a-model", {"README.md": b"hi"})
    with pytest.raises(hub.EntryNotFoundError, match="no config.json"):
        hub.download("org/not-a-model", **FAST)
    with pytest.raises(hub.EntryNotFoundError, match="'nope.txt' does not exist"):
        hub.download(REPO, files=["config.json", "nope.txt"], **FAST)

    # no network: a closed port; the message names HF_HUB_OFFLINE and what the cache holds
    hub.download(REPO, files=["config.json"], **FAST)
    closed = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    with pytest.raises(hub.OfflineError) as ei:
        hub.download(REPO, **FAST)
    msg = str(ei.value)
    assert isinstance(ei.value, ConnectionError)
    assert "HF_HUB_OFFLINE" in msg and closed in msg and "config.json" in msg and "snapshots" in msg
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)

    # disk full, checked before starting ...
    real = shutil.disk_usage
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(hub.DiskFullError) as ei:
        hub.download(REPO, **FAST)
    assert ei.value.errno == errno.ENOSPC and "HF_HUB_CACHE" in str(ei.value) and "GB are free" in str(ei.value)
    monkeypatch.setattr(hub.shutil, "disk_usage", real)
    # ... and when a write fails with ENOSPC (the partial file is /dev/full)
    if os.path.exists("/dev/full"):
        blobs = os.path.join(storage(env), "blobs")
        part = os.path.join(blobs, sha256(ckpt[1]["model.safetensors"]) + ".incomplete")
        os.symlink("/dev/full", part)
        with pytest.raises(hub.DiskFullError) as ei:
            hub.download(REPO, **FAST)
        assert "disk holding the cache is full" in str(ei.value) and "HF_HUB_CACHE" in str(ei.value)
        os.remove(part)
    hub.download(REPO, **FAST)
    check_layout(env, REPO, fake.commit, ckpt[1])


def _closed_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------- Ctrl-C, GIL

def test_ctrl_c_then_resume(fake, ckpt, env):
    data = ckpt[1]["model.safetensors"]
    fake.fault("model.safetensors", "slow", rate=60_000)
    script = textwrap.dedent(f"""
        from ctxlookup import hub
        try:
            hub.download({REPO!r}, progress=False, backoff=0.01)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            raise SystemExit(42)
        print("FINISHED", flush=True)
    """)
    envv = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", script], env=envv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 30
        while fake.bytes_sent("/repos/") < 60_000:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        t_sig = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 42 and "INTERRUPTED" in out, (out, err)
    assert time.monotonic() - t_sig < 5
    part = os.path.join(storage(env), "blobs", sha256(data) + ".incomplete")
    kept = os.path.getsize(part)
    assert 0 < kept < len(data)
    assert not os.path.exists(os.path.join(storage(env), "blobs", sha256(data)))
    # the rerun resumes from the byte offset
    fake.clear_log()
    hub.download(REPO, **FAST)
    check_layout(env, REPO, fake.commit, ckpt[1])
    gets = fake.requests("cdn", "GET")
    assert [g["range"] for g in gets] == [f"bytes={kept}-"] and gets[0]["sent"] == len(data) - kept


def test_gil_released_while_downloading(fake, ckpt, env):
    fake.fault("model.safetensors", "slow", rate=500_000)
    done = threading.Event()
    errors = []

    def work():
        try:
            hub.download(REPO, **FAST)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=work)
    t.start()
    spins, t0 = 0, time.monotonic()
    while not done.is_set():
        spins += 1
    elapsed = time.monotonic() - t0
    t.join()
    assert not errors, errors
    assert elapsed > 0.5 and spins > 100_000 * elapsed, (spins, elapsed)


def test_progress_callback_and_low_level(fake, ckpt, env, tmp_path):
    """_core._hub_fetch directly: progress reports, a raising callback stops the run, HEAD metadata."""
    data = ckpt[1]["model.safetensors"]
    seen = []
    url = f"{fake.endpoint}/{REPO}/resolve/main/model.safetensors"
    (h,) = _core._hub_fetch([("HEAD", url, True, None, None, None, None)])
    assert h["ok"] and h["status"] == 302 and h["commit"] == fake.commit and h["linked_size"] == len(data)
    assert h["linked_etag"] == f'"{sha256(data)}"' and h["location"].startswith(fake.cdn)
    fake.fault("model.safetensors", "slow", rate=1_000_000)
    part, final = str(tmp_path / "x.incomplete"), str(tmp_path / "x")
    (r,) = _core._hub_fetch([("GET", h["location"], False, part, final, len(data), sha256(data).upper())],
                            progress=lambda b, n: seen.append((b, n)))
    assert r["ok"] and r["bytes"] == r["received"] == len(data) and r["resumed_from"] == -1
    assert len(seen) >= 3 and seen[-1] == (len(data), 1) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert _core._sha256_file(final) == sha256(data) and not os.path.exists(part)

    def boom(b, n):
        raise RuntimeError("stop here")

    fake.fault("model.safetensors", "slow", rate=200_000)
    with pytest.raises(RuntimeError, match="stop here"):
        _core._hub_fetch([("GET", h["location"], False, part, final + "2", len(data), None)], progress=boom)
    assert os.path.exists(part) and not os.path.exists(final + "2")
    with pytest.raises(ValueError, match="sha256"):
        _core._hub_fetch([("GET", url, False, part, None, None, "abc")])
    with pytest.raises(ValueError, match="same file"):
        _core._hub_fetch([("GET", url, False, part, None, None, None)] * 2)


# ---------------------------------------------------------------------------------------------- compatibility

def test_compatibility_with_huggingface_hub_and_transformers(fake, ckpt, env, monkeypatch):
    hf = pytest.importorskip("huggingface_hub")
    # 1. ctxlookup downloads; huggingface_hub and transformers use it offline
    folder = hub.download(REPO, **FAST)
    for name in ckpt[1]:
        p = hf.hf_hub_download(REPO, name, cache_dir=str(env), local_files_only=True)
        assert p == os.path.join(folder, name)
    info = hf.scan_cache_dir(str(env))
    assert not info.warnings, info.warnings
    (repo,) = [r for r in info.repos if r.repo_id == REPO]
    assert {f.file_name for r in repo.revisions for f in r.files} == set(ckpt[1])
    assert repo.refs["main"].commit_hash == fake.commit
    fake.clear_log()
    import torch
    import transformers

    tm = transformers.AutoModelForCausalLM.from_pretrained(REPO, cache_dir=str(env), local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(REPO, cache_dir=str(env), local_files_only=True)
    assert fake.log == [] and tok("hello world")["input_ids"] == [31373, 995]
    ids = np.array([[5, 17, 200, 3]])
    with torch.no_grad():
        want = tm(torch.tensor(ids)).logits.numpy()
    got = Model.from_pretrained(REPO, progress=False)(ids)
    np.testing.assert_allclose(got, want, atol=1e-4)

    # 2. huggingface_hub downloads (from the same server); ctxlookup loads it with no request, also
    #    when the repository was renamed and the cache folder has the old id (gpt2 -> openai-community/gpt2)
    cache2 = str(env) + "-hf"
    fake.add_repo("openai-community/gpt2", ckpt[1])
    fake.rename("gpt2", "openai-community/gpt2")
    for name in ckpt[1]:
        hf.hf_hub_download("gpt2", name, cache_dir=cache2, endpoint=fake.endpoint)
    assert os.path.isdir(os.path.join(cache2, "models--gpt2"))
    fake.clear_log()
    m = Model.from_pretrained("gpt2-small", cache_dir=cache2, progress=False)
    assert fake.log == [] and m.path.startswith(os.path.join(cache2, "models--gpt2"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.testing.assert_array_equal(Model.from_pretrained("gpt2", cache_dir=cache2)(ids), got)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # and a partial huggingface_hub download (config + weights only, no tokenizer, under the old id):
    # online, ctxlookup fetches only the missing tokenizer files, into that same snapshot
    cache3 = str(env) + "-hf3"
    for name in ("config.json", "model.safetensors"):
        hf.hf_hub_download("gpt2", name, cache_dir=cache3, endpoint=fake.endpoint)
    fake.clear_log()
    folder3 = hub.download("gpt2-small", cache_dir=cache3, **FAST)
    assert not fake.requests("cdn") and {os.path.basename(g["path"]) for g in fake.requests("hub", "GET")} == \
        {"vocab.json", "merges.txt"}
    assert folder3.startswith(os.path.join(cache3, "models--gpt2", "snapshots"))
    check_layout(cache3, "gpt2", os.path.basename(folder3), ckpt[1])
