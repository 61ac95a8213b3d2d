"""generate() and the key-value cache: the incremental forward equals the full one (conftest.ATOL),
greedy generation equals transformers' generate(do_sample=False) token for token, and sampling
follows TransformerLens's sample_logits (frequencies against the exact NumPy distribution)."""
import numpy as np
import pytest
import torch

import ctxlookup
from ctxlookup.model import sample_logits
from conftest import ALL_CONFIGS, ATOL


@pytest.mark.parametrize("name", ALL_CONFIGS + ["gpt2-long-context", "neox-long-context"])
def test_incremental_logits_equal_full_forward(checkpoint, name):
    model = ctxlookup.Model.load(checkpoint(name)[0])
    long = "long" in name
    lengths = [600, 301, 40] if long else [30, 17, 5]
    rng = np.random.RandomState(1)
    rows = [rng.randint(0, model.cfg.d_vocab, n) for n in lengths]
    full = [model(r[None])[0] for r in rows]
    kv = model.kv_cache(len(rows))
    done = np.zeros(len(rows), int)
    steps = [[300, 150, 10], [1, 1, 1], [299, 150, 29]] if long else [[10, 4, 2], [1, 1, 1], [1, 1, 1], [18, 11, 1]]
    for step in steps:
        chunk = [r[d:d + n] for r, d, n in zip(rows, done, step)]
        logits = model(chunk, past_kv_cache=kv)
        for b, n in enumerate(step):
            err = np.abs(logits[b, :n] - full[b][done[b]:done[b] + n]).max()
            assert err < ATOL, (b, done[b], err)
        done += step
        assert kv.lengths == done.tolist()
    assert done.tolist() == lengths


def test_kv_cache_errors(checkpoint):
    model = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])
    kv = model.kv_cache(2, capacity=8)
    with pytest.raises(ValueError, match="made for 2 sequences"):
        model(np.arange(3)[None], past_kv_cache=kv)
    model(np.arange(6).reshape(2, 3), past_kv_cache=kv)
    with pytest.raises(ValueError, match="3 cached \\+ 6 new positions exceed the key-value cache's capacity of 8"):
        model(np.arange(12).reshape(2, 6), past_kv_cache=kv)
    assert kv.lengths == [3, 3]  # a refused call leaves the cache as it was
    with pytest.raises(ValueError, match="capacity 65 is outside \\[1, n_ctx = 64\\]"):
        model.kv_cache(1, capacity=65)
    other = ctxlookup.Model.load(checkpoint("gpt2-tied-gelu_new")[0])
    with pytest.raises(ValueError, match="belongs to another model"):
        other(np.arange(6).reshape(2, 3), past_kv_cache=kv)
    with pytest.raises(TypeError, match="KVCache"):
        model._core.forward(np.arange(3, dtype=np.int32), np.array([3], np.int32), 3, kv={})


@pytest.mark.parametrize("name", ALL_CONFIGS + ["gpt2-long-context"])
def test_greedy_generate_equals_transformers(checkpoint, name):
    folder, hf = checkpoint(name)
    model = ctxlookup.Model.load(folder)
    n_prompt = 300 if "long" in name else 7
    prompt = np.random.RandomState(2).randint(1, model.cfg.d_vocab, size=(2, n_prompt))
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                           do_sample=False, max_new_tokens=25, pad_token_id=0).numpy()
    got = model.generate(prompt, max_new_tokens=25, do_sample=False)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=25, do_sample=False, use_past_kv_cache=False), want)
    # a row alone, without stopping, continues exactly as in the batch up to its first eos
    alone = model.generate(prompt[1], max_new_tokens=25, do_sample=False, stop_at_eos=False)
    n = got.shape[1]
    eos_at = np.nonzero(got[1, n_prompt:] == 0)[0]
    upto = n_prompt + (eos_at[0] + 1 if len(eos_at) else n - n_prompt)
    np.testing.assert_array_equal(alone[0, :upto], got[1, :upto])


def test_stop_at_eos_freezes_finished_rows(checkpoint):
    model = ctxlookup.Model.load(checkpoint("neox-parallel-rot0.25")[0])
    prompt = np.random.RandomState(3).randint(1, model.cfg.d_vocab, size=(2, 6))
    free = model.generate(prompt, max_new_tokens=12, do_sample=False, stop_at_eos=False)
    eos = int(free[0, 6 + 3])  # row 0's fourth new token
    first = {b: next((i for i in range(12) if free[b, 6 + i] == eos), None) for b in range(2)}
    got = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=eos)
    end = max(v if v is not None else 11 for v in first.values()) + 1
    assert got.shape == (2, 6 + end)
    for b in range(2):
        stop = first[b] if first[b] is not None else 12
        np.testing.assert_array_equal(got[b, :6 + min(stop + 1, end)], free[b, :6 + min(stop + 1, end)])
        assert (got[b, 6 + stop + 1:] == eos).all()


def _exact_probs(logits, top_k=None, top_p=None, temperature=1.0, freq_penalty=0.0, tokens=None):
    """The distribution sample_logits should draw from, written out plainly for one row."""
    x = logits.astype(np.float64) / temperature
    if freq_penalty:
        x = x - freq_penalty * np.bincount(tokens, minlength=len(x))
    keep = np.ones(len(x), bool)
    if top_k is not None:
        keep = x >= np.sort(x)[::-1][top_k - 1]
    elif top_p is not None:
        order = np.argsort(-x)
        p = np.exp(x[order] - x.max())
        p /= p.sum()
        n = 0
        while n < len(p) and p[:n].sum() <= top_p:
            n += 1
        keep = np.zeros(len(x), bool)
        keep[order[:n]] = True
    p = np.where(keep, np.exp(x - x.max()), 0.0)
    return p / p.sum()


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.5), dict(top_k=4), dict(top_p=0.7, temperature=1.5),
                                dict(freq_penalty=0.8, tokens=[np.array([3, 3, 7, 0, 3])])])
def test_sampling_distribution(kw):
    from transformer_lens.utilities.logits_utils import sample_logits as tl_sample

    logits = np.random.RandomState(4).randn(1, 12).astype(np.float32) * 1.5
    n = 40000
    rng = np.random.default_rng(0)
    draws = sample_logits(np.repeat(logits, n, axis=0), rng=rng, **{k: (v * n if k == "tokens" else v) for k, v in kw.items()})
    freq = np.bincount(draws, minlength=12) / n
    exact = _exact_probs(logits[0], **{k: (v[0] if k == "tokens" else v) for k, v in kw.items()})
    np.testing.assert_allclose(freq, exact, atol=0.01)  # 40000 draws: binomial sd <= 0.0025
    assert set(np.nonzero(freq)[0]) == set(np.nonzero(exact)[0])
    tl_kw = {k: (torch.tensor(np.stack(v * n)) if k == "tokens" else v) for k, v in kw.items()}
    torch.manual_seed(0)
    tl = tl_sample(torch.tensor(np.repeat(logits, n, axis=0)), **tl_kw).numpy()
    np.testing.assert_allclose(np.bincount(tl, minlength=12) / n, exact, atol=0.01)


def test_seeded_sampling_and_return_types(text_model_dir):
    model = ctxlookup.Model.load(text_model_dir)
    a = model.generate("Hello there", max_new_tokens=8, seed=7, top_k=20, stop_at_eos=False)
    b = model.generate("Hello there", max_new_tokens=8, seed=7, top_k=20, stop_at_eos=False)
    assert a == b and isinstance(a, str) and a.startswith("Hello there")
    toks = model.generate("Hello there", max_new_tokens=8, seed=7, top_k=20, stop_at_eos=False, return_type="tokens")
    assert toks.shape == (1, 11) and model.to_string(toks[0, 1:]) == a
    batch = model.generate(["Hello there", "A"], max_new_tokens=4, do_sample=False, stop_at_eos=False, return_type="tokens")
    # left-padded prompts, as TransformerLens; each row continues its own text
    assert batch.shape == (2, 3 + 4) and batch[1, 0] == model.pad_token_id
    np.testing.assert_array_equal(batch[1, 1:], model.generate("A", max_new_tokens=4, do_sample=False, stop_at_eos=False,
                                                               return_type="tokens")[0])
    assert isinstance(model.generate(["Hello", "A"], max_new_tokens=2, do_sample=False), list)
    with pytest.raises(ValueError, match="return_type must be 'input', 'str' or 'tokens'"):
        model.generate("a", return_type="logits")
    with pytest.raises(ValueError, match="exceeds the model's context n_ctx = 256"):
        model.generate("a", max_new_tokens=300)
    with pytest.raises(ValueError, match="top_k must be > 0"):
        model.generate("a", max_new_tokens=2, top_k=0)
