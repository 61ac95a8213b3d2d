"""The atlas as a static site: an index, a page per layer, a page per neuron, and a search page.

Pages are Jinja2 templates (``neuroscope_templates/``) sharing one stylesheet; they open from
``file://`` with no server. A neuron's page colours the tokens around each top document's maximum
and each band example by activation (levels relative to the neuron's maximum). Those
activations are recomputed in one forward pass over the documents the pages show; they are the
scan's up to float rounding (batches differ), the tables hold the scan's own numbers. The search
page filters a small index (``search_index.js``: each neuron's token at its maximum, the tokens its
output raises most, and the text around its top activation) in the browser.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict

import numpy as np
from markupsafe import Markup, escape

TEMPLATES = os.path.join(os.path.dirname(__file__), "neuroscope_templates")
LEVELS = 8


ATLAS_DIR = "atlas"  # a run directory's atlas (python -m ctxlookup.demo builds one there)


def run_atlas_link(run_dir: str, page_dir: str):
    """The href, relative to ``page_dir``, of the atlas site in ``run_dir/atlas`` when there is
    one; None otherwise (what a run's report links to)."""
    index = os.path.join(run_dir, ATLAS_DIR, "site", "index.html")
    if not os.path.isfile(index):
        return None
    return os.path.relpath(index, page_dir).replace(os.sep, "/")


def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                              lstrip_blocks=True)


def _windows(atlas, model, corpus, before, after, band_before, band_after, progress):
    """{(layer, neuron, table, row index): (token strings, activations, index of the maximum)}."""
    from .batching import doc_tokens

    top, quant = atlas["top_examples"], atlas["quantile_examples"]
    need = defaultdict(list)  # doc -> [(key, layer, neuron, position, before, after)]
    for i, r in enumerate(top.itertuples(index=False)):
        need[int(r.doc_id)].append((("top", i), r.layer, r.neuron, r.position, before, after))
    for i, r in enumerate(quant.itertuples(index=False)):
        need[int(r.doc_id)].append((("band", i), r.layer, r.neuron, r.position, band_before, band_after))
    opts = atlas.manifest["options"]
    skip = 1 if opts["prepend_bos"] else 0
    docs = corpus.get(need)
    ids = sorted(docs)
    tok = model.tokenizer
    names = {}
    layers = sorted(set(top.layer) | set(quant.layer))
    out = {}
    for a in range(0, len(ids), 16):
        chunk = ids[a:a + 16]
        toks = doc_tokens(model, [docs[d] for d in chunk], opts["prepend_bos"], opts["max_tokens"])
        _, cache = model.run_with_cache(toks, names_filter=[f"blocks.{l}.mlp.hook_post" for l in layers],
                                        stop_at_layer=max(layers) + 1)
        acts = {l: np.asarray(cache[f"blocks.{l}.mlp.hook_post"]) for l in layers}
        for b, d in enumerate(chunk):
            t = toks[b]
            for key, layer, neuron, pos, bef, aft in need[d]:
                lo, hi = max(skip, skip + pos - bef), min(len(t), skip + pos + aft + 1)
                ids_ = t[lo:hi]
                for x in ids_:
                    if int(x) not in names:
                        names[int(x)] = tok.decode([int(x)]) if tok is not None else str(int(x))
                out[key] = ([names[int(x)] for x in ids_], acts[layer][b, lo:hi, neuron], skip + pos - lo)
    return out


_ESCAPED: dict = {}  # token text -> its HTML (a site escapes the same few thousand texts millions of times)


def _escaped(text: str) -> str:
    got = _ESCAPED.get(text)
    if got is None:
        got = _ESCAPED[text] = str(escape(text))
    return got


def _example(win, vmax) -> Markup:
    """One window's tokens as HTML: a span per token, its colour level (``a0`` .. ``a{LEVELS}``) from
    its activation over the neuron's maximum, the maximum marked, the activation in its tooltip.
    Written here rather than by a template macro per token: a site has millions of tokens."""
    texts, acts, at = win
    acts = np.asarray(acts)  # float32, scaled in float32 as each value was
    scale = LEVELS / vmax if vmax > 0 else 0.0
    levels = np.where(acts > 0, np.clip(np.ceil(acts * scale), 0, LEVELS), 0).astype(int).tolist()
    out = [f'<span class="a{lv}{" max" if i == at else ""}" title="{v:.3f}">{_escaped(s)}</span>'
           for i, (s, v, lv) in enumerate(zip(texts, acts.tolist(), levels))]
    return Markup('<span class="text">' + "".join(out) + "</span>")


def _max_token(win) -> str:
    texts, _, at = win
    return texts[at] if 0 <= at < len(texts) else ""


def build_site(atlas, model, corpus, out=None, before=20, after=6, band_before=8, band_after=3, progress=True) -> dict:
    """Write the site into ``out`` (default: the atlas folder's ``site/``); returns ``{index, pages}``."""
    out = os.path.join(atlas.out, "site") if out is None else out
    os.makedirs(os.path.join(out, "neurons"), exist_ok=True)
    env = _env()
    shutil.copy(os.path.join(TEMPLATES, "style.css"), out)
    shutil.copy(os.path.join(TEMPLATES, "search.js"), out)
    wins = _windows(atlas, model, corpus, before, after, band_before, band_after, progress)
    neurons = atlas["neurons"]
    top, quant, hist = atlas["top_examples"], atlas["quantile_examples"], atlas["histograms"]
    top_by = {k: g for k, g in top.reset_index(drop=True).groupby(["layer", "neuron"])}
    quant_by = {k: g for k, g in quant.reset_index(drop=True).groupby(["layer", "neuron"])}
    hist_by = {k: g for k, g in hist.groupby(["layer", "neuron"])}
    common = dict(model_name=os.path.basename(atlas.manifest["model"]["path"].rstrip("/")))
    index, layer_rows = [], defaultdict(list)
    neuron_t = env.get_template("neuron.html")
    for r in neurons.itertuples(index=False):
        key = (r.layer, r.neuron)
        vmax = float(r.max) if np.isfinite(r.max) else 0.0
        t = top_by.get(key)
        tops = [] if t is None else [dict(rank=int(x.rank), activation=float(x.activation), doc_id=int(x.doc_id),
                                          position=int(x.position), tokens=_example(wins[("top", i)], vmax))
                                     for i, x in zip(t.index, t.itertuples(index=False))]
        q = quant_by.get(key)
        bands = [] if q is None else [dict(lo=x.lo, hi=x.hi, quantile_lo=x.quantile_lo, quantile_hi=x.quantile_hi,
                                           activation=float(x.activation), tokens=_example(wins[("band", i)], vmax))
                                      for i, x in zip(q.index, q.itertuples(index=False))][::-1]
        h = hist_by.get(key)
        logc = np.log1p(h["count"].to_numpy()) if h is not None else np.zeros(0)
        bars = [] if h is None else [dict(lo=lo, hi=hi, count=int(c), h=round(58 * lc / max(logc.max(), 1e-9), 2))
                                     for lo, hi, c, lc in zip(h.lo, h.hi, h["count"], logc)]
        info = r._asdict()
        html = neuron_t.render(root="../", layer=r.layer, neuron=r.neuron, info=info, top=tops, bands=bands,
                               hist=bars or [dict(lo=0, hi=0, count=0, h=0)],
                               prev=r.neuron - 1 if r.neuron > 0 else None,
                               next=r.neuron + 1 if (r.layer, r.neuron + 1) in top_by or (r.layer, r.neuron + 1) in hist_by
                               else None, **common)
        with open(os.path.join(out, "neurons", f"L{r.layer}N{r.neuron}.html"), "w") as f:
            f.write(html)
        first = wins[("top", t.index[0])] if tops else None
        max_tok = _max_token(first) if tops else ""
        text = "".join(first[0][-12:]) if tops else ""
        layer_rows[r.layer].append(dict(neuron=r.neuron, max=vmax, frac_nonneg=r.frac_nonneg, max_token=max_tok,
                                        top_tokens=list(r.top_tokens), bottom_tokens=list(r.bottom_tokens)))
        index.append([int(r.layer), int(r.neuron), vmax, max_tok, list(r.top_tokens)[:5], text])
    layer_t = env.get_template("layer.html")
    for layer, rows in layer_rows.items():
        with open(os.path.join(out, f"layer-{layer}.html"), "w") as f:
            f.write(layer_t.render(root="", layer=layer, neurons=rows, **common))
    scan = atlas.manifest["scan"]
    with open(os.path.join(out, "index.html"), "w") as f:
        f.write(env.get_template("index.html").render(
            root="", n_neurons=len(neurons), docs=scan["docs"], tokens=scan["tokens"],
            corpus=atlas.manifest["corpus"]["name"],
            layers=[dict(layer=l, neurons=len(rows), max=max(x["max"] for x in rows)) for l, rows in sorted(layer_rows.items())],
            **common))
    with open(os.path.join(out, "search.html"), "w") as f:
        f.write(env.get_template("search.html").render(root="", **common))
    with open(os.path.join(out, "search_index.js"), "w") as f:
        f.write("const NEUROSCOPE_INDEX = " + json.dumps(index, ensure_ascii=False, separators=(",", ":")) + ";\n")
    return dict(index=os.path.join(out, "index.html"), pages=len(neurons))
