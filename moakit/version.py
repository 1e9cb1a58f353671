"""moakit's version (one place: the package, exports and the CLI read it)."""

__version__ = "0.1.0"
