"""moakit: run Mixture-of-Agents pipelines, trace every LLM call to SQLite, analyse in Jupyter.

Quick start::

    import moakit
    from moakit.pipelines import together_moa
    result = moakit.run(together_moa, "Explain MoA", models="local")
    result.output, result.calls

Imports are lazy: ``import moakit`` stays fast; litellm, pandas and widgets load when used.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from .version import __version__  # noqa: E402,F401

_EXPORTS = {
    "run": "moakit.runner", "arun": "moakit.runner", "Result": "moakit.runner",
    "run_batch": "moakit.runner", "arun_batch": "moakit.runner",
    "replay": "moakit.runner",
    "diff": "moakit.runner.diff", "estimate": "moakit.runner.estimate", "Budget": "moakit.runner.budget",
    "mixture_client": "moakit.runner.mixture_client", "BudgetExceeded": "moakit.errors",
    "TraceStore": "moakit.store", "open_store": "moakit.store", "Redactor": "moakit.store",
    "add_redactor": "moakit.store",
    "show": "moakit.widgets",
    "ReplayMiss": "moakit.errors", "PipelineError": "moakit.errors", "ModelError": "moakit.errors",
    "MoakitError": "moakit.errors", "TraceFileError": "moakit.errors",
    "ClientConfig": "moakit.llm", "register_alias": "moakit.models",
    **{name: "moakit.steps" for name in ("Propose", "Synthesize", "Aggregate", "Refine", "Rank", "Vote", "Shuffle",
                                         "Dropout", "Sample", "Take", "Filter", "Map")},
}
_MODULES = {"pipelines", "steps", "prompts", "models", "analysis", "widgets", "store", "llm", "runner"}

__all__ = sorted(_EXPORTS) + sorted(_MODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f"moakit.{name}")
    if name == "run":  # the package moakit.run shares its name with the function moakit.run
        return importlib.import_module("moakit.runner").run
    raise AttributeError(f"module 'moakit' has no attribute {name!r}")


def __dir__():
    return __all__
