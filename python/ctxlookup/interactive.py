"""The live panel in Jupyter: type a text, see a neuron (and one of its heads) on it.

``neuron_panel(run, layer, neuron)`` and ``head_panel(run, layer, neuron, head_layer, head)``
return an ipywidgets box (a text area and the live output; ``pip install 'ctxlookup[serve]'``).
The work is done by a plain function, :func:`neuron_callback` / :func:`head_callback`: text ->
``(html, data)``, where ``data`` is :meth:`ctxlookup.live.LiveEngine.neuron`'s answer (or the
error), so it is testable without a browser or a kernel. ``run`` is a run directory, a
:class:`ctxlookup.replicate.Run` or a :class:`ctxlookup.live.LiveEngine`; the model is loaded
once per run directory.
"""
from __future__ import annotations

import html
from typing import Callable, Optional, Tuple

from .live import LiveError, engine_for

__all__ = ["neuron_panel", "head_panel", "neuron_callback", "head_callback", "render_neuron"]

_CSS = """<style>
.ctxl-jl{font:14px/1.5 system-ui,sans-serif;color:#1a1a1a;overflow-wrap:anywhere}
.ctxl-jl .toks{font:13px/1.9 ui-monospace,Menlo,Consolas,monospace}
.ctxl-jl .tok{padding:1px;border-radius:3px;white-space:pre-wrap}
.ctxl-jl .max{outline:2px solid #b34700;font-weight:700}
.ctxl-jl .bos{color:#4d5660;font-style:italic}
.ctxl-jl table{border-collapse:collapse;font-size:12.5px}
.ctxl-jl td,.ctxl-jl th{padding:1px 6px;border-bottom:1px solid #d5dbe1;text-align:right}
.ctxl-jl tr.act td{background:#ffe3c2;font-weight:600}
.ctxl-jl .err{background:#fde8e8;color:#8a1010;padding:4px 8px;border-radius:4px}
.ctxl-jl .note{background:#fff6d6;color:#5c4400;padding:4px 8px;border-radius:4px}
.ctxl-jl .cap{color:#3d4650}
</style>"""


def _num(x) -> str:
    if x is None:
        return "–"
    a = abs(x)
    return f"{x:.2e}" if 0 < a < 1e-3 else f"{x:.3f}"


def _visible(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "⇥")


def _colour(a: float, scale: float) -> str:
    t = min(1.0, abs(a) / scale) if scale > 0 else 0.0
    return f"rgba(255,140,0,{0.7 * t:.3f})" if a >= 0 else f"rgba(66,133,244,{0.55 * t:.3f})"


def render_neuron(r: dict, head: Optional[Tuple[int, int]] = None, explanation: Optional[str] = None) -> str:
    """HTML of :meth:`LiveEngine.neuron`'s answer: the tokens coloured by activation (the maximum
    outlined, each token's activation and the probability of the neuron's token in its tooltip),
    the heads' attribution at the selected position with the active ones marked."""
    first, acts = r["first"], r["activation"]
    scale = max((abs(a) for a in acts[first:]), default=0.0) or 1.0
    toks = []
    for i, (t, a, p) in enumerate(zip(r["tokens"], acts, r["prob"])):
        cls = "tok" + (" bos" if i < first else "") + (" max" if i == r["max_position"] else "")
        bg = "" if i < first else f' style="background:{_colour(a, scale)}"'
        toks.append(f'<span class="{cls}" data-pos="{i}" data-act="{a!r}"{bg} title="position {i}: activation '
                    f'{_num(a)}, p(next = {html.escape(repr(r["token"]))}) {_num(p)}">{html.escape(_visible(t))}</span>')
    out = [_CSS, '<div class="ctxl-jl">']
    for n in r.get("notices", []):
        out.append(f'<p class="note">{html.escape(n)}</p>')
    out.append(f'<p class="cap">Neuron L{r["layer"]}N{r["neuron"]} (token {html.escape(repr(r["token"]))}): maximum '
               f'{_num(r["max_activation"])} at position {r["max_position"]} (outlined); hover a token for its '
               f'activation and the probability of the token next.</p>')
    out.append(f'<div class="toks">{"".join(toks)}</div>')
    if explanation is not None and head is not None:
        me = next((h for h in r["heads"] if (h["head_layer"], h["head"]) == head), None)
        state = "no score" if me is None else f'score {_num(me["score"])}, {"ACTIVE" if me["active"] else "inactive"}'
        out.append(f'<p><b>Head L{head[0]}H{head[1]}</b>: <i>{html.escape(explanation)}</i><br>Live at position '
                   f'{r["position"]}: {state} (threshold {_num(r["threshold"])}).</p>')
    if r["heads"]:
        rows = sorted(r["heads"], key=lambda h: -h["score"])[:12]
        body = "".join(f'<tr class="{"act" if h["active"] else ""}"><td>L{h["head_layer"]}H{h["head"]}</td>'
                       f'<td>{_num(h["score"])}</td><td>{"active" if h["active"] else ""}</td></tr>' for h in rows)
        out.append(f'<p class="cap">Heads at position {r["position"]} ({html.escape(repr(r["tokens"][r["position"]]))}), '
                   f'the 12 highest of {len(r["heads"])} eligible; active by {html.escape(str(r["active_rule"]))} '
                   f'(threshold {_num(r["threshold"])}):</p><table><tr><th>head</th><th>score</th><th>active</th></tr>'
                   f'{body}</table>')
    else:
        out.append(f'<p class="cap">No head is eligible for a layer-{r["layer"]} neuron (rule {r["rule"]}).</p>')
    out.append("</div>")
    return "".join(out)


def _error_html(e: Exception) -> str:
    return f'{_CSS}<div class="ctxl-jl"><p class="err">{html.escape(str(e))}</p></div>'


def neuron_callback(run, layer: int, neuron: int) -> Callable[[str], Tuple[str, dict]]:
    """text -> ``(html, data)``: ``data`` is :meth:`LiveEngine.neuron` on the text, or
    ``{"error": message, "status": code}`` for text the engine refuses (empty, ...)."""
    eng = engine_for(run)
    eng.check_neuron(layer, neuron)

    def cb(text: str):
        try:
            r = eng.neuron(layer, neuron, text)
        except LiveError as e:
            return _error_html(e), {"error": str(e), "status": e.status}
        return render_neuron(r), r
    return cb


def head_callback(run, layer: int, neuron: int, head_layer: int, head: int) -> Callable[[str], Tuple[str, dict]]:
    """As :func:`neuron_callback`, with the head's stored explanation and its live activity."""
    eng = engine_for(run)
    layer, neuron = eng.check_neuron(layer, neuron)
    head_layer, head = eng.check_head(layer, head_layer, head)
    ex = eng.explanation(layer, neuron, head_layer, head)
    explanation = ex["explanation"] if ex else "(the run has no explanation of this head)"

    def cb(text: str):
        try:
            r = eng.neuron(layer, neuron, text)
        except LiveError as e:
            return _error_html(e), {"error": str(e), "status": e.status}
        return render_neuron(r, (head_layer, head), explanation), r
    return cb


def _panel(cb, initial: str):
    import ipywidgets as w

    box = w.Textarea(value=initial, layout=w.Layout(width="100%", height="6em"), continuous_update=False,
                     placeholder="Type a text; the output updates when the box loses focus")
    out = w.HTML(value=cb(initial)[0])

    def changed(change):
        out.value = cb(change["new"])[0]

    box.observe(changed, names="value")
    panel = w.VBox([box, out])
    panel.callback = cb  # the plain function, for scripts and tests
    return panel


def neuron_panel(run, layer: int, neuron: int, text: Optional[str] = None):
    """An ipywidgets panel: a text box (default: the neuron's top example) and the neuron on it."""
    eng = engine_for(run)
    layer, neuron = eng.check_neuron(layer, neuron)
    return _panel(neuron_callback(eng, layer, neuron), text or eng.top_example(layer, neuron) or "The cat sat in the hat.")


def head_panel(run, layer: int, neuron: int, head_layer: int, head: int, text: Optional[str] = None):
    """:func:`neuron_panel` with the head's explanation and its live activity."""
    eng = engine_for(run)
    layer, neuron = eng.check_neuron(layer, neuron)
    return _panel(head_callback(eng, layer, neuron, head_layer, head),
                  text or eng.top_example(layer, neuron) or "The cat sat in the hat.")
