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
"""

from __future__ import annotations

import sys
from typing import Any

from ..store.records import AttemptRecord, CallRecord, Rows, RunRecord, StepRecord


class Recorder:
    """Writes one store's records (and mirrors them to ``otel``, if given)."""

    def __init__(self, store, otel: Any = None):
        self.store = store
        self.writer = store.writer
        self.builder = self.writer.builder
        self.otel = otel
        if otel is not None and not (hasattr(otel, "on_end") or hasattr(otel, "export")):
            raise TypeError(f"otel must be an OpenTelemetry SpanProcessor or SpanExporter, got {type(otel).__name__}")

    def _mirror(self, rows: Rows) -> None:
        from ..store.io import readable_spans_from_rows

        spans = readable_spans_from_rows(rows.rows, rows.texts)
        if hasattr(self.otel, "on_end"):
            for s in spans:
                self.otel.on_end(s)
        else:
            self.otel.export(spans)

    def _add(self, rows: Rows, durable: bool) -> None:
        self.writer.add(rows, durable)
        if self.otel is not None:
            self._mirror(rows)

    def content(self, text: str) -> tuple[str, str]:
        """(hash, redacted text) of a text a step made (a Map step's output), for ``step(texts=)``."""
        return self.builder.content(text)

    def replayed(self, rec: CallRecord) -> str | None:
        """A call served from the store: rides in the next commit. Returns its output's text hash."""
        rows = Rows()
        h = self.builder.call(rec, rows)
        self._add(rows, False)
        return h

    async def paid(self, rec: CallRecord) -> str | None:
        """A call that was paid for: returns (its output's text hash) once its row is committed."""
        rows = Rows()
        h = self.builder.call(rec, rows)
        self._add(rows, False)
        await self.writer.committed()
        return h

    def failed(self, rec: CallRecord) -> None:
        """A call that finally failed (or was cancelled): committed now."""
        rows = Rows()
        self.builder.call(rec, rows)
        self._add(rows, True)

    def attempt(self, rec: AttemptRecord) -> None:
        """A failed attempt that will be tried again: committed now."""
        rows = Rows()
        self.builder.attempt(rec, rows)
        self._add(rows, True)

    def step(self, rec: StepRecord, texts: dict[str, str] | None = None) -> None:
        """A step that ended (``texts``: new texts it made, e.g. a Map step's outputs)."""
        rows = Rows(texts=dict(texts) if texts else {})
        self.builder.step(rec, rows)
        self._add(rows, False)

    def run(self, rec: RunRecord, durable: bool) -> None:
        """A run that ended: committed now when ``durable`` (it failed), else in the next commit."""
        rows = Rows()
        self.builder.run(rec, rows)
        self._add(rows, durable)

    async def run_committed(self, rec: RunRecord) -> None:
        """A run that ended: returns once its row is committed (with the other rows of this
        event-loop turn, as a paid call's)."""
        rows = Rows()
        self.builder.run(rec, rows)
        self._add(rows, False)
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
