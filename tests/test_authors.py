"""The authors' recorded data (../shared/data/authors): ctxlookup's own functions, fed the authors'
inputs at each stage with the 2023 rules, give the authors' recorded outputs: every request byte
for byte, E per head, the explained heads, the ablation statistics and the summary numbers. The
expected numbers are the paper's (§5.4) and the authors' notebook's, written out here."""
import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED
from ctxlookup import authors
from ctxlookup.selection import select_heads
from ctxlookup.explain import explain_heads
from ctxlookup.score import score_explanations
from ctxlookup.llm import Client
from ctxlookup.stats import ablation_comparison, score_statistics

sys.path.insert(0, os.path.dirname(__file__))
from mock_openai import MockOpenAI  # noqa: E402

FOLDER = SHARED / "data" / "authors"
# model: (explained heads, E mean, E std ddof 0, KS D, KS p) - the authors' 7_results.ipynb and the paper's §5.4
EXPECTED = {"gpt2-small": (207, 0.639, 0.178, 0.241861, 1.0247e-05),
            "gpt2-medium": (263, 0.616, 0.159, 0.331139, 3.6875e-13)}
KEYS = ["layer", "neuron", "head_layer", "head"]


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def rec(request):
    return authors.load(str(FOLDER), request.param)


@pytest.fixture(scope="module")
def replayed(rec):
    return authors.replay(str(FOLDER), rec.model, recorded=rec)


def _recorded_lines(path):
    with open(path, encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f if ln.strip()]


def test_load_reads_every_table(rec):
    assert rec.problems == {}
    assert set(authors.TABLES) <= set(rec.tables)
    n_heads = EXPECTED[rec.model][0]
    assert len(rec["heads"]) == len(rec["explanations"]) == len(rec["scores"]) == n_heads
    assert rec["neurons"].token.str.startswith(" ").all() and rec["explanations"].explanation.notna().all()
    # every recorded top-3 list becomes three active heads of layers below the neuron's
    per_prompt = rec["attribution"].groupby("prompt_id").active.sum()
    assert (per_prompt == 3).all() and len(per_prompt) == len(rec["prompts"])
    assert (rec["attribution"].head_layer < rec["attribution"].layer).all()


def test_replay_matches_every_quantity(replayed, rec):
    assert replayed["match"].all(), replayed[~replayed["match"]].to_string()
    q = dict(zip(replayed.quantity, replayed.ctxlookup))
    n = EXPECTED[rec.model][0]
    assert q["explanation requests (byte for byte)"] == f"{n} of {n} identical"
    assert q[f"E per head (eval_results_full_{rec.model.split('-')[1]}_fr.txt)"] == f"{n} of {n} equal"
    assert q["ablation: per-head mean decrease, active and inactive"] == f"{2 * n} of {2 * n} equal"


def test_explained_heads_set_and_order(rec):
    sel = select_heads(rec["attribution"], low=0.25, high=None, low_strict=True, order="first_active")
    assert sel[KEYS].values.tolist() == rec["heads"][KEYS].values.tolist()
    # the paper's rule (25-75%, inclusive) is a different selection on the same data
    paper = select_heads(rec["attribution"])
    assert set(map(tuple, paper[KEYS].values.tolist())) != set(map(tuple, sel[KEYS].values.tolist()))


def test_explanation_requests_byte_for_byte(rec):
    client = authors.RecordedAnswers(rec.explain_client.answers)
    ex = explain_heads(rec["heads"], rec["prompts"], rec["attribution"], client, version="2023", temperature=None)
    assert client.bodies(rec.llm_model) == _recorded_lines(rec.data.files["explain_requests"])
    assert all(t is None and mt == 200 for _, mt, t in client.requests)
    assert ex.explanation.tolist() == rec["explanations"].explanation.tolist()


def test_classification_requests_and_scores(rec):
    client = authors.RecordedAnswers(rec.classify_client.answers)
    sc = score_explanations(rec["explanations"], rec["test_prompts"], rec["test_attribution"], client, version="2023",
                            one_class="keep", parse="exact", max_test=10, temperature=None)
    first = client.bodies(rec.llm_model)
    assert first == _recorded_lines(rec.data.files["classify_requests"])
    assert all(t is None and mt == 1 for _, mt, t in client.requests)
    client20 = authors.RecordedAnswers(rec.classify_client.answers)
    sc20 = score_explanations(rec["explanations"], rec["test_prompts"], rec["test_attribution"], client20,
                              version="2023", one_class="keep", parse="exact", max_test=20, temperature=None)
    every = client20.bodies(rec.llm_model)
    seen = set(first)
    assert [b for b in every if b not in seen] == _recorded_lines(rec.data.files["classify_requests_rest"])
    if rec.data.files.get("classify_requests_all"):
        assert every == _recorded_lines(rec.data.files["classify_requests_all"])
    # E per head = every line of the authors' printout
    printed = authors._eval_printout(rec.data.files["eval_printout"])
    n_heads = {"gpt2-small": 12, "gpt2-medium": 16}[rec.model]
    got = {(r.layer, r.neuron, r.head_layer * n_heads + r.head): r.E for r in sc20.itertuples()}
    assert len(printed) == len(got) == EXPECTED[rec.model][0]
    assert all(got[(r.layer, r.neuron, r.flat)] == r.E for r in printed.itertuples())
    # the recorded data keeps one-class heads with their one rate; the paper's rule drops them
    assert sc20.one_class.any() and np.isfinite(sc20.E).all()
    assert sc.n_test.max() == 10 and sc20.n_test.max() == 20


def test_summary_statistics(rec):
    n, mean, std, _, _ = EXPECTED[rec.model]
    st = score_statistics(rec["scores"].E, ddof=0).iloc[0]
    assert st.n_heads == n and round(st["mean"], 3) == mean and round(st["std"], 3) == std
    assert st.skew_p_greater == st.skewtest_p and 0 < st.skew_p_less < 1
    assert st.skew_p_greater + st.skew_p_less == pytest.approx(1.0)


def test_ablation_statistics_are_the_papers(rec):
    _, _, _, D, p = EXPECTED[rec.model]
    comp = ablation_comparison(rec["ablation"])
    ks = comp.attrs["ks"]
    assert abs(ks["D"] - D) < 5e-7  # the paper prints 6 decimals
    assert abs(ks["p"] / p - 1) < 5e-5  # and 5 significant digits
    recorded = rec["ablation_by_head"].attrs["recorded_means"]
    m = recorded.merge(comp, on=KEYS, suffixes=("_rec", ""))
    for c in ("mean_decrease_active", "mean_decrease_inactive"):
        a, b = m[c + "_rec"].to_numpy(np.float64), m[c].to_numpy(np.float64)
        assert ((a == b) | (np.isnan(a) & np.isnan(b))).all()


def test_live_client_sends_the_replayed_requests(tmp_path):
    """explain_heads(version="2023", temperature=None) through a real llm.Client sends the bodies
    the replay builds (and the authors recorded) for the same inputs."""
    rec = authors.load(str(FOLDER), "gpt2-small")
    heads = rec["heads"].iloc[:6]
    replay_client = authors.RecordedAnswers(rec.explain_client.answers)
    explain_heads(heads, rec["prompts"], rec["attribution"], replay_client, version="2023", temperature=None)
    built = [json.loads(b) for b in replay_client.bodies(rec.llm_model)]
    with MockOpenAI() as srv:
        client = Client(model=rec.llm_model, base_url=srv.base_url, api_key="sk-test", cache=tmp_path / "c.sqlite3",
                        progress=False, backoff_base=0.02, timeout=10)
        ex = explain_heads(heads, rec["prompts"], rec["attribution"], client, version="2023", temperature=None)
        sent = [r["body"] for r in sorted(srv.requests, key=lambda r: [b["messages"] for b in built].index(r["body"]["messages"]))]
    assert ex.error.isna().all()
    assert sent == built and all("temperature" not in b for b in sent)
    recorded = [json.loads(x) for x in _recorded_lines(rec.data.files["explain_requests"])[:6]]
    assert sent == recorded


def _linked_copy(dst, skip=(), corrupt=None):
    """The authors' folder as symbolic links, less ``skip`` files; ``corrupt``: (name, line) made invalid."""
    for root, _, files in os.walk(FOLDER):
        rel = os.path.relpath(root, FOLDER)
        if rel.startswith("code-"):
            continue
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for f in files:
            if f in skip:
                continue
            target = os.path.join(dst, rel, f)
            if corrupt and f == corrupt[0]:
                with open(os.path.join(root, f), encoding="utf-8") as src:
                    lines = src.readlines()
                lines[corrupt[1] - 1] = lines[corrupt[1] - 1][:50] + "\n"
                with open(target, "w", encoding="utf-8") as out:
                    out.writelines(lines)
            else:
                os.symlink(os.path.join(root, f), target)


def test_missing_files_replay_what_is_there(tmp_path):
    _linked_copy(tmp_path, skip={"nh_token_prob_attn_ablated_vs_normal_noabs_small.pkl",
                                 "2023-10-13_13-51-37_gpt2-small_test_prompts_10_results.jsonl"})
    t = authors.replay(str(tmp_path), "gpt2-small")
    bad = t[~t["match"]]
    text = bad.to_string()
    assert "nh_token_prob_attn_ablated_vs_normal_noabs_small.pkl" in text and "_test_prompts_10_results.jsonl" in text
    good = t[t["match"]].quantity.tolist()
    assert "explanation requests (byte for byte)" in good and "explained heads: order" in good
    assert not any(q.startswith("ablation KS") for q in good)
    found = authors.AuthorsData.find(str(tmp_path), "gpt2-small").missing()
    assert any("7_head_ablation" in m for m in found)


def test_malformed_json_line_names_file_and_line(tmp_path):
    name = "2023-10-12_14-43-12_gpt2-small_prompts_results.jsonl"
    _linked_copy(tmp_path, corrupt=(name, 5))
    r = authors.load(str(tmp_path), "gpt2-small")
    assert name in r.problems["explanations"] and "line 5" in r.problems["explanations"]
    t = authors.replay(str(tmp_path), "gpt2-small", recorded=r)
    assert not t["match"].all() and t[t.quantity == "explained heads: order"]["match"].all()
    with pytest.raises(ValueError, match=r"line 5: not valid JSON"):
        authors.read_jsonl(os.path.join(tmp_path, "experiment_data", "5_head_explanations", name))


def test_cli_replay_and_import(tmp_path, capsys):
    from ctxlookup.cli import main

    _linked_copy(tmp_path / "src", skip={"eval_results_full_small_fr.txt"})
    assert main(["authors", "replay", str(tmp_path / "src"), "--model", "gpt2-small"]) == 1
    out = capsys.readouterr().out
    assert "eval_results_full_small_fr.txt" in out and "some quantities do not match" in out
    assert main(["authors", "import", str(FOLDER), "--model", "gpt2-small", "--out", str(tmp_path / "run")]) == 0
    for name in authors.TABLES:
        assert os.path.exists(tmp_path / "run" / f"{name}.parquet")
    sc = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert len(sc) == 207 and round(sc.E.mean(), 3) == 0.639


def test_torch_pickle_reader_refuses_other_classes(tmp_path):
    import pickle

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"x": shutil.rmtree}))
    with pytest.raises(ValueError, match="refusing to load shutil.rmtree"):
        authors.load_torch_pickle(str(p))


def test_select_heads_rules_hand_computed():
    # 8 prompts; head 1 active on 2 (= 0.25 n), heads 0 and 2 on 3, head 3 on 7 (> 0.75 n); on prompt 0 heads 1, 2, 3
    # in score order
    act = {0: [1, 2, 3], 1: [1, 2, 3], 2: [3, 2, 0], 3: [3, 0], 4: [3, 0], 5: [3], 6: [3], 7: []}
    rows = [dict(layer=1, neuron=5, prompt_id=p, head_layer=0, head=h, active=h in act[p],
                 score=(10 - act[p].index(h)) if h in act[p] else 0.0) for p in range(8) for h in range(4)]
    att = pd.DataFrame(rows)
    n_active = att.groupby("head").active.sum().to_dict()
    assert n_active == {0: 3, 1: 2, 2: 3, 3: 7}
    heads = lambda df: df["head"].tolist()  # noqa: E731
    assert heads(select_heads(att)) == [0, 1, 2]  # 2..6 of 8, inclusive
    assert heads(select_heads(att, high=None)) == [0, 1, 2, 3]
    assert heads(select_heads(att, high=None, low_strict=True)) == [0, 2, 3]  # > 2
    # first active: prompt 0 lists 1, 2, 3 by score; head 0 first active on prompt 2
    assert heads(select_heads(att, high=None, order="first_active")) == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="order"):
        select_heads(att, order="random")
