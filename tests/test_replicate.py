"""`ctxlookup replicate` end to end on a tiny random model and tiny.jsonl: with the offline
explainer, with the mock OpenAI-compatible server, and killed (SIGKILL) mid-run then resumed."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import ctxlookup
from conftest import SHARED
from ctxlookup.replicate import OUTPUTS, STAGES, RunMismatch, replicate

OPTS = dict(layers=[1, 2], neurons_per_layer=3, random_per_layer=2, prompts_per_neuron=6, test_prompts_per_neuron=4,
            table3=[3, 6], progress=False, batch_tokens=2048)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpora")
    lines = (SHARED / "data" / "corpus" / "tiny.jsonl").read_text().splitlines()
    (d / "train.jsonl").write_text("\n".join(lines[:120]) + "\n")
    (d / "test.jsonl").write_text("\n".join(lines[120:]) + "\n")
    return str(d / "train.jsonl"), str(d / "test.jsonl")


def _tables(out):
    return {n: pd.read_parquet(os.path.join(out, f"{n}.parquet")) for s in STAGES for n in OUTPUTS[s]}


def test_offline_end_to_end_and_rerun_skips(text_model_dir, corpora, tmp_path):
    out = str(tmp_path / "run")
    run = replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert [s for s in STAGES if m["stages"][s]["complete"]] == STAGES
    for s in STAGES:
        for n in OUTPUTS[s]:
            assert os.path.exists(os.path.join(out, f"{n}.parquet")) and os.path.exists(os.path.join(out, f"{n}.csv"))
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(m["model"]["files"])
    assert all(len(h) == 64 for h in m["model"]["files"].values())
    assert m["options"]["explainer"] == "offline" and m["options_key"]["table3"] == [3, 6]
    from ctxlookup.explain import EXPLAIN_TEMPLATE
    from ctxlookup.score import CLASSIFY_TEMPLATE
    assert m["templates"]["version"] == "2024" and m["protocol"]["name"] == "paper"  # the default protocol
    assert m["templates"]["explain"].endswith("In two to three sentences, suggest when the attention head is active.")
    assert EXPLAIN_TEMPLATE != m["templates"]["explain"] and CLASSIFY_TEMPLATE != m["templates"]["classify"]
    assert m["seeds"]["random_neurons"] == 0
    assert all(m["stages"][s]["wall_s"] >= 0 for s in STAGES)
    for f in ("figure5.png", "figure5.svg", "figure6.png", "figure6.svg"):
        assert os.path.getsize(os.path.join(out, f)) > 1000
    neurons = run.read("neurons")
    assert (neurons.group == "next_token").sum() == 6 and (neurons.group == "random").sum() == 4
    prompts = run.read("prompts")
    assert prompts.n_tokens.max() < 100 and len(prompts) > 10
    heads = run.read("heads")
    scores = run.read("scores")
    assert set(scores.n_prompts_per_neuron) <= {3, 6}
    assert len(scores) == len(run.read("explanations"))
    stats = run.read("statistics")
    assert list(stats.columns[:4]) == ["label", "n_heads", "mean", "std"]
    t3 = run.read("table3")
    assert sorted(t3.prompts_per_neuron) == [3, 6]
    # the an-neuron check: next_token_evidence on the test corpus for every neuron, a row per neuron and group
    ev = run.read("evidence")
    model = ctxlookup.Model.load(text_model_dir, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                 fold_value_biases=True)
    want = ctxlookup.next_token_evidence(model, neurons.drop_duplicates(["layer", "neuron"]), ctxlookup.Corpus(corpora[1]),
                                         max_docs=500, batch_tokens=2048)
    want = want.merge(neurons[["layer", "neuron", "group"]], on=["layer", "neuron"])
    assert len(ev) == len(neurons) and list(ev.columns) == list(want.columns)
    for c in ev.columns:
        if c in ("bin_fractions", "bin_counts", "bin_edges"):
            for x, y in zip(ev[c], want[c]):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            pd.testing.assert_series_equal(ev[c], want[c], check_dtype=False, obj=c)
    by = m["stages"]["evidence"]["attrs"]["evidence"]
    assert by["docs"] == ctxlookup.Corpus(corpora[1]).count() < 500 and by["by_group"]["next_token"] == dict(neurons=6, rising=int(ev.rising[ev.group == "next_token"].sum()))
    assert (by["bins"], by["binning"], by["min_positions"]) == (10, "width", 100)
    assert by["vs_random"] == ctxlookup.stats.rising_comparison(ev)
    # the scan stage's histograms and quantile examples: for each neuron, the atlas's rows on the same corpus;
    # max_acts is the plain scan's
    from ctxlookup.neuroscope import neuroscope
    from ctxlookup.scan import max_activating

    uniq = neurons.drop_duplicates(["layer", "neuron"])
    pd.testing.assert_frame_equal(run.read("max_acts"),
                                  max_activating(model, uniq[["layer", "neuron", "token_id", "token"]],
                                                 ctxlookup.Corpus(corpora[0]), k=m["stages"]["scan"]["attrs"]["max_acts"]["k"],
                                                 batch_tokens=2048, progress=False), check_exact=True)
    atlas = neuroscope(model, corpora[0], out=str(tmp_path / "atlas"), layers=OPTS["layers"], batch_tokens=2048,
                       site=False, progress=False)
    chosen = uniq[["layer", "neuron"]].sort_values(["layer", "neuron"])
    for name in ("histograms", "quantile_examples"):
        want = atlas[name].merge(chosen, on=["layer", "neuron"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(run.read(name), want, check_exact=True)
    finished = {s: m["stages"][s]["finished"] for s in STAGES}
    before = _tables(out)
    time.sleep(1.1)
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    m2 = json.load(open(os.path.join(out, "manifest.json")))
    assert {s: m2["stages"][s]["finished"] for s in STAGES} == finished  # nothing recomputed
    for n, df in _tables(out).items():
        pd.testing.assert_frame_equal(df, before[n])
    with pytest.raises(ValueError, match="other options"):
        replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], **dict(OPTS, seed=9))
    # a missing table makes its stage run again
    os.remove(os.path.join(out, "heads.parquet"))
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(out, "heads.parquet")), before["heads"])


def test_resume_refuses_changed_model_files(text_model_dir, corpora, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(text_model_dir, model_dir)
    out = str(tmp_path / "run")
    opts = dict(OPTS, table3=None, neurons_per_layer=2, random_per_layer=1, layers=[2])
    replicate(str(model_dir), out, corpus=corpora[0], test_corpus=corpora[1], **opts)
    before = json.load(open(os.path.join(out, "manifest.json")))["model"]["files"]
    cfg = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(dict(cfg, note="retrained")))
    os.remove(os.path.join(out, "attribution.parquet"))  # a stage that runs the model again
    with pytest.raises(RunMismatch, match=r"other model files \(config.json changed"):
        replicate(str(model_dir), out, corpus=corpora[0], test_corpus=corpora[1], **opts)
    assert json.load(open(os.path.join(out, "manifest.json")))["model"]["files"] == before


def test_demo_moves_a_mismatched_run_aside(text_model_dir, corpora, tmp_path, capsys):
    """python -m ctxlookup.demo on a folder left by another run: the real RunMismatch, the old
    folder kept under another name, the demo run made fresh."""
    from ctxlookup.demo.__main__ import replicate_fresh

    opts = dict(OPTS, table3=None, neurons_per_layer=2, random_per_layer=1, layers=[2])
    out = str(tmp_path / "demo")
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], **dict(opts, seed=9))

    def rep(name, out, explainer):
        assert name == "demo"
        return replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], explainer=explainer, **opts)

    with pytest.raises(RunMismatch, match="other options"):
        rep("demo", out, "offline")
    run = replicate_fresh(rep, out, "offline")
    assert json.load(open(os.path.join(out, "manifest.json")))["options"]["seed"] == 0
    aside = [p for p in os.listdir(tmp_path) if p.startswith("demo.previous-")]
    assert len(aside) == 1
    assert json.load(open(tmp_path / aside[0] / "manifest.json"))["options"]["seed"] == 9
    assert "starting over" in capsys.readouterr().out and len(run.read("neurons")) == 3


def test_with_mock_server_rerun_sends_nothing(text_model_dir, corpora, tmp_path, monkeypatch):
    from mock_openai import MockOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test-key-123")
    out = str(tmp_path / "run")
    with MockOpenAI(latency=0.0) as srv:
        run = replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], explainer="openai",
                        base_url=srv.base_url, llm_model="gpt-4-1106-preview", **OPTS)
        sent = srv.total
        ex = run.read("explanations")
        assert sent > 0 and ex.explanation.str.startswith("answer ").all()
        sc = run.read("scores")
        assert (sc.n_unparsed == 0).all()  # the mock answers yes / no
        m = json.load(open(os.path.join(out, "manifest.json")))
        assert m["llm"]["base_url"] == srv.base_url and m["llm"]["api_key_set"] is True
        usage = m["llm_usage"]
        assert sum(u["requests"] for u in usage.values()) == sent
        # a fresh run on the same directory, the LLM stages' tables gone: every answer from the
        # cache; the one request sent is the server check before the first stage (max_tokens=1)
        assert srv.count("Say yes.") == 1
        for f in ("scores", "explanations"):
            os.remove(os.path.join(out, f"{f}.parquet"))
        replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], explainer="openai",
                  base_url=srv.base_url, **OPTS)
        assert srv.total == sent + 1 and srv.count("Say yes.") == 2
    for root, _, files in os.walk(out):
        for f in files:
            assert b"sk-secret-test-key-123" not in open(os.path.join(root, f), "rb").read(), f


def test_sigkill_mid_run_then_resume_gives_the_same_result(text_model_dir, corpora, tmp_path):
    clean = str(tmp_path / "clean")
    replicate(text_model_dir, clean, corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    killed = str(tmp_path / "killed")
    args = [sys.executable, "-m", "ctxlookup.cli", "replicate", "--model", text_model_dir, "--out", killed,
            "--corpus", corpora[0], "--test-corpus", corpora[1], "--layers", "1,2", "--neurons-per-layer", "3",
            "--random-per-layer", "2", "--prompts-per-neuron", "6", "--test-prompts-per-neuron", "4",
            "--table3", "3,6", "--no-progress", "--batch-tokens", "2048"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ctxlookup.__file__)))
    for delay in (2.0, 3.5):  # kill twice, at different points
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "run directory" in r.stdout
    a, b = _tables(clean), _tables(killed)
    for n in a:
        pd.testing.assert_frame_equal(a[n], b[n], check_dtype=False, obj=n)


def test_remove_frequency_option_and_older_manifests(text_model_dir, corpora, tmp_path):
    """--remove-frequency changes the neurons stage and is recorded; a run directory whose manifest
    predates an option resumes as if it had the option's default."""
    out = str(tmp_path / "run")
    plain = replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until="neurons", **OPTS)
    proj = replicate(text_model_dir, str(tmp_path / "proj"), corpus=corpora[0], test_corpus=corpora[1], until="neurons",
                     remove_frequency=True, **OPTS)
    m = json.load(open(os.path.join(str(tmp_path / "proj"), "manifest.json")))
    assert m["options_key"]["remove_frequency"] is True
    a, b = plain.read("neurons"), proj.read("neurons")
    assert not a[["layer", "neuron", "token_id"]].equals(b[["layer", "neuron", "token_id"]])
    path = os.path.join(out, "manifest.json")
    m = json.load(open(path))
    del m["options_key"]["remove_frequency"], m["options"]["remove_frequency"]
    json.dump(m, open(path, "w"))
    again = replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until="neurons", **OPTS)
    pd.testing.assert_frame_equal(again.read("neurons"), a)
    with pytest.raises(ValueError, match="remove_frequency"):
        replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until="neurons", remove_frequency=True,
                  **OPTS)


def test_evidence_stage_joins_an_older_run_and_can_be_skipped(text_model_dir, corpora, tmp_path):
    """A run made before the evidence stage existed gains it on resume without redoing anything
    else; evidence_docs=0 writes an empty table; a negative count is refused before any work."""
    import shutil

    from ctxlookup.evidence import EVIDENCE_COLUMNS
    from ctxlookup.replicate import evidence_summary

    out = str(tmp_path / "run")
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until="stats", **OPTS)
    assert not os.path.exists(os.path.join(out, "evidence.parquet"))
    m = json.load(open(os.path.join(out, "manifest.json")))
    before = STAGES[:STAGES.index("evidence")]
    finished = {s: m["stages"][s]["finished"] for s in before}
    run = replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    assert {s: run.manifest["stages"][s]["finished"] for s in before} == finished
    assert len(run.read("evidence")) == len(run.read("neurons"))
    lines = evidence_summary(run.manifest)
    assert len(lines) == 3 and "of 6 next-token neurons" in lines[0] and "of 4 random neurons" in lines[1]
    assert lines[2] == ("next-token vs random neurons rising: Fisher's exact test, one-sided p = "
                        f"{run.manifest['stages']['evidence']['attrs']['evidence']['vs_random']['p']:.2g}")

    skip = str(tmp_path / "skip")
    shutil.copytree(out, skip)
    path = os.path.join(skip, "manifest.json")
    m = json.load(open(path))
    m["options"]["evidence_docs"] = m["options_key"]["evidence_docs"] = 0
    del m["stages"]["evidence"]
    json.dump(m, open(path, "w"))
    run = replicate(text_model_dir, skip, corpus=corpora[0], test_corpus=corpora[1], evidence_docs=0, **OPTS)
    ev = run.read("evidence")
    assert len(ev) == 0 and list(ev.columns) == EVIDENCE_COLUMNS + ["group"] and evidence_summary(run.manifest) == []
    with pytest.raises(ValueError, match="evidence_docs"):
        replicate(text_model_dir, str(tmp_path / "bad"), corpus=corpora[0], test_corpus=corpora[1], evidence_docs=-1, **OPTS)
    assert not os.path.exists(str(tmp_path / "bad"))


def test_authors_2023_protocol_sends_the_requests_the_replay_builds(text_model_dir, corpora, tmp_path, monkeypatch):
    """replicate --protocol authors-2023 live, against the mock server: every explanation and
    classification request it sends equals what ctxlookup.authors' replay machinery builds
    (RecordedAnswers + explain_heads / score_explanations with the 2023 rules, the code that
    reproduces the authors' recorded requests byte for byte) from the run's own tables."""
    from mock_openai import MockOpenAI

    from ctxlookup.authors import RecordedAnswers
    from ctxlookup.explain import explain_heads
    from ctxlookup.score import score_explanations

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test-key-123")
    out = str(tmp_path / "run")
    opts = dict(OPTS, table3=[], prompts_per_neuron=None, test_prompts_per_neuron=None)
    with MockOpenAI(latency=0.0) as srv:
        run = replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], explainer="openai",
                        base_url=srv.base_url, llm_model="gpt-4-1106-preview", protocol="authors-2023",
                        until="score", **opts)
        # the method's requests (the run's one-token server check before the first stage aside)
        sent = [r["body"] for r in srv.requests if r["body"]["messages"][-1]["content"] != "Say yes."]
    m = run.manifest
    assert m["protocol"]["name"] == "authors-2023" and m["protocol"]["active_rule"] == "top3"
    assert m["stages"]["attribution"]["attrs"]["attribution"]["active_rule"] == "top3"
    att = run.read("attribution")
    assert (att.groupby("prompt_id").active.sum() == 3).all()  # top 3 heads on every prompt
    p = run.protocol
    heads = run.read("heads")
    assert (heads.active_fraction > 0.25).all() and len(heads) > 0
    prompts = run._prompts_upto(p.prompts_per_neuron)
    assert not prompts.duplicated(["layer", "neuron", "text"]).any()
    rebuilt = RecordedAnswers({})
    explain_heads(heads.drop_duplicates(["layer", "neuron", "head_layer", "head"]), prompts,
                  att[att.prompt_id.isin(prompts.prompt_id)], rebuilt, version="2023", temperature=None)
    ex = run.read("explanations")
    score_explanations(ex, run.read("test_prompts"), run.read("test_attribution"), rebuilt, version="2023",
                       one_class="keep", parse="exact", temperature=None)
    built = [json.loads(b) for b in rebuilt.bodies("gpt-4-1106-preview")]
    key = lambda b: json.dumps(b, sort_keys=True)
    assert sorted(map(key, sent)) == sorted(map(key, built))
    assert all("temperature" not in b for b in sent)
    assert {b["max_tokens"] for b in sent} == {200, 1}
    assert sent[0]["messages"][0]["content"].endswith("Explanation: This attention head is active when the document")
# ---- one run at a time, default run directories, damaged files, full disks ----

SLOW_CHILD = """
import sys, time
import ctxlookup.replicate
r = sys.modules["ctxlookup.replicate"]
stage = r.Run._stage_neurons
def slow(self):
    time.sleep(float(sys.argv[5]))
    return stage(self)
r.Run._stage_neurons = slow
r.replicate(sys.argv[1], sys.argv[2], corpus=sys.argv[3], test_corpus=sys.argv[4], until="neurons", seed=0,
            layers=[1, 2], neurons_per_layer=3, random_per_layer=2, progress=False)
"""


def _cli(model, out, corpora, *extra):
    return [sys.executable, "-m", "ctxlookup.cli", "replicate", "neurons", "--model", model, "--out", out,
            "--corpus", corpora[0], "--test-corpus", corpora[1], "--layers", "1,2", "--neurons-per-layer", "3",
            "--random-per-layer", "2", "--no-progress", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ctxlookup.__file__)))


def _wait_locked(out, proc, timeout=60):
    """Until ``proc`` holds the run directory's lock (its pid is in run.lock)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(open(os.path.join(out, "run.lock")).read())["pid"] == proc.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run never took the lock: {proc.communicate()}")


def test_two_runs_on_one_directory_cannot_both_proceed(text_model_dir, corpora, tmp_path):
    """The issue's reproducer: --seed 0 and --seed 1 on one --out. While the first holds the lock
    the second exits at once with code 2 and one line naming the first's pid and host; once the
    first is done the second is refused as another experiment; the tables are the first's. A lock
    file left by a SIGKILLed run blocks nothing. In the API: RunLocked."""
    import socket

    from ctxlookup.replicate import RunLocked, Options, Run

    out = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, text_model_dir, out, *corpora, "6"], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_locked(out, first)
    t0 = time.time()
    second = subprocess.run(_cli(text_model_dir, out, corpora, "--seed", "1"), env=_env(), capture_output=True, text=True)
    refused_s = time.time() - t0
    assert first.poll() is None  # the first was still running: the refusal is the lock's
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert f"in use by process {first.pid} on host {socket.gethostname()}" in second.stderr
    assert refused_s < 30  # at once: python start-up, not the first run's 6 s stage
    # in the API, the same (this process's own second Run included)
    with pytest.raises(RunLocked, match=f"process {first.pid} on host"):
        replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until="neurons", **OPTS)
    assert first.wait(timeout=300) == 0, first.communicate()
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["options"]["seed"] == 0 and list(m["stages"]) == ["neurons"]
    again = subprocess.run(_cli(text_model_dir, out, corpora, "--seed", "1"), env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "other options (seed)" in again.stderr and again.stderr.count("\n") == 1
    # while a run of other options holds the directory, the refusal names the run, not the options
    seed0 = Run(Options(model=text_model_dir, out=out, corpus=corpora[0], test_corpus=corpora[1], layers=[1, 2],
                        neurons_per_layer=3, random_per_layer=2, progress=False))
    with seed0.locked():
        with pytest.raises(RunLocked, match=f"process {os.getpid()}"):
            Run(Options(model=text_model_dir, out=out, corpus=corpora[0], test_corpus=corpora[1], seed=1))
    # the tables are the seed-0 run's, as a clean seed-0 run makes them
    clean = replicate(text_model_dir, str(tmp_path / "clean"), corpus=corpora[0], test_corpus=corpora[1], until="neurons",
                      **dict(OPTS, layers=[1, 2], neurons_per_layer=3, random_per_layer=2))
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(out, "neurons.parquet")), clean.read("neurons"))

    held = Run(Options(model=text_model_dir, out=str(tmp_path / "held")))
    with held.locked():
        with pytest.raises(RunLocked, match=f"process {os.getpid()} on host {socket.gethostname()}"):
            Run(Options(model=text_model_dir, out=str(tmp_path / "held"))).run("neurons")
        with held.locked():  # re-entrant for its holder
            pass
    # a SIGKILLed run's lock file (with its pid) does not block the next run
    killed = str(tmp_path / "killed")
    victim = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, text_model_dir, killed, *corpora, "60"], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_locked(killed, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert json.loads(open(os.path.join(killed, "run.lock")).read())["pid"] == victim.pid
    after = subprocess.run(_cli(text_model_dir, killed, corpora, "--seed", "0"), env=_env(), capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert json.load(open(os.path.join(killed, "manifest.json")))["stages"]["neurons"]["complete"]


def test_default_run_directory_depends_on_model_and_options(text_model_dir, tmp_path, monkeypatch, capsys):
    from ctxlookup import cli
    from ctxlookup.replicate import Options, Run, default_out

    a = default_out(Options(model=text_model_dir))
    assert a == default_out(Options(model=text_model_dir, out="elsewhere", progress=False, llm_concurrency=3))
    assert a.startswith(os.path.join("runs", os.path.basename(text_model_dir) + "-")) and len(a.rsplit("-", 1)[1]) == 8
    others = {default_out(Options(model=text_model_dir, seed=1)), default_out(Options(model=text_model_dir, table3=None)),
              default_out(Options(model="gpt2")), default_out(Options(model=text_model_dir + "/", seed=1, keep=0.7)), a}
    assert len(others) == 5
    assert default_out(Options(model="EleutherAI/pythia-160m")).startswith(os.path.join("runs", "pythia-160m-"))
    # an option at its default counts as absent, so a run made before an option existed keeps its folder
    assert default_out(Options(model=text_model_dir, evidence_docs=500, remove_frequency=False)) == a
    monkeypatch.chdir(tmp_path)
    assert Run(Options(model=text_model_dir)).dir == str(tmp_path / a)
    with pytest.raises(SystemExit):
        cli.main(["replicate", "--help"])
    assert "runs/<model>-<hash of the options>" in " ".join(capsys.readouterr().out.split())
    assert Options().out is None


def _garble(path, at, n=64):
    """Overwrite n bytes at offset ``at`` (negative: from the end) with 0xA5, keeping the size."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(at if at >= 0 else size + at)
        f.write(b"\xa5" * n)
    assert os.path.getsize(path) == size


def test_damaged_tables_are_detected_and_redone(text_model_dir, corpora, tmp_path, capsys):
    """The issue's reproducers: garbage in a Parquet header, in a data page, a valid Parquet with the
    wrong schema, a deleted CSV twin: each makes its stage run again, to the same tables; the
    manifest records every output's sha256 and Parquet schema; a stage whose redone outputs
    differ from the recorded ones makes the stages after it run again."""
    import pyarrow.parquet as pq

    from ctxlookup.replicate import Options, Run

    out = str(tmp_path / "run")
    until = "test_truncate"
    done = STAGES[: STAGES.index(until) + 1]
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until=until, **OPTS)
    mpath = os.path.join(out, "manifest.json")
    m = json.load(open(mpath))
    for s in done:
        for n in OUTPUTS[s]:
            rec = m["stages"][s]["outputs"][n]
            for ext in ("parquet", "csv"):
                p = os.path.join(out, f"{n}.{ext}")
                assert rec[ext]["sha256"] == hashlib.sha256(open(p, "rb").read()).hexdigest()
                assert rec[ext]["bytes"] == os.path.getsize(p)
            schema = pq.read_schema(os.path.join(out, f"{n}.parquet"))
            assert rec["schema"] == [[f.name, str(f.type)] for f in schema] and len(rec["schema"]) > 1
            assert rec["rows"] == pq.read_metadata(os.path.join(out, f"{n}.parquet")).num_rows
    before = {n: pd.read_parquet(os.path.join(out, f"{n}.parquet")) for s in done for n in OUTPUTS[s]}
    csv_before = {n: open(os.path.join(out, f"{n}.csv"), "rb").read() for n in before}
    finished = {s: m["stages"][s]["finished"] for s in done}

    _garble(os.path.join(out, "neurons.parquet"), 0, 4)                  # the header's magic
    _garble(os.path.join(out, "max_acts.parquet"), 200)                  # a data page (the footer is intact)
    pd.DataFrame({"x": [1, 2]}).to_parquet(os.path.join(out, "prompts.parquet"))  # a valid Parquet, wrong schema
    os.remove(os.path.join(out, "test_max_acts.csv"))                    # the CSV twin
    pq.read_metadata(os.path.join(out, "max_acts.parquet"))              # what the old check read: still fine
    run = Run(Options(model=text_model_dir, out=out, corpus=corpora[0], test_corpus=corpora[1], **OPTS))
    assert {s: run.problem(s) for s in done} == {
        "neurons": "neurons.parquet is not the file the stage wrote (sha256 differs)",
        "scan": "max_acts.parquet is not the file the stage wrote (sha256 differs)",
        "truncate": "prompts.parquet is not the file the stage wrote (sha256 differs)",
        "test_scan": "test_max_acts.csv is missing", "test_truncate": None}
    time.sleep(1.1)
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until=until, **dict(OPTS, progress=True))
    assert "redoing scan: max_acts.parquet is not the file" in capsys.readouterr().err
    m2 = json.load(open(mpath))
    redone = {s for s in done if m2["stages"][s]["finished"] != finished[s]}
    assert redone == {"neurons", "scan", "truncate", "test_scan"}  # same outputs again: test_truncate stands
    for n, df in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(out, f"{n}.parquet")), df, obj=n)
        assert open(os.path.join(out, f"{n}.csv"), "rb").read() == csv_before[n], n
    assert json.dumps(m2["stages"]["scan"]["outputs"]) == json.dumps(m["stages"]["scan"]["outputs"])

    # a stage whose outputs come out other than recorded (here: the record says so) redoes the later ones
    m2["stages"]["truncate"]["outputs"]["prompts"]["parquet"]["sha256"] = "0" * 64
    json.dump(m2, open(mpath, "w"))
    time.sleep(1.1)
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until=until, **OPTS)
    m3 = json.load(open(mpath))
    assert {s for s in done if m3["stages"][s]["finished"] != m2["stages"][s]["finished"]} == {
        "truncate", "test_scan", "test_truncate"}

    # a run made before outputs were recorded: checked by reading every table in full, then recorded
    for s in done:
        del m3["stages"][s]["outputs"]
    json.dump(m3, open(mpath, "w"))
    with open(os.path.join(out, "test_prompts.parquet"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(out, "test_prompts.parquet")) // 2)
    time.sleep(1.1)
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until=until, **OPTS)
    m4 = json.load(open(mpath))
    assert {s for s in done if m4["stages"][s]["finished"] != m3["stages"][s]["finished"]} == {"test_truncate"}
    assert all(m4["stages"][s]["outputs"] == m["stages"][s]["outputs"] for s in done)


def test_damaged_run_files_give_named_errors(text_model_dir, corpora, tmp_path, capsys):
    """A damaged or foreign manifest: RunFileError naming it (the CLI: one line, exit 2), never a
    raw JSONDecodeError / AttributeError; a damaged scan checkpoint is dropped and the scan redone."""
    from ctxlookup import cli
    from ctxlookup.replicate import RunFileError

    out = str(tmp_path / "run")
    mpath = os.path.join(out, "manifest.json")
    kw = dict(corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    replicate(text_model_dir, out, until="neurons", **kw)
    good = open(mpath, "rb").read()
    for bad, why in ((good[:len(good) // 2], "JSONDecodeError"), (b"\xff\xfe" + good, "UnicodeDecodeError"),
                     (b"[1, 2]", "expected a JSON object"), (b'{"options_key": {}, "stages": {"neurons": 3}}',
                                                            "expected a JSON object")):
        open(mpath, "wb").write(bad)
        with pytest.raises(RunFileError, match=f"{mpath} is damaged or not a ctxlookup run manifest.*{why}"):
            replicate(text_model_dir, out, until="neurons", **kw)
        assert cli.main(["replicate", "neurons", "--model", text_model_dir, "--out", out, "--corpus", corpora[0],
                         "--test-corpus", corpora[1], "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ctxlookup replicate: error: {mpath} is damaged") and err.count("\n") == 1
    open(mpath, "wb").write(good)
    # a damaged scan checkpoint (a killed scan leaves one): removed, the scan starts over
    ckpt = os.path.join(out, "max_acts.ckpt.npz")
    np.savez(ckpt, meta=np.array("{}"), x=np.arange(1000))
    _garble(ckpt, 100)
    run = replicate(text_model_dir, out, until="scan", **kw)
    assert "max_acts.ckpt.npz is damaged" in capsys.readouterr().err and len(run.read("max_acts")) > 0


def test_full_disk_is_a_named_error_and_leaves_no_partial_files(text_model_dir, corpora, tmp_path, capsys):
    """Real ENOSPC from the kernel: the temporary file a table goes to is a link to /dev/full.
    pyarrow's and pandas' writers both fail; DiskFull says so in one line (the CLI exits 2), no
    *.incomplete file is left, and the same command then resumes the run."""
    import glob

    from ctxlookup import cli
    from ctxlookup.replicate import DiskFull

    out = str(tmp_path / "run")
    os.makedirs(out)
    kw = dict(corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    for victim in ("neurons.parquet", "excluded_tokens.csv"):
        os.symlink("/dev/full", os.path.join(out, victim + ".incomplete"))
        with pytest.raises(DiskFull, match=r"no space left on the device of .* while writing table "
                                           rf"{victim.split('.')[0]} \(.* MB free;.*No space left on device\); free some "
                                           "space and rerun the same command to resume"):
            replicate(text_model_dir, out, until="neurons", **kw)
        assert glob.glob(os.path.join(out, "*.incomplete*")) == []
    os.symlink("/dev/full", os.path.join(out, "neurons.csv.incomplete"))
    assert cli.main(["replicate", "neurons", "--model", text_model_dir, "--out", out, "--corpus", corpora[0],
                     "--test-corpus", corpora[1], "--layers", "1,2", "--neurons-per-layer", "3", "--random-per-layer",
                     "2", "--prompts-per-neuron", "6", "--test-prompts-per-neuron", "4", "--table3", "3,6",
                     "--no-progress", "--batch-tokens", "2048"]) == 2
    err = capsys.readouterr().err.splitlines()  # the stage's announcement, then the error
    assert err[-1].startswith("ctxlookup replicate: error: no space left") and "Traceback" not in "\n".join(err)
    assert [line for line in err if not line.startswith("[")] == err[-1:]
    assert glob.glob(os.path.join(out, "*.incomplete*")) == []
    # the manifest itself on a full disk
    os.symlink("/dev/full", os.path.join(out, "manifest.json.incomplete"))
    with pytest.raises(DiskFull, match="while writing the manifest|while writing manifest.json"):
        replicate(text_model_dir, out, until="neurons", **kw)
    assert glob.glob(os.path.join(out, "*.incomplete*")) == [] and not os.path.exists(os.path.join(out, "manifest.json"))
    run = replicate(text_model_dir, out, until="neurons", **kw)
    assert run.complete("neurons")


@pytest.mark.parametrize("protocol", ["ctxlookup", "paper"])
def test_each_stage_runs_its_forward_passes_once(text_model_dir, corpora, tmp_path, monkeypatch, protocol):
    """Counting wrappers on the core's entry points: each corpus is encoded once per run (the scan,
    the truncation and the evidence stage reuse what the first stage to read a document encoded),
    and under protocol ctxlookup the attribution stage runs no forward pass (truncation's final
    pass ran the same inputs and kept their head scores), giving the attribution of a fresh pass.
    Under protocol paper the attribution inputs are the texts encoded again, so it runs."""
    from conftest import REORDER_RTOL
    from ctxlookup import _core
    from ctxlookup import model as model_module
    from ctxlookup.attribution import head_attribution

    rep = sys.modules["ctxlookup.replicate"]
    stage, calls = ["?"], {}

    def count(key, n=1):
        calls[(stage[0], key)] = calls.get((stage[0], key), 0) + n

    for name in ("attribute_batch", "scan_batch"):
        def wrapped(*a, _f=getattr(_core, name), _n=name, **k):
            count(_n)
            return _f(*a, **k)
        monkeypatch.setattr(_core, name, wrapped)
    for name in ("__call__", "run_with_hooks"):
        def wrapped(self, *a, _f=getattr(model_module.Model, name), _n=name, **k):
            count("Model." + _n)
            return _f(self, *a, **k)
        monkeypatch.setattr(model_module.Model, name, wrapped)
    encode = ctxlookup.Tokenizer.encode_batch

    def counted_encode(self, items, *a, **k):
        count("encoded", len(items))
        return encode(self, items, *a, **k)
    monkeypatch.setattr(ctxlookup.Tokenizer, "encode_batch", counted_encode)
    for s in STAGES:
        def staged(self, _s=s, _f=getattr(rep.Run, f"_stage_{s}")):
            stage[0] = _s
            return _f(self)
        monkeypatch.setattr(rep.Run, f"_stage_{s}", staged)
    run = replicate(text_model_dir, str(tmp_path / protocol), corpus=corpora[0], test_corpus=corpora[1],
                    protocol=protocol, **OPTS)
    n_train = ctxlookup.Corpus(corpora[0]).count()
    assert calls[("neurons", "encoded")] >= n_train  # the frequency counts encode every training document
    for s in ("scan", "truncate", "test_truncate", "evidence"):
        assert calls.get((s, "encoded"), 0) == 0, s
    assert calls[("test_scan", "encoded")] == ctxlookup.Corpus(corpora[1]).count()
    assert calls[("scan", "scan_batch")] >= 1 and calls[("test_scan", "scan_batch")] >= 1
    assert calls[("evidence", "Model.run_with_hooks")] >= 1
    if protocol == "ctxlookup":
        assert calls.get(("attribution", "attribute_batch"), 0) == 0
        for src, name in (("prompts", "attribution"), ("test_prompts", "test_attribution")):
            prompts = pd.read_parquet(os.path.join(run.dir, f"{src}.parquet"))
            prompts.attrs["prepend_bos"] = True
            fresh = head_attribution(run.model, prompts, protocol="ctxlookup")
            kept = pd.read_parquet(os.path.join(run.dir, f"{name}.parquet"))
            assert len(kept) == len(fresh) > 0
            np.testing.assert_allclose(kept.score, fresh.score, rtol=REORDER_RTOL,
                                       atol=REORDER_RTOL * float(np.abs(fresh.score).max()))
            assert (kept.active == fresh.active).mean() > 0.99
    else:
        assert calls[("attribution", "attribute_batch")] >= 2  # prompts and test prompts, retokenized
