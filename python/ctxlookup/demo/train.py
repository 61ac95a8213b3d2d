"""Train ctxlookup's bundled demo models: a byte-level BPE tokenizer and a small GPT-2 (or, with
``--arch neox``, a small Pythia-style GPT-NeoX), from a seed.

    python -m ctxlookup.demo.train --data ../shared/data/corpus --work runs/demo-train --seed 1234
    python -m ctxlookup.demo.train --arch neox --work runs/demo-neox --out python/ctxlookup/data/demo-neox

Reproducible: the tokenizer, the document order and every batch derive from ``--seed``; the run
checkpoints every ``--checkpoint-every`` steps (model, optimizer, RNG states, step) into
``--work`` and a rerun with the same command resumes exactly where it stopped. ``--device``: the
CPU, or a CUDA GPU when there is one (``auto``, the default); the initial weights and every batch
are the same on both, but the arithmetic differs, so a run is bit-for-bit reproducible on the
same kind of device (a checkpoint resumes on either). At the end it
writes a Hugging Face folder (``config.json``, ``model.safetensors`` in float16, tokenizer files,
``README.md`` model card with data, tokens seen, steps, final training and held-out loss, the
corpus's unigram entropy, the exact command and seed) to ``--out``.

Data: only sources that ``shared/data/README.md`` allows for a shipped model: every document of
``train.jsonl.gz`` except the GitHub-sourced ones (LAMBADA in ``novels``, ``drama``, ``wikipedia``).
Held-out loss uses the same sources from ``heldout-10k.jsonl.gz``. PyTorch is needed only here.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shlex
import sys
import time

import numpy as np

EXCLUDED_SOURCES = ("lambada", "tinyshakespeare", "wikitext-2")  # GitHub-sourced: tests only
EOT = "<|endoftext|>"


def allowed(meta: dict) -> bool:
    return meta.get("source", "").split(":")[0] not in EXCLUDED_SOURCES


def read_docs(path: str):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            if allowed(o.get("meta", {})):
                yield o["text"]


def train_tokenizer(texts, vocab_size: int, out_dir: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": EOT, "eos_token": EOT, "pad_token": EOT, "unk_token": EOT,
                   "tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False,
                   "model_max_length": 256}, f, indent=2)
    return tok


def encode_stream(tok, texts) -> np.ndarray:
    """Documents -> one uint16 stream, each document preceded by <|endoftext|> (id 0)."""
    eot = tok.token_to_id(EOT)
    parts = []
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == 512:
            parts += [np.array([eot] + e.ids, np.uint16) for e in tok.encode_batch(batch)]
            batch = []
    if batch:
        parts += [np.array([eot] + e.ids, np.uint16) for e in tok.encode_batch(batch)]
    return np.concatenate(parts)


def unigram_entropy(stream: np.ndarray, vocab: int) -> float:
    counts = np.bincount(stream, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("CTXLOOKUP_DATA", "../shared/data/corpus"))
    ap.add_argument("--work", default="runs/demo-train")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "demo-gpt2"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--arch", choices=("gpt2", "neox"), default="gpt2",
                    help="gpt2: tied embeddings, learned positions; neox: Pythia's layout (parallel "
                         "residual, rotary on a quarter of each head, untied unembedding, exact GELU)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="sequences per step")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: the GPU when torch sees one (CUDA), else the CPU")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: mixed precision (bfloat16 autocast, float32 weights and optimizer state), "
                         "~1.7x faster on CPUs with AVX512-BF16; held-out loss is always computed in float32")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--max-docs", type=int, default=None, help="for smoke tests only")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="exit after this step, as if killed (the next run resumes); for testing resume")
    args = ap.parse_args(argv)
    command = "python -m ctxlookup.demo.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device("cpu" if args.device == "cpu" or not torch.cuda.is_available() else "cuda")
    os.makedirs(args.work, exist_ok=True)
    tok_dir = os.path.join(args.work, "tokenizer")
    train_path, held_path = os.path.join(args.data, "train.jsonl.gz"), os.path.join(args.data, "heldout-10k.jsonl.gz")

    def docs(path):
        for i, t in enumerate(read_docs(path)):
            if args.max_docs is not None and i >= args.max_docs:
                break
            yield t

    from tokenizers import Tokenizer

    if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    else:
        tok = train_tokenizer(docs(train_path), args.vocab, tok_dir)
    streams = os.path.join(args.work, "streams.npz")
    if os.path.exists(streams):
        with np.load(streams) as z:
            train_ids, held_ids = z["train"], z["held"]
    else:
        train_ids, held_ids = encode_stream(tok, docs(train_path)), encode_stream(tok, docs(held_path))
        np.savez(streams, train=train_ids, held=held_ids)
    V = tok.get_vocab_size()
    if args.arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=args.n_ctx, n_embd=args.d_model, n_layer=args.layers,
                                      n_head=args.heads, n_inner=4 * args.d_model, activation_function="gelu_new",
                                      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      tie_word_embeddings=True)
        model_class = transformers.GPT2LMHeadModel
    else:
        cfg = transformers.GPTNeoXConfig(vocab_size=V, max_position_embeddings=args.n_ctx, hidden_size=args.d_model,
                                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                         intermediate_size=4 * args.d_model, hidden_act="gelu", rotary_pct=0.25,
                                         rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
                                         attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0)
        model_class = transformers.GPTNeoXForCausalLM
    torch.manual_seed(args.seed)
    model = model_class(cfg).to(device)  # initialised on the CPU's generator on any device
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(args.seed)
    step, log = 0, []
    ckpt = os.path.join(args.work, "checkpoint.pt")
    if os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=False, map_location="cpu")  # optimizer state follows the parameters
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, log = state["step"], state["log"]
        print(f"resumed at step {step}", flush=True)

    def lr_at(s):
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        frac = (s - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def batch_from(ids, n, g):
        starts = g.integers(0, len(ids) - args.n_ctx - 1, n)
        x = torch.from_numpy(np.stack([ids[s:s + args.n_ctx + 1] for s in starts]).astype(np.int64)).to(device)
        return x[:, :-1], x[:, 1:]

    @torch.no_grad()
    def held_loss(n_batches=20):
        model.eval()
        g = np.random.default_rng(args.seed + 1)  # the same held-out windows every time
        tot = 0.0
        for _ in range(n_batches):
            x, y = batch_from(held_ids, args.batch, g)
            tot += float(torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, V), y.reshape(-1)))
        model.train()
        return tot / n_batches

    def save_checkpoint():
        tmp = ckpt + ".incomplete"
        torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), rng=rng.bit_generator.state,
                        torch_rng=torch.get_rng_state(), step=step, log=log), tmp)
        os.replace(tmp, ckpt)

    model.train()
    t0, step0 = time.time(), step  # the rate counts this process's steps only, not those before a resume
    while step < args.steps:
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(step)
        x, y = batch_from(train_ids, args.batch, rng)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        entry = {"step": step, "train_loss": loss.item()}
        if step % args.eval_every == 0 or step == args.steps:
            entry["held_loss"] = held_loss()
        log.append(entry)
        if step % 10 == 0 or "held_loss" in entry:
            rate = (step - step0) * args.batch * args.n_ctx / max(time.time() - t0, 1e-9)
            print(f"step {step}/{args.steps} loss {entry['train_loss']:.3f}"
                  + (f" held {entry['held_loss']:.3f}" if "held_loss" in entry else "") + f" ({rate:.0f} tok/s)", flush=True)
        if step % args.checkpoint_every == 0 or step == args.steps:
            save_checkpoint()
        if args.stop_after is not None and step >= args.stop_after:
            print(f"stopping after step {step} (--stop-after)", flush=True)
            return 3

    # ---- export: Hugging Face folder, float16, with tokenizer and model card ----
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    model.cpu().half().save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(tok_dir, f), "rb") as src, open(os.path.join(out, f), "wb") as dst:
            dst.write(src.read())
    train_recent = float(np.mean([e["train_loss"] for e in log[-50:]]))
    held = next(e["held_loss"] for e in reversed(log) if "held_loss" in e)
    card = dict(seed=args.seed, command=command, steps=step, tokens_seen=step * args.batch * args.n_ctx,
                train_tokens=int(len(train_ids)), heldout_tokens=int(len(held_ids)),
                final_train_loss=train_recent, final_heldout_loss=held,
                unigram_entropy_heldout=unigram_entropy(held_ids, V), vocab_size=V,
                arch=args.arch, architecture=ARCH_TEXT[args.arch], title=TITLE[args.arch], precision=args.precision,
                device=_device_name(device),
                precision_text=PRECISION_TEXT[args.precision],
                config=dict(n_layer=args.layers, n_embd=args.d_model, n_head=args.heads, n_positions=args.n_ctx),
                excluded_sources=list(EXCLUDED_SOURCES), torch=torch.__version__, transformers=transformers.__version__)
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(dict(card, log=log), f, indent=1)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(MODEL_CARD.format(**card, **card["config"]))
    print(f"wrote {out}", flush=True)
    return 0


def _device_name(device) -> str:
    """The device in words: the GPU's name, or "CPU (n threads)"."""
    import torch

    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} threads)"


PRECISION_TEXT = {"fp32": "float32", "bf16": "bfloat16 mixed precision (float32 weights)"}
TITLE = {"gpt2": "GPT-2", "neox": "GPT-NeoX (Pythia layout)"}
ARCH_TEXT = {"gpt2": "GPT-2 (learned positions, gelu_new, tied embeddings)",
             "neox": "GPT-NeoX as in Pythia (parallel attention and MLP, rotary embeddings on a quarter of "
                     "each head, exact GELU, untied unembedding)"}

MODEL_CARD = """# ctxlookup demo {title}

A small {title} language model trained from scratch so that ctxlookup's demo runs the whole
method offline. Not a general-purpose model.

- Architecture: {architecture}; {n_layer} layers, d_model {n_embd}, {n_head} heads, d_mlp
  4 x d_model, context {n_positions}, byte-level BPE vocabulary of {vocab_size} (trained here).
- Data: `train.jsonl.gz` of ctxlookup's development corpus (State of the Union addresses,
  SpamAssassin e-mails, Moby-Dick, the King James Bible, fortunes, Python and Linux documentation,
  man pages, Python standard-library code), without the GitHub-sourced parts ({excluded_sources}).
  {train_tokens} training tokens; held-out: the same sources in `heldout-10k.jsonl.gz`
  ({heldout_tokens} tokens). See `DATA_NOTICE.md` for sources and licences.
- Training: {steps} steps, {tokens_seen} tokens seen, AdamW, cosine schedule, {precision_text}, seed {seed},
  on {device} (the last sitting's device, when resumed).
- Final training loss (mean of the last 50 steps): {final_train_loss:.3f} nats/token.
- Final held-out loss: {final_heldout_loss:.3f} nats/token, against a unigram entropy of the
  held-out tokens of {unigram_entropy_heldout:.3f} nats/token.
- Reproduce: `{command}` (PyTorch {torch}, transformers {transformers}).
"""

if __name__ == "__main__":
    sys.exit(main())
