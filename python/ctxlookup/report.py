"""A Neuroscope-style report of a replication run: static HTML pages, and the same views in Jupyter.

``ctxlookup.report(run_dir)`` (or ``ctxlookup report RUN_DIR``) writes a static site that opens
from ``file://`` with no server and no network (CSS inline in every page, a little inline
JavaScript on the index, nothing fetched from elsewhere):

- ``index.html``: the run's summary (model, options from the manifest, the statistics table,
  Figures 5 and 6, Tables 3 and 4, wall time per stage) and two searchable, sortable, paged
  explorers, of the neurons and of the neuron-head pairs, whose rows live in
  ``assets/index-data.js`` (plain paged lists under ``lists/`` serve browsers without JavaScript);
- ``neurons/L{l}N{n}.html``, a page per neuron: its top congruence tokens, the heads active on its
  prompts, and its max-activating examples with every token coloured by the neuron's activation
  in a window around the maximum, the truncation point marked, and the heads active on each
  prompt;
- ``heads/L{l}N{n}_L{k}H{i}.html``, a page per neuron-head pair: the explanation, the active and
  inactive prompts it was made from, the test prompts with the classifier's prediction against
  the head's real activity, TPR, TNR, E, and the ablation effect.

Neuron pages link to their heads' pages and back; every page links to the index.

Per-token activations are not stored in a run directory: they are recomputed with the run's
model (``manifest["model"]["path"]``, processed as ``manifest["options"]["process_weights"]``
says) on the scan's documents, one batched forward pass per group of documents. Without the
corpus, the truncated prompts alone are coloured; without the model, prompts are shown as plain
text, and the page says so. Every number that a table holds (E, TPR, TNR, attribution scores,
active flags, ablation effects, predictions) is read from the table, not recomputed.

In Jupyter, :class:`NeuronView`, :class:`HeadView` and :class:`RunView` render the same views
inline (``_repr_html_``), and :func:`view` turns a DataFrame row into the right one.

This module is callable: ``ctxlookup.report(run_dir)`` is :func:`report`.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import sys
import time
import types
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

__all__ = ["report", "RunData", "NeuronView", "HeadView", "RunView", "view", "neuron_page", "head_page",
           "BEFORE", "AFTER"]

BEFORE = 40          # tokens shown before a maximum (more when the truncated prompt starts earlier)
AFTER = 10           # tokens shown after it
MAX_BEFORE = 160     # never more than this many before it
MARKER = ".ctxlookup-report"


# =============================================================================== small helpers
def esc(x) -> str:
    """HTML-escape anything (quotes included)."""
    return html.escape("" if x is None else str(x), quote=True)


def _isnum(x) -> bool:
    try:
        return x is not None and not isinstance(x, (bool, np.bool_)) and np.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 3) -> str:
    """A number for a table: ``–`` for missing, integers as they are, small numbers in e-notation."""
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
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.{digits}f}"
    return f"{v:.{max(digits - 1, 1)}e}"


def _pct(x) -> str:
    return "–" if not _isnum(x) else f"{100 * float(x):.0f}%"


def _str(x) -> Optional[str]:
    """A table cell as a string, or None for missing values (None, NaN, pd.NA)."""
    if x is None or x is pd.NA:
        return None
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)


def _visible(s: str) -> str:
    """A token as shown inside a coloured run of tokens (line breaks and tabs made visible)."""
    if s == "":
        return "\u2205"
    return s.replace("\r\n", "\u21b5").replace("\n", "\u21b5").replace("\r", "\u21b5").replace("\t", "\u21e5")


def _quoted(s: Optional[str]) -> str:
    """A token in quotes, so that its leading space shows: ' an'."""
    if s is None:
        return "?"
    return "'" + _visible(s) + "'"


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


def _colour(a: float, scale: float) -> str:
    """Background of a token with activation ``a``: orange up to ``scale``, blue for negatives."""
    if not np.isfinite(a) or scale <= 0:
        return "transparent"
    x = max(-1.0, min(1.0, float(a) / scale))
    if x >= 0:   # #rrggbbaa keeps pages of thousands of tokens small
        return f"#ff7a00{round(255 * (0.04 + 0.86 * x)):02x}"
    return f"#2878ff{round(255 * (0.04 + 0.56 * -x)):02x}"


# =============================================================================== style and script
_CSS_RULES = r"""
{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;}
a{color:#0a58ca;text-decoration:none}
a:hover{text-decoration:underline}
h1{font-size:1.55em;margin:.15em 0 .35em;font-weight:650;line-height:1.25}
h2{font-size:1.18em;margin:1.7em 0 .5em;padding-bottom:.2em;border-bottom:1px solid #e3e6ea;font-weight:620}
h3{font-size:1.02em;margin:1.1em 0 .4em;font-weight:620}
p{margin:.4em 0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.92em}
.crumbs{color:#59636e;font-size:.88em;margin-bottom:.3em}
.sub{color:#59636e;font-size:.9em}
.muted{color:#6e7781}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:.6em 0 .2em}
.card{border:1px solid #e3e6ea;border-radius:10px;padding:7px 13px;background:#f8fafc;min-width:96px}
.card .k{font-size:.72em;color:#59636e;text-transform:uppercase;letter-spacing:.05em}
.card .v{font-size:1.22em;font-weight:640;font-variant-numeric:tabular-nums}
.card .s{font-size:.78em;color:#6e7781}
table.data{border-collapse:collapse;font-size:.9em;margin:.4em 0 .8em}
table.data th{background:#f3f5f7;font-weight:600;text-align:left;padding:4px 9px;border-bottom:1px solid #d8dee4;white-space:nowrap}
table.data td{padding:3px 9px;border-bottom:1px solid #eceff2;vertical-align:top}
table.data td.num,table.data th.num{text-align:right;font-variant-numeric:tabular-nums}
table.data tr:hover td{background:#fafbfc}
table.kv td:first-child{color:#59636e;white-space:nowrap}
.wrap{overflow-x:auto}
.ex{border:1px solid #e3e6ea;border-radius:10px;margin:9px 0;padding:7px 11px 8px;background:#fff}
.ex.dim{background:#fbfbfc}
.ex.right{border-left:4px solid #2da44e}
.ex.wrong{border-left:4px solid #cf222e}
.ex .meta{font-size:.83em;color:#59636e;margin-bottom:5px;display:flex;flex-wrap:wrap;gap:4px 12px;align-items:baseline}
.ex .meta b{color:#1f2328}
.ex .heads{font-size:.83em;color:#59636e;margin-top:5px}
.toks{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12.5px;line-height:1.95;white-space:pre-wrap;word-break:break-word}
.toks.plain{background:#f6f8fa;border-radius:6px;padding:4px 8px}
.tok{border-radius:3px;padding:1px 0}
.tok:hover{outline:1px solid #1f2328}
.tok.max{outline:2px solid #cf222e;outline-offset:0}
.tok.out{opacity:.5}
.tok.part{display:inline-block;min-width:4px;height:1.2em;vertical-align:-.2em}
.cut{display:inline-block;width:0;height:1.45em;border-left:2px dashed #8250df;margin:0 3px 0 2px;vertical-align:-.35em}
.ell{color:#8c959f}
.chip{display:inline-block;padding:0 7px;border-radius:11px;font-size:.84em;border:1px solid #d0d7de;background:#f6f8fa;margin:1px 3px 1px 0;white-space:nowrap;color:#1f2328}
a.chip{color:#0a58ca}
.chip.sel{background:#ddf4ff;border-color:#54aeff}
.chip.tokc{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre}
.chip.pos{background:#fff1e5;border-color:#ffb77c}
.chip.neg{background:#e8f1ff;border-color:#9ec5fe}
.badge{display:inline-block;font-size:.72em;padding:1px 8px;border-radius:10px;vertical-align:middle;margin-left:6px;font-weight:600;letter-spacing:.02em}
.badge.nt{background:#dafbe1;color:#116329}
.badge.rnd{background:#eaeef2;color:#424a53}
.badge.yes{background:#dafbe1;color:#116329}
.badge.no{background:#ffebe9;color:#a40e26}
.badge.unk{background:#fff8c5;color:#7d4e00}
.expl{border-left:4px solid #8250df;background:#fbf7ff;padding:9px 14px;border-radius:6px;font-size:1.04em;margin:.5em 0}
.note{background:#fff8c5;border:1px solid #e3c46f;padding:6px 11px;border-radius:8px;margin:.6em 0;font-size:.92em}
.legend{display:flex;align-items:center;gap:8px;font-size:.82em;color:#59636e;margin:.3em 0 .6em;flex-wrap:wrap}
.legend .bar{display:inline-block;width:150px;height:11px;border-radius:3px;background:linear-gradient(90deg,rgba(40,120,255,.6),rgba(255,255,255,0) 30%,rgba(255,122,0,.9))}
.ok{color:#1a7f37;font-weight:700}
.bad{color:#cf222e;font-weight:700}
table.grid{border-collapse:separate;border-spacing:3px;font-size:.8em}
table.grid td{width:46px;height:26px;text-align:center;border-radius:5px;border:1px solid #e3e6ea;font-variant-numeric:tabular-nums}
table.grid td.sel{border:2px solid #0969da}
table.grid th{font-weight:500;color:#59636e;padding:0 4px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.figs{display:flex;flex-wrap:wrap;gap:18px}
.figs figure{margin:0;flex:1 1 380px;max-width:560px}
.figs img{width:100%;border:1px solid #e3e6ea;border-radius:8px;background:#fff}
.figs figcaption{font-size:.85em;color:#59636e}
.nav{display:flex;justify-content:space-between;gap:10px;margin:1.8em 0 .5em;font-size:.9em;border-top:1px solid #e3e6ea;padding-top:.6em}
details>summary{cursor:pointer;color:#0a58ca;margin:.4em 0}
pre.prompt{white-space:pre-wrap;background:#f6f8fa;border-radius:8px;padding:8px 11px;font-size:.82em;max-height:420px;overflow:auto}
.explorer .bar{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:.4em 0}
.explorer input[type=search]{font:inherit;padding:4px 9px;border:1px solid #d0d7de;border-radius:7px;min-width:340px}
.explorer td.tk{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;white-space:pre}
.explorer select,.explorer button{font:inherit;padding:3px 9px;border:1px solid #d0d7de;border-radius:7px;background:#f6f8fa;cursor:pointer}
.explorer button[disabled]{opacity:.45;cursor:default}
.explorer th{cursor:pointer;user-select:none}
.explorer th.asc:after{content:" \25B2";font-size:.7em}
.explorer th.desc:after{content:" \25BC";font-size:.7em}
.explorer .info{color:#59636e;font-size:.88em}
"""

_PAGE_CSS = ("html{background:#f4f6f8}body{margin:0;padding:22px 16px 40px}"
             ".page{max-width:1180px;margin:0 auto;background:#fff;border:1px solid #e3e6ea;border-radius:14px;"
             "padding:18px 28px 26px;box-shadow:0 1px 3px rgba(31,35,40,.04)}"
             "@media (max-width:760px){.ctxl-root .cols{grid-template-columns:1fr}.page{padding:12px}}")


def _scoped_css(root: str = ".ctxl-root") -> str:
    """Every rule above, scoped to ``root`` (so a notebook's own styles are left alone)."""
    out = []
    for line in _CSS_RULES.strip().splitlines():
        sel, _, body = line.partition("{")
        sel = sel.strip()
        scoped = root if not sel else ",".join(f"{root} {s.strip()}" for s in sel.split(","))
        out.append(scoped + "{" + body)
    return "\n".join(out)


_INDEX_JS = r"""
(function () {
  "use strict";
  var DATA = window.CTXL_INDEX;
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(v, kind) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "\u2013";
    if (kind === "pct") return Math.round(100 * v) + "%";
    if (typeof v === "number") {
      if (Number.isInteger(v) && kind !== "float") return String(v);
      if (v === 0) return "0";
      var a = Math.abs(v);
      return (a >= 1e-3 && a < 1e5) ? v.toFixed(3) : v.toExponential(2);
    }
    return String(v);
  }
  function plain(v) { return (v !== null && typeof v === "object") ? v.t : v; }
  function Explorer(root, spec) {
    var cols = spec.columns, rows = spec.rows;
    var keys = rows.map(function (r) {
      return r.map(function (v) { var x = plain(v); return x === null || x === undefined ? "" : String(x); })
              .join(" \u0001 ").toLowerCase();
    });
    var state = {q: "", col: -1, dir: 1, page: 0, size: 50, view: rows.map(function (_, i) { return i; })};
    var input = root.querySelector("input[type=search]");
    var sizeSel = root.querySelector("select");
    var prev = root.querySelector("button.prev"), next = root.querySelector("button.next");
    var info = root.querySelector(".info");
    var table = root.querySelector("table"), thead = table.querySelector("thead"), tbody = table.querySelector("tbody");
    var hr = el("tr");
    cols.forEach(function (c, j) {
      var th = el("th", c.num ? "num" : "", c.label);
      th.title = "sort by " + c.label;
      th.addEventListener("click", function () {
        if (state.col === j) state.dir = -state.dir; else { state.col = j; state.dir = c.num ? -1 : 1; }
        state.page = 0; refilter();
      });
      hr.appendChild(th);
    });
    thead.innerHTML = "";
    thead.appendChild(hr);
    function refilter() {
      var q = state.q.toLowerCase().trim().split(/\s+/).filter(Boolean);
      var v = [];
      for (var i = 0; i < rows.length; i++) {
        var ok = true;
        for (var t = 0; t < q.length; t++) if (keys[i].indexOf(q[t]) < 0) { ok = false; break; }
        if (ok) v.push(i);
      }
      if (state.col >= 0) {
        var j = state.col, d = state.dir;
        v.sort(function (a, b) {
          var x = plain(rows[a][j]), y = plain(rows[b][j]);
          var xm = x === null || x === undefined || x === "", ym = y === null || y === undefined || y === "";
          if (xm || ym) return xm === ym ? a - b : (xm ? 1 : -1);
          if (x < y) return -d;
          if (x > y) return d;
          return a - b;
        });
      }
      state.view = v;
      render();
    }
    function render() {
      var n = state.view.length, pages = Math.max(1, Math.ceil(n / state.size));
      if (state.page >= pages) state.page = pages - 1;
      var lo = state.page * state.size, hi = Math.min(n, lo + state.size);
      tbody.innerHTML = "";
      for (var k = lo; k < hi; k++) {
        var r = rows[state.view[k]], tr = el("tr");
        for (var j = 0; j < cols.length; j++) {
          var c = cols[j], v = r[j], td = el("td", c.num ? "num" : (c.kind === "token" ? "tk" : ""));
          if (v !== null && typeof v === "object" && v.h) {
            var a = el("a", "", v.t);
            a.href = v.h;
            td.appendChild(a);
          } else {
            td.textContent = fmt(plain(v), c.kind);
          }
          tr.appendChild(td);
        }
        tbody.appendChild(tr);
      }
      Array.prototype.forEach.call(thead.querySelectorAll("th"), function (th, j) {
        th.className = (cols[j].num ? "num " : "") + (j === state.col ? (state.dir > 0 ? "asc" : "desc") : "");
      });
      info.textContent = rows.length === 0 ? "none in this run" : n === 0 ? "no match" :
        ("showing " + (lo + 1) + "\u2013" + hi + " of " + n + (n < rows.length ? " (filtered from " + rows.length + ")" : "") +
         " \u00b7 page " + (state.page + 1) + " of " + pages);
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages - 1;
    }
    input.addEventListener("input", function () { state.q = input.value; state.page = 0; refilter(); });
    sizeSel.addEventListener("change", function () { state.size = parseInt(sizeSel.value, 10) || 50; state.page = 0; render(); });
    prev.addEventListener("click", function () { if (state.page > 0) { state.page--; render(); } });
    next.addEventListener("click", function () { state.page++; render(); });
    state.size = parseInt(sizeSel.value, 10) || 50;
    refilter();
    root.setAttribute("data-ready", "1");
  }
  var roots = document.querySelectorAll("[data-explorer]");
  for (var i = 0; i < roots.length; i++) {
    var name = roots[i].getAttribute("data-explorer");
    if (DATA && DATA[name]) Explorer(roots[i], DATA[name]);
    else roots[i].querySelector(".info").textContent = "the explorer's data (assets/index-data.js) did not load; use the plain lists below";
  }
})();
"""


def _page(title: str, body: str, depth: int = 0, script: str = "", head_extra: str = "") -> str:
    """A whole self-contained HTML page."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><link rel=\"icon\" href=\"data:,\">"
            f"<style>{_PAGE_CSS}\n{_scoped_css()}</style>{head_extra}</head>\n"
            f"<body><div class=\"ctxl-root page\">\n{body}\n</div>{script}</body></html>\n")


# =============================================================================== the run's data
@dataclass
class Example:
    """One max-activating document of a neuron, as the report shows it."""

    split: str                       # "train" (the prompts) or "test" (the test prompts)
    layer: int
    neuron: int
    rank: int
    doc_id: int
    subset: Optional[str]
    position: int                    # the maximum, in document tokens (BOS excluded)
    activation: float                # the neuron's maximum on the document (full context)
    prompt_id: Optional[int] = None  # None when truncation dropped the document
    start: Optional[int] = None      # the truncated prompt's first token, in document tokens
    prompt_activation: Optional[float] = None
    n_tokens: Optional[int] = None
    text: Optional[str] = None       # the truncated prompt's text
    first: int = 0                   # document index of strs[0]
    doc_len: Optional[int] = None    # document tokens (BOS excluded), when known
    strs: Optional[List[str]] = None
    acts: Optional[np.ndarray] = None
    context: str = "none"            # "document", "prompt" (truncated prompt alone) or "none"
    prompt_tokens: Optional[np.ndarray] = None   # the truncated prompt's ids (BOS excluded)


def _token_strings(tok, ids) -> List[str]:
    """Each token's text; a character split over several byte-level tokens goes to the token that
    completes it (the others get "", drawn as a narrow box), instead of a replacement character each."""
    ids = np.asarray(ids, np.int32)
    orig = list(tok.to_str_tokens(ids))
    strs = list(orig)
    bad = "\ufffd"
    i = 0
    while i < len(orig):
        if bad not in orig[i]:
            i += 1
            continue
        j = i
        while j < len(orig) and bad in orig[j]:
            j += 1
        # the run of tokens that decode to replacement characters alone, and the token after it (which
        # may finish their character): each prefix of it that decodes cleanly goes to its last token
        end = j + 1 if j < len(orig) and bad not in orig[j] else j
        start = i
        for k in range(i, end):
            text = tok.decode(ids[start:k + 1])
            if not text.endswith(bad) and text.count(bad) < sum(orig[q].count(bad) for q in range(start, k + 1)):
                for q in range(start, k):
                    strs[q] = ""
                strs[k] = text
                start = k + 1
        i = end
    return strs


def _load_json(path: str) -> dict:
    """A run's manifest, checked to be one (else a RunFileError naming the file, not a parser traceback)."""
    from .replicate import RunFileError

    try:
        with open(path, "rb") as f:
            m = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        m, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "expected a JSON object with 'options' and 'stages' objects"
    if not isinstance(m, dict) or not isinstance(m.get("options", {}), dict) or not isinstance(m.get("stages", {}), dict) \
            or not all(isinstance(r, dict) for r in m.get("stages", {}).values()):
        raise RunFileError(f"{path} is damaged or not a ctxlookup run manifest ({why}); the run cannot be reported")
    return m


class RunData:
    """A run directory's tables, manifest, model and recomputed activations, loaded on demand.

    ``run``: a run directory, or the :class:`ctxlookup.replicate.Run` that :func:`ctxlookup.replicate`
    returns. ``model`` (a :class:`ctxlookup.Model` or a folder), ``corpus`` and ``test_corpus``
    override where the manifest says they are (for a run directory that moved machines);
    ``model=False`` renders without a model (no colours).
    """

    def __init__(self, run, model=None, corpus=None, test_corpus=None, batch_tokens: int = 4096,
                 before: int = BEFORE, after: int = AFTER, context: str = "document"):
        if context not in ("document", "prompt"):
            raise ValueError(f"context must be 'document' or 'prompt', got '{context}'")
        self.context = context
        if isinstance(run, RunData):
            run = run.dir
        d = getattr(run, "dir", None) if not isinstance(run, (str, os.PathLike)) else None
        self.dir = os.path.abspath(os.fspath(d if d is not None else run))
        path = os.path.join(self.dir, "manifest.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{self.dir} is not a run directory (no manifest.json); make one with "
                                    f"ctxlookup replicate")
        self.manifest = _load_json(path)
        self._mtime = os.path.getmtime(path)
        self.options = dict(self.manifest.get("options", {}))
        self.batch_tokens, self.before, self.after = int(batch_tokens), int(before), int(after)
        self._tables: Dict[str, pd.DataFrame] = {}
        self._model_arg, self._model, self._model_tried = model, None, False
        self.model_problem: Optional[str] = None
        self._corpus_arg = {"train": corpus, "test": test_corpus}
        self.corpus_problem: Dict[str, str] = {}
        self._examples: Dict[Tuple[str, int, int], List[Example]] = {}
        self.mismatches = 0                # recomputed maxima that differ from the run's
        self._cache: dict = {}

    # ------------------------------------------------------------------ tables
    def table(self, name: str) -> pd.DataFrame:
        """A table of the run (an empty DataFrame when the run has not written it)."""
        if name not in self._tables:
            self._tables[name] = self._read_table(name)
        return self._tables[name]

    def _read_table(self, name: str) -> pd.DataFrame:
        """A table as its stage wrote it: a file that the manifest records and that is missing, not
        the recorded file (sha256) or unreadable raises RunFileError naming it and the command that
        redoes its stage; a table of a stage that has not run is empty."""
        from .replicate import OUTPUTS, RunFileError, file_sha256 as _sha256, repair_command

        p = os.path.join(self.dir, f"{name}.parquet")
        stage = next((s for s, outs in OUTPUTS.items() if name in outs), None)
        rec = self.manifest.get("stages", {}).get(stage, {}) if stage else {}
        want = ((rec.get("outputs") or {}).get(name) or {}).get("parquet", {}).get("sha256") if rec.get("complete") else None

        def damaged(why: str):
            return RunFileError(f"{p} {why}; to redo its stage ({stage}) run: "
                                f"{repair_command(self.manifest, self.dir)}")

        if not os.path.exists(p):
            if want:
                raise damaged("is missing")
            return pd.DataFrame()
        if want and _sha256(p) != want:
            raise damaged("is not the file its stage wrote (its sha256 differs from manifest.json)")
        try:
            return pd.read_parquet(p)
        except Exception as e:  # pyarrow's errors for a damaged file are many (OSError, ArrowInvalid, ...)
            raise damaged(f"is damaged ({type(e).__name__}: {e})") from None

    def has(self, name: str) -> bool:
        return len(self.table(name).columns) > 0

    def stage_attrs(self, stage: str, table: str) -> dict:
        return self.manifest.get("stages", {}).get(stage, {}).get("attrs", {}).get(table, {}) or {}

    @property
    def protocol(self) -> dict:
        """The run's protocol rules (``ctxlookup.protocols``); a run made before protocols existed
        followed today's ``ctxlookup`` rules with its own options."""
        from . import protocols

        rec = self.manifest.get("protocol")
        if rec:
            return rec
        o = self.options
        return protocols.get("ctxlookup", rule=o.get("rule"), truncation=o.get("truncation"), low=o.get("low"),
                             high=o.get("high"), prompts_per_neuron=o.get("prompts_per_neuron"),
                             test_prompts_per_neuron=o.get("test_prompts_per_neuron")).as_dict()

    @property
    def main_n(self) -> int:
        """Prompts per neuron of the main analysis (the statistics, Figure 5, the ablation)."""
        return int(self.protocol.get("prompts_per_neuron") or 20)

    @property
    def model_name(self) -> str:
        m = self.manifest.get("model", {}).get("name") or self.options.get("model") or "model"
        m = str(m)
        return os.path.basename(m.rstrip("/")) if os.sep in m else m

    @property
    def neurons(self) -> pd.DataFrame:
        """One row per neuron: ``layer, neuron, token_id, token, congruence, rank, group``."""
        if "neurons" not in self._cache:
            nt = self.table("neurons")
            if not len(nt.columns):
                df = pd.DataFrame(columns=["layer", "neuron", "token_id", "token", "congruence", "rank", "group"])
            else:
                df = nt.copy()
                groups = df.groupby(["layer", "neuron"])["group"].agg(lambda g: "+".join(sorted(set(map(str, g)))))
                df = df.sort_values("group").drop_duplicates(["layer", "neuron"]).drop(columns="group")
                df = df.merge(groups.rename("group").reset_index(), on=["layer", "neuron"])
                df = df.sort_values(["layer", "neuron"]).reset_index(drop=True)
            self._cache["neurons"] = df
        return self._cache["neurons"]

    def neuron_info(self, layer: int, neuron: int) -> dict:
        n = self.neurons
        r = n[(n.layer == layer) & (n.neuron == neuron)]
        if len(r):
            return r.iloc[0].to_dict()
        ma = self.table("max_acts")
        tok = None
        if len(ma.columns) and "token" in ma.columns:
            m = ma[(ma.layer == layer) & (ma.neuron == neuron)]
            tok = m.token.iloc[0] if len(m) else None
        return dict(layer=layer, neuron=neuron, token=tok, token_id=None, congruence=None, rank=None, group=None)

    @property
    def pairs(self) -> pd.DataFrame:
        """One row per neuron-head pair that was selected (for any prompt count), with the main
        analysis's numbers: ``layer, neuron, head_layer, head, n_main, active_fraction, E, TPR,
        TNR, one_class, explanation, mean_decrease_active, mean_decrease_inactive, group, token``.
        ``n_main`` is the prompt count the numbers are for: the run's ``prompts_per_neuron``, or
        the largest count the pair was selected at."""
        if "pairs" in self._cache:
            return self._cache["pairs"]
        key = ["layer", "neuron", "head_layer", "head"]
        parts = []
        for name in ("heads", "explanations", "scores"):
            t = self.table(name)
            if len(t.columns) and set(key) <= set(t.columns):
                parts.append(t[key + (["n_prompts_per_neuron"] if "n_prompts_per_neuron" in t.columns else [])])
        if not parts:
            df = pd.DataFrame(columns=key + ["n_main"])
        else:
            allp = pd.concat(parts, ignore_index=True)
            if "n_prompts_per_neuron" not in allp.columns:
                allp["n_prompts_per_neuron"] = self.main_n
            allp["n_prompts_per_neuron"] = allp["n_prompts_per_neuron"].fillna(self.main_n).astype(int)
            allp["is_main"] = allp.n_prompts_per_neuron == self.main_n
            allp = allp.sort_values(["is_main", "n_prompts_per_neuron"], ascending=False)
            df = allp.drop_duplicates(key)[key + ["n_prompts_per_neuron"]].rename(columns={"n_prompts_per_neuron": "n_main"})
            for c in key:
                df[c] = df[c].astype(int)
        heads = self.table("heads")
        if len(heads.columns):
            h = heads.copy()
            if "n_prompts_per_neuron" not in h.columns:
                h["n_prompts_per_neuron"] = self.main_n
            h = h.drop_duplicates(key + ["n_prompts_per_neuron"])
            df = df.merge(h[key + ["n_prompts_per_neuron", "active_fraction"]].rename(
                columns={"n_prompts_per_neuron": "n_main"}), on=key + ["n_main"], how="left")
        scores = self.table("scores")
        cols = ["E", "TPR", "TNR", "one_class", "explanation"]
        if len(scores.columns):
            s = scores.copy()
            if "n_prompts_per_neuron" not in s.columns:
                s["n_prompts_per_neuron"] = self.main_n
            s = s.drop_duplicates(key + ["n_prompts_per_neuron"])
            df = df.merge(s[key + ["n_prompts_per_neuron"] + [c for c in cols if c in s.columns]].rename(
                columns={"n_prompts_per_neuron": "n_main"}), on=key + ["n_main"], how="left")
        else:
            ex = self.table("explanations")
            if len(ex.columns):
                e = ex.copy()
                if "n_prompts_per_neuron" not in e.columns:
                    e["n_prompts_per_neuron"] = self.main_n
                df = df.merge(e.drop_duplicates(key + ["n_prompts_per_neuron"])[
                    key + ["n_prompts_per_neuron", "explanation"]].rename(columns={"n_prompts_per_neuron": "n_main"}),
                    on=key + ["n_main"], how="left")
        ab = self.table("ablation_by_head")
        if len(ab.columns):
            df = df.merge(ab[key + ["mean_decrease_active", "mean_decrease_inactive"]], on=key, how="left")
        info = self.neurons[["layer", "neuron", "group", "token"]]
        df = df.merge(info, on=["layer", "neuron"], how="left")
        for c in ("active_fraction", "E", "TPR", "TNR", "one_class", "explanation", "mean_decrease_active",
                  "mean_decrease_inactive", "group", "token"):
            if c not in df.columns:
                df[c] = None
        df = df.sort_values(key).reset_index(drop=True)
        self._cache["pairs"] = df
        return df

    def pair_keys(self) -> set:
        if "pair_keys" not in self._cache:
            self._cache["pair_keys"] = set(map(tuple, self.pairs[["layer", "neuron", "head_layer", "head"]]
                                               .astype(int).values.tolist()))
        return self._cache["pair_keys"]

    def rows_of(self, name: str, layer: int, neuron: int, head_layer: int, head: int) -> pd.DataFrame:
        """The rows of table ``name`` for one neuron-head pair (grouped once, looked up after)."""
        key = f"by-pair-{name}"
        if key not in self._cache:
            t = self.table(name)
            cols = ["layer", "neuron", "head_layer", "head"]
            self._cache[key] = ({k: g for k, g in t.groupby(cols, sort=False)}
                                if len(t) and set(cols) <= set(t.columns) else {})
            self._cache[key + "-empty"] = t.iloc[:0]
        got = self._cache[key].get((int(layer), int(neuron), int(head_layer), int(head)))
        return got if got is not None else self._cache[key + "-empty"]

    def score_rows(self, layer, neuron, head_layer, head) -> pd.DataFrame:
        """The pair's scores (or explanations, before scoring), one row per prompt count."""
        name = "scores" if self.has("scores") else "explanations"
        m = self.rows_of(name, layer, neuron, head_layer, head)
        if "n_prompts_per_neuron" in m.columns:
            m = m.sort_values("n_prompts_per_neuron")
        return m

    # ------------------------------------------------------------------ attribution
    def attribution_index(self, split: str) -> dict:
        """``prompt_id -> (threshold, {(head_layer, head): (score, active)})`` for one split."""
        key = f"att-{split}"
        if key not in self._cache:
            att = self.table("attribution" if split == "train" else "test_attribution")
            out = {}
            if len(att.columns):
                pid = att.prompt_id.to_numpy()
                order = np.argsort(pid, kind="stable")
                pid = pid[order]
                hl = att.head_layer.to_numpy()[order]
                hh = att["head"].to_numpy()[order]
                sc = att.score.to_numpy(np.float64)[order]
                ac = att.active.to_numpy(bool)[order]
                bounds = np.flatnonzero(np.diff(pid)) + 1
                for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(pid)]):
                    s = sc[lo:hi]
                    thr = _active_threshold(s, self.protocol.get("active_rule", "mean+2sd"))
                    out[int(pid[lo])] = (thr, {(int(a), int(b)): (float(c), bool(d))
                                               for a, b, c, d in zip(hl[lo:hi], hh[lo:hi], s, ac[lo:hi])})
            self._cache[key] = out
        return self._cache[key]

    # ------------------------------------------------------------------ model and corpora
    @property
    def model(self):
        """The run's model (or None, with the reason in ``model_problem``)."""
        if self._model is None and not self._model_tried:
            self._model_tried = True
            arg = self._model_arg
            if arg is False:
                self.model_problem = "the report was made without the model"
                return None
            if arg is not None and not isinstance(arg, (str, os.PathLike)):
                self._model = arg
                return arg
            from .model import Model

            p = bool(self.options.get("process_weights", True))
            kw = dict(fold_ln=p, center_writing_weights=p, center_unembed=p, fold_value_biases=p)
            cands = [os.fspath(arg)] if arg is not None else [
                self.manifest.get("model", {}).get("path"), self.options.get("model")]
            tried = []
            for c in cands:
                if not c:
                    continue
                tried.append(str(c))
                try:
                    if c == "demo" or os.path.isdir(c):
                        self._model = Model.from_pretrained(c, **kw)
                        break
                except Exception as e:  # a broken or missing checkpoint: render without it
                    self.model_problem = f"the model at {c} could not be loaded ({e})"
            if self._model is None and self.model_problem is None:
                self.model_problem = f"the model folder was not found ({', '.join(tried) or 'not recorded'})"
            if self._model is not None and self._model.tokenizer is None:
                self.model_problem = f"the model at {self._model.path} has no tokenizer files"
                self._model = None
        return self._model

    def corpus(self, split: str):
        """The corpus the scan read for ``split`` ("train" or "test"), or None."""
        key = f"corpus-{split}"
        if key in self._cache:
            return self._cache[key]
        from .corpus import Corpus

        src = self._corpus_arg.get(split)
        c = None
        if src is not None and not isinstance(src, (str, os.PathLike)):
            c = src
        else:
            src = src if src is not None else self.options.get("corpus" if split == "train" else "test_corpus")
            limit = self.options.get("max_docs")
            try:
                if src is None:
                    if self.options.get("model") == "demo":
                        c = Corpus.demo(split)
                    else:
                        self.corpus_problem[split] = "no corpus recorded"
                else:
                    found = next((p for p in (src, os.path.join(self.dir, src), os.path.join(os.path.dirname(self.dir), src))
                                  if os.path.exists(p)), None)
                    if found is None:
                        self.corpus_problem[split] = f"the corpus {src} was not found"
                    else:
                        c = Corpus(found, limit=limit)
            except Exception as e:
                self.corpus_problem[split] = f"the corpus could not be opened ({e})"
        self._cache[key] = c
        return c

    # ------------------------------------------------------------------ examples
    def _example_rows(self, split: str, keys: set) -> List[Example]:
        ma = self.table("max_acts" if split == "train" else "test_max_acts")
        pr = self.table("prompts" if split == "train" else "test_prompts")
        if not len(ma.columns):
            # no scan table: the prompts alone (max position = the prompt's last token)
            if not len(pr.columns):
                return []
            ma = pr.assign(position=pr.start + pr.n_tokens - 1, activation=pr.full_activation)
        sel = ma[[(int(a), int(b)) in keys for a, b in zip(ma.layer, ma.neuron)]]
        pmap = {}
        if len(pr.columns):
            for r in pr.itertuples(index=False):
                pmap[(int(r.layer), int(r.neuron), int(r.rank) if _isnum(r.rank) else -1, int(r.doc_id))] = r
        out = []
        for r in sel.itertuples(index=False):
            rank = int(r.rank) if _isnum(getattr(r, "rank", None)) else -1
            p = pmap.get((int(r.layer), int(r.neuron), rank, int(r.doc_id)))
            ex = Example(split=split, layer=int(r.layer), neuron=int(r.neuron), rank=rank, doc_id=int(r.doc_id),
                         subset=_str(getattr(r, "subset", None)), position=int(r.position),
                         activation=float(r.activation))
            if p is not None:
                ex.prompt_id, ex.start = int(p.prompt_id), int(p.start)
                ex.prompt_activation, ex.n_tokens, ex.text = float(p.activation), int(p.n_tokens), str(p.text)
                ex.prompt_tokens = np.asarray(p.tokens, dtype=np.int64)
            out.append(ex)
        out.sort(key=lambda e: (e.layer, e.neuron, e.rank, e.doc_id))
        return out

    def examples(self, layer: int, neuron: int, split: str = "train") -> List[Example]:
        """The neuron's max-activating examples (``split`` "train" or "test"), by rank, with their
        tokens and activations recomputed around the maximum."""
        k = (split, int(layer), int(neuron))
        if k not in self._examples:
            self.prepare([(layer, neuron)])
        return self._examples.get(k, [])

    def prepare(self, neurons: Iterable[Tuple[int, int]], progress: bool = False) -> None:
        """Recompute the activations of many neurons' examples at once (batched forward passes)."""
        keys = {(int(a), int(b)) for a, b in neurons}
        todo = [(s, l, n) for s in ("train", "test") for l, n in keys if (s, l, n) not in self._examples]
        if not todo:
            return
        exs = {s: self._example_rows(s, {(l, n) for s2, l, n in todo if s2 == s}) for s in ("train", "test")}
        for s, l, n in todo:
            self._examples[(s, l, n)] = []
        for s in exs:
            for e in exs[s]:
                self._examples[(s, e.layer, e.neuron)].append(e)
        model = self.model
        if model is None:
            return
        for split in ("train", "test"):
            if exs[split]:
                self._fill(model, split, exs[split], progress)

    def _fill(self, model, split: str, exs: List[Example], progress: bool) -> None:
        from .search import doc_tokens as _doc_tokens

        tok = model.tokenizer
        scan = self.stage_attrs("scan" if split == "train" else "test_scan", "max_acts" if split == "train" else "test_max_acts")
        bos = bool(scan.get("prepend_bos", True))
        skip = 1 if bos else 0
        max_tokens = int(scan.get("max_tokens", model.cfg.n_ctx))
        corpus = self.corpus(split) if self.context == "document" else None
        docs: Dict[int, np.ndarray] = {}
        if corpus is not None:
            try:
                got = corpus.get({e.doc_id for e in exs})
                ids = sorted(got)
                toks = _doc_tokens(model, [got[i].text for i in ids], bos, max_tokens)
                docs = dict(zip(ids, toks))
            except Exception as e:  # a corpus that changed, or lost documents
                self.corpus_problem[split] = f"the corpus's documents could not be read ({e})"
                docs = {}
        # the sequences to run: a document prefix (full context) or the truncated prompt alone
        seqs: Dict[tuple, np.ndarray] = {}
        plan = []
        for e in exs:
            d = docs.get(e.doc_id)
            if d is not None and len(d) - skip > e.position:
                e.doc_len = len(d) - skip
                lo = e.position - self.before
                if e.start is not None:
                    lo = min(lo, e.start - 3)
                e.first = max(0, lo, e.position - MAX_BEFORE)
                end = min(e.doc_len, e.position + self.after + 1)
                key = ("doc", e.doc_id)
                prev = seqs.get(key)
                if prev is None or len(prev) < skip + end:
                    seqs[key] = d[: skip + end]
                plan.append((e, key, skip + e.first, skip + end, "document"))
            elif e.prompt_tokens is not None and len(e.prompt_tokens):
                pbos = bool(self.stage_attrs("truncate" if split == "train" else "test_truncate",
                                             "prompts" if split == "train" else "test_prompts").get("prepend_bos", True))
                head = [model.bos_token_id] if pbos and model.bos_token_id is not None else []
                key = ("prompt", e.prompt_id)
                seqs[key] = np.asarray(head + list(e.prompt_tokens), np.int32)
                e.first, e.doc_len = int(e.start), None
                plan.append((e, key, len(head), len(head) + len(e.prompt_tokens), "prompt"))
        if not plan:
            return
        # one forward pass per group of sequences, keeping the needed layers' hook_post only
        need_layers: Dict[tuple, set] = {}
        for e, key, *_ in plan:
            need_layers.setdefault(key, set()).add(e.layer)
        order = sorted(seqs, key=lambda k: len(seqs[k]))
        by_seq: Dict[tuple, list] = {}
        for item in plan:
            by_seq.setdefault(item[1], []).append(item)
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(order), desc=f"activations ({split})", unit="seq")
            except ImportError:  # pragma: no cover
                bar = None
        i = 0
        while i < len(order):
            j, longest = i, 0
            while j < len(order):
                L = len(seqs[order[j]])
                if j > i and max(longest, L) * (j - i + 1) > self.batch_tokens:
                    break
                longest = max(longest, L)
                j += 1
            batch = order[i:j]
            layers = sorted(set().union(*(need_layers[k] for k in batch)))
            names = [f"blocks.{l}.mlp.hook_post" for l in layers]
            _, cache = model.run_with_cache([seqs[k] for k in batch], names_filter=names, stop_at_layer=max(layers) + 1,
                                            return_logits=False)
            for b, k in enumerate(batch):
                for e, _, lo, hi, ctx in by_seq[k]:
                    a = np.asarray(cache[f"blocks.{e.layer}.mlp.hook_post"][b, lo:hi, e.neuron], np.float32).copy()
                    ids = seqs[k][lo:hi]
                    e.acts, e.strs, e.context = a, _token_strings(tok, ids), ctx
                    if ctx == "document":
                        got = float(a[e.position - e.first])
                        if abs(got - e.activation) > 1e-3 * max(1.0, abs(e.activation)):
                            self.mismatches += 1
            if bar is not None:
                bar.update(len(batch))
            i = j
        if bar is not None:
            bar.close()

    def scale(self, layer: int, neuron: int) -> float:
        """The colour scale of a neuron: its largest activation over its examples."""
        vals = [e.activation for s in ("train", "test") for e in self._examples.get((s, layer, neuron), [])]
        vals += [float(np.max(e.acts)) for s in ("train", "test") for e in self._examples.get((s, layer, neuron), [])
                 if e.acts is not None and len(e.acts)]
        m = max([v for v in vals if np.isfinite(v)], default=0.0)
        return m if m > 0 else 1.0

    # ------------------------------------------------------------------ congruence
    def top_tokens(self, layer: int, neuron: int, k: int = 10, k_neg: int = 5) -> Optional[dict]:
        """The neuron's most and least congruent tokens (the run's excluded tokens left out), or None
        without a model."""
        self.prepare_congruence([(layer, neuron)], k, k_neg)
        return self._cache.get("congr", {}).get((int(layer), int(neuron)))

    def prepare_congruence(self, neurons: Iterable[Tuple[int, int]], k: int = 10, k_neg: int = 5) -> None:
        store = self._cache.setdefault("congr", {})
        todo = sorted({(int(a), int(b)) for a, b in neurons} - set(store))
        model = self.model
        if not todo or model is None:
            return
        from .neurons import token_strings

        direction = self.options.get("direction", "unembed")
        U = model.W_U if direction == "unembed" else model.W_E.T        # (d_model, d_vocab)
        strs = token_strings(model)
        excl = self.table("excluded_tokens")
        mask = np.zeros(model.cfg.d_vocab, bool)
        if len(excl.columns):
            ids = excl.token_id.to_numpy(np.int64)
            mask[ids[(ids >= 0) & (ids < len(mask))]] = True
        by_layer: Dict[int, list] = {}
        for l, n in todo:
            by_layer.setdefault(l, []).append(n)
        for l, ns in by_layer.items():
            for c0 in range(0, len(ns), 256):
                chunk = ns[c0:c0 + 256]
                C = model.W_out[l][np.asarray(chunk)] @ U                 # (chunk, d_vocab)
                C = C.astype(np.float32)
                hi = np.where(mask, -np.inf, C)
                lo = np.where(mask, np.inf, C)
                for r, n in enumerate(chunk):
                    top = np.argpartition(-hi[r], min(k, hi.shape[1] - 1))[:k]
                    top = top[np.argsort(-hi[r][top])]
                    bot = np.argpartition(lo[r], min(k_neg, lo.shape[1] - 1))[:k_neg]
                    bot = bot[np.argsort(lo[r][bot])]
                    store[(l, n)] = dict(top=[(int(t), strs[t], float(C[r, t])) for t in top],
                                         bottom=[(int(t), strs[t], float(C[r, t])) for t in bot],
                                         direction=direction, n_excluded=int(mask.sum()))


# =============================================================================== rendering
class _Links:
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


def _crumbs(*parts: str) -> str:
    """The breadcrumb line above a page's title; ``parts`` are HTML (links or text)."""
    return '<div class="crumbs">' + " \u203a ".join(parts) + "</div>"


def _a(href: Optional[str], text: str, cls: str = "", title: str = "") -> str:
    """A link, or the text alone when there is nowhere to link to. ``text`` is HTML."""
    c = f' class="{cls}"' if cls else ""
    t = f' title="{esc(title)}"' if title else ""
    if href:
        return f'<a href="{esc(href)}"{c}{t}>{text}</a>'
    return f"<span{c}{t}>{text}</span>"


def _card(k: str, v: str, s: str = "") -> str:
    return (f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
            + (f'<div class="s">{s}</div>' if s else "") + "</div>")


def _group_badge(group) -> str:
    g = _str(group)
    if not g:
        return ""
    cls = "nt" if "next_token" in g else "rnd"
    label = {"next_token": "next-token neuron", "random": "random neuron"}.get(g, g.replace("_", "-"))
    return f'<span class="badge {cls}">{esc(label)}</span>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], num: Sequence[bool] = (), cls: str = "data") -> str:
    """A table; cells are HTML (escape before)."""
    num = list(num) + [False] * (len(header) - len(num))
    th = "".join(f'<th class="num">{esc(h)}</th>' if n else f"<th>{esc(h)}</th>" for h, n in zip(header, num))
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(r, num))
                   + "</tr>" for r in rows)
    return f'<div class="wrap"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _df_table(df: pd.DataFrame, cols: Optional[Sequence[str]] = None) -> str:
    if df is None or not len(df.columns):
        return '<p class="muted">(not in this run)</p>'
    cols = [c for c in (cols or df.columns) if c in df.columns]
    num = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols]
    rows = [[esc(fmt(v)) if n else esc(v if _str(v) is not None else "–") for v, n in zip(r, num)]
            for r in df[cols].itertuples(index=False)]
    return _table(cols, rows, num)


def _legend(scale: float) -> str:
    return (f'<div class="legend"><span>activation</span><span class="bar"></span><span>{esc(fmt(scale))} (the '
            f'neuron\'s largest)</span><span>\u00b7 <span class="tok max">max</span> where the neuron peaks</span>'
            f'<span>\u00b7 <span class="cut"></span> where the truncated prompt starts</span>'
            f'<span>\u00b7 faded: outside the prompt</span></div>')


def _render_tokens(e: Example, scale: float) -> str:
    if e.strs is None:
        return f'<div class="toks plain">{esc(e.text) if e.text else "<span class=muted>(no text: the document is not available)</span>"}</div>'
    parts = []
    if e.first > 0:
        parts.append('<span class="ell" title="earlier tokens not shown">\u2026</span>')
    acts = e.acts if e.acts is not None else np.full(len(e.strs), np.nan, np.float32)
    for i, (s, a) in enumerate(zip(e.strs, acts)):
        d = e.first + i
        if e.start is not None and d == e.start and e.start > 0:
            parts.append('<span class="cut" title="the truncated prompt starts here"></span>')
        cls = "tok"
        if d == e.position:
            cls += " max"
        if (e.start is not None and d < e.start) or d > e.position:
            cls += " out"
        val = "" if not np.isfinite(a) else f" \u00b7 {a:.3f}"
        if s == "":
            cls += " part"
            label = "(the first bytes of the next token's character)"
        else:
            label = _quoted(s)
        parts.append(f'<span class="{cls}" style="background:{_colour(a, scale)}" '
                     f'title="{esc(label + val)}">{esc(_visible(s)) if s else ""}</span>')
    last = e.first + len(e.strs)
    if e.doc_len is not None and last < e.doc_len:
        parts.append('<span class="ell" title="later tokens not shown">\u2026</span>')
    return '<div class="toks">' + "".join(parts) + "</div>"


def _head_chips(data: RunData, links: _Links, e: Example, highlight: Optional[Tuple[int, int]] = None) -> str:
    if e.prompt_id is None:
        return ""
    att = data.attribution_index(e.split).get(e.prompt_id)
    if att is None:
        return ""
    thr, heads = att
    act = sorted(((s, hl, h) for (hl, h), (s, a) in heads.items() if a), reverse=True)
    if not act:
        return f'<div class="heads">no head active (threshold {esc(fmt(thr))})</div>'
    chips = []
    for s, hl, h in act:
        href = links.head(e.layer, e.neuron, hl, h)
        sel = " sel" if (hl, h) == highlight or href else ""
        chips.append(_a(href, f"{head_label(hl, h)} <b>{esc(fmt(s, 2))}</b>", "chip" + sel,
                        title=f"attribution {s:.4f} (threshold {thr:.4f})"))
    return f'<div class="heads">active heads: {"".join(chips)}</div>'


def _example(data: RunData, links: _Links, e: Example, scale: float, main_n: Optional[int] = None,
             extra_meta: str = "", heads: bool = True, highlight=None, cls: str = "") -> str:
    meta = [f"<b>#{e.rank}</b>" if e.rank >= 0 else "", f"doc {e.doc_id}"]
    if e.subset:
        meta.append(f'<span class="chip">{esc(e.subset)}</span>')
    meta.append(f"max <b>{esc(fmt(e.activation))}</b> at token {e.position}")
    if e.prompt_id is not None:
        frac = e.prompt_activation / e.activation if e.activation else float("nan")
        meta.append(f"prompt: {e.n_tokens} tokens \u2192 <b>{esc(fmt(e.prompt_activation))}</b> ({_pct(frac)})")
    else:
        meta.append('<span class="muted">dropped by truncation (no short prompt keeps enough of the activation)</span>')
    if main_n is not None and e.rank >= main_n and e.split == "train":
        meta.append(f'<span class="muted">beyond the main {main_n} prompts (Table 3 only)</span>')
    if e.context == "prompt":
        meta.append('<span class="muted">activations of the truncated prompt alone</span>')
    if extra_meta:
        meta.append(extra_meta)
    dim = (" dim" if e.prompt_id is None else "") + (f" {cls}" if cls else "")
    anchor = f' id="{e.split}-{e.rank}-{e.doc_id}"'
    body = _render_tokens(e, scale)
    return (f'<div class="ex{dim}"{anchor}><div class="meta">{"".join(f"<span>{m}</span>" for m in meta if m)}</div>'
            f'{body}{_head_chips(data, links, e, highlight) if heads else ""}</div>')


def _notes(data: RunData, split_used: Sequence[str] = ("train",)) -> str:
    out = []
    if data.model is None:
        out.append(f"Tokens are not coloured: {esc(data.model_problem)}. Prompts are shown as plain text.")
    else:
        if data.context == "prompt" and split_used:
            out.append("Activations of the truncated prompts alone (the report was made with context='prompt'), "
                       "with no tokens after the maximum.")
        for s in split_used if data.context == "document" else ():
            if s in data.corpus_problem:
                out.append(f"{'Test c' if s == 'test' else 'C'}ontext unavailable: {esc(data.corpus_problem[s])}; "
                           f"activations are those of the truncated prompts alone, with no tokens after the maximum.")
        if data.mismatches:
            out.append(f"{data.mismatches} recomputed maxima differ from the run's by more than 0.1%: the model or "
                       f"corpus may have changed since the run.")
    return "".join(f'<div class="note">{m}</div>' for m in out)


def _pair_rows(data: RunData, links: _Links, pairs: pd.DataFrame) -> str:
    rows = []
    for p in pairs.itertuples(index=False):
        href = links.head(p.layer, p.neuron, p.head_layer, p.head)
        expl = _str(p.explanation) or ""
        rows.append([_a(href, esc(head_label(p.head_layer, p.head))), esc(_pct(p.active_fraction)), esc(fmt(p.E)),
                     esc(fmt(p.TPR)), esc(fmt(p.TNR)), esc(fmt(p.mean_decrease_active)),
                     esc(fmt(p.mean_decrease_inactive)),
                     esc(expl if len(expl) <= 150 else expl[:147] + "\u2026")])
    return _table(["head", "active on", "E", "TPR", "TNR", "\u0394p active", "\u0394p inactive", "explanation"], rows,
                  [False, True, True, True, True, True, True, False])


def _attribution_grid(data: RunData, links: _Links, layer: int, neuron: int, exs: List[Example]) -> str:
    """Per eligible head: on how many of the neuron's main prompts it is active (cell colour),
    and its mean attribution (tooltip)."""
    idx = data.attribution_index("train")
    pids = [e.prompt_id for e in exs if e.prompt_id is not None and e.rank < data.main_n]
    if not pids:
        return ""
    stats: Dict[Tuple[int, int], list] = {}
    for pid in pids:
        if pid not in idx:
            continue
        for k, (s, a) in idx[pid][1].items():
            stats.setdefault(k, []).append((s, a))
    if not stats:
        return ""
    pair_keys = data.pair_keys()
    n_layers = max(k[0] for k in stats) + 1
    n_heads = max(k[1] for k in stats) + 1
    head = "<tr><th></th>" + "".join(f"<th>H{h}</th>" for h in range(n_heads)) + "</tr>"
    body = []
    for hl in range(n_layers):
        cells = []
        for h in range(n_heads):
            v = stats.get((hl, h))
            if not v:
                cells.append("<td></td>")
                continue
            frac = sum(a for _, a in v) / len(v)
            mean = sum(s for s, _ in v) / len(v)
            href = links.head(layer, neuron, hl, h)
            sel = (layer, neuron, hl, h) in pair_keys
            txt = _a(href, esc(_pct(frac))) if href else esc(_pct(frac))
            cells.append(f'<td class="{"sel" if sel else ""}" style="background:rgba(130,80,223,{0.08 + 0.8 * frac:.3f})"'
                         f' title="{esc(head_label(hl, h))}: active on {sum(a for _, a in v)} of {len(v)} prompts, '
                         f'mean attribution {mean:.3f}">{txt}</td>')
        body.append(f"<tr><th>L{hl}</th>{''.join(cells)}</tr>")
    return (f'<table class="grid"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
            f'<p class="sub">How often each head is active on the neuron\'s {len(pids)} main prompts (hover for the '
            f'mean attribution). Outlined: heads selected for an explanation (active on {_pct(data.protocol.get("low", .25))}'
            f'\u2013{_pct(data.protocol.get("high", .75))} of the prompts).</p>')


def _evidence_row(data: RunData, layer: int, neuron: int) -> Optional[dict]:
    """The run's an-neuron check of one neuron (the evidence table's row), or None."""
    if "evidence_rows" not in data._cache:
        ev = data.table("evidence")
        rows = {}
        if len(ev.columns) and len(ev):
            for r in ev.drop_duplicates(["layer", "neuron"]).to_dict(orient="records"):
                rows[int(r["layer"]), int(r["neuron"])] = r
        data._cache["evidence_rows"] = rows
    return data._cache["evidence_rows"].get((int(layer), int(neuron)))


def _binning_words(data: RunData) -> str:
    """How the run's evidence stage binned activations, in words (from the stage's record; a run
    made before the record existed used the defaults)."""
    ev = data.stage_attrs("evidence", "evidence")
    bins, binning, least = ev.get("bins", 10), ev.get("binning", "width"), ev.get("min_positions", 100)
    if binning == "quantile":
        return f"{bins} equal-count bins"
    return f"{bins} equal-width bins, the sparse top ones merged to at least {least} positions"


def _evidence_html(data: RunData, layer: int, neuron: int, token: Optional[str]) -> str:
    """The an-neuron post's plot for one neuron: per activation bin, the fraction of test positions
    where the neuron's token is the model's top prediction (an inline SVG; no script)."""
    r = _evidence_row(data, layer, neuron)
    out = ['<h2 id="evidence">Activation vs top prediction</h2>']
    if r is None:
        if not data.has("evidence"):
            out.append('<p class="muted">This run has no an-neuron check (the <span class="mono">evidence</span> '
                       'stage; rerun <span class="mono">ctxlookup replicate</span> with the same options to add it).</p>')
        else:
            out.append('<p class="muted">The run\'s an-neuron check did not cover this neuron.</p>')
        return "\n".join(out)
    frac = [float(x) for x in r["bin_fractions"]]
    counts = [int(x) for x in r["bin_counts"]]
    edges = [float(x) for x in r["bin_edges"]]
    top = max(max(frac), 1e-9)
    W, H, pad_l, pad_b, pad_t = 560, 190, 44, 34, 18
    bw = (W - pad_l - 8) / len(frac)
    parts = [f'<svg class="evid" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
             f'aria-label="fraction of positions where the token is the top prediction, by activation bin">',
             f'<line x1="{pad_l}" y1="{H - pad_b}" x2="{W - 4}" y2="{H - pad_b}" stroke="#888"/>',
             f'<text x="{pad_l - 6}" y="{pad_t + 4}" text-anchor="end" font-size="11" fill="#666">{esc(_pct(top))}</text>',
             f'<text x="{pad_l - 6}" y="{H - pad_b}" text-anchor="end" font-size="11" fill="#666">0%</text>']
    for b, (f, c) in enumerate(zip(frac, counts)):
        h = (H - pad_b - pad_t) * f / top
        x = pad_l + b * bw + 2
        parts.append(f'<rect x="{x:.1f}" y="{H - pad_b - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" '
                     f'fill="rgba(255,122,0,.85)"><title>activation {edges[b]:.3g} to {edges[b + 1]:.3g}: '
                     f'{100 * f:.1f}% of {c:,} positions</title></rect>')
        parts.append(f'<text x="{x + (bw - 4) / 2:.1f}" y="{H - pad_b - h - 4:.1f}" text-anchor="middle" font-size="10" '
                     f'fill="#333">{100 * f:.1f}%</text>')
        parts.append(f'<text x="{x:.1f}" y="{H - pad_b + 13}" font-size="10" fill="#666">{edges[b]:.2g}</text>')
    parts.append(f'<text x="{W - 4}" y="{H - 4}" text-anchor="end" font-size="10" fill="#666">activation '
                 f'(to {edges[-1]:.3g})</text></svg>')
    out.append("".join(parts))
    verdict = ("rises with the activation" if r["rising"] else "does not rise steadily with the activation")
    out.append(f'<p class="sub">On {int(r["n_positions"]):,} positions of the test corpus, the fraction where '
               f'{esc(_quoted(token))} is the model\'s top prediction, by the neuron\'s activation ({esc(_binning_words(data))}; '
               f'the an-neuron post\'s plot): it '
               f'<b>{verdict}</b> (Spearman {esc(fmt(r["bin_spearman"], 2))} over the bins; AUC '
               f'{esc(fmt(r["auc"], 3))}: how often a position where it is top has the higher activation).</p>')
    return "\n".join(out)


def neuron_html(data: RunData, layer: int, neuron: int, links: _Links) -> str:
    """The body of a neuron's page (also its notebook view)."""
    layer, neuron = int(layer), int(neuron)
    info = data.neuron_info(layer, neuron)
    exs = data.examples(layer, neuron, "train")
    test = data.examples(layer, neuron, "test")
    scale = data.scale(layer, neuron)
    pairs = data.pairs[(data.pairs.layer == layer) & (data.pairs.neuron == neuron)]
    token = _str(info.get("token"))
    out = []
    if links.site:
        out.append(_crumbs(_a(links.index(), "Run"), _a(links.index("#neurons"), "Neurons"), esc(neuron_label(layer, neuron))))
    out.append(f'<h1>Neuron {esc(neuron_label(layer, neuron))} '
               f'<span class="chip tokc">{esc(_quoted(token))}</span>{_group_badge(info.get("group"))}</h1>')
    kept = sum(e.prompt_id is not None for e in exs)
    best = pairs.E.astype(float).max() if len(pairs) else float("nan")
    out.append('<div class="cards">' + "".join([
        _card("next token", f'<span class="mono">{esc(_quoted(token))}</span>'),
        _card("congruence", esc(fmt(info.get("congruence"))),
              f"rank {esc(fmt(info.get('rank')))} in layer" if _isnum(info.get("rank")) else ""),
        _card("max activation", esc(fmt(max((e.activation for e in exs), default=None)))),
        _card("prompts", f"{kept}/{len(exs)}", "kept by truncation"),
        _card("selected heads", str(len(pairs))),
        _card("best E", esc(fmt(best))),
    ]) + "</div>")
    out.append(_notes(data, ("train", "test")))
    # congruence
    tt = data.top_tokens(layer, neuron)
    out.append("<h2>Top congruence tokens</h2>")
    if tt is None:
        out.append(f'<p class="muted">Needs the model ({esc(data.model_problem)}); the run\'s token: '
                   f'<span class="chip tokc">{esc(_quoted(token))}</span> {esc(fmt(info.get("congruence")))}</p>')
    else:
        d = "W_out \u00b7 W_U" if tt["direction"] == "unembed" else "W_out \u00b7 W_E"
        out.append('<p>' + "".join(f'<span class="chip tokc pos" title="token {t}">{esc(_quoted(s))} '
                                  f'<b>{esc(fmt(c, 2))}</b></span>' for t, s, c in tt["top"]) + "</p>")
        out.append('<p><span class="sub">most negative: </span>' + "".join(
            f'<span class="chip tokc neg" title="token {t}">{esc(_quoted(s))} <b>{esc(fmt(c, 2))}</b></span>'
            for t, s, c in tt["bottom"]) + "</p>")
        out.append(f'<p class="sub">Congruence {d} of the neuron\'s output weights with every token; the '
                   f'{tt["n_excluded"]} tokens the run excluded (glitch, unreachable) are left out.</p>')
    out.append(_evidence_html(data, layer, neuron, token))
    # heads
    out.append('<h2 id="heads">Attention heads</h2>')
    if len(pairs):
        out.append(f'<p class="sub">Heads selected for this neuron, with their explanation scores on the test '
                   f'prompts and the ablation effect (mean decrease of p({esc(_quoted(token))}) on active vs inactive '
                   f'prompts).</p>')
        out.append(_pair_rows(data, links, pairs))
    else:
        out.append('<p class="muted">No head is active on 25\u201375% of this neuron\'s prompts, so none was '
                   'explained.</p>')
    out.append(_attribution_grid(data, links, layer, neuron, exs))
    # examples
    out.append(f'<h2 id="examples">Max-activating examples <span class="sub">({len(exs)})</span></h2>')
    if data.model is not None:
        out.append(_legend(scale))
    if not exs:
        out.append('<p class="muted">No max-activating examples in this run.</p>')
    out.extend(_example(data, links, e, scale, data.main_n) for e in exs)
    if test:
        out.append(f'<details><summary>Test examples ({len(test)}), the held-out prompts the explanations are scored '
                   f'on</summary>')
        out.extend(_example(data, links, e, scale) for e in test)
        out.append("</details>")
    return "\n".join(out)


def head_html(data: RunData, layer: int, neuron: int, head_layer: int, head: int, links: _Links,
              n_prompts: Optional[int] = None) -> str:
    """The body of a neuron-head pair's page (also its notebook view)."""
    layer, neuron, head_layer, head = int(layer), int(neuron), int(head_layer), int(head)
    data.prepare([(layer, neuron)])
    info = data.neuron_info(layer, neuron)
    token = _str(info.get("token"))
    pr = data.pairs
    prow = pr[(pr.layer == layer) & (pr.neuron == neuron) & (pr.head_layer == head_layer) & (pr["head"] == head)]
    p = prow.iloc[0] if len(prow) else None
    sc = data.score_rows(layer, neuron, head_layer, head)
    n = int(n_prompts if n_prompts is not None else (p.n_main if p is not None else data.main_n))
    row = None
    if len(sc):
        m = sc[sc.n_prompts_per_neuron == n] if "n_prompts_per_neuron" in sc.columns else sc
        row = m.iloc[0] if len(m) else None
    hl = head_label(head_layer, head)
    nl = neuron_label(layer, neuron)
    out = []
    if links.site:
        out.append(_crumbs(_a(links.index(), "Run"), _a(links.index("#heads"), "Heads"), _a(links.neuron(layer, neuron), esc(nl)),
                           esc(hl)))
    out.append(f'<h1>Head {esc(hl)} \u2192 neuron {_a(links.neuron(layer, neuron), esc(nl))} '
               f'<span class="chip tokc">{esc(_quoted(token))}</span>{_group_badge(info.get("group"))}</h1>')

    def g(k):
        return None if row is None or k not in row.index else row[k]

    out.append('<div class="cards">' + "".join([
        _card("E", esc(fmt(g("E"))), "(TPR + TNR) / 2" + (" \u00b7 one class" if bool(g("one_class") or False) else "")),
        _card("TPR", esc(fmt(g("TPR"))), f"{esc(fmt(g('TP')))} of {esc(fmt(_sum(g('TP'), g('FN'))))} active"),
        _card("TNR", esc(fmt(g("TNR"))), f"{esc(fmt(g('TN')))} of {esc(fmt(_sum(g('TN'), g('FP'))))} inactive"),
        _card("active on", esc(_pct(p.active_fraction if p is not None else None)), f"of {n} prompts"),
        _card("\u0394p active", esc(fmt(p.mean_decrease_active if p is not None else None)), "ablation, mean"),
        _card("\u0394p inactive", esc(fmt(p.mean_decrease_inactive if p is not None else None)), "ablation, mean"),
    ]) + "</div>")
    out.append(_notes(data, ("train", "test")))
    # the explanation
    llm = data.manifest.get("llm", {})
    who = llm.get("model") or llm.get("explainer") or data.options.get("explainer", "")
    out.append(f'<h2>Explanation <span class="sub">({esc(who)}, from {n} prompts)</span></h2>')
    expl = _str(g("explanation"))
    if expl:
        out.append(f'<div class="expl">{esc(expl)}</div>')
    else:
        err = _str(g("error"))
        out.append(f'<p class="muted">No explanation{": " + esc(err) if err else " (not explained at this prompt count)"}.</p>')
    if row is not None and _isnum(g("n_test")):
        out.append(_table(["", "predicted active", "predicted inactive"], [
            ["<b>actually active</b>", f'<span class="ok">{esc(fmt(g("TP")))}</span> TP',
             f'<span class="bad">{esc(fmt(g("FN")))}</span> FN'],
            ["<b>actually inactive</b>", f'<span class="bad">{esc(fmt(g("FP")))}</span> FP',
             f'<span class="ok">{esc(fmt(g("TN")))}</span> TN']], cls="data"))
        extra = []
        if _isnum(g("n_unparsed")) and int(g("n_unparsed")):
            extra.append(f"{int(g('n_unparsed'))} answers were not Yes/No and are not counted")
        if _isnum(g("PPV")) or _isnum(g("NPV")):
            extra.append(f"PPV {esc(fmt(g('PPV')))}, NPV {esc(fmt(g('NPV')))}, their mean {esc(fmt(g('E_ppv_npv')))}")
        if extra:
            out.append(f'<p class="sub">{"; ".join(extra)}.</p>')
    # the prompts it was made from
    exs = [e for e in data.examples(layer, neuron, "train") if e.prompt_id is not None and e.rank < n]
    scale = data.scale(layer, neuron)
    idx = data.attribution_index("train")
    abl_map = {int(r.prompt_id): r for r in data.rows_of("ablation", layer, neuron, head_layer, head)
               .itertuples(index=False)}

    def head_meta(e: Example) -> str:
        att = idx.get(e.prompt_id) if e.split == "train" else data.attribution_index("test").get(e.prompt_id)
        bits = []
        if att is not None and (head_layer, head) in att[1]:
            s, _ = att[1][(head_layer, head)]
            bits.append(f"{esc(hl)} attribution <b>{esc(fmt(s))}</b> (threshold {esc(fmt(att[0]))})")
        r = abl_map.get(e.prompt_id) if e.split == "train" else None
        if r is not None:
            bits.append(f"ablating it: p {esc(fmt(r.p_clean))} \u2192 {esc(fmt(r.p_ablated))}")
        return " \u00b7 ".join(bits)

    def active(e: Example, split: str = "train") -> Optional[bool]:
        att = data.attribution_index(split).get(e.prompt_id)
        if att is None or (head_layer, head) not in att[1]:
            return None
        return att[1][(head_layer, head)][1]

    act = [e for e in exs if active(e)]
    ina = [e for e in exs if active(e) is False]
    out.append(f'<h2 id="made-from">Made from {len(act)} active and {len(ina)} inactive prompts</h2>')
    if data.model is not None:
        out.append(_legend(scale))
    out.append(f'<h3>Active: {esc(hl)} fires on these</h3>')
    out.extend(_example(data, links, e, scale, extra_meta=head_meta(e), highlight=(head_layer, head)) for e in act)
    if not act:
        out.append('<p class="muted">none</p>')
    out.append("<h3>Inactive</h3>")
    out.extend(_example(data, links, e, scale, extra_meta=head_meta(e), highlight=(head_layer, head)) for e in ina)
    if not ina:
        out.append('<p class="muted">none</p>')
    # test prompts: predicted vs actual
    preds = data.table("predictions")
    pm = {}
    if len(preds.columns):
        q = data.rows_of("predictions", layer, neuron, head_layer, head)
        if "n_prompts_per_neuron" in q.columns:
            q = q[q.n_prompts_per_neuron == n]
        pm = {int(r.prompt_id): r for r in q.itertuples(index=False)}
    test = [e for e in data.examples(layer, neuron, "test") if e.prompt_id is not None]
    out.append(f'<h2 id="test">Test prompts: predicted vs actual <span class="sub">({len(test)})</span></h2>')
    if not len(preds.columns):
        out.append('<p class="note">This run has no per-prompt predictions (made before the score stage wrote '
                   '<code>predictions</code>); rerun <code>ctxlookup replicate score</code> to add them (cached LLM '
                   'answers are reused).</p>')
    for e in test:
        truth = active(e, "test")
        r = pm.get(e.prompt_id)
        pred = None if r is None else r.predicted
        pred = None if pred is None or pred is pd.NA else bool(pred)
        right = ""
        if r is None:
            verdict = '<span class="muted">not classified</span>'
        elif pred is None:
            ans = _str(r.answer) or _str(r.error) or ""
            verdict = f'<span class="badge unk">unparsed</span> <span class="mono">{esc(ans[:40])}</span>'
        else:
            ok = pred == truth
            right = "right" if ok else "wrong"
            mark = "\u2713" if ok else "\u2717"
            verdict = (f'<span class="{"ok" if ok else "bad"}">{mark}</span> predicted '
                       f'<span class="badge {"yes" if pred else "no"}">{"active" if pred else "inactive"}</span>')
        actual = ("" if truth is None else
                  f'actual <span class="badge {"yes" if truth else "no"}">{"active" if truth else "inactive"}</span>')
        out.append(_example(data, links, e, scale, extra_meta=f"{verdict} {actual} \u00b7 " + head_meta(e),
                            highlight=(head_layer, head), cls=right))
    if not test:
        out.append('<p class="muted">No test prompts for this neuron.</p>')
    # other prompt counts
    if len(sc) > 1 and "n_prompts_per_neuron" in sc.columns:
        out.append("<h2>Other prompt counts (Table 3)</h2>")
        rows = [[esc(fmt(r.n_prompts_per_neuron)), esc(fmt(getattr(r, "E", None))), esc(fmt(getattr(r, "TPR", None))),
                 esc(fmt(getattr(r, "TNR", None))), esc(_str(r.explanation) or "\u2013")] for r in sc.itertuples(index=False)]
        out.append(_table(["prompts", "E", "TPR", "TNR", "explanation"], rows, [True, True, True, True, False]))
    prompt = _str(g("prompt"))
    if prompt:
        out.append(f'<details><summary>The prompt sent to the explainer</summary><pre class="prompt">{esc(prompt)}</pre>'
                   f'</details>')
    # siblings
    sib = pr[(pr.layer == layer) & (pr.neuron == neuron)]
    if len(sib) > 1 and links.site:
        out.append('<p class="sub">Other heads of this neuron: ' + " ".join(
            _a(links.head(layer, neuron, s.head_layer, s.head), esc(head_label(s.head_layer, s.head)), "chip sel")
            for s in sib.itertuples(index=False) if (s.head_layer, s.head) != (head_layer, head)) + "</p>")
    return "\n".join(out)


def _sum(a, b):
    return a + b if _isnum(a) and _isnum(b) else None


# =============================================================================== the index
def _figure(data: RunData, links: _Links, name: str, caption: str) -> str:
    png = os.path.join(data.dir, f"{name}.png")
    if not os.path.exists(png):
        return f'<figure><p class="muted">{esc(name)} is not in this run (the stats stage has not run).</p></figure>'
    if links.site:
        src = links.asset(f"{name}.png")
        svg = os.path.exists(os.path.join(data.dir, f"{name}.svg"))
        more = f' \u00b7 <a href="{esc(links.asset(name + ".svg"))}">SVG</a>' if svg else ""
    else:
        with open(png, "rb") as f:
            src = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        more = ""
    return (f'<figure><img src="{esc(src)}" alt="{esc(caption)}"><figcaption>{esc(caption)}{more}</figcaption>'
            f'</figure>')


def _evidence_cards(data: RunData) -> List[str]:
    """The summary's card for the evidence stage (none when the run has not run it)."""
    ev = data.stage_attrs("evidence", "evidence")
    by = ev.get("by_group") or {}
    if not by:
        return []
    nt, rnd, vs = by.get("next_token", {}), by.get("random", {}), ev.get("vs_random")
    v = f"{nt.get('rising', 0)}/{nt.get('neurons', 0)}" if nt else "–"
    sub = ((f"random: {rnd.get('rising', 0)}/{rnd.get('neurons', 0)}; " if rnd else "") +
           (f"Fisher's exact test, one-sided p = {vs['p']:.2g}; " if vs else "") + f"{ev.get('docs', '?')} test documents")
    return [_card("an-neuron check", esc(v), esc(f"next-token neurons rising; {sub}"))]


def summary_html(data: RunData, links: _Links) -> str:
    """The run's summary: model, counts, statistics, figures, tables and options."""
    m = data.manifest
    o = data.options
    out = [f'<div class="crumbs">ctxlookup {esc(m.get("ctxlookup_version", ""))} \u00b7 run report</div>',
           f'<h1>Context look-ups in {esc(data.model_name)}</h1>',
           f'<p class="sub">Run directory <code>{esc(data.dir)}</code> \u00b7 created {esc(m.get("created", "?"))}</p>']
    neurons = data.neurons
    pairs = data.pairs
    sc = data.table("scores")
    main = sc[sc.n_prompts_per_neuron == data.main_n] if len(sc.columns) and "n_prompts_per_neuron" in sc.columns else sc
    n_nt = int(neurons.group.astype(str).str.contains("next_token").sum()) if len(neurons) else 0
    n_rnd = int(neurons.group.astype(str).str.contains("random").sum()) if len(neurons) else 0

    def mean_e(group):
        if not len(main.columns) or "group" not in main.columns:
            return None
        v = main[main.group == group].E.astype(float)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else None

    cfg = m.get("model", {}).get("config", {})
    llm = m.get("llm", {})
    who = llm.get("model") or llm.get("explainer") or o.get("explainer", "")
    prompts = data.table("prompts")
    out.append('<div class="cards">' + "".join([
        _card("model", esc(data.model_name), esc(f"{cfg.get('arch', '')} {cfg.get('n_layers', '?')} layers, "
                                                 f"{cfg.get('n_heads', '?')} heads, d_mlp {cfg.get('d_mlp', '?')}")),
        _card("neurons", f"{n_nt} + {n_rnd}", "next-token + random"),
        _card("prompts", esc(fmt(len(prompts))), f"{data.main_n} per neuron (main)"),
        _card("selected pairs", esc(fmt(len(pairs))), "neuron-head, any prompt count"),
        _card("explainer", esc(who)),
        _card("mean E", esc(fmt(mean_e("next_token"))), f"random: {esc(fmt(mean_e('random')))}"),
    ] + _evidence_cards(data)) + "</div>")
    out.append(_notes(data, ()) if data.model is None else "")
    out.append('<h2 id="statistics">Explanation scores</h2>')
    out.append(_df_table(data.table("statistics")))
    out.append('<p class="sub">E = (TPR + TNR) / 2 of each head\'s explanation on held-out test prompts; heads whose '
               'test prompts are all of one class are left out. Skewness test: alternative "greater"; KS: next-token '
               'vs random neurons.</p>')
    out.append('<div class="figs">' + _figure(data, links, "figure5", "Figure 5: explanation scores E, next-token vs "
                                                                       "random neurons")
               + _figure(data, links, "figure6", "Figure 6: ablation, mean decrease of the token's probability on "
                                                 "active vs inactive prompts") + "</div>")
    ks = data.stage_attrs("ablation", "ablation_by_head").get("ks")
    if ks:
        out.append(f'<p class="sub">Ablation KS test, active vs inactive means: D = {esc(fmt(ks.get("D")))}, '
                   f'p = {esc(fmt(ks.get("p")))} ({esc(fmt(ks.get("n_active")))} and {esc(fmt(ks.get("n_inactive")))} '
                   f'heads).</p>')
    return "\n".join(out)


def _tables_html(data: RunData, links: _Links) -> str:
    out = ['<h2 id="table3">Table 3: scores by prompts per neuron</h2>', _df_table(data.table("table3"))]
    t4 = data.table("table4")
    out.append('<h2 id="table4">Table 4: corpus subsets of each head\'s active prompts</h2>')
    hist = data.stage_attrs("stats", "table4").get("histogram")
    if hist:
        out.append(_table(["subsets", "pairs"], [[esc(k), esc(v)] for k, v in sorted(hist.items(), key=lambda x: int(x[0]))],
                          [True, True]))
    if len(t4.columns):
        rows = []
        for r in t4.itertuples(index=False):
            rows.append([_a(links.head(r.layer, r.neuron, r.head_layer, r.head),
                            esc(f"{head_label(r.head_layer, r.head)} \u2192 {neuron_label(r.layer, r.neuron)}")),
                         esc(fmt(r.n_prompts)), esc(fmt(r.n_subsets)), esc(_str(r.subsets) or "")])
        out.append('<details><summary>Per pair</summary>' +
                   _table(["pair", "active prompts", "subsets", "which"], rows, [False, True, True, False]) + "</details>")
    else:
        out.append('<p class="muted">(not in this run)</p>')
    return "\n".join(out)


def _details_html(data: RunData) -> str:
    m, o = data.manifest, data.options
    out = ['<h2 id="details">Run details</h2>', '<div class="cols"><div>', "<h3>Options</h3>",
           _table(["option", "value"], [[esc(k), f'<code>{esc(json.dumps(v))}</code>'] for k, v in o.items()], cls="data kv"),
           "</div><div>", "<h3>Model</h3>"]
    mm = m.get("model", {})
    rows = [["name", esc(mm.get("name", o.get("model")))], ["path", f"<code>{esc(mm.get('path'))}</code>"]]
    rows += [[esc(k), esc(v)] for k, v in (mm.get("config") or {}).items() if not isinstance(v, (dict, list))]
    out.append(_table(["", ""], rows, cls="data kv"))
    out.append("<h3>Stages</h3>")
    st = m.get("stages", {})
    out.append(_table(["stage", "wall time (s)", "finished"], [[esc(k), esc(fmt(v.get("wall_s"))), esc(v.get("finished", ""))]
                                                              for k, v in st.items()], [False, True, False]))
    llm = m.get("llm", {})
    if llm:
        out.append("<h3>Explainer</h3>")
        out.append(_table(["", ""], [[esc(k), esc(json.dumps(v) if isinstance(v, (dict, list)) else v)]
                                     for k, v in llm.items()], cls="data kv"))
    usage = m.get("llm_usage")
    if usage:
        rows = []
        for k, v in usage.items():
            rows.append([esc(k), esc(json.dumps(v) if isinstance(v, dict) else v)])
        out.append(_table(["stage", "usage"], rows, cls="data kv"))
    out.append(_table(["", ""], [[esc(k), esc(m.get(k))] for k in ("python", "numpy", "pandas", "platform") if k in m],
                      cls="data kv"))
    if m.get("seeds"):
        out.append(_table(["seed", "value"], [[esc(k), esc(v)] for k, v in m["seeds"].items()], cls="data kv"))
    out.append("</div></div>")
    for k, v in (m.get("templates") or {}).items():
        out.append(f'<details><summary>The {esc(k)} prompt template</summary><pre class="prompt">{esc(v)}</pre>'
                   f'</details>')
    return "\n".join(out)


def _explorer(name: str, title: str, count: int, plain_href: str) -> str:
    return (f'<h2 id="{name}">{esc(title)} <span class="sub">({count})</span></h2>'
            f'<div class="explorer" data-explorer="{name}"><div class="bar">'
            f'<input type="search" placeholder="search: L1N40, a token, words\u2026" '
            f'aria-label="search {esc(title)}">'
            f'<button type="button" class="prev">\u2039 prev</button><button type="button" class="next">next \u203a</button>'
            f'<select aria-label="rows per page"><option>25</option><option selected>50</option><option>100</option>'
            f'<option>500</option></select><span class="info">loading\u2026</span></div>'
            f'<div class="wrap"><table class="data"><thead></thead><tbody></tbody></table></div>'
            f'<p class="sub">Also as <a href="{esc(plain_href)}">plain pages</a> (no JavaScript).</p></div>')


def _neuron_records(data: RunData, links: _Links):
    neurons = data.neurons
    pairs = data.pairs
    counts = pairs.groupby(["layer", "neuron"]).size().to_dict() if len(pairs) else {}
    best = pairs.assign(E=pairs.E.astype(float)).groupby(["layer", "neuron"]).E.max().to_dict() if len(pairs) else {}
    ma = data.table("max_acts")
    maxact = ma.groupby(["layer", "neuron"]).activation.max().to_dict() if len(ma.columns) else {}
    pr = data.table("prompts")
    npr = pr.groupby(["layer", "neuron"]).size().to_dict() if len(pr.columns) else {}
    cols = [dict(label="neuron"), dict(label="group"), dict(label="token", kind="token"), dict(label="congruence", num=True, kind="float"),
            dict(label="max act", num=True, kind="float"), dict(label="prompts", num=True),
            dict(label="heads", num=True), dict(label="best E", num=True, kind="float"),
            dict(label="rising"), dict(label="AUC", num=True, kind="float")]
    rows = []
    for r in neurons.itertuples(index=False):
        k = (int(r.layer), int(r.neuron))
        ev = _evidence_row(data, *k)
        rows.append([dict(t=neuron_label(*k), h=links.neuron(*k)), _str(r.group), _quoted(_str(r.token)),
                     _jnum(r.congruence), _jnum(maxact.get(k)), int(npr.get(k, 0)), int(counts.get(k, 0)),
                     _jnum(best.get(k)), None if ev is None else ("yes" if ev["rising"] else "no"),
                     None if ev is None else _jnum(ev["auc"])])
    return dict(columns=cols, rows=rows)


def _pair_records(data: RunData, links: _Links):
    cols = [dict(label="head"), dict(label="neuron"), dict(label="token", kind="token"), dict(label="group"),
            dict(label="active on", num=True, kind="pct"), dict(label="E", num=True, kind="float"),
            dict(label="TPR", num=True, kind="float"), dict(label="TNR", num=True, kind="float"),
            dict(label="\u0394p active", num=True, kind="float"), dict(label="\u0394p inactive", num=True, kind="float"),
            dict(label="explanation")]
    rows = []
    for p in data.pairs.itertuples(index=False):
        e = _str(p.explanation) or ""
        rows.append([dict(t=head_label(p.head_layer, p.head), h=links.head(p.layer, p.neuron, p.head_layer, p.head)),
                     dict(t=neuron_label(p.layer, p.neuron), h=links.neuron(p.layer, p.neuron)), _quoted(_str(p.token)),
                     _str(p.group), _jnum(p.active_fraction), _jnum(p.E), _jnum(p.TPR), _jnum(p.TNR),
                     _jnum(p.mean_decrease_active), _jnum(p.mean_decrease_inactive),
                     e if len(e) <= 200 else e[:197] + "\u2026"])
    return dict(columns=cols, rows=rows)


def _jnum(x):
    return float(x) if _isnum(x) else None


def _plain_lists(name: str, title: str, spec: dict, page_size: int) -> Dict[str, str]:
    """Paged static tables of an explorer's rows (for browsers without JavaScript)."""
    rows, cols = spec["rows"], spec["columns"]
    n_pages = max(1, math.ceil(len(rows) / page_size))
    out = {}
    for p in range(n_pages):
        chunk = rows[p * page_size:(p + 1) * page_size]
        cells = []
        for r in chunk:
            cells.append([(_a(("../" + v["h"]) if v.get("h") else None, esc(v["t"]))
                           if isinstance(v, dict) else esc(_pct(v) if c.get("kind") == "pct" else fmt(v)))
                          for v, c in zip(r, cols)])
        nav = []
        nav.append(_a(f"{name}-{p}.html" if p > 0 else None, "\u2039 previous"))
        nav.append(f"<span>page {p + 1} of {n_pages}</span>")
        nav.append(_a(f"{name}-{p + 2}.html" if p + 1 < n_pages else None, "next \u203a"))
        body = (_crumbs(_a("../index.html", "Run"), esc(title)) +
                f'<h1>{esc(title)} <span class="sub">({len(rows)})</span></h1>'
                f'<div class="nav">{"".join(nav)}</div>'
                + _table([c["label"] for c in cols], cells, [bool(c.get("num")) for c in cols])
                + f'<div class="nav">{"".join(nav)}</div>')
        out[f"lists/{name}-{p + 1}.html"] = _page(f"{title} {p + 1}/{n_pages}", body, depth=1)
    return out


def index_html(data: RunData, links: _Links, n_neurons: int, n_pairs: int) -> str:
    body = [summary_html(data, links)]
    body.append(_explorer("neurons", "Neurons", n_neurons, "lists/neurons-1.html"))
    body.append(_explorer("heads", "Neuron\u2013head pairs", n_pairs, "lists/heads-1.html"))
    body.append('<noscript><p class="note">JavaScript is off: browse the <a href="lists/neurons-1.html">neurons</a> and '
                'the <a href="lists/heads-1.html">neuron\u2013head pairs</a> as plain pages.</p></noscript>')
    body.append(_tables_html(data, links))
    body.append(_details_html(data))
    script = f'<script src="assets/index-data.js"></script><script>{_INDEX_JS}</script>'
    return _page(f"ctxlookup report: {data.model_name}", "\n".join(body), script=script)


# =============================================================================== writing a site
def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".incomplete"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _nav(links: _Links, prev, nxt, kind: str) -> str:
    def lk(k):
        if k is None:
            return "<span></span>"
        if kind == "neuron":
            return _a(links.neuron(*k), esc(neuron_label(*k)))
        return _a(links.head(*k), esc(f"{head_label(k[2], k[3])} \u2192 {neuron_label(k[0], k[1])}"))
    return (f'<div class="nav"><span>\u2039 {lk(prev)}</span>{_a(links.index(), "index")}'
            f'<span>{lk(nxt)} \u203a</span></div>')


def report(run, out: Optional[str] = None, model=None, corpus=None, test_corpus=None, page_size: int = 100,
           before: int = BEFORE, after: int = AFTER, context: str = "document", batch_tokens: int = 4096,
           progress: bool = False) -> str:
    """Write the run's HTML report; returns the path of its ``index.html``.

    ``run``: a run directory (or the ``Run`` that :func:`ctxlookup.replicate` returns). ``out``:
    where to write (default ``RUN_DIR/report``). ``model``, ``corpus``, ``test_corpus``: override
    the paths the manifest records (``model=False``: no model, no colours). ``page_size``: rows
    per page of the plain lists. ``before`` / ``after``: tokens shown around each maximum.
    ``context``: ``"document"`` (default) recomputes activations on each document up to the
    maximum, exactly as the scan saw them; ``"prompt"`` runs the truncated prompts alone (no
    corpus needed, much faster on long documents, no tokens after the maximum).
    """
    t0 = time.perf_counter()
    data = run if isinstance(run, RunData) else RunData(run, model=model, corpus=corpus, test_corpus=test_corpus,
                                                      batch_tokens=batch_tokens, before=before, after=after,
                                                      context=context)
    out = os.path.abspath(out or os.path.join(data.dir, "report"))
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, MARKER)):
        for sub in ("neurons", "heads", "lists"):     # a previous report's pages: start clean
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    elif os.listdir(out) and not os.path.exists(os.path.join(out, "index.html")):
        pass  # a folder of other files: write alongside them, delete nothing
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by ctxlookup.report; its neurons/, heads/ and lists/ folders are rewritten on each run\n")
    neurons = [tuple(x) for x in data.neurons[["layer", "neuron"]].astype(int).values.tolist()]
    pairs = [tuple(x) for x in data.pairs[["layer", "neuron", "head_layer", "head"]].astype(int).values.tolist()]
    data.prepare(neurons, progress=progress)
    data.prepare_congruence(neurons)
    # assets
    assets = os.path.join(out, "assets")
    os.makedirs(assets, exist_ok=True)
    for name in ("figure5", "figure6"):
        for ext in ("png", "svg"):
            src = os.path.join(data.dir, f"{name}.{ext}")
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(assets, f"{name}.{ext}"))
    root = _Links(data, site=True, depth=0)
    sub = _Links(data, site=True, depth=1)
    records = dict(neurons=_neuron_records(data, root), heads=_pair_records(data, root))
    _write(os.path.join(assets, "index-data.js"),
           "window.CTXL_INDEX = " + json.dumps(records, ensure_ascii=True, separators=(",", ":"), allow_nan=False) + ";\n")
    _write(os.path.join(out, "index.html"), index_html(data, root, len(neurons), len(pairs)))
    for path, text in _plain_lists("neurons", "Neurons", records["neurons"], page_size).items():
        _write(os.path.join(out, path), text)
    for path, text in _plain_lists("heads", "Neuron\u2013head pairs", records["heads"], page_size).items():
        _write(os.path.join(out, path), text)
    for i, (l, n) in enumerate(neurons):
        body = neuron_html(data, l, n, sub)
        body += _nav(sub, neurons[i - 1] if i else None, neurons[i + 1] if i + 1 < len(neurons) else None, "neuron")
        _write(os.path.join(out, neuron_page(l, n)), _page(f"{neuron_label(l, n)} \u00b7 ctxlookup", body, depth=1))
    for i, k in enumerate(pairs):
        body = head_html(data, *k, links=sub)
        body += _nav(sub, pairs[i - 1] if i else None, pairs[i + 1] if i + 1 < len(pairs) else None, "head")
        _write(os.path.join(out, head_page(*k)),
               _page(f"{head_label(k[2], k[3])} \u2192 {neuron_label(k[0], k[1])} \u00b7 ctxlookup", body, depth=1))
    if progress:
        print(f"report: {len(neurons)} neuron pages, {len(pairs)} head pages in {time.perf_counter() - t0:.1f} s: "
              f"{os.path.join(out, 'index.html')}", file=sys.stderr)
    return os.path.join(out, "index.html")


# =============================================================================== notebook views
_DATA_CACHE: Dict[str, RunData] = {}


def _data(run) -> RunData:
    """A RunData for ``run``, reused between views of the same run directory."""
    if isinstance(run, RunData):
        return run
    d = getattr(run, "dir", None) if not isinstance(run, (str, os.PathLike)) else None
    path = os.path.abspath(os.fspath(d if d is not None else run))
    got = _DATA_CACHE.get(path)
    mpath = os.path.join(path, "manifest.json")
    if got is None or (os.path.exists(mpath) and os.path.getmtime(mpath) != got._mtime):
        got = RunData(path)
        _DATA_CACHE[path] = got
    return got


_FRAGMENT_CSS = ".ctxl-root.frag{background:#fff;padding:6px 14px 10px;border-radius:10px}"


def _fragment(body: str) -> str:
    return f'<div class="ctxl-root frag"><style>{_scoped_css()}\n{_FRAGMENT_CSS}</style>{body}</div>'


class _View:
    def html(self) -> str:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str) -> str:
        """Write this view as a standalone HTML page."""
        _write(os.path.abspath(path), _page(self._title(), self._body()))
        return path

    def _title(self) -> str:
        return "ctxlookup"


class NeuronView(_View):
    """A neuron's page as a notebook view: ``NeuronView(run, layer, neuron)`` (``run``: a run
    directory, the ``Run`` from :func:`ctxlookup.replicate`, or a :class:`RunData`)."""

    def __init__(self, run, layer: int, neuron: int):
        self.data, self.layer, self.neuron = _data(run), int(layer), int(neuron)

    def _body(self) -> str:
        return neuron_html(self.data, self.layer, self.neuron, _Links(self.data, site=False))

    def html(self) -> str:
        return _fragment(self._body())

    def _title(self) -> str:
        return neuron_label(self.layer, self.neuron)

    def __repr__(self) -> str:
        return f"NeuronView({self.data.dir!r}, {self.layer}, {self.neuron})"


class HeadView(_View):
    """A neuron-head pair's page as a notebook view: ``HeadView(run, layer, neuron, head_layer,
    head, n_prompts=None)`` (``n_prompts``: which prompt count's explanation; default the main)."""

    def __init__(self, run, layer: int, neuron: int, head_layer: int, head: int, n_prompts: Optional[int] = None):
        self.data = _data(run)
        self.key = (int(layer), int(neuron), int(head_layer), int(head))
        self.n_prompts = None if n_prompts is None else int(n_prompts)

    def _body(self) -> str:
        return head_html(self.data, *self.key, links=_Links(self.data, site=False), n_prompts=self.n_prompts)

    def html(self) -> str:
        return _fragment(self._body())

    def _title(self) -> str:
        return f"{head_label(self.key[2], self.key[3])} -> {neuron_label(self.key[0], self.key[1])}"

    def __repr__(self) -> str:
        return f"HeadView({self.data.dir!r}, {', '.join(map(str, self.key))})"


class RunView(_View):
    """The run's summary (statistics, figures, tables) as a notebook view."""

    def __init__(self, run):
        self.data = _data(run)

    def _body(self) -> str:
        links = _Links(self.data, site=False)
        return summary_html(self.data, links) + _tables_html(self.data, links)

    def html(self) -> str:
        return _fragment(self._body())

    def __repr__(self) -> str:
        return f"RunView({self.data.dir!r})"


class _Views(_View):
    def __init__(self, views: list, more: int = 0):
        self.views, self.more = views, more

    def _tail(self) -> str:
        return f'<p class="sub">\u2026 and {self.more} more rows</p>' if self.more else ""

    def html(self) -> str:
        return "<hr>".join(v.html() for v in self.views) + (_fragment(self._tail()) if self.more else "")

    def _body(self) -> str:
        return "<hr>".join(v._body() for v in self.views) + self._tail()


def view(row, run, max_rows: int = 10):
    """The view of a DataFrame row (or a dict, or a namedtuple from ``itertuples``): a
    :class:`HeadView` when it names a head (``head_layer``, ``head``), else a :class:`NeuronView`
    (``layer``, ``neuron``). A whole DataFrame gives the views of its first ``max_rows`` rows."""
    if isinstance(row, pd.DataFrame):
        views = [view(r, run) for _, r in row.head(max_rows).iterrows()]
        return views[0] if len(views) == 1 else _Views(views, max(0, len(row) - max_rows))
    if isinstance(row, pd.Series):
        get = row.to_dict()
    elif hasattr(row, "_asdict"):
        get = row._asdict()
    elif isinstance(row, dict):
        get = row
    else:
        raise TypeError(f"view() takes a DataFrame row, a dict or a namedtuple, not {type(row).__name__}")
    if "layer" not in get or "neuron" not in get:
        raise ValueError("the row needs 'layer' and 'neuron' (and 'head_layer', 'head' for a head)")
    if _isnum(get.get("head_layer")) and _isnum(get.get("head")):
        n = get.get("n_prompts_per_neuron")
        return HeadView(run, get["layer"], get["neuron"], get["head_layer"], get["head"],
                        n_prompts=int(n) if _isnum(n) else None)
    return NeuronView(run, get["layer"], get["neuron"])


# =============================================================================== a callable module
class _CallableModule(types.ModuleType):
    """``ctxlookup.report(run_dir)`` calls :func:`report`; ``ctxlookup.report.NeuronView`` still works."""

    def __call__(self, *args, **kwargs):
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def _active_threshold(scores, active_rule: str) -> float:
    """The score a head had to exceed to count as active on a prompt under ``active_rule`` (for
    display; the attribution table's ``active`` column is the record): mean + 2 sample std, or,
    for ``top3``, just below the third largest score."""
    s = np.asarray(scores, dtype=np.float64)
    if active_rule == "top3":
        return float(np.nextafter(np.sort(s)[-3], -np.inf)) if s.size >= 3 else float("-inf")
    return float(s.mean() + 2 * s.std(ddof=1)) if s.size > 1 else float("inf")
