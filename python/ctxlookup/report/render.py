"""The report's HTML: what each page shows, gathered from a :class:`~ctxlookup.report.data.RunData`,
and drawn by the Jinja2 templates in ``templates/`` (strings escaped on output).

Each ``*_html`` function returns a page's body; :func:`page` wraps a body into a whole page that
links ``static/report.css`` and ``static/report.js`` (or inlines the stylesheet, for a file
that must stand alone).
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import jinja2
import markupsafe
import numpy as np
import pandas as pd
from markupsafe import Markup

from .data import Example, RunData, cell, isnum

__all__ = ["esc", "fmt", "pval", "pct", "neuron_label", "head_label", "neuron_page", "head_page", "example_page", "Links",
           "neuron_html", "head_html", "summary_html", "tables_html", "index_html", "list_pages", "nav_html",
           "page", "page_key", "fragment", "examples_js", "vocab_js", "index_records", "STATIC"]

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_CSS_SCOPED = "/* scoped:"


# =============================================================================== formatting
def esc(x) -> str:
    """HTML-escape anything (quotes included), as the templates do."""
    return str(markupsafe.escape("" if x is None else x))


def fmt(x, digits: int = 3) -> str:
    """A number for a table: ``–`` for missing, integers as they are, every other number with
    ``digits`` decimals (one format per column: ``0.000`` next to ``1.000``, never ``7.38e-06``
    next to ``0.489``; a value that rounds to zero is ``0.000``, not ``-0.000``)."""
    if x is None or x is pd.NA:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}" if abs(int(x)) >= 10000 else str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(v):
        return "–"
    out = f"{v:.{digits}f}"
    return out[1:] if out.startswith("-") and float(out) == 0 else out


def pval(x) -> str:
    """A p-value: always two significant digits in e-notation (``3.1e-02``, ``4.0e-12``)."""
    return "–" if not isnum(x) else f"{float(x):.1e}"


def is_pvalue(name: str) -> bool:
    """A column of p-values, by its name (``p``, ``ks_p``, ``skew_p_greater``, ...)."""
    return name == "p" or name.endswith("_p") or "_p_" in name


def pct(x, digits: int = 0) -> str:
    """A fraction as a percentage with ``digits`` decimals."""
    return "–" if not isnum(x) else f"{100 * float(x):.{digits}f}%"


def visible(s: str) -> str:
    """A token as shown inside a coloured run of tokens (line breaks and tabs made visible)."""
    if s == "":
        return "\u2205"
    return s.replace("\r\n", "\u21b5").replace("\n", "\u21b5").replace("\r", "\u21b5").replace("\t", "\u21e5")


def quoted(s: Optional[str]) -> str:
    """A token in quotes, so that its leading space shows: ' an'."""
    if s is None:
        return "?"
    return "'" + visible(s) + "'"


def neuron_label(layer: int, neuron: int) -> str:
    return f"L{int(layer)}N{int(neuron)}"


def head_label(head_layer: int, head: int) -> str:
    return f"L{int(head_layer)}H{int(head)}"


def neuron_page(layer: int, neuron: int) -> str:
    """Path of a neuron's page inside a report folder."""
    return f"neurons/{neuron_label(layer, neuron)}.html"


def head_page(layer: int, neuron: int, head_layer: int, head: int) -> str:
    """Path of a neuron-head pair's page inside a report folder."""
    return f"heads/{neuron_label(layer, neuron)}_{head_label(head_layer, head)}.html"


def example_page(layer: int, neuron: int) -> str:
    """Path of the script that holds a neuron's examples (tokens and activations) in a report folder."""
    return f"assets/examples/{neuron_label(layer, neuron)}.js"


def colour(a: float, scale: float) -> str:
    """Background of a token with activation ``a``: orange up to ``scale``, blue for negatives
    (``static/report.js`` draws the report's pages with the same rule)."""
    if not np.isfinite(a) or scale <= 0:
        return "transparent"
    x = max(-1.0, min(1.0, float(a) / scale))
    if x >= 0:   # #rrggbbaa keeps pages of thousands of tokens small
        return f"#ff7a00{round(255 * (0.04 + 0.86 * x)):02x}"
    return f"#2878ff{round(255 * (0.04 + 0.56 * -x)):02x}"


def _shorten(s: Optional[str], n: int) -> str:
    s = s or ""
    return s if len(s) <= n else s[:n - 3] + "\u2026"


def _plus(a, b):
    return a + b if isnum(a) and isnum(b) else None


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("ctxlookup.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             finalize=lambda x: "" if x is None else x)
    env.filters.update(fmt=fmt, pct=pct, pval=pval, quoted=quoted, visible=visible, cell=cell, isnum=isnum, shorten=_shorten,
                       plus=_plus, neuron_label=neuron_label, head_label=head_label, colour=colour, zip=zip,
                       actval=lambda a: "" if not np.isfinite(a) else f" \u00b7 {a:.3f}",
                       example_id=lambda e: f"{e.split}-{e.rank}-{e.doc_id}")
    return env


_ENV: Optional[jinja2.Environment] = None


def _render(name: str, **ctx) -> str:
    global _ENV
    if _ENV is None:
        _ENV = _env()
    return _ENV.get_template(name).render(**ctx)


# =============================================================================== links
class Links:
    """Where things link to: pages of a site (``site=True``), or nowhere (notebook fragments)."""

    def __init__(self, data: RunData, site: bool, depth: int = 0):
        self.site, self.up = site, "../" * depth
        self._pairs = data.pair_keys() if site else set()
        self._neurons = set(map(tuple, data.neurons[["layer", "neuron"]].astype(int).values.tolist())) if site else set()

    def index(self, anchor: str = "") -> Optional[str]:
        return f"{self.up}index.html{anchor}" if self.site else None

    def neuron(self, l, n) -> Optional[str]:
        return f"{self.up}{neuron_page(l, n)}" if self.site and (int(l), int(n)) in self._neurons else None

    def head(self, l, n, hl, h) -> Optional[str]:
        return f"{self.up}{head_page(l, n, hl, h)}" if self.site and (int(l), int(n), int(hl), int(h)) in self._pairs else None

    def asset(self, name: str) -> Optional[str]:
        return f"{self.up}assets/{name}" if self.site else None


# =============================================================================== pages
def _css(scoped_only: bool) -> str:
    with open(os.path.join(STATIC, "report.css"), encoding="utf-8") as f:
        css = f.read()
    return css[css.index(_CSS_SCOPED):] if scoped_only else css


def page_key(layer: int, neuron: int, head_layer: Optional[int] = None, head: Optional[int] = None) -> List[tuple]:
    """The ``<body>`` data attributes that say which neuron (and head) a page is about
    (``data-layer``, ``data-neuron``, ``data-head-layer``, ``data-head``): the live panel of
    ``ctxlookup serve`` (``serve_static/live.js``) reads them."""
    out = [("layer", int(layer)), ("neuron", int(neuron))]
    if head_layer is not None:
        out += [("head-layer", int(head_layer)), ("head", int(head))]
    return out


def page(title: str, body: str, depth: int = 0, scripts: Sequence[str] = (), standalone: bool = False,
         key: Sequence[tuple] = ()) -> str:
    """A whole HTML page: the report's stylesheet linked (``depth`` folders down), or inlined
    when ``standalone``; ``scripts``: their paths, ``static/report.js`` last; ``key``: the
    :func:`page_key` of a neuron's or a head's page."""
    up = "../" * depth
    scripts = [] if standalone else list(scripts) + [f"{up}static/report.js"]
    return _render("page.html", title=title, body=Markup(body), up=up, scripts=scripts, attrs=list(key),
                   css=Markup(_css(False)) if standalone else None) + "\n"


def fragment(body: str) -> str:
    """A notebook view: the body in a ``.ctxl-root`` box with the scoped rules inline."""
    return f'<div class="ctxl-root frag"><style>{_css(True)}</style>{body}</div>'


def _notes(data: RunData, splits: Sequence[str], coloured: bool) -> List[str]:
    out = []
    if not coloured:
        out.append(f"Tokens are not coloured: {data.model_problem}. Prompts are shown as plain text.")
        return out
    if data.context == "prompt" and splits:
        out.append("Activations of the truncated prompts alone (the report was made with context='prompt'), "
                   "with no tokens after the maximum.")
    for s in splits if data.context == "document" else ():
        if s in data.corpus_problem:
            out.append(f"{'Test c' if s == 'test' else 'C'}ontext unavailable: {data.corpus_problem[s]}; "
                       f"activations are those of the truncated prompts alone, with no tokens after the maximum.")
    if data.mismatches:
        out.append(f"{data.mismatches} stored or recomputed maxima differ from the run's by more than 0.1%: the "
                   f"model or corpus may have changed since the run.")
    return out


def _active_heads(data: RunData, e: Example) -> Optional[Tuple[float, List[Tuple[float, int, int]]]]:
    """An example's prompt's threshold and its active heads as ``(attribution, head layer, head)``,
    the highest attribution first; None when its prompt has no attribution."""
    if e.prompt_id is None:
        return None
    att = data.attribution_index(e.split).get(e.prompt_id)
    if att is None:
        return None
    thr, heads = att
    return thr, sorted(((s, hl, h) for (hl, h), (s, a) in heads.items() if a), reverse=True)


def _chips(data: RunData, links: Links, e: Example, highlight: Optional[Tuple[int, int]] = None) -> Optional[dict]:
    """The heads active on an example's prompt (None when its prompt has no attribution)."""
    att = _active_heads(data, e)
    if att is None:
        return None
    thr, heads = att
    chips = []
    for s, hl, h in heads:
        href = links.head(e.layer, e.neuron, hl, h)
        chips.append(dict(href=href, label=head_label(hl, h), score=s,
                          cls="chip" + (" sel" if (hl, h) == highlight or href else ""),
                          title=f"attribution {s:.4f} (threshold {thr:.4f})"))
    return dict(threshold=thr, chips=chips)


def _ex(data: RunData, links: Links, e: Example, main_n: Optional[int] = None, meta: str = "", highlight=None,
        cls: str = "", nums: Optional[list] = None, verdict: Optional[list] = None) -> dict:
    """What the ``example`` macro draws of one example (``meta``: HTML from a template). On a site's
    page the facts line and the active heads are drawn by ``static/report.js`` from the neuron's
    examples script (:func:`examples_js`): the page keeps what is its own, the ``nums``
    (:func:`_head_nums`) and ``verdict`` (a test prompt's, :func:`_verdict`) of a head's page."""
    def js(v):
        return None if v is None or not links.site else json.dumps(v, separators=(",", ":"))

    return dict(e=e, beyond=main_n if main_n is not None and e.rank >= main_n and e.split == "train" else None,
                meta=Markup(meta) if meta else "", chips=None if links.site else _chips(data, links, e, highlight),
                cls=cls, nums=js(nums), verdict=js(verdict))


def _num(text: str, digits: int = 3):
    """A number as a page writes it (``text``, ``digits`` decimals) for ``static/report.js``'s
    ``num``: the integer of its digits when it is ``[-]D.DDD`` (a negative zero excepted), else
    the text itself (``–``)."""
    m = re.fullmatch(r"(-?)(\d+)\.(\d{%d})" % digits, text)
    if m is None or len(m.group(2) + m.group(3)) > 15 or (m.group(1) and not int(m.group(2) + m.group(3))):
        return text
    return int(m.group(1) + m.group(2) + m.group(3))


def _pct_code(text: str):
    """A percentage as :func:`pct` writes it, for ``static/report.js``: the integer when it is ``D%``."""
    return int(text[:-1]) if re.fullmatch(r"\d{1,15}%", text) else text


def _verdict(r, pred: Optional[bool], truth: Optional[bool], answer: str) -> list:
    """A test prompt's line on a head's page (``verdict.html``), for ``static/report.js``:
    ``[classified (1, 0), predicted (1, 0; null: not classified, or the answer was not Yes or No),
    actual (1, 0 or null), the answer when it was not Yes or No]``."""
    b = (lambda v: None if v is None else int(v))
    return [int(r is not None), b(pred), b(truth)] + ([answer] if r is not None and pred is None else [])


def _head_nums(att, abl) -> list:
    """What a head's page says of the head on one prompt, for ``static/report.js`` (the numbers of
    ``head_meta.html``): ``[attribution, threshold]`` (both None when the prompt has no
    attribution for the head), then ``p_clean, p_ablated`` when the prompt was ablated."""
    out = [None, None] if att is None else [_num(fmt(att[0])), _num(fmt(att[1]))]
    return out + ([] if abl is None else [_num(fmt(abl.p_clean)), _num(fmt(abl.p_ablated))])


def _grid(data: RunData, links: Links, layer: int, neuron: int, exs: List[Example]) -> Optional[dict]:
    idx = data.attribution_index("train")
    pids = [e.prompt_id for e in exs if e.prompt_id is not None and e.rank < data.main_n]
    if not pids:
        return None
    stats: Dict[Tuple[int, int], list] = {}
    for pid in pids:
        if pid in idx:
            for k, (s, a) in idx[pid][1].items():
                stats.setdefault(k, []).append((s, a))
    if not stats:
        return None
    pair_keys = data.pair_keys()
    n_layers, n_heads = max(k[0] for k in stats) + 1, max(k[1] for k in stats) + 1
    rows = []
    for hl in range(n_layers):
        row = []
        for h in range(n_heads):
            v = stats.get((hl, h))
            row.append(None if not v else dict(
                hl=hl, h=h, n=len(v), n_active=sum(a for _, a in v), frac=sum(a for _, a in v) / len(v),
                mean=sum(s for s, _ in v) / len(v), href=links.head(layer, neuron, hl, h),
                sel=(layer, neuron, hl, h) in pair_keys))
        rows.append(row)
    return dict(rows=rows, n_heads=n_heads, n_prompts=len(pids), low=data.protocol.get("low", .25),
                high=data.protocol.get("high", .75))


def _binning_words(data: RunData) -> str:
    """How the run's evidence stage binned activations, in words (from the stage's record; a run
    made before the record existed used the defaults)."""
    ev = data.stage_attrs("evidence", "evidence")
    bins, binning, least = ev.get("bins", 10), ev.get("binning", "width"), ev.get("min_positions", 100)
    if binning == "quantile":
        return f"{bins} equal-count bins"
    return f"{bins} equal-width bins, the sparse top ones merged to at least {least} positions"


def _evidence(data: RunData, layer: int, neuron: int) -> Optional[dict]:
    r = data.evidence_row(layer, neuron)
    if r is None:
        return None
    frac = [float(x) for x in r["bin_fractions"]]
    counts = [int(x) for x in r["bin_counts"]]
    edges = [float(x) for x in r["bin_edges"]]
    top = max(max(frac), 1e-9)
    W, H, pad_l, pad_b, pad_t = 560, 190, 44, 34, 18
    bw = (W - pad_l - 8) / len(frac)
    bars = [dict(x=pad_l + b * bw + 2, h=(H - pad_b - pad_t) * f / top, f=f, c=c, lo=edges[b], hi=edges[b + 1])
            for b, (f, c) in enumerate(zip(frac, counts))]
    return dict(W=W, H=H, pad_l=pad_l, pad_b=pad_b, pad_t=pad_t, bw=bw, top=top, bars=bars, last=edges[-1],
                n_positions=int(r["n_positions"]), rising=bool(r["rising"]), spearman=r["bin_spearman"], auc=r["auc"])


def _histogram(data: RunData, layer: int, neuron: int) -> Optional[dict]:
    """The SVG of the neuron's stored activation histogram: a bar per bin, its height log(1 + count)
    (so that the rare high activations stay visible beside the mass near 0)."""
    h = data.histogram(layer, neuron)
    if h is None or not len(h):
        return None
    counts = h["count"].to_numpy(np.int64)
    total = int(counts.sum())
    top = max(float(np.log1p(counts).max()), 1e-9)
    W, H, pad, pad_b, pad_t = 560, 150, 10, 30, 8
    bw = (W - 2 * pad) / len(h)
    lo, hi = float(h.lo.iloc[0]), float(h.hi.iloc[-1])
    bars = [dict(x=pad + i * bw, h=(H - pad_b - pad_t) * float(np.log1p(c)) / top, lo=float(a), hi=float(b), c=int(c),
                 f=c / max(total, 1)) for i, (a, b, c) in enumerate(zip(h.lo, h.hi, counts))]
    zero = pad + (0 - lo) / (hi - lo) * (W - 2 * pad) if lo < 0 < hi else None
    return dict(W=W, H=H, pad=pad, pad_b=pad_b, pad_t=pad_t, bw=bw, bars=bars, lo=lo, hi=hi, total=total, zero=zero,
                width=float(h.hi.iloc[0] - h.lo.iloc[0]))


def neuron_html(data: RunData, layer: int, neuron: int, links: Links) -> str:
    """The body of a neuron's page (also its notebook view)."""
    layer, neuron = int(layer), int(neuron)
    info = data.neuron_info(layer, neuron)
    exs = data.examples(layer, neuron, "train")
    test = data.examples(layer, neuron, "test")
    pairs = data.pairs[(data.pairs.layer == layer) & (data.pairs.neuron == neuron)]
    coloured = data.coloured(layer, neuron)
    return _render(
        "neuron.html", links=links, label=neuron_label(layer, neuron), info=info, token=cell(info.get("token")),
        exs=[_ex(data, links, e, data.main_n) for e in exs], test=[_ex(data, links, e) for e in test],
        kept=sum(e.prompt_id is not None for e in exs), max_activation=max((e.activation for e in exs), default=None),
        pairs=list(pairs.itertuples(index=False)), best=pairs.E.astype(float).max() if len(pairs) else float("nan"),
        notes=_notes(data, ("train", "test"), coloured), tt=data.top_tokens(layer, neuron),
        model_problem=data.model_problem or "the run has no top_tokens table", ev=_evidence(data, layer, neuron),
        has_evidence=data.has("evidence"), binning=_binning_words(data), grid=_grid(data, links, layer, neuron, exs),
        hist=_histogram(data, layer, neuron), bands=data.bands(layer, neuron),
        coloured=coloured,
        scale=data.scale(layer, neuron))


def head_html(data: RunData, layer: int, neuron: int, head_layer: int, head: int, links: Links,
              n_prompts: Optional[int] = None) -> str:
    """The body of a neuron-head pair's page (also its notebook view)."""
    layer, neuron, head_layer, head = int(layer), int(neuron), int(head_layer), int(head)
    data.prepare([(layer, neuron)])
    info = data.neuron_info(layer, neuron)
    pr = data.pairs
    prow = pr[(pr.layer == layer) & (pr.neuron == neuron) & (pr.head_layer == head_layer) & (pr["head"] == head)]
    p = prow.iloc[0] if len(prow) else None
    sc = data.score_rows(layer, neuron, head_layer, head)
    n = int(n_prompts if n_prompts is not None else (p.n_main if p is not None else data.main_n))
    row = None
    if len(sc):
        m = sc[sc.n_prompts_per_neuron == n] if "n_prompts_per_neuron" in sc.columns else sc
        row = m.iloc[0] if len(m) else None

    def g(k):
        return None if row is None or k not in row.index else row[k]

    hl = head_label(head_layer, head)
    extra = []
    if row is not None and isnum(g("n_test")):
        if isnum(g("n_unparsed")) and int(g("n_unparsed")):
            extra.append(f"{int(g('n_unparsed'))} answers were not Yes/No and are not counted")
        if isnum(g("PPV")) or isnum(g("NPV")):
            extra.append(f"PPV {fmt(g('PPV'))}, NPV {fmt(g('NPV'))}, their mean {fmt(g('E_ppv_npv'))}")
    gv = {k: g(k) for k in ("E", "TPR", "TNR", "TP", "FN", "TN", "FP", "explanation", "error", "prompt")}
    gv.update(one_class=bool(g("one_class") or False), has_test=row is not None and isnum(g("n_test")))
    pv = {k: (getattr(p, k) if p is not None else None)
          for k in ("active_fraction", "mean_decrease_active", "mean_decrease_inactive")}
    abl_map = {int(r.prompt_id): r for r in data.rows_of("ablation", layer, neuron, head_layer, head)
               .itertuples(index=False)}

    def att_of(e: Example, split: str):
        att = data.attribution_index(split).get(e.prompt_id)
        return None if att is None or (head_layer, head) not in att[1] else (att, att[1][(head_layer, head)])

    def head_meta(e: Example) -> str:
        if links.site:   # drawn by static/report.js from head_nums
            return ""
        got = att_of(e, e.split)
        return _render("head_meta.html", hl=hl, att=None if got is None else (got[1][0], got[0][0]),
                       abl=abl_map.get(e.prompt_id) if e.split == "train" else None)

    def head_nums(e: Example) -> list:
        got = att_of(e, e.split)
        return _head_nums(None if got is None else (got[1][0], got[0][0]),
                          abl_map.get(e.prompt_id) if e.split == "train" else None)

    def active(e: Example, split: str = "train") -> Optional[bool]:
        got = att_of(e, split)
        return None if got is None else got[1][1]

    exs = [e for e in data.examples(layer, neuron, "train") if e.prompt_id is not None and e.rank < n]
    preds = data.table("predictions")
    pm = {}
    if len(preds.columns):
        q = data.rows_of("predictions", layer, neuron, head_layer, head)
        if "n_prompts_per_neuron" in q.columns:
            q = q[q.n_prompts_per_neuron == n]
        pm = {int(r.prompt_id): r for r in q.itertuples(index=False)}
    test = []
    for e in (e for e in data.examples(layer, neuron, "test") if e.prompt_id is not None):
        truth = active(e, "test")
        r = pm.get(e.prompt_id)
        pred = None if r is None else r.predicted
        pred = None if pred is None or pred is pd.NA else bool(pred)
        right = "" if r is None or pred is None else ("right" if pred == truth else "wrong")
        answer = "" if r is None else (cell(r.answer) or cell(r.error) or "")[:40]
        meta = "" if links.site else _render("verdict.html", r=r, pred=pred, truth=truth, answer=answer,
                                             head_meta=Markup(head_meta(e)))
        test.append(_ex(data, links, e, meta=meta, highlight=(head_layer, head), cls=right, nums=head_nums(e),
                        verdict=_verdict(r, pred, truth, answer)))
    counts = []
    if len(sc) > 1 and "n_prompts_per_neuron" in sc.columns:
        counts = [[fmt(r.n_prompts_per_neuron), fmt(getattr(r, "E", None)), fmt(getattr(r, "TPR", None)),
                   fmt(getattr(r, "TNR", None)), cell(r.explanation) or "\u2013"] for r in sc.itertuples(index=False)]
    sib = pr[(pr.layer == layer) & (pr.neuron == neuron)]
    siblings = [dict(href=links.head(layer, neuron, s.head_layer, s.head), label=head_label(s.head_layer, s.head))
                for s in sib.itertuples(index=False) if (s.head_layer, s.head) != (head_layer, head)] \
        if len(sib) > 1 and links.site else []
    llm = data.manifest.get("llm", {})
    coloured = data.coloured(layer, neuron)
    return _render(
        "head.html", links=links, layer=layer, neuron=neuron, hl=hl, nl=neuron_label(layer, neuron), info=info,
        token=cell(info.get("token")), g=gv, p=pv, n=n, notes=_notes(data, ("train", "test"), coloured),
        who=llm.get("model") or llm.get("explainer") or data.options.get("explainer", ""), extra=extra,
        act=[_ex(data, links, e, meta=head_meta(e), highlight=(head_layer, head), nums=head_nums(e))
             for e in exs if active(e)],
        ina=[_ex(data, links, e, meta=head_meta(e), highlight=(head_layer, head), nums=head_nums(e))
             for e in exs if active(e) is False],
        coloured=coloured,
        scale=data.scale(layer, neuron), has_predictions=len(preds.columns) > 0, test=test, counts=counts,
        siblings=siblings)


# =============================================================================== the index
def _df_table(df: pd.DataFrame) -> Optional[dict]:
    if df is None or not len(df.columns):
        return None
    cols = list(df.columns)
    num = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols]
    # one format per column: p-values in e-notation, integers as integers, the rest with 3 decimals
    how = [None if not n else pval if is_pvalue(str(c)) else
           (lambda v: fmt(int(v)) if isnum(v) else fmt(v)) if pd.api.types.is_integer_dtype(df[c]) else fmt
           for c, n in zip(cols, num)]
    rows = [[f(v) if f else (v if cell(v) is not None else "\u2013") for v, f in zip(r, how)]
            for r in df[cols].itertuples(index=False)]
    return dict(header=cols, rows=rows, num=num)


def _figure(data: RunData, links: Links, name: str, caption: str) -> dict:
    png = os.path.join(data.dir, f"{name}.png")
    if not os.path.exists(png):
        return dict(name=name, src=None)
    svg = None
    if links.site:
        src = links.asset(f"{name}.png")
        if os.path.exists(os.path.join(data.dir, f"{name}.svg")):
            svg = links.asset(name + ".svg")
    else:
        with open(png, "rb") as f:
            src = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    return dict(name=name, src=src, svg=svg, caption=caption)


def _evidence_card(data: RunData) -> Optional[dict]:
    """The summary's card for the evidence stage (None when the run has not run it)."""
    ev = data.stage_attrs("evidence", "evidence")
    by = ev.get("by_group") or {}
    if not by:
        return None
    nt, rnd, vs = by.get("next_token", {}), by.get("random", {}), ev.get("vs_random")
    v = f"{nt.get('rising', 0)}/{nt.get('neurons', 0)}" if nt else "–"
    sub = ((f"random: {rnd.get('rising', 0)}/{rnd.get('neurons', 0)}; " if rnd else "") +
           (f"Fisher's exact test, one-sided p = {pval(vs['p'])}; " if vs else "") + f"{ev.get('docs', '?')} test documents")
    return dict(v=v, sub=sub)


def summary_html(data: RunData, links: Links) -> str:
    """The run's summary: model, counts, statistics, figures."""
    m, o = data.manifest, data.options
    neurons = data.neurons
    sc = data.table("scores")
    main = sc[sc.n_prompts_per_neuron == data.main_n] if len(sc.columns) and "n_prompts_per_neuron" in sc.columns else sc

    def mean_e(group):
        if not len(main.columns) or "group" not in main.columns:
            return None
        v = main[main.group == group].E.astype(float)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else None

    llm = m.get("llm", {})
    return _render(
        "summary.html", manifest=m, model_name=data.model_name, dir=data.dir, cfg=m.get("model", {}).get("config", {}),
        n_nt=int(neurons.group.astype(str).str.contains("next_token").sum()) if len(neurons) else 0,
        n_rnd=int(neurons.group.astype(str).str.contains("random").sum()) if len(neurons) else 0,
        n_prompts=len(data.table("prompts")), main_n=data.main_n, n_pairs=len(data.pairs),
        who=llm.get("model") or llm.get("explainer") or o.get("explainer", ""),
        mean_nt=mean_e("next_token"), mean_rnd=mean_e("random"), evidence=_evidence_card(data),
        notes=[] if data.coloured() else _notes(data, (), False), statistics=_df_table(data.table("statistics")),
        figures=[_figure(data, links, "figure5", "Figure 5: explanation scores E, next-token vs random neurons"),
                 _figure(data, links, "figure6", "Figure 6: ablation, mean decrease of the token's probability on "
                                                 "active vs inactive prompts")],
        ks=data.stage_attrs("ablation", "ablation_by_head").get("ks"))


def tables_html(data: RunData, links: Links) -> str:
    """Tables 3 and 4."""
    t4 = data.table("table4")
    hist = data.stage_attrs("stats", "table4").get("histogram")
    return _render("tables.html", links=links, table3=_df_table(data.table("table3")),
                   hist=[[k, v] for k, v in sorted(hist.items(), key=lambda x: int(x[0]))] if hist else None,
                   t4=list(t4.itertuples(index=False)) if len(t4.columns) else None)


def _details_html(data: RunData) -> str:
    m, o = data.manifest, data.options
    mm = m.get("model", {})

    def js(v):
        return json.dumps(v) if isinstance(v, (dict, list)) else v

    return _render(
        "details.html", options=[[k, json.dumps(v)] for k, v in o.items()], model_name=mm.get("name", o.get("model")),
        model_path=mm.get("path"),
        model_rows=[[k, v] for k, v in (mm.get("config") or {}).items() if not isinstance(v, (dict, list))],
        stages=[[k, fmt(v.get("wall_s")), v.get("finished", "")] for k, v in m.get("stages", {}).items()],
        llm=[[k, js(v)] for k, v in m.get("llm", {}).items()],
        usage=[[k, json.dumps(v) if isinstance(v, dict) else v] for k, v in (m.get("llm_usage") or {}).items()],
        env=[[k, m.get(k)] for k in ("python", "numpy", "pandas", "platform") if k in m],
        seeds=[[k, v] for k, v in (m.get("seeds") or {}).items()], templates=list((m.get("templates") or {}).items()))


def _jnum(x):
    return float(x) if isnum(x) else None


def index_records(data: RunData, links: Links) -> dict:
    """The rows of the index's two explorers (``assets/index-data.js``)."""
    neurons, pairs = data.neurons, data.pairs
    counts = pairs.groupby(["layer", "neuron"]).size().to_dict() if len(pairs) else {}
    best = pairs.assign(E=pairs.E.astype(float)).groupby(["layer", "neuron"]).E.max().to_dict() if len(pairs) else {}
    ma = data.table("max_acts")
    maxact = ma.groupby(["layer", "neuron"]).activation.max().to_dict() if len(ma.columns) else {}
    pr = data.table("prompts")
    npr = pr.groupby(["layer", "neuron"]).size().to_dict() if len(pr.columns) else {}
    ncols = [dict(label="neuron"), dict(label="group"), dict(label="token", kind="token"),
             dict(label="congruence", num=True, kind="float"), dict(label="max act", num=True, kind="float"),
             dict(label="prompts", num=True), dict(label="heads", num=True), dict(label="best E", num=True, kind="float"),
             dict(label="rising"), dict(label="AUC", num=True, kind="float")]
    nrows = []
    for r in neurons.itertuples(index=False):
        k = (int(r.layer), int(r.neuron))
        ev = data.evidence_row(*k)
        nrows.append([dict(t=neuron_label(*k), h=links.neuron(*k)), cell(r.group), quoted(cell(r.token)),
                      _jnum(r.congruence), _jnum(maxact.get(k)), int(npr.get(k, 0)), int(counts.get(k, 0)),
                      _jnum(best.get(k)), None if ev is None else ("yes" if ev["rising"] else "no"),
                      None if ev is None else _jnum(ev["auc"])])
    pcols = [dict(label="head"), dict(label="neuron"), dict(label="token", kind="token"), dict(label="group"),
             dict(label="active on", num=True, kind="pct"), dict(label="E", num=True, kind="float"),
             dict(label="TPR", num=True, kind="float"), dict(label="TNR", num=True, kind="float"),
             dict(label="\u0394p active", num=True, kind="float"), dict(label="\u0394p inactive", num=True, kind="float"),
             dict(label="explanation")]
    prows = [[dict(t=head_label(p.head_layer, p.head), h=links.head(p.layer, p.neuron, p.head_layer, p.head)),
              dict(t=neuron_label(p.layer, p.neuron), h=links.neuron(p.layer, p.neuron)), quoted(cell(p.token)),
              cell(p.group), _jnum(p.active_fraction), _jnum(p.E), _jnum(p.TPR), _jnum(p.TNR),
              _jnum(p.mean_decrease_active), _jnum(p.mean_decrease_inactive), _shorten(cell(p.explanation), 200)]
             for p in pairs.itertuples(index=False)]
    return dict(neurons=dict(columns=ncols, rows=nrows), heads=dict(columns=pcols, rows=prows))


def index_html(data: RunData, links: Links, n_neurons: int, n_pairs: int, atlas: Optional[str] = None) -> str:
    """The whole index page; ``atlas``: the href of the run's Neuroscope atlas, if it has one."""
    body = _render("index.html", summary=Markup(summary_html(data, links)), n_neurons=n_neurons, n_pairs=n_pairs,
                   tables=Markup(tables_html(data, links)), details=Markup(_details_html(data)), atlas=atlas)
    return page(f"ctxlookup report: {data.model_name}", body, scripts=["assets/index-data.js"])


def list_pages(name: str, title: str, spec: dict, page_size: int) -> Dict[str, str]:
    """Paged static tables of an explorer's rows (for browsers without JavaScript)."""
    rows, cols = spec["rows"], spec["columns"]
    n_pages = max(1, math.ceil(len(rows) / page_size))
    out = {}
    for p in range(n_pages):
        body = _render("list.html", title=title, n_rows=len(rows), page=p + 1, n_pages=n_pages,
                       prev=f"{name}-{p}.html" if p > 0 else None,
                       next=f"{name}-{p + 2}.html" if p + 1 < n_pages else None,
                       cols=cols, rows=rows[p * page_size:(p + 1) * page_size])
        out[f"lists/{name}-{p + 1}.html"] = page(f"{title} {p + 1}/{n_pages}", body, depth=1)
    return out


def nav_html(links: Links, prev, nxt, kind: str) -> str:
    """The previous / index / next line at the foot of a neuron's (``kind="neuron"``) or a head's page."""
    def lk(k):
        if k is None:
            return None
        if kind == "neuron":
            return dict(href=links.neuron(*k), label=neuron_label(*k))
        return dict(href=links.head(*k), label=f"{head_label(k[2], k[3])} \u2192 {neuron_label(k[0], k[1])}")
    return _render("nav.html", prev=lk(prev), next=lk(nxt), index=links.index())


_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"


def vocab_js(shared: Dict[str, int]) -> str:
    """``assets/vocab.js``: ``window.CTXL_VOCAB``, the report's token texts in id order (the
    neurons' examples scripts name their texts by these ids, so a text common to many neurons is
    written once)."""
    texts = sorted(shared, key=shared.get)
    return "window.CTXL_VOCAB = " + json.dumps(texts, ensure_ascii=True, separators=(",", ":")) + ";\n"


def pack(values) -> str:
    """Non-negative integers as one string, each in 5-bit groups, least significant first: a
    character of ``_DIGITS[32:]`` for a group that more follow, of ``_DIGITS[:32]`` for the last
    (``static/report.js``'s ``unpack`` reads it): 0-31 take one character, up to 1023 two."""
    out = []
    for u in values:
        u = int(u)
        while u >= 32:
            out.append(_DIGITS[32 + (u & 31)])
            u >>= 5
        out.append(_DIGITS[u])
    return "".join(out)


def _act_code(a: float) -> int:
    """An activation as ``pack`` writes it: 0 for a missing one, else 1 + 2 x the thousandths its
    tooltip shows (``f"{a:.3f}"``), + 1 when negative (a negative activation that rounds to 0
    thousandths stays negative: blue, not orange)."""
    if not np.isfinite(a):
        return 0
    k = int(round(float(f"{a:.3f}") * 1000))
    return 1 + 2 * abs(k) + (1 if a < 0 else 0)


def _facts(e: Example) -> list:
    """An example's line of facts (the ``example`` macro's), for ``static/report.js``: ``[rank,
    doc, subset or null, maximum, its token, prompt tokens (null: dropped by truncation), the
    prompt's activation, its share of the maximum, 1 when the activations are the prompt's
    alone]``, numbers as :func:`_num` and :func:`_pct_code` write them."""
    share = pct(e.prompt_activation / e.activation if e.activation and isnum(e.prompt_activation) else None)
    return [int(e.rank), int(e.doc_id), str(e.subset) if e.subset else None, _num(fmt(e.activation)), int(e.position),
            None if e.prompt_id is None else ("" if e.n_tokens is None else int(e.n_tokens)),
            _num(fmt(e.prompt_activation)), _pct_code(share), int(e.context == "prompt")]


def _heads_row(data: RunData, e: Example) -> Optional[list]:
    """The heads active on an example's prompt, for ``static/report.js``: ``[threshold (4 decimals),
    threshold (3 decimals), then per head, the highest attribution first: head layer, head,
    attribution (4 decimals), attribution (2 decimals)]``; None when its prompt has no attribution."""
    att = _active_heads(data, e)
    if att is None:
        return None
    thr, heads = att
    out = [_num(f"{thr:.4f}", 4), _num(fmt(thr))]
    for s, hl, h in heads:
        out += [int(hl), int(h), _num(f"{s:.4f}", 4), _num(fmt(s, 2), 2)]
    return out


def examples_js(data: RunData, layer: int, neuron: int, shared: Optional[Dict[str, int]] = None) -> str:
    """A neuron's examples for ``static/report.js``: ``window.CTXL_EXAMPLES = {scale, v, ex, nl, hp,
    m, c}``. ``v``: the neuron's token texts, each once, the most frequent first; with ``shared`` (the
    report's texts -> ids, grown here, written once as ``assets/vocab.js`` by :func:`vocab_js`),
    their ids in it, :func:`pack`-ed, instead of the texts; ``ex``: under each
    example's element id, ``[first, maximum, prompt start or null, document tokens or null, tokens,
    activations]``, the tokens as indices into ``v`` and the activations as :func:`_act_code`, both
    :func:`pack`-ed (a third of the JSON lists' size). The neuron's page and its heads' pages draw
    each max-activating example's line of facts and active heads from the same data: ``nl`` the
    neuron's label, ``hp`` its heads that have a page (the chips that link), ``m`` each example's
    :func:`_facts`, ``c`` its :func:`_heads_row` (where its prompt has attribution)."""
    facts, heads = {}, {}
    for split in ("train", "test"):
        for e in data.examples(layer, neuron, split):
            key = f"{e.split}-{e.rank}-{e.doc_id}"
            facts[key] = _facts(e)
            row = _heads_row(data, e)
            if row is not None:
                heads[key] = row
    pages = sorted(head_label(k[2], k[3]) for k in data.pair_keys() if k[:2] == (int(layer), int(neuron)))
    rows = []
    quant = [e for b in data.bands(layer, neuron) for e in b.examples]
    for split in ("train", "test", "q"):
        for e in (quant if split == "q" else data.examples(layer, neuron, split)):
            if e.strs is not None:
                rows.append(e)
    freq: Dict[str, int] = {}
    for e in rows:
        for t in e.strs:
            freq[t] = freq.get(t, 0) + 1
    vocab = sorted(freq, key=lambda t: (-freq[t], t))
    index = {t: i for i, t in enumerate(vocab)}
    ex = {f"{e.split}-{e.rank}-{e.doc_id}": [e.first, e.position, e.start, e.doc_len, pack(index[t] for t in e.strs),
                                              pack(_act_code(a) for a in e.acts)] for e in rows}
    v = vocab if shared is None else pack(shared.setdefault(t, len(shared)) for t in vocab)
    obj = dict(scale=data.scale(layer, neuron), v=v, ex=ex, nl=neuron_label(layer, neuron), hp=pages, m=facts,
               c=heads)
    return "window.CTXL_EXAMPLES = " + json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False) + ";\n"
