"""The demo-model trainer: a run stopped and resumed equals an uninterrupted one, and the export
loads in ctxlookup with the numbers transformers gives (tiny settings, a few seconds)."""
import json

import numpy as np
import pytest
import torch

import ctxlookup
from conftest import ATOL, SHARED
from ctxlookup.demo import train

TINY = ["--data", str(SHARED / "data" / "corpus"), "--max-docs", "60", "--vocab", "400", "--layers", "2",
        "--d-model", "32", "--heads", "4", "--n-ctx", "32", "--batch", "4", "--eval-every", "6",
        "--checkpoint-every", "3", "--threads", "1", "--warmup", "2"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_exact_and_export_loads(tmp_path, precision):
    a, b = tmp_path / "a", tmp_path / "b"
    tiny = TINY + ["--precision", precision]
    assert train.main(tiny + ["--work", str(a), "--out", str(a / "out"), "--steps", "12"]) == 0
    assert train.main(tiny + ["--work", str(b), "--out", str(b / "out"), "--steps", "12", "--stop-after", "7"]) == 3
    assert train.main(tiny + ["--work", str(b), "--out", str(b / "out"), "--steps", "12"]) == 0
    la = json.loads((a / "out" / "training.json").read_text())
    lb = json.loads((b / "out" / "training.json").read_text())
    assert [e["train_loss"] for e in la["log"]] == [e["train_loss"] for e in lb["log"]]
    assert la["final_heldout_loss"] == lb["final_heldout_loss"]
    card = (a / "out" / "README.md").read_text()
    assert "seed 1234" in card and "held-out loss" in card and "python -m ctxlookup.demo.train" in card
    assert ("bfloat16 mixed precision" in card) == (precision == "bf16")
    assert la["precision"] == precision
    want_device = "GPU" if torch.cuda.is_available() else "CPU (1 threads)"  # --device auto, --threads 1
    assert la["device"].startswith(want_device) and f"on {la['device']}" in card
    # the export: float16 weights, loaded by ctxlookup and transformers alike
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(str(a / "out"), torch_dtype=torch.float32).eval()
    model = ctxlookup.Model.load(a / "out", tokenizer=False)
    toks = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (2, 20))
    with torch.no_grad():
        want = hf(torch.tensor(toks)).logits.numpy()
    assert np.abs(model(toks) - want).max() < ATOL


def test_cuda_requested_without_a_gpu_is_refused(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(SystemExit):
        train.main(TINY + ["--device", "cuda", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--steps", "2"])
    assert "--device cuda: torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "w" / "checkpoint.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is lent)")
def test_gpu_run_tracks_the_cpu_run_and_resumes_on_the_cpu(tmp_path):
    """Same initial weights and batches on both devices: the first loss (the same weights, only
    the forward arithmetic differs) agrees to 1e-5; later ones drift as Adam amplifies rounding
    differences in small gradients, within 1e-2 over 12 steps. A GPU checkpoint resumes on the CPU."""
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert train.main(TINY + ["--device", "cpu", "--work", str(cpu), "--out", str(cpu / "out"), "--steps", "12"]) == 0
    assert train.main(TINY + ["--device", "cuda", "--work", str(gpu), "--out", str(gpu / "out"), "--steps", "12",
                              "--stop-after", "6"]) == 3
    assert train.main(TINY + ["--device", "cpu", "--work", str(gpu), "--out", str(gpu / "out"), "--steps", "12"]) == 0
    lc = json.loads((cpu / "out" / "training.json").read_text())["log"]
    lg = json.loads((gpu / "out" / "training.json").read_text())["log"]
    assert abs(lg[0]["train_loss"] - lc[0]["train_loss"]) < 1e-5
    np.testing.assert_allclose([e["train_loss"] for e in lg], [e["train_loss"] for e in lc], atol=1e-2)


def test_only_allowed_sources():
    assert not train.allowed({"source": "lambada:12"}) and not train.allowed({"source": "tinyshakespeare:3"})
    assert not train.allowed({"source": "wikitext-2:valid/1"})
    assert train.allowed({"source": "sotu:1790_george_washington_n"}) and train.allowed({"source": "moby-dick:chapter_1"})


def test_neox_arch_exports_a_pythia_layout_that_loads(tmp_path):
    out = tmp_path / "out"
    assert train.main(TINY + ["--arch", "neox", "--work", str(tmp_path / "w"), "--out", str(out), "--steps", "4"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPTNeoXForCausalLM"] and cfg["use_parallel_residual"] and not cfg["tie_word_embeddings"]
    assert "GPT-NeoX" in (out / "README.md").read_text()
    import transformers

    hf = transformers.GPTNeoXForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    model = ctxlookup.Model.load(out, tokenizer=False)
    assert model.cfg.parallel_attn_mlp and model.cfg.rotary_dim == 2  # a quarter of d_head 8
    toks = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (2, 20))
    with torch.no_grad():
        want = hf(torch.tensor(toks)).logits.numpy()
    assert np.abs(model(toks) - want).max() < ATOL
