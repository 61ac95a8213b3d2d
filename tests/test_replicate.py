"""`ctxlookup replicate` end to end on a tiny random model and tiny.jsonl: with the offline
explainer, with the mock OpenAI-compatible server, and killed (SIGKILL) mid-run then resumed."""
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
    from ctxlookup.explain import CLASSIFY_TEMPLATE, EXPLAIN_TEMPLATE
    assert m["templates"] == {"explain": EXPLAIN_TEMPLATE, "classify": CLASSIFY_TEMPLATE} and m["seeds"]["random_neurons"] == 0
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

    from ctxlookup.anneuron import EVIDENCE_COLUMNS
    from ctxlookup.replicate import evidence_summary

    out = str(tmp_path / "run")
    replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], until="stats", **OPTS)
    assert not os.path.exists(os.path.join(out, "evidence.parquet"))
    m = json.load(open(os.path.join(out, "manifest.json")))
    finished = {s: m["stages"][s]["finished"] for s in STAGES[:-1]}
    run = replicate(text_model_dir, out, corpus=corpora[0], test_corpus=corpora[1], **OPTS)
    assert {s: run.manifest["stages"][s]["finished"] for s in STAGES[:-1]} == finished
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
