"""The span processor that writes every finished span to the :class:`TraceStore` at once.

Content attributes (prompts, outputs) are moved out of the JSON attributes into the
content-addressed ``texts`` table; the rest is promoted into indexed columns or kept as JSON.
Every string passes through :func:`moakit.tracing.redact.redact` first."""

from __future__ import annotations

import atexit
import json
import re
import threading
import weakref
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


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(v: Any) -> Any:
    """Redact a string attribute (or each string of a sequence) and replace lone surrogates,
    which SQLite's UTF-8 cannot hold, by U+FFFD."""
    if isinstance(v, str):
        v = redact(v)
        return v if v.isascii() else _LONE_SURROGATE.sub("\ufffd", v)  # isascii() is O(1)
    if isinstance(v, (tuple, list)):
        return [_clean(x) for x in v]
    return v


def span_to_row(span: ReadableSpan) -> tuple[dict[str, Any], dict[str, str]]:
    attrs = {k: _clean(v) for k, v in (span.attributes or {}).items()}
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
        row["error"] = _clean(f"{attrs.get(A.ERROR_TYPE, 'error')}: {span.status.description or ''}".rstrip(": "))

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
    """Writes finished spans to the store. A paid LLM call (or a failed attempt) and a run's
    own span are committed before ``on_end`` returns, so a crash loses no call that was paid
    for. Step spans and calls served from the store wait and go into the same transaction as
    the next span committed, at the latest when their run ends: a replayed run is then one
    transaction, not one per span (a commit costs ~50 us, more than the rest of a replayed call)."""

    MAX_PENDING = 512

    def __init__(self, store: TraceStore):
        self.store = store
        self._rows: list[dict[str, Any]] = []
        self._texts: dict[str, str] = {}
        self._lock = threading.Lock()
        _processors.add(self)

    def on_start(self, span, parent_context=None) -> None:  # noqa: D401 - nothing to do
        pass

    def on_end(self, span: ReadableSpan) -> None:
        row, texts = span_to_row(span)
        kind = row.get("kind")
        durable = kind == "run" or span.parent is None or (kind == "call" and not row.get("cached"))
        with self._lock:
            self._rows.append(row)
            self._texts.update(texts)
            if not durable and len(self._rows) < self.MAX_PENDING:
                return
        self.flush()

    def add_row(self, row: dict[str, Any], texts: dict[str, str]) -> None:
        """Queue a row made without a span (a replayed call, see ``Client._replayed_row``): it
        waits for the next commit like a replayed call's span."""
        with self._lock:
            self._rows.append(row)
            self._texts.update(texts)
            if len(self._rows) < self.MAX_PENDING:
                return
        self.flush()

    def flush(self) -> None:
        """Commit every span waiting (one transaction)."""
        with self._lock:
            rows, texts = self._rows, self._texts
            self._rows, self._texts = [], {}
        if not rows:
            return
        try:
            self.store.write(rows, texts)
        except BaseException:
            with self._lock:  # keep them for the next attempt
                self._rows[:0] = rows
                self._texts.update(texts)
            raise

    def shutdown(self) -> None:
        self.flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return True


_processors: "weakref.WeakSet[SQLiteSpanProcessor]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:  # spans that ended after their run (rare): written at exit
    for p in list(_processors):
        try:
            p.flush()
        except Exception:  # noqa: BLE001 - the store may be closed already
            pass
