"""Next-token neurons against brute-force NumPy congruence (W_out[l] @ W_U) on random models."""
import json
import numpy as np
import pandas as pd
import pytest

import ctxlookup
from ctxlookup import _core
from ctxlookup.neurons import (default_layers, detect_glitch_tokens, mutual_exclusive_congruence, next_token_neurons,
                               random_neurons)


@pytest.fixture(scope="module")
def model(checkpoint):
    return ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0], tokenizer=False)


def brute(model, layer, direction="unembed", allowed=None):
    U = model.W_U if direction == "unembed" else model.W_E.T
    C = model.W_out[layer].astype(np.float64) @ U.astype(np.float64)
    if allowed is not None:
        C[:, ~allowed] = -np.inf
    return C


def test_core_congruence_topk_and_ties():
    rng = np.random.default_rng(0)
    # small integers: every dot product is exact in float32 whatever order the GEMM kernel sums in,
    # so the tie below is a tie on every CPU (with Gaussian values it was one only for some kernels)
    W = rng.integers(-8, 9, (600, 16)).astype(np.float32)   # more rows than one block (256)
    U = rng.integers(-8, 9, (77, 16)).astype(np.float32)
    U[5] = U[9]  # an exact tie between tokens 5 and 9
    allowed = np.ones(77, np.uint8)
    allowed[3] = 0
    ids, vals = _core.congruence(W, U, allowed, 4)
    C = W.astype(np.float64) @ U.T.astype(np.float64)
    C[:, 3] = -np.inf
    want = np.argsort(-C, axis=1, kind="stable")[:, :4]
    np.testing.assert_allclose(vals, np.take_along_axis(C, want, 1), rtol=1e-5, atol=1e-5)
    assert np.all(ids != 3)
    tie_rows = np.nonzero(np.isin(ids, [5, 9]).sum(1) == 2)[0]
    for r in tie_rows:  # the smaller id first on a tie
        row = list(ids[r])
        assert row.index(5) < row.index(9)
    assert len(tie_rows) > 0
    np.testing.assert_array_equal(ids, want)  # every tie (there are many among integers) goes to the smaller id


@pytest.mark.parametrize("direction", ["unembed", "embed"])
def test_next_token_neurons_match_brute_force(model, direction):
    df = next_token_neurons(model, layers=[1, 2], top_k=7, direction=direction, token_filter=None, exclude_glitch=False)
    assert list(df.columns[:6]) == ["layer", "neuron", "token_id", "token", "congruence", "rank"]
    for layer in (1, 2):
        C = brute(model, layer, direction)
        score = C.max(1)
        want = np.argsort(-score, kind="stable")[:7]
        got = df[df.layer == layer].sort_values("rank")
        np.testing.assert_array_equal(got.neuron.to_numpy(), want)
        np.testing.assert_array_equal(got.token_id.to_numpy(), C[want].argmax(1))
        np.testing.assert_allclose(got.congruence.to_numpy(), score[want], rtol=1e-5, atol=1e-5)
        top5 = np.stack(got.top_token_ids.to_numpy())
        np.testing.assert_array_equal(top5, np.argsort(-C[want], axis=1, kind="stable")[:, :5])


def test_defaults_and_errors(model):
    assert default_layers(model) == ([0, 1, 2], 20)
    with pytest.raises(ValueError, match="layer 3 is outside"):
        next_token_neurons(model, layers=[3], token_filter=None)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        next_token_neurons(model, layers=[1])
    with pytest.raises(ValueError, match="direction"):
        next_token_neurons(model, layers=[1], token_filter=None, direction="sideways")


def test_random_neurons_seeded(model):
    a = random_neurons(model, layers=[0, 2], n=5, seed=3, token_filter=None)
    b = random_neurons(model, layers=[0, 2], n=5, seed=3, token_filter=None)
    c = random_neurons(model, layers=[0, 2], n=5, seed=4, token_filter=None)
    pd.testing.assert_frame_equal(a, b)
    assert not a.neuron.equals(c.neuron)
    assert a.groupby("layer").neuron.nunique().tolist() == [5, 5]
    C = brute(model, 2)
    r = a[a.layer == 2]
    np.testing.assert_array_equal(r.token_id.to_numpy(), C[r.neuron.to_numpy()].argmax(1))


def test_mutual_exclusive_congruence_brute_force(model):
    df = mutual_exclusive_congruence(model, top=50, direction="embed")
    C = np.concatenate([brute(model, l, "embed") for l in range(model.cfg.n_layers)])  # (L*M, V)
    M = model.cfg.d_mlp
    want = []
    for g in range(C.shape[0]):
        t = int(C[g].argmax())
        if int(C[:, t].argmax()) != g:
            continue
        s_n = np.sort(C[g])[::-1]
        s_t = np.sort(C[:, t])[::-1]
        want.append((g // M, g % M, t, (s_n[0] - s_n[1]) * (s_t[0] - s_t[1])))
    want.sort(key=lambda x: -x[3])
    assert len(df) == min(50, len(want))
    got = set(zip(df.layer, df.neuron, df.token_id))
    assert got == {w[:3] for w in want[:len(df)]}
    np.testing.assert_allclose(df.score.to_numpy(), [w[3] for w in want[:len(df)]], rtol=1e-3, atol=1e-5)


def test_glitch_detection_flags_low_norm_and_padding(checkpoint, tmp_path):
    from ctxlookup.checkpoints import random_checkpoint
    from safetensors.numpy import load_file, save_file

    folder = random_checkpoint(tmp_path / "m", arch="gpt2", n_layers=2, d_model=32, n_heads=4, d_vocab=300, n_ctx=16)
    t = load_file(folder + "/model.safetensors")
    E = t["transformer.wte.weight"]
    E[[7, 123]] = E.mean(0) + 1e-3  # under-trained: at the centroid
    save_file(t, folder + "/model.safetensors")
    m = ctxlookup.Model.load(folder, tokenizer=False)
    g = detect_glitch_tokens(m)
    assert set(g[g.reason == "low_embedding_norm"].token_id) == {7, 123}
    df = next_token_neurons(m, layers=[1], top_k=300 * 0 + 50, token_filter=None, exclude_glitch=True)
    assert not df.token_id.isin([7, 123]).any()
    assert {r["token_id"] for r in df.attrs["excluded_tokens"]} == {7, 123}


def test_rare_in_corpus_tokens_are_flagged(text_model_dir):
    from conftest import SHARED

    m = ctxlookup.Model.load(text_model_dir)
    corpus = ctxlookup.Corpus(SHARED / "data" / "corpus" / "tiny.jsonl", limit=60)
    g = detect_glitch_tokens(m, corpus=corpus, max_docs=60, min_count=5)
    flagged = g.set_index("token_id")
    the, magikarp = m.to_single_token(" the"), m.to_single_token(" SolidGoldMagikarp")
    assert the not in flagged.index
    assert magikarp in flagged.index and flagged.loc[magikarp, "corpus_count"] == 0
    rare = g[g.reason == "rare_in_corpus"]
    assert len(rare) > 1000 and (rare.corpus_count < 5).all()
    df = next_token_neurons(m, layers=[2], top_k=5, corpus=corpus)
    assert not df.token_id.isin(g.token_id).any()


def test_token_counts_match_hf_tokenizers(text_model_dir):
    """token_counts equals counting the Hugging Face tokenizer's ids document by document."""
    from collections import Counter
    from conftest import SHARED
    from transformers import GPT2TokenizerFast

    m = ctxlookup.Model.load(text_model_dir)
    corpus = ctxlookup.Corpus(SHARED / "data" / "corpus" / "tiny.jsonl", limit=40)
    hf = GPT2TokenizerFast.from_pretrained(text_model_dir)
    want = Counter()
    for _, doc in zip(range(25), corpus):
        want.update(hf(doc.text)["input_ids"])
    expected = np.zeros(m.cfg.d_vocab, np.int64)
    expected[list(want)] = list(want.values())
    counts = ctxlookup.neurons.token_counts(m, corpus, max_docs=25)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)
    assert not ctxlookup.neurons.token_counts(m, corpus, max_docs=0).any()


def test_under_trained_tokens_brute_force(text_model_dir, tmp_path):
    """Tokens pushed far along the rare side of the frequency direction are flagged, and the
    flagged set and each frequency_z equal a NumPy re-computation."""
    import shutil
    from conftest import SHARED
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(text_model_dir, folder)
    m0 = ctxlookup.Model.load(str(folder))
    corpus = ctxlookup.Corpus(SHARED / "data" / "corpus" / "tiny.jsonl", limit=60)
    counts = ctxlookup.neurons.token_counts(m0, corpus, max_docs=60)
    planted = [m0.to_single_token(w) for w in (" the", " of", " water")]  # common enough to pass min_count
    assert (counts[planted] >= 5).all()
    v0 = ctxlookup.neurons.frequency_direction(m0, counts)
    t = load_file(str(folder / "model.safetensors"))
    E = t["transformer.wte.weight"]  # tied: the unembedding too
    spread = np.std(E.astype(np.float64) @ v0)
    E[planted] -= (40 * spread * v0).astype(E.dtype)
    save_file(t, str(folder / "model.safetensors"))
    m = ctxlookup.Model.load(str(folder))
    g = detect_glitch_tokens(m, corpus=corpus, max_docs=60, min_count=5)
    U = m.W_U.T.astype(np.float64)
    n = m.tokenizer.vocab_size
    U = U - U[:n].mean(0)
    p = U @ ctxlookup.neurons.frequency_direction(m, counts)
    z = (p - np.median(p[:n])) / (1.4826 * np.median(np.abs(p[:n] - np.median(p[:n]))))
    np.testing.assert_allclose(g.frequency_z, z[g.token_id], rtol=1e-9, atol=1e-9)
    under = g[g.reason == "under_trained"]
    assert set(planted) <= set(under.token_id) and (under.frequency_z < -3).all()
    others = set(g.token_id[g.reason != "under_trained"])
    special = set(m.tokenizer.special_token_ids)
    assert set(under.token_id) == set(np.nonzero(z[:n] < -3)[0].tolist()) - others - special
    # counts the caller already has give the same table as the corpus
    pd.testing.assert_frame_equal(detect_glitch_tokens(m, counts=counts, min_count=5), g)
    with pytest.raises(ValueError, match="one per token"):
        detect_glitch_tokens(m, counts=counts[:10])
    off = detect_glitch_tokens(m, corpus=corpus, max_docs=60, min_count=5, frequency_z=None)
    assert "under_trained" not in set(off.reason) and set(off.token_id) == others


def test_remove_frequency_brute_force(model):
    """Projecting the frequency direction out of W_out: the congruence equals the brute-force
    projected product, and every neuron's projected logit pattern is uncorrelated with f."""
    V = model.cfg.d_vocab
    counts = np.random.default_rng(4).integers(0, 1000, V) ** 2
    df = ctxlookup.next_token_neurons(model, layers=[0, 1], top_k=5, token_filter=None, exclude_glitch=False,
                                      remove_frequency=counts)
    f = np.log(counts + 1.0)
    f -= f.mean()
    U = model.W_U.astype(np.float64)
    v = U @ f
    v /= np.linalg.norm(v)
    np.testing.assert_allclose(df.attrs["frequency_direction"], v, rtol=1e-10)
    for layer in (0, 1):
        W = model.W_out[layer].astype(np.float64)
        raw = W @ U
        C = (W - np.outer(W @ v, v)) @ U
        Cc = C - C.mean(1, keepdims=True)
        assert np.abs(Cc @ f).max() < 1e-6 * np.abs(raw @ f).max()  # no correlation left
        got = df[df.layer == layer]
        want = np.lexsort((np.arange(len(C)), -C.max(1)))[:5]
        assert got.neuron.tolist() == want.tolist()
        np.testing.assert_allclose(got.congruence, C.max(1)[want], rtol=1e-4, atol=1e-5)
        rawc = raw[want] - raw[want].mean(1, keepdims=True)
        r = (rawc @ f) / (np.linalg.norm(rawc, axis=1) * np.linalg.norm(f))
        np.testing.assert_allclose(got.frequency_r, r, rtol=1e-6, atol=1e-9)
    plain = ctxlookup.next_token_neurons(model, layers=[0], top_k=5, token_filter=None, exclude_glitch=False)
    assert "frequency_r" not in plain.columns and plain.attrs["frequency_direction"] is None
    with pytest.raises(ValueError, match="one per token"):
        ctxlookup.next_token_neurons(model, layers=[0], top_k=5, token_filter=None, remove_frequency=np.ones(3))


def test_random_neurons_remove_frequency(model):
    counts = np.random.default_rng(5).integers(0, 500, model.cfg.d_vocab) ** 2
    a = random_neurons(model, layers=[2], n=6, seed=3, token_filter=None, remove_frequency=counts)
    b = random_neurons(model, layers=[2], n=6, seed=3, token_filter=None)
    assert a.neuron.tolist() == b.neuron.tolist()  # the same draw; only the tokens' scoring changes
    v = a.attrs["frequency_direction"]
    W = model.W_out[2].astype(np.float64)
    C = (W - np.outer(W @ v, v)) @ model.W_U.astype(np.float64)
    np.testing.assert_array_equal(a.token_id.to_numpy(), C[a.neuron.to_numpy()].argmax(1))


def _authors_find_neurons(C, strings, top_k, rejected=()):
    """The authors' find_neurons rule written out in NumPy over the dense congruence: argmax over all
    tokens, neurons in order of their maximum, skip when the token is not a whole word."""
    best, score = C.argmax(1), C.max(1)
    picked, skipped = [], []
    for n in np.argsort(-score, kind="stable"):
        s = strings[best[n]]
        if s is None or len(s) <= 2 or s[0] != " ":
            skipped.append(int(n))
            continue
        if best[n] in rejected:
            continue
        picked.append(int(n))
        if len(picked) == top_k:
            break
    return picked, skipped


def test_token_rule_skip_is_the_authors_find_neurons(text_model_dir):
    """Protocols paper and authors-2023: a neuron is named by its argmax over all tokens and skipped
    when that token is not a whole word; protocol ctxlookup renames it after its best whole-word token."""
    from ctxlookup.neurons import token_strings

    m = ctxlookup.Model.load(text_model_dir, fold_ln=True, center_writing_weights=True, center_unembed=True)
    strings = token_strings(m)
    for layer in (1, 2):
        C = brute(m, layer)
        want, skipped = _authors_find_neurons(C, strings, 15)
        assert len(skipped) > 0  # the random model's neurons often point at pieces: the rule matters here
        df = next_token_neurons(m, layers=[layer], top_k=15, exclude_glitch=False)  # default protocol: paper
        assert df.attrs["token_rule"] == "skip"
        assert df.neuron.tolist() == want
        np.testing.assert_array_equal(df.token_id.to_numpy(), C[want].argmax(1))
        assert [r["neuron"] for r in df.attrs["skipped_neurons"]] == skipped
        assert all(r["token_id"] == int(C[r["neuron"]].argmax()) for r in df.attrs["skipped_neurons"])
        # ctxlookup's rule: candidates restricted to whole words, every neuron kept
        allowed = np.array([s is not None and s.startswith(" ") and len(s) > 2 for s in strings])
        Cw = np.where(allowed, C, -np.inf)
        mine = next_token_neurons(m, layers=[layer], top_k=15, exclude_glitch=False, protocol="ctxlookup")
        assert mine.attrs["token_rule"] == "rename" and mine.attrs["skipped_neurons"] == []
        assert mine.neuron.tolist() == np.argsort(-Cw.max(1), kind="stable")[:15].tolist()
        np.testing.assert_array_equal(mine.token_id.to_numpy(), Cw[mine.neuron.to_numpy()].argmax(1))


def test_token_rule_skip_rejects_glitch_neurons_like_the_authors_hand_list(text_model_dir):
    from ctxlookup.neurons import token_strings

    m = ctxlookup.Model.load(text_model_dir)
    strings = token_strings(m)
    C = brute(m, 2)
    first, _ = _authors_find_neurons(C, strings, 3)
    glitch_tok = int(C[first[0]].argmax())
    glitch = pd.DataFrame({"token_id": [glitch_tok], "token": [strings[glitch_tok]], "reason": ["test"], "norm_z": [0.0]})
    want, _ = _authors_find_neurons(C, strings, 10, rejected={glitch_tok})
    df = next_token_neurons(m, layers=[2], top_k=10, glitch=glitch)
    assert df.neuron.tolist() == want and first[0] not in want
    assert {r["neuron"] for r in df.attrs["excluded_neurons"]} >= {first[0]}


def test_neuron_tables_round_trip_through_parquet(text_model_dir, tmp_path):
    """attrs hold only JSON-serialisable values, so to_parquet works and keeps them (issue: DataFrames in attrs)."""
    m = ctxlookup.Model.load(text_model_dir)
    for protocol in ("paper", "ctxlookup"):
        df = next_token_neurons(m, layers=[2], top_k=5, protocol=protocol)
        json.dumps(df.attrs)
        df.drop(columns=["top_token_ids", "top_tokens", "top_congruences"]).to_parquet(tmp_path / f"{protocol}.parquet")
        back = pd.read_parquet(tmp_path / f"{protocol}.parquet")
        assert back.attrs.get("skipped_neurons", df.attrs["skipped_neurons"]) == df.attrs["skipped_neurons"]
    r = random_neurons(m, layers=[2], n=4, remove_frequency=np.arange(m.cfg.d_vocab) % 7)
    json.dumps(r.attrs)
    assert r.attrs["token_filter"] is None  # the authors' baseline: every token is a candidate


def test_random_neurons_token_filter_by_protocol(text_model_dir):
    from ctxlookup.neurons import token_strings

    m = ctxlookup.Model.load(text_model_dir)
    strings = token_strings(m)
    C = brute(m, 1)
    a = random_neurons(m, layers=[1], n=30, seed=1)  # paper: argmax over all tokens
    np.testing.assert_array_equal(a.token_id.to_numpy(), C[a.neuron.to_numpy()].argmax(1))
    b = random_neurons(m, layers=[1], n=30, seed=1, protocol="ctxlookup")
    assert b.neuron.tolist() == a.neuron.tolist()
    assert all(strings[t].startswith(" ") and len(strings[t]) > 2 for t in b.token_id)


def test_top_congruent_brute_force(model):
    """Each neuron's most and least congruent tokens: the NumPy product W_out @ W_U sorted, with the
    excluded ids left out (the report shows them)."""
    from ctxlookup.neurons import token_strings, top_congruent

    excluded = [0, 5, 17, 33]
    got = top_congruent(model, [(0, 3), (1, 0), (1, 7)], k=6, k_neg=4, excluded=excluded)
    assert list(got.columns) == ["layer", "neuron", "side", "rank", "token_id", "token", "congruence"]
    assert got.attrs == dict(direction="unembed", n_excluded=len(excluded), k=6, k_neg=4)
    strs = token_strings(model)
    for (l, n), g in got.groupby(["layer", "neuron"]):
        c = model.W_out[l][n].astype(np.float64) @ model.W_U.astype(np.float64)
        c[excluded] = np.nan
        order = np.argsort(-np.nan_to_num(c, nan=-np.inf), kind="stable")
        top, bottom = g[g.side == "top"].sort_values("rank"), g[g.side == "bottom"].sort_values("rank")
        assert list(top.token_id) == list(order[:6]) and list(bottom.token_id) == list(np.argsort(np.nan_to_num(c, nan=np.inf))[:4])
        np.testing.assert_allclose(top.congruence, c[order[:6]], rtol=1e-4, atol=1e-5)
        assert list(top.token) == [strs[t] for t in top.token_id]
        assert not set(g.token_id) & set(excluded)
