"""Explanations and scores: the paper's prompts exactly, Yes/No parsing, the confusion counts,
TPR/TNR/E against hand-computed values (including one-class and no-prediction edge cases), and
the offline explainer end to end."""
import numpy as np
import pandas as pd
import pytest

from ctxlookup.explain import (CLASSIFY_TEMPLATE, OfflineExplainer, build_classify_prompt, build_explain_prompt,
                               explain_heads, parse_yes_no, score_explanations)


def test_prompts_are_the_papers():
    p = build_explain_prompt(" an", ["I ate", "She saw"], ["He was"])
    assert p.startswith("We are studying attention heads in a transformer architecture neural network.")
    assert 'predict that the next token is "an", but it is only active' in p
    assert '"""\n*I ate an\n*She saw an\n"""\nExamples where the attention head is inactive:\n"""\n*He was an\n"""' in p
    assert p.endswith("In two to three sentences, suggest when the attention head is active.")
    c = build_classify_prompt("Active on food.", "I ate", " an")
    assert c == 'Active on food.\nIs the given example an active example? (Yes/No)\n\nExample: """\nI ate an\n"""\nAnswer: '


@pytest.mark.parametrize("ans,want", [("Yes", True), ("yes.", True), (" YES!", True), ("No", False), ("no,", False),
                                      ("\nNo", False), ("Maybe", None), ("", None), (None, None), ("Yesterday", None),
                                      ("Not sure", None)])
def test_parse_yes_no(ans, want):
    assert parse_yes_no(ans) is want


class Scripted:
    """A fake client answering from a table: prompt example -> answer."""

    def __init__(self, answers):
        self.answers = answers

    def complete_many(self, messages_list, **kw):
        from ctxlookup.explain import _Result
        out = []
        for m in messages_list:
            ex = m[-1]["content"].split('Example: """\n')[1].split("\n")[0]
            out.append(_Result(self.answers[ex]))
        return out


def _tables():
    expl = pd.DataFrame([dict(layer=1, neuron=2, head_layer=0, head=3, token=" an", explanation="E1"),
                         dict(layer=1, neuron=2, head_layer=0, head=4, token=" an", explanation="E2")])
    tp = pd.DataFrame([dict(layer=1, neuron=2, prompt_id=i, text=f"p{i}") for i in range(6)])
    # head 3 active on p0, p1, p2; head 4 active on none (one class)
    att = pd.DataFrame([dict(prompt_id=i, head_layer=0, head=h, active=(h == 3 and i < 3)) for i in range(6) for h in (3, 4)])
    return expl, tp, att


def test_scores_hand_computed_and_edge_cases():
    expl, tp, att = _tables()
    # predictions: p0 Yes (TP), p1 No (FN), p2 yes (TP), p3 Yes (FP), p4 No (TN), p5 garbage (unparsed)
    answers = {"p0 an": "Yes", "p1 an": "No", "p2 an": "yes", "p3 an": "Yes", "p4 an": "No", "p5 an": "Perhaps"}
    out = score_explanations(expl, tp, att, Scripted(answers))
    r = out.iloc[0]
    assert (r.TP, r.FN, r.FP, r.TN, r.n_unparsed, r.n_test) == (2, 1, 1, 1, 1, 6)
    assert r.TPR == pytest.approx(2 / 3) and r.TNR == pytest.approx(1 / 2) and r.E == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r.PPV == pytest.approx(2 / 3) and r.NPV == pytest.approx(1 / 2)
    assert r.E_ppv_npv == pytest.approx((2 / 3 + 1 / 2) / 2) and not r.one_class
    s = out.iloc[1]  # all test prompts inactive: one class, left out
    assert s.one_class and np.isnan(s.E) and np.isnan(s.TPR) and s.TNR == pytest.approx(2 / 5)
    none_yes = score_explanations(expl, tp, att, Scripted({k: "No" for k in answers}))
    r = none_yes.iloc[0]  # no positive predictions: PPV undefined, E still defined
    assert np.isnan(r.PPV) and r.TPR == 0 and r.TNR == 1 and r.E == pytest.approx(0.5)


def test_offline_explainer_end_to_end():
    prompts = pd.DataFrame([dict(layer=1, neuron=2, prompt_id=i, text=t, token=" an")
                            for i, t in enumerate(["she ate an apple", "he ate a pear", "they ate grapes",
                                                   "the sky is blue", "rain falls down", "wind blows"])])
    att = pd.DataFrame([dict(prompt_id=i, head_layer=0, head=1, active=i < 3) for i in range(6)])
    heads = pd.DataFrame([dict(layer=1, neuron=2, head_layer=0, head=1)])
    off = OfflineExplainer()
    ex = explain_heads(heads, prompts, att, off)
    assert ex.explanation.iloc[0] == 'The head is active when the document contains "ate".'
    assert ex.n_active.iloc[0] == 3 and ex.n_inactive.iloc[0] == 3 and ex.error.iloc[0] is None
    test = pd.DataFrame([dict(layer=1, neuron=2, prompt_id=10 + i, text=t, token=" an")
                         for i, t in enumerate(["we ate rice", "snow is cold", "I ate", "cats sleep"])])
    tatt = pd.DataFrame([dict(prompt_id=10 + i, head_layer=0, head=1, active=i in (0, 2, 3)) for i in range(4)])
    sc = score_explanations(ex, test, tatt, off)
    r = sc.iloc[0]
    assert (r.TP, r.FN, r.TN, r.FP) == (2, 1, 1, 0) and r.E == pytest.approx((2 / 3 + 1) / 2)
    assert off.usage == {"explain": 1, "classify": 4}


def test_per_prompt_predictions_match_the_counts():
    expl, tp, att = _tables()
    expl["n_prompts_per_neuron"] = 20
    answers = {"p0 an": "Yes", "p1 an": "No", "p2 an": "yes", "p3 an": "Yes", "p4 an": "No", "p5 an": "Perhaps"}
    plain = score_explanations(expl, tp, att, Scripted(answers))
    out, preds = score_explanations(expl, tp, att, Scripted(answers), return_predictions=True)
    pd.testing.assert_frame_equal(out, plain)  # the scores do not change
    assert list(preds.columns) == ["layer", "neuron", "head_layer", "head", "n_prompts_per_neuron", "prompt_id",
                                   "actual", "predicted", "answer", "error"]
    assert len(preds) == 12 and (preds.n_prompts_per_neuron == 20).all()
    h3 = preds[preds["head"] == 3].set_index("prompt_id")
    assert h3.actual.tolist() == [True, True, True, False, False, False]
    assert h3.predicted.tolist()[:5] == [True, False, True, True, False] and pd.isna(h3.predicted.iloc[5])
    assert h3.answer.tolist() == ["Yes", "No", "yes", "Yes", "No", "Perhaps"]
    for (hl, h), g in preds.groupby(["head_layer", "head"]):
        r = out[(out.head_layer == hl) & (out["head"] == h)].iloc[0]
        p = g.predicted
        assert int((p & g.actual).sum()) == r.TP and int((p & ~g.actual).sum()) == r.FP
        assert int((~p & g.actual).sum()) == r.FN and int((~p & ~g.actual).sum()) == r.TN
        assert int(p.isna().sum()) == r.n_unparsed
    # an explanation that failed gets no rows; an error answer is kept with its error
    expl.loc[1, "explanation"] = None

    class Failing(Scripted):
        def complete_many(self, messages_list, **kw):
            from ctxlookup.explain import _Result
            return [_Result(None, error="HTTP 500") for _ in messages_list]

    out, preds = score_explanations(expl, tp, att, Failing({}), return_predictions=True)
    assert len(preds) == 6 and preds.predicted.isna().all() and (preds.error == "HTTP 500").all()
    assert out.n_unparsed.iloc[0] == 6


def test_authors_templates_byte_for_byte():
    """The authors' ExplanationPromptGen / ClassifyPromptGen outputs, written out by hand."""
    ctx = ("We are studying attention heads in a transformer architecture neural network. Each attention head looks "
           "for some particular thing in a short document.\n")
    head = ('This attention head in particular helps to predict that the next token is " an", but it is only active '
            "in some documents and not others. Look at the documents and explain what makes the attention head active, "
            "taking into consideration the inactive examples.\n")
    body = ('Examples where the attention head is active: """\n*I ate an\n*She\tsaw an\n"""\n'
            'Examples where the attention head is inactive: """\n*He was an\n"""\n')
    p23 = build_explain_prompt(" an", ["I ate", "She\tsaw"], ["He was"], version="2023")
    assert p23 == ctx + head + body + "Explanation: This attention head is active when the document"
    p24 = build_explain_prompt(" an", ["I ate", "She\tsaw"], ["He was"], version="2024")
    assert p24 == ctx + head + body + "In two to three sentences, suggest when the attention head is active."
    # newlines in prompts are shown as spaces (the authors' prompts were); an empty list is a lone "*"
    assert '"""\n*a b an\n"""' in build_explain_prompt(" an", ["a\nb"], [], version="2023")
    assert 'inactive: """\n*\n"""' in build_explain_prompt(" an", ["a"], [], version="2024")
    c23 = build_classify_prompt("is about\nfood.", "I ate", " an", version="2023")
    assert c23 == ('Is the given example an active example? (Yes/No)\nThe example is active when the example is about '
                   'food.\nExample: """\nI ate an\n"""\nAnswer: ')
    c24 = build_classify_prompt("Active on\nfood.", "I ate", " an", version="2024")
    assert c24 == 'Active on food.\nIs the given example an active example? (Yes/No)\n\nExample: """\nI ate an\n"""\nAnswer: '
    # today's template keeps the explanation's line breaks
    assert build_classify_prompt("a\nb", "x", " y").startswith("a\nb\n")
    with pytest.raises(ValueError, match="version"):
        build_explain_prompt(" an", [], [], version="2025")
    with pytest.raises(ValueError, match="template"):
        build_classify_prompt("e", "x", " y", template="{explanation}{example}{token}", version="2023")


def test_exact_parse_one_class_keep_and_max_test():
    expl, tp, att = _tables()
    answers = {"p0 an": "Yes", "p1 an": "No", "p2 an": "yes", "p3 an": "Yes", "p4 an": "No", "p5 an": "No."}
    out = score_explanations(expl, tp, att, Scripted(answers), parse="exact")
    r = out.iloc[0]  # "yes" and "No." are not exact: ignored
    assert (r.TP, r.FN, r.FP, r.TN, r.n_unparsed) == (1, 1, 1, 1, 2)
    assert parse_yes_no("Yes", "exact") is True and parse_yes_no("No", "exact") is False
    assert parse_yes_no("yes", "exact") is None and parse_yes_no(" No", "exact") is None
    # head 4 is never active: dropped by default, its one defined rate (TNR) kept with one_class="keep"
    drop = score_explanations(expl, tp, att, Scripted(answers))
    keep = score_explanations(expl, tp, att, Scripted(answers), one_class="keep")
    assert np.isnan(drop.E.iloc[1]) and keep.one_class.iloc[1] and drop.one_class.iloc[1]
    assert keep.E.iloc[1] == pytest.approx(keep.TNR.iloc[1]) and keep.E.iloc[0] == pytest.approx(drop.E.iloc[0])
    first4 = score_explanations(expl, tp, att, Scripted(answers), max_test=4, version="2023")
    assert first4.n_test.tolist() == [4, 4]
    with pytest.raises(ValueError, match="one_class"):
        score_explanations(expl, tp, att, Scripted(answers), one_class="maybe")
    with pytest.raises(ValueError, match="parse"):
        score_explanations(expl, tp, att, Scripted(answers), parse="fuzzy")


def test_authors_versions_dedupe_texts_and_offline_answers_every_version():
    prompts = pd.DataFrame([dict(layer=1, neuron=2, prompt_id=i, text=t, token=" an", n_tokens=n)
                            for i, (t, n) in enumerate([("a b", 3), ("c d", 120), ("a b", 3), ("e f", 4)])])
    att = pd.DataFrame([dict(prompt_id=i, head_layer=0, head=0, active=i in (2, 3)) for i in range(4)])
    heads = pd.DataFrame([dict(layer=1, neuron=2, head_layer=0, head=0)])
    off = OfflineExplainer()
    for version in ("ctxlookup", "2023", "2024"):
        ex = explain_heads(heads, prompts, att, off, version=version, temperature=None)
        assert isinstance(ex.explanation.iloc[0], str) and "contains" in ex.explanation.iloc[0]
        sc = score_explanations(ex, prompts, att, off, version=version, temperature=None)
        assert sc.n_unparsed.iloc[0] == 0
        if version == "ctxlookup":
            assert (ex.n_active.iloc[0], ex.n_inactive.iloc[0]) == (2, 2)
        else:  # "a b" once, at its first place, with its last activity; the 120-token prompt dropped
            assert (ex.n_active.iloc[0], ex.n_inactive.iloc[0]) == (2, 0)
            assert ex.prompt.iloc[0].count("*a b an") == 1 and "c d" not in ex.prompt.iloc[0]
