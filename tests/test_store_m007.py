"""Migration m007 (the parent-id index holds attempts only): a file at the previous schema
version (m006) opens and migrates in place with nothing lost, and every look-up that the store
makes for one trace, one run or one request key still goes through an index (no plan reads the
whole spans table)."""

from __future__ import annotations

import json
import sqlite3

from moakit.store import migrations
from moakit.store.io import iter_records
from moakit.store.records import text_hash
from moakit.store.schema import SPAN_COLUMNS
from moakit.store.store import TraceStore

PREVIOUS = "m006_one_span_per_logical_call"


def _trace(r):
    return f"{r + 1:02x}" + "e" * 30


def _rows(n_runs=4):
    """Runs of two steps and three calls each; the first call of each run was retried once (a
    failed attempt under it); the runs after the first two replay those two (cached calls
    repeating their request keys)."""
    rows = []
    for r in range(n_runs):
        trace, run = _trace(r), f"a{r:015x}"
        rows.append(dict(span_id=run, trace_id=trace, parent_id=None, name="invoke_workflow p", kind="run",
                         start_ns=r * 1000, end_ns=r * 1000 + 900, status="OK", output_hash=text_hash(f"final {r % 2}"),
                         attributes=json.dumps({"moakit.pipeline.name": "p"}), cached=0))
        for s in range(2):
            step = f"b{r:07x}{s:08x}"
            rows.append(dict(span_id=step, trace_id=trace, parent_id=run, name="step", kind="step",
                             start_ns=r * 1000 + s * 100, end_ns=r * 1000 + s * 100 + 90, status="OK", step_index=s,
                             step="Propose" if s == 0 else "Aggregate", attributes="{}", cached=0))
            for k in range(3 if s == 0 else 1):
                replay = r >= 2
                call = f"c{r:03x}{s:04x}{k:08x}"
                key = f"{(r % 2) * 10 + s * 3 + k:032x}:0"
                rows.append(dict(span_id=call, trace_id=trace, parent_id=step, name="chat m", kind="call",
                                 start_ns=r * 1000 + s * 100 + k, end_ns=r * 1000 + s * 100 + 50, status="OK",
                                 step_index=s, step="Propose" if s == 0 else "Aggregate", agent=f"a{k}", model="m",
                                 sample=0, input_tokens=3, output_tokens=4, cost_usd=0.0 if replay else 0.5,
                                 request_key=key, output_hash=text_hash(f"answer {key}"), attributes="{}",
                                 cached=int(replay), attempt=0 if replay else (2 if k == 0 else 1)))
                if k == 0 and not replay:
                    rows.append(dict(span_id=f"d{r:03x}{s:04x}{k:08x}", trace_id=trace, parent_id=call,
                                     name="attempt 1 m", kind="attempt", start_ns=r * 1000 + s * 100,
                                     end_ns=r * 1000 + s * 100 + 1, status="ERROR", error="RateLimitError: slow down",
                                     step_index=s, step="Propose" if s == 0 else "Aggregate", agent=f"a{k}",
                                     model="m", request_key=key,
                                     attributes=json.dumps({"moakit.retry.wait_s": 0.5, "moakit.retry.reason": "backoff"}),
                                     cached=0, attempt=1))
    texts = {text_hash(t): t for t in [f"final {i}" for i in range(2)]
             + [f"answer {row['request_key']}" for row in rows if row["kind"] == "call"]}
    return rows, texts


def _indexes(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='spans'")}


def _whole_table_reads(conn, sql: str) -> list[str]:
    """The lines of the statement's query plan that read a whole table without an index."""
    return [d for *_, d in conn.execute("EXPLAIN QUERY PLAN " + sql)
            if d.startswith("SCAN ") and "USING" not in d and d != "SCAN CONSTANT ROW"]


def test_file_at_m006_upgrades_and_every_lookup_stays_indexed(tmp_path):
    path = tmp_path / "m006.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(conn, upto=PREVIOUS)[-1] == PREVIOUS
    rows, texts = _rows()
    conn.executemany(f"INSERT INTO spans ({', '.join(SPAN_COLUMNS)}) VALUES ({', '.join('?' * len(SPAN_COLUMNS))})",
                     [[r.get(c) for c in SPAN_COLUMNS] for r in rows])
    conn.executemany("INSERT INTO texts VALUES (?, ?)", texts.items())
    before = conn.execute("SELECT * FROM spans ORDER BY rowid").fetchall()
    assert "spans_parent" in _indexes(conn)
    conn.close()

    store = TraceStore(path)
    assert store.schema_version == [fn.__name__ for fn in migrations.MIGRATIONS]
    assert store.schema_version[-1] == "m007_parent_index_for_attempts_only"
    assert store.query("SELECT * FROM spans ORDER BY rowid") == before  # nothing changed, nothing lost
    indexes = _indexes(store.conn)
    assert "spans_parent" not in indexes
    assert {"spans_trace", "spans_run", "spans_step", "spans_paid_request_key", "spans_attempt_parent"} <= indexes
    # the attempts index holds the attempts only
    assert store.query("SELECT count(*) FROM spans INDEXED BY spans_attempt_parent WHERE kind = 'attempt'")[0][0] == 4

    t0, t2 = _trace(0), _trace(2)
    # every statement the store runs for these look-ups, with its parameters bound
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    assert store.trace_ids() == [_trace(r) for r in range(4)]
    assert store.resolve_trace_id(t2[:3]) == t2
    assert list(store.runs()["calls"]) == [4, 4, 4, 4]
    assert store.runs(t0).iloc[0]["cost_usd"] == 2.0
    calls = store.calls(t0)
    assert len(calls) == 4 and calls["output"].notna().all()
    assert list(store.steps(t0)["step"]) == ["Propose", "Aggregate"]
    att = store.attempts(t0)
    assert sorted(att["attempt"]) == [1, 1, 1, 1, 2, 2] and (~att["final"]).sum() == 2
    assert len(store.spans(t2)) == 1 + 2 + 4
    assert store.run_attributes(t0)["moakit.output"] == "final 0"
    retried = calls.sort_values("start_ns").iloc[0]
    contents = store.call_contents(list(calls["span_id"]))
    assert contents[retried.span_id]["failed_attempts"] == [
        {"attempt": 1, "error": "RateLimitError: slow down", "wait_s": 0.5, "reason": "backoff"}]
    assert len(list(iter_records(store, t0))) == 1 + 2 + 4 + 2
    # a cache look-up by request key: the paid call, not its replayed copies
    key = calls.sort_values("start_ns").iloc[1]["request_key"]
    paid = store.query("SELECT span_id FROM spans WHERE request_key = ? AND cached = 0", (key,))
    assert paid == [(calls.sort_values("start_ns").iloc[1]["span_id"],)]
    store.conn.set_trace_callback(None)

    statements = [s for s in seen if s.lstrip().upper().startswith(("SELECT", "WITH")) and "spans" in s
                  and "sqlite_master" not in s]
    assert len(statements) >= 12
    for sql in statements:
        assert not _whole_table_reads(store.conn, sql), sql
    # each of these look-ups goes through the index kept for it
    plans = {name: " ".join(p[3] for p in store.query("EXPLAIN QUERY PLAN " + sql, params)) for name, (sql, params) in {
        "load a trace": ("SELECT * FROM spans s WHERE s.trace_id IN (?) ORDER BY s.start_ns, s.rowid", (t0,)),
        "a trace's calls": ("SELECT * FROM spans s WHERE s.kind = ? AND s.trace_id IN (?)", ("call", t0)),
        "list runs": ("SELECT trace_id FROM spans WHERE kind='run' ORDER BY start_ns", ()),
        "a trace's steps": ("SELECT * FROM spans s WHERE s.kind = ? AND s.trace_id IN (?)", ("step", t0)),
        "a call's failed attempts": ("SELECT * FROM spans WHERE kind = 'attempt' AND parent_id IN (?)", (retried.span_id,)),
        "the paid call behind a request key": ("SELECT * FROM spans WHERE request_key = ? AND cached = 0", (key,)),
        "a span by id": ("SELECT * FROM spans WHERE span_id = ?", (retried.span_id,)),
    }.items()}
    assert "spans_trace" in plans["load a trace"] and "spans_trace" in plans["a trace's calls"]
    assert "spans_run" in plans["list runs"] and "spans_step" in plans["a trace's steps"]
    assert "spans_attempt_parent" in plans["a call's failed attempts"]
    assert "spans_paid_request_key" in plans["the paid call behind a request key"]
    assert "sqlite_autoindex_spans_1" in plans["a span by id"]
    # replay still finds every recorded answer
    found = store.lookup_many([f"{k:032x}:0" for k in (0, 1, 2, 3)])
    assert [f[1] for f in found] == [f"answer {k:032x}:0" for k in (0, 1, 2, 3)]
    store.close()
    reopened = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(reopened) == []
    reopened.close()


def test_a_new_file_has_the_same_indexes_as_an_upgraded_one(tmp_path):
    new = TraceStore(tmp_path / "new.db")
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    migrations.migrate(conn, upto=PREVIOUS)
    conn.close()
    old = TraceStore(tmp_path / "old.db")
    q = "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='spans' ORDER BY name"
    assert new.query(q) == old.query(q)
    assert "spans_parent" not in {r[0] for r in new.query(q)}
    new.close()
    old.close()
