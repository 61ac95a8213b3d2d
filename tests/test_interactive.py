"""The Jupyter panels (ctxlookup.interactive): the widget's callback, a plain function text ->
(html, data), checked against the model's own numbers (run_with_cache, head_attribution) without
a browser; the widgets themselves (a text box whose change re-renders the output)."""
import html
import re

import numpy as np
import pytest

import ctxlookup
from live_run import TOL_ACT, TOL_PROB, TOL_SCORE, live_run, oracle

pytest.importorskip("ipywidgets")

from ctxlookup import interactive  # noqa: E402
from ctxlookup.live import LiveError  # noqa: E402

TEXT = "She put the keys in the drawer and the letters in the box."


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return live_run(tmp_path_factory)


@pytest.fixture(scope="module")
def model(run):
    p = run.manifest["options"]["process_weights"]
    return ctxlookup.Model.from_pretrained("demo", fold_ln=p, center_writing_weights=p, center_unembed=p,
                                           fold_value_biases=p)


def test_neuron_callback_gives_the_models_numbers(run, model):
    nt = run.read("neurons")
    layer, neuron = int(nt.layer.iloc[2]), int(nt.neuron.iloc[2])
    cb = interactive.neuron_callback(run, layer, neuron)
    page, data = cb(TEXT)
    want = oracle(model, run, layer, neuron, TEXT)
    assert data["token_ids"] == [int(i) for i in want["ids"]]
    np.testing.assert_allclose(data["activation"], want["acts"], atol=TOL_ACT)
    np.testing.assert_allclose(data["prob"], want["prob"], atol=TOL_PROB, rtol=1e-4)
    assert data["max_position"] == want["pos"] == data["position"]
    att = want["att"]
    np.testing.assert_allclose([h["score"] for h in data["heads"]], att.score, atol=TOL_SCORE, rtol=1e-4)
    assert [h["active"] for h in data["heads"]] == att.active.tolist()
    # the HTML shows those numbers: one span per token, its activation, the maximum outlined
    spans = re.findall(r'<span class="tok([^"]*)" data-pos="(\d+)" data-act="([^"]+)"', page)
    assert [int(p) for _, p, _ in spans] == list(range(len(want["ids"])))
    np.testing.assert_allclose([float(a) for _, _, a in spans], want["acts"], atol=TOL_ACT)
    assert [int(p) for c, p, _ in spans if "max" in c] == [want["pos"]]
    toks = model.to_str_tokens(TEXT)
    assert html.escape(toks[want["pos"]].replace("\n", "⏎")) in page
    shown = re.findall(r"<tr class=\"(act)?\"><td>(L\d+H\d+)</td>", page)
    top = att.sort_values("score", ascending=False).head(12)
    assert [n for _, n in shown] == [f"L{a}H{b}" for a, b in zip(top.head_layer, top["head"])]
    assert [bool(a) for a, _ in shown] == top.active.tolist()


def test_head_callback_shows_the_explanation_and_the_live_activity(run, model):
    ex = run.read("explanations")
    r = ex[ex.explanation.map(lambda e: isinstance(e, str))].iloc[0]
    layer, neuron, hl, h = int(r.layer), int(r.neuron), int(r.head_layer), int(r["head"])
    page, data = interactive.head_callback(run.dir, layer, neuron, hl, h)(TEXT)
    assert html.escape(r.explanation) in page
    me = next(x for x in data["heads"] if (x["head_layer"], x["head"]) == (hl, h))
    att = oracle(model, run, layer, neuron, TEXT)["att"]
    row = att[(att.head_layer == hl) & (att["head"] == h)].iloc[0]
    assert me["active"] == bool(row.active)
    assert ("ACTIVE" if row.active else "inactive") in page.split(html.escape(r.explanation))[1][:400]


def test_bad_text_and_missing_neurons(run):
    nt = run.read("neurons")
    layer, neuron = int(nt.layer.iloc[0]), int(nt.neuron.iloc[0])
    cb = interactive.neuron_callback(run, layer, neuron)
    for text, msg in (("", "the text is empty"), ("  \n", "only whitespace"), ("\ud800", "unpaired surrogate")):
        page, data = cb(text)
        assert data["status"] == 400 and msg in data["error"] and 'class="err"' in page
    with pytest.raises(LiveError, match="neuron 5000 does not exist"):
        interactive.neuron_callback(run, layer, 5000)
    with pytest.raises(LiveError, match="is not eligible"):
        interactive.head_callback(run, layer, neuron, layer, 0)


def test_widgets_rerender_on_a_new_text(run):
    nt = run.read("neurons")
    layer, neuron = int(nt.layer.iloc[0]), int(nt.neuron.iloc[0])
    panel = interactive.neuron_panel(run, layer, neuron)
    box, out = panel.children
    pr = run.read("prompts")
    assert box.value == pr[(pr.layer == layer) & (pr.neuron == neuron)].sort_values("rank").text.iloc[0]
    box.value = TEXT
    assert out.value == panel.callback(TEXT)[0] and "data-pos" in out.value
    box.value = "   "
    assert "only whitespace" in out.value
    ex = run.read("explanations")
    r = ex[ex.explanation.map(lambda e: isinstance(e, str))].iloc[0]
    hp = interactive.head_panel(run, int(r.layer), int(r.neuron), int(r.head_layer), int(r["head"]), text=TEXT)
    assert html.escape(r.explanation) in hp.children[1].value


def test_views_interactive_panels_give_the_models_numbers(run, model):
    """NeuronView(...).interactive() and HeadView(...).interactive(): the panels of
    ctxlookup.interactive, whose callback on a text gives run_with_cache's activations and
    head_attribution's heads, and whose box re-renders the output with them."""
    from ctxlookup.report import HeadView, NeuronView

    ex = run.read("explanations")
    r = ex[ex.explanation.map(lambda e: isinstance(e, str))].iloc[0]
    layer, neuron, hl, h = int(r.layer), int(r.neuron), int(r.head_layer), int(r["head"])
    want = oracle(model, run, layer, neuron, TEXT)
    att = want["att"]
    panel = NeuronView(run, layer, neuron).interactive()
    box, out = panel.children
    box.value = TEXT
    page, data = panel.callback(TEXT)
    assert out.value == page
    np.testing.assert_allclose(data["activation"], want["acts"], atol=TOL_ACT)
    np.testing.assert_allclose(data["prob"], want["prob"], atol=TOL_PROB, rtol=1e-4)
    assert data["max_position"] == want["pos"]
    np.testing.assert_allclose([x["score"] for x in data["heads"]], att.score, atol=TOL_SCORE, rtol=1e-4)
    assert [x["active"] for x in data["heads"]] == att.active.tolist()
    spans = re.findall(r'<span class="tok([^"]*)" data-pos="(\d+)" data-act="([^"]+)"', out.value)
    np.testing.assert_allclose([float(a) for _, _, a in spans], want["acts"], atol=TOL_ACT)
    assert [int(p) for c, p, _ in spans if "max" in c] == [want["pos"]]

    hp = HeadView(run.dir, layer, neuron, hl, h).interactive(text=TEXT)
    page, data = hp.callback(TEXT)
    assert hp.children[1].value == page and html.escape(r.explanation) in page
    row = att[(att.head_layer == hl) & (att["head"] == h)].iloc[0]
    me = next(x for x in data["heads"] if (x["head_layer"], x["head"]) == (hl, h))
    assert me["active"] == bool(row.active) and abs(me["score"] - row.score) <= TOL_SCORE + 1e-4 * abs(row.score)
    assert ("ACTIVE" if row.active else "inactive") in page.split(html.escape(r.explanation))[1][:400]
    with pytest.raises(LiveError, match="neuron 5000 does not exist"):
        NeuronView(run, layer, 5000).interactive()
