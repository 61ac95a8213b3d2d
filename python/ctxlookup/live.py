"""A run's neurons and heads on text typed by a user: the engine behind ``ctxlookup serve`` and the
Jupyter panels (:mod:`ctxlookup.interactive`).

:class:`LiveEngine` loads a run directory's model once (its manifest's model, processed as the run
was) and answers three questions about a text, each with plain JSON-able dicts:

- :meth:`LiveEngine.neuron`: the text's tokens, the neuron's activation (``mlp.hook_post``) at
  each, the position of the maximum, the probability of the neuron's token at each position (the
  model's next-token prediction there), and for one selected position (default: the maximum)
  each eligible head's attribution score ``<hook_result, W_in[:, neuron]>`` with the active heads
  marked by the run's protocol (``manifest["protocol"]``: ``rule`` for the eligible layers,
  ``active_rule`` for which are active; :func:`ctxlookup.attribution.eligible_layers` and
  :func:`ctxlookup.attribution.active_heads`);
- :meth:`LiveEngine.compare`: that for two texts, and the per-token differences where their token
  sequences align (see :func:`align`);
- :meth:`LiveEngine.classify`: asks the run's explainer (the offline one, or the OpenAI-compatible
  one the run was configured with) whether the text is one the head's stored explanation
  describes, next to the head's real activity on it.

The text is tokenized as the run's attribution saw its prompts: BOS first when the protocol
re-encodes prompt texts (``retokenize``, the authors') or the prompts were made with BOS, then the
text. A text longer than the model's context is cut to it, with a notice. Forward passes run in
the C core with the GIL released, one at a time (a lock: two cores do not gain from two at once).

Bad input raises :class:`LiveError` with an HTTP status and a message naming what is wrong: 400
for empty or whitespace-only text, invalid Unicode, a malformed field; 404 for a neuron or head
the model or the run does not have. Control characters other than tab and line breaks are removed
from the text, with a notice.
"""
from __future__ import annotations

import json
import os
import re
import threading
import unicodedata
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

__all__ = ["LiveEngine", "LiveError", "align", "clean_text", "engine_for"]


class LiveError(ValueError):
    """A request the engine cannot answer: ``status`` is the HTTP status, ``str(e)`` the message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text, what: str = "text") -> Tuple[str, List[str]]:
    """``(text, notices)``: the text with control characters (Unicode category Cc other than tab, line
    feed and carriage return) removed. Raises :class:`LiveError` (400) for a non-string, a text
    with an unpaired surrogate (invalid Unicode), and a text that is empty or only whitespace."""
    if not isinstance(text, str):
        raise LiveError(400, f"'{what}' must be a string, got {type(text).__name__}")
    m = _SURROGATE.search(text)
    if m:
        raise LiveError(400, f"'{what}' is not valid Unicode: an unpaired surrogate U+{ord(m.group()):04X} at "
                             f"character {m.start()}")
    notices = []
    bad = [c for c in text if c not in "\t\n\r" and unicodedata.category(c) == "Cc"]
    if bad:
        kinds = ", ".join(f"U+{ord(c):04X}" for c in sorted(set(bad))[:5]) + (", ..." if len(set(bad)) > 5 else "")
        text = "".join(c for c in text if c in "\t\n\r" or unicodedata.category(c) != "Cc")
        notices.append(f"removed {len(bad)} control character{'s' if len(bad) != 1 else ''} from the {what} ({kinds})")
    if text == "":
        raise LiveError(400, f"the {what} is empty: type some text")
    if not text.strip():
        raise LiveError(400, f"the {what} holds only whitespace: type some text")
    return text, notices


def _int_field(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            return int(v)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise LiveError(400, f"'{name}' must be an integer, got {json.dumps(v) if _jsonable(v) else type(v).__name__}")
    return int(v)


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def align(a: List[int], b: List[int]) -> Tuple[int, int]:
    """``(prefix, suffix)``: how many tokens the two sequences share at their start and, after that,
    at their end (never overlapping the prefix). Positions ``i < prefix`` align with ``i``; the last
    ``suffix`` positions of each align with each other; the tokens between (the edit) align with
    nothing. Because the model is causal, activations on the common prefix are equal (their
    differences are 0 up to float rounding, ~1e-7), and the suffix shows the edit's effect downstream."""
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    s = 0
    while s < n - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    return p, s


def _softmax_rows(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    e = np.exp(x)
    return e[np.arange(len(ids)), ids] / e.sum(-1)


class LiveEngine:
    """A run directory's model and tables, for live requests (thread-safe).

    ``run``: a run directory or a :class:`ctxlookup.replicate.Run`. ``model``: a loaded
    :class:`ctxlookup.Model` or a checkpoint folder, when the manifest's has moved (default: the
    manifest's model path, else its model name). ``explainer``: ``"offline"``, ``"openai"`` or
    ``"none"`` (no classification); default: the run's ``--explainer``. ``client``: an explainer
    object (anything with ``complete_many``) to use instead.
    """

    def __init__(self, run, model=None, explainer: Optional[str] = None, client=None):
        d = run if isinstance(run, (str, os.PathLike)) else getattr(run, "dir", None)
        if d is None:
            raise TypeError(f"run must be a run directory or a Run, got {type(run).__name__}")
        self.dir = os.path.abspath(os.fspath(d))
        path = os.path.join(self.dir, "manifest.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{self.dir} is not a run directory (no manifest.json); make one with "
                                    f"'ctxlookup replicate'")
        with open(path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.options = dict(self.manifest.get("options") or {})
        from . import protocols

        rec = self.manifest.get("protocol")
        self.protocol = dict(rec) if rec else protocols.get(
            "ctxlookup", rule=self.options.get("rule"), active_rule=self.options.get("active_rule")).as_dict()
        self.explainer = explainer if explainer is not None else str(self.options.get("explainer") or "offline")
        if self.explainer not in ("offline", "openai", "none"):
            raise ValueError(f"explainer must be 'offline', 'openai' or 'none', got '{self.explainer}'")
        self._client = client
        self.model = self._load_model(model)
        if self.model.tokenizer is None:
            raise ValueError(f"the model at {self.model.path} has no tokenizer files; live text needs them")
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._tables: Dict[str, pd.DataFrame] = {}
        truncate = (self.manifest.get("stages", {}).get("truncate", {}).get("attrs", {}) or {}).get("prompts", {}) or {}
        want_bos = bool(self.protocol.get("retokenize")) or bool(truncate.get("prepend_bos", True))
        self.bos = self.model.bos_token_id if want_bos else None

    # ------------------------------------------------------------------ loading
    def _load_model(self, model):
        from .model import Model

        if model is not None and not isinstance(model, (str, os.PathLike)):
            return model
        p = bool(self.options.get("process_weights", True))
        kw = dict(fold_ln=p, center_writing_weights=p, center_unembed=p, fold_value_biases=p)
        if model is not None:
            return Model.from_pretrained(os.fspath(model), **kw)
        path = (self.manifest.get("model") or {}).get("path")
        name = self.options.get("model")
        if path and os.path.isdir(path):
            return Model.from_pretrained(path, **kw)
        if name:
            return Model.from_pretrained(name, **kw)
        raise FileNotFoundError(f"{self.dir}: the run's model was not found ({path or 'no path recorded'}); "
                                f"pass the model folder")

    def table(self, name: str) -> pd.DataFrame:
        """A table of the run (empty when the run has none)."""
        if name not in self._tables:
            p = os.path.join(self.dir, f"{name}.parquet")
            self._tables[name] = pd.read_parquet(p) if os.path.exists(p) else pd.DataFrame()
        return self._tables[name]

    # ------------------------------------------------------------------ checks
    @property
    def cfg(self):
        return self.model.cfg

    def check_neuron(self, layer, neuron) -> Tuple[int, int]:
        layer, neuron = _int_field(layer, "layer"), _int_field(neuron, "neuron")
        c = self.cfg
        if not 0 <= layer < c.n_layers:
            raise LiveError(404, f"layer {layer} does not exist: the model has {c.n_layers} layers (0 to {c.n_layers - 1})")
        if not 0 <= neuron < c.d_mlp:
            raise LiveError(404, f"neuron {neuron} does not exist: layer {layer} has {c.d_mlp} neurons "
                                 f"(0 to {c.d_mlp - 1})")
        return layer, neuron

    def n_eligible(self, layer: int) -> int:
        from .attribution import eligible_layers

        return eligible_layers(self.model, layer, self.protocol.get("rule", "authors"))

    def check_head(self, layer: int, head_layer, head) -> Tuple[int, int]:
        head_layer, head = _int_field(head_layer, "head_layer"), _int_field(head, "head")
        n_el, H = self.n_eligible(layer), self.cfg.n_heads
        if not 0 <= head < H:
            raise LiveError(404, f"head {head} does not exist: each layer has {H} heads (0 to {H - 1})")
        if not 0 <= head_layer < n_el:
            rule = self.protocol.get("rule", "authors")
            span = f"layers 0 to {n_el - 1}" if n_el else "no layer"
            raise LiveError(404, f"head L{head_layer}H{head} is not eligible for a neuron of layer {layer}: under the "
                                 f"run's rule '{rule}' its heads are in {span}")
        return head_layer, head

    # ------------------------------------------------------------------ the neuron's token
    def neuron_token(self, layer: int, neuron: int) -> dict:
        """``{token_id, token, in_run}``: the neuron's token from the run's neurons table, or, for a
        neuron the run did not study, its most congruent token (``W_out[neuron] @ W_U``, the
        run's excluded tokens left out)."""
        nt = self.table("neurons")
        if len(nt.columns):
            r = nt[(nt.layer == layer) & (nt.neuron == neuron)]
            if len(r):
                return dict(token_id=int(r.token_id.iloc[0]), token=str(r.token.iloc[0]), in_run=True,
                            group=str(r.group.iloc[0]) if "group" in r.columns else None)
        direction = self.options.get("direction", "unembed")
        U = self.model.W_U if direction == "unembed" else self.model.W_E.T
        c = (self.model.W_out[layer][neuron] @ U).astype(np.float64)
        ex = self.table("excluded_tokens")
        if len(ex.columns):
            ids = ex.token_id.to_numpy(np.int64)
            c[ids[(ids >= 0) & (ids < len(c))]] = -np.inf
        t = int(np.argmax(c))
        from .neurons import token_strings

        return dict(token_id=t, token=token_strings(self.model)[t], in_run=False, group=None)

    def top_example(self, layer: int, neuron: int) -> Optional[str]:
        """The text of the neuron's best-ranked truncated prompt, or None."""
        pr = self.table("prompts")
        if not len(pr.columns):
            return None
        g = pr[(pr.layer == layer) & (pr.neuron == neuron)]
        if not len(g):
            return None
        return str(g.sort_values("rank").text.iloc[0])

    def explanation(self, layer: int, neuron: int, head_layer: int, head: int) -> Optional[dict]:
        """The head's stored explanation (the main prompt count's, else the largest), with its scores."""
        for name in ("scores", "explanations"):
            t = self.table(name)
            if not len(t.columns):
                continue
            g = t[(t.layer == layer) & (t.neuron == neuron) & (t.head_layer == head_layer) & (t["head"] == head)]
            g = g[g.explanation.map(lambda x: isinstance(x, str))]
            if not len(g):
                continue
            if "n_prompts_per_neuron" in g.columns:
                main = int(self.protocol.get("prompts_per_neuron") or 0)
                g = g.assign(_m=g.n_prompts_per_neuron == main).sort_values(["_m", "n_prompts_per_neuron"],
                                                                             ascending=False)
            r = g.iloc[0]
            out = dict(explanation=str(r.explanation), token=str(r.token) if "token" in g.columns else None,
                       n_prompts_per_neuron=int(r.n_prompts_per_neuron) if "n_prompts_per_neuron" in g.columns else None)
            for k in ("E", "TPR", "TNR"):
                if k in g.columns:
                    v = r[k]
                    out[k] = float(v) if v is not None and np.isfinite(float(v)) else None
            return out
        return None

    def info(self, layer=None, neuron=None, head_layer=None, head=None) -> dict:
        """What a page's panel needs before the first request: limits, the protocol's rules, the
        explainer, and for a neuron its token and top example, for a head its explanation."""
        c = self.cfg
        out = dict(model=(self.manifest.get("model") or {}).get("name") or self.options.get("model"),
                   n_ctx=int(c.n_ctx), n_layers=int(c.n_layers), n_heads=int(c.n_heads), d_mlp=int(c.d_mlp),
                   bos=self.bos is not None, rule=self.protocol.get("rule"), active_rule=self.protocol.get("active_rule"),
                   explainer=None if self.explainer == "none" else self.explainer)
        if layer is not None or neuron is not None:
            layer, neuron = self.check_neuron(layer, neuron)
            out["neuron"] = dict(layer=layer, neuron=neuron, example=self.top_example(layer, neuron),
                                 n_eligible_layers=self.n_eligible(layer), **self.neuron_token(layer, neuron))
            if head_layer is not None or head is not None:
                head_layer, head = self.check_head(layer, head_layer, head)
                out["head"] = dict(head_layer=head_layer, head=head,
                                   **(self.explanation(layer, neuron, head_layer, head) or dict(explanation=None)))
        return out

    # ------------------------------------------------------------------ tokens
    def tokens(self, text: str) -> Tuple[np.ndarray, List[str]]:
        """``(ids, notices)``: the model's input for ``text`` (BOS first when the run used it), cut to
        the model's context with a notice."""
        ids = self.model.require_tokenizer().encode(text)
        head = [self.bos] if self.bos is not None else []
        full = np.concatenate([np.asarray(head, np.int32), np.asarray(ids, np.int32)])
        notices = []
        n = int(self.cfg.n_ctx)
        if len(full) > n:
            notices.append(f"the text is {len(ids)} tokens long; the model's context is {n} tokens"
                           f"{' with BOS' if head else ''}, so only the first {n - len(head)} were run")
            full = full[:n]
        if len(full) == len(head):
            raise LiveError(400, "the text tokenizes to nothing")
        return full, notices

    def _run(self, seqs: List[np.ndarray], layer: int, neuron: int, token_id: int) -> List[dict]:
        """One batched forward pass (C core, GIL released) over ``seqs``: per sequence the neuron's
        activation and the token's probability at every position, and each eligible layer's
        ``hook_z`` (for the head scores at any position)."""
        n_el = self.n_eligible(layer)
        post = f"blocks.{layer}.mlp.hook_post"
        zs = [f"blocks.{k}.attn.hook_z" for k in range(n_el)]
        with self._lock:
            logits, cache = self.model.run_with_cache(list(seqs), names_filter=[post] + zs)
        out = []
        for b, ids in enumerate(seqs):
            T = len(ids)
            out.append(dict(acts=np.asarray(cache[post][b, :T, neuron], np.float32),
                            prob=_softmax_rows(logits[b, :T], np.full(T, token_id)),
                            z=[np.asarray(cache[k][b, :T]) for k in zs]))
        return out

    def _head_scores(self, z: list, pos: int, layer: int, neuron: int):
        """Each eligible head's attribution ``<hook_result, W_in[:, neuron]>`` at ``pos``, computed
        as the core's ``attribute_batch`` does: ``z[pos, h] . (W_O[k, h] @ W_in[:, neuron])`` in
        float64; and the active heads by the run's ``active_rule``."""
        from .attribution import active_heads

        if not z:
            return [], None
        w = np.asarray(self.model.W_in[layer][:, neuron], np.float64)                  # (d_model,)
        H = self.cfg.n_heads
        sc = np.empty((len(z), H), np.float64)
        for k, zk in enumerate(z):
            wo = np.asarray(self.model.W_O[k], np.float64) @ w                          # (H, d_head)
            sc[k] = np.einsum("he,he->h", np.asarray(zk[pos], np.float64), wo)
        sc = sc.astype(np.float32).reshape(-1)  # the core's scores are float32
        rule = self.protocol.get("active_rule", "mean+2sd")
        act = active_heads(sc, rule)
        d = sc.astype(np.float64)
        if rule == "mean+2sd":
            thr = float(d.mean() + 2 * d.std(ddof=1)) if d.size > 1 else None
        else:
            thr = float(np.sort(d)[::-1][min(2, d.size - 1)])
        heads = [dict(head_layer=i // H, head=i % H, score=float(sc[i]), active=bool(act[i])) for i in range(len(sc))]
        return heads, thr

    def _position(self, position, first: int, n: int) -> int:
        pos = _int_field(position, "position")
        if not first <= pos < n:
            raise LiveError(400, f"position {pos} is outside the text's tokens ({first} to {n - 1})")
        return pos

    def _prepare(self, text, what: str = "text"):
        text, notices = clean_text(text, what)
        ids, more = self.tokens(text)
        return text, ids, notices + more, bool(more)

    def _result(self, layer, neuron, tok, ids, r, position, notices) -> dict:
        first = 1 if self.bos is not None else 0
        acts = r["acts"]
        max_pos = first + int(np.argmax(acts[first:]))
        pos = max_pos if position is None else self._position(position, first, len(ids))
        heads, thr = self._head_scores(r["z"], pos, layer, neuron)
        strs = self.model.require_tokenizer().to_str_tokens(ids)
        return dict(layer=layer, neuron=neuron, token=tok["token"], token_id=tok["token_id"], in_run=tok["in_run"],
                    tokens=list(strs), token_ids=[int(i) for i in ids], first=first,
                    activation=[float(a) for a in acts], max_position=max_pos, max_activation=float(acts[max_pos]),
                    prob=[float(p) for p in r["prob"]], position=pos, heads=heads, threshold=thr,
                    rule=self.protocol.get("rule"), active_rule=self.protocol.get("active_rule"),
                    n_eligible_layers=self.n_eligible(layer), notices=notices)

    # ------------------------------------------------------------------ requests
    def neuron(self, layer, neuron, text, position=None) -> dict:
        """The neuron on ``text``: ``tokens`` (strings), ``token_ids``, ``first`` (the first position
        that is the text's: 1 after BOS), ``activation`` per position, ``max_position`` (over the
        text's positions), ``prob`` (probability of the neuron's token as the next token at each
        position), ``position`` (the selected one: ``position`` or the maximum) and ``heads`` there:
        ``[{head_layer, head, score, active}]`` for the eligible heads, with ``threshold`` (the
        active rule's cut: mean + 2 sd, or the 3rd largest score), ``notices``. One forward pass."""
        layer, neuron = self.check_neuron(layer, neuron)
        _, ids, notices, _ = self._prepare(text)
        tok = self.neuron_token(layer, neuron)
        r = self._run([ids], layer, neuron, tok["token_id"])[0]
        return self._result(layer, neuron, tok, ids, r, position, notices)

    def compare(self, layer, neuron, text_a, text_b) -> dict:
        """Both texts (as :meth:`neuron`, each at its own maximum; one batched pass) and ``diff``:
        for each aligned pair of positions (:func:`align`), ``{pos_a, pos_b, d_activation,
        d_prob}`` (b minus a); ``prefix``/``suffix``: the aligned lengths; positions between are
        the edit."""
        layer, neuron = self.check_neuron(layer, neuron)
        prepared = []
        for name, t in (("text_a", text_a), ("text_b", text_b)):
            prepared.append(self._prepare(t, name))
        tok = self.neuron_token(layer, neuron)
        ra, rb = self._run([prepared[0][1], prepared[1][1]], layer, neuron, tok["token_id"])
        a = self._result(layer, neuron, tok, prepared[0][1], ra, None, prepared[0][2])
        b = self._result(layer, neuron, tok, prepared[1][1], rb, None, prepared[1][2])
        p, s = align(a["token_ids"], b["token_ids"])
        pairs = [(i, i) for i in range(p)] + [(len(a["token_ids"]) - s + j, len(b["token_ids"]) - s + j) for j in range(s)]
        diff = [dict(pos_a=i, pos_b=j, d_activation=b["activation"][j] - a["activation"][i],
                     d_prob=b["prob"][j] - a["prob"][i]) for i, j in pairs]
        return dict(layer=layer, neuron=neuron, a=a, b=b, prefix=p, suffix=s, diff=diff,
                    alignment="common prefix and suffix of the token sequences; the tokens between are the edit")

    def classify(self, layer, neuron, head_layer, head, text, position=None) -> dict:
        """The explainer's Yes/No for ``text`` against the head's stored explanation (the run's
        classification prompt and parsing), next to the head's real activity: ``active`` at
        ``position`` (default: the text's last token, where the run's test prompts end), its score,
        and the neuron's activation there."""
        layer, neuron = self.check_neuron(layer, neuron)
        head_layer, head = self.check_head(layer, head_layer, head)
        if self.explainer == "none":
            raise LiveError(409, "no explainer is configured for this server (started with --explainer none)")
        ex = self.explanation(layer, neuron, head_layer, head)
        if ex is None:
            raise LiveError(404, f"the run has no explanation of head L{head_layer}H{head} for neuron L{layer}N{neuron} "
                                 f"(only the selected heads are explained)")
        text, ids, notices, cut = self._prepare(text)
        tok = self.neuron_token(layer, neuron)
        first = 1 if self.bos is not None else 0
        pos = len(ids) - 1 if position is None else self._position(position, first, len(ids))
        r = self._run([ids], layer, neuron, tok["token_id"])[0]
        heads, thr = self._head_scores(r["z"], pos, layer, neuron)
        me = next(h for h in heads if h["head_layer"] == head_layer and h["head"] == head)
        # the text as run: cut to the context when it was
        shown = self.model.require_tokenizer().decode(ids[first:]) if cut else text
        from .score import build_classify_prompt, parse_yes_no

        prompt = build_classify_prompt(ex["explanation"], shown, ex.get("token") or tok["token"],
                                       version=self.protocol.get("template_version", "ctxlookup"))
        client = self._explainer()
        temp = self.protocol.get("temperature", 0.0)
        res = client.complete_many([[{"role": "user", "content": prompt}]], max_tokens=1, temperature=temp,
                                   stage="live-classify")[0]
        if res.error is not None:
            raise LiveError(502, f"the explainer failed: {res.error}")
        pred = parse_yes_no(res.content, self.protocol.get("parse", "lenient"))
        return dict(layer=layer, neuron=neuron, head_layer=head_layer, head=head, explanation=ex["explanation"],
                    answer=res.content, predicted=pred, active=me["active"], score=me["score"], threshold=thr,
                    position=pos, activation=float(r["acts"][pos]),
                    agree=None if pred is None else bool(pred) == me["active"], explainer=self.explainer,
                    notices=notices)

    def _explainer(self):
        with self._client_lock:
            if self._client is None:
                if self.explainer == "offline":
                    from .explain import OfflineExplainer

                    self._client = OfflineExplainer()
                else:
                    from .llm import Client

                    o = self.options
                    self._client = Client(model=o.get("llm_model") or "gpt-4-1106-preview", base_url=o.get("base_url"),
                                          cache=os.path.join(self.dir, "llm_cache.sqlite3"), concurrency=1,
                                          rpm=o.get("rpm"), progress=False)
            return self._client


_ENGINES: Dict[str, LiveEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(run, **kw) -> LiveEngine:
    """One :class:`LiveEngine` per run directory in this process (the model is loaded once);
    ``run`` may already be an engine."""
    if isinstance(run, LiveEngine):
        return run
    d = run if isinstance(run, (str, os.PathLike)) else getattr(run, "dir", None)
    key = os.path.abspath(os.fspath(d)) if d is not None else None
    with _ENGINES_LOCK:
        if key is None or kw or key not in _ENGINES:
            e = LiveEngine(run, **kw)
            if key is not None and not kw:
                _ENGINES[key] = e
            return e
        return _ENGINES[key]
