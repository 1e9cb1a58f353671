"""Simulations with known truth for every analysis of :mod:`moakit.analysis`.

``python -m validation.run --full`` runs every case over its full number of simulated datasets
and writes VALIDATION.md; ``--quick`` runs a few datasets per case (a smoke test: CI). Each
case module (``validation/cases_*.py``) defines ``CASES``, a list of :class:`validation.core.Case`.
"""
