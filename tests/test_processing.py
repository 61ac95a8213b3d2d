"""Weight processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases) against
TransformerLens on the same weights: TransformerBridge.boot_transformers + enable_compatibility_mode
gives HookedTransformer.from_pretrained's numbers. Tolerance: conftest.ATOL."""
import copy
import numpy as np
import pytest
import torch

import ctxlookup
from conftest import ATOL, max_err_rows, padded_batch

PROC = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def _bridge(folder, hf):
    tb = pytest.importorskip("transformer_lens.model_bridge")
    b = tb.TransformerBridge.boot_transformers(folder, hf_model=copy.deepcopy(hf))  # processing folds weights in place: never the shared fixture model
    b.enable_compatibility_mode(disable_warnings=True)
    b.set_use_attn_result(True)
    return b


@pytest.mark.parametrize("name", ["gpt2-tied-gelu_new", "gpt2-untied-relu-3heads", "neox-parallel-rot0.25",
                                  "neox-sequential-rot1.0-5heads"])
def test_processed_weights_match_transformerlens(checkpoint, name):
    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder, **PROC)
    bridge = _bridge(folder, hf)
    toks, lens, _ = padded_batch(model.cfg.d_vocab, [13] * 3, seed=11)
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(torch.tensor(toks))
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith(("hook_result", "mlp.hook_post")))
    for i in range(model.cfg.n_layers):
        for hook in ("attn.hook_result", "mlp.hook_post"):
            want = tl_cache[f"blocks.{i}.{hook}"].numpy()
            assert max_err_rows(cache[f"blocks.{i}.{hook}"], want, lens) < ATOL, (i, hook)
    # logits agree up to center_unembed's per-position constant (both sides centre here: exact)
    d = logits - tl_logits.numpy()
    assert np.abs(d - d.mean(-1, keepdims=True)).max() < ATOL
    for w in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "b_in", "b_O"):
        np.testing.assert_allclose(getattr(model, w), getattr(bridge, w).detach().numpy(), atol=ATOL, err_msg=w)
    np.testing.assert_allclose(model.W_U, bridge.W_U.detach().numpy(), atol=ATOL)
    assert model.cfg.normalization_type == "LNPre"
    with pytest.raises(AttributeError, match="folded"):
        model.ln1_w


@pytest.mark.parametrize("opt", list(PROC))
def test_each_processing_step_preserves_the_function(checkpoint, opt):
    """fold_ln, center_writing_weights and fold_value_biases leave logits unchanged (up to float
    error); center_unembed changes them by a per-position constant, so softmax is unchanged."""
    folder, _ = checkpoint("neox-sequential-rot1.0-5heads")
    raw = ctxlookup.Model.load(folder)
    proc = ctxlookup.Model.load(folder, **{opt: True})
    toks, lens, _ = padded_batch(raw.cfg.d_vocab, [11, 6], seed=12)
    a, b = raw(toks, lengths=lens), proc(toks, lengths=lens)
    d = (a - b)[0, :11]
    if opt == "center_unembed":
        d = d - d.mean(-1, keepdims=True)
    assert np.abs(d).max() < ATOL
    if opt == "center_writing_weights":
        np.testing.assert_allclose(proc.W_E.mean(-1), 0, atol=1e-6)
        np.testing.assert_allclose(proc.W_out.mean(-1), 0, atol=1e-6)
    if opt == "fold_value_biases":
        assert np.all(proc.b_V == 0)
