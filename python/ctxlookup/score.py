"""Scores of the head explanations (METHOD §5): each explanation is scored by zero-shot
classification of held-out test prompts (the paper's Fig. 9 prompt, one prompt per request,
``max_tokens=1``, Yes/No) against the head's real activity: ``E = (TPR + TNR) / 2`` (default; the
paper's printed PPV/NPV mean is the secondary column ``E_ppv_npv``). The explanations themselves:
:mod:`ctxlookup.explain`.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np
import pandas as pd

from .explain import active_set, check_version, neuron_examples, shown_example, user_message

__all__ = ["CLASSIFY_TEMPLATE", "PREDICTION_COLUMNS", "score_explanations", "parse_yes_no", "build_classify_prompt"]

CLASSIFY_TEMPLATE = (
    "{explanation}\n"
    "Is the given example an active example? (Yes/No)\n"
    "\n"
    "Example: \"\"\"\n"
    "{example}{token}\n"
    "\"\"\"\n"
    "Answer: "
)

# The authors' classification template (their datahandlers.py ClassifyPromptGen), piece by piece.
_AUTHORS_QUESTION = "Is the given example an active example? (Yes/No)\n"
_AUTHORS_PREAMBLE_2023 = "The example is active when the example "


def build_classify_prompt(explanation: str, example: str, token: str, template: str = CLASSIFY_TEMPLATE,
                          version: str = "ctxlookup") -> str:
    """The classification request's text (Fig. 9) for one test prompt ``example`` (the token is
    appended to it). ``"ctxlookup"`` fills ``template`` (the explanation as it is); ``"2023"`` /
    ``"2024"``: byte for byte the authors' ``ClassifyPromptGen`` of that version, the explanation's
    line breaks as spaces: 2023 puts the question first, then ``The example is active when the
    example {explanation}``; 2024 puts the explanation first, then the question and an empty line.
    """
    check_version(version)
    shown = shown_example(example, token, version)
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
    check_version(version)
    if one_class not in ("drop", "keep"):
        raise ValueError(f"one_class must be 'drop' or 'keep', got {one_class!r}")
    parse_yes_no("", parse)  # validates parse
    if max_test is not None and (isinstance(max_test, bool) or not isinstance(max_test, (int, np.integer)) or max_test < 1):
        raise ValueError(f"max_test must be a positive int or None, got {max_test!r}")
    active = active_set(test_attribution)
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
            examples = neuron_examples(g, active, e.head_layer, e.head, version, None)[:max_test]
        for pid, text, truth in examples:
            jobs.append(user_message(build_classify_prompt(e.explanation, text, e.token, template, version=version)))
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
