"""Former home of the scan and the truncation, kept so that older imports keep working: the scan is
:mod:`ctxlookup.scan`, the truncation :mod:`ctxlookup.truncate`, document tokenization
:mod:`ctxlookup.batching`."""
from .batching import doc_tokens as _doc_tokens  # noqa: F401  (the report's import until it reads through batching)
from .scan import max_activating, neuron_table
from .truncate import truncate

__all__ = ["max_activating", "truncate", "neuron_table"]
