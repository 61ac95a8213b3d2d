"""The ``ctxlookup`` command line: help and defaults for every option, ``--version``, one-line
errors with exit code 2 (a traceback only with ``--debug``), "did you mean", ``--max-docs`` on the
bundled corpus, stage announcements and progress bars, the closing summary, the LLM server check
before the first stage, and the demo's entry point importing nothing from the test stack."""
import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import ctxlookup
from ctxlookup import cli
from ctxlookup.corpus import Corpus
from ctxlookup.llm import Client
from ctxlookup.replicate import STAGES, Options, Run

sys.path.insert(0, os.path.dirname(__file__))
from mock_openai import MockOpenAI  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ctxlookup.__file__)))

# A tiny replication of the bundled demo (one layer, a few neurons, a few documents): seconds.
TINY = ["--layers", "5", "--neurons-per-layer", "2", "--random-per-layer", "2", "--prompts-per-neuron", "4",
        "--test-prompts-per-neuron", "3", "--table3", "", "--max-docs", "12", "--evidence-docs", "10"]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _cli(*argv, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ctxlookup.cli", *argv], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


def _subparsers():
    p = cli.parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, sub.choices


# ---------------------------------------------------------------------------------------------- help

def test_every_option_has_help_that_shows_its_default():
    p, subs = _subparsers()
    assert set(subs) == {"replicate", "report", "authors", "neuroscope", "serve"}
    parsers = [("ctxlookup", p)]
    while parsers:
        name, sp = parsers.pop()
        fmt = sp._get_formatter()
        for action in sp._actions:
            if isinstance(action, argparse._SubParsersAction):  # authors replay, authors import
                parsers += [(f"{name} {k}", v) for k, v in action.choices.items()]
                continue
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            shown = fmt._expand_help(action)
            if action.option_strings and not action.required:  # positionals (RUN_DIR) and required ones have none
                assert "default" in shown, f"{name} {action.option_strings}: no default in {shown!r}"
    replicate_help = subs["replicate"].format_help()
    for opt in ("--random-per-layer", "--prompts-per-neuron", "--explainer", "--llm-model", "--seed", "--direction",
                "--rule", "--truncation", "--ablation", "--batch-tokens", "--layers", "--max-docs", "--no-progress"):
        assert opt in replicate_help
    d = Options()
    layers = " ".join(subs["replicate"]._option_string_actions["--layers"].help.split())
    assert "comma-separated layer indices, e.g. 9,10,11" in layers and "the last 3 layers" in layers
    flat = " ".join(replicate_help.split())
    assert f"(default: {d.random_per_layer})" in flat and f"(default: {d.batch_tokens})" in flat
    assert f"(default: {d.llm_model})" in flat and "(default: 10,20,30)" in flat


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ctxlookup {ctxlookup.__version__}", (r.stdout, r.stderr)


# ---------------------------------------------------------------------------------------------- errors

def _one_line_error(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("argv, needles", [
    (["replicte"], ["invalid choice 'replicte'", "did you mean replicate?"]),
    (["replicate", "--modle", "demo"], ["unrecognized option --modle", "did you mean --model?"]),
    (["replicate", "--model=demo", "--radnom-per-layer", "3"], ["unrecognized option --radnom-per-layer",
                                                                "did you mean --random-per-layer?"]),
    (["--verison"], ["unrecognized option --verison", "did you mean --version?"]),
    (["replicate", "scna"], ["invalid choice 'scna'", "did you mean scan?"]),
    (["replicate", "--explainer", "openia"], ["invalid choice 'openia'", "did you mean openai?"]),
    (["replicate", "--model", "gpt2-smal"], ["--model gpt2-smal", "did you mean gpt2-small?"]),
    (["replicate", "--model", "pythia-160"], ["did you mean pythia-160m?"]),
    (["replicate", "--model", "/no/such/checkpoint"], ["--model /no/such/checkpoint: no such folder"]),
    (["replicate", "--corpus", "/no/such/corpus.jsonl"], ["--corpus /no/such/corpus.jsonl: no such file or folder"]),
    (["replicate", "--layers", "9,x"], ["'9,x' is not a comma-separated list of integers"]),
    (["replicate", "--max-docs", "0"], ["--max-docs", "must be >= 1"]),
    (["report", "/"], ["is not a run directory"]),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, needles, tmp_path):
    r = _cli(*argv, *(["--out", str(tmp_path / "run")] if argv[0] == "replicate" else []))
    _one_line_error(r, *needles)


def test_layers_beyond_the_model_and_a_model_folder_without_files(tmp_path):
    r = _cli("replicate", "--layers", "9", "--out", str(tmp_path / "run"))
    _one_line_error(r, "--layers 9", "the model has 6 layers", "from 0 to 5")
    assert not os.path.exists(tmp_path / "run" / "manifest.json")  # refused before any stage
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("replicate", "--model", str(empty), "--out", str(tmp_path / "run2"))
    _one_line_error(r, "config.json")


def test_changed_options_on_an_existing_run_and_debug_shows_the_traceback(tmp_path):
    out = str(tmp_path / "run")
    Run(Options(out=out, seed=0)).save_manifest()
    r = _cli("replicate", "--out", out, "--seed", "1")
    line = _one_line_error(r, "holds a run made with other options (seed)")
    assert line.startswith("ctxlookup replicate: error: ")
    r = _cli("replicate", "--out", out, "--seed", "1", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "RunMismatch" in r.stderr


def test_hub_errors_are_one_line_with_a_suggestion(tmp_path):
    r = _cli("replicate", "--model", "EleutherAI/pythia-160", "--out", str(tmp_path / "run"),
             env=_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub")))
    _one_line_error(r, "EleutherAI/pythia-160", "HF_HUB_OFFLINE")


# ---------------------------------------------------------------------------------------------- --max-docs

def test_max_docs_caps_the_bundled_corpus(tmp_path):
    assert Corpus.demo("train").count() == 900 and Corpus.demo("test").count() == 450
    run = Run(Options(out=str(tmp_path / "run"), max_docs=40))
    for which in ("train", "test"):
        c = run.corpus(which)
        docs = list(c)
        assert c.count() == 40 and len(docs) == 40 and docs[-1].doc_id == 39
    with pytest.raises(ValueError, match="limit must be a positive int"):
        Corpus.demo("train", limit=0)


# ---------------------------------------------------------------------------------------------- a run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole replication on the demo, tiny, through the command line (progress bars on)."""
    out = str(tmp_path_factory.mktemp("cli") / "run")
    t0 = time.perf_counter()
    r = _cli("replicate", "--out", out, *TINY)
    return out, r, time.perf_counter() - t0


def test_stages_are_announced_with_progress_bars_and_a_closing_summary(tiny_run):
    out, r, _ = tiny_run
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr.replace("\r", "\n")
    n = len(STAGES)
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/{n}] {stage}: " in err, stage
    assert f"[3/{n}] truncate: the prompts: a suffix keeping 80% of each maximum (the authors' binary search)" in err
    for bar in ("scan:", "truncate:", "test_truncate:"):  # tqdm bars, the truncation's included
        assert bar in err and "prompt" in err
    assert "truncate: 100%" in err
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["stages"]["scan"]["attrs"]["max_acts"]["docs"] == 12  # --max-docs on the bundled corpus
    assert m["stages"]["test_scan"]["attrs"]["test_max_acts"]["docs"] == 12
    lines = r.stdout.strip().splitlines()
    assert f"the report: ctxlookup report {out}" in lines
    assert any(line.startswith(f"run directory: {out} (the results: tables") for line in lines)
    assert f"stages complete: {', '.join(STAGES)}" in lines


def test_no_progress_hides_the_bars_and_a_rerun_says_what_is_kept(tiny_run):
    out, _, _ = tiny_run
    r = _cli("replicate", "--out", out, *TINY, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "%|" not in r.stderr  # no tqdm bar
    assert f"[3/{len(STAGES)}] truncate: complete (kept from the earlier run)" in r.stderr
    assert f"the report: ctxlookup report {out}" in r.stdout


def test_a_partial_run_says_how_to_finish(tmp_path):
    out = str(tmp_path / "run")
    r = _cli("replicate", "neurons", "--out", out, *TINY, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "[1/1] neurons: " in r.stderr
    assert "stages complete: neurons" in r.stdout and "the same command without the stage" in r.stdout


def test_truncate_progress_bar_can_be_turned_off(capfd):
    from ctxlookup import Model, max_activating, truncate

    model = Model.from_pretrained("demo")
    docs = [d.text for _, d in zip(range(6), Corpus.demo("test"))]
    ma = max_activating(model, [(5, 1), (5, 2)], docs, k=3, progress=False)
    capfd.readouterr()
    quiet = truncate(model, ma, docs, progress=False)
    assert capfd.readouterr().err == ""
    shown = truncate(model, ma, docs, progress=True)
    err = capfd.readouterr().err
    assert "truncate: 100%" in err and f"{len(ma)}/{len(ma)}" in err and "passes=" in err
    assert quiet.equals(shown)


# ---------------------------------------------------------------------------------------------- the LLM check

def _closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


def test_client_check_names_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        Client(cache=False).check()
    url = _closed_port_url()
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"cannot reach the LLM server at {url}/chat/completions"):
        Client(base_url=url, api_key="sk-x", cache=False).check()
    assert time.perf_counter() - t0 < 5  # no retries with backoff
    with MockOpenAI(api_key="sk-right") as srv:
        good = Client(model="gpt-4o-mini", base_url=srv.base_url, api_key="sk-right", cache=False)
        assert good.check()["status"] == 200 and good.usage["check"].requests == 1
        with pytest.raises(PermissionError, match="the API key \\(OPENAI_API_KEY\\) was rejected"):
            Client(model="gpt-4o-mini", base_url=srv.base_url, api_key="sk-wrong", cache=False).check()
        with pytest.raises(PermissionError, match="no API key was sent"):
            Client(model="gpt-4o-mini", base_url=srv.base_url, api_key="", cache=False).check()
        assert srv.count("Say yes.") == 3  # one attempt each, no retries
    assert not (tmp_path / "cache.sqlite3").exists()


@pytest.mark.parametrize("case", ["no-key", "closed-port", "wrong-key"])
def test_openai_explainer_fails_before_the_first_stage(case, tmp_path):
    env = _env(OPENAI_API_KEY="sk-wrong")
    env.pop("OPENAI_BASE_URL", None)
    srv = MockOpenAI(api_key="sk-right") if case == "wrong-key" else None
    try:
        if case == "no-key":
            env.pop("OPENAI_API_KEY")
            extra, needles = [], ["no API key", "OPENAI_API_KEY"]
        elif case == "closed-port":
            url = _closed_port_url()
            extra, needles = ["--base-url", url], [f"cannot reach the LLM server at {url}"]
        else:
            srv.__enter__()
            extra, needles = ["--base-url", srv.base_url], ["the API key (OPENAI_API_KEY) was rejected", "HTTP 401"]
        t0 = time.perf_counter()
        r = _cli("replicate", "--out", str(tmp_path / "run"), "--explainer", "openai", *extra, *TINY, env=env)
        took = time.perf_counter() - t0
    finally:
        if srv is not None:
            srv.__exit__(None, None, None)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, last)
    assert f"[1/{len(STAGES)}]" not in r.stderr  # nothing ran
    assert took < 30, took


def test_openai_explainer_with_a_working_server_runs_to_the_end(tmp_path):
    with MockOpenAI(api_key="sk-right") as srv:
        r = _cli("replicate", "--out", str(tmp_path / "run"), "--explainer", "openai", "--base-url", srv.base_url,
                 "--llm-model", "gpt-4o-mini", *TINY, "--no-progress", env=_env(OPENAI_API_KEY="sk-right"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert srv.count("Say yes.") == 1
    assert "checking the LLM server" in r.stderr and "\ncheck " in r.stdout  # the probe's tokens are accounted


# ---------------------------------------------------------------------------------------------- the demo's imports

# torch, transformers and the rest of the test stack: `make demo` does not install them
TEST_STACK = ["torch", "transformers", "transformer_lens", "tokenizers", "safetensors", "pytest", "websocket",
              "nbclient", "nbformat", "ipykernel", "huggingface_hub", "accelerate"]  # (Pillow comes with matplotlib)


def test_demo_entry_point_imports_nothing_from_the_test_stack(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        BLOCKED = {TEST_STACK!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"the demo imported {{name}}, which `make demo` does not install")
                return None

        sys.meta_path.insert(0, Block())
        import ctxlookup.replicate
        rep = sys.modules["ctxlookup.replicate"]  # (ctxlookup.replicate is the function)
        full = rep.replicate

        def tiny(model, out, **kw):  # the demo's own path, on a tiny slice of its data
            kw.update(layers=[5], neurons_per_layer=2, random_per_layer=2, prompts_per_neuron=4,
                      test_prompts_per_neuron=3, table3=[], max_docs=12, evidence_docs=10, progress=False)
            return full(model, out, **kw)

        rep.replicate = tiny
        from ctxlookup.demo.__main__ import main
        rc = main([{str(tmp_path / "demo")!r}])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        sys.exit(rc)
    """)
    env = _env()
    env.pop("OPENAI_API_KEY", None)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "report (open in a browser): file://" in r.stdout
    assert f"to write it again: ctxlookup report {tmp_path / 'demo'}" in r.stdout
    assert os.path.exists(tmp_path / "demo" / "report" / "index.html")
    # the atlas of the demo model's last layer, printed and linked from the report's index
    assert f"file://{tmp_path / 'demo' / 'atlas' / 'site' / 'index.html'}" in r.stdout
    assert 'href="../atlas/site/index.html"' in (tmp_path / "demo" / "report" / "index.html").read_text()


def test_demo_with_an_unreachable_llm_server_stops_at_once(tmp_path):
    url = _closed_port_url()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ctxlookup.demo", str(tmp_path / "demo")], capture_output=True,
                       text=True, env=_env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL=url), timeout=300)
    assert time.perf_counter() - t0 < 60
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("ctxlookup demo: error: cannot reach the LLM server at " + url), lines
    assert lines[:-1] == [f"checking the LLM server ({url}/chat/completions, model gpt-4-1106-preview)"], lines


def test_stages_without_a_bar_of_their_own_show_their_elapsed_time_on_a_terminal(monkeypatch):
    import io

    from ctxlookup.replicate import _Elapsed

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for tty, enabled in ((True, True), (True, False), (False, True)):
        err = Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        with _Elapsed("attribution", enabled):
            time.sleep(1.3)
        shown = err.getvalue()
        if tty and enabled:
            assert shown.count("attribution: 00:01 elapsed") >= 1 and shown.count("\r") >= 3, shown
        else:
            assert shown == ""
    assert not [t for t in __import__("threading").enumerate() if t.name.startswith("ctxlookup-")]
