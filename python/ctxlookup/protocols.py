"""Protocols: which version of the procedure a replication follows (METHOD §0).

The authors ran the method twice with different rules and published numbers from both runs (their
recorded data and both versions of their code are in ``shared/data/authors``). A protocol selects
every step's rule as a unit, so a user reproduces one of them, or ctxlookup's own improvements,
with one option:

``paper`` (default)
    The paper's text as the authors' 2024 code implements it (the run behind Figure 5 and Table 3).
``authors-2023``
    Exactly the rules that produced the authors' recorded data (``code-2023``); the paper's §5.4
    ablation p-values come from this run.
``ctxlookup``
    ctxlookup's own choices where it improves on the authors' (exact truncation, heads eligible by
    architecture, every neuron named by its best whole-word token, temperature 0, ...).

Every field below is one rule; :func:`get` returns the protocol, and ``dataclasses.replace`` (or
the individual options of :class:`ctxlookup.replicate.Options`) overrides single rules. The
README has the same table with the reason for each rule.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

__all__ = ["Protocol", "PROTOCOLS", "get", "names"]


@dataclass(frozen=True)
class Protocol:
    """One version of the procedure, rule by rule (METHOD section in brackets)."""

    name: str
    # §2 next-token neurons. "skip": the neuron's token is its argmax over all tokens, and a neuron
    # whose token is not a whole word (or is a glitch token) is skipped and reported; "rename": the
    # neuron is named after its best whole-word, non-glitch token.
    token_rule: str
    random_token_filter: Optional[str]    # random baseline's candidate tokens: None = all, "whole_word"
    # §3 max-activating prompts and truncation
    truncation: str                       # "binary" (the authors' search) or "exact"
    newlines: str                         # line breaks shown as spaces: "lf" ("\n" only, the authors') or "all"
    scan_k: int                           # documents kept per neuron by each scan (the authors: 30)
    prompts_per_neuron: int               # train prompts per neuron (authors-2023: all the scan kept, 30)
    test_prompts_per_neuron: int
    count_after_drop: bool                # the first n prompts after dropping long ones (authors) or rank < n
    dedupe_text: bool                     # a neuron's prompts with the same text count once (the authors keyed them by text)
    retokenize: bool                      # attribution and ablation run BOS + the prompt's text re-encoded (authors)
    # §4 attribution and head selection
    rule: str                             # eligible heads: "authors" (k < l) or "architecture"
    active_rule: str                      # "mean+2sd" (ddof=1) or "top3"
    low: float
    high: float                           # 1.0: no upper bound
    low_strict: bool                      # count > low * n (2023) instead of >= low * n
    # §5 explanations and scores
    template_version: str                 # "2024", "2023" or "ctxlookup"
    temperature: Optional[float]          # None: the request carries no temperature
    one_class: str                        # heads whose test prompts are one class: "drop" or "keep" (the one defined rate)
    parse: str                            # answers: "exact" ("Yes"/"No" only) or "lenient"
    ddof: int                             # std of E in the statistics
    figure_style: str                     # "paper" (per-model histogram, box plots) or "overlay"
    # §6 ablation
    ablation_prompts: str                 # "test" (paper §5.4, the authors) or "train"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS = {
    "paper": Protocol(
        name="paper", token_rule="skip", random_token_filter=None, truncation="binary", newlines="lf", scan_k=30,
        prompts_per_neuron=20, test_prompts_per_neuron=10, count_after_drop=True, dedupe_text=True, retokenize=True,
        rule="authors", active_rule="mean+2sd", low=0.25, high=0.75, low_strict=False,
        template_version="2024", temperature=None, one_class="drop", parse="exact", ddof=0, figure_style="paper",
        ablation_prompts="test"),
    "authors-2023": Protocol(
        name="authors-2023", token_rule="skip", random_token_filter=None, truncation="binary", newlines="lf",
        scan_k=30, prompts_per_neuron=30, test_prompts_per_neuron=20, count_after_drop=True, dedupe_text=True, retokenize=True,
        rule="authors", active_rule="top3", low=0.25, high=1.0, low_strict=True,
        template_version="2023", temperature=None, one_class="keep", parse="exact", ddof=0, figure_style="paper",
        ablation_prompts="test"),
    "ctxlookup": Protocol(
        name="ctxlookup", token_rule="rename", random_token_filter="whole_word", truncation="exact", newlines="all",
        scan_k=30, prompts_per_neuron=20, test_prompts_per_neuron=10, count_after_drop=False, dedupe_text=False, retokenize=False,
        rule="architecture", active_rule="mean+2sd", low=0.25, high=0.75, low_strict=False,
        template_version="ctxlookup", temperature=0.0, one_class="drop", parse="lenient", ddof=1,
        figure_style="overlay", ablation_prompts="test"),
}

DEFAULT = "paper"


def names() -> list:
    return list(PROTOCOLS)


def get(protocol="paper", **overrides) -> Protocol:
    """The protocol named ``protocol`` (or a :class:`Protocol` itself), with ``overrides`` (field
    names; None values are ignored) replacing single rules."""
    if isinstance(protocol, Protocol):
        p = protocol
    else:
        try:
            p = PROTOCOLS[protocol]
        except (KeyError, TypeError):
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}") from None
    fields = {f.name for f in dataclasses.fields(Protocol)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown protocol rule(s): {', '.join(bad)}")
    return dataclasses.replace(p, **{k: v for k, v in overrides.items() if v is not None})
