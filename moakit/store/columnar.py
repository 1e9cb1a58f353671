"""The column-wise reader behind ``TraceStore.calls()`` for large results: one scan packs each
column of every row into one value (``group_concat``), numpy and Arrow unpack it with no Python
object per value, and each distinct output text is read once. The row-wise sqlite3 path in
``store.py`` stays for small results and for values of an unexpected type;
``tests/test_store_frames.py`` keeps the two equal."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from typing import Any

# calls() columns by how they are packed: the integers, the texts, and cost_usd (a REAL: SQLite's
# text form of a double is not exact, so it comes through the sqlite3 cursor). start_ns and
# output_hash come first, in a scan of their own: they give the row order and the output texts.
_CALLS_INT = ("step_index", "sample", "attempt", "input_tokens", "output_tokens", "end_ns", "cached")
_CALLS_TEXT = ("trace_id", "span_id", "parent_id", "step", "agent", "model", "error", "request_key")
# the TEXT columns packed on the reader's thread when it shares the snapshot
_ID_COLUMNS = ("trace_id", "span_id", "parent_id", "request_key")
# output texts are read by rowid in batches of this many (a JSON list of rowids each; ~8 MB of
# answers: small enough for the C library to recycle the memory of one batch for the next)
_TEXT_BATCH = 5_000


def _packed_int_sql(col: str) -> str:
    """SQL aggregates that pack an integer column of many rows into two values: its values,
    comma-separated (NULLs left out), and how many there are."""
    return f"CAST(group_concat({col}, ',') AS BLOB), count({col})"


def _packed_text_sql(col: str) -> str:
    """SQL aggregates that pack a TEXT column of many rows into two values: its bytes, all
    concatenated (a BLOB, so no UTF-8 decoding into a Python str), and each row's byte length
    (-1 for NULL), comma-separated."""
    return (f"CAST(group_concat({col}, '') AS BLOB), "
            f"group_concat(coalesce(length(CAST({col} AS BLOB)), -1), ',')")


def _unpack_int(np, packed: bytes | None, count: int):
    """The int64 array of :func:`_packed_int_sql`'s two values, or None when a value in them is
    not an integer (a REAL or a text, which pandas would not make an int64 column of)."""
    packed = packed or b""
    # only digits, minus signs and count - 1 commas: no REAL or TEXT value slipped in
    if packed.translate(None, b"-0123456789,") or packed.count(b",") != max(count - 1, 0):
        return None
    v = np.fromstring(packed, dtype=np.int64, sep=",") if count else np.zeros(0, np.int64)
    return v if len(v) == count else None


def _unpack_text(pa, np, n: int, data: bytes | None, lengths: str | None):
    """The Arrow large_string array of :func:`_packed_text_sql`'s two values (no copy of the bytes)."""
    lens = np.fromstring(lengths, dtype=np.int64, sep=",") if n else np.zeros(0, np.int64)
    if len(lens) != n:
        raise ValueError("packed lengths do not match the row count")
    valid = lens >= 0
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.where(valid, lens, 0), out=offsets[1:])
    data = data or b""
    if offsets[-1] != len(data):
        raise ValueError("packed bytes do not match their lengths")
    nulls = int(n - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data), bitmap, nulls)
    arr.validate(full=True)  # UTF-8, as sqlite3 would have decoded it
    return arr


def calls_columnar(conn: sqlite3.Connection, where: str, params: list, n: int | None = None,
                   reader: sqlite3.Connection | None = None, same_snapshot: bool = False):
    """calls() read column by column: scans of the spans pack each column of all rows into one
    value (``group_concat``), unpacked by numpy and Arrow with no Python object per value, then
    handed to pandas with the dtypes ``pd.Series`` infers from the values the row-wise path
    (:meth:`TraceStore._calls_sqlite3`) fetches, so both give equal frames. ``n``, when given,
    is the row count the caller expects.

    Outputs are not joined to the spans (a look-up in the texts' hash index per call): each
    distinct output text (a cached call repeats the text of the call it replays: ~2/3 of the
    outputs of a Shuffle ablation) is read once, by rowid in the texts table's order, and written
    to the calls in their final order (:func:`_read_outputs`).

    ``reader``, another connection to the same file in a read transaction of its own, lets a
    thread read beside ``conn`` (SQLite and the big copies run without the GIL): the output
    texts, and with ``same_snapshot`` (the caller knows both transactions see the same commit)
    ``cost_usd``. Which texts, by rowid and hash, comes from ``conn``'s snapshot; a text row
    never changes once written (content-addressed, ``INSERT OR IGNORE``) and each batch read is
    checked against those rowids and hashes, so the outputs are those of ``conn``'s snapshot
    whichever snapshot ``reader`` has. What the thread could not do is done on ``conn``.

    The caller holds the store's lock and a read transaction (one snapshot for all queries).
    Returns None, for the row-wise path, when a value is not of its column's type (a text in an
    integer column, say, which pandas would make an object column). TEXT columns are taken to
    hold text or NULL: moakit writes nothing else there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    beside = _Beside(reader)
    buffers: list[_Growing] = []  # the output column's memory, made on the reader's thread

    def output_buffer(c):
        # mapped at the estimated size and taken from the kernel on a thread of its own from now on
        buffers.append(_Growing(int(_estimate_output_bytes(c, where, params) * 1.05)))

    # with the same snapshot, the reader's thread also reads cost_usd and packs the id columns
    # while this thread finds the row order and the outputs' texts
    texts = _CALLS_TEXT
    cost_usd = lambda c: _cost_by_rowid(c, where, params)  # noqa: E731
    pack_ids = lambda c: _pack(c, where, params, ("rowid",), _ID_COLUMNS)  # noqa: E731
    try:
        beside.submit("buffer", output_buffer, priority=0)
        if same_snapshot:
            beside.submit("ids", pack_ids, priority=2)
            beside.submit("cost", cost_usd, priority=3)
            texts = tuple(c for c in _CALLS_TEXT if c not in _ID_COLUMNS)

        # 1. the row order and the output hashes
        out = conn.execute(f"SELECT count(*), {_packed_int_sql('s.rowid')}, {_packed_int_sql('s.start_ns')}, "
                           f"{_packed_text_sql('s.output_hash')} FROM spans s WHERE {where}", params).fetchone()
        n = out[0] if n is None else n
        rowid = _unpack_int(np, out[1], out[2])
        start = _unpack_int(np, out[3], out[4])
        if not n or out[0] != n or rowid is None or start is None or len(rowid) != n:
            return None
        cols: dict[str, Any] = {}
        if len(start) != n:
            cols["start_ns"] = _with_nulls(conn, where, params, pa, np, rowid, {"start_ns": start})["start_ns"]
            if cols["start_ns"] is None:
                return None
            start = cols["start_ns"].fill_null(0).to_numpy()
        else:
            cols["start_ns"] = start
        order = np.lexsort([rowid, start])
        ordered = bool((order[1:] > order[:-1]).all())
        output_hash = _unpack_text(pa, np, n, out[5], out[6])
        del out
        if not ordered:
            output_hash = output_hash.take(pa.array(order))

        # 2. which text each call's output is: every text's hash and rowid (a scan of the hash
        # index, ~0.1 s for 450k texts), so the outputs are read by rowid, in the table's order,
        # instead of by a probe of that index each
        k, hashes, lengths, rowids = conn.execute(
            f"SELECT count(*), {_packed_text_sql('hash')}, group_concat(rowid, ',') FROM texts").fetchone()
        all_hashes = _unpack_text(pa, np, k, hashes, lengths)
        all_rowids = np.fromstring(rowids or "", dtype=np.int64, sep=",") if k else np.zeros(0, np.int64)
        del hashes, lengths, rowids
        pos = pc.index_in(output_hash, value_set=all_hashes)
        del output_hash
        has_text = pos.is_valid().to_numpy(zero_copy_only=False)
        pos = pos.fill_null(0).to_numpy()
        need, first, at = np.unique(all_rowids[pos[has_text]], return_index=True, return_inverse=True)
        need_hashes = all_hashes.take(pa.array(pos[has_text][first]))
        del all_hashes, all_rowids, pos, first
        full_at = np.full(n, -1, np.int64)
        full_at[has_text] = at
        idx = pa.array(full_at, mask=~has_text)
        del at, full_at, has_text
        read_outputs = lambda c: _read_outputs(c, need, need_hashes, idx, *buffers[:1])  # noqa: E731
        beside.submit("output", read_outputs, priority=1)

        # 3. the other columns
        packed = [_pack(conn, where, params, (*_CALLS_INT, "rowid"), texts)]
        if same_snapshot:
            packed.append(beside.result("ids", conn, pack_ids))
        partial = {}  # integer columns with NULLs: their NULL positions are asked for below
        for got in packed:
            # (None: a value not of its column's type)
            if got is None or got[0] != n or not np.array_equal(got[1].pop("rowid"), rowid):
                return None  # (or not the first scan's row order)
            cols.update(got[1])
        for c in _CALLS_INT:
            if len(cols[c]) != n:
                partial[c] = cols[c]
        if partial:
            cols.update(_with_nulls(conn, where, params, pa, np, rowid, partial))
            if any(cols[c] is None for c in partial):
                return None
        for c in (*_CALLS_INT, "start_ns"):
            if not isinstance(cols[c], pa.Array):
                cols[c] = pa.array(cols[c])
        cost = beside.result("cost", conn, cost_usd)
        if cost is None or len(cost) != n:
            return None
        by_rowid = np.argsort(rowid, kind="stable")
        cols["cost_usd"] = cost if (by_rowid == np.arange(n)).all() else cost.take(pa.array(np.argsort(by_rowid)))
        # as SQLite computes it: (end_ns - start_ns) / 1e9, NULL when either is
        cols["latency_s"] = pc.divide(pc.cast(pc.subtract(cols["end_ns"], cols["start_ns"]), pa.float64()), 1e9)
        if not ordered:
            take = pa.array(order)
            cols = {c: v.take(take) for c, v in cols.items()}
        cols["output"] = beside.result("output", conn, read_outputs)
        return cols
    finally:
        beside.close()
        for b in buffers:
            b.close()


def _cost_by_rowid(conn, where: str, params: list):
    """cost_usd in rowid order, through the cursor: SQLite's text form of a double is not exact.
    None when a value is not a number (a text in the REAL column)."""
    import pyarrow as pa

    try:
        return pa.array([r[0] for r in conn.execute(
            f"SELECT s.cost_usd FROM spans s WHERE {where} ORDER BY s.rowid", params)], pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _pack(conn, where: str, params: list, ints: tuple, texts: tuple):
    """One scan packing integer columns ``ints`` and TEXT columns ``texts`` of the rows:
    (row count, {column: int64 numpy array (NULLs left out) or Arrow large_string array}), or
    None when an integer column holds another type."""
    import numpy as np
    import pyarrow as pa

    sql = ", ".join([_packed_int_sql("s." + c) for c in ints] + [_packed_text_sql("s." + c) for c in texts])
    out = conn.execute(f"SELECT count(*), {sql} FROM spans s WHERE {where}", params).fetchone()
    n, vals = out[0], iter(out[1:])
    del out
    cols = {}
    for c in ints:
        cols[c] = _unpack_int(np, next(vals), next(vals))
        if cols[c] is None:
            return None
    for c in texts:
        cols[c] = _unpack_text(pa, np, n, next(vals), next(vals))
    return n, cols


def _with_nulls(conn, where, params, pa, np, rowid, partial: dict) -> dict:
    """Integer columns that have NULLs, as Arrow arrays with them in place (None for a column
    when the scan's row order is not ``rowid``'s); ``partial`` maps each to its packed values."""
    nulls = ", ".join(f"group_concat(s.{c} IS NULL, '')" for c in partial)
    rowids, *masks = conn.execute(f"SELECT CAST(group_concat(s.rowid, ',') AS BLOB), {nulls} "
                                  f"FROM spans s WHERE {where}", params).fetchone()
    if not np.array_equal(np.fromstring(rowids, dtype=np.int64, sep=","), rowid):
        return dict.fromkeys(partial)  # not the first scan's row order
    out = {}
    for (c, values), m in zip(partial.items(), masks):
        null = np.frombuffer(m.encode(), np.uint8) == ord("1")
        if len(null) != len(rowid) or int((~null).sum()) != len(values):
            out[c] = None
            continue
        full = np.zeros(len(rowid), np.int64)
        full[~null] = values
        out[c] = pa.array(full, mask=null)
    return out


class _Beside:
    """A thread that runs jobs on another connection (``reader``; None: no thread, every job
    runs on the caller's connection when its result is asked for), the one submitted with the
    lowest ``priority`` first. A job the thread has not started when its result is asked for
    is run by the caller instead of waited for."""

    def __init__(self, reader: sqlite3.Connection | None):
        self.reader = reader
        self.lock = threading.Condition()
        self.queued: dict[str, tuple[int, Any]] = {}  # name -> (priority, fn)
        self.done: dict[str, tuple[threading.Event, list]] = {}
        self.closed = False
        self.thread = None
        if reader is not None:
            self.thread = threading.Thread(target=self._run, name="moakit-calls-reader", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.queued and not self.closed:
                    self.lock.wait()
                if not self.queued:
                    return
                name = min(self.queued, key=lambda k: self.queued[k][0])
                fn = self.queued.pop(name)[1]
            event, box = self.done[name]
            try:
                box.append(fn(self.reader))
            except Exception:  # noqa: BLE001 -- done again on the caller's connection, which says what is wrong
                pass
            finally:
                event.set()

    def submit(self, name: str, fn, priority: int = 0) -> None:
        if self.thread is not None:
            with self.lock:
                self.done[name] = (threading.Event(), [])
                self.queued[name] = (priority, fn)
                self.lock.notify()

    def result(self, name: str, conn, fn):
        """The job's result; ``fn(conn)`` when it was not run beside (or not yet started
        there) or failed there."""
        with self.lock:
            if self.queued.pop(name, None) is not None:
                self.done.pop(name)
        if name in self.done:
            event, box = self.done[name]
            event.wait()
            if box:
                return box[0]
        return fn(conn)

    def close(self) -> None:
        """Let the running job finish (the others are dropped) and the thread end."""
        if self.thread is not None:
            with self.lock:
                self.queued.clear()
                self.closed = True
                self.lock.notify()
            self.thread.join()


def _texts(conn, need, hashes):
    """The texts of rowids ``need`` (sorted), whose hashes must be ``hashes``: one Arrow
    large_string array per batch of ``_TEXT_BATCH`` rowids, in that order. Raises ValueError
    when a row read is not the one asked for (another snapshot, a VACUUM since)."""
    import numpy as np
    import pyarrow as pa

    for i in range(0, len(need), _TEXT_BATCH):
        batch = need[i:i + _TEXT_BATCH]
        m, rowids, nr, hashes_read, hash_lengths, data, lengths = conn.execute(
            f"SELECT count(*), {_packed_int_sql('rowid')}, {_packed_text_sql('hash')}, {_packed_text_sql('text')} "
            "FROM texts WHERE rowid IN (SELECT value FROM json_each(?))", (json.dumps(batch.tolist()),)).fetchone()
        got = _unpack_int(np, rowids, nr)
        # the rows asked for, in that order, with the hashes of the calls' snapshot
        if m != len(batch) or got is None or not np.array_equal(got, batch) or \
                not _unpack_text(pa, np, m, hashes_read, hash_lengths).equals(hashes.slice(i, m)):
            raise ValueError("the texts read are not those of the calls' snapshot")
        del rowids, hashes_read, hash_lengths
        yield _unpack_text(pa, np, m, data, lengths)


def _read_outputs(conn, need, hashes, idx, out: _Growing | None = None):
    """The output column: the texts of rowids ``need`` (sorted; their hashes must be
    ``hashes``) spread to the calls by ``idx`` (an index into ``need``, NULL for no text).

    Written a batch of texts at a time into one growing buffer, in the calls' order, as soon as
    the texts of the next calls have been read, and each batch dropped after its last call: the
    distinct texts are never all held at once, and the memory they free is what the next
    outputs are written to (memory just freed costs far less to touch than fresh pages).
    Calls that point at texts in no useful order (more runs of consecutive texts than a quarter
    of the calls) are spread with Arrow's take. (Figures: benchmarks/NOTES.md, B5.)"""
    import numpy as np
    import pyarrow as pa

    n = len(idx)
    valid = idx.is_valid().to_numpy(zero_copy_only=False)
    at = idx.fill_null(-1).to_numpy()
    if not len(need):
        return pa.nulls(n, pa.large_string())
    batch = np.where(valid, at // _TEXT_BATCH, -1)
    # a run: consecutive calls whose texts are consecutive in one batch, or that have none
    cont = (valid[1:] & valid[:-1] & (at[1:] == at[:-1] + 1) & (batch[1:] == batch[:-1])) | \
        (~valid[1:] & ~valid[:-1])
    runs = np.concatenate([[0], np.flatnonzero(~cont) + 1])
    if len(runs) > n // 4:  # scattered: one copy per call would cost more than the take
        return _spread(pa, np, list(_texts(conn, need, hashes)), idx)
    ends = np.append(runs[1:], n)
    ready = np.maximum.accumulate(batch)  # the calls up to each can be written once that batch is read
    last = np.full(-(-len(need) // _TEXT_BATCH), -1, np.int64)  # each batch's last call
    np.maximum.at(last, batch[valid], np.flatnonzero(valid))
    text_len = np.zeros(len(need), np.int64)
    offsets = np.zeros(n + 1, np.int64)
    out = out if out is not None else _Growing()
    held: dict[int, tuple] = {}  # batch -> (its texts' bytes as uint8, their offsets)
    done = 0  # calls written
    r = 0  # their runs
    for k, texts in enumerate(_texts(conn, need, hashes)):
        text_offsets = np.frombuffer(texts.buffers()[1], np.int64, len(texts) + 1)
        np.subtract(text_offsets[1:], text_offsets[:-1], out=text_len[k * _TEXT_BATCH:k * _TEXT_BATCH + len(texts)])
        held[k] = (np.frombuffer(texts.buffers()[2], np.uint8), text_offsets)
        del texts
        upto = int(np.searchsorted(ready, k, side="right"))
        if upto == done:
            continue
        lens = np.where(valid[done:upto], text_len[at[done:upto].clip(0)], 0)
        np.cumsum(lens, out=offsets[done + 1:upto + 1])
        offsets[done + 1:upto + 1] += offsets[done]
        data = out.view(int(offsets[upto]))
        r_end = int(np.searchsorted(runs, upto))
        for a, b in zip(runs[r:r_end].tolist(), ends[r:r_end].tolist()):
            if valid[a]:
                j = int(batch[a])
                src, src_offsets = held[j]
                first = int(at[a]) - j * _TEXT_BATCH
                data[offsets[a]:offsets[b]] = src[src_offsets[first]:src_offsets[first + b - a]]
        del data
        for j in [j for j in held if last[j] < upto]:
            del held[j]
        done, r = upto, r_end
    if done != n:
        raise ValueError("texts missing")  # (every batch read: cannot happen)
    nulls = int(n - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), out.finish(int(offsets[n])), bitmap, nulls)


class _Growing:
    """A byte buffer written front to back whose final size is not known in advance: an
    anonymous memory map, grown by doubling (``mremap``: the pages written stay where they are),
    and trimmed to size at the end.

    ``capacity``, an estimate of the final size, is mapped at once and its pages are taken from
    the kernel by a thread of their own (``MADV_POPULATE_WRITE``, Linux 5.14+, which leaves
    pages already written as they are) while the data to write is still being read: the first
    touch of a fresh page is the dominant cost of a large output column, and faulted on another
    core while the spans are read it is off the critical path. (Figures: benchmarks/NOTES.md, B5.)"""

    _POPULATE_WRITE = 23  # MADV_POPULATE_WRITE
    _STEP = 1 << 20
    # mmap.resize needs mremap, which only Linux has (elsewhere it raises SystemError): other
    # systems grow a bytearray instead (a copy at each doubling)
    _MAPPED = sys.platform.startswith("linux")

    def __init__(self, capacity: int = 0):
        self.map = None
        self.finished = False
        self.stop = threading.Event()
        self.filler = None
        if capacity >= self._STEP and self._MAPPED:
            import mmap

            self.map = mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.filler = threading.Thread(target=self._fill, name="moakit-calls-pages", daemon=True)
            self.filler.start()

    def _fill(self) -> None:
        import ctypes

        import numpy as np

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            madvise = libc.madvise
            madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            view = np.frombuffer(self.map, np.uint8)
            address, size = view.ctypes.data, len(view)
            del view  # (the map cannot be resized while a view of it exists)
            for at in range(0, size, self._STEP):
                # (never a write from here: the other thread may already have written these pages)
                if self.stop.is_set() or madvise(address + at, min(self._STEP, size - at), self._POPULATE_WRITE):
                    return  # told to stop, or not supported: the pages are taken when written
        except (OSError, AttributeError):
            return

    def _stop_filling(self) -> None:
        if self.filler is not None:
            self.stop.set()
            self.filler.join()
            self.filler = None

    def view(self, size: int):
        """A writable uint8 view of at least ``size`` bytes (drop it before the next call)."""
        import mmap

        import numpy as np

        if not self._MAPPED:
            if self.map is None:
                self.map = bytearray(max(size, 1 << 20))
            elif size > len(self.map):
                self.map += bytes(max(size, 2 * len(self.map)) - len(self.map))
            return np.frombuffer(self.map, np.uint8)
        if self.map is None:
            self.map = mmap.mmap(-1, max(size, 1 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        elif size > len(self.map):
            self._stop_filling()
            self.map.resize(max(size, 2 * len(self.map)))
        return np.frombuffer(self.map, np.uint8)

    def finish(self, size: int):
        """The Arrow buffer of the first ``size`` bytes."""
        import pyarrow as pa

        self._stop_filling()
        if self.map is None or size == 0:
            self.close()
            return pa.py_buffer(b"")
        self.finished = True
        if not self._MAPPED:
            return pa.py_buffer(memoryview(self.map)[:size])
        self.map.resize(size)
        return pa.py_buffer(self.map)

    def close(self) -> None:
        """Give the memory back, unless :meth:`finish` made it the result."""
        self._stop_filling()
        if self.map is not None and not self.finished:
            if self._MAPPED:
                self.map.close()
            self.map = None
            self.map = None


def _estimate_output_bytes(conn, where: str, params: list, samples: int = 2_000) -> int:
    """The outputs' total size in bytes, estimated from the calls among ``samples`` random rowids
    (~2% off for a million calls; ~10 ms when the file is in the page cache). It is what
    :class:`_Growing` takes from the kernel ahead of the writes, so it errs low: a sampled output
    counts for at most 20 times the sample's median (one huge output, sampled, would otherwise
    count for thousands of calls), and the whole for at most a quarter of the physical memory."""
    import os
    import random
    import statistics

    # (one min() or max() each: SQLite scans the table for both in one SELECT)
    lo, hi = conn.execute("SELECT (SELECT min(rowid) FROM spans), (SELECT max(rowid) FROM spans)").fetchone()
    if lo is None:
        return 0
    rng = random.Random(0)
    ids = sorted({rng.randint(lo, hi) for _ in range(samples)})
    lengths = [r[0] for r in conn.execute(
        "SELECT length(CAST(t.text AS BLOB)) FROM spans s JOIN texts t ON t.hash = s.output_hash "
        f"WHERE s.rowid IN (SELECT value FROM json_each(?)) AND ({where})", [json.dumps(ids), *params])]
    if not lengths:
        return 0
    cap = 20 * max(statistics.median(lengths), 1)
    total = int(sum(min(x, cap) for x in lengths) * (hi - lo + 1) / len(ids))
    try:
        return min(total, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    except (ValueError, OSError, AttributeError):
        return total


def _spread(pa, np, chunks: list, idx):
    """``texts.take(idx)`` (NULL where ``idx`` is) for ``texts`` the concatenation of ``chunks``,
    built by concatenating slices where calls point at consecutive texts, else by Arrow's take
    (:func:`_read_outputs` uses it for calls whose texts are in no useful order).

    The result is allocated by the C library's allocator, not by Arrow's default (mimalloc),
    which asks the kernel for fresh transparent huge pages: pages the C library just freed are
    much cheaper to touch again. (Figures: benchmarks/NOTES.md, B5.)"""
    n = len(idx)
    if not chunks:
        return pa.nulls(n, pa.large_string())
    pool = pa.system_memory_pool()
    starts = np.cumsum([0] + [len(c) for c in chunks])
    valid = idx.is_valid().to_numpy(zero_copy_only=False)
    at = idx.fill_null(-1).to_numpy()
    chunk_of = np.searchsorted(starts, at, side="right") - 1
    # a run continues where both rows are NULL, or both are not, in one chunk, the index up by one
    cont = (valid[1:] & valid[:-1] & (at[1:] == at[:-1] + 1) & (chunk_of[1:] == chunk_of[:-1])) | \
        (~valid[1:] & ~valid[:-1])
    run = np.concatenate([[0], np.flatnonzero(~cont) + 1])
    if len(run) > n // 4:  # scattered: one slice per call would cost more than the take
        return pa.chunked_array(chunks, pa.large_string()).take(idx).combine_chunks(memory_pool=pool)
    ends = np.append(run[1:], n)
    return pa.concat_arrays([
        chunks[chunk_of[a]].slice(int(at[a] - starts[chunk_of[a]]), int(b - a)) if valid[a]
        else pa.nulls(int(b - a), pa.large_string()) for a, b in zip(run, ends)], memory_pool=pool)


def calls_frame(cols: dict):
    """The calls() DataFrame of :func:`calls_columnar`'s Arrow columns."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    names = ["trace_id", "span_id", "parent_id", "step_index", "step", "agent", "model", "sample", "attempt",
             "input_tokens", "output_tokens", "cost_usd", "latency_s", "start_ns", "end_ns", "cached", "error",
             "output", "request_key"]
    return pd.DataFrame({c: _pandas_column(cols[c], pa, np, pd) for c in names}, copy=False)


def _pandas_column(col, pa, np, pd):
    """An Arrow column as pandas infers it from the Python values sqlite3 gives: all NULL ->
    object of None; text -> ``str`` (NaN for NULL); integers -> int64, or float64 (NaN) when
    some are NULL; reals -> float64."""
    if col.null_count == len(col):
        return pd.Series([None] * len(col), dtype=object)
    t = col.type
    if pa.types.is_large_string(t) or pa.types.is_string(t):
        return pd.Series(pd.array(col, dtype=pd.StringDtype("pyarrow", na_value=np.nan)), copy=False)
    if pa.types.is_integer(t) and col.null_count == 0:
        return pd.Series(col.to_numpy(), copy=False)
    return pd.Series(col.cast(pa.float64()).to_numpy(zero_copy_only=False), copy=False)
