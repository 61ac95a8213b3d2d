"""ActivationCache: what ``Model.run_with_cache`` returns, with TransformerLens's names and helpers.

A dict from hook name to float32 NumPy array (so ``cache[name]``, ``dict(cache)``, ``cache.items()``
keep working), indexable TransformerLens-style (``cache["resid_post", -1]``, ``cache["post", 3]``,
``cache["pattern", 0, "attn"]``, ``cache["k6"]``), with TransformerLens's residual-stream helpers:
:meth:`~ActivationCache.accumulated_resid`, :meth:`~ActivationCache.decompose_resid`,
:meth:`~ActivationCache.stack_head_results`, :meth:`~ActivationCache.stack_neuron_results`,
:meth:`~ActivationCache.logit_attrs`, :meth:`~ActivationCache.apply_ln_to_stack`,
:meth:`~ActivationCache.remove_batch_dim`. Semantics are those of TransformerLens 4.x's
``ActivationCache`` (checked against it in tests/test_tl_surface.py), with NumPy arrays for tensors.

Padded positions of a right-padded batch hold zeros in the cache (the model never computes them);
helpers that divide by a cached LayerNorm scale give 0 there too, not NaN.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

__all__ = ["ActivationCache", "Slice", "get_act_name", "LayerIndexError"]

_ACT_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
                "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post",
                # ctxlookup's earlier shorthand, kept
                "scores": "attn_scores"}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ATTN_NAMES = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores")
_MLP_NAMES = ("pre", "post", "mid", "pre_linear")


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """TransformerLens's ``get_act_name``: ``("post", 3) -> "blocks.3.mlp.hook_post"``,
    ``"k6" -> "blocks.6.attn.hook_k"``, ``("scale", 4, "ln1") -> "blocks.4.ln1.hook_scale"``,
    ``"scale" -> "ln_final.hook_scale"``. A full name is returned as it is."""
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a string, got {type(name).__name__}")
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    m = re.match(r"([a-z_]*[a-z])(\d+)([a-z]?.*)", name)
    if m is not None:
        name, layer, layer_type = m.group(1), int(m.group(2)), m.group(3) or None
    name = _ACT_ALIASES.get(name, name)
    out = "" if layer is None else f"blocks.{layer}."
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    if layer_type:
        out += f"{layer_type}."
    out += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        out = f"ln_final.{out}"
    return out


class LayerIndexError(KeyError, IndexError):
    """A layer index outside the model's layers (both a KeyError and an IndexError)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Slice:
    """TransformerLens's ``Slice``: how ``pos_slice`` / ``neuron_slice`` / ``batch_slice`` select.

    ``None``: everything; an int: that index (the axis goes); a tuple ``(k,)``, ``(a, b)`` or
    ``(a, b, step)`` or a ``slice``: a slice (Python's ``slice(*tuple)``); a list or array: those
    indices.
    """

    def __init__(self, input_slice=None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
            return
        if isinstance(input_slice, (int, np.integer)) and not isinstance(input_slice, bool):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, np.ndarray)):
            a = np.asarray(input_slice)
            if a.ndim == 0:
                self.slice, self.mode = int(a), "int"
            else:
                self.slice, self.mode = a.astype(np.int64), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(f"invalid slice {input_slice!r}: use None, an int, a tuple, a slice, a list or an array")

    def apply(self, array: np.ndarray, dim: int = 0) -> np.ndarray:
        index = [slice(None)] * array.ndim
        index[dim] = self.slice
        return array[tuple(index)]

    def indices(self, max_ctx: Optional[int] = None) -> np.ndarray:
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be given for a slice that is not an int")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, s) -> "Slice":
        """As ``Slice(s)``, except that an int becomes ``[int]`` (the axis stays)."""
        if isinstance(s, Slice):
            return s
        if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            s = [int(s)]
        return cls(s)

    def __repr__(self) -> str:
        return f"Slice({self.slice!r}, mode={self.mode!r})"


class ActivationCache(dict):
    """Hook name -> float32 array, from ``Model.run_with_cache``; TransformerLens's helpers on top.

    ``model``: the :class:`ctxlookup.Model` that made it (the helpers read its weights and config).
    ``has_batch_dim``: False after :meth:`remove_batch_dim`.
    """

    def __init__(self, data=(), model=None, has_batch_dim: bool = True):
        super().__init__(data)
        self.model = model
        self.has_batch_dim = has_batch_dim

    # ------------------------------------------------------------------ indexing
    @property
    def cache_dict(self) -> "ActivationCache":
        """The cache itself (TransformerLens keeps its dict here)."""
        return self

    @property
    def has_embed(self) -> bool:
        return "hook_embed" in self

    @property
    def has_pos_embed(self) -> bool:
        return "hook_pos_embed" in self

    def _n_layers(self) -> int:
        if self.model is not None:
            return self.model.cfg.n_layers
        layers = [int(k.split(".")[1]) for k in self if k.startswith("blocks.")]
        if not layers:
            raise KeyError("this cache holds no block activations and has no model: layer indices have no meaning")
        return max(layers) + 1

    def _layer(self, layer, allow_end: bool = False) -> int:
        """A block index, negative ones counted from the end; LayerIndexError outside the model."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        L = self._n_layers()
        v = int(layer) + L if layer < 0 else int(layer)
        hi = L if allow_end else L - 1
        if not 0 <= v <= hi:
            extra = f", or {L} for the final residual stream" if allow_end else ""
            raise LayerIndexError(f"layer {int(layer)} is out of range: the model has {L} layers: 0..{L - 1} "
                                  f"(negative: -{L}..-1){extra}")
        return v

    def _key(self, key) -> str:
        if isinstance(key, str):
            if dict.__contains__(self, key):
                return key
            return get_act_name(key)
        if not isinstance(key, tuple) or not key or not isinstance(key[0], str):
            raise KeyError(f"cache keys are hook names or (name, layer[, layer_type]) tuples, got {key!r}")
        name, *rest = key
        if len(rest) > 2:
            raise KeyError(f"cache key {key!r} has too many parts: (name, layer, layer_type) at most")
        layer = rest[0] if rest else None
        layer_type = rest[1] if len(rest) > 1 else None
        if layer is not None:
            layer = self._layer(layer)
        return get_act_name(name, layer, layer_type)

    def __getitem__(self, key):
        name = self._key(key)
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            pass
        if self.model is not None:
            if name in self.model.hook_names:
                raise KeyError(f"'{name}' was not cached: run_with_cache's names_filter left it out") from None
            raise KeyError(f"'{name}' is not in this cache: it is not a hook of this model (see model.hook_names)") \
                from None
        raise KeyError(f"'{name}' is not in this cache; it holds {sorted(self)[:8]}"
                       f"{' ...' if len(self) > 8 else ''}") from None

    def __contains__(self, key) -> bool:
        try:
            return dict.__contains__(self, self._key(key))
        except (KeyError, TypeError):
            return False

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self)}"

    # ------------------------------------------------------------------ batch
    def remove_batch_dim(self, batch_size: Optional[int] = None) -> "ActivationCache":
        """Drop the batch axis of a batch-1 cache (in place; returns the cache)."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in self.values() if np.ndim(v) > 0}
        n = batch_size if batch_size is not None else (sizes.pop() if len(sizes) == 1 else max(sizes, default=1))
        if n != 1:
            raise ValueError(f"cannot remove the batch dimension from a cache with batch size {n}")
        for k, v in list(self.items()):
            if np.ndim(v) > 0 and v.shape[0] == 1:
                dict.__setitem__(self, k, v[0])
        self.has_batch_dim = False
        return self

    # ------------------------------------------------------------------ residual stream
    def _final_layer(self, layer) -> int:
        """None / -1 / n_layers: the final residual stream (n_layers); else a block index 0..n_layers."""
        L = self._n_layers()
        if layer is None or layer == -1:
            return L
        return self._layer(layer, allow_end=True)

    def accumulated_resid(self, layer: Optional[int] = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice=None, mlp_input: bool = False, return_labels: bool = False):
        """The residual stream before each block up to ``layer`` (``resid_pre`` of 0..layer), then
        ``resid_post`` of the last block when ``layer`` is n_layers / -1 / None:
        ``(components, *batch_and_pos, d_model)``. ``incl_mid`` adds each earlier block's
        ``resid_mid``; ``mlp_input`` adds ``layer``'s own. ``apply_ln``: at the final layer,
        ``ln_final`` with statistics recomputed per component (a logit lens); elsewhere the cached
        scale of ``layer``'s LayerNorm. Labels: ``"0_pre"``, ``"0_mid"``, ..., ``"final_post"``."""
        ps = Slice(pos_slice)
        L = self._n_layers()
        layer = self._final_layer(layer)
        comps, labels = [], []
        for l in range(layer + 1):
            if l == L:
                comps.append(self["resid_post", L - 1])
                labels.append("final_post")
                continue
            comps.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                comps.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        out = np.stack([ps.apply(c, dim=-2) for c in comps], axis=0)
        if apply_ln:
            out = self.apply_ln_to_stack(out, layer, pos_slice=ps, mlp_input=mlp_input,
                                         has_batch_dim=self.has_batch_dim, recompute_ln=layer == L)
        return (out, labels) if return_labels else out

    def decompose_resid(self, layer: Optional[int] = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice=None, incl_embeds: bool = True, return_labels: bool = False):
        """The residual stream into ``layer`` as the outputs that sum to it: ``embed``,
        ``pos_embed`` (GPT-2), then each earlier block's ``attn_out`` and ``mlp_out`` (``mode``
        "all", "attn" or "mlp"); ``mlp_input`` adds ``layer``'s own ``attn_out``. ``apply_ln``
        divides by ``layer``'s cached LayerNorm scale after centring."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        ps = Slice(pos_slice)
        layer = self._final_layer(layer)
        comps, labels = [], []
        if incl_embeds:
            if self.has_embed:
                comps.append(self["hook_embed"])
                labels.append("embed")
            if self.has_pos_embed:
                comps.append(self["hook_pos_embed"])
                labels.append("pos_embed")
        for l in range(layer):
            if mode != "mlp":
                comps.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                comps.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            comps.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        if not comps:
            raise ValueError("nothing to decompose: no embeddings (incl_embeds=False) and no layers before layer 0")
        out = np.stack([ps.apply(c, dim=-2) for c in comps], axis=0)
        if apply_ln:
            out = self.apply_ln_to_stack(out, layer, pos_slice=ps, mlp_input=mlp_input)
        return (out, labels) if return_labels else out

    def compute_head_results(self) -> None:
        """Fill in ``blocks.{l}.attn.hook_result`` (``z @ W_O`` per head, no ``b_O``) from the cached
        ``hook_z`` where it is missing (run_with_cache can also capture ``hook_result`` directly)."""
        model = self._need_model("compute_head_results")
        W_O = model.W_O
        for l in range(self._n_layers()):
            key = f"blocks.{l}.attn.hook_result"
            if dict.__contains__(self, key):
                continue
            z = self["z", l]
            dict.__setitem__(self, key, np.einsum("...hd,hdm->...hm", z, W_O[l]).astype(np.float32))

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False):
        """Every head's output before ``layer``: ``(layer * n_heads, *batch_and_pos, d_model)``,
        labels ``"L0H0"``...; ``incl_remainder`` adds ``resid_post`` of ``layer - 1`` minus their
        sum. Uses cached ``hook_result``, else computes it from ``hook_z``."""
        ps = Slice(pos_slice)
        layer = self._final_layer(layer)
        self.compute_head_results()
        H = self._need_model("stack_head_results").cfg.n_heads
        comps, labels = [], []
        for l in range(layer):
            comps.append(ps.apply(self["result", l, "attn"], dim=-3))
            labels.extend(f"L{l}H{h}" for h in range(H))
        if comps:
            out = np.moveaxis(np.concatenate(comps, axis=-2), -2, 0)
            if incl_remainder:
                rest = ps.apply(self["resid_post", layer - 1], dim=-2) - out.sum(axis=0)
                out = np.concatenate([out, rest[None]], axis=0)
                labels.append("remainder")
        elif incl_remainder:
            out = ps.apply(self["resid_post", layer - 1], dim=-2)[None]
            labels.append("remainder")
        else:
            out = np.zeros((0,) + ps.apply(self["hook_embed"], dim=-2).shape, np.float32)
        if apply_ln:
            out = self.apply_ln_to_stack(out, layer, pos_slice=ps)
        return (out, labels) if return_labels else out

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: Optional[str] = None) -> np.ndarray:
        """``activation_name`` of every block before ``layer``, stacked: ``(layer, ...)``."""
        layer = self._final_layer(layer)
        return np.stack([self[activation_name, l, sublayer_type] for l in range(layer)], axis=0)

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None) -> np.ndarray:
        """Each neuron's write to the residual stream at ``layer``: ``post[..., None] * W_out``,
        ``(*batch_and_pos, neurons, d_model)``."""
        layer = self._layer(layer)
        ns, ps = Slice(neuron_slice), Slice(pos_slice)
        acts = ps.apply(self["post", layer, "mlp"], dim=-2)
        W_out = self._need_model("get_neuron_results").W_out[layer]
        acts = ns.apply(acts, dim=-1)
        W_out = ns.apply(W_out, dim=0)
        return acts[..., None] * W_out

    def stack_neuron_results(self, layer: int, pos_slice=None, neuron_slice=None, return_labels: bool = False,
                             incl_remainder: bool = False, apply_ln: bool = False, mlp_input: bool = False):
        """Every neuron's write before ``layer``: ``(layer * neurons, *batch_and_pos, d_model)``,
        labels ``"L0N0"``...; ``incl_remainder`` adds the rest of the residual stream into
        ``layer`` (``resid_mid`` of ``layer`` with ``mlp_input``). Large: batch x pos x d_mlp x
        d_model floats per layer."""
        if layer is None or layer == -1:
            layer = self._n_layers()
        elif incl_remainder and layer < 0:
            raise ValueError(f"layer must be >= 0 with incl_remainder=True (-1/None mean n_layers); got {layer}")
        else:
            layer = self._final_layer(layer)
        ns = Slice.unwrap(neuron_slice)
        if ns.mode == "int":
            ns = Slice([ns.slice])
        ps = Slice(pos_slice)
        d_mlp = self._need_model("stack_neuron_results").cfg.d_mlp
        neuron_ids = ns.apply(np.arange(d_mlp), dim=0)
        labels = [f"L{l}N{n}" for l in range(layer) for n in neuron_ids]
        target = ("resid_mid", layer) if mlp_input else ("resid_post", layer - 1)
        per_layer = [self.get_neuron_results(l, neuron_slice=ns, pos_slice=ps) for l in range(layer)]
        if per_layer:
            out = np.moveaxis(np.concatenate(per_layer, axis=-2), -2, 0)
            if incl_remainder:
                rest = ps.apply(self[target], dim=-2) - out.sum(axis=0)
                out = np.concatenate([out, rest[None]], axis=0)
                labels.append("remainder")
        elif incl_remainder:
            out = ps.apply(self[target], dim=-2)[None]
            labels.append("remainder")
        else:
            out = np.zeros((0,) + ps.apply(self["hook_embed"], dim=-2).shape, np.float32)
        if apply_ln:
            out = self.apply_ln_to_stack(out, layer, pos_slice=ps, mlp_input=mlp_input)
        return (out, labels) if return_labels else out

    # ------------------------------------------------------------------ LayerNorm and logits
    def apply_ln_to_stack(self, residual_stack: np.ndarray, layer: Optional[int] = None, mlp_input: bool = False,
                          pos_slice=None, batch_slice=None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> np.ndarray:
        """Treat each component of ``residual_stack`` ``(components, *batch_and_pos, d_model)`` as
        input to ``layer``'s LayerNorm (ln1, or ln2 with ``mlp_input``; ``ln_final`` for n_layers /
        -1 / None): centre it and divide by the cached scale of the whole residual stream there.
        ``recompute_ln`` at the final layer instead applies ``ln_final`` (weight and bias included)
        with each component's own statistics. ``pos_slice``: already applied to the stack, applied
        here to the cached scale; ``batch_slice``: applied to both."""
        ps, bs = Slice(pos_slice), Slice(batch_slice)
        L = self._n_layers()
        layer = self._final_layer(layer)
        x = np.asarray(residual_stack)
        if has_batch_dim:
            x = bs.apply(x, dim=1)
        if recompute_ln and layer == L:
            model = self._need_model("apply_ln_to_stack")
            x = x - x.mean(-1, keepdims=True)
            x = x / np.sqrt((x * x).mean(-1, keepdims=True) + model.cfg.eps)
            if model.cfg.normalization_type == "LN":
                x = x * model.ln_final_w + model.ln_final_b
            return x.astype(np.float32, copy=False)
        x = x - x.mean(-1, keepdims=True)
        key = "ln_final.hook_scale" if layer == L else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        if not dict.__contains__(self, key):
            raise KeyError(f"apply_ln needs the cached LayerNorm scale '{key}'; run_with_cache left it out")
        scale = ps.apply(dict.__getitem__(self, key), dim=-2)
        if has_batch_dim and self.has_batch_dim:
            scale = bs.apply(scale)
        scale = np.broadcast_to(scale, x.shape[1:-1] + (1,))
        out = np.zeros(np.broadcast_shapes(x.shape, scale.shape), np.float32)
        np.divide(x, scale, out=out, where=np.broadcast_to(scale != 0, out.shape))  # padding: scale 0 -> 0
        return out

    def _residual_directions(self, tokens) -> np.ndarray:
        model = self._need_model("logit_attrs")
        W_U = model.W_U
        if isinstance(tokens, str):
            return W_U[:, model.to_single_token(tokens)]
        a = np.asarray(tokens)
        if a.dtype.kind not in "iu":
            raise TypeError(f"tokens must be a string, an int or integer ids, got {a.dtype}")
        if a.size == 1:
            return W_U[:, int(a.reshape(-1)[0])]
        return np.moveaxis(W_U[:, a], 0, -1)

    def logit_attrs(self, residual_stack: np.ndarray, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim: bool = True) -> np.ndarray:
        """How much each component of ``residual_stack`` adds to the logit of ``tokens`` (or to the
        logit difference ``tokens - incorrect_tokens``): the component through ``ln_final``'s
        cached scale, dotted with the tokens' ``W_U`` columns. ``tokens``: a string, an int,
        ``(batch,)`` (one per example), ``(pos,)`` (one per position) or ``(batch, pos)``."""
        def shape_of(t):
            return () if isinstance(t, (str, int, np.integer)) else np.shape(t)

        dirs = self._residual_directions(tokens)
        if incorrect_tokens is not None:
            if shape_of(tokens) != shape_of(incorrect_tokens):
                raise ValueError(f"tokens and incorrect_tokens must have the same shape, got {shape_of(tokens)} "
                                 f"and {shape_of(incorrect_tokens)}")
            dirs = dirs - self._residual_directions(incorrect_tokens)
        ps, bs = Slice(pos_slice), Slice(batch_slice)
        scaled = self.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=ps, batch_slice=bs,
                                        has_batch_dim=has_batch_dim)
        if (has_batch_dim and bs.mode != "int" and scaled.ndim == 4 and dirs.ndim == 2
                and dirs.shape[0] == scaled.shape[1]):
            dirs = dirs[:, None, :]  # one direction per example, over every position
        return (scaled * dirs).sum(-1)

    def _need_model(self, what: str):
        if self.model is None:
            raise ValueError(f"{what} needs the model's weights; this cache was made without a model")
        return self.model
