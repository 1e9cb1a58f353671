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

import moakit.store.columnar as columnar
import moakit.store.store as store_mod
from moakit.store.records import text_hash
from moakit.store.store import TraceStore

COLUMNS = ["trace_id", "span_id", "parent_id", "step_index", "step", "agent", "model", "sample", "attempts",
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
    real = store_mod.calls_columnar
    monkeypatch.setattr(store_mod, "calls_columnar", lambda *a: called.append(1) or real(*a))
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
    assert store_mod.calls_columnar(store.conn, "s.kind = ?", ["call"], 30) is None


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


def _awkward_store(tmp_path, n=300, seed=8):
    """Calls whose outputs repeat, go back and forth among the texts, are NULL, missing, empty,
    non-ASCII or long, written over several transactions (texts interleaved with inputs)."""
    rng = random.Random(seed)
    store = TraceStore(tmp_path / "t.db")
    values = [f"answer {i} " + "ünïcödé ✓ " * (i % 5) + "x" * rng.randrange(0, 3000) for i in range(60)] + ["", "—"]
    texts = _texts(*values)
    hs = list(texts)
    rows = []
    for i in range(n):
        pick = rng.random()
        if pick < 0.5:
            h = hs[(i // 3) % len(hs)]  # runs of consecutive texts, repeated
        elif pick < 0.8:
            h = rng.choice(hs)  # anywhere, earlier or later
        elif pick < 0.9:
            h = None
        else:
            h = "f" * 32  # no such text
        rows.append(_row(rng, i, f"t{i % 7}", output_hash=h, input_hash=hs[-1], cached=rng.random() < 0.5))
    for k in range(0, n, 50):
        chunk = {h: v for h, v in list(texts.items())[k // 5:k // 5 + 12]}  # texts arrive over time
        store.write(rows[k:k + 50], chunk)
    store.write([], texts)
    return store


def _store_thread_slower(monkeypatch, store):
    """The store's thread packs its columns only after a pause, so that the reader's thread,
    not the store's, takes the output job (a job not yet started when its result is needed is
    run by the store's thread, which on these small stores is often first)."""
    import time

    real = columnar._pack
    monkeypatch.setattr(columnar, "_pack", lambda conn, *a: (conn is store.conn and time.sleep(0.3)) or real(conn, *a))


@pytest.mark.parametrize("batch,mapped", [(1, True), (3, True), (7, True), (5_000, True), (7, False)])
def test_outputs_written_batch_by_batch_equal_sqlite3(tmp_path, monkeypatch, batch, mapped):
    """The output texts are read a batch at a time and written to the calls as soon as their
    texts are in: any batch size gives the row-wise frame, with NULL, missing, empty, repeated
    and non-ASCII outputs, texts in any order, and on the reader thread (not a fallback)."""
    pytest.importorskip("pyarrow")
    store = _awkward_store(tmp_path)
    monkeypatch.setattr(columnar, "_TEXT_BATCH", batch)
    monkeypatch.setattr(columnar._Growing, "_MAPPED", mapped and columnar._Growing._MAPPED)  # False: no mremap
    beside = []
    real = columnar._read_outputs
    monkeypatch.setattr(columnar, "_read_outputs", lambda conn, *a: beside.append(conn is not store.conn) or real(conn, *a))
    _store_thread_slower(monkeypatch, store)
    for trace_id in (None, "t3", ["t1", "t2"]):
        old, new = _both(store, trace_id, monkeypatch)
        _same(old, new)
    assert beside and all(beside), "the outputs were not read on the reader's thread"


def test_scattered_outputs_use_take(tmp_path, monkeypatch):
    """Calls pointing at texts in no order (more runs than a quarter of the calls) take the
    texts with Arrow's take: the same frame."""
    pytest.importorskip("pyarrow")
    store = _awkward_store(tmp_path, seed=9)
    store.conn.execute("UPDATE spans SET output_hash = (SELECT hash FROM texts ORDER BY random() LIMIT 1) "
                       "WHERE rowid % 2 = 0")
    monkeypatch.setattr(columnar, "_TEXT_BATCH", 4)
    spread = []
    real = columnar._spread
    monkeypatch.setattr(columnar, "_spread", lambda *a: spread.append(1) or real(*a))
    old, new = _both(store, None, monkeypatch)
    _same(old, new)
    assert spread


def test_a_commit_between_the_two_snapshots(tmp_path, monkeypatch):
    """Another connection commits after the reader's snapshot starts and before this store's:
    the reader's snapshot is then not used for the spans (cost_usd), and its texts, which lack
    the new one, are refused, so the frame is that of this store's snapshot."""
    pytest.importorskip("pyarrow")
    store = _awkward_store(tmp_path)
    other = TraceStore(tmp_path / "t.db")
    rng = random.Random(10)
    late = _texts("a late text")
    real_reader = store._reader
    same = []

    def reader_then_a_commit():
        reader = real_reader()
        other.write([_row(rng, 1000, "t1", output_hash=next(iter(late)), cost_usd=9.0)], late)
        return reader

    real = store_mod.calls_columnar
    monkeypatch.setattr(store_mod, "calls_columnar", lambda *a: same.append(a[5]) or real(*a))
    monkeypatch.setattr(store, "_reader", reader_then_a_commit)
    monkeypatch.setattr(store_mod, "_ARROW_MIN_ROWS", 0)
    got = store.calls()
    assert same == [False]
    monkeypatch.setattr(store_mod, "_ARROW_MIN_ROWS", None)
    _same(store.calls(), got)
    assert len(got) == 301 and got["output"].iloc[-1] == "a late text" and got["cost_usd"].iloc[-1] == 9.0
    other.close()


def test_texts_of_another_snapshot_are_refused(tmp_path, monkeypatch):
    """The reader's texts are checked against the rowids and hashes of this store's snapshot:
    a text whose rowid now holds another hash (a VACUUM renumbering rows, say) is refused and
    the texts are read again on this store's connection."""
    pytest.importorskip("pyarrow")
    store = _awkward_store(tmp_path)
    monkeypatch.setattr(columnar, "_TEXT_BATCH", 5)
    real_texts = columnar._texts
    refused = []

    def texts(conn, need, hashes):
        if conn is not store.conn:  # the reader sees other hashes than asked for
            hashes = hashes.take(np.roll(np.arange(len(hashes)), 1))
        try:
            yield from real_texts(conn, need, hashes)
        except ValueError:
            refused.append(conn is not store.conn)
            raise

    monkeypatch.setattr(columnar, "_texts", texts)
    _store_thread_slower(monkeypatch, store)
    old, new = _both(store, None, monkeypatch)
    _same(old, new)
    assert refused == [True]


@pytest.mark.parametrize("mapped", [True, False])  # False: what systems without mremap (macOS) use
def test_growing_buffer(monkeypatch, mapped):
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(columnar._Growing, "_MAPPED", mapped and columnar._Growing._MAPPED)
    buf = columnar._Growing()
    total = 0
    for size in (10, 1 << 20, 3 << 20, (3 << 20) + 5, 9 << 20):
        data = buf.view(size)
        assert len(data) >= size
        data[total:size] = np.arange(total, size, dtype=np.int64).astype(np.uint8)
        total = size
        del data
    out = buf.finish(total)
    assert out.size == total and (np.frombuffer(out, np.uint8) == np.arange(total).astype(np.uint8)).all()
    assert columnar._Growing().finish(0).size == 0


def test_growing_buffer_taken_from_the_kernel_while_written():
    """The pages of the estimated capacity are taken by a thread of their own while the buffer
    is written (and grown past the estimate): nothing written is lost."""
    pytest.importorskip("pyarrow")
    step = columnar._Growing._STEP
    buf = columnar._Growing(64 * step)
    rng = np.random.default_rng(11)
    payload = rng.integers(0, 256, 80 * step, dtype=np.uint8)
    for end in range(step // 2, len(payload) + 1, step // 2):
        data = buf.view(end)
        data[end - step // 2:end] = payload[end - step // 2:end]
        del data
    out = buf.finish(len(payload))
    assert (np.frombuffer(out, np.uint8) == payload).all()
    buf.close()  # (the result's memory stays)
    assert (np.frombuffer(out, np.uint8) == payload).all()
    unused = columnar._Growing(8 * step)
    unused.close()
    assert unused.map is None and unused.filler is None


def test_output_size_estimate(tmp_path):
    pytest.importorskip("pyarrow")
    store = _awkward_store(tmp_path)
    true = store.query("SELECT sum(length(CAST(t.text AS BLOB))) FROM spans s JOIN texts t ON t.hash = s.output_hash "
                       "WHERE s.kind = 'call'")[0][0]
    est = columnar._estimate_output_bytes(store.conn, "s.kind = ?", ["call"])
    assert abs(est - true) < 0.1 * true
    assert columnar._estimate_output_bytes(TraceStore(tmp_path / "empty.db").conn, "s.kind = ?", ["call"]) == 0
    # one huge output counts for 20 typical ones at most (the estimate is memory taken ahead)
    huge = _texts("y" * 5_000_000)
    store.write([_row(random.Random(12), 5000, "t1", output_hash=next(iter(huge)))], huge)
    assert columnar._estimate_output_bytes(store.conn, "s.kind = ?", ["call"]) < 2 * true


def test_jobs_beside_by_priority_or_by_the_caller():
    """The reader's thread runs the queued job of lowest priority first; a job it has not
    started when its result is asked for is run by the caller; a failed one is run again there."""
    import sqlite3
    import threading

    started, release = threading.Event(), threading.Event()
    ran = []

    def slow(conn):
        started.set()
        release.wait()
        return "slow"

    def job(name):
        return lambda conn: ran.append((name, threading.current_thread() is threading.main_thread())) or name

    beside = columnar._Beside(sqlite3.connect(":memory:", check_same_thread=False))
    beside.submit("slow", slow, priority=0)
    started.wait()
    beside.submit("late", job("late"), priority=3)
    beside.submit("early", job("early"), priority=1)
    beside.submit("boom", lambda conn: 1 / 0, priority=2)
    assert beside.result("late", None, job("late")) == "late"  # not started: the caller runs it
    release.set()
    assert beside.result("slow", None, job("never")) == "slow"
    assert beside.result("early", None, job("never")) == "early"
    assert beside.result("boom", None, job("boom again")) == "boom again"
    beside.close()
    assert ran == [("late", True), ("early", False), ("boom again", True)]


def test_reader_opens_the_stores_file_after_a_chdir(tmp_path, monkeypatch):
    """The reader's connection opens the file the store has open, not what its (relative) path
    names from the current directory."""
    pytest.importorskip("pyarrow")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store = TraceStore("t.db")
    rng = random.Random(13)
    texts = _texts("mine")
    store.write([_row(rng, i, "t", output_hash=next(iter(texts))) for i in range(30)], texts)
    monkeypatch.chdir(tmp_path / "b")
    decoy = TraceStore("t.db")
    decoy.write([_row(rng, i, "t") for i in range(30)])
    reader = store._reader()
    assert reader.execute("SELECT count(*) FROM texts").fetchone()[0] == 1
    reader.close()
    old, new = _both(store, None, monkeypatch)
    _same(old, new)
    assert set(new["output"]) == {"mine"}
