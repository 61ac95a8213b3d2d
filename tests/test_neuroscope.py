"""ctxlookup.neuroscope: every neuron's top-k documents, histogram and band samples, checked
against a NumPy recomputation from run_with_cache; exact merges across shard sizes; the tables,
the manifest, resuming, the site and the CLI; bad input."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import ctxlookup
from ctxlookup import _core
from ctxlookup.corpus import Corpus
from ctxlookup.neuroscope import TABLES, Atlas, neuroscope
from ctxlookup.search import doc_tokens as _doc_tokens

WORDS = ("the cat sat on a mat while seven dogs ran across green fields and river banks in "
         "autumn light , . ; numbers 12 345 6789 code def return if else").split()


def write_corpus(path, n, seed=0):
    rng = np.random.RandomState(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = rng.choice(WORDS, size=rng.randint(3, 60))
            f.write(json.dumps({"text": " ".join(words), "meta": {"subset": f"s{i % 3}"}}) + "\n")
    return str(path)


def oracle(model, corpus_path, layers, k, bins, samples):
    """Everything the atlas keeps, recomputed in NumPy from run_with_cache on the same single batch."""
    docs = list(Corpus(corpus_path))
    toks = _doc_tokens(model, [d.text for d in docs], True, model.cfg.n_ctx)
    keep = [i for i, t in enumerate(toks) if len(t) > 1]
    _, cache = model.run_with_cache([toks[i] for i in keep], names_filter=lambda n: n.endswith("mlp.hook_post"))
    G = bins // 16
    out = {}
    for layer in layers:
        acts = np.asarray(cache[f"blocks.{layer}.mlp.hook_post"])
        for nrn in range(model.cfg.d_mlp):
            top, vals, keys, docs_, pos_ = [], [], [], [], []
            for r, i in enumerate(keep):
                a = acts[r, 1:len(toks[i]), nrn]
                p = int(np.argmax(a))  # the first maximum
                top.append((-float(a[p]), docs[i].doc_id, p))
                vals.append(a)
                docs_.append(np.full(len(a), docs[i].doc_id))
                pos_.append(np.arange(1, len(a) + 1))
            top = sorted(top)[:k]
            v = np.concatenate(vals).astype(np.float64)
            d = np.concatenate(docs_)
            p = np.concatenate(pos_)
            mn, mx = v.min(), v.max()
            e = max(-24, int(np.frexp(max(abs(mn), abs(mx)))[1]) - 1 - 20)
            while np.floor(mx / 2.0 ** e) - np.floor(mn / 2.0 ** e) >= bins:
                e += 1
            cell = np.floor(v / 2.0 ** e).astype(np.int64)
            start = int(cell.min())
            hist = np.bincount(cell - start, minlength=int(cell.max() - start + 1))
            key = _core.scope_keys(d, p.astype(np.int32))
            band = cell // G - start // G
            samp = {}
            for b in np.unique(band):
                idx = np.nonzero(band == b)[0]
                order = sorted(idx, key=lambda x: (int(key[x]), int(d[x]), int(p[x])))[:samples]
                samp[int(b)] = [(int(d[x]), int(p[x]) - 1, float(v[x])) for x in order]
            out[(layer, nrn)] = dict(top=[(dd, pp, -a) for a, dd, pp in top], hist=hist, start=start, e=e,
                                     mn=mn, mx=mx, samples=samp, n=len(v))
    return out


@pytest.fixture(scope="module")
def small(text_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scope")
    corpus = write_corpus(tmp / "docs.jsonl", 36)
    model = ctxlookup.Model.load(text_model_dir)
    return model, corpus, tmp


def test_every_neuron_equals_numpy_recomputation(small):
    model, corpus, tmp = small
    layers, k, bins, samples = [0, 2], 5, 32, 2
    atlas = neuroscope(model, corpus, out=str(tmp / "atlas"), layers=layers, k=k, bins=bins, samples=samples,
                       batch_tokens=10 ** 6, site=False, progress=False)
    ref = oracle(model, corpus, layers, k, bins, samples)
    top = atlas["top_examples"].groupby(["layer", "neuron"])
    hist = atlas["histograms"].groupby(["layer", "neuron"])
    quant = atlas["quantile_examples"].groupby(["layer", "neuron"])
    neurons = atlas["neurons"].set_index(["layer", "neuron"])
    assert len(neurons) == len(layers) * model.cfg.d_mlp
    for (layer, nrn), r in ref.items():
        t = top.get_group((layer, nrn)).sort_values("rank")
        assert list(zip(t.doc_id, t.position, t.activation)) == [(d, p, np.float32(a)) for d, p, a in r["top"]]
        h = hist.get_group((layer, nrn)).sort_values("bin")
        assert h["count"].tolist() == r["hist"].tolist()
        assert h["lo"].iloc[0] == r["start"] * 2.0 ** r["e"] and (h.hi - h.lo == 2.0 ** r["e"]).all()
        nr = neurons.loc[(layer, nrn)]
        assert nr["tokens"] == r["n"] and nr["min"] == np.float32(r["mn"]) and nr["max"] == np.float32(r["mx"])
        q = quant.get_group((layer, nrn))
        got = {b: list(zip(g.sort_values("sample").doc_id, g.sort_values("sample").position,
                           g.sort_values("sample").activation)) for b, g in q.groupby("band")}
        assert got == {b: [(d, p, np.float32(a)) for d, p, a in s] for b, s in r["samples"].items()}
        # each band's token count and quantile range agree with the histogram
        for b, g in q.groupby("band"):
            lo, hi = g.lo.iloc[0], g.hi.iloc[0]
            inside = h[(h.lo >= lo) & (h.hi <= hi)]["count"].sum()
            assert g.band_tokens.iloc[0] == inside
            assert g.quantile_lo.iloc[0] == pytest.approx(h[h.hi <= lo]["count"].sum() / r["n"], abs=0)


def test_merges_are_exact_across_shard_sizes(small):
    """The same batches grouped into 1, 3 or 36 shards (merged in a tree) give identical tables."""
    model, corpus, tmp = small
    kw = dict(layers=[1], k=4, bins=16, samples=3, batch_tokens=64, site=False, progress=False)
    runs = [neuroscope(model, corpus, out=str(tmp / f"sh{s}"), shard_docs=s, **kw) for s in (1000, 12, 1)]
    assert [r.manifest["scan"]["shards"] for r in runs][0] == 1 and runs[2].manifest["scan"]["shards"] > 10
    for r in runs[1:]:
        for t in TABLES:
            pd.testing.assert_frame_equal(r[t], runs[0][t], check_exact=True)


def test_scan_views_equal_the_atlas_rows_and_leave_the_scan_as_it_was(small, tmp_path):
    """max_activating_histograms: its max_acts is max_activating's, bit for bit; each chosen
    neuron's histogram and quantile rows are the whole-layer atlas's rows for that neuron (the
    scope of a subset of neurons, some gathered from scattered columns, some a run of adjacent
    ones); a rerun resumes from the checkpoint and gives the same tables."""
    from ctxlookup.scan import max_activating, max_activating_histograms

    model, corpus, tmp = small
    M = model.cfg.d_mlp
    neurons = ([(2, n) for n in (M - 1, 5, 77)] + [(0, n) for n in range(10, 80)]  # unsorted, a run of 70 adjacent
               + [(0, 3), (2, 5)])                                                    # a duplicate
    kw = dict(k=4, batch_tokens=200, progress=False)
    plain = max_activating(model, neurons, corpus, **kw)
    ckpt = str(tmp_path / "scan.ckpt.npz")
    got, views = max_activating_histograms(model, neurons, corpus, bins=32, samples=2, checkpoint=ckpt, **kw)
    pd.testing.assert_frame_equal(got, plain, check_exact=True)
    assert got.attrs == plain.attrs
    atlas = neuroscope(model, corpus, out=str(tmp / "views_atlas"), layers=[0, 2], k=4, bins=32, samples=2,
                       batch_tokens=200, site=False, progress=False)
    chosen = pd.DataFrame(sorted(set(neurons)), columns=["layer", "neuron"])
    for name in ("histograms", "quantile_examples"):
        assert list(views[name].columns) == list(atlas[name].columns)
        want = atlas[name].merge(chosen, on=["layer", "neuron"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(views[name], want, check_exact=True)
        assert set(zip(views[name].layer, views[name].neuron)) == set(zip(chosen.layer, chosen.neuron))
    again, views2 = max_activating_histograms(model, neurons, corpus, bins=32, samples=2, checkpoint=ckpt, **kw)
    pd.testing.assert_frame_equal(again, plain, check_exact=True)
    for name in views:
        pd.testing.assert_frame_equal(views2[name], views[name], check_exact=True)
    # a checkpoint of the plain scan is not resumed as one with histograms: the scan starts over
    ckpt2 = str(tmp_path / "plain.ckpt.npz")
    max_activating(model, neurons, corpus, checkpoint=ckpt2, **kw)
    _, views3 = max_activating_histograms(model, neurons, corpus, bins=32, samples=2, checkpoint=ckpt2, **kw)
    for name in views:
        pd.testing.assert_frame_equal(views3[name], views[name], check_exact=True)


def test_scope_of_chosen_neurons_refuses_bad_lists():
    for layers, nrns, msg in (([0, 0], [5, 3], "sorted by"), ([0, 0], [3, 3], "distinct"), ([0], [64], "outside"),
                              ([-1], [0], "negative"), ([0, 1], [1], "differ in length")):
        with pytest.raises(ValueError, match=msg):
            _core.Scope(np.array(layers), 64, 2, 16, 1, neurons=np.array(nrns))


def test_site_cli_and_manifest(small, tmp_path):
    """The CLI writes the tables, the manifest and the site: a page per neuron whose top example
    colours the maximum's token, layer pages, and a search index naming every neuron."""
    model, corpus, _ = small
    from ctxlookup.cli import main

    out = tmp_path / "cli"
    assert main(["neuroscope", "--model", model.path, "--corpus", corpus, "--out", str(out), "--layers", "1",
                 "--k", "3", "--bins", "16", "--no-progress"]) == 0
    atlas = Atlas.load(str(out))
    m = atlas.manifest
    assert m["scan"]["shards"] == len(m["shards"]) and m["scan"]["docs"] == 36 and m["tables"]["neurons"] == 128
    n = atlas["neurons"]
    # the logit attribution is W_out[layer][neuron] @ W_U (processed weights), checked for one neuron
    row = n[n.neuron == 7].iloc[0]
    proc = ctxlookup.Model.load(model.path, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                fold_value_biases=True)
    logits = proc.W_out[1, 7] @ proc.W_U
    assert list(row.top_token_ids) == list(np.argsort(-logits, kind="stable")[:10])
    assert list(row.bottom_token_ids) == list(np.argsort(logits, kind="stable")[:10])
    site = out / "site"
    page = (site / "neurons" / "L1N7.html").read_text()
    import html
    assert 'class="a8 max"' in page  # each top example's maximum carries the top colour
    assert f"<code>{html.escape(row.top_tokens[0])}</code>" in page
    assert "Layer 1, neuron 7" in page and "<svg class=\"hist\"" in page
    assert len(os.listdir(site / "neurons")) == 128 and (site / "layer-1.html").exists()
    idx = (site / "search_index.js").read_text()
    entries = json.loads(idx[idx.index("["):idx.rindex("]") + 1])
    assert sorted((e[0], e[1]) for e in entries) == [(1, i) for i in range(128)]
    assert (site / "style.css").exists() and 'href="../style.css"' in page


def test_run_atlas_link_is_relative_and_only_when_the_site_exists(tmp_path):
    from ctxlookup.neuroscope_site import run_atlas_link

    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    assert run_atlas_link(str(run), str(run / "report")) is None
    (run / "atlas" / "site").mkdir(parents=True)
    assert run_atlas_link(str(run), str(run / "report")) is None  # a folder without the site's index
    (run / "atlas" / "site" / "index.html").write_text("<html></html>")
    assert run_atlas_link(str(run), str(run / "report")) == "../atlas/site/index.html"
    assert run_atlas_link(str(run), str(tmp_path / "elsewhere" / "rep")) == "../../run/atlas/site/index.html"
