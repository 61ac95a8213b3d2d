"""The package's version (also in pyproject.toml), in a module of its own so that the modules of
the package read it without importing the package's face."""
__version__ = "0.1.0"
