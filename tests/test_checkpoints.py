"""ctxlookup.checkpoints: what it writes, transformers and the safetensors library read identically."""
import numpy as np
import pytest
import torch

import ctxlookup
from ctxlookup.checkpoints import random_checkpoint, save_safetensors
from conftest import ATOL


def test_save_safetensors_reads_back_with_the_reference_library(tmp_path):
    from safetensors.numpy import load_file

    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5, np.float16), "c": np.arange(3, dtype=np.int64)}
    save_safetensors(tmp_path / "x.safetensors", t, {"format": "pt"})
    back = load_file(str(tmp_path / "x.safetensors"))
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])
    with pytest.raises(TypeError, match="complex128"):
        save_safetensors(tmp_path / "y.safetensors", {"z": np.zeros(2, np.complex128)})


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_random_checkpoint_matches_transformers(tmp_path, arch):
    import transformers

    folder = random_checkpoint(tmp_path / arch, arch=arch, n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    toks = np.random.RandomState(0).randint(0, 50, size=(2, 16))
    with torch.no_grad():
        want = hf(torch.tensor(toks)).logits.numpy()
    got = ctxlookup.Model.load(folder)(toks)
    assert np.abs(got - want).max() < ATOL


def test_quickstart_example_runs(tmp_path, capsys):
    from ctxlookup.examples import quickstart

    assert quickstart.main(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "most congruent neuron" in out and "active heads" in out
