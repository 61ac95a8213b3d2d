"""ctxlookup: interpreting context look-ups in transformers, on a fast, exact C core."""
from ._core import FormatError, get_num_threads, set_num_threads
from .model import Model

__version__ = "0.1.0"
__all__ = ["Model", "FormatError", "set_num_threads", "get_num_threads", "__version__"]
