"""Runnable examples: ``python -m ctxlookup.examples.quickstart``."""
