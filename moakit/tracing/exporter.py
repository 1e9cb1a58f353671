"""The span processor that writes every finished span to the :class:`TraceStore` at once.

Content attributes (prompts, outputs) are moved out of the JSON attributes into the
content-addressed ``texts`` table; the rest is promoted into indexed columns or kept as JSON.
Every string passes through :func:`moakit.tracing.redact.redact` first."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import StatusCode

from . import attributes as A
from .redact import redact
from .store import TraceStore, text_hash

_PROMOTED = A.PROMOTED


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def output_text(output_messages: str) -> str:
    """The plain text of a ``gen_ai.output.messages`` JSON value."""
    try:
        msgs = json.loads(output_messages)
        return "".join(p.get("content", "") for m in msgs for p in m.get("parts", []) if p.get("type") == "text")
    except (ValueError, AttributeError, TypeError):
        return output_messages


def span_to_row(span: ReadableSpan) -> tuple[dict[str, Any], dict[str, str]]:
    attrs = {k: (redact(v) if isinstance(v, str) else v) for k, v in (span.attributes or {}).items()}
    texts: dict[str, str] = {}
    row: dict[str, Any] = {
        "span_id": _hex(span.context.span_id, 16),
        "trace_id": _hex(span.context.trace_id, 32),
        "parent_id": _hex(span.parent.span_id, 16) if span.parent else None,
        "name": span.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
    }
    for key, col in _PROMOTED.items():
        if key in attrs:
            row[col] = attrs.pop(key)
    if span.status.status_code is StatusCode.ERROR:
        row["error"] = redact(f"{attrs.get(A.ERROR_TYPE, 'error')}: {span.status.description or ''}".rstrip(": "))

    def store_text(value: str, col: str) -> None:
        h = text_hash(value)
        texts[h] = value
        row[col] = h

    if A.INPUT_MESSAGES in attrs:
        store_text(attrs.pop(A.INPUT_MESSAGES), "input_hash")
    if A.SYSTEM_INSTRUCTIONS in attrs:
        store_text(attrs.pop(A.SYSTEM_INSTRUCTIONS), "system_hash")
    if A.OUTPUT_MESSAGES in attrs:
        store_text(output_text(attrs.pop(A.OUTPUT_MESSAGES)), "output_hash")
    if A.OUTPUT in attrs:
        store_text(attrs.pop(A.OUTPUT), "output_hash")
    row["attributes"] = json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()},
                                   ensure_ascii=False)
    return row, texts


class SQLiteSpanProcessor(SpanProcessor):
    """Writes each span to the store when it ends (one small transaction)."""

    def __init__(self, store: TraceStore):
        self.store = store

    def on_start(self, span, parent_context=None) -> None:  # noqa: D401 - nothing to do
        pass

    def on_end(self, span: ReadableSpan) -> None:
        row, texts = span_to_row(span)
        self.store.write([row], texts)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
