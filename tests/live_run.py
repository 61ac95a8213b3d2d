"""The small demo run that tests/test_serve.py and tests/test_interactive.py share: made once per
test session (the second module resumes the finished run, which does nothing), and the checks'
oracles: the model's own run_with_cache and head_attribution on a one-prompt DataFrame."""
import numpy as np
import pandas as pd

import ctxlookup

OPTS = dict(neurons_per_layer=3, random_per_layer=2, prompts_per_neuron=8, test_prompts_per_neuron=4, table3=None,
            evidence_docs=0, progress=False, max_docs=60)

TOL_ACT = 1e-4      # activations: the same C core, batched vs alone (float32 summation order)
TOL_PROB = 1e-5     # probabilities of the neuron's token
TOL_SCORE = 1e-5    # head scores: hook_z . (W_O W_in) in float64 vs the core's attribute_batch


def live_run(tmp_path_factory):
    d = tmp_path_factory.getbasetemp() / "live-run"
    return ctxlookup.replicate("demo", str(d), **OPTS)


def oracle(model, run, layer, neuron, text, position=None):
    """What the panel must show for ``text``: token ids (BOS + text), activations and p(token) at
    every position from run_with_cache, and the heads at ``position`` (default: the maximum after
    BOS) from head_attribution on the prefix as a one-prompt DataFrame, under the run's rules."""
    ids = model.to_tokens(text)[0]
    name = f"blocks.{layer}.mlp.hook_post"
    logits, cache = model.run_with_cache(ids[None, :], names_filter=[name])
    acts = cache[name][0, :, neuron].astype(np.float64)
    nt = run.read("neurons")
    tok = int(nt[(nt.layer == layer) & (nt.neuron == neuron)].token_id.iloc[0])
    x = logits[0].astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    prob = p[:, tok] / p.sum(-1)
    pos = 1 + int(np.argmax(acts[1:])) if position is None else position
    prompt = pd.DataFrame(dict(layer=[layer], neuron=[neuron], prompt_id=[0], tokens=[ids[1:pos + 1]]))
    prompt.attrs["prepend_bos"] = True
    proto = run.manifest["protocol"]
    att = ctxlookup.head_attribution(model, prompt, rule=proto["rule"], active_rule=proto["active_rule"],
                                     retokenize=False)
    return dict(ids=ids, acts=acts, prob=prob, pos=pos, att=att, token_id=tok)
