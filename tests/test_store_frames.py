"""``TraceStore.calls()`` read through Arrow (the ADBC SQLite driver, used for large results)
gives the very frame the Python ``sqlite3`` path gives: same columns, order, dtypes and values
(None / NaN where nothing was recorded, ``cached`` as bool, ordered by start time then rowid),
also on a file another connection is writing in WAL mode."""

from __future__ import annotations

import builtins
import random

import numpy as np
import pandas as pd
import pytest

import moakit.tracing.columnar as columnar
import moakit.tracing.store as store_mod
from moakit.tracing.store import TraceStore, text_hash

COLUMNS = ["trace_id", "span_id", "parent_id", "step_index", "step", "agent", "model", "sample", "attempt",
           "input_tokens", "output_tokens", "cost_usd", "latency_s", "start_ns", "end_ns", "cached", "error",
           "output", "request_key"]


def _row(rng, i, trace, **over):
    row = {"span_id": f"{rng.getrandbits(64):016x}", "trace_id": trace, "parent_id": f"{rng.getrandbits(64):016x}",
           "name": "chat m", "kind": "call", "start_ns": 1_000 + 10 * i, "end_ns": 1_000 + 10 * i + 7,
           "status": "OK", "error": None, "step_index": i % 4, "step": "Propose", "agent": f"a{i % 3}",
           "model": "together_ai/m", "sample": 0, "input_tokens": 10 + i, "output_tokens": 5 + i,
           "cost_usd": 1e-6 * i, "request_key": f"k{i}:0", "input_hash": None, "output_hash": None,
           "attributes": "{}", "cached": False, "attempt": 1}
    row.update(over)
    return row


def _texts(*values):
    return {text_hash(v): v for v in values}


def _both(store, trace_id=None, monkeypatch=None):
    """calls() through sqlite3 and through Arrow (threshold forced to 0)."""
    monkeypatch.setattr(store_mod, "_ARROW_MIN_ROWS", None)
    old = store.calls(trace_id)
    monkeypatch.setattr(store_mod, "_ARROW_MIN_ROWS", 0)
    called = []
    real = store_mod._calls_columnar
    monkeypatch.setattr(store_mod, "_calls_columnar", lambda *a: called.append(1) or real(*a))
    new = store.calls(trace_id)
    assert called or old.empty, "the Arrow path was not taken"  # no rows: the sqlite3 path
    return old, new


def _same(old, new):
    assert list(new.columns) == list(old.columns) == COLUMNS
    assert list(new.dtypes) == list(old.dtypes)
    pd.testing.assert_frame_equal(old, new, check_exact=True)
    # object columns: None stays None (not NaN)
    for c in old.columns:
        if old[c].dtype == object:
            assert [type(v) for v in old[c]] == [type(v) for v in new[c]], c


def test_arrow_frame_equals_sqlite3_frame_on_awkward_rows(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    rng = random.Random(1)
    store = TraceStore(tmp_path / "t.db")
    texts = _texts("plain answer", "ünïcödé ✓ answer", "", "x" * 50_000, "a run's output")
    hs = list(texts)
    rows = []
    for i in range(60):
        trace = "t1" if i % 2 == 0 else "t2"  # interleaved: the trace index order is not the rowid order
        r = _row(rng, i, trace, output_hash=hs[i % 4], cached=i % 3 == 0)
        if i == 3:
            r.update(error="RateLimitError: slow down", output_hash=None, status="ERROR")
        if i == 5:
            r.update(output_hash="0" * 32)  # a text that is missing: NULL, as the LEFT JOIN gives
        if i == 7:
            r.update(step_index=None, sample=None, attempt=None, input_tokens=None, cost_usd=None, end_ns=None)
        if i == 11:
            r.update(start_ns=1_000 + 10 * 2)  # same start as row 2: rowid breaks the tie
        if i == 13:
            r.update(start_ns=5)  # recorded late, started first
        if i == 17:
            r.update(parent_id=None, request_key=None, agent=None)
        rows.append(r)
    # other kinds are not calls
    rows.append(_row(rng, 99, "t1", kind="run", name="run", output_hash=hs[4]))
    rows.append(_row(rng, 98, "t1", kind="step", name="step"))
    store.write(rows[:20], texts)
    store.write(rows[20:])
    for trace_id in (None, "t1", ["t1", "t2"], "nothing"):
        old, new = _both(store, trace_id, monkeypatch)
        _same(old, new)
    old, _ = _both(store, None, monkeypatch)
    assert len(old) == 60
    assert old["start_ns"].iloc[0] == 5 and old["cached"].dtype == bool
    assert np.isnan(old.loc[old["span_id"] == rows[3]["span_id"], "output"].iloc[0])
    assert old.loc[old["span_id"] == rows[3]["span_id"], "error"].iloc[0] == "RateLimitError: slow down"
    tie = old[old["start_ns"] == 1_020]
    assert list(tie["span_id"]) == [rows[2]["span_id"], rows[11]["span_id"]]
    assert (old["output"] == "x" * 50_000).sum() == 14  # one of 15 failed
    assert (old["output"] == "").sum() == 15


def test_all_null_columns_stay_object_none(tmp_path, monkeypatch):
    """No errors at all: ``error`` is an object column of None, as from sqlite3; no outputs at
    all: ``output`` likewise; integers without NULL are int64."""
    pytest.importorskip("pyarrow")
    rng = random.Random(2)
    store = TraceStore(tmp_path / "t.db")
    store.write([_row(rng, i, "t") for i in range(25)])
    old, new = _both(store, None, monkeypatch)
    _same(old, new)
    assert old["error"].dtype == object and old["error"].isna().all() and old["error"].iloc[0] is None
    assert old["output"].iloc[0] is None
    assert old["step_index"].dtype == np.int64 and old["cost_usd"].dtype == np.float64


def test_late_error_beyond_first_rows(tmp_path, monkeypatch):
    """The driver infers a column's type from its first batch: an error text after thousands
    of NULL errors (and the first output after thousands of NULL outputs) must still come through."""
    pytest.importorskip("pyarrow")
    rng = random.Random(3)
    store = TraceStore(tmp_path / "t.db")
    texts = _texts("late output")
    rows = [_row(rng, i, f"t{i // 19}") for i in range(5_000)]
    rows[-1].update(error="boom", status="ERROR")
    rows[-2].update(output_hash=next(iter(texts)))
    store.write(rows, texts)
    old, new = _both(store, None, monkeypatch)
    _same(old, new)
    assert new["error"].iloc[-1] == "boom" and new["output"].iloc[-2] == "late output"


def test_reads_what_another_writer_committed_in_wal_mode(tmp_path, monkeypatch):
    """The Arrow reader opens its own connection: it sees what another connection committed
    and is still in the write-ahead log (not checkpointed), while that writer stays open."""
    pytest.importorskip("pyarrow")
    rng = random.Random(4)
    path = tmp_path / "t.db"
    writer = TraceStore(path)
    writer.conn.execute("PRAGMA wal_autocheckpoint = 0")
    reader = TraceStore(path)
    texts = _texts("one", "two")
    writer.write([_row(rng, i, "t", output_hash=list(texts)[i % 2]) for i in range(30)], texts)
    assert (tmp_path / "t.db-wal").stat().st_size > 0
    old, new = _both(reader, None, monkeypatch)
    _same(old, new)
    assert len(new) == 30 and set(new["output"]) == {"one", "two"}
    writer.write([_row(rng, 100 + i, "t") for i in range(5)])
    assert len(reader.calls()) == 35
    writer.close()
    reader.close()


def test_falls_back_to_sqlite3_without_pyarrow(tmp_path, monkeypatch):
    rng = random.Random(5)
    store = TraceStore(tmp_path / "t.db")
    store.write([_row(rng, i, "t") for i in range(10)])
    monkeypatch.setattr(store_mod, "_ARROW_MIN_ROWS", None)
    ref = store.calls()
    real_import = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name == "pyarrow":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    monkeypatch.setattr(store_mod, "_ARROW_MIN_ROWS", 0)
    pd.testing.assert_frame_equal(ref, store.calls(), check_exact=True)


@pytest.mark.parametrize("column, value", [("input_tokens", 2.5), ("step_index", "layer one"), ("cost_usd", "free")])
def test_value_of_another_type_falls_back_to_the_same_frame(tmp_path, monkeypatch, column, value):
    """SQLite lets any value into any column: a REAL or a text among integers (pandas makes
    that column float64 or object) is noticed, and the row-wise path gives the frame."""
    pytest.importorskip("pyarrow")
    rng = random.Random(6)
    store = TraceStore(tmp_path / "t.db")
    rows = [_row(rng, i, "t") for i in range(30)]
    rows[9][column] = value
    store.write(rows)
    old, new = _both(store, None, monkeypatch)
    _same(old, new)
    assert store_mod._calls_columnar(store.conn, "s.kind = ?", ["call"], 30) is None


def test_spread_equals_take():
    """The outputs are spread by concatenating runs of consecutive texts; it gives what
    Arrow's take gives, NULLs included, whatever the pattern."""
    pa = pytest.importorskip("pyarrow")
    texts = pa.array(["a", "", "ccc", "ünï", None and "x", "dd"], pa.large_string()).fill_null("")
    rng = random.Random(7)
    patterns = [[0, 1, 2, 3, 4, 5], [None, None, 0, 1, None, 2, 3, 4, 5, 5, None], [5, 4, 3, 2, 1, 0] * 3,
                [rng.choice([None, *range(6)]) for _ in range(500)], [None] * 7,
                [i % 6 for i in range(1000)], [2] * 10]
    for p in patterns:
        idx = pa.array(p, pa.int32())
        for chunks in ([texts], [texts.slice(0, 2), texts.slice(2, 1), texts.slice(3)]):
            got = columnar._spread(pa, np, chunks, idx)
            assert got.type == pa.large_string() and got.to_pylist() == texts.take(idx).to_pylist(), p
    assert columnar._spread(pa, np, [], pa.array([None, None], pa.int32())).to_pylist() == [None, None]
