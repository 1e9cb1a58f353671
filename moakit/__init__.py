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

__version__ = "0.1.0"

_EXPORTS = {
    "run": "moakit.engine", "arun": "moakit.engine", "Result": "moakit.result",
    "run_batch": "moakit.batch", "arun_batch": "moakit.batch",
    "replay": "moakit.replay",
    "TraceStore": "moakit.tracing.store",
    "show": "moakit.widgets",
    "ReplayMiss": "moakit.errors", "PipelineError": "moakit.errors", "ModelError": "moakit.errors",
    "MoakitError": "moakit.errors", "TraceFileError": "moakit.errors",
    "ClientConfig": "moakit.client", "register_alias": "moakit.models", "add_redactor": "moakit.tracing.redact",
    **{name: "moakit.steps" for name in ("Propose", "Synthesize", "Aggregate", "Refine", "Rank", "Vote", "Shuffle",
                                         "Dropout", "Sample", "Take", "Filter", "Map")},
}
_MODULES = {"pipelines", "steps", "prompts", "models", "analysis", "widgets", "tracing", "engine", "client"}

__all__ = sorted(_EXPORTS) + sorted(_MODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f"moakit.{name}")
    raise AttributeError(f"module 'moakit' has no attribute {name!r}")


def __dir__():
    return __all__
