"""The HTML report: a run on the tiny text model (with hostile text in its corpus), its static site
checked file by file (links resolve both ways, everything escaped, tokens coloured, numbers as
the tables hold them, a big index paged and searchable), its notebook views, the CLI, and the
site opened in headless Chromium over the DevTools protocol (no console errors, no failed
requests, links resolve, tokens coloured in the DOM, a screenshot that is not blank, and every
page laid out as the report before the templates laid it out)."""
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
import pandas as pd
import pytest

import ctxlookup
from conftest import SHARED
from ctxlookup.replicate import replicate
from ctxlookup.report import HeadView, NeuronView, RunData, RunView, head_page, neuron_page, report, view

OPTS = dict(layers=[1, 2], neurons_per_layer=3, random_per_layer=2, prompts_per_neuron=6, test_prompts_per_neuron=4,
            table3=[3, 6], progress=False, batch_tokens=2048)
NASTY = '<script>alert("pwn")</script> & <img src=x onerror="alert(1)"> </div>\'"<!--'
REQUIRE = os.environ.get("CTXLOOKUP_STRICT_TESTS") == "1"


def _hostile(lines):
    """Documents with the hostile string near their start, in their middle and at their end."""
    out = []
    for line in lines:
        o = json.loads(line)
        t = o["text"]
        mid = len(t) // 2
        o["text"] = t[:40] + " " + NASTY + " " + t[40:mid] + " " + NASTY + " " + t[mid:] + " " + NASTY
        out.append(json.dumps(o))
    return "\n".join(out) + "\n"


def make_run(text_model_dir, tmp_path_factory):
    """The report tests' run (conftest.report_run_dir): the tiny text model on a corpus with
    hostile text in every document."""
    d = tmp_path_factory.mktemp("report-run")
    lines = (SHARED / "data" / "corpus" / "tiny.jsonl").read_text().splitlines()
    (d / "train.jsonl").write_text(_hostile(lines[:120]))
    (d / "test.jsonl").write_text(_hostile(lines[120:]))
    replicate(text_model_dir, str(d / "run"), corpus=str(d / "train.jsonl"), test_corpus=str(d / "test.jsonl"), **OPTS)
    return str(d / "run")


@pytest.fixture(scope="module")
def run_dir(report_run_dir):
    return report_run_dir


@pytest.fixture(scope="module")
def site(run_dir):
    index = report(run_dir)
    assert index == os.path.join(run_dir, "report", "index.html")
    return os.path.dirname(index)


def _edited_copy(run_dir, dest, drop=(), drop_tables=()):
    """A copy of the run for a test that edits its tables: the manifest forgets the files' hashes
    (as a run made before it kept them) and the stages in ``drop``, whose tables are removed (as a
    run stopped before them, or made before they existed), and the tables in ``drop_tables``."""
    from ctxlookup.replicate import OUTPUTS

    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("report"))
    mpath = os.path.join(dest, "manifest.json")
    m = json.load(open(mpath))
    for stage in drop:
        m["stages"].pop(stage, None)
    for name in [t for stage in drop for t in OUTPUTS[stage]] + list(drop_tables):
        for ext in ("parquet", "csv"):
            if os.path.exists(os.path.join(dest, f"{name}.{ext}")):
                os.remove(os.path.join(dest, f"{name}.{ext}"))
    for rec in m["stages"].values():
        rec.pop("outputs", None)
    json.dump(m, open(mpath, "w"))
    return str(dest)


def _unpack(s):
    """render.pack's string back to its integers (decoded here on its own, as report.js does)."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
    out, u, shift = [], 0, 0
    for ch in s:
        d = digits.index(ch)
        if d >= 32:
            u, shift = u + ((d - 32) << shift), shift + 5
        else:
            out.append(u + (d << shift))
            u, shift = 0, 0
    return out


def _examples_js(site, layer, neuron):
    """A neuron's examples as its pages' script holds them (window.CTXL_EXAMPLES), unpacked: each
    example as ``{f, p, s, n, t: token texts, a: activations in thousandths}`` (a negative one that
    rounds to 0 thousandths as -1e-9, None for a missing one)."""
    text = open(os.path.join(site, "assets", "examples", f"L{layer}N{neuron}.js"), encoding="utf-8").read()
    assert text.startswith("window.CTXL_EXAMPLES = ") and text.endswith(";\n")
    obj = json.loads(text[len("window.CTXL_EXAMPLES = "):-2])

    def act(c):
        k, neg = (c - 1) // 2, (c - 1) % 2 == 1
        return None if c == 0 else (-1e-9 if neg and k == 0 else -k if neg else k)

    if isinstance(obj["v"], str):  # ids in the report's shared texts (assets/vocab.js)
        vtext = open(os.path.join(site, "assets", "vocab.js"), encoding="utf-8").read()
        assert vtext.startswith("window.CTXL_VOCAB = ") and vtext.endswith(";\n")
        shared = json.loads(vtext[len("window.CTXL_VOCAB = "):-2])
        obj["v"] = [shared[i] for i in _unpack(obj["v"])]
    obj["ex"] = {key: dict(f=r[0], p=r[1], s=r[2], n=r[3], t=[obj["v"][i] for i in _unpack(r[4])],
                           a=[act(c) for c in _unpack(r[5])]) for key, r in obj["ex"].items()}
    return obj


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids, self.tags, self.scripts = [], set(), [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self.scripts += 1
        for k in ("href", "src"):
            if a.get(k) is not None:
                self.refs.append((tag, k, a[k]))
        if a.get("id"):
            self.ids.add(a["id"])


def _parse(path):
    p = _Links()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    return p


def _pages(site):
    for root, _, files in os.walk(site):
        for f in files:
            if f.endswith(".html"):
                yield os.path.join(root, f)


def _resolve(page, ref):
    """A relative reference -> (absolute file path, fragment); None for data: URIs."""
    if ref.startswith("data:"):
        return None
    u = urllib.parse.urlsplit(ref)
    assert not u.scheme and not u.netloc, f"{page}: external reference {ref}"
    path = os.path.normpath(os.path.join(os.path.dirname(page), urllib.parse.unquote(u.path))) if u.path else page
    return path, u.fragment


# --------------------------------------------------------------------------- the static site
def test_every_page_exists_and_every_link_resolves(site, run_dir):
    neurons = pd.read_parquet(os.path.join(run_dir, "neurons.parquet")).drop_duplicates(["layer", "neuron"])
    heads = pd.read_parquet(os.path.join(run_dir, "heads.parquet")).drop_duplicates(["layer", "neuron", "head_layer", "head"])
    assert len(heads) > 0
    for r in neurons.itertuples():
        assert os.path.exists(os.path.join(site, neuron_page(r.layer, r.neuron)))
    for r in heads.itertuples():
        assert os.path.exists(os.path.join(site, head_page(r.layer, r.neuron, r.head_layer, r.head)))
    for f in ("index.html", "assets/index-data.js", "assets/figure5.png", "assets/figure5.svg", "assets/figure6.png",
              "lists/neurons-1.html", "lists/heads-1.html"):
        assert os.path.getsize(os.path.join(site, f)) > 100, f
    parsed = {p: _parse(p) for p in _pages(site)}
    assert len(parsed) == 1 + len(neurons) + len(heads) + 2
    n_refs = 0
    for page, p in parsed.items():
        for tag, attr, ref in p.refs:
            got = _resolve(page, ref)
            if got is None:
                continue
            path, frag = got
            assert os.path.isfile(path), f"{page}: <{tag} {attr}={ref}> does not exist"
            if frag and path.endswith(".html"):
                target = parsed.get(path) or _parse(path)
                assert frag in target.ids, f"{page}: {ref}: no id {frag!r} there"
            n_refs += 1
    assert n_refs > 50
    # the index's explorers link every neuron and pair page (rows in the data file)
    data = open(os.path.join(site, "assets", "index-data.js")).read()
    rec = json.loads(data[data.index("=") + 1:].strip().rstrip(";"))
    hrefs = {c["h"] for rows in (rec["neurons"]["rows"], rec["heads"]["rows"]) for r in rows for c in r
             if isinstance(c, dict) and c.get("h")}
    for r in neurons.itertuples():
        assert neuron_page(r.layer, r.neuron) in hrefs
    for r in heads.itertuples():
        assert head_page(r.layer, r.neuron, r.head_layer, r.head) in hrefs
    assert all(os.path.isfile(os.path.join(site, h)) for h in hrefs)


def test_neuron_and_head_pages_link_both_ways(site, run_dir):
    heads = pd.read_parquet(os.path.join(run_dir, "heads.parquet")).drop_duplicates(["layer", "neuron", "head_layer", "head"])
    for r in heads.itertuples():
        hp = os.path.join(site, head_page(r.layer, r.neuron, r.head_layer, r.head))
        np_ = os.path.join(site, neuron_page(r.layer, r.neuron))
        to_neuron = {_resolve(hp, ref)[0] for _, _, ref in _parse(hp).refs if _resolve(hp, ref)}
        to_head = {_resolve(np_, ref)[0] for _, _, ref in _parse(np_).refs if _resolve(np_, ref)}
        assert os.path.normpath(np_) in to_neuron, f"{hp} does not link to its neuron"
        assert os.path.normpath(hp) in to_head, f"{np_} does not link to its head {r.head_layer}.{r.head}"
        assert os.path.normpath(os.path.join(site, "index.html")) in to_neuron


def test_hostile_text_is_escaped_everywhere(site, run_dir, tmp_path):
    def check(folder):
        seen_escaped = 0
        for page in _pages(folder):
            text = open(page, encoding="utf-8").read()
            p = _parse(page)
            # no inline script: the site's one script, and its data (the index's rows, a neuron's examples)
            scripts = [a.get("src") for tag, a in p.tags if tag == "script"]
            assert scripts and all(scripts) and scripts[-1].endswith("static/report.js"), (page, scripts)
            # a list page: the script; the index: its rows too; a neuron or head page: the report's
            # shared token texts and the neuron's examples
            want = 1 if os.sep + "lists" + os.sep in page else 2 if os.path.basename(page) == "index.html" else 3
            assert len(scripts) == want, (page, scripts)
            assert len(re.findall(r"<script[^>]*>", text)) == len(scripts) and text.count("</script>") == len(scripts)
            for tag, attrs in p.tags:
                assert not any(k.startswith("on") for k in attrs), f"{page}: <{tag}> has an event handler attribute"
                assert not (tag == "img" and attrs.get("src") == "x"), page
            assert '<script>alert("pwn")' not in text and "<img src=x" not in text
            seen_escaped += text.count("&lt;script&gt;") + text.count("&lt;img") + text.count("script&gt;")
        return seen_escaped

    # tokens of the corpus (the hostile string is in every document): data of the examples' script,
    # drawn as text (in Chromium below, no dialog opens)
    check(site)
    texts = ["".join(x["t"]) for f in os.listdir(os.path.join(site, "assets", "examples"))
             for x in _examples_js(site, *map(int, re.findall(r"\d+", f)))["ex"].values()]
    assert sum('<script>alert("pwn")</script>' in t for t in texts) > 0
    # strings from the tables: token, explanation, prompt text, subset, without a model (plain text: a
    # run made before the examples stage stored the tokens)
    bad = _edited_copy(run_dir, tmp_path / "run", drop=["examples"])
    for name, cols in (("neurons", ["token"]), ("prompts", ["text", "subset", "token"]), ("max_acts", ["subset", "token"]),
                       ("explanations", ["explanation", "token", "prompt"]), ("scores", ["explanation", "token", "prompt"]),
                       ("test_prompts", ["text", "subset"]), ("test_max_acts", ["subset"])):
        df = pd.read_parquet(os.path.join(bad, f"{name}.parquet"))
        for c in cols:
            df[c] = NASTY
        df.to_parquet(os.path.join(bad, f"{name}.parquet"), index=False)
    out = report(bad, out=str(tmp_path / "plain"), model=False)
    n = check(os.path.dirname(out))
    assert n > 20
    neuron = pd.read_parquet(os.path.join(bad, "neurons.parquet")).iloc[0]
    page = open(os.path.join(tmp_path / "plain", neuron_page(neuron.layer, neuron.neuron)), encoding="utf-8").read()
    assert "Tokens are not coloured" in page and not re.search('class="tok[ "]', page)
    assert ctxlookup.report.esc('<script>alert("pwn")</script> & <img src=x onerror="alert(1)">') in page
    assert "&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page


def test_tokens_coloured_max_and_truncation_marked(site, run_dir):
    data = RunData(run_dir)
    neurons = data.neurons
    cut_pages = 0
    for r in neurons.itertuples():
        exs = data.examples(r.layer, r.neuron)
        assert exs, "every neuron has max-activating examples"
        for e in exs:
            assert e.context == "document" and e.strs is not None and len(e.strs) == len(e.acts)
            # the recomputed activation at the maximum is the scan's
            assert e.acts[e.position - e.first] == pytest.approx(e.activation, rel=1e-3, abs=1e-4)
            assert e.first <= e.position < e.first + len(e.strs) <= e.position + 11
            if e.start is not None:
                assert e.first <= e.start
        # the page's script holds each example's tokens and activations once (drawn by static/report.js,
        # checked in Chromium below): the page has a box for each, with its text for browsers without it
        js = _examples_js(site, r.layer, r.neuron)
        assert js["scale"] == pytest.approx(data.scale(r.layer, r.neuron))
        page = open(os.path.join(site, neuron_page(r.layer, r.neuron)), encoding="utf-8").read()
        for e in exs:
            x = js["ex"][f"train-{e.rank}-{e.doc_id}"]
            assert (x["f"], x["p"], x["s"], x["n"], x["t"]) == (e.first, e.position, e.start, e.doc_len, e.strs)
            for k, a in zip(x["a"], e.acts):  # thousandths, as the tooltip shows them; a tiny negative as itself
                assert k == round(float(f"{a:.3f}") * 1000) if isinstance(k, int) else (k < 0 and f"{a:.3f}" == "-0.000")
            assert f'<div class="ex" id="train-{e.rank}-{e.doc_id}">' in page or f'id="train-{e.rank}-{e.doc_id}"' in page
        cut_pages += any(e.start is not None and e.start > e.first for e in exs)
    assert data.mismatches == 0
    assert cut_pages > 0


def test_numbers_come_from_the_tables(site, run_dir):
    scores = pd.read_parquet(os.path.join(run_dir, "scores.parquet"))
    preds = pd.read_parquet(os.path.join(run_dir, "predictions.parquet"))
    # the stored per-prompt predictions are the scores' confusion counts
    key = ["layer", "neuron", "head_layer", "head", "n_prompts_per_neuron"]
    for r in scores.itertuples():
        p = preds[(preds.layer == r.layer) & (preds.neuron == r.neuron) & (preds.head_layer == r.head_layer) &
                  (preds["head"] == r.head) & (preds.n_prompts_per_neuron == r.n_prompts_per_neuron)]
        pred = p.predicted.astype("boolean")
        assert len(p) == r.n_test
        assert int((pred & p.actual).sum()) == r.TP and int((pred & ~p.actual).sum()) == r.FP
        assert int((~pred & p.actual).sum()) == r.FN and int((~pred & ~p.actual).sum()) == r.TN
        assert int(pred.isna().sum()) == r.n_unparsed
    assert not preds.duplicated(key + ["prompt_id"]).any()
    main = scores[scores.n_prompts_per_neuron == OPTS["prompts_per_neuron"]]
    for r in main.itertuples():
        page = open(os.path.join(site, head_page(r.layer, r.neuron, r.head_layer, r.head)), encoding="utf-8").read()
        for k in ("E", "TPR", "TNR"):
            v = getattr(r, k)
            want = "–" if not np.isfinite(v) else f"{v:.3f}"   # one format: 0.000 as well as 1.000
            assert f'<div class="k">{k}</div><div class="v">{want}</div>' in page, (k, want)
        assert ctxlookup.report.esc(r.explanation) in page
        n_test = page.count('class="ex right"') + page.count('class="ex wrong"')
        assert n_test == r.n_test - r.n_unparsed
    # each neuron's an-neuron plot: a bar per bin of the evidence table, labelled with its fraction
    ev = pd.read_parquet(os.path.join(run_dir, "evidence.parquet"))
    nt = ev[ev.group == "next_token"]
    index = open(os.path.join(site, "index.html"), encoding="utf-8").read()
    assert f'<div class="k">an-neuron check</div><div class="v">{int(nt.rising.sum())}/{len(nt)}</div>' in index
    vs = ctxlookup.stats.rising_comparison(ev)
    assert ctxlookup.report.esc(f"Fisher's exact test, one-sided p = {vs['p']:.1e}") in index
    ev = ev.drop_duplicates(["layer", "neuron"])
    assert len(ev) > 0
    for r in ev.itertuples():
        page = open(os.path.join(site, neuron_page(r.layer, r.neuron)), encoding="utf-8").read()
        plot = page[page.index('id="evidence"'):page.index('id="heads"')]
        assert plot.count("<rect ") == r.n_bins == len(r.bin_fractions)
        for f, c in zip(r.bin_fractions, r.bin_counts):
            assert f">{100 * f:.1f}%</text>" in plot and f"{100 * f:.1f}% of {c:,} positions" in plot
        assert ("rises with the activation" in plot) == bool(r.rising)
        assert f"On {r.n_positions:,} positions" in plot and "10 equal-width bins, the sparse top ones merged to at least 100 positions" in plot


def _big_site(run_dir, tmp_path):
    """The run with every neuron of the model listed (384): a report whose index must page."""
    big = _edited_copy(run_dir, tmp_path / "big")
    n = pd.read_parquet(os.path.join(big, "neurons.parquet"))
    have = set(zip(n.layer, n.neuron))
    extra = pd.DataFrame([dict(layer=l, neuron=j, token_id=262, token=" the", congruence=0.1, rank=-1, group="random")
                          for l in range(3) for j in range(128) if (l, j) not in have])
    pd.concat([n, extra], ignore_index=True).to_parquet(os.path.join(big, "neurons.parquet"), index=False)
    return report(big, page_size=50)


def test_big_index_is_paged_and_searchable(run_dir, tmp_path):
    index = _big_site(run_dir, tmp_path)
    site = os.path.dirname(index)
    lists = sorted(f for f in os.listdir(os.path.join(site, "lists")) if f.startswith("neurons-"))
    assert len(lists) == 8  # 384 neurons, 50 per page
    text = open(index, encoding="utf-8").read()
    assert 'type="search"' in text and 'class="prev"' in text and 'class="next"' in text
    assert "L2N127" not in text and "L2N127" in open(os.path.join(site, "assets", "index-data.js")).read()
    assert os.path.getsize(index) < 150_000
    last = open(os.path.join(site, "lists", lists[-1]), encoding="utf-8").read()
    assert "L2N127" in last and "page 8 of 8" in last
    assert len(os.listdir(os.path.join(site, "neurons"))) == 384


def test_without_corpus_colours_the_prompts_alone(run_dir, tmp_path):
    """A run made before the examples stage, and its corpus gone: the prompts alone are run."""
    old = _edited_copy(run_dir, tmp_path / "old", drop=["examples"])
    out = report(old, out=str(tmp_path / "nocorpus"), corpus=str(tmp_path / "gone.jsonl"),
                 test_corpus=str(tmp_path / "gone2.jsonl"))
    data = RunData(old, corpus=str(tmp_path / "gone.jsonl"), test_corpus=str(tmp_path / "gone2.jsonl"))
    n = data.neurons.iloc[0]
    exs = data.examples(n.layer, n.neuron)
    kept = [e for e in exs if e.prompt_id is not None]
    assert kept and all(e.context == "prompt" and e.first == e.start for e in kept)
    for e in kept:  # the prompt alone gives the truncated prompt's activation at its last token
        assert e.acts[-1] == pytest.approx(e.prompt_activation, rel=1e-3, abs=1e-4)
    page = open(os.path.join(os.path.dirname(out), neuron_page(n.layer, n.neuron)), encoding="utf-8").read()
    assert "Context unavailable" in page and 'class="ex" id="train-' in page
    assert len(_examples_js(os.path.dirname(out), n.layer, n.neuron)["ex"]) >= len(kept)


def test_prompt_context_needs_no_corpus(run_dir, tmp_path):
    out = report(run_dir, out=str(tmp_path / "prompt"), context="prompt")
    data = RunData(run_dir, context="prompt")
    for r in data.neurons.itertuples():
        for e in data.examples(r.layer, r.neuron) + data.examples(r.layer, r.neuron, "test"):
            if e.prompt_id is not None:
                assert e.context == "prompt" and len(e.strs) == e.n_tokens
                assert e.acts[-1] == pytest.approx(e.prompt_activation, rel=1e-3, abs=1e-4)
            else:
                assert e.strs is None  # a dropped document: nothing to run without the corpus
    assert data.corpus_problem == {}
    page = open(os.path.join(os.path.dirname(out), neuron_page(r.layer, r.neuron)), encoding="utf-8").read()
    assert ctxlookup.report.esc("made with context='prompt'") in page


def test_partial_run(run_dir, tmp_path):
    """A run stopped after the truncation (no attribution, heads, scores or figures) still reports."""
    part = _edited_copy(run_dir, tmp_path / "part", drop=["attribution", "select", "explain", "score", "ablation",
                                                         "stats", "evidence", "examples"])
    for name in ("figure5", "figure6"):
        for ext in ("png", "svg"):
            os.remove(os.path.join(part, f"{name}.{ext}"))
    index = report(part)
    site = os.path.dirname(index)
    assert not os.path.exists(os.path.join(site, "heads")) or os.listdir(os.path.join(site, "heads")) == []
    text = open(index, encoding="utf-8").read()
    assert "not in this run" in text
    n = pd.read_parquet(os.path.join(part, "neurons.parquet")).iloc[0]
    page = open(os.path.join(site, neuron_page(n.layer, n.neuron)), encoding="utf-8").read()
    assert "none was explained" in page and "has no an-neuron check" in page
    js = _examples_js(site, n.layer, n.neuron)  # the tokens computed with the model, as the run did not store them
    assert js["ex"] and all(len(x["t"]) == len(x["a"]) and x["f"] <= x["p"] < x["f"] + len(x["t"]) for x in js["ex"].values())


def test_report_of_a_run_object(text_model_dir, run_dir, tmp_path):
    from ctxlookup.replicate import Options, Run

    m = json.load(open(os.path.join(run_dir, "manifest.json")))
    run = Run(Options(**dict(m["options"], out=run_dir)))
    index = ctxlookup.report(run, out=str(tmp_path / "obj"))
    assert os.path.exists(index) and RunData(run).dir == os.path.abspath(run_dir)


def test_report_again_replaces_its_pages(run_dir, tmp_path):
    out = str(tmp_path / "again")
    report(run_dir, out=out)
    stale = os.path.join(out, "neurons", "L9N9.html")
    open(stale, "w").write("old")
    report(run_dir, out=out)
    assert not os.path.exists(stale)


# --------------------------------------------------------------------------- notebooks and CLI
def test_notebook_views(run_dir, site):
    scores = pd.read_parquet(os.path.join(run_dir, "scores.parquet"))
    r = scores.iloc[0]
    hv = HeadView(run_dir, r.layer, r.neuron, r.head_layer, r["head"], n_prompts=r.n_prompts_per_neuron)
    h = hv._repr_html_()
    assert h.startswith('<div class="ctxl-root frag"><style>') and ctxlookup.report.esc(r.explanation) in h
    assert 'class="tok' in h and "href=" not in h.split("</style>", 1)[1]  # no links to pages that are not there
    nv = NeuronView(run_dir, r.layer, r.neuron)
    n = nv._repr_html_()
    assert f"L{r.layer}N{r.neuron}" in n and 'class="tok max' in n
    # the same views as the pages
    page = open(os.path.join(site, neuron_page(r.layer, r.neuron)), encoding="utf-8").read()
    legend = '<span class="tok max">max</span>'
    a, b = n.find('<section class="views">'), n.find("</section>")
    views = n[a:b] if a >= 0 else ""  # the histogram's quantile examples, each with its token marked too
    assert views.count('class="tok max') == views.count('<div class="qex">')
    assert page.count('<div class="ex') == n.count('class="tok max') - n.count(legend) - views.count('class="tok max') > 0
    assert "<script" not in h and "<script" not in n  # a notebook view draws its tokens inline
    assert isinstance(view(r, run_dir), HeadView)
    assert isinstance(view(scores.iloc[[0]], run_dir), HeadView)
    assert isinstance(view(dict(layer=int(r.layer), neuron=int(r.neuron)), run_dir), NeuronView)
    neurons = pd.read_parquet(os.path.join(run_dir, "neurons.parquet"))
    assert isinstance(view(next(neurons.itertuples(index=False)), run_dir), NeuronView)
    multi = view(scores, run_dir)
    assert multi._repr_html_().count('<div class="ctxl-root frag">') == min(len(scores), 10)
    rv = RunView(run_dir)._repr_html_()
    assert "data:image/png;base64," in rv and "Explanation scores" in rv
    # a Run object works too, and ctxlookup.report is callable
    assert callable(ctxlookup.report) and ctxlookup.report.NeuronView is NeuronView


def test_cli(run_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ctxlookup.__file__)))
    out = str(tmp_path / "cli")
    r = subprocess.run([sys.executable, "-m", "ctxlookup.cli", "report", run_dir, "--out", out, "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.join(out, "index.html") in r.stdout and os.path.exists(os.path.join(out, "index.html"))
    r = subprocess.run([sys.executable, "-m", "ctxlookup.cli", "report", str(tmp_path / "nothing")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not a run directory" in r.stderr


# --------------------------------------------------------------------------- a real browser
@pytest.fixture(scope="module")
def browser():
    from cdp import Browser, find_chromium

    import importlib.util

    if importlib.util.find_spec("websocket") is None:  # websocket-client
        if REQUIRE:
            pytest.fail("websocket-client is not installed (make deps installs it)")
        pytest.skip("websocket-client is not installed (make deps installs it)")
    if find_chromium() is None:
        if REQUIRE:
            pytest.fail("chromium is not installed (make sysdeps installs it)")
        pytest.skip("chromium is not installed (make sysdeps installs it: apt-get install chromium)")
    b = Browser()
    yield b
    b.close()


def _file_url(path):
    return "file://" + urllib.request.pathname2url(os.path.abspath(path))


def _check_links(b, page):
    hrefs = b.eval("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    assert hrefs, f"{page}: no links"
    for h in hrefs:
        u = urllib.parse.urlsplit(h)
        assert u.scheme == "file", f"{page}: link out of the site: {h}"
        path = urllib.request.url2pathname(u.path)
        assert os.path.isfile(path), f"{page}: broken link {h}"
    return hrefs


def _not_blank(png, tmp_path, name):
    from PIL import Image

    (tmp_path / f"{name}.png").write_bytes(png)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    assert img.shape[0] > 500 and img.shape[1] > 800
    bg = np.median(img.reshape(-1, 3), axis=0)
    differs = (np.abs(img - bg).sum(-1) > 30).mean()
    assert img.std() > 10 and differs > 0.03, f"{name}: screenshot looks blank (std {img.std():.1f}, {differs:.3f})"


_CHIPS_JS = """Array.from(document.querySelectorAll('.ex[id]')).map(e => [e.id,
  Array.from(e.querySelectorAll('.heads')).map(h => [h.firstChild.textContent, Array.from(h.querySelectorAll('.chip')).map(
    c => [c.tagName, c.className, c.getAttribute('href'), c.title, c.textContent])])])"""


def _check_chips(b, run_dir, layer, neuron, page):
    """The active heads that static/report.js drew on each example of a neuron's (or head's) page
    are those of the attribution table: per example whose prompt has attribution, one line of
    chips, the active heads by attribution (highest first), each with its attribution to 2
    decimals, a tooltip with it to 4 decimals and the prompt's threshold, a link exactly when
    the neuron-head pair has a page. Returns the number of chips checked."""
    from ctxlookup.attribution import active_threshold

    data = RunData(run_dir)
    rule = data.protocol.get("active_rule", "mean+2sd")
    pairs = {tuple(k) for k in pd.read_parquet(os.path.join(run_dir, "heads.parquet"))[
        ["layer", "neuron", "head_layer", "head"]].astype(int).values.tolist()}
    exs = {f"{e.split}-{e.rank}-{e.doc_id}": e for split in ("train", "test") for e in data.examples(layer, neuron, split)}
    tables = {split: pd.read_parquet(os.path.join(run_dir, f"{name}.parquet"))
              for split, name in (("train", "attribution"), ("test", "test_attribution"))}
    drawn = b.eval(_CHIPS_JS)
    assert drawn, page
    n = 0
    for key, lines in drawn:
        e = exs[key]
        att = tables[e.split]
        rows = att[att.prompt_id == e.prompt_id] if e.prompt_id is not None else att.iloc[:0]
        if not len(rows):
            assert lines == [], (page, key)
            continue
        thr = active_threshold(rows.score.to_numpy(np.float64), rule)
        act = rows[rows.active].astype({"score": np.float64}).sort_values(["score", "head_layer", "head"], ascending=False)
        assert len(lines) == 1, (page, key)
        first, chips = lines[0]
        want = [["A" if (layer, neuron, r.head_layer, r.head) in pairs else "SPAN",
                 "chip sel" if (layer, neuron, r.head_layer, r.head) in pairs else "chip",
                 f"../heads/L{layer}N{neuron}_L{r.head_layer}H{r.head}.html"
                 if (layer, neuron, r.head_layer, r.head) in pairs else None,
                 f"attribution {r.score:.4f} (threshold {thr:.4f})", f"L{r.head_layer}H{r.head} {r.score:.2f}"]
                for r in act.itertuples(index=False)]
        assert first == ("active heads: " if want else f"no head active (threshold {thr:.3f})"), (page, key)
        assert chips == want, (page, key)
        n += len(chips)
    return n


def test_in_headless_chromium(browser, site, run_dir, tmp_path):
    b = browser
    coloured_js = ("Array.from(document.querySelectorAll('.tok')).filter(e => "
                   "getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)').length")
    # the index: explorers filled by its script, figures loaded, search works
    mark = b.open(_file_url(os.path.join(site, "index.html")))
    assert b.problems(mark) == []
    assert all(u.startswith("file://") for u in b.requests(mark))
    assert b.eval("document.querySelectorAll('[data-explorer][data-ready]').length") == 2
    n_rows = b.eval("document.querySelectorAll('[data-explorer=neurons] tbody tr').length")
    assert n_rows == len(RunData(run_dir).neurons)
    assert b.eval("Array.from(document.images).every(i => i.complete && i.naturalWidth > 100)")
    _check_links(b, "index")
    _not_blank(b.screenshot(), tmp_path, "index")
    first = b.eval("document.querySelector('[data-explorer=neurons] tbody a').textContent")
    b.eval(f"(() => {{ const i = document.querySelector('[data-explorer=neurons] input'); i.value = '{first}';"
           f" i.dispatchEvent(new Event('input')); }})()")
    assert b.eval("document.querySelectorAll('[data-explorer=neurons] tbody tr').length") == 1
    # follow a neuron link from the index (a real navigation), then a head link, then back to the neuron
    pairs = RunData(run_dir).pairs
    p = next(pairs.itertuples(index=False))
    nl = f"L{p.layer}N{p.neuron}"
    b.eval(f"(() => {{ const i = document.querySelector('[data-explorer=neurons] input'); i.value = '{nl}';"
           f" i.dispatchEvent(new Event('input')); }})()")
    mark = len(b.events)
    b.eval(f"Array.from(document.querySelectorAll('[data-explorer=neurons] tbody a')).find(a => a.textContent === '{nl}').click()")
    b.wait_navigation(mark)
    assert b.eval("location.href").endswith(neuron_page(p.layer, p.neuron))
    assert b.problems(mark) == []
    assert b.eval(coloured_js) > 20
    assert b.eval("document.querySelectorAll('.tok.max').length") >= 1
    # the hostile corpus ran nothing: the only scripts are the site's, its token texts and the neuron's examples
    assert b.eval("Array.from(document.scripts).map(s => s.getAttribute('src'))") == [
        "../assets/vocab.js", f"../assets/examples/L{p.layer}N{p.neuron}.js", "../static/report.js"]
    assert b.eval("document.querySelectorAll('.toks[data-ex]:empty').length") == 0  # every example drawn
    assert b.eval("document.querySelectorAll('.ex .meta:empty').length") == 0  # and its line of facts
    n_chips = _check_chips(b, run_dir, p.layer, p.neuron, "neuron")
    _check_links(b, "neuron")
    _not_blank(b.screenshot(), tmp_path, "neuron")
    target = head_page(p.layer, p.neuron, p.head_layer, p.head)
    mark = len(b.events)
    b.eval(f"Array.from(document.querySelectorAll('a')).find(a => a.href.endsWith('{target}')).click()")
    b.wait_navigation(mark)
    assert b.eval("location.href").endswith(target)
    assert b.problems(mark) == []
    assert b.eval(coloured_js) > 20
    assert b.eval("document.querySelector('h1').textContent").startswith(f"Head L{p.head_layer}H{p.head}")
    n_chips += _check_chips(b, run_dir, p.layer, p.neuron, "head")
    assert n_chips > 0
    _check_links(b, "head")
    _not_blank(b.screenshot(), tmp_path, "head")
    # a chip that the script drew links to its head's page (a real navigation)
    mark = len(b.events)
    chip = b.eval("(() => { const a = document.querySelector('.heads a.chip'); a.click(); return a.getAttribute('href'); })()")
    b.wait_navigation(mark)
    assert b.eval("location.href").endswith(chip[len("../"):]) and b.problems(mark) == []
    assert b.eval("document.querySelectorAll('.heads .chip').length") > 0
    b.open(_file_url(os.path.join(site, target)))
    mark = len(b.events)
    b.eval("document.querySelector('h1 a').click()")
    b.wait_navigation(mark)
    assert b.eval("location.href").endswith(neuron_page(p.layer, p.neuron))
    # every other page opens cleanly too
    for page in sorted(_pages(site)):
        mark = b.open(_file_url(page))
        assert b.problems(mark) == [], page
    assert not [e for e in b.events if e["method"] == "Page.javascriptDialogOpening"]


def test_big_index_pages_in_chromium(browser, run_dir, tmp_path):
    site = os.path.dirname(_big_site(run_dir, tmp_path))
    b = browser
    mark = b.open(_file_url(os.path.join(site, "index.html")))
    assert b.problems(mark) == []
    info = "document.querySelector('[data-explorer=neurons] .info').textContent"
    rows = "document.querySelectorAll('[data-explorer=neurons] tbody tr').length"
    assert b.eval(rows) == 50 and b.eval(info).startswith("showing 1\u201350 of 384")
    b.eval("document.querySelector('[data-explorer=neurons] button.next').click()")
    assert b.eval(info).startswith("showing 51\u2013100 of 384") and b.eval(rows) == 50
    b.eval("(() => { const i = document.querySelector('[data-explorer=neurons] input'); i.value = 'L2N12';"
           " i.dispatchEvent(new Event('input')); })()")
    assert b.eval(rows) == 9  # L2N12, L2N120..L2N127
    mark = b.open(_file_url(os.path.join(site, "lists", "neurons-8.html")))
    assert b.problems(mark) == []
    _check_links(b, "list")


def test_pages_look_as_before_the_templates(browser, site, run_dir, tmp_path):
    """Every page of the report shows, in Chromium, the same examples as the same run's report
    written by the single-module report of report_look.BEFORE_COMMIT: the same number of examples,
    token boxes, truncation marks and head lines, each token's class, text, colour (alpha within one
    step) and tooltip (the text around them changed on purpose since: one number format per
    column, captions, a layout for phones); screenshots of both side by side in the test's folder.
    The new site is also much smaller: a neuron's tokens are written once, the style and the script
    once."""
    import report_look

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        before = report_look.before_module(repo)
    except RuntimeError as e:  # a checkout without the history (a source tarball, a shallow clone)
        if REQUIRE:
            pytest.fail(str(e))
        pytest.skip(str(e))
    old = os.path.dirname(before.report(run_dir, out=str(tmp_path / "before")))
    b = browser
    pages = sorted(os.path.relpath(p, old) for p in _pages(old))
    assert sorted(os.path.relpath(p, site) for p in _pages(site)) == pages
    shots, bad = [], {}
    for rel in pages:
        x, y = report_look.layout(b, os.path.join(old, rel)), report_look.layout(b, os.path.join(site, rel))
        assert x["problems"] == [] and y["problems"] == [], rel
        d = report_look.differences(x, y, keys=report_look.EXAMPLES, exact=False)
        if d:
            bad[rel] = d
        if rel == "index.html" or rel.startswith(("neurons/", "heads/")) and not any(s[0].startswith(rel[:5]) for s in shots):
            for tag, got in (("before", x), ("after", y)):
                path = tmp_path / f"{rel.replace('/', '_')}.{tag}.png"
                path.write_bytes(got["png"])
            shots.append((rel, str(tmp_path / f"{rel.replace('/', '_')}.before.png"),
                          str(tmp_path / f"{rel.replace('/', '_')}.after.png")))
    for rel, p0, p1 in shots:
        print(f"screenshots of {rel}: before {p0}, after {p1}")
    assert not bad, "\n".join(f"{k}:\n  " + "\n  ".join(v) for k, v in bad.items())
    size = {k: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
            for k, d in (("before", old), ("after", site))}
    print(f"report of the test run: {len(pages)} pages, {size['before']:,} bytes before, {size['after']:,} after")
    assert size["after"] < size["before"] / 2


def test_damaged_run_files_are_named_with_the_repair(run_dir, tmp_path, capsys):
    """A table that is not the one its stage wrote (garbage in a data page, same size), a missing
    one, an unreadable one in a run made before the manifest kept hashes, a damaged manifest: a
    RunFileError naming the file and the command that repairs the run (the CLI: one line, exit 2);
    the named command does repair it."""
    import shlex

    from ctxlookup import cli
    from ctxlookup.replicate import RunFileError

    bad = str(tmp_path / "bad")
    shutil.copytree(run_dir, bad, ignore=shutil.ignore_patterns("report"))
    p = os.path.join(bad, "neurons.parquet")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 16)
    fast = dict(model=False, context="prompt", out=str(tmp_path / "site"))
    with pytest.raises(RunFileError) as e:
        report(bad, **fast)
    msg = str(e.value)
    assert msg.startswith(f"{p} is not the file its stage wrote (its sha256 differs from manifest.json); "
                          f"to redo its stage (neurons) run: ctxlookup replicate --model ")
    cmd = msg.split(" run: ", 1)[1]
    words = shlex.split(cmd)
    assert words[words.index("--out") + 1] == bad and words[words.index("--table3") + 1] == "3,6"
    assert words[words.index("--layers") + 1] == "1,2" and words[words.index("--batch-tokens") + 1] == "2048"
    assert cli.main(["report", bad, "--out", str(tmp_path / "site"), "--no-model", "--context", "prompt",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ctxlookup report: error: {' '.join(msg.split())}") and err.count("\n") == 1
    assert cli.main(words[1:] + ["--no-progress"]) == 0      # the named command repairs the run
    capsys.readouterr()
    pd.testing.assert_frame_equal(pd.read_parquet(p), pd.read_parquet(os.path.join(run_dir, "neurons.parquet")))
    assert os.path.exists(report(bad, **fast))

    os.remove(os.path.join(bad, "scores.parquet"))
    with pytest.raises(RunFileError, match=r"scores.parquet is missing; to redo its stage \(score\) run: ctxlookup "):
        report(bad, **fast)
    shutil.copy(os.path.join(run_dir, "scores.parquet"), bad)
    mpath = os.path.join(bad, "manifest.json")
    m = json.load(open(mpath))
    for rec in m["stages"].values():
        rec.pop("outputs", None)
    json.dump(m, open(mpath, "w"))
    with open(os.path.join(bad, "heads.parquet"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(bad, "heads.parquet")) - 8)  # the footer's length and magic
    with pytest.raises(RunFileError, match=r"heads.parquet is damaged \(.*\); to redo its stage \(select\) run: "):
        report(bad, **fast)
    open(mpath, "w").write('{"options": [')
    with pytest.raises(RunFileError, match=f"{mpath} is damaged or not a ctxlookup run manifest .JSONDecodeError"):
        report(bad, **fast)
    assert cli.main(["report", bad, "--no-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ctxlookup report: error: {mpath} is damaged") and err.count("\n") == 1


# --------------------------------------------------------------------------- histogram and quantile examples
@pytest.fixture(scope="module")
def atlas_run(run_dir, tmp_path_factory):
    """A copy of the run whose ``histograms`` and ``quantile_examples`` are made here by
    ctxlookup.neuroscope (the C Scope, the whole layers) on the run's model and train corpus, read
    as the scan read it, filtered to the run's neurons, the first neuron left out, and without the
    stored ``quantile_windows`` (so the report reads the windows with the model); and its report."""
    from ctxlookup.neuroscope import neuroscope

    d = tmp_path_factory.mktemp("atlas-run")
    dest = _edited_copy(run_dir, d / "run", drop_tables=("quantile_windows",))
    m = json.load(open(os.path.join(dest, "manifest.json")))
    scan = m["stages"]["scan"]["attrs"]["max_acts"]
    keys = sorted(set(map(tuple, RunData(dest).neurons[["layer", "neuron"]].astype(int).values.tolist())))
    atlas = neuroscope(m["model"]["path"], corpus=m["options"]["corpus"], out=str(d / "atlas"),
                       layers=sorted({k[0] for k in keys}), site=False, progress=False,
                       max_tokens=scan.get("max_tokens"), prepend_bos=scan.get("prepend_bos", True),
                       process_weights=m["options"]["process_weights"])
    tables = {}
    for name in ("histograms", "quantile_examples"):
        t = atlas[name]
        t = t[[(int(a), int(b)) in set(keys[1:]) for a, b in zip(t.layer, t.neuron)]].reset_index(drop=True)
        assert len(t) and list(t.columns) == list(atlas[name].columns)
        t.to_parquet(os.path.join(dest, f"{name}.parquet"), index=False)
        tables[name] = t
    site = os.path.dirname(report(dest))
    return dict(dir=dest, site=site, keys=keys, **tables)


def test_histogram_and_quantile_examples_are_the_scans(atlas_run, site, tmp_path):
    """Each neuron page draws the stored histogram (a bar per bin: its edges and count) and the
    stored examples per activation band (band edges, quantiles, token count, each sample's
    activation; its window's activation at the sample is the table's, 3 decimals); a neuron the
    tables leave out, and a run without them, have no such section and no error."""
    from ctxlookup.report.render import fmt, pct

    hist, quant = atlas_run["histograms"], atlas_run["quantile_examples"]
    data = RunData(atlas_run["dir"])
    for l, n in atlas_run["keys"][1:]:
        text = open(os.path.join(atlas_run["site"], neuron_page(l, n)), encoding="utf-8").read()
        h = hist[(hist.layer == l) & (hist.neuron == n)].sort_values("bin")
        bars = re.findall(r'<rect [^>]*data-lo="([^"]+)" data-hi="([^"]+)" data-count="(\d+)"', text)
        assert [(float(a), float(b), int(c)) for a, b, c in bars] == list(zip(h.lo, h.hi, h["count"]))
        assert f"over all {int(h['count'].sum()):,} tokens" in text
        q = quant[(quant.layer == l) & (quant.neuron == n)].sort_values(["band", "sample"])
        shown = re.findall(r'<div class="band" id="band-(\d+)"><div class="meta"><span>activation <b>([^<]+)</b> to '
                           r'<b>([^<]+)</b></span><span>quantiles ([^<]+)–([^<]+)</span><span>([\d,]+) tokens?</span>'
                           r'</div>(.*?)</div>\n', text, re.S)
        bands = q.drop_duplicates("band").sort_values("band", ascending=False)
        assert [int(s[0]) for s in shown] == bands.band.tolist()
        for s, r in zip(shown, bands.itertuples(index=False)):
            assert s[1:6] == (fmt(r.lo), fmt(r.hi), pct(r.quantile_lo, 3), pct(r.quantile_hi, 3), f"{int(r.band_tokens):,}")
            rows = q[q.band == r.band]
            acts = re.findall(r'<span class="qa" title="doc (\d+), token (\d+)">([^<]+)</span><div class="toks" '
                              r'data-ex="(q-\d+-\d+)"></div>', s[6])
            assert [(int(a), int(b), c) for a, b, c, _ in acts] == [
                (int(x.doc_id), int(x.position), fmt(x.activation)) for x in rows.itertuples(index=False)]
            ex = _examples_js(atlas_run["site"], l, n)["ex"]
            for (doc, pos, _, key), x in zip(acts, rows.itertuples(index=False)):
                w = ex[key]
                assert key.endswith(f"-{doc}") and w["p"] == int(pos) and w["f"] <= w["p"] < w["f"] + len(w["t"])
                got = w["a"][w["p"] - w["f"]]
                assert abs(got / 1000 - x.activation) <= 0.0011, (l, n, key, got, x.activation)
    assert data.prepare_quantiles(atlas_run["keys"]) is None and data.mismatches == 0
    l, n = atlas_run["keys"][0]
    text = open(os.path.join(atlas_run["site"], neuron_page(l, n)), encoding="utf-8").read()
    assert 'id="histogram"' not in text and 'id="quantiles"' not in text and "maxima differ" not in text
    bare = _edited_copy(atlas_run["dir"], tmp_path / "bare", drop_tables=("histograms", "quantile_examples"))
    for page in _pages(os.path.dirname(report(bare))):   # a run without the tables (made before they existed)
        text = open(page, encoding="utf-8").read()
        assert 'id="histogram"' not in text and 'id="quantiles"' not in text
    # the notebook view draws the same, tokens inline
    l, n = atlas_run["keys"][1]
    frag = NeuronView(atlas_run["dir"], l, n).html()
    assert frag.count('<div class="qex">') == len(quant[(quant.layer == l) & (quant.neuron == n)])
    assert 'data-ex="q-' not in frag and 'svg class="hist"' in frag


def test_stored_quantile_windows_are_what_the_model_reads(run_dir, tmp_path):
    """The run's own scan stored every neuron's histogram and band samples, and its examples stage
    the tokens around each sample (``quantile_windows``): the report reads them without the model,
    and they equal the windows the model reads on a copy without that table (the same tokens and
    texts; activations to test_windows' batch tolerance: the report batches the windows otherwise,
    and six layers of reordered sums add up past conftest's single-product REORDER_RTOL)."""
    from test_windows import same_activations

    stored = RunData(run_dir, model=False)
    keys = sorted(set(map(tuple, stored.neurons[["layer", "neuron"]].astype(int).values.tolist())))
    assert stored.has("histograms") and stored.has("quantile_windows")
    fresh = RunData(_edited_copy(run_dir, tmp_path / "run", drop_tables=("quantile_windows",)))
    stored.prepare_quantiles(keys)
    fresh.prepare_quantiles(keys)
    n_examples = 0
    for k in keys:
        a, b = stored.bands(*k), fresh.bands(*k)
        assert [x.band for x in a] == [x.band for x in b] and a, k
        for ba, bb in zip(a, b):
            for ea, eb in zip(ba.examples, bb.examples):
                assert (ea.doc_id, ea.position, ea.first, ea.strs) == (eb.doc_id, eb.position, eb.first, eb.strs)
                same_activations(ea.acts, eb.acts)
                n_examples += 1
    assert n_examples == len(stored.table("quantile_examples")) and stored.mismatches == fresh.mismatches == 0


def test_pages_are_readable_on_a_phone(browser, atlas_run, tmp_path):
    """Every kind of page (the index with its figures, the neuron and head lists, a neuron page with
    its histogram, a neuron-head page) at 1400 and 390 px: no horizontal overflow, every text at
    WCAG AA contrast (page_checks, shared with the live panel's test), one number format per table
    column; screenshots of each in the test's folder."""
    from page_checks import check_readable, column_formats, set_width

    site = atlas_run["site"]
    l, n = atlas_run["keys"][1]
    p = RunData(atlas_run["dir"]).pairs.iloc[0]
    pages = [("index", "index.html"), ("neuron-list", "lists/neurons-1.html"), ("head-list", "lists/heads-1.html"),
             ("neuron", neuron_page(l, n)), ("head", head_page(p.layer, p.neuron, p.head_layer, p["head"]))]
    b = browser
    try:
        for name, rel in pages:
            set_width(b, 1400)
            mark = b.open(_file_url(os.path.join(site, rel)))
            assert b.problems(mark) == [], rel
            b.eval("document.querySelectorAll('details').forEach(function(d){d.open = true})")
            mixed = [(h, f) for h, f in column_formats(b) if len([k for k in f if k != "text"]) > 1]
            assert not mixed, (rel, mixed)
            for width in (1400, 390):
                check_readable(b, tmp_path, name, width)
            if name == "neuron":
                assert b.eval("document.querySelectorAll('svg.hist rect').length") == len(
                    atlas_run["histograms"].query("layer == @l and neuron == @n"))
                assert b.eval("document.querySelectorAll('.qex .toks[data-ex]:empty').length") == 0
    finally:
        set_width(b, 1280, 1600)
