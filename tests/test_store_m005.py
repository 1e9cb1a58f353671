"""Migration m005 (the request-key index holds paid calls only): a file written before it opens,
migrates in place with nothing lost, keyed look-ups of paid calls still go through an index, and
its recorded calls still serve replay."""

from __future__ import annotations

import sqlite3

from moakit.store import migrations
from moakit.store.store import SPAN_COLUMNS, TraceStore, text_hash


def _rows():
    rows = []
    for i in range(6):
        cached = i >= 3  # calls 3-5 replay calls 0-2: same request key, same output
        k = i % 3
        rows.append(dict(span_id=f"{i + 1:016x}", trace_id=f"{i // 3 + 1:032x}", parent_id=None, name="chat m",
                         kind="call", start_ns=i, end_ns=i + 1, status="OK", step_index=0, step="Propose",
                         agent=f"a{k}", model="m", sample=0, input_tokens=3, output_tokens=4, cost_usd=0.0 if cached else 0.5,
                         request_key=f"{k:032x}:0", output_hash=text_hash(f"answer {k}"), attributes="{}",
                         cached=int(cached), attempt=0 if cached else 1))
    return rows


def test_file_from_m004_migrates_to_m005_with_nothing_lost(tmp_path):
    path = tmp_path / "m004.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn, upto="m004_kind_indexes_for_runs_and_steps_only")
    conn.executemany(f"INSERT INTO spans ({', '.join(SPAN_COLUMNS)}) VALUES ({', '.join('?' * len(SPAN_COLUMNS))})",
                     [[r.get(c) for c in SPAN_COLUMNS] for r in _rows()])
    conn.executemany("INSERT INTO texts VALUES (?, ?)", [(text_hash(f"answer {k}"), f"answer {k}") for k in range(3)])
    before = conn.execute("SELECT * FROM spans ORDER BY rowid").fetchall()
    assert "spans_request_key" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()

    store = TraceStore(path)
    assert "m005_request_key_index_for_paid_calls_only" in store.schema_version
    assert store.query("SELECT * FROM spans ORDER BY rowid") == before
    indexes = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "spans_request_key" not in indexes and "spans_paid_request_key" in indexes
    key = f"{1:032x}:0"
    sql = "SELECT span_id FROM spans WHERE request_key = ? AND cached = 0"
    assert "spans_paid_request_key" in " ".join(str(p) for p in store.query("EXPLAIN QUERY PLAN " + sql, (key,)))
    assert store.query(sql, (key,)) == [(f"{2:016x}",)]  # the paid call, not its replayed copy
    # the index holds the paid calls only
    assert store.query("SELECT count(*) FROM spans INDEXED BY spans_paid_request_key "
                       "WHERE request_key IS NOT NULL AND cached = 0")[0][0] == 3
    # replay still finds every recorded answer, served from the paid calls
    assert [h[1] for h in store.lookup_many([f"{k:032x}:0" for k in range(3)])] == [f"answer {k}" for k in range(3)]
    store.close()
    reopened = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(reopened) == []
    reopened.close()
