"""The bundled demo model: it loads with no network, it is really trained (held-out loss far below
the corpus's unigram entropy, from its model card, and recomputed here), and a demo run finds
heads active on 25-75% of some neurons' prompts and scores their explanations."""
import json
import os

import numpy as np
import pytest

import ctxlookup
from ctxlookup.model import demo_model_path


@pytest.fixture(scope="module")
def demo():
    return ctxlookup.Model.from_pretrained("demo", fold_ln=True, center_writing_weights=True, center_unembed=True)


def test_loads_offline_and_card_states_losses(demo):
    assert demo.cfg.arch == "GPT2LMHeadModel" and demo.tokenizer is not None
    card = json.load(open(os.path.join(demo_model_path(), "training.json")))
    assert card["final_heldout_loss"] < 0.75 * card["unigram_entropy_heldout"]
    text = open(os.path.join(demo_model_path(), "README.md")).read()
    assert f"{card['final_heldout_loss']:.3f}" in text and f"{card['unigram_entropy_heldout']:.3f}" in text
    size = sum(os.path.getsize(os.path.join(demo_model_path(), f)) for f in os.listdir(demo_model_path()))
    assert size <= 20 * 2 ** 20
    # ctxlookup's held-out loss on the demo test corpus, computed here, agrees with the card's
    docs = [d.text for _, d in zip(range(40), ctxlookup.Corpus.demo("test"))]
    toks, lens = demo.to_tokens(docs)
    logits = demo(toks, lengths=lens)
    nll = []
    for b, n in enumerate(lens):
        lg = logits[b, : n - 1].astype(np.float64)
        lg -= lg.max(-1, keepdims=True)
        lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
        nll.extend(-lp[np.arange(n - 1), toks[b, 1:n]])
    assert np.mean(nll) < 0.75 * card["unigram_entropy_heldout"]


def test_demo_run_finds_context_dependent_heads(tmp_path):
    run = ctxlookup.replicate("demo", str(tmp_path / "run"), neurons_per_layer=5, random_per_layer=3,
                              prompts_per_neuron=12, test_prompts_per_neuron=6, table3=None, progress=False)
    heads = run.read("heads")
    assert len(heads) > 0 and heads.active_fraction.between(0.25, 0.75).all()
    scores = run.read("scores")
    assert scores.explanation.notna().all() and np.isfinite(scores.E).any()
