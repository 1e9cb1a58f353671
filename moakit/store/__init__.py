"""The trace store: schema, ids, request keys, redaction, the record builder, the writer, the
SQLite file and its readers, import and export. It knows nothing of steps or providers.

Imports are lazy: ``moakit.store.schema`` and friends load without SQLite or pandas."""

from __future__ import annotations

import importlib

_EXPORTS = {"TraceStore": "store", "open_store": "store", "default_path": "store",
            "Redactor": "redact", "REDACTOR": "redact", "add_redactor": "redact"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"moakit.store.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'moakit.store' has no attribute {name!r}")
