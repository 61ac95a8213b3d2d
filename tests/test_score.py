"""Scores of explanations: Yes/No parsing, the confusion counts, TPR/TNR/E against hand-computed
values (including one-class and no-prediction edge cases), the per-prompt predictions."""
import numpy as np
import pandas as pd
import pytest

from ctxlookup.score import parse_yes_no, score_explanations


class Scripted:
    """A fake client answering from a table: prompt example -> answer."""

    def __init__(self, answers):
        self.answers = answers

    def complete_many(self, messages_list, **kw):
        from ctxlookup.llm import Result
        out = []
        for m in messages_list:
            ex = m[-1]["content"].split('Example: """\n')[1].split("\n")[0]
            out.append(Result(self.answers[ex], usage=None, cached=False))
        return out

def _tables():
    expl = pd.DataFrame([dict(layer=1, neuron=2, head_layer=0, head=3, token=" an", explanation="E1"),
                         dict(layer=1, neuron=2, head_layer=0, head=4, token=" an", explanation="E2")])
    tp = pd.DataFrame([dict(layer=1, neuron=2, prompt_id=i, text=f"p{i}") for i in range(6)])
    # head 3 active on p0, p1, p2; head 4 active on none (one class)
    att = pd.DataFrame([dict(prompt_id=i, head_layer=0, head=h, active=(h == 3 and i < 3)) for i in range(6) for h in (3, 4)])
    return expl, tp, att


@pytest.mark.parametrize("ans,want", [("Yes", True), ("yes.", True), (" YES!", True), ("No", False), ("no,", False),
                                      ("\nNo", False), ("Maybe", None), ("", None), (None, None), ("Yesterday", None),
                                      ("Not sure", None)])
def test_parse_yes_no(ans, want):
    assert parse_yes_no(ans) is want


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
            from ctxlookup.llm import Result
            return [Result(None, usage=None, cached=False, error="HTTP 500") for _ in messages_list]

    out, preds = score_explanations(expl, tp, att, Failing({}), return_predictions=True)
    assert len(preds) == 6 and preds.predicted.isna().all() and (preds.error == "HTTP 500").all()
    assert out.n_unparsed.iloc[0] == 6


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
