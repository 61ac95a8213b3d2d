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

__all__ = ["Model", "Config", "ActivationCache", "HookPoint", "get_act_name"]

_ALIASES = {
    "embed": "hook_embed", "pos_embed": "hook_pos_embed",
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "rot_q": "attn.hook_rot_q", "rot_k": "attn.hook_rot_k",
    "attn_scores": "attn.hook_attn_scores", "scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern", "result": "attn.hook_result",
    "pre": "mlp.hook_pre", "post": "mlp.hook_post",
    "scale": "ln_final.hook_scale", "normalized": "ln_final.hook_normalized",
}


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """TransformerLens's ``utils.get_act_name``: ``("post", 3) -> "blocks.3.mlp.hook_post"``.

    ``layer_type`` ("ln1", "ln2") disambiguates ``scale`` / ``normalized`` inside a block.
    """
    if "." in name or name.startswith("hook_"):
        return name
    if name not in _ALIASES:
        raise KeyError(f"unknown activation alias '{name}'; known: {sorted(_ALIASES)}")
    suffix = _ALIASES[name]
    if layer is None:
        return suffix
    if name in ("scale", "normalized"):
        suffix = f"{layer_type or 'ln1'}.hook_{name}"
    return f"blocks.{layer}.{suffix}"


class ActivationCache(dict):
    """Hook name -> float32 array. Also indexable TransformerLens-style: ``cache["post", 3]``."""

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key = get_act_name(*key)
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            raise KeyError(f"'{key}' is not in this cache; it holds {sorted(self)[:8]}"
                           f"{' ...' if len(self) > 8 else ''}") from None


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
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def _from_core(cls, d: dict) -> "Config":
        names = set(cls.__dataclass_fields__) - {"extra"}
        kw = {k: d[k] for k in names}
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kw[k] = None if kw[k] < 0 else kw[k]
        return cls(**kw, extra={k: v for k, v in d.items() if k not in names})

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

    def __init__(self, core: "_core.Model", tokenizer=None, path: Optional[str] = None):
        self._core = core
        self.cfg = Config._from_core(core.config())
        self.tokenizer = tokenizer
        self.path = path
        self.hook_names: list = core.hook_names()
        self._hook_set = frozenset(self.hook_names)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, fold_ln: bool = False, center_writing_weights: bool = False,
             center_unembed: bool = False, fold_value_biases: bool = False, tokenizer: bool = True,
             mmap: bool = False) -> "Model":
        """Load ``config.json`` + ``model.safetensors`` (or sharded, with its index) from a folder.

        Weight processing follows TransformerLens and is off by default, so raw numbers equal
        Hugging Face's: ``fold_ln`` folds each LayerNorm's weight and bias into the next layer's
        reading weights (and centres them), ``center_writing_weights`` makes every write into the
        residual stream mean-zero, ``center_unembed`` makes ``W_U``'s rows mean-zero (logits change
        by a per-position constant), ``fold_value_biases`` moves ``b_V`` into ``b_O``.
        Tokenizer files in the folder (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``) are
        loaded as ``model.tokenizer`` when ``tokenizer`` is true.
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
        return cls(core, tokenizer=tok, path=path)

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
            return cls.load(path, **load_options)
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
        return cls.load(folder, **load_options)

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
        return self.to_tokens(texts, prepend_bos=prepend_bos)

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
    def __call__(self, tokens: TokensLike, lengths=None, attention_mask=None, return_type: str = "logits",
                 logits_pos: Optional[str] = None):
        """Logits ``(batch, pos, d_vocab)`` float32 (``return_type=None`` runs and returns None).
        ``logits_pos="last"``: only each row's last real position, ``(batch, d_vocab)``."""
        packed, lens, T = self._pack(tokens, lengths, attention_mask)
        logits, _ = self._core.forward(packed, lens, T, logits=return_type is not None,
                                       logits_last=_logits_last(logits_pos))
        return logits

    forward = __call__

    def run_with_cache(self, tokens: TokensLike, lengths=None, attention_mask=None, names_filter=None,
                       stop_at_layer: Optional[int] = None, pos=None, return_logits: bool = True,
                       **interventions):
        """Run and keep activations: ``(logits, cache)``.

        ``names_filter``: None (every hook), a name, a list of names, or a predicate on names.
        ``stop_at_layer=k`` runs blocks ``0..k-1`` only (logits are then None).
        ``pos`` keeps only some positions: ``"last"`` (each row's last real token), an int
        (negative counts from each row's end), an array ``(batch,)`` (the pos axis is dropped),
        or ``(batch, n)`` (kept). Interventions as in :meth:`run_with_hooks` may be given too.
        """
        return self.run_with_hooks(tokens, lengths=lengths, attention_mask=attention_mask, stop_at_layer=stop_at_layer,
                                   return_logits=return_logits, cache=names_filter if names_filter is not None else
                                   (lambda n: True), pos=pos, **interventions)

    def run_with_hooks(self, tokens: TokensLike, fwd_hooks: Iterable = (), lengths=None, attention_mask=None,
                       stop_at_layer: Optional[int] = None, return_logits: bool = True, *,
                       ablate_heads: Optional[Iterable] = None, head_ablation: str = "zero",
                       mean_z: Optional[np.ndarray] = None, set_neurons: Optional[Iterable] = None,
                       patch: Optional[Mapping[str, np.ndarray]] = None, cache=None, pos=None,
                       logits_pos: Optional[str] = None):
        """Run with interventions; returns logits, or ``(logits, cache)`` when ``cache`` names hooks.

        ``fwd_hooks``: ``[(name or predicate, fn)]``; ``fn(activation, hook)`` sees the activation
        padded, ``(batch, pos, ...)``, and may modify it in place or return a replacement.
        Built-in, with no Python in the loop:
        ``ablate_heads=[(layer, head), ...]`` with ``head_ablation="zero"`` or ``"mean"``
        (``mean_z``: ``(n_layers, n_heads, d_head)`` mean of ``hook_z``) replaces the heads' ``z``;
        ``set_neurons=[(layer, neuron, value), ...]`` sets ``mlp.hook_post``;
        ``patch={hook_name: array}`` replaces an activation (activation patching).
        ``logits_pos="last"`` computes logits at each row's last real position only: ``(batch, d_vocab)``.
        """
        packed, lens, T = self._pack(tokens, lengths, attention_mask)
        c = self.cfg
        stop = c.n_layers if stop_at_layer is None else _as_int("stop_at_layer", stop_at_layer)
        if stop < 0:
            stop += c.n_layers
        if not 0 <= stop <= c.n_layers:
            raise ValueError(f"stop_at_layer {stop_at_layer} is outside [0, {c.n_layers}]")
        want_logits = return_logits and stop == c.n_layers
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
        if cache is None:
            return logits
        out = ActivationCache()
        for n in cache_names:
            a = raw[n]
            if squeeze:
                a = a[:, :, 0] if ("hook_attn_scores" in n or "hook_pattern" in n) else a[:, 0]
            out[n] = a
        return logits, out

    # ------------------------------------------------------------------ tokenizer conveniences
    def to_tokens(self, texts, prepend_bos: bool = True, truncate: bool = True):
        """Texts -> ``(tokens (batch, pos) int32 right-padded with the pad id, lengths (batch,))``.

        ``prepend_bos`` puts the BOS id first; sequences are cut to ``n_ctx`` when ``truncate``.
        """
        tok = self._need_tokenizer()
        if isinstance(texts, str):
            texts = [texts]
        rows = tok.encode_batch(list(texts))
        bos = self.bos_token_id
        if prepend_bos:
            if bos is None:
                raise ValueError("prepend_bos=True but neither the tokenizer nor config.json names a BOS token")
            rows = [np.concatenate([np.array([bos], np.int32), r]) for r in rows]
        if truncate:
            rows = [r[: self.cfg.n_ctx] for r in rows]
        lens = np.array([len(r) for r in rows], np.int32)
        if (lens == 0).any():
            raise ValueError(f"text {int(np.nonzero(lens == 0)[0][0])} tokenizes to nothing")
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        out = np.full((len(rows), int(lens.max())), pad, np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out, lens

    def to_str_tokens(self, x, prepend_bos: bool = True) -> list:
        """A text or token ids -> the list of token strings (each token decoded alone)."""
        tok = self._need_tokenizer()
        if isinstance(x, str):
            toks, lens = self.to_tokens(x, prepend_bos=prepend_bos)
            x = toks[0, : lens[0]]
        return tok.to_str_tokens(np.asarray(x).reshape(-1))

    def to_single_token(self, s: str) -> int:
        """The id of ``s`` if it is exactly one token, else ValueError."""
        ids = self._need_tokenizer().encode(s)
        if len(ids) != 1:
            raise ValueError(f"{s!r} is {len(ids)} tokens, not one")
        return int(ids[0])

    def to_string(self, ids) -> Union[str, list]:
        """Token ids -> text (a 2-D array gives a list of texts)."""
        tok = self._need_tokenizer()
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

    def _need_tokenizer(self):
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
