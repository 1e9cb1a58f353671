"""Paid calls are group-committed: the calls that end in the same event-loop turn share one
SQLite transaction, and no call's answer reaches the engine before its row is committed (the
crash-safety guarantee, docs/failure-behaviour.md). Checked in-process with a zero-latency
model, with and without an OpenTelemetry exporter mirroring the spans."""

from __future__ import annotations

import asyncio
import time

import pytest

import moakit
from moakit.llm import caller as C
from moakit.pipelines import count_calls, together_moa
from moakit.runner.engine import Runner
from moakit.store.schema import SPAN_COLUMNS
from moakit.store.store import TraceStore

MODELS = {a: {"model": f"openai/{a}", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-unused-000000"}
          for s in together_moa for a in s.agents}
KIND, CACHED, SPAN = SPAN_COLUMNS.index("kind"), SPAN_COLUMNS.index("cached"), SPAN_COLUMNS.index("span_id")


@pytest.fixture
def instant(monkeypatch):
    """A model that answers at once, and a record of what was committed when each call returned."""
    async def _complete(self, req, on_chunk=None):
        if "dbrx" in req.spec.model:  # one proposer always fails: failed attempts are recorded too
            raise C.MalformedResponse("no choices")
        return C.Outcome(0, 0, 0, text=f"answer of {req.spec.model}", input_tokens=10, output_tokens=5, cost_usd=0.0,
                         response_model=req.spec.model, finish_reason="stop", response_id="id-1")

    committed: set[str] = set()
    transactions: list[int] = []  # rows of paid calls and failed attempts per transaction
    seen: list[tuple[str, bool]] = []  # (span id, committed when the engine got the answer)
    real_write, real_paid = TraceStore.write_prepared, Runner.paid

    def write_prepared(self, w):
        time.sleep(0.01)  # a slow disk: an answer handed on before its commit ended would be seen
        real_write(self, w)
        committed.update(p[SPAN] for p in w.params)
        n = sum(1 for p in w.params if p[KIND] in ("call", "attempt") and not p[CACHED])
        if n:
            transactions.append(n)

    async def paid(self, p):
        res = await real_paid(self, p)
        if isinstance(res, moakit.runner.engine.Response):
            seen.append((res.span_id, res.span_id in committed))
        return res

    monkeypatch.setattr(C.Caller, "_complete", _complete)
    monkeypatch.setattr(TraceStore, "write_prepared", write_prepared)
    monkeypatch.setattr(Runner, "paid", paid)
    return committed, transactions, seen


def _run(store, n=3, **kw):
    async def main():
        return [await moakit.arun(together_moa, f"query {i}", models=MODELS, store=store,
                                  client_config=moakit.ClientConfig(retries=1, backoff=0.0), **kw) for i in range(n)]
    return asyncio.run(main())


DBRX = sum("dbrx" in a for s in together_moa for a in s.agents)


def test_every_paid_call_is_committed_before_the_engine_gets_it(instant, tmp_path):
    committed, transactions, seen = instant
    results = _run(TraceStore(tmp_path / "g.db"))
    assert all(r.ok for r in results)
    assert len(seen) == 3 * (count_calls(together_moa) - DBRX) and all(ok for _, ok in seen)
    # every paid call and failed attempt was written (dbrx fails twice: an attempt row and its
    # call's row), and the calls of a layer, ending in one turn, share a transaction
    assert DBRX and sum(transactions) == 3 * (count_calls(together_moa) + DBRX)
    assert len(transactions) <= sum(transactions) // 2


def test_mirrored_spans_change_nothing_of_the_commits(instant, tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    committed, transactions, seen = instant
    store = TraceStore(tmp_path / "s.db")
    exporter = InMemorySpanExporter()
    results = _run(store, 2, otel=exporter)
    assert all(r.ok for r in results)
    assert len(seen) == 2 * (count_calls(together_moa) - DBRX) and all(ok for _, ok in seen)
    spans = exporter.get_finished_spans()
    assert sum(1 for s in spans if s.attributes["moakit.span.kind"] == "call") == 2 * count_calls(together_moa)
    assert sum(1 for s in spans if s.attributes["moakit.span.kind"] == "attempt") == 2 * DBRX
    assert {format(s.context.span_id, "016x") for s in spans} == {x for (x,) in store.query("SELECT span_id FROM spans")}


def test_a_failing_final_flush_does_not_hide_the_error_on_its_way_out(tmp_path, monkeypatch):
    """The recorder's flush runs in the ``finally`` of run / run_batch: when the run already
    failed, a failing trace write is added as a note to that error instead of replacing it, and
    the waiting rows stay queued; with no error in flight, the write's own error is raised."""
    import sqlite3

    from moakit.runner.recorder import Recorder
    from moakit.store.records import StepRecord

    store = TraceStore(tmp_path / "t.db")
    rec = Recorder(store)
    rec.step(StepRecord("00000000000000aa", "0" * 31 + "1", "00000000000000ab", 1, 2, 0, "Shuffle", "{}"))

    def broken(rows, texts=None):
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(store, "write", broken)
    with pytest.raises(KeyError) as info:
        try:
            raise KeyError("the run's own error")
        finally:
            rec.flush()
    assert any("disk full" in n for n in getattr(info.value, "__notes__", []))
    with pytest.raises(sqlite3.OperationalError, match="disk full"):
        rec.flush()
    monkeypatch.undo()
    rec.flush()  # the row was kept and is written now
    assert store.query("SELECT count(*) FROM spans WHERE span_id = '00000000000000aa'")[0][0] == 1


def test_a_paid_runs_row_is_committed_before_its_run_returns(instant, tmp_path, monkeypatch):
    """Within a batch (whose final flush comes only at its end), each run that paid returns only
    once its run row, output included, is committed: another connection sees it."""
    import sqlite3

    from moakit.runner.batch import arun_batch

    db = tmp_path / "runs.db"
    seen: list[tuple[str, object]] = []  # (the run's output, its row's output in the file when it returned)
    real_run = Runner.run

    async def run(self, **kw):
        res = await real_run(self, **kw)
        con = sqlite3.connect(db)
        try:
            row = con.execute("SELECT t.text FROM spans s LEFT JOIN texts t ON t.hash = s.output_hash "
                              "WHERE s.kind = 'run' AND s.trace_id = ?", (res.trace_id,)).fetchone()
        finally:
            con.close()
        seen.append((res.output, row))
        return res

    monkeypatch.setattr(Runner, "run", run)
    df = asyncio.run(arun_batch(together_moa, [f"query {i}" for i in range(6)], models=MODELS, store=TraceStore(db),
                                client_config=moakit.ClientConfig(retries=1, backoff=0.0), progress=False,
                                max_concurrency=4))
    assert df["error"].isna().all() and len(seen) == 6
    assert all(row is not None and row[0] == out for out, row in seen), seen
