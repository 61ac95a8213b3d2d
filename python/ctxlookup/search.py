"""Former home of the scan and the truncation, kept so that older imports keep working: the scan is
:mod:`ctxlookup.scan`, the truncation :mod:`ctxlookup.truncate`, document tokenization and progress
bars :mod:`ctxlookup.batching`."""
from .batching import doc_tokens, progress as progress_bar  # noqa: F401  (older public names)
from .scan import max_activating, neuron_table
from .truncate import truncate

__all__ = ["max_activating", "truncate", "neuron_table"]
