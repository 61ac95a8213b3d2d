"""A Neuroscope-style report of a replication run: static HTML pages, and the same views in Jupyter.

``ctxlookup.report(run_dir)`` (or ``ctxlookup report RUN_DIR``) writes a static site that opens
from ``file://`` with no server and no network:

- ``index.html``: the run's summary (model, options from the manifest, the statistics table,
  Figures 5 and 6, Tables 3 and 4, wall time per stage) and two searchable, sortable, paged
  explorers, of the neurons and of the neuron-head pairs, whose rows live in
  ``assets/index-data.js`` (plain paged lists under ``lists/`` serve browsers without JavaScript);
- ``neurons/L{l}N{n}.html``, a page per neuron: its top and bottom tokens by logit attribution,
  its activation histogram and examples per activation quantile (when the run's scan stored the
  ``histograms`` and ``quantile_examples`` tables), the heads active on its prompts, and its
  max-activating examples with every token coloured by the neuron's activation
  in a window around the maximum, the truncation point marked, and the heads active on each
  prompt;
- ``heads/L{l}N{n}_L{k}H{i}.html``, a page per neuron-head pair: the explanation, the active and
  inactive prompts it was made from, the test prompts with the classifier's prediction against
  the head's real activity, TPR, TNR, E, and the ablation effect.

Every page links ``static/report.css`` and ``static/report.js`` (copied once into the report);
a neuron's tokens and activations are written once, to ``assets/examples/L{l}N{n}.js``, which its
page and its heads' pages share and ``report.js`` draws. Pages are Jinja2 templates
(``templates/``), filled by :mod:`ctxlookup.report.render` from what
:class:`~ctxlookup.report.data.RunData` reads in the run directory: the report computes nothing
the pipeline stored (see :mod:`ctxlookup.report.data`).

In Jupyter, :class:`NeuronView`, :class:`HeadView` and :class:`RunView` render the same views
inline (``_repr_html_``, tokens drawn inline, no script), and :func:`view` turns a DataFrame row
into the right one. ``NeuronView(...).interactive()`` and ``HeadView(...).interactive()`` return
the live ipywidgets panel of :mod:`ctxlookup.interactive` (type a text, see the neuron on it).

This package is callable: ``ctxlookup.report(run_dir)`` is :func:`report`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import types
from typing import Dict, Optional

import pandas as pd

from .data import AFTER, BEFORE, Example, RunData, isnum
from .render import (STATIC, Links, esc, example_page, examples_js, vocab_js, fmt, fragment, head_html, head_label, head_page,
                     index_html, index_records, list_pages, nav_html, neuron_html, neuron_label, neuron_page, page, page_key,
                     summary_html, tables_html)

__all__ = ["report", "RunData", "Example", "NeuronView", "HeadView", "RunView", "view", "neuron_page", "head_page",
           "esc", "fmt", "BEFORE", "AFTER"]

MARKER = ".ctxlookup-report"


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".incomplete"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def report(run, out: Optional[str] = None, model=None, corpus=None, test_corpus=None, page_size: int = 100,
           before: int = BEFORE, after: int = AFTER, context: str = "document", batch_tokens: int = 4096,
           progress: bool = False) -> str:
    """Write the run's HTML report; returns the path of its ``index.html``.

    ``run``: a run directory (or the ``Run`` that :func:`ctxlookup.replicate` returns). ``out``:
    where to write (default ``RUN_DIR/report``). ``page_size``: rows per page of the plain lists.

    The examples' tokens and activations are those the truncate stages stored. The rest applies
    to a run made before they were stored, and to other windows than the stored ones: ``model``,
    ``corpus``, ``test_corpus`` override the paths the manifest records (``model=False``: no
    model, plain text); ``before`` / ``after``: tokens shown around each maximum; ``context``:
    ``"document"`` (default) computes activations on each document up to the maximum, exactly as
    the scan saw them; ``"prompt"`` runs the truncated prompts alone (no corpus needed, no tokens
    after the maximum).
    """
    t0 = time.perf_counter()
    data = run if isinstance(run, RunData) else RunData(run, model=model, corpus=corpus, test_corpus=test_corpus,
                                                      batch_tokens=batch_tokens, before=before, after=after,
                                                      context=context)
    out = os.path.abspath(out or os.path.join(data.dir, "report"))
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, MARKER)):
        for sub in ("neurons", "heads", "lists", os.path.join("assets", "examples")):  # a previous report's pages
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by ctxlookup.report; its neurons/, heads/, lists/ and assets/examples/ folders are "
                "rewritten on each run\n")
    neurons = [tuple(x) for x in data.neurons[["layer", "neuron"]].astype(int).values.tolist()]
    pairs = [tuple(x) for x in data.pairs[["layer", "neuron", "head_layer", "head"]].astype(int).values.tolist()]
    data.prepare(neurons, progress=progress)
    data.prepare_congruence(neurons)
    data.prepare_quantiles(neurons, progress=progress)
    # the stylesheet and the script, once; the figures
    shutil.copytree(STATIC, os.path.join(out, "static"), dirs_exist_ok=True)
    assets = os.path.join(out, "assets")
    os.makedirs(assets, exist_ok=True)
    for name in ("figure5", "figure6"):
        for ext in ("png", "svg"):
            src = os.path.join(data.dir, f"{name}.{ext}")
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(assets, f"{name}.{ext}"))
    root = Links(data, site=True, depth=0)
    sub = Links(data, site=True, depth=1)
    records = index_records(data, root)
    _write(os.path.join(assets, "index-data.js"),
           "window.CTXL_INDEX = " + json.dumps(records, ensure_ascii=True, separators=(",", ":"), allow_nan=False) + ";\n")
    from ..neuroscope_site import run_atlas_link

    _write(os.path.join(out, "index.html"), index_html(data, root, len(neurons), len(pairs), run_atlas_link(data.dir, out)))
    for path, text in list_pages("neurons", "Neurons", records["neurons"], page_size).items():
        _write(os.path.join(out, path), text)
    for path, text in list_pages("heads", "Neuron\u2013head pairs", records["heads"], page_size).items():
        _write(os.path.join(out, path), text)
    shared: dict = {}  # token texts -> ids, for every neuron's examples script (assets/vocab.js)
    for l, n in sorted(set(neurons) | {k[:2] for k in pairs}):   # each neuron's examples, once for all its pages
        _write(os.path.join(out, example_page(l, n)), examples_js(data, l, n, shared))
    _write(os.path.join(assets, "vocab.js"), vocab_js(shared))
    for i, (l, n) in enumerate(neurons):
        body = neuron_html(data, l, n, sub)
        body += nav_html(sub, neurons[i - 1] if i else None, neurons[i + 1] if i + 1 < len(neurons) else None, "neuron")
        _write(os.path.join(out, neuron_page(l, n)), page(f"{neuron_label(l, n)} \u00b7 ctxlookup", body, depth=1,
                                                          scripts=["../assets/vocab.js", "../" + example_page(l, n)], key=page_key(l, n)))
    for i, k in enumerate(pairs):
        body = head_html(data, *k, links=sub)
        body += nav_html(sub, pairs[i - 1] if i else None, pairs[i + 1] if i + 1 < len(pairs) else None, "head")
        _write(os.path.join(out, head_page(*k)),
               page(f"{head_label(k[2], k[3])} \u2192 {neuron_label(k[0], k[1])} \u00b7 ctxlookup", body, depth=1,
                    scripts=["../assets/vocab.js", "../" + example_page(k[0], k[1])],
                    key=page_key(*k)))
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
    if got is None or (os.path.exists(mpath) and os.path.getmtime(mpath) != got.mtime):
        got = RunData(path)
        _DATA_CACHE[path] = got
    return got


class _View:
    def html(self) -> str:
        """The view as a notebook fragment (styles inline, scoped to it; no script)."""
        return fragment(self._body())

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str) -> str:
        """Write this view as a standalone HTML page (the stylesheet inline)."""
        _write(os.path.abspath(path), page(self._title(), self._body(), standalone=True, key=self._key()))
        return path

    def _body(self) -> str:
        raise NotImplementedError

    def _title(self) -> str:
        return "ctxlookup"

    def _key(self) -> list:
        return []


class NeuronView(_View):
    """A neuron's page as a notebook view: ``NeuronView(run, layer, neuron)`` (``run``: a run
    directory, the ``Run`` from :func:`ctxlookup.replicate`, or a :class:`RunData`)."""

    def __init__(self, run, layer: int, neuron: int):
        self.data, self.layer, self.neuron = _data(run), int(layer), int(neuron)

    def _body(self) -> str:
        return neuron_html(self.data, self.layer, self.neuron, Links(self.data, site=False))

    def _title(self) -> str:
        return neuron_label(self.layer, self.neuron)

    def interactive(self, text: Optional[str] = None):
        """The live panel (:func:`ctxlookup.interactive.neuron_panel`): a text box (default: the
        neuron's top example) and the neuron on the typed text, its tokens coloured by activation
        and the heads at the maximum; ``panel.callback(text)`` gives the same ``(html, data)``
        without a widget. Needs ipywidgets (``pip install 'ctxlookup[serve]'``)."""
        from ..interactive import neuron_panel

        return neuron_panel(self.data.dir, self.layer, self.neuron, text=text)

    def _key(self) -> list:
        return page_key(self.layer, self.neuron)

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
        return head_html(self.data, *self.key, links=Links(self.data, site=False), n_prompts=self.n_prompts)

    def _title(self) -> str:
        return f"{head_label(self.key[2], self.key[3])} -> {neuron_label(self.key[0], self.key[1])}"

    def interactive(self, text: Optional[str] = None):
        """:meth:`NeuronView.interactive` with the head's explanation and its live activity
        (:func:`ctxlookup.interactive.head_panel`)."""
        from ..interactive import head_panel

        return head_panel(self.data.dir, *self.key, text=text)

    def _key(self) -> list:
        return page_key(*self.key)

    def __repr__(self) -> str:
        return f"HeadView({self.data.dir!r}, {', '.join(map(str, self.key))})"


class RunView(_View):
    """The run's summary (statistics, figures, tables) as a notebook view."""

    def __init__(self, run):
        self.data = _data(run)

    def _body(self) -> str:
        links = Links(self.data, site=False)
        return summary_html(self.data, links) + tables_html(self.data, links)

    def __repr__(self) -> str:
        return f"RunView({self.data.dir!r})"


class _Views(_View):
    def __init__(self, views: list, more: int = 0):
        self.views, self.more = views, more

    def _tail(self) -> str:
        return f'<p class="sub">\u2026 and {self.more} more rows</p>' if self.more else ""

    def html(self) -> str:
        return "<hr>".join(v.html() for v in self.views) + (fragment(self._tail()) if self.more else "")

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
    if isnum(get.get("head_layer")) and isnum(get.get("head")):
        n = get.get("n_prompts_per_neuron")
        return HeadView(run, get["layer"], get["neuron"], get["head_layer"], get["head"],
                        n_prompts=int(n) if isnum(n) else None)
    return NeuronView(run, get["layer"], get["neuron"])


# =============================================================================== a callable package
class _CallableModule(types.ModuleType):
    """``ctxlookup.report(run_dir)`` calls :func:`report`; ``ctxlookup.report.NeuronView`` still works."""

    def __call__(self, *args, **kwargs):
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
