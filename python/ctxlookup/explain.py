"""Explanations of attention heads (METHOD §5); their scores: :mod:`ctxlookup.score`.

Heads active on 25-75% of a neuron's prompts are explained: an LLM sees the neuron's prompts split
into active and inactive ones (each with the neuron's token appended) and writes when the head is
active (the paper's Fig. 8 prompt, ``max_tokens=200``). Each explanation is scored by zero-shot
classification of held-out test prompts (Fig. 9, one prompt per request, ``max_tokens=1``,
Yes/No) against the head's real activity: ``E = (TPR + TNR) / 2`` (default; the paper's printed
PPV/NPV mean is the secondary column ``E_ppv_npv``).

Any client with ``complete_many(messages_list, max_tokens=..., temperature=..., stage=...)``
works: :class:`ctxlookup.llm.Client` (OpenAI-compatible servers) or :class:`OfflineExplainer`, a
deterministic, network-free baseline that answers the same prompts by contrasting the n-grams of
active and inactive examples.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional, Sequence

import pandas as pd

from .llm import Result

__all__ = ["EXPLAIN_TEMPLATE", "explain_heads", "OfflineExplainer", "build_explain_prompt", "VERSIONS", "check_version",
           "shown_example", "user_message", "active_set", "neuron_examples"]

EXPLAIN_TEMPLATE = (
    "We are studying attention heads in a transformer architecture neural network. Each attention head looks for "
    "some particular thing in a short document.\n"
    "This attention head in particular helps to predict that the next token is \"{token}\", but it is only active "
    "in some documents and not others.\n"
    "Look at the documents and explain what makes the attention head active, taking into consideration the "
    "inactive examples.\n"
    "Examples where the attention head is active:\n"
    "\"\"\"\n"
    "{active}\n"
    "\"\"\"\n"
    "Examples where the attention head is inactive:\n"
    "\"\"\"\n"
    "{inactive}\n"
    "\"\"\"\n"
    "In two to three sentences, suggest when the attention head is active."
)

VERSIONS = ("ctxlookup", "2023", "2024")

# The authors' templates (their datahandlers.py ExplanationPromptGen / ClassifyPromptGen), piece by piece.
_AUTHORS_CONTEXT = ("We are studying attention heads in a transformer architecture neural network. Each attention head "
                    "looks for some particular thing in a short document.\n")
_AUTHORS_HEAD = ('This attention head in particular helps to predict that the next token is "{token}", but it is only '
                 "active in some documents and not others. ")
_AUTHORS_INSTRUCTION = ("Look at the documents and explain what makes the attention head active, taking into "
                        "consideration the inactive examples.\n")
_AUTHORS_END = {"2023": "Explanation: This attention head is active when the document",
                "2024": "In two to three sentences, suggest when the attention head is active."}

def check_version(version: str) -> None:
    """ValueError unless ``version`` is one of :data:`VERSIONS`."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(map(repr, VERSIONS))}, got {version!r}")


def shown_example(prompt: str, token: str, version: str) -> str:
    """An example as the prompts show it: the prompt with the neuron's token appended directly; the
    authors' versions show the prompt with its newlines as spaces (their truncated prompts were)."""
    return (prompt if version == "ctxlookup" else prompt.replace("\n", " ")) + (token or "")


def build_explain_prompt(token: str, active: Sequence[str], inactive: Sequence[str], template: str = EXPLAIN_TEMPLATE,
                         version: str = "ctxlookup") -> str:
    """The explanation request's text (Fig. 8). Each example is shown as ``*{prompt}{token}``.

    ``version``: ``"ctxlookup"`` fills ``template`` (the token shown stripped in the header, each
    section's examples between ``\"\"\"`` lines); ``"2023"`` / ``"2024"``: byte for byte the
    authors' ``ExplanationPromptGen`` of that version (the token shown as it is, with its leading
    space; the header and instruction joined by a space; ``Examples where ... active: \"\"\"``
    on one line; prompt newlines as spaces). The two differ only in the last line: 2023 ends with
    ``Explanation: This attention head is active when the document``, 2024 with the paper's
    ``In two to three sentences, suggest when the attention head is active.``
    """
    check_version(version)
    if version == "ctxlookup":
        return template.format(token=token.strip() if token else token,
                               active="\n".join(f"*{shown_example(p, token, version)}" for p in active),
                               inactive="\n".join(f"*{shown_example(p, token, version)}" for p in inactive))
    if template is not EXPLAIN_TEMPLATE and template != EXPLAIN_TEMPLATE:
        raise ValueError(f"a template applies to version 'ctxlookup' only, not to the authors' version {version!r}")
    pos = "\n*".join(shown_example(p, token, version) for p in active)
    neg = "\n*".join(shown_example(p, token, version) for p in inactive)
    return (_AUTHORS_CONTEXT + _AUTHORS_HEAD.format(token=token) + _AUTHORS_INSTRUCTION
            + f'Examples where the attention head is active: """\n*{pos}\n"""\n'
            + f'Examples where the attention head is inactive: """\n*{neg}\n"""\n'
            + _AUTHORS_END[version])


def user_message(text: str) -> list:
    """A chat request of one user message."""
    return [{"role": "user", "content": text}]


def _pairs(heads: pd.DataFrame):
    for h in heads.itertuples(index=False):
        yield int(h.layer), int(h.neuron), int(h.head_layer), int(h.head)


AUTHORS_MAX_PROMPT_TOKENS = 100  # the authors drop prompts of this many tokens or more (remove_prompts_longer_than)
AUTHORS_MAX_EXPLAIN_PROMPTS = 30  # 2023: every train prompt of the neuron, at most 30


def active_set(attribution: pd.DataFrame) -> set:
    """``{(prompt_id, head_layer, head)}`` of the rows where the head is active."""
    a = attribution[attribution["active"].astype(bool)]
    return set(zip(a["prompt_id"].tolist(), a["head_layer"].tolist(), a["head"].tolist()))


def neuron_examples(g: pd.DataFrame, active, hl: int, h: int, version: str, limit: Optional[int]) -> list:
    """``[(prompt_id, text, active)]`` for one neuron's prompts ``g``, in order, as ``version`` uses them.

    ctxlookup: every prompt. The authors' versions: the first ``limit`` prompts, less those of
    ``AUTHORS_MAX_PROMPT_TOKENS`` tokens or more (where ``n_tokens`` is known), and a text that
    repeats is one example at its first place with the activity of its last (their prompts were
    the keys of a dict filled in order)."""
    rows = list(zip(g.prompt_id, g.text, g["n_tokens"] if "n_tokens" in g.columns else [None] * len(g)))
    if version == "ctxlookup":
        return [(pid, t, (pid, hl, h) in active) for pid, t, _ in rows]
    if limit is not None:
        rows = rows[:limit]
    by_text: dict = {}
    for pid, t, n in rows:
        if n is not None and not pd.isna(n) and int(n) >= AUTHORS_MAX_PROMPT_TOKENS:
            continue
        key = t.replace("\n", " ")
        first = by_text[key][0] if key in by_text else pid
        by_text[key] = (first, t, (pid, hl, h) in active)
    return list(by_text.values())


def explain_heads(selected_heads: pd.DataFrame, prompts: pd.DataFrame, attribution: pd.DataFrame, explainer,
                  max_tokens: int = 200, temperature: Optional[float] = 0.0, template: str = EXPLAIN_TEMPLATE,
                  stage: str = "explain", version: str = "ctxlookup", max_prompts: Optional[int] = None) -> pd.DataFrame:
    """One explanation per selected neuron-head pair.

    ``prompts``: the truncated prompts (``layer, neuron, prompt_id, text, token``); ``attribution``:
    :func:`ctxlookup.head_attribution` on them (``prompt_id, head_layer, head, active``). Returns
    ``[layer, neuron, head_layer, head, token, n_active, n_inactive, prompt, explanation, error]``.

    ``version`` picks the request text (:func:`build_explain_prompt`) and the example list:
    ``"ctxlookup"`` shows every given prompt; ``"2023"`` / ``"2024"`` as the authors' code (see
    :func:`neuron_examples`), 2023 with at most ``max_prompts`` (default 30) prompts.
    ``temperature=None`` sends no temperature (the authors sent none).
    """
    check_version(version)
    if max_prompts is None and version == "2023":
        max_prompts = AUTHORS_MAX_EXPLAIN_PROMPTS
    active = active_set(attribution)
    by_neuron = {k: g for k, g in prompts.groupby(["layer", "neuron"], sort=False)}
    jobs, meta = [], []
    for layer, neuron, hl, h in _pairs(selected_heads):
        g = by_neuron.get((layer, neuron))
        if g is None:
            continue
        token = g["token"].iloc[0] if "token" in g.columns else ""
        ex = neuron_examples(g, active, hl, h, version, max_prompts)
        act = [t for _, t, a in ex if a]
        ina = [t for _, t, a in ex if not a]
        text = build_explain_prompt(token, act, ina, template, version=version)
        jobs.append(user_message(text))
        meta.append((layer, neuron, hl, h, token, len(act), len(ina), text))
    results = explainer.complete_many(jobs, max_tokens=max_tokens, temperature=temperature, stage=stage) if jobs else []
    rows = []
    for m, r in zip(meta, results):
        rows.append(m + (r.content if r.error is None else None, r.error))
    return pd.DataFrame(rows, columns=["layer", "neuron", "head_layer", "head", "token", "n_active", "n_inactive",
                                       "prompt", "explanation", "error"])


# --------------------------------------------------------------------------- offline baseline
_WORD = re.compile(r"[A-Za-z0-9_']+")


def _ngrams(text: str, n_max: int = 2) -> set:
    words = [w.lower() for w in _WORD.findall(text)]
    out = set(words)
    for n in range(2, n_max + 1):
        out.update(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return out


class OfflineExplainer:
    """A deterministic, network-free stand-in for the LLM, answering the same two prompts.

    Explanation: the n-grams (words and word pairs) whose document frequency among active
    examples most exceeds that among inactive ones (up to ``n_features``, each at least half as
    discriminative as the best), written as
    ``The head is active when the document contains "a", "b" or "c".``. Classification: Yes if
    the example contains any quoted n-gram of the explanation, else No. It is the baseline the
    LLM's scores are compared with.
    """

    name = "offline"

    def __init__(self, n_features: int = 3, n_max: int = 2):
        self.n_features, self.n_max = n_features, n_max
        self.usage = Counter()

    def complete_many(self, messages_list, max_tokens: int = 200, temperature: Optional[float] = 0.0, stage: str = "",
                      **kw):
        out = []
        for messages in messages_list:
            text = messages[-1]["content"]
            self.usage[stage] += 1
            out.append(Result(self._answer(text), usage=None, cached=False))
        return out

    def _answer(self, text: str) -> str:
        if "Examples where the attention head is active:" in text:
            return self._explain(text)
        if "Is the given example an active example?" in text:
            return self._classify(text)
        return "I cannot answer that."

    @staticmethod
    def _section(text: str, header: str) -> list:
        m = re.search(re.escape(header) + r'[ \n]"""\n(.*?)\n?"""', text, re.DOTALL)
        if not m:
            return []
        return [line[1:] for line in m.group(1).split("\n") if line.startswith("*") and len(line) > 1]

    def _explain(self, text: str) -> str:
        act = self._section(text, "Examples where the attention head is active:")
        ina = self._section(text, "Examples where the attention head is inactive:")
        fa, fi = Counter(), Counter()
        for p in act:
            fa.update(_ngrams(p, self.n_max))
        for p in ina:
            fi.update(_ngrams(p, self.n_max))
        na, ni = max(len(act), 1), max(len(ina), 1)
        scored = sorted(((fa[g] / na - fi[g] / ni, -len(g), g) for g in fa), reverse=True)
        best = scored[0][0] if scored else 0.0
        feats = [g for s, _, g in scored if s > 0 and s >= 0.5 * best][: self.n_features]
        if not feats:
            return "The head is active on no particular feature that distinguishes the examples."
        quoted = ", ".join(f'"{f}"' for f in feats[:-1]) + (" or " if len(feats) > 1 else "") + f'"{feats[-1]}"'
        return f"The head is active when the document contains {quoted}."

    def _classify(self, text: str) -> str:
        # the explanation comes before the example in every version (after the question in 2023)
        expl, _, rest = text.partition('Example: """\n')
        feats = re.findall(r'"([^"]+)"', expl)
        m = re.search(r'^(.*)\n"""', rest, re.DOTALL)
        example = m.group(1) if m else ""
        grams = _ngrams(example, self.n_max)
        return "Yes" if any(f in grams for f in feats) else "No"
