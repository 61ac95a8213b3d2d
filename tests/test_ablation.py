"""The ablation check against a Python-hook ablation, and mean ablation's mean_z."""
import numpy as np
import pandas as pd
import pytest

from ctxlookup.ablation import ablate_heads
from ctxlookup.attribution import head_attribution
from test_attribution import make_prompts, model  # noqa: F401 (a fixture)


def test_ablation_probabilities_match_python_hook(model):
    prompts = make_prompts(model, n=6, seed=2)
    prompts["layer"] = model.cfg.n_layers - 1
    prompts["neuron"] = 3
    att = head_attribution(model, prompts, retokenize=False)
    heads = pd.DataFrame([dict(layer=model.cfg.n_layers - 1, neuron=3, head_layer=0, head=1)])
    res = ablate_heads(model, prompts, heads, attribution=att, retokenize=False)
    assert len(res) == 6
    for r in res.itertuples():
        p = prompts[prompts.prompt_id == r.prompt_id].iloc[0]
        toks = np.array(p.tokens)[None]

        def zero(z, hook):
            z[:, :, 1] = 0

        for kw, col in (({}, "p_clean"), ({"fwd_hooks": [("blocks.0.attn.hook_z", zero)]}, "p_ablated")):
            lg = model.run_with_hooks(toks, **kw)[0, -1].astype(np.float64)
            pr = np.exp(lg - lg.max())
            pr /= pr.sum()
            assert getattr(r, col) == pytest.approx(pr[p.token_id], rel=1e-4, abs=1e-7)
        assert r.active == bool(att[(att.prompt_id == r.prompt_id) & (att.head_layer == 0) & (att["head"] == 1)].active.iloc[0])


def test_mean_ablation_uses_the_prompts_mean_z(model):
    """mode='mean' without mean_z: each head's hook_z averaged over every position of the prompts
    (brute force from run_with_cache), then patched in for the ablated head."""
    from ctxlookup.ablation import mean_z

    prompts = make_prompts(model, n=5, seed=4)
    prompts["layer"], prompts["neuron"] = model.cfg.n_layers - 1, 2
    heads = pd.DataFrame([dict(layer=model.cfg.n_layers - 1, neuron=2, head_layer=0, head=1)])
    zs = []
    for t in prompts.tokens:
        _, cache = model.run_with_cache(np.array(t)[None], names_filter=lambda n: n.endswith("hook_z"))
        zs.append(np.stack([cache[f"blocks.{l}.attn.hook_z"][0] for l in range(model.cfg.n_layers)], 1))  # (pos, L, H, d)
    want = np.concatenate(zs).astype(np.float64).mean(0)
    got = mean_z(model, prompts, retokenize=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    res = ablate_heads(model, prompts, heads, mode="mean", retokenize=False)
    explicit = ablate_heads(model, prompts, heads, mode="mean", mean_z=got, retokenize=False)
    pd.testing.assert_frame_equal(res, explicit)
    p = prompts.iloc[0]

    def to_mean(z, hook):
        z[:, :, 1] = got[0, 1]

    lg = model.run_with_hooks(np.array(p.tokens)[None], fwd_hooks=[("blocks.0.attn.hook_z", to_mean)])[0, -1].astype(np.float64)
    pr = np.exp(lg - lg.max())
    assert res.p_ablated.iloc[0] == pytest.approx(pr[p.token_id] / pr.sum(), rel=1e-4, abs=1e-7)
