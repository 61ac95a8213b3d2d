"""The model: load a Hugging Face GPT-2 / GPT-NeoX (Pythia) checkpoint and run it in C.

Hook names, weight names and shapes follow TransformerLens, so its users feel at home::

    model = ctxlookup.Model.load("path/to/gpt2")
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
    cache["blocks.3.mlp.hook_post"]          # (batch, pos, d_mlp) float32

Batches are right-padded 2-D int arrays with ``lengths`` (or an ``attention_mask``), or a list of
1-D arrays. Only real tokens are computed; activations and logits at padded positions are 0
(``hook_attn_scores``: -inf outside the causal window). Each row gives exactly what it gives alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core
from .batching import with_bos
from .cache import ActivationCache, get_act_name

__all__ = ["Model", "Config", "ActivationCache", "HookPoint", "get_act_name"]

@dataclass(frozen=True)
class HookPoint:
    """What a ``run_with_hooks`` callback receives as ``hook``: its ``name`` and ``layer()``."""

    name: str

    def layer(self) -> Optional[int]:
        return int(self.name.split(".")[1]) if self.name.startswith("blocks.") else None


@dataclass(frozen=True)
class Config:
    """The model's configuration in TransformerLens names (``model.cfg``)."""

    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str
    positional_embedding_type: str
    rotary_dim: int
    rotary_base: float
    parallel_attn_mlp: bool
    eps: float
    normalization_type: str
    tied_embeddings: bool
    attn_bias: bool
    bos_token_id: Optional[int]
    eos_token_id: Optional[int]
    pad_token_id: Optional[int]
    fold_ln: bool
    center_writing_weights: bool
    center_unembed: bool
    fold_value_biases: bool
    # TransformerLens's count: the attention (W_Q, W_K, W_V, W_O) and MLP (W_in, W_out) weight
    # matrices only, n_layers * (4 * d_model * n_heads * d_head + 2 * d_model * d_mlp)
    n_params: int = 0
    d_vocab_out: int = 0
    model_name: str = ""
    dtype: str = "float32"  # of every weight and activation, whatever the checkpoint stores
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    _DERIVED = ("n_params", "d_vocab_out", "model_name", "dtype")

    @classmethod
    def _from_core(cls, d: dict, model_name: str = "") -> "Config":
        names = set(cls.__dataclass_fields__) - {"extra"} - set(cls._DERIVED)
        kw = {k: d[k] for k in names}
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kw[k] = None if kw[k] < 0 else kw[k]
        n_params = kw["n_layers"] * (4 * kw["d_model"] * kw["n_heads"] * kw["d_head"] + 2 * kw["d_model"] * kw["d_mlp"])
        return cls(**kw, n_params=n_params, d_vocab_out=kw["d_vocab"], model_name=model_name, dtype="float32",
                   extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        d.update(self.extra)
        return d


TokensLike = Union[np.ndarray, Sequence[np.ndarray], Sequence[Sequence[int]], str, Sequence[str]]

_WEIGHTS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "b_in",
            "W_out", "b_out", "W_U", "b_U", "ln1_w", "ln1_b", "ln2_w", "ln2_b", "ln_final_w", "ln_final_b")


class Model:
    """A transformer whose forward pass runs in ctxlookup's C core.

    Use :meth:`load` (a local folder) or :meth:`from_pretrained` (also a Hugging Face Hub name) to make
    one. Weights are read-only NumPy views in TransformerLens names and shapes: ``model.W_Q`` is
    ``(n_layers, n_heads, d_model, d_head)``.
    """

    def __init__(self, core: "_core.Model", tokenizer=None, path: Optional[str] = None, name: Optional[str] = None):
        self._core = core
        if name is None and path is not None:
            name = os.path.basename(os.path.normpath(path))
        self.cfg = Config._from_core(core.config(), model_name=name or "")
        self.tokenizer = tokenizer
        self.path = path
        self.hook_names: list = core.hook_names()
        self._hook_set = frozenset(self.hook_names)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, fold_ln: bool = False, center_writing_weights: bool = False,
             center_unembed: bool = False, fold_value_biases: bool = False, tokenizer: bool = True,
             model_name: Optional[str] = None, mmap: bool = False) -> "Model":
        """Load ``config.json`` + ``model.safetensors`` (or sharded, with its index) from a folder.

        Weight processing follows TransformerLens and is off by default, so raw numbers equal
        Hugging Face's: ``fold_ln`` folds each LayerNorm's weight and bias into the next layer's
        reading weights (and centres them), ``center_writing_weights`` makes every write into the
        residual stream mean-zero, ``center_unembed`` makes ``W_U``'s rows mean-zero (logits change
        by a per-position constant), ``fold_value_biases`` moves ``b_V`` into ``b_O``.
        Tokenizer files in the folder (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``) are
        loaded as ``model.tokenizer`` when ``tokenizer`` is true. ``model_name`` (``cfg.model_name``)
        defaults to the folder's name.
        Every weight is copied into memory owned by the model and the files are closed, so
        nothing done to them afterwards reaches the model. ``mmap=True`` keeps float32 embeddings
        and unembedding in the files' read-only memory map instead (less private memory); the
        model then refuses to run (OSError) once a file has been modified, and a file truncated
        during a forward pass can still crash the process.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a folder (expected config.json and model.safetensors in it)")
        core = _core.Model(path, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                           center_unembed=center_unembed, fold_value_biases=fold_value_biases, mmap=mmap)
        tok = None
        if tokenizer:
            tok = _load_tokenizer(path)
        return cls(core, tokenizer=tok, path=path, name=model_name)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, os.PathLike], revision: str = "main",
                        cache_dir: Union[str, os.PathLike, None] = None, *, token: Union[str, bool, None] = None,
                        local_files_only: bool = False, progress: bool = True, **load_options) -> "Model":
        """A model by name or path, downloaded from the Hugging Face Hub if needed.

        ``name_or_path`` is, in this order: a local checkpoint folder; ``"demo"`` (the small GPT-2
        bundled with the package) or ``"demo-neox"`` (its GPT-NeoX sibling in Pythia's layout,
        trained the same way); a TransformerLens alias (``"gpt2"``, ``"gpt2-small"``,
        ``"gpt2-medium"``, ``"gpt2-large"``, ``"gpt2-xl"``, ``"pythia-70m"`` ... ``"pythia-12b"`` and
        their ``-deduped`` forms; see ``ctxlookup.hub.ALIASES``); or any Hub repository id
        (``"EleutherAI/pythia-160m"``). ``revision``: a branch, tag or commit hash (Pythia's training
        checkpoints are branches: ``revision="step3000"``).

        Files (``config.json``, ``model.safetensors`` or its index and shards, and the tokenizer
        files that exist) go into the Hugging Face cache with ``huggingface_hub``'s exact layout:
        ``cache_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
        ``~/.cache/huggingface/hub``. A cache filled by ``transformers`` is reused with no network
        call when it holds everything, and what ctxlookup downloads is used by ``transformers``.
        ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``: the cache only. ``HF_ENDPOINT``: a
        mirror. ``token`` (default ``HF_TOKEN`` or the saved login): for gated and private
        repositories. ``progress``: a tqdm bar with bytes/s.

        Downloads run in the C core (libcurl) with the GIL released, several files at once, retried
        with backoff on 429 / 5xx / dropped connections / stalls, resumed from the byte offset with
        HTTP Range after an interruption (Ctrl-C included: the next call resumes), and checked
        against the Hub's size and sha256 before a file appears in the cache. Repositories with only
        ``pytorch_model.bin`` are refused with a message (ctxlookup reads safetensors only).

        Other keyword arguments (``fold_ln``, ``center_writing_weights``, ``center_unembed``,
        ``fold_value_biases``, ``tokenizer``, ``mmap``) are :meth:`load`'s. Errors (see ``ctxlookup.hub``):
        ``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``EntryNotFoundError`` (all
        FileNotFoundError), ``GatedRepoError`` (PermissionError), ``OfflineError``,
        ``DownloadError``, ``HashMismatchError``, ``DiskFullError``; each says what to do.
        """
        name = os.fspath(name_or_path)
        if os.path.isdir(name):
            return cls.load(name, **load_options)
        if name in DEMO_MODELS:
            path = demo_model_path(name)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"the demo model is not bundled in this installation ({path})")
            return cls.load(path, **{"model_name": name, **load_options})
        if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:  # a path, not a repo id
            raise FileNotFoundError(f"{name}: no such checkpoint folder (expected config.json and model.safetensors "
                                    f"in it)")
        from . import hub

        try:
            repo_id = hub.resolve_name(name)
        except ValueError as e:
            raise FileNotFoundError(str(e)) from None
        folder = hub.download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                              local_files_only=local_files_only, progress=progress)
        return cls.load(folder, **{"model_name": repo_id.split("/")[-1], **load_options})

    # ------------------------------------------------------------------ weights
    def __getattr__(self, name):
        if name in _WEIGHTS:
            try:
                return self._core.weight(name)
            except KeyError as e:
                raise AttributeError(str(e)) from None
        raise AttributeError(f"'Model' object has no attribute '{name}'")

    def weight(self, name: str) -> np.ndarray:
        """The weight ``name`` (TransformerLens name) as a read-only, zero-copy float32 view."""
        return self._core.weight(name)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Model({c.arch}, n_layers={c.n_layers}, d_model={c.d_model}, n_heads={c.n_heads}, "
                f"d_mlp={c.d_mlp}, d_vocab={c.d_vocab}, n_ctx={c.n_ctx}, path={self.path!r})")

    # ------------------------------------------------------------------ tokens
    def _tokens_from_text(self, texts, prepend_bos: bool = True):
        if self.tokenizer is None:
            raise ValueError("strings were given but this model has no tokenizer (no tokenizer files in its folder)")
        return self.to_tokens(texts, prepend_bos=prepend_bos, return_lengths=True)

    def _pack(self, tokens: TokensLike, lengths=None, attention_mask=None):
        """-> (packed int32 tokens, int32 lengths, T_pad)."""
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
            tokens, lengths = self._tokens_from_text(tokens)
        if isinstance(tokens, (list, tuple)) and not (tokens and np.isscalar(tokens[0])):
            if lengths is not None or attention_mask is not None:
                raise ValueError("lengths / attention_mask are only for a padded 2-D array of tokens")
            if len(tokens) == 0:
                raise ValueError("empty batch: at least one sequence is needed")
            rows = [_int_array(t, f"tokens[{i}]", int32=False) for i, t in enumerate(tokens)]
            for i, r in enumerate(rows):
                if r.ndim != 1:
                    raise ValueError(f"tokens[{i}] must be 1-D, got shape {r.shape}")
            lens = np.array([len(r) for r in rows], dtype=np.int32)
            packed = np.concatenate(rows)
            self._check_tokens(packed, lens)
            return packed.astype(np.int32, copy=False), lens, int(lens.max())
        arr = _int_array(tokens, "tokens", int32=False)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"tokens must be (batch, pos), got shape {arr.shape}")
        B, T = arr.shape
        if B == 0:
            raise ValueError("empty batch: at least one sequence is needed")
        if attention_mask is not None:
            if lengths is not None:
                raise ValueError("give lengths or attention_mask, not both")
            mask = np.asarray(attention_mask)
            if mask.shape != arr.shape:
                raise ValueError(f"attention_mask has shape {mask.shape}, tokens have {arr.shape}")
            mask = mask.astype(bool)
            lens = mask.sum(axis=1)
            right = np.arange(T)[None, :] < lens[:, None]
            if not np.array_equal(mask, right):
                raise ValueError("attention_mask must be right-padded (ones, then zeros) in every row")
            lengths = lens
        if lengths is None:
            lengths = np.full(B, T, dtype=np.int32)
        lengths = _int_array(lengths, "lengths", "integers")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
        if (lengths < 1).any() or (lengths > T).any():
            bad = int(np.nonzero((lengths < 1) | (lengths > T))[0][0])
            raise ValueError(f"lengths[{bad}] = {int(lengths[bad])} is outside [1, {T}]")
        lengths = lengths.astype(np.int32)
        if (lengths == T).all():
            packed = arr.reshape(-1)
        else:
            packed = np.concatenate([arr[b, :lengths[b]] for b in range(B)])
        self._check_tokens(packed, lengths)
        return np.ascontiguousarray(packed, dtype=np.int32), lengths, T

    def _check_tokens(self, packed: np.ndarray, lengths: np.ndarray) -> None:
        """Every real token id in [0, d_vocab), checked before the cast to int32."""
        V = self.cfg.d_vocab
        bad = (packed < 0) | (packed >= V)
        if bad.any():
            i = int(np.argmax(bad))
            b = int(np.searchsorted(np.cumsum(lengths), i, side="right"))
            t = i - int(np.sum(lengths[:b]))
            raise ValueError(f"token id {int(packed[i])} at sequence {b}, position {t} is outside the vocabulary "
                             f"[0, {V})")

    def _pos(self, pos, lengths):
        """-> (int32 (B, P) array or None, squeeze flag)."""
        if pos is None:
            return None, False
        B = len(lengths)
        if isinstance(pos, str):
            if pos != "last":
                raise ValueError(f"pos must be None, 'last', an int or an array, got '{pos}'")
            return (lengths - 1).astype(np.int32)[:, None], True
        if np.ndim(pos) == 0:
            v = _as_int("pos", pos)
            arr = np.where(v < 0, lengths.astype(np.int64) + v, v)[:, None]
            squeeze = True
        else:
            p = _int_array(pos, "pos", "integers", int32=False)
            if p.ndim == 1:
                if p.shape[0] != B:
                    raise ValueError(f"pos has {p.shape[0]} entries for a batch of {B}")
                arr, squeeze = p[:, None], True
            elif p.ndim == 2 and p.shape[0] == B:
                arr, squeeze = p, False
            else:
                raise ValueError(f"pos must be (batch,) or (batch, n_positions); got shape {p.shape}")
        bad = (arr < 0) | (arr >= lengths[:, None])
        if bad.any():
            b, j = (int(k) for k in np.argwhere(bad)[0])
            raise ValueError(f"pos[{b}][{j}] = {int(arr[b, j])} is outside sequence {b}'s {int(lengths[b])} tokens")
        return arr.astype(np.int32), squeeze

    def _names(self, names_filter) -> list:
        if names_filter is None:
            return list(self.hook_names)
        if isinstance(names_filter, str):
            names = [names_filter]
        elif callable(names_filter):
            return [n for n in self.hook_names if names_filter(n)]
        else:
            names = list(names_filter)
        for n in names:
            if n not in self._hook_set:
                raise ValueError(f"unknown hook name '{n}' (see model.hook_names)")
        return names

    # ------------------------------------------------------------------ running
    def __call__(self, tokens: TokensLike, return_type: Optional[str] = "logits", loss_per_token: bool = False,
                 lengths=None, attention_mask=None, logits_pos: Optional[str] = None, past_kv_cache=None):
        """Run the model, as TransformerLens's ``forward``. ``return_type``: ``"logits"``
        ``(batch, pos, d_vocab)`` float32; ``"loss"``: the mean cross-entropy of predicting token
        t+1 at position t over real tokens (``loss_per_token=True``: ``(batch, pos - 1)``, 0 where
        the target is padding); ``"both"``: ``(logits, loss)``; None: runs and returns None.
        ``logits_pos="last"``: only each row's last real position, ``(batch, d_vocab)``.

        Padding: a right-padded batch with ``lengths`` / ``attention_mask`` (or a list of texts) is
        computed on real tokens only and the loss skips padding, as TransformerLens's loss with an
        attention mask. (TransformerLens itself runs a right-padded batch of texts without a mask,
        so its loss there also counts predictions of pad tokens.)

        ``past_kv_cache`` (from :meth:`kv_cache`): the tokens continue each row's cached positions
        (positions, rotary and attention go on from there) and only they are computed; their keys
        and values are added to the cache. The loss then covers the new tokens only.
        """
        _check_return_type(return_type, logits_pos)
        packed, lens, T = self._pack(tokens, lengths, attention_mask)
        logits, _ = self._core.forward(packed, lens, T, logits=return_type is not None,
                                       logits_last=_logits_last(logits_pos), kv=past_kv_cache)
        return _output(logits, return_type, loss_per_token, packed, lens)

    forward = __call__

    def kv_cache(self, batch_size: int = 1, capacity: Optional[int] = None) -> "_core.KVCache":
        """An empty key-value cache for ``model(tokens, past_kv_cache=cache)``: ``batch_size``
        sequences of up to ``capacity`` positions each (default and most: ``n_ctx``); float32, in
        the C core, ``n_layers * batch_size * capacity * d_model * 8`` bytes. ``cache.lengths``:
        the positions each sequence holds."""
        return self._core.kv_cache(int(batch_size), -1 if capacity is None else int(capacity))

    def generate(self, input: Union[str, Sequence[str], np.ndarray] = "", max_new_tokens: int = 10,
                 stop_at_eos: bool = True, eos_token_id: Union[int, Sequence[int], None] = None, do_sample: bool = True,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, temperature: float = 1.0,
                 freq_penalty: float = 0.0, use_past_kv_cache: bool = True, prepend_bos: bool = True,
                 return_type: Optional[str] = "input", verbose: bool = False, seed: Optional[int] = None):
        """Continue text or tokens, as TransformerLens's ``generate``.

        ``input``: a string, a list of strings (left-padded with the pad id in the output, as
        TransformerLens), or token ids ``(n,)`` / ``(batch, n)`` (every id real). Each step
        samples from the last position's logits: greedy (argmax) with ``do_sample=False`` or
        ``temperature=0``; else softmax(logits / temperature) restricted to the ``top_k`` most
        likely tokens or to the smallest set whose probability reaches ``top_p`` (TransformerLens
        applies ``top_k`` first and ignores ``top_p`` when both are given), with ``freq_penalty``
        times each token's count so far subtracted; ``seed`` makes sampling reproducible (NumPy's
        PCG64). ``stop_at_eos``: a row that produced ``eos_token_id`` (default: the tokenizer's
        or config's; an int or a list) gets it from then on, and generation ends when every row has.

        ``use_past_kv_cache`` keeps each layer's keys and values in the C core so a new token
        costs one position; False recomputes the whole sequence each step (same tokens; for
        checking). ``return_type``: ``"input"`` (text for text input, tokens for tokens),
        ``"str"`` (special tokens dropped) or ``"tokens"``: the input followed by the new tokens,
        ``(batch, prompt + new)`` int32. ``verbose``: a progress bar.
        """
        if return_type not in ("input", "str", "tokens"):
            raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if freq_penalty < 0:
            raise ValueError(f"freq_penalty must be non-negative, got {freq_penalty}")
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            kind = "str" if isinstance(input, str) else "list"
            prompt, lens = self.to_tokens(input, prepend_bos=prepend_bos, truncate=False, return_lengths=True,
                                          padding_side="left")
            rows = [prompt[b, prompt.shape[1] - n:] for b, n in enumerate(lens)]
        else:
            kind = "tokens"
            prompt = _int_array(input, "generate: input")
            if prompt.ndim == 1:
                prompt = prompt[None]
            if prompt.ndim != 2 or prompt.shape[1] == 0:
                raise ValueError(f"generate: token input must be (n,) or (batch, n) with n >= 1, got shape {prompt.shape}")
            prompt = prompt.astype(np.int32)
            rows = list(prompt)
        if return_type == "input":
            return_type = "tokens" if kind == "tokens" else "str"
        stop_ids: list = []
        if stop_at_eos:
            eos = self.eos_token_id if eos_token_id is None else eos_token_id
            if eos is None:
                raise ValueError("stop_at_eos=True needs eos_token_id: neither the tokenizer nor config.json names one")
            stop_ids = [int(eos)] if np.isscalar(eos) else [int(e) for e in eos]
        pad_id = stop_ids[0] if stop_ids else 0
        if stop_at_eos and self.tokenizer is not None and getattr(self.tokenizer, "eos_token_id", None) in stop_ids:
            pad_id = self.tokenizer.eos_token_id
        B = len(rows)
        longest = max(len(r) for r in rows) + max_new_tokens
        if longest > self.cfg.n_ctx:
            raise ValueError(f"a prompt of {longest - max_new_tokens} tokens plus max_new_tokens={max_new_tokens} "
                             f"exceeds the model's context n_ctx = {self.cfg.n_ctx}")
        rng = np.random.default_rng(seed)
        seqs = [np.asarray(r, np.int32) for r in rows]
        finished = np.zeros(B, bool)
        new = np.zeros((B, 0), np.int32)
        kv = self.kv_cache(B, capacity=max(1, longest)) if use_past_kv_cache else None
        step_tokens, step_lens = np.concatenate(seqs), np.array([len(r) for r in seqs], np.int32)
        bar = None
        if verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_new_tokens, desc="generate", unit="tok")
        try:
            for _ in range(max_new_tokens):
                if kv is not None:
                    logits, _ = self._core.forward(step_tokens, step_lens, int(step_lens.max()), kv=kv, logits_last=True)
                else:
                    full = [np.concatenate([seqs[b], new[b]]) for b in range(B)]
                    logits = self.forward(full, logits_pos="last")
                history = [np.concatenate([seqs[b], new[b]]) for b in range(B)] if freq_penalty and do_sample else None
                if do_sample and temperature != 0:
                    nxt = sample_logits(logits, top_k=top_k, top_p=top_p, temperature=temperature,
                                        freq_penalty=freq_penalty, tokens=history, rng=rng)
                else:
                    nxt = logits.argmax(-1).astype(np.int32)
                if stop_ids:
                    nxt[finished] = pad_id
                    finished |= np.isin(nxt, stop_ids)
                new = np.concatenate([new, nxt[:, None]], axis=1)
                step_tokens, step_lens = nxt, np.ones(B, np.int32)
                if bar is not None:
                    bar.update(1)
                if stop_ids and finished.all():
                    break
        finally:
            if bar is not None:
                bar.close()
        out = np.concatenate([prompt.astype(np.int32), new], axis=1)
        if return_type == "tokens":
            return out
        tok = self.require_tokenizer()
        texts = [tok.decode(r, skip_special_tokens=True) for r in out]
        return texts[0] if kind == "str" or len(texts) == 1 else texts

    def run_with_cache(self, tokens: TokensLike, lengths=None, attention_mask=None, names_filter=None,
                       stop_at_layer: Optional[int] = None, pos=None, return_logits: bool = True,
                       return_type: Optional[str] = "logits", loss_per_token: bool = False, **interventions):
        """Run and keep activations: ``(logits, cache)``, the cache an :class:`ActivationCache`.
        ``return_type`` ("logits", "loss", "both", None) and ``loss_per_token`` choose the first
        element as in :meth:`__call__`.

        ``names_filter``: None (every hook), a name, a list of names, or a predicate on names.
        ``stop_at_layer=k`` runs blocks ``0..k-1`` only (logits are then None).
        ``pos`` keeps only some positions: ``"last"`` (each row's last real token), an int
        (negative counts from each row's end), an array ``(batch,)`` (the pos axis is dropped),
        or ``(batch, n)`` (kept). Interventions as in :meth:`run_with_hooks` may be given too.
        """
        return self.run_with_hooks(tokens, lengths=lengths, attention_mask=attention_mask, stop_at_layer=stop_at_layer,
                                   return_logits=return_logits, cache=names_filter if names_filter is not None else
                                   (lambda n: True), pos=pos, return_type=return_type, loss_per_token=loss_per_token,
                                   **interventions)

    def run_with_hooks(self, tokens: TokensLike, fwd_hooks: Iterable = (), lengths=None, attention_mask=None,
                       stop_at_layer: Optional[int] = None, return_logits: bool = True, *,
                       ablate_heads: Optional[Iterable] = None, head_ablation: str = "zero",
                       mean_z: Optional[np.ndarray] = None, set_neurons: Optional[Iterable] = None,
                       patch: Optional[Mapping[str, np.ndarray]] = None, cache=None, pos=None,
                       logits_pos: Optional[str] = None, return_type: Optional[str] = "logits",
                       loss_per_token: bool = False):
        """Run with interventions; returns logits, or ``(logits, cache)`` when ``cache`` names hooks.
        ``return_type`` ("logits", "loss", "both", None) and ``loss_per_token`` as in :meth:`__call__`.

        ``fwd_hooks``: ``[(name or predicate, fn)]``; ``fn(activation, hook)`` sees the activation
        padded, ``(batch, pos, ...)``, and may modify it in place or return a replacement.
        Built-in, with no Python in the loop:
        ``ablate_heads=[(layer, head), ...]`` with ``head_ablation="zero"`` or ``"mean"``
        (``mean_z``: ``(n_layers, n_heads, d_head)`` mean of ``hook_z``) replaces the heads' ``z``;
        ``set_neurons=[(layer, neuron, value), ...]`` sets ``mlp.hook_post``;
        ``patch={hook_name: array}`` replaces an activation (activation patching).
        ``logits_pos="last"`` computes logits at each row's last real position only: ``(batch, d_vocab)``.
        """
        _check_return_type(return_type, logits_pos)
        packed, lens, T = self._pack(tokens, lengths, attention_mask)
        c = self.cfg
        stop = c.n_layers if stop_at_layer is None else _as_int("stop_at_layer", stop_at_layer)
        if stop < 0:
            stop += c.n_layers
        if not 0 <= stop <= c.n_layers:
            raise ValueError(f"stop_at_layer {stop_at_layer} is outside [0, {c.n_layers}]")
        if return_type in ("loss", "both") and stop != c.n_layers:
            raise ValueError(f"return_type={return_type!r} needs the whole model; stop_at_layer={stop_at_layer} stops early")
        want_logits = return_logits and return_type is not None and stop == c.n_layers
        specs: dict = {}

        def spec(name):
            if name not in self._hook_set:
                raise ValueError(f"unknown hook name '{name}' (see model.hook_names)")
            return specs.setdefault(name, {})

        for name_or_pred, fn in fwd_hooks:
            names = [n for n in self.hook_names if name_or_pred(n)] if callable(name_or_pred) else [name_or_pred]
            for n in names:
                s = spec(n)
                s["callback"] = _chain(s.get("callback"), fn)
        if ablate_heads:
            if head_ablation not in ("zero", "mean"):
                raise ValueError(f"head_ablation must be 'zero' or 'mean', got '{head_ablation}'")
            if head_ablation == "mean":
                if mean_z is None:
                    raise ValueError("head_ablation='mean' needs mean_z (n_layers, n_heads, d_head)")
                mean_z = np.asarray(mean_z, dtype=np.float32)
                if mean_z.shape != (c.n_layers, c.n_heads, c.d_head):
                    raise ValueError(f"mean_z has shape {mean_z.shape}, expected {(c.n_layers, c.n_heads, c.d_head)}")
            for layer, head in ablate_heads:
                _check_range("layer", layer, c.n_layers)
                _check_range("head", head, c.n_heads)
                s = spec(f"blocks.{layer}.attn.hook_z")
                mask = s.setdefault("ablate_heads", np.zeros(c.n_heads, np.uint8))
                mask[head] = 1
                if head_ablation == "mean":
                    s["ablate_values"] = mean_z[layer]
        if set_neurons:
            per_layer: dict = {}
            for layer, neuron, value in set_neurons:
                _check_range("layer", layer, c.n_layers)
                _check_range("neuron", neuron, c.d_mlp)
                per_layer.setdefault(int(layer), []).append((int(neuron), float(value)))
            for layer, items in per_layer.items():
                s = spec(f"blocks.{layer}.mlp.hook_post")
                s["set_idx"] = np.array([i for i, _ in items], np.int32)
                s["set_val"] = np.array([v for _, v in items], np.float32)
        for name, arr in (patch or {}).items():
            spec(name)["patch"] = arr
        cache_names = [] if cache is None else self._names(cache)
        for n in cache_names:
            spec(n)["capture"] = True
        pos_arr, squeeze = self._pos(pos, lens)
        for n, s in specs.items():
            if "callback" in s:
                user = s["callback"]
                s["callback"] = lambda act, name, _f=user: _f(act, HookPoint(name))
        logits, raw = self._core.forward(packed, lens, T, logits=want_logits, stop_at_layer=stop,
                                         hooks=specs or None, pos=pos_arr, logits_last=_logits_last(logits_pos))
        if want_logits:
            logits = _output(logits, return_type, loss_per_token, packed, lens)
        if cache is None:
            return logits
        out = ActivationCache(model=self)
        for n in cache_names:
            a = raw[n]
            if squeeze:
                a = a[:, :, 0] if ("hook_attn_scores" in n or "hook_pattern" in n) else a[:, 0]
            out[n] = a
        return logits, out

    # ------------------------------------------------------------------ tokenizer conveniences
    def to_tokens(self, input, prepend_bos: bool = True, padding_side: str = "right", truncate: bool = True, *,
                  return_lengths: bool = False):
        """Text(s) -> ``(batch, pos)`` int32 token ids, as TransformerLens's ``to_tokens``.

        ``input``: a string (gives shape ``(1, n)``) or a list of strings. ``prepend_bos`` puts the
        BOS id first; ``padding_side`` ("right" or "left") is where shorter rows get the pad id;
        rows are cut to ``n_ctx`` when ``truncate``. ``return_lengths=True`` returns
        ``(tokens, lengths)`` instead, the real-token count of each row, which ``model(tokens,
        lengths=lengths)`` and ``run_with_cache`` take for right-padded batches.
        """
        tok = self.require_tokenizer()
        if isinstance(input, str):
            texts = [input]
        elif isinstance(input, (list, tuple)) and all(isinstance(t, str) for t in input):
            texts = list(input)
            if not texts:
                raise ValueError("to_tokens: input is an empty list; give at least one string")
        else:
            what = type(input).__name__
            if isinstance(input, (list, tuple)):
                bad = next(t for t in input if not isinstance(t, str))
                what = f"a list holding {type(bad).__name__}"
            raise TypeError(f"to_tokens: input must be a string or a list of strings, got {what}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"to_tokens: padding_side must be 'right' or 'left', got {padding_side!r}")
        rows = with_bos(self, tok.encode_batch(texts), prepend_bos)
        if truncate:
            rows = [r[: self.cfg.n_ctx] for r in rows]
        lens = np.array([len(r) for r in rows], np.int32)
        if (lens == 0).any():
            raise ValueError(f"text {int(np.nonzero(lens == 0)[0][0])} tokenizes to nothing")
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        T = int(lens.max())
        out = np.full((len(rows), T), pad, np.int32)
        for i, r in enumerate(rows):
            if padding_side == "right":
                out[i, : len(r)] = r
            else:
                out[i, T - len(r):] = r
        return (out, lens) if return_lengths else out

    def to_str_tokens(self, input, prepend_bos: bool = True, padding_side: str = "right"):
        """Text or token ids -> token strings (each token decoded alone), as TransformerLens.

        A string or 1-D ids give one list; a list of strings, a list of 1-D id arrays, or a 2-D
        array with more than one row give one list per row (a list of strings is tokenized row by
        row, so no padding appears). A ``(1, n)`` array gives one flat list, as TransformerLens.
        """
        tok = self.require_tokenizer()
        if isinstance(input, str):
            return tok.to_str_tokens(self.to_tokens(input, prepend_bos=prepend_bos)[0])
        if isinstance(input, (list, tuple)) and input and all(isinstance(t, str) for t in input):
            return [self.to_str_tokens(t, prepend_bos=prepend_bos) for t in input]
        if isinstance(input, (list, tuple)) and input and not np.isscalar(input[0]):
            return [self.to_str_tokens(t) for t in input]
        a = _int_array(input, "to_str_tokens: input")
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 0:
            a = a.reshape(1)
        if a.ndim == 2:
            return [tok.to_str_tokens(r) for r in a]
        if a.ndim != 1:
            raise ValueError(f"to_str_tokens: token ids must be 1-D or 2-D, got shape {a.shape}")
        return tok.to_str_tokens(a)

    def to_single_token(self, s: str) -> int:
        """The id of ``s`` if it is exactly one token, else ValueError."""
        ids = self.require_tokenizer().encode(s)
        if len(ids) != 1:
            raise ValueError(f"{s!r} is {len(ids)} tokens, not one")
        return int(ids[0])

    def to_string(self, ids) -> Union[str, list]:
        """Token ids -> text (a 2-D array gives a list of texts)."""
        tok = self.require_tokenizer()
        a = np.asarray(ids)
        if a.ndim == 2:
            return [tok.decode(r) for r in a]
        return tok.decode(a)

    @property
    def bos_token_id(self) -> Optional[int]:
        t = getattr(self.tokenizer, "bos_token_id", None)
        return t if t is not None else self.cfg.bos_token_id

    @property
    def eos_token_id(self) -> Optional[int]:
        t = getattr(self.tokenizer, "eos_token_id", None)
        return t if t is not None else self.cfg.eos_token_id

    @property
    def pad_token_id(self) -> Optional[int]:
        t = getattr(self.tokenizer, "pad_token_id", None)
        if t is not None:
            return t
        return self.cfg.pad_token_id if self.cfg.pad_token_id is not None else self.eos_token_id

    @property
    def core(self) -> "_core.Model":
        """The C core's model, for the core's batched entry points (``_core.scan_batch``,
        ``_core.attribute_batch``)."""
        return self._core

    def require_tokenizer(self):
        """The model's tokenizer; ValueError when its folder has none."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (no tokenizer files in its folder)")
        return self.tokenizer


DEMO_MODELS = {"demo": "demo-gpt2", "demo-neox": "demo-neox"}


def demo_model_path(name: str = "demo") -> str:
    """Where a bundled demo model (``"demo"``: GPT-2, ``"demo-neox"``: GPT-NeoX) lives inside the package."""
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model '{name}': choose from {sorted(DEMO_MODELS)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", DEMO_MODELS[name])


def _load_tokenizer(path: str):
    files = os.listdir(path)
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= set(files):
        return None
    try:
        from .tokenizer import Tokenizer
    except ImportError:  # the tokenizer module is optional at this stage
        return None
    return Tokenizer.load(path)


def sample_logits(final_logits: np.ndarray, top_k: Optional[int] = None, top_p: Optional[float] = None,
                  temperature: float = 1.0, freq_penalty: float = 0.0, tokens=None, rng=None) -> np.ndarray:
    """One token per row of ``final_logits`` (batch, d_vocab), as TransformerLens's ``sample_logits``:
    ``temperature`` 0 is argmax; else logits / temperature, minus ``freq_penalty`` times each
    token's count in ``tokens[b]`` (a sequence per row), kept to the ``top_k`` largest (ties at the
    k-th value kept) or else to the smallest prefix of the sorted distribution whose probability
    reaches ``top_p``, then sampled with ``rng`` (a NumPy Generator; float64 softmax). -> int32 (batch,)."""
    x = np.asarray(final_logits, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"final_logits must be (batch, d_vocab), got shape {x.shape}")
    if freq_penalty < 0:
        raise ValueError(f"freq_penalty must be non-negative, got {freq_penalty}")
    if temperature == 0:
        return x.argmax(-1).astype(np.int32)
    x = x / temperature
    if freq_penalty > 0:
        if tokens is None or len(tokens) != x.shape[0]:
            raise ValueError("freq_penalty needs the tokens so far, one sequence per row")
        x = x - freq_penalty * np.stack([np.bincount(np.asarray(t, np.int64), minlength=x.shape[1])[: x.shape[1]]
                                         for t in tokens])
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        k = min(int(top_k), x.shape[1])
        kth = -np.partition(-x, k - 1, axis=-1)[:, k - 1:k]
        x = np.where(x < kth, -np.inf, x)
    elif top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = np.argsort(-x, axis=-1, kind="stable")
        srt = np.take_along_axis(x, order, -1)
        p = np.exp(srt - srt[:, :1])
        cum = np.cumsum(p / p.sum(-1, keepdims=True), -1)
        remove = np.zeros_like(cum, bool)
        remove[:, 1:] = cum[:, :-1] > top_p  # keep up to and including the token that crosses top_p
        np.put_along_axis(x, order, np.where(remove, -np.inf, srt), -1)
    rng = rng if rng is not None else np.random.default_rng()
    p = np.exp(x - x.max(-1, keepdims=True))
    cdf = np.cumsum(p, -1)
    u = rng.random(x.shape[0]) * cdf[:, -1]
    out = np.array([np.searchsorted(cdf[b], u[b], side="right") for b in range(x.shape[0])])
    return np.minimum(out, x.shape[1] - 1).astype(np.int32)


_RETURN_TYPES = ("logits", "loss", "both", None)


def _check_return_type(return_type, logits_pos=None) -> None:
    if return_type not in _RETURN_TYPES:
        raise ValueError(f"return_type must be one of 'logits', 'loss', 'both' or None, got {return_type!r}")
    if return_type in ("loss", "both") and logits_pos is not None:
        raise ValueError(f"return_type={return_type!r} needs the logits at every position; drop logits_pos")


def _output(logits, return_type, loss_per_token: bool, packed: np.ndarray, lens: np.ndarray):
    """The value of ``return_type`` from full logits (B, T_pad, d_vocab) and the packed tokens."""
    if return_type in ("logits", None):
        return logits
    loss = lm_cross_entropy_loss(logits, packed, lens, per_token=loss_per_token)
    return loss if return_type == "loss" else (logits, loss)


def lm_cross_entropy_loss(logits: np.ndarray, packed: np.ndarray, lengths: np.ndarray, per_token: bool = False):
    """TransformerLens's loss: -log p(token t+1 | position t), over pairs whose both tokens are real.

    ``logits`` (B, T_pad, d_vocab); ``packed``: each row's real tokens back to back; ``lengths`` (B).
    ``per_token``: (B, T_pad - 1) float32 with 0 where the target is padding; else the mean, a
    float32 scalar. Log-softmax in float64.
    """
    B, T = logits.shape[0], logits.shape[1]
    if T < 2 or int(np.max(lengths)) < 2:
        raise ValueError("the loss needs a sequence of at least 2 tokens (it predicts token t+1 from position t)")
    tokens = np.zeros((B, T), np.int64)
    mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    tokens[mask] = packed
    pair = mask[:, 1:]  # both the position and its target are real (right padding)
    x = logits[:, :-1].astype(np.float64)
    x -= x.max(-1, keepdims=True)
    logp = np.take_along_axis(x, tokens[:, 1:, None], axis=-1)[..., 0] - np.log(np.exp(x).sum(-1))
    nll = np.where(pair, -logp, 0.0)
    if per_token:
        return nll.astype(np.float32)
    return np.float32(nll.sum() / pair.sum())


def _logits_last(logits_pos) -> bool:
    if logits_pos is None:
        return False
    if logits_pos == "last":
        return True
    raise ValueError(f"logits_pos must be None or 'last', got {logits_pos!r}")


_I32 = np.iinfo(np.int32)


def _int_array(x, what: str, kind: str = "integer token ids", int32: bool = True) -> np.ndarray:
    """``x`` as an integer array, checked before any cast to int32: a fractional value is a
    ValueError naming ``what``, the index and the value; another non-integer dtype a TypeError;
    with ``int32``, a value outside int32 a ValueError (so ``2**32 + 3`` never aliases 3; token
    ids are range-checked against the vocabulary instead, by ``Model._check_tokens``)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        if a.size == 0:
            return a.astype(np.int32)
        if a.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                frac = ~np.isfinite(a) | (np.floor(a) != a)
            if frac.any():
                i = tuple(int(k) for k in np.argwhere(frac)[0])
                raise ValueError(f"{what}[{', '.join(map(str, i))}] = {a[i].item()!r} is not an integer")
        raise TypeError(f"{what} must be {kind}, got dtype {a.dtype}")
    if int32 and a.size and (a.min() < _I32.min or a.max() > _I32.max):
        i = tuple(int(k) for k in np.argwhere((a < _I32.min) | (a > _I32.max))[0])
        raise ValueError(f"{what}[{', '.join(map(str, i))}] = {int(a[i])} is outside the int32 range")
    return a


def _as_int(what: str, v) -> int:
    """A Python or NumPy integer as int; a float (2.5, and 2.0 too), bool or other type is refused."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        if isinstance(v, (float, np.floating)) and not float(v).is_integer():
            raise ValueError(f"{what} = {float(v)!r} is not an integer")
        raise TypeError(f"{what} must be an integer, got {type(v).__name__} {v!r}")
    return int(v)


def _check_range(what: str, v, n: int) -> None:
    if not 0 <= _as_int(what, v) < n:
        raise ValueError(f"{what} {v} is outside [0, {n})")


def _chain(first: Optional[Callable], second: Callable) -> Callable:
    if first is None:
        return second

    def both(act, hook):
        r = first(act, hook)
        act = act if r is None else np.asarray(r, dtype=np.float32)
        r2 = second(act, hook)
        return act if r2 is None else r2

    return both
