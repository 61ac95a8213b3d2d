"""The bundled demo model and corpus, and how they were made (``python -m ctxlookup.demo.train``)."""
