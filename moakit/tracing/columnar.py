"""The column-wise reader behind ``TraceStore.calls()`` for large results: one scan packs each
column of every row into one value (``group_concat``), numpy and Arrow unpack it with no Python
object per value, and each distinct output text is read once. The row-wise sqlite3 path in
``store.py`` stays for small results and for values of an unexpected type;
``tests/test_store_frames.py`` keeps the two equal."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

# calls() columns by how they are packed: the integers, the texts, and cost_usd (a REAL: SQLite's
# text form of a double is not exact, so it comes through the sqlite3 cursor)
_CALLS_INT = ("step_index", "sample", "attempt", "input_tokens", "output_tokens", "start_ns", "end_ns", "cached")
_CALLS_TEXT = ("trace_id", "span_id", "parent_id", "step", "agent", "model", "error", "output_hash", "request_key")
# output texts are read by rowid in batches of this many (a JSON list of rowids each)
_TEXT_BATCH = 20_000


def _packed_text_sql(col: str) -> str:
    """SQL aggregates that pack a TEXT column of many rows into two values: its bytes, all
    concatenated (a BLOB, so no UTF-8 decoding into a Python str), and each row's byte length
    (-1 for NULL), comma-separated."""
    return (f"CAST(group_concat({col}, '') AS BLOB), "
            f"group_concat(coalesce(length(CAST({col} AS BLOB)), -1), ',')")


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


def calls_columnar(conn: sqlite3.Connection, where: str, params: list, n: int):
    """calls() read column by column: one scan of the spans packs each column of all ``n``
    rows into one value (``group_concat``), unpacked by numpy and Arrow with no Python object
    per value, then handed to pandas with the dtypes ``pd.Series`` infers from the values the
    row-wise path (:meth:`TraceStore._calls_sqlite3`) fetches, so both give equal frames.

    Outputs are not joined to the spans (a look-up in the texts' hash index per call): each
    distinct output text (a cached call repeats the text of the call it replays: ~2/3 of the
    outputs of a Shuffle ablation) is read once, by rowid in the texts table's order, and spread
    to the calls with an Arrow ``take``.

    The caller holds the store's lock and a read transaction (one snapshot for all queries).
    Returns None, for the row-wise path, when a value is not of its column's type (a text in an
    integer column, say, which pandas would make an object column). TEXT columns are taken to
    hold text or NULL: moakit writes nothing else there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ints = (*_CALLS_INT, "rowid")
    sql = ", ".join([f"CAST(group_concat(s.{c}, ',') AS BLOB), count(s.{c})" for c in ints] +
                    [_packed_text_sql("s." + c) for c in _CALLS_TEXT])
    out = conn.execute(f"SELECT count(*), {sql} FROM spans s WHERE {where}", params).fetchone()
    if out[0] != n:
        return None
    vals = iter(out[1:])
    cols: dict[str, Any] = {}
    partial = []  # integer columns with NULLs: their NULL positions are asked for below
    for c in ints:
        packed, count = next(vals) or b"", next(vals)
        # only digits, minus signs and count - 1 commas: no REAL or TEXT value slipped in
        if packed.translate(None, b"-0123456789,") or packed.count(b",") != max(count - 1, 0):
            return None
        v = np.fromstring(packed, dtype=np.int64, sep=",") if count else np.zeros(0, np.int64)
        if len(v) != count:
            return None
        cols[c] = v
        if count != n:
            partial.append(c)
    for c in _CALLS_TEXT:
        cols[c] = _unpack_text(pa, np, n, next(vals), next(vals))
    if partial:
        nulls = ", ".join(f"group_concat(s.{c} IS NULL, '')" for c in partial)
        rowids, *masks = conn.execute(f"SELECT CAST(group_concat(s.rowid, ',') AS BLOB), {nulls} "
                                      f"FROM spans s WHERE {where}", params).fetchone()
        if not np.array_equal(np.fromstring(rowids, dtype=np.int64, sep=","), cols["rowid"]):
            return None  # not the first scan's row order
        for c, m in zip(partial, masks):
            null = np.frombuffer(m.encode(), np.uint8) == ord("1")
            full = np.zeros(n, np.int64)
            full[~null] = cols[c]
            cols[c] = pa.array(full, mask=null)
    for c in ints:
        if not isinstance(cols[c], pa.Array):
            cols[c] = pa.array(cols[c])
    # REAL: SQLite's text form of a double is not exact, so cost_usd comes through the cursor,
    # in rowid order (the packed scan's order may differ; its rowids put it right)
    try:
        cost = pa.array([r[0] for r in conn.execute(
            f"SELECT s.cost_usd FROM spans s WHERE {where} ORDER BY s.rowid", params)], pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a text in the REAL column
        return None
    rowid = cols.pop("rowid").to_numpy()
    by_rowid = np.argsort(rowid, kind="stable")
    cols["cost_usd"] = cost if (by_rowid == np.arange(n)).all() else cost.take(pa.array(np.argsort(by_rowid)))
    # as SQLite computes it: (end_ns - start_ns) / 1e9, NULL when either is
    cols["latency_s"] = pc.divide(pc.cast(pc.subtract(cols["end_ns"], cols["start_ns"]), pa.float64()), 1e9)

    order = np.lexsort([rowid, pc.fill_null(cols["start_ns"], 0).to_numpy()])
    if not (order[1:] > order[:-1]).all():
        idx = pa.array(order)
        cols = {c: v.take(idx) for c, v in cols.items()}

    # every text's hash and rowid (a scan of the hash index, ~0.1 s for 450k texts), so the
    # outputs are read by rowid, in the table's order, instead of by a probe of that index each
    k, hashes, lengths, rowids = conn.execute(
        f"SELECT count(*), {_packed_text_sql('hash')}, group_concat(rowid, ',') FROM texts").fetchone()
    all_hashes = _unpack_text(pa, np, k, hashes, lengths)
    all_rowids = np.fromstring(rowids or "", dtype=np.int64, sep=",") if k else np.zeros(0, np.int64)
    wanted = pc.unique(cols["output_hash"].drop_null())
    pos = pc.index_in(wanted, value_set=all_hashes).drop_null().to_numpy()
    need = np.sort(all_rowids[pos])
    # a batch at a time, joined into one buffer each: the batch's bytes objects are freed before
    # the next batch reuses their memory (fresh memory costs ~1 s a GB on this VM the first time)
    found_hash: list[str] = []
    chunks = []
    for i in range(0, len(need), _TEXT_BATCH):
        rows = conn.execute("SELECT hash, CAST(text AS BLOB) FROM texts WHERE rowid IN "
                            "(SELECT value FROM json_each(?)) ORDER BY rowid",
                            (json.dumps(need[i:i + _TEXT_BATCH].tolist()),)).fetchall()
        found_hash += [r[0] for r in rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(np.fromiter((len(r[1]) for r in rows), np.int64, len(rows)), out=offsets[1:])
        chunk = pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(offsets),
                                                 pa.py_buffer(b"".join([r[1] for r in rows])))
        del rows
        chunk.validate(full=True)  # UTF-8, as sqlite3 would have decoded it
        chunks.append(chunk)
    cols["output"] = _spread(pa, np, chunks, pc.index_in(cols["output_hash"], value_set=pa.array(found_hash, pa.string())))
    return cols


def _spread(pa, np, chunks: list, idx):
    """``texts.take(idx)`` (NULL where ``idx`` is) for ``texts`` the concatenation of ``chunks``,
    built by concatenating slices: calls mostly point at consecutive texts (texts are stored in
    the order calls are made, and a replayed run repeats its original's outputs in order).
    Arrow's take grows its output buffer as it goes: 4.1 s instead of 0.25 s for the 1.7 GB of
    a million calls' outputs in a fresh process, when its memory is first touched."""
    n = len(idx)
    if not chunks:
        return pa.nulls(n, pa.large_string())
    starts = np.cumsum([0] + [len(c) for c in chunks])
    valid = idx.is_valid().to_numpy(zero_copy_only=False)
    at = idx.fill_null(-1).to_numpy()
    chunk_of = np.searchsorted(starts, at, side="right") - 1
    # a run continues where both rows are NULL, or both are not, in one chunk, the index up by one
    cont = (valid[1:] & valid[:-1] & (at[1:] == at[:-1] + 1) & (chunk_of[1:] == chunk_of[:-1])) | \
        (~valid[1:] & ~valid[:-1])
    run = np.concatenate([[0], np.flatnonzero(~cont) + 1])
    if len(run) > n // 4:  # scattered: one slice per call would cost more than the take
        return pa.chunked_array(chunks, pa.large_string()).take(idx).combine_chunks()
    ends = np.append(run[1:], n)
    return pa.concat_arrays([
        chunks[chunk_of[a]].slice(int(at[a] - starts[chunk_of[a]]), int(b - a)) if valid[a]
        else pa.nulls(int(b - a), pa.large_string()) for a, b in zip(run, ends)])


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
