"""The span processor that writes every finished span to the :class:`TraceStore` at once.

Content attributes (prompts, outputs) are moved out of the JSON attributes into the
content-addressed ``texts`` table; the rest is promoted into indexed columns or kept as JSON.
Every string passes through :func:`moakit.tracing.redact.redact` first."""

from __future__ import annotations

import asyncio
import atexit
import json
import re
import threading
import time
import weakref
from typing import Any

from opentelemetry.attributes import _clean_attribute_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from . import attributes as A
from . import redact as _redact
from .ids import new_span_id, new_trace_id
from .redact import redact
from .store import TraceStore, text_hash

_PROMOTED = A.PROMOTED
_dumps = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(obj, ensure_ascii=False), one encoder


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
        if not v.strip(_ID_CHARS) and _ids_pass(v):  # an id, a request key, a JSON list of ids
            return v
        return _clean_full(v)
    if isinstance(v, (tuple, list)):
        return [_clean(x) for x in v]
    return v


def _clean_full(v: str) -> str:
    v = redact(v)
    return v if v.isascii() else _LONE_SURROGATE.sub("\ufffd", v)  # isascii() is O(1)


# span ids, request keys (hex digits and ':') and the JSON lists of span ids that steps and
# calls record: none of the built-in secret patterns can match a string made of these
# characters (each needs a letter beyond 'f', a capital, '-' or '_'), so only the user's hooks,
# exact secrets or added patterns could change it (tests/test_replay_rows.py checks _clean
# against the full redaction)
_ID_CHARS = '0123456789abcdef:[]", '
_BUILTIN_PATTERNS = tuple(_redact.SECRET_PATTERNS)


def _ids_pass(v: str) -> bool:
    """True when nothing but the built-in patterns could change ``v`` (an id-like string)."""
    if _redact._hooks or tuple(_redact.SECRET_PATTERNS) != _BUILTIN_PATTERNS:
        return False
    for s in _redact._extra_secrets:
        if s in v:
            return False
    return True


_clean_id = _clean  # (the name the client uses for ids and keys)


def span_to_row(span: ReadableSpan) -> tuple[dict[str, Any], dict[str, str]]:
    raw = span.attributes or {}
    pre = getattr(span, "cleaned", None)  # a RowSpan's values stored already redacted (by _clean)
    if pre:
        attrs = {k: (v if k in pre else _clean(v)) for k, v in raw.items()}
    else:
        attrs = {k: _clean(v) for k, v in raw.items()}
    texts: dict[str, str] = {}
    row: dict[str, Any] = {
        "span_id": format(span.context.span_id, "016x"),
        "trace_id": format(span.context.trace_id, "032x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
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

    known = getattr(span, "input_hash", None)

    def store_text(value: str, col: str) -> None:
        h = known[1] if known is not None and known[0] is value else text_hash(value)
        texts[h] = value
        row[col] = h

    if A.INPUT_MESSAGES in attrs:
        store_text(attrs.pop(A.INPUT_MESSAGES), "input_hash")
    if A.SYSTEM_INSTRUCTIONS in attrs:
        store_text(attrs.pop(A.SYSTEM_INSTRUCTIONS), "system_hash")
    if A.OUTPUT_MESSAGES in attrs:
        value = attrs.pop(A.OUTPUT_MESSAGES)
        plain = getattr(span, "output_text", None)  # (JSON, its text) from the client: no JSON parse
        if plain is not None and plain[0] is raw.get(A.OUTPUT_MESSAGES) and (value is plain[0] or value == plain[0]):
            store_text(plain[1], "output_hash")  # nothing redacted or replaced: the text itself
        else:
            store_text(output_text(value), "output_hash")
    if A.OUTPUT in attrs:
        store_text(attrs.pop(A.OUTPUT), "output_hash")
    row["attributes"] = _dumps(attrs)  # tuples are written as JSON lists
    return row, texts


_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_PLAIN = (str, bool, int, float, type(None))


class RowSpan:
    """A span recorded without the OpenTelemetry SDK, for a tracer whose only span processor is
    the store's (see ``Client._row_sink``): the engine's run and step spans then cost a row, not
    an SDK span. It offers what moakit calls on a span and what :func:`span_to_row` and
    :meth:`SQLiteSpanProcessor.on_end` read, with the SDK's semantics (ids from :mod:`.ids`, a
    child inherits its parent's trace, values cleaned by the SDK's own function, setting a key
    again moves it last, an OK status is final and UNSET is ignored, nothing changes once
    ended), so its row is the row the SDK span would have made (tests/test_replay_rows.py)."""

    __slots__ = ("name", "context", "parent", "attributes", "status", "start_time", "end_time", "_sink", "group",
                 "cleaned", "input_hash", "output_text", "fill")

    def __init__(self, sink: "SQLiteSpanProcessor", name: str, parent: SpanContext | None = None,
                 attributes: dict[str, Any] | None = None):
        span_id = new_span_id()
        trace_id = new_trace_id() if parent is None else parent.trace_id
        self.name = name
        self.context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)
        self.parent = parent
        self.attributes: dict[str, Any] = {}
        self.status = _UNSET
        self._sink = sink
        self.group = False  # a paid call: its commit is awaited (SQLiteSpanProcessor.committed), not done in end()
        # set by the client, which redacts a layer's shared values once (see span_to_row):
        self.cleaned: frozenset | None = None  # keys whose values were stored already redacted
        self.input_hash: tuple | None = None  # (input messages value, its text_hash)
        self.output_text: tuple | None = None  # (output messages JSON, the text it holds)
        # (fn, *args): fn(span, *args) sets the first attributes, on first use (a paid call that
        # succeeds never needs them: its row is built from its request, see Client._paid_row)
        self.fill: tuple | None = None
        self.end_time: int | None = None
        if attributes:
            self.set_attributes(attributes)
        self.start_time = time.time_ns()

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def _filled(self) -> None:
        fn, *args = self.fill
        self.fill = None
        fn(self, *args)

    def set_attribute(self, key: str, value: Any) -> None:
        if self.fill is not None:
            self._filled()
        if self.end_time is not None or not key or not isinstance(key, str):
            return
        a = self.attributes
        if key in a:
            del a[key]
        if self.cleaned is not None and key in self.cleaned:  # a value set from now on is not redacted yet
            self.cleaned = self.cleaned - {key}
        a[key] = value if isinstance(value, _PLAIN) else _clean_attribute_value(value, None)

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        for k, v in attributes.items():
            self.set_attribute(k, v)

    def set_status(self, status: Status) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK \
                or status.status_code is StatusCode.UNSET:
            return
        self.status = status

    def end(self) -> None:
        if self.end_time is not None:
            return
        if self.fill is not None:
            self._filled()
        self.end_time = time.time_ns()
        self._sink.on_end(self)  # type: ignore[arg-type]

    def __enter__(self) -> "RowSpan":
        return self

    def __exit__(self, *exc) -> None:
        self.end()


class SQLiteSpanProcessor(SpanProcessor):
    """Writes finished spans to the store. A paid LLM call (or a failed attempt) and the span
    of a run that paid for at least one call are committed before ``on_end`` returns, so a
    crash loses no call that was paid for; except a paid call's RowSpan (``group``), whose
    client awaits :meth:`committed` instead (the calls ending in one event-loop turn share a
    transaction; the engine gets none of their answers before it). Step spans, calls served from the store and the run
    span of a run that paid for nothing wait and go into the same transaction as the next span
    committed, at the latest when ``run`` / ``run_batch`` returns (``engine.flush_pending``) or
    ``MAX_PENDING`` rows (or ``MAX_PENDING_CHARS`` of new texts) wait: a replayed batch is then
    one transaction per 4,096 rows (larger transactions share index pages: ~15% faster than 512
    in B4 at 805 prompts, alternating runs), not one
    per span or run (a commit costs ~50 us to ~1 ms, more than the rest of a replayed call)."""

    MAX_PENDING = 4096
    MAX_PENDING_CHARS = 16_000_000  # bounds the memory held by waiting texts (long prompts)

    def __init__(self, store: TraceStore):
        self.store = store
        self._rows: list = []  # span rows (dicts or value lists) waiting for the next commit
        self._texts: dict[str, str] = {}
        self._chars = 0  # characters of the texts waiting
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # a flush returns only once rows taken by another have been written
        self._waiters: dict[Any, list] = {}  # event loop -> futures waiting for the group commit it has scheduled
        self._writer: Any = None  # the writer thread's executor, once a batch was written behind
        self._behind: Any = None  # the Future of the batch the writer thread holds
        _processors.add(self)

    def on_start(self, span, parent_context=None) -> None:  # noqa: D401 - nothing to do
        pass

    def on_end(self, span: ReadableSpan) -> None:
        row, texts = span_to_row(span)
        kind = row.get("kind")
        if kind == "run":  # a run that paid for nothing (all from the store) holds nothing to lose
            durable = (span.attributes or {}).get("moakit.calls_paid") != 0
        else:
            durable = span.parent is None or (kind == "call" and not row.get("cached"))
            if durable and getattr(span, "group", False):  # committed by the group commit its caller awaits
                durable = False
        self._queue(row, texts, durable)

    def add_row(self, row: dict[str, Any] | list, texts: dict[str, str]) -> None:
        """Queue a row made without a span (a dict or a list of values, as :meth:`TraceStore.write`
        takes): it waits for the next commit. A replayed call's row (``Client._replayed_row``)
        may wait; a paid call's (``Client._paid_row``) is then awaited with :meth:`committed`,
        as for a paid RowSpan (``group``)."""
        self._queue(row, texts, False)

    def _queue(self, row: dict[str, Any] | list, texts: dict[str, str], durable: bool) -> None:
        """Add a row to the next commit; commit now when it is ``durable``, or hand the waiting
        rows to the writer thread when too much waits."""
        with self._lock:
            rows, waiting = self._rows, self._texts
            rows.append(row)
            for h, t in texts.items():  # a layer's calls share their prompt: counted once
                if h not in waiting:
                    waiting[h] = t
                    self._chars += len(t)
            if not durable and len(rows) < self.MAX_PENDING and self._chars < self.MAX_PENDING_CHARS:
                return
        if durable:
            self.flush()
        else:
            self._write_behind()

    def _write_behind(self) -> None:
        """Commit the waiting rows on the writer thread while the caller goes on: SQLite's work
        (most of a replayed call's write) then runs on another core. At most one batch is in
        the writer's hands (the next one waits for it), and every ``flush`` waits for it first,
        so rows reach the file in order and none is reported written before it is."""
        with self._flushing:
            self._wait_behind()
            with self._lock:
                rows, texts = self._rows, self._texts
                self._rows, self._texts, self._chars = [], {}, 0
            if not rows:
                return
            self._writer = _trace_writer()
            try:  # the statements' parameters are made here: Python work would hold the GIL anyway
                prepared = self.store.prepare_write(rows, texts, bulk=True)
            except BaseException:
                self._requeue(rows, texts)
                raise
            try:
                self._behind = self._writer.submit(self._write, rows, texts, prepared)
            except RuntimeError:  # the interpreter is shutting down: no new thread work
                self._write(rows, texts, prepared)

    def _wait_behind(self) -> None:
        """Wait for the writer thread's batch; raise its error (its rows are queued again)."""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.result()

    def _write(self, rows: list, texts: dict, prepared=None) -> None:
        """Commit ``rows`` (their statements ``prepared`` already, if given); on failure they go
        back to the front of the queue."""
        try:
            if prepared is None:
                self.store.write(rows, texts)
            else:
                self.store.write_prepared(prepared)
        except BaseException:
            self._requeue(rows, texts)
            raise

    def _requeue(self, rows: list, texts: dict) -> None:
        with self._lock:  # keep them for the next attempt
            self._rows[:0] = rows
            self._texts.update(texts)
            self._chars += sum(map(len, texts.values()))

    def committed(self) -> "asyncio.Future[None]":
        """A future resolved once every row queued so far is committed (group commit).

        The first caller in an event-loop turn schedules one flush (``call_soon``) for all the rows
        queued until it runs: the paid calls that finish in the same turn share one transaction,
        and each of them is reported done only when this future resolves (or raises the flush's
        error). Each caller gets its own future, so cancelling one waiter touches no other."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            waiters = self._waiters.get(loop)
            if waiters is None:
                waiters = self._waiters[loop] = []
                loop.call_soon(self._group_commit, loop)
            waiters.append(fut)
        return fut

    def _group_commit(self, loop) -> None:
        with self._lock:
            waiters = self._waiters.pop(loop, [])
        try:
            self.flush()
        except BaseException as e:  # noqa: BLE001 - every waiter sees the failure
            for f in waiters:
                if not f.done():
                    f.set_exception(e)
            return
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def flush(self) -> None:
        """Commit every span waiting (one transaction), after the writer thread's batch."""
        with self._flushing:
            self._wait_behind()
            with self._lock:
                rows, texts = self._rows, self._texts
                self._rows, self._texts, self._chars = [], {}, 0
            if rows:
                self._write(rows, texts)

    def shutdown(self) -> None:
        self.flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return True


_processors: "weakref.WeakSet[SQLiteSpanProcessor]" = weakref.WeakSet()
_writer = None
_writer_lock = threading.Lock()


def _trace_writer():
    """The one writer thread (an executor of one) that every store's processor hands batches to."""
    global _writer
    with _writer_lock:
        if _writer is None:
            import concurrent.futures

            _writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moakit-trace-writer")
        return _writer


def span_processors(tracer) -> tuple:
    """The span processors an SDK tracer hands its spans to (none for another kind of tracer)."""
    return tuple(getattr(getattr(tracer, "span_processor", None), "_span_processors", ()))


@atexit.register
def _flush_all() -> None:  # spans that ended after their run (rare): written at exit
    for p in list(_processors):
        try:
            p.flush()
        except Exception:  # noqa: BLE001 - the store may be closed already
            pass
