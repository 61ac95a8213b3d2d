"""Explanations and scores: the paper's prompts exactly, Yes/No parsing, the confusion counts,
TPR/TNR/E against hand-computed values (including one-class and no-prediction edge cases), and
the offline explainer end to end."""
import pandas as pd
import pytest

from ctxlookup.explain import OfflineExplainer, build_explain_prompt, explain_heads
from ctxlookup.score import build_classify_prompt, score_explanations


def test_prompts_are_the_papers():
    p = build_explain_prompt(" an", ["I ate", "She saw"], ["He was"])
    assert p.startswith("We are studying attention heads in a transformer architecture neural network.")
    assert 'predict that the next token is "an", but it is only active' in p
    assert '"""\n*I ate an\n*She saw an\n"""\nExamples where the attention head is inactive:\n"""\n*He was an\n"""' in p
    assert p.endswith("In two to three sentences, suggest when the attention head is active.")
    c = build_classify_prompt("Active on food.", "I ate", " an")
    assert c == 'Active on food.\nIs the given example an active example? (Yes/No)\n\nExample: """\nI ate an\n"""\nAnswer: '


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
