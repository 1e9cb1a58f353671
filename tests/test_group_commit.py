"""Paid calls are group-committed: the calls that end in the same event-loop turn share one
SQLite transaction, and no call's result reaches the engine before its row is committed (the
crash-safety guarantee, docs/failure-behaviour.md). Checked in-process with a zero-latency
model, on the row path and on the OpenTelemetry SDK path (another span processor installed)."""

from __future__ import annotations

import asyncio

import pytest

import moakit
from moakit import client as C
from moakit.engine import tracer_for
from moakit.pipelines import count_calls, together_moa
from moakit.tracing.store import SPAN_COLUMNS, TraceStore

MODELS = {a: {"model": f"openai/{a}", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-unused-000000"}
          for s in together_moa for a in s.agents}


@pytest.fixture
def instant(monkeypatch):
    """A model that answers at once, and a record of what was committed when each call returned."""
    async def _complete(self, req):
        if req.agent.startswith("dbrx"):  # one proposer always fails: failed attempts are paid for too
            raise C.MalformedResponse("no choices")
        return f"answer of {req.agent} #{req.sample}", (10, 5), 0.0, req.spec.model, "stop", "id-1"

    committed: set[str] = set()
    transactions: list[int] = []  # paid-call rows per transaction
    seen: list[tuple[str, bool]] = []  # (span id, committed when the engine got the result)
    real_write, real_call = TraceStore.write, C.Client.call

    def write(self, rows, texts=None):
        real_write(self, rows, texts)
        rows = [r if isinstance(r, dict) else dict(zip(SPAN_COLUMNS, r)) for r in rows]  # rows may be value lists
        committed.update(r["span_id"] for r in rows)
        n = sum(1 for r in rows if r.get("kind") == "call" and not r.get("cached"))
        if n:
            transactions.append(n)

    async def call(self, req, looked_up=False):
        res = await real_call(self, req, looked_up)
        seen.append((res.span_id, res.span_id in committed))
        return res

    monkeypatch.setattr(C.Client, "_complete", _complete)
    monkeypatch.setattr(TraceStore, "write", write)
    monkeypatch.setattr(C.Client, "call", call)
    return committed, transactions, seen


def _run(store, n=3):
    async def main():
        return [await moakit.arun(together_moa, f"query {i}", models=MODELS, store=store,
                                  client_config=moakit.ClientConfig(retries=1, backoff=0.0)) for i in range(n)]
    return asyncio.run(main())


def test_every_paid_call_is_committed_before_the_engine_gets_it(instant, tmp_path):
    committed, transactions, seen = instant
    results = _run(TraceStore(tmp_path / "g.db"))
    assert all(r.ok for r in results)
    assert len(seen) == 3 * count_calls(together_moa) and all(ok for _, ok in seen)
    # every paid attempt was written (dbrx fails twice in each of its layers), and the calls of a
    # layer, ending in one turn, share a transaction: far fewer transactions than paid attempts
    dbrx = sum(a.startswith("dbrx") for s in together_moa for a in s.agents)
    assert dbrx and sum(transactions) == 3 * (count_calls(together_moa) + dbrx)
    assert len(transactions) <= sum(transactions) // 2


def test_sdk_path_commits_each_paid_call_before_the_engine_gets_it(instant, tmp_path):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    committed, transactions, seen = instant
    store = TraceStore(tmp_path / "s.db")
    exporter = InMemorySpanExporter()
    tracer_for(store).span_processor.add_span_processor(SimpleSpanProcessor(exporter))
    results = _run(store, 2)
    assert all(r.ok for r in results)
    assert len(seen) == 2 * count_calls(together_moa) and all(ok for _, ok in seen)
    dbrx = sum(a.startswith("dbrx") for s in together_moa for a in s.agents)
    assert sum(1 for s in exporter.get_finished_spans() if s.attributes["moakit.span.kind"] == "call") \
        == 2 * (count_calls(together_moa) + dbrx)
    assert transactions == [1] * len(transactions)  # the SDK path: each paid attempt committed alone


def test_a_failing_final_flush_does_not_hide_the_error_on_its_way_out(tmp_path, monkeypatch):
    """flush_pending runs in the ``finally`` of run / run_batch: when the run already failed,
    a failing trace write is added as a note to that error instead of replacing it, and the
    waiting rows stay queued; with no error in flight, the write's own error is raised."""
    import sqlite3

    from moakit.engine import flush_pending, tracer_for
    from moakit.tracing.exporter import SQLiteSpanProcessor
    from moakit.tracing.store import TraceStore

    store = TraceStore(tmp_path / "t.db")
    tracer = tracer_for(store)
    proc = next(p for p in tracer.span_processor._span_processors if isinstance(p, SQLiteSpanProcessor))
    proc.add_row({"span_id": "00000000000000aa", "trace_id": "0" * 31 + "1", "name": "step x", "kind": "step"}, {})

    def broken(rows, texts=None):
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(store, "write", broken)
    with pytest.raises(KeyError) as info:
        try:
            raise KeyError("the run's own error")
        finally:
            flush_pending(tracer)
    assert any("disk full" in n for n in getattr(info.value, "__notes__", []))
    with pytest.raises(sqlite3.OperationalError, match="disk full"):
        flush_pending(tracer)
    monkeypatch.undo()
    flush_pending(tracer)  # the row was kept and is written now
    assert store.query("SELECT count(*) FROM spans WHERE span_id = '00000000000000aa'")[0][0] == 1
