"""Explanations of attention heads and their scores (METHOD §5).

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

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

__all__ = ["EXPLAIN_TEMPLATE", "CLASSIFY_TEMPLATE", "PREDICTION_COLUMNS", "explain_heads", "score_explanations",
           "parse_yes_no", "OfflineExplainer", "build_explain_prompt", "build_classify_prompt", "VERSIONS"]

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

CLASSIFY_TEMPLATE = (
    "{explanation}\n"
    "Is the given example an active example? (Yes/No)\n"
    "\n"
    "Example: \"\"\"\n"
    "{example}{token}\n"
    "\"\"\"\n"
    "Answer: "
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
_AUTHORS_QUESTION = "Is the given example an active example? (Yes/No)\n"
_AUTHORS_PREAMBLE_2023 = "The example is active when the example "


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(map(repr, VERSIONS))}, got {version!r}")


def _shown(prompt: str, token: str, version: str) -> str:
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
    _check_version(version)
    if version == "ctxlookup":
        return template.format(token=token.strip() if token else token,
                               active="\n".join(f"*{_shown(p, token, version)}" for p in active),
                               inactive="\n".join(f"*{_shown(p, token, version)}" for p in inactive))
    if template is not EXPLAIN_TEMPLATE and template != EXPLAIN_TEMPLATE:
        raise ValueError(f"a template applies to version 'ctxlookup' only, not to the authors' version {version!r}")
    pos = "\n*".join(_shown(p, token, version) for p in active)
    neg = "\n*".join(_shown(p, token, version) for p in inactive)
    return (_AUTHORS_CONTEXT + _AUTHORS_HEAD.format(token=token) + _AUTHORS_INSTRUCTION
            + f'Examples where the attention head is active: """\n*{pos}\n"""\n'
            + f'Examples where the attention head is inactive: """\n*{neg}\n"""\n'
            + _AUTHORS_END[version])


def build_classify_prompt(explanation: str, example: str, token: str, template: str = CLASSIFY_TEMPLATE,
                          version: str = "ctxlookup") -> str:
    """The classification request's text (Fig. 9) for one test prompt ``example`` (the token is
    appended to it). ``"ctxlookup"`` fills ``template`` (the explanation as it is); ``"2023"`` /
    ``"2024"``: byte for byte the authors' ``ClassifyPromptGen`` of that version, the explanation's
    line breaks as spaces: 2023 puts the question first, then ``The example is active when the
    example {explanation}``; 2024 puts the explanation first, then the question and an empty line.
    """
    _check_version(version)
    shown = _shown(example, token, version)
    if version == "ctxlookup":
        return template.format(explanation=explanation, example=example, token=token)
    if template is not CLASSIFY_TEMPLATE and template != CLASSIFY_TEMPLATE:
        raise ValueError(f"a template applies to version 'ctxlookup' only, not to the authors' version {version!r}")
    flat = explanation.replace("\n", " ")
    block = 'Example: """\n' + shown + '\n"""' + "\nAnswer: "
    if version == "2023":
        return _AUTHORS_QUESTION + _AUTHORS_PREAMBLE_2023 + flat + "\n" + block
    return flat + "\n" + _AUTHORS_QUESTION + "\n" + block


_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_yes_no(answer: Optional[str], parse: str = "lenient") -> Optional[bool]:
    """``True`` for Yes, ``False`` for No, None otherwise. ``parse="lenient"`` (default): any case,
    spacing or punctuation around the word; ``"exact"``: the answer must be exactly ``"Yes"`` or
    ``"No"`` (the authors' rule; anything else is ignored)."""
    if parse not in ("lenient", "exact"):
        raise ValueError(f"parse must be 'lenient' or 'exact', got {parse!r}")
    if not isinstance(answer, str):
        return None
    if parse == "exact":
        return True if answer == "Yes" else False if answer == "No" else None
    m = _YES_NO.match(answer.strip())
    return None if m is None else m.group(1).lower() == "yes"


def _messages(text: str) -> list:
    return [{"role": "user", "content": text}]


def _pairs(heads: pd.DataFrame):
    for h in heads.itertuples(index=False):
        yield int(h.layer), int(h.neuron), int(h.head_layer), int(h.head)


AUTHORS_MAX_PROMPT_TOKENS = 100  # the authors drop prompts of this many tokens or more (remove_prompts_longer_than)
AUTHORS_MAX_EXPLAIN_PROMPTS = 30  # 2023: every train prompt of the neuron, at most 30


def _active_set(attribution: pd.DataFrame) -> set:
    """``{(prompt_id, head_layer, head)}`` of the rows where the head is active."""
    a = attribution[attribution["active"].astype(bool)]
    return set(zip(a["prompt_id"].tolist(), a["head_layer"].tolist(), a["head"].tolist()))


def _neuron_examples(g: pd.DataFrame, active, hl: int, h: int, version: str, limit: Optional[int]) -> list:
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
    :func:`_neuron_examples`), 2023 with at most ``max_prompts`` (default 30) prompts.
    ``temperature=None`` sends no temperature (the authors sent none).
    """
    _check_version(version)
    if max_prompts is None and version == "2023":
        max_prompts = AUTHORS_MAX_EXPLAIN_PROMPTS
    active = _active_set(attribution)
    by_neuron = {k: g for k, g in prompts.groupby(["layer", "neuron"], sort=False)}
    jobs, meta = [], []
    for layer, neuron, hl, h in _pairs(selected_heads):
        g = by_neuron.get((layer, neuron))
        if g is None:
            continue
        token = g["token"].iloc[0] if "token" in g.columns else ""
        ex = _neuron_examples(g, active, hl, h, version, max_prompts)
        act = [t for _, t, a in ex if a]
        ina = [t for _, t, a in ex if not a]
        text = build_explain_prompt(token, act, ina, template, version=version)
        jobs.append(_messages(text))
        meta.append((layer, neuron, hl, h, token, len(act), len(ina), text))
    results = explainer.complete_many(jobs, max_tokens=max_tokens, temperature=temperature, stage=stage) if jobs else []
    rows = []
    for m, r in zip(meta, results):
        rows.append(m + (r.content if r.error is None else None, r.error))
    return pd.DataFrame(rows, columns=["layer", "neuron", "head_layer", "head", "token", "n_active", "n_inactive",
                                       "prompt", "explanation", "error"])


PREDICTION_COLUMNS = ["layer", "neuron", "head_layer", "head", "prompt_id", "actual", "predicted", "answer", "error"]


def score_explanations(explanations: pd.DataFrame, test_prompts: pd.DataFrame, test_attribution: pd.DataFrame,
                       classifier, template: str = CLASSIFY_TEMPLATE, stage: str = "classify",
                       return_predictions: bool = False, version: str = "ctxlookup", one_class: str = "drop",
                       parse: str = "lenient", max_test: Optional[int] = None, temperature: Optional[float] = 0.0):
    """Score each explanation on the neuron's test prompts.

    Returns the explanations with ``n_test, TP, FP, TN, FN, n_unparsed, TPR, TNR, E, PPV, NPV,
    E_ppv_npv, one_class``. Answers that are not Yes/No are counted in ``n_unparsed`` and left out
    of the confusion counts, never guessed.

    - ``version``: the request text (:func:`build_classify_prompt`) and the test prompts used:
      ``"ctxlookup"`` every given test prompt; ``"2023"`` / ``"2024"`` as the authors' code (a
      repeated text is asked once; prompts of 100 tokens or more dropped, where ``n_tokens`` is known).
    - ``max_test``: only the first ``max_test`` test prompts of each neuron (the authors: 20 in
      their recorded data, 10 in the paper); None: all.
    - ``one_class``: a head whose answered test prompts are all of one class: ``"drop"``
      (default, the paper and the 2024 code): NaN scores, left out of statistics; ``"keep"`` (the
      2023 code that made the recorded data): E is the one defined rate (TNR when no prompt is
      active, TPR when every prompt is). ``one_class`` is True for these heads either way.
    - ``parse``: ``"lenient"`` (default) or ``"exact"`` (the authors': only "Yes" / "No"), see
      :func:`parse_yes_no`.
    - ``temperature``: sent with each request; None sends none (the authors').

    With ``return_predictions=True`` returns ``(scores, predictions)``: ``predictions`` has one
    row per explanation and test prompt, ``[layer, neuron, head_layer, head, prompt_id, actual,
    predicted, answer, error]`` (plus ``n_prompts_per_neuron`` when the explanations carry it):
    ``actual`` is the head's real activity on the prompt, ``predicted`` the parsed answer (True
    for Yes, False for No, None when unparsed), ``answer`` the classifier's raw text.
    """
    _check_version(version)
    if one_class not in ("drop", "keep"):
        raise ValueError(f"one_class must be 'drop' or 'keep', got {one_class!r}")
    parse_yes_no("", parse)  # validates parse
    if max_test is not None and (isinstance(max_test, bool) or not isinstance(max_test, (int, np.integer)) or max_test < 1):
        raise ValueError(f"max_test must be a positive int or None, got {max_test!r}")
    active = _active_set(test_attribution)
    by_neuron = {k: g for k, g in test_prompts.groupby(["layer", "neuron"], sort=False)}
    jobs, owners = [], []
    for i, e in enumerate(explanations.itertuples(index=False)):
        if not isinstance(e.explanation, str):
            continue
        g = by_neuron.get((e.layer, e.neuron))
        if g is None:
            continue
        if version == "ctxlookup":
            g = g if max_test is None else g.iloc[:max_test]
            examples = [(pid, t, (pid, e.head_layer, e.head) in active) for pid, t in zip(g.prompt_id, g.text)]
        else:
            # the authors: the first max_test distinct texts
            examples = _neuron_examples(g, active, e.head_layer, e.head, version, None)[:max_test]
        for pid, text, truth in examples:
            jobs.append(_messages(build_classify_prompt(e.explanation, text, e.token, template, version=version)))
            owners.append((i, truth, pid))
    results = classifier.complete_many(jobs, max_tokens=1, temperature=temperature, stage=stage) if jobs else []
    stats = [dict(n_test=0, TP=0, FP=0, TN=0, FN=0, n_unparsed=0) for _ in range(len(explanations))]
    pred_rows = []
    for (i, truth, pid), r in zip(owners, results):
        s = stats[i]
        s["n_test"] += 1
        pred = parse_yes_no(r.content, parse) if r.error is None else None
        pred_rows.append((i, pid, truth, pred, r.content, r.error))
        if pred is None:
            s["n_unparsed"] += 1
        elif pred and truth:
            s["TP"] += 1
        elif pred and not truth:
            s["FP"] += 1
        elif truth:
            s["FN"] += 1
        else:
            s["TN"] += 1
    out = explanations.copy()
    for k in ("n_test", "TP", "FP", "TN", "FN", "n_unparsed"):
        out[k] = [s[k] for s in stats]
    pos, neg = out.TP + out.FN, out.TN + out.FP
    out["one_class"] = (pos == 0) | (neg == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["TPR"] = np.where(pos > 0, out.TP / pos.where(pos > 0, 1), np.nan)
        out["TNR"] = np.where(neg > 0, out.TN / neg.where(neg > 0, 1), np.nan)
        if one_class == "keep":
            out["E"] = np.where(pos == 0, out.TNR, np.where(neg == 0, out.TPR, (out.TPR + out.TNR) / 2))
        else:
            out["E"] = np.where(out.one_class, np.nan, (out.TPR + out.TNR) / 2)
        pp, pn = out.TP + out.FP, out.TN + out.FN
        out["PPV"] = np.where(pp > 0, out.TP / pp.where(pp > 0, 1), np.nan)
        out["NPV"] = np.where(pn > 0, out.TN / pn.where(pn > 0, 1), np.nan)
        out["E_ppv_npv"] = np.where(out.one_class, np.nan, (out.PPV + out.NPV) / 2)
    out.attrs.update(version=version, one_class=one_class, parse=parse, max_test=max_test)
    if not return_predictions:
        return out
    return out, _predictions_table(explanations, pred_rows)


def _predictions_table(explanations: pd.DataFrame, pred_rows: list) -> pd.DataFrame:
    """The classifier's answer on every (explanation, test prompt), in the order they were asked."""
    extra = ["n_prompts_per_neuron"] if "n_prompts_per_neuron" in explanations.columns else []
    keys = list(explanations[["layer", "neuron", "head_layer", "head"] + extra].itertuples(index=False, name=None))
    rows = []
    for i, pid, truth, pred, answer, error in pred_rows:
        k = [int(x) for x in keys[i]]
        rec = dict(layer=k[0], neuron=k[1], head_layer=k[2], head=k[3], prompt_id=int(pid), actual=bool(truth),
                   predicted=pred, answer=answer if isinstance(answer, str) else None, error=error)
        if extra:
            rec["n_prompts_per_neuron"] = k[4]
        rows.append(rec)
    df = pd.DataFrame(rows, columns=PREDICTION_COLUMNS[:4] + extra + PREDICTION_COLUMNS[4:])
    # a nullable boolean: None where the answer was not Yes/No
    df["predicted"] = df["predicted"].astype("boolean")
    df["answer"] = df["answer"].astype(object)
    df["error"] = df["error"].astype(object)
    return df


# --------------------------------------------------------------------------- offline baseline
_WORD = re.compile(r"[A-Za-z0-9_']+")


def _ngrams(text: str, n_max: int = 2) -> set:
    words = [w.lower() for w in _WORD.findall(text)]
    out = set(words)
    for n in range(2, n_max + 1):
        out.update(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return out


@dataclass
class _Result:
    content: Optional[str]
    error: Optional[str] = None
    cached: bool = False
    usage: Optional[dict] = None


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
            out.append(_Result(self._answer(text)))
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
