"""Run, step and call events -> records for the store, and (when the user has an OpenTelemetry
pipeline of their own) the same spans for it.

The engine tells the recorder what happened; the recorder decides how durable each record must
be (see :mod:`moakit.store.writer`): a paid call is committed before the engine may use its
answer and the run row of a run that paid before the run returns (both group-committed), a
failed attempt at once, the rest rides in the next commit.

``otel``: a ``SpanProcessor`` or ``SpanExporter`` of the OpenTelemetry SDK (the one you gave
your ``TracerProvider``). Every record is handed to it as a finished SDK span with the same ids,
times, parents and attributes as its row, so a collector or Phoenix shows the run -> step ->
call tree that the store holds.

``listeners``: callables told of every record as it passes (a live view in a notebook: see
:meth:`Recorder.add_listener`).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from ..store.records import AttemptRecord, CallRecord, Rows, RunRecord, StepRecord


@dataclass(slots=True)
class StreamChunk:
    """The text a streamed call has produced so far (told to listeners, never stored: the call's
    record, with its whole answer, follows when it ends)."""

    trace_id: str
    span_id: str
    step_index: int
    step_kind: str
    agent: str
    text: str


class Recorder:
    """Writes one store's records (and mirrors them to ``otel``, if given)."""

    def __init__(self, store, otel: Any = None, listeners=()):
        self.store = store
        self.writer = store.writer
        self.builder = self.writer.builder
        self.otel = otel
        if otel is not None and not (hasattr(otel, "on_end") or hasattr(otel, "export")):
            raise TypeError(f"otel must be an OpenTelemetry SpanProcessor or SpanExporter, got {type(otel).__name__}")
        self.listeners: list[Callable[[Any], None]] = []
        for fn in listeners:
            self.add_listener(fn)

    # ---- listeners -------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[Any], None]) -> None:
        """``listener(record)`` is called with every record as it is handed to the writer (a
        :class:`~moakit.store.records.RunRecord` with ``end_ns == 0`` when a run starts, then
        ``CallRecord``, ``AttemptRecord``, ``StepRecord`` and the finished ``RunRecord``), and
        with :class:`StreamChunk` s of streamed calls when it has ``wants_chunks = True``.

        It runs on the thread of the run's event loop (moakit's background loop for ``run`` and
        ``run_batch``), in the middle of the run: it must return quickly (queue the record and
        draw elsewhere) and must not change the records. A listener that raises is dropped with
        a warning; the run goes on."""
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {type(listener).__name__}")
        self.listeners.append(listener)

    def remove_listener(self, listener: Callable[[Any], None]) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    @property
    def wants_chunks(self) -> bool:
        """Whether a listener shows streamed text (the engine then streams aggregating calls)."""
        return any(getattr(fn, "wants_chunks", False) for fn in self.listeners)

    def tell(self, event: Any) -> None:
        """Hand ``event`` to every listener (see :meth:`add_listener`)."""
        for fn in list(self.listeners):
            try:
                fn(event)
            except Exception as e:  # noqa: BLE001 - a broken view never breaks a run
                self.remove_listener(fn)
                warnings.warn(f"moakit: a run listener raised {type(e).__name__}: {e}; it is no longer called",
                              RuntimeWarning, stacklevel=2)

    def started(self, rec: RunRecord) -> None:
        """A run started (``rec.end_ns == 0``): told to listeners only; its row is written when it ends."""
        if self.listeners:
            self.tell(rec)

    def chunk(self, event: StreamChunk) -> None:
        """More text of a streamed call: told to the listeners that want it."""
        for fn in list(self.listeners):
            if getattr(fn, "wants_chunks", False):
                try:
                    fn(event)
                except Exception as e:  # noqa: BLE001
                    self.remove_listener(fn)
                    warnings.warn(f"moakit: a run listener raised {type(e).__name__}: {e}; it is no longer called",
                                  RuntimeWarning, stacklevel=2)

    def _mirror(self, rows: Rows) -> None:
        from ..store.io import readable_spans_from_rows

        spans = readable_spans_from_rows(rows.rows, rows.texts)
        if hasattr(self.otel, "on_end"):
            for s in spans:
                self.otel.on_end(s)
        else:
            self.otel.export(spans)

    def _add(self, rows: Rows, durable: bool, record: Any = None) -> None:
        self.writer.add(rows, durable)
        if self.otel is not None:
            self._mirror(rows)
        if self.listeners and record is not None:
            self.tell(record)

    def content(self, text: str) -> tuple[str, str]:
        """(hash, redacted text) of a text a step made (a Map step's output), for ``step(texts=)``."""
        return self.builder.content(text)

    def replayed(self, rec: CallRecord) -> str | None:
        """A call served from the store: rides in the next commit. Returns its output's text hash."""
        rows = Rows()
        h = self.builder.call(rec, rows)
        self._add(rows, False, rec)
        return h

    async def paid(self, rec: CallRecord) -> str | None:
        """A call that was paid for: returns (its output's text hash) once its row is committed."""
        rows = Rows()
        h = self.builder.call(rec, rows)
        self._add(rows, False, rec)
        await self.writer.committed()
        return h

    def failed(self, rec: CallRecord) -> None:
        """A call that finally failed (or was cancelled): committed now."""
        rows = Rows()
        self.builder.call(rec, rows)
        self._add(rows, True, rec)

    def attempt(self, rec: AttemptRecord) -> None:
        """A failed attempt that will be tried again: committed now."""
        rows = Rows()
        self.builder.attempt(rec, rows)
        self._add(rows, True, rec)

    def step(self, rec: StepRecord, texts: dict[str, str] | None = None) -> None:
        """A step that ended (``texts``: new texts it made, e.g. a Map step's outputs)."""
        rows = Rows(texts=dict(texts) if texts else {})
        self.builder.step(rec, rows)
        self._add(rows, False, rec)

    def run(self, rec: RunRecord, durable: bool) -> None:
        """A run that ended: committed now when ``durable`` (it failed), else in the next commit."""
        rows = Rows()
        self.builder.run(rec, rows)
        self._add(rows, durable, rec)

    async def run_committed(self, rec: RunRecord) -> None:
        """A run that ended: returns once its row is committed (with the other rows of this
        event-loop turn, as a paid call's)."""
        rows = Rows()
        self.builder.run(rec, rows)
        self._add(rows, False, rec)
        await self.writer.committed()

    def flush(self) -> None:
        """Commit every row waiting: before ``run`` / ``run_batch`` return, their rows are in the
        file. Called from a ``finally``: when an error is already on its way out, a failing write
        is added to it as a note (the rows stay queued for the next commit) instead of hiding it."""
        in_flight = sys.exc_info()[1]
        try:
            self.writer.flush()
        except Exception as e:  # noqa: BLE001
            if in_flight is None:
                raise
            in_flight.add_note(f"moakit: writing the waiting trace rows also failed: {type(e).__name__}: {e}")
        if self.otel is not None and hasattr(self.otel, "force_flush"):
            self.otel.force_flush()
