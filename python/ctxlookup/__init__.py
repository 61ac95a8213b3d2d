"""ctxlookup: interpreting context look-ups in transformers, on a fast, exact C core.

The method of "Interpreting Context Look-ups in Transformers" (Neo, Cohen, Barez, EMNLP 2024):
next-token neurons (:func:`next_token_neurons`), their max-activating prompts
(:func:`max_activating`, :func:`truncate`), the attention heads that drive them
(:func:`head_attribution`, :func:`select_heads`) and the ablation check (:func:`ablate_heads`);
plus the an-neuron post's tools (:mod:`ctxlookup.anneuron`). Models: :class:`Model`. A run's HTML
report, and the same views in Jupyter: :mod:`ctxlookup.report` (``ctxlookup.report(run_dir)``). The
paper's statistics and figures: :mod:`ctxlookup.stats`.
"""
from . import hub, llm, stats
from ._core import FormatError, get_num_threads, set_num_threads
from .anneuron import activation_patching, activation_vs_prediction, logit_lens, next_token_evidence
from .attribution import ablate_heads, head_attribution, select_heads
from .corpus import Corpus, CorpusError, Document
from .model import ActivationCache, Model, get_act_name
from .neurons import detect_glitch_tokens, mutual_exclusive_congruence, next_token_neurons, random_neurons
from .search import max_activating, truncate
from .tokenizer import Tokenizer
from .explain import OfflineExplainer, explain_heads, score_explanations
from .replicate import replicate
from . import report  # a callable module: ctxlookup.report(run_dir); ctxlookup.report.NeuronView(...)

__version__ = "0.1.0"
__all__ = [
    "Model", "Tokenizer", "ActivationCache", "get_act_name", "FormatError", "set_num_threads", "get_num_threads",
    "Corpus", "CorpusError", "Document",
    "next_token_neurons", "random_neurons", "mutual_exclusive_congruence", "detect_glitch_tokens",
    "max_activating", "truncate", "head_attribution", "select_heads", "ablate_heads",
    "logit_lens", "activation_patching", "activation_vs_prediction", "next_token_evidence", "explain_heads", "score_explanations",
    "OfflineExplainer", "replicate", "report", "stats", "llm", "hub", "__version__",
]
