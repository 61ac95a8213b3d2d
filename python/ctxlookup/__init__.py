"""ctxlookup: interpreting context look-ups in transformers, on a fast, exact C core.

The method of "Interpreting Context Look-ups in Transformers" (Neo, Cohen, Barez, EMNLP 2024):
next-token neurons (:func:`next_token_neurons`), their max-activating prompts
(:func:`max_activating`, :func:`truncate`), the attention heads that drive them
(:func:`head_attribution`, :func:`select_heads`), their explanations and scores
(:func:`explain_heads`, :func:`score_explanations`) and the ablation check (:func:`ablate_heads`);
the an-neuron post's check of every neuron (:func:`next_token_evidence`) and its tools for one
neuron (:mod:`ctxlookup.anneuron`). One module per stage: ``neurons``, ``scan``, ``truncate``,
``attribution``, ``selection``, ``explain``, ``score``, ``ablation``, ``stats``, ``evidence``;
model input (BOS, batches, progress bars) is made in ``batching``; ``replicate`` runs the
stages over a run directory. Models: :class:`Model`. A run's HTML
report, and the same views in Jupyter: :mod:`ctxlookup.report` (``ctxlookup.report(run_dir)``). The
paper's statistics and figures: :mod:`ctxlookup.stats`.
"""
from . import hub, llm, stats
from ._core import FormatError, get_num_threads, set_num_threads
from ._version import __version__
from .ablation import ablate_heads
from .anneuron import activation_patching, activation_vs_prediction, logit_lens
from .attribution import head_attribution
from .evidence import next_token_evidence
from .corpus import Corpus, CorpusError, Document
from .model import ActivationCache, Model, get_act_name
from .neurons import detect_glitch_tokens, mutual_exclusive_congruence, next_token_neurons, random_neurons
from .scan import max_activating
from .selection import select_heads
from .tokenizer import Tokenizer
from .truncate import truncate
from .explain import OfflineExplainer, explain_heads
from .score import score_explanations
from .replicate import replicate
from . import report  # a callable module: ctxlookup.report(run_dir); ctxlookup.report.NeuronView(...)

__all__ = [
    "Model", "Tokenizer", "ActivationCache", "get_act_name", "FormatError", "set_num_threads", "get_num_threads",
    "Corpus", "CorpusError", "Document",
    "next_token_neurons", "random_neurons", "mutual_exclusive_congruence", "detect_glitch_tokens",
    "max_activating", "truncate", "head_attribution", "select_heads", "ablate_heads",
    "logit_lens", "activation_patching", "activation_vs_prediction", "next_token_evidence", "explain_heads", "score_explanations",
    "OfflineExplainer", "replicate", "report", "stats", "llm", "hub", "__version__",
]
