"""Migration m006 (one span per logical call, the run named after its pipeline): a file written
with one call span per attempt opens and migrates in place, nothing lost: calls() has one row
per call, attempts() one per attempt, replay still finds every recorded answer."""

from __future__ import annotations

import json
import sqlite3

from moakit.store import migrations
from moakit.store.records import text_hash
from moakit.store.schema import SPAN_COLUMNS
from moakit.store.store import TraceStore

T1, T2 = f"{1:032x}", f"{2:032x}"


def _old_rows():
    def call(sid, trace, attempt, key, out=None, error=None, cached=0, start=0):
        return dict(span_id=f"{sid:016x}", trace_id=trace, parent_id=f"{99:016x}", name="chat m", kind="call",
                    start_ns=start, end_ns=start + 5, status="ERROR" if error else "OK", error=error, step_index=0,
                    step="Propose", agent="a", model="m", sample=0, input_tokens=None if error else 3,
                    output_tokens=None if error else 4, cost_usd=None if error else 0.5, request_key=key,
                    output_hash=None if out is None else text_hash(out),
                    attributes=json.dumps({"moakit.retry.wait_s": 0.5, "moakit.retry.reason": "backoff"}
                                          if error else {}), cached=cached, attempt=0 if cached else attempt)

    run = dict(span_id=f"{98:016x}", trace_id=T1, parent_id=None, name="invoke_workflow moakit", kind="run",
               start_ns=0, end_ns=100, status="OK", attributes=json.dumps({"moakit.pipeline.name": "moa_lite"}),
               cached=0)
    return [run,
            call(1, T1, 1, "k1:0", error="RateLimitError: slow down", start=0),
            call(2, T1, 2, "k1:0", error="InternalServerError: oops", start=10),
            call(3, T1, 3, "k1:0", out="answer one", start=20),
            call(4, T1, 1, "k2:0", out="answer two", start=0),
            call(5, T2, 0, "k1:0", out="answer one", cached=1, start=50)]


def test_a_file_with_a_span_per_attempt_migrates_to_one_span_per_call(tmp_path):
    path = tmp_path / "m005.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn, upto="m005_request_key_index_for_paid_calls_only")
    conn.executemany(f"INSERT INTO spans ({', '.join(SPAN_COLUMNS)}) VALUES ({', '.join('?' * len(SPAN_COLUMNS))})",
                     [[r.get(c) for c in SPAN_COLUMNS] for r in _old_rows()])
    conn.executemany("INSERT INTO texts VALUES (?, ?)", [(text_hash(t), t) for t in ("answer one", "answer two")])
    n_before = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    conn.close()

    store = TraceStore(path)
    assert "m006_one_span_per_logical_call" in store.schema_version
    assert store.query("SELECT count(*) FROM spans")[0][0] == n_before  # nothing lost
    calls = store.calls(T1).sort_values("request_key")
    assert list(calls.request_key) == ["k1:0", "k2:0"]
    retried = calls.iloc[0]
    assert retried.attempts == 3 and retried.output == "answer one" and retried.start_ns == 0
    att = store.attempts(T1)
    mine = att[att.call_span_id == retried.span_id].sort_values("attempt")
    assert list(mine.attempt) == [1, 2, 3] and list(mine.final) == [False, False, True]
    assert mine.error.iloc[0].startswith("RateLimitError") and mine.retry_wait_s.iloc[0] == 0.5
    assert len(att[att.call_span_id != retried.span_id]) == 1  # the other call: one attempt
    assert store.query("SELECT name, json_extract(attributes, '$.\"gen_ai.agent.name\"') FROM spans "
                       "WHERE kind = 'run'") == [("invoke_workflow moa_lite", "moa_lite")]
    # replay is served the successful answers
    assert [h[1] for h in store.lookup_many(["k1:0", "k2:0"])] == ["answer one", "answer two"]
    assert len(store.calls(T2)) == 1  # the replayed copy untouched
    store.close()
    reopened = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(reopened) == []
    reopened.close()
