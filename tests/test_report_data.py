"""What the report reads (ctxlookup.report.data.RunData): a run's stored examples and top tokens,
with no model loaded and no forward pass; for a run made before they were stored, the same
numbers computed with the model; the active-head threshold as the attribution stage drew it."""
import os

import numpy as np
import pytest

import ctxlookup
from ctxlookup.attribution import active_heads, active_threshold
from conftest import assert_same_up_to_reordering
from ctxlookup.report import RunData
from test_report import _edited_copy
from test_windows import same_activations


@pytest.fixture(scope="module")
def run_dir(report_run_dir):
    return report_run_dir


def test_the_report_runs_no_model(run_dir, tmp_path, monkeypatch):
    """A run with the examples stage: the report loads no model and runs nothing through one."""
    def refuse(*a, **k):
        raise AssertionError("the report ran the model")

    monkeypatch.setattr(ctxlookup.Model, "from_pretrained", refuse)
    monkeypatch.setattr(ctxlookup.Model, "run_with_cache", refuse)
    monkeypatch.setattr(ctxlookup.model.Model, "__call__", refuse)
    index = ctxlookup.report(run_dir, out=str(tmp_path / "site"))
    data = RunData(run_dir)
    for r in data.neurons.itertuples():
        assert data.top_tokens(r.layer, r.neuron)["top"]
        for split in ("train", "test"):
            for e in data.examples(r.layer, r.neuron, split):
                assert e.context == "document" and len(e.strs) == len(e.acts) > 0
    assert data.model_problem is None and data.mismatches == 0 and os.path.exists(index)


def test_a_run_before_the_examples_stage_gets_the_same_numbers(run_dir, tmp_path):
    old = RunData(_edited_copy(run_dir, tmp_path / "old", drop=["examples"]))
    new = RunData(run_dir)
    assert old.stored_windows("train") is None and new.stored_windows("train") is not None
    for r in new.neurons.itertuples():
        for split in ("train", "test"):
            a, b = old.examples(r.layer, r.neuron, split), new.examples(r.layer, r.neuron, split)
            assert [(e.rank, e.doc_id, e.first, e.doc_len, e.context, e.strs) for e in a] == \
                   [(e.rank, e.doc_id, e.first, e.doc_len, e.context, e.strs) for e in b]
            for x, y in zip(a, b):  # other batches
                same_activations(x.acts, y.acts)
        a, b = old.top_tokens(r.layer, r.neuron), new.top_tokens(r.layer, r.neuron)
        for side in ("top", "bottom"):
            assert [t[:2] for t in a[side]] == [t[:2] for t in b[side]]
            assert_same_up_to_reordering([t[2] for t in a[side]], [t[2] for t in b[side]])
        assert (a["direction"], a["n_excluded"]) == (b["direction"], b["n_excluded"])
    assert old.model is not None and old.mismatches == 0


def test_other_windows_are_computed(run_dir):
    data = RunData(run_dir, before=5, after=2)
    assert data.stored_windows("train") is None
    for r in data.neurons.itertuples():
        for e in data.examples(r.layer, r.neuron):
            assert e.first >= min(e.position - 5, (e.start if e.start is not None else e.position) - 3)
            assert e.first + len(e.strs) <= e.position + 3


def test_active_threshold_is_the_attribution_stages(run_dir):
    """The threshold a page prints is the one the stage's active flags came from."""
    data = RunData(run_dir)
    att = data.table("attribution")
    rule = data.protocol["active_rule"]
    idx = data.attribution_index("train")
    for pid, g in att.groupby("prompt_id"):
        s = g.score.to_numpy(np.float64)
        thr, heads = idx[int(pid)]
        assert thr == active_threshold(s, rule)
        assert list(g.active) == list(active_heads(s, rule))
        if rule == "mean+2sd":
            assert list(g.active) == list(s > thr)
    with pytest.raises(ValueError, match="active_rule"):
        active_threshold([1.0, 2.0], "top5")
