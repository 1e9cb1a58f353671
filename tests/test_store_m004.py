"""Migration m004 (spans_kind_trace replaced by partial run / step indexes): a file written
before it opens, migrates in place with nothing lost, and its queries still find runs and
steps through an index."""

from __future__ import annotations

import sqlite3

from moakit.store import migrations
from moakit.store.store import SPAN_COLUMNS, TraceStore, text_hash


def _trace(r):
    return f"{r:02x}" + "e" * 30


def _spans(n_runs=3):
    rows = []
    for r in range(n_runs):
        trace = _trace(r)
        rows.append(dict(span_id=f"r{r:015x}", trace_id=trace, parent_id=None, name="run", kind="run",
                         start_ns=r * 100, end_ns=r * 100 + 90, status="OK", attributes="{}", cached=0))
        rows.append(dict(span_id=f"s{r:015x}", trace_id=trace, parent_id=f"r{r:015x}", name="step", kind="step",
                         start_ns=r * 100 + 1, end_ns=r * 100 + 50, status="OK", step_index=0, step="Propose",
                         attributes="{}", cached=0))
        for k in range(4):
            rows.append(dict(span_id=f"c{r:07x}{k:08x}", trace_id=trace, parent_id=f"s{r:015x}", name="chat m",
                             kind="call", start_ns=r * 100 + 2 + k, end_ns=r * 100 + 40, status="OK", step_index=0,
                             step="Propose", agent=f"a{k}", model="m", sample=0, input_tokens=3, output_tokens=4,
                             cost_usd=0.5, request_key=f"k{r}-{k}:0", output_hash=text_hash(f"answer {r}.{k}"),
                             attributes="{}", cached=0, attempt=1))
    return rows


def test_file_from_m003_migrates_to_m004_with_nothing_lost(tmp_path):
    path = tmp_path / "m003.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(conn, upto="m003_system_and_runs_view")[-1] == "m003_system_and_runs_view"
    rows = _spans()
    conn.executemany(f"INSERT INTO spans ({', '.join(SPAN_COLUMNS)}) VALUES ({', '.join('?' * len(SPAN_COLUMNS))})",
                     [[r.get(c) for c in SPAN_COLUMNS] for r in rows])
    texts = {text_hash(f"answer {r}.{k}"): f"answer {r}.{k}" for r in range(3) for k in range(4)}
    conn.executemany("INSERT INTO texts VALUES (?, ?)", texts.items())
    # every column but the run's name, which m006 sets to "invoke_workflow {pipeline}"
    keep = ", ".join(c for c in SPAN_COLUMNS if c != "name")
    before = conn.execute(f"SELECT {keep} FROM spans ORDER BY rowid").fetchall()
    assert "spans_kind_trace" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()

    store = TraceStore(path)
    assert "m004_kind_indexes_for_runs_and_steps_only" in store.schema_version
    assert store.query(f"SELECT {keep} FROM spans ORDER BY rowid") == before
    assert store.query("SELECT count(*) FROM texts")[0][0] == len(texts)
    indexes = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='index'")}
    # (m007 later narrows m003's spans_parent to attempts: tests/test_store_m007.py)
    assert "spans_kind_trace" not in indexes and {"spans_run", "spans_step", "spans_trace"} <= indexes
    assert store.trace_ids() == [_trace(r) for r in range(3)]
    assert len(store.runs()) == 3 and list(store.runs()["calls"]) == [4, 4, 4]
    assert len(store.steps()) == 3 and len(store.calls()) == 12
    assert store.calls(_trace(1))["output"].tolist() == [f"answer 1.{k}" for k in range(4)]
    assert store.resolve_trace_id(_trace(2)[:4]) == _trace(2)
    plan = " ".join(str(p) for p in store.query("EXPLAIN QUERY PLAN SELECT * FROM spans s WHERE s.kind = ?", ("run",)))
    assert "spans_run" in plan
    store.close()
    reopened = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(reopened) == []
    reopened.close()
