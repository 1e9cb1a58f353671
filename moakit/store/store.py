"""The trace store: one SQLite file (WAL, busy timeout, migrations), spans with promoted,
indexed columns and the rest as JSON, long texts stored once by content hash.

``TraceStore`` gives pandas DataFrames: :meth:`runs`, :meth:`steps`, :meth:`calls`,
:meth:`attempts`, :meth:`spans` and :meth:`aggregation_inputs`; :meth:`search` finds prompts
and outputs by their words. Datasette and ``sqlite3`` open the file too. :func:`open_store`
gives the one store object per file that moakit's runs share.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import os
import sqlite3
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from ..errors import TraceFileError
from . import migrations
from . import schema as A
from .columnar import calls_columnar, calls_frame
from .records import output_messages, parts_text, text_hash
from .schema import SPAN_COLUMNS

DEFAULT_PATH = Path("traces") / "moakit.db"
_INSERT_SPAN = f"INSERT OR REPLACE INTO spans ({', '.join(SPAN_COLUMNS)}) VALUES ({', '.join('?' * len(SPAN_COLUMNS))})"
_INSERT_TEXT = "INSERT OR IGNORE INTO texts (hash, text) VALUES (?, ?)"
# recorded calls' answers, by span id or with their run's other calls (TraceStore.lookup_many)
_LOOKUP = ("SELECT s.span_id, s.input_tokens, s.output_tokens, s.model, t.text, "
           "json_extract(s.attributes, '$.\"gen_ai.response.model\"') "
           "FROM spans s JOIN texts t ON t.hash = s.output_hash WHERE ")
# the inserts' heads and row placeholders, for statements of many rows (prepare_write, bulk=True)
_BULK_INSERTS = ((_INSERT_TEXT.split("VALUES")[0] + "VALUES ", "(?, ?)"),
                 (_INSERT_SPAN.split("VALUES")[0] + "VALUES ", "(" + ", ".join("?" * len(SPAN_COLUMNS)) + ")"))


@functools.lru_cache(maxsize=64)
def _multi_insert(head: str, row: str, n: int) -> str:
    """``head`` followed by ``n`` rows of placeholders: one statement for many rows."""
    return head + ",".join([row] * n)


def default_path() -> Path:
    return Path(os.environ.get("MOAKIT_TRACES") or DEFAULT_PATH)


def _check_file(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    if path.is_dir():
        raise TraceFileError(f"{path} is a directory, not a trace file")
    with open(path, "rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        raise TraceFileError(f"{path} is not a SQLite file (it starts with {head[:8]!r}); give a moakit trace file")


class TraceStore:
    """A moakit trace file. ``TraceStore()`` opens ``$MOAKIT_TRACES`` or ``traces/moakit.db``."""

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True):
        self.path = Path(path) if path is not None else default_path()
        _check_file(self.path)
        if not self.path.exists():
            if not create:
                raise TraceFileError(f"no trace file at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.conn = None
        try:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=60)
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self._check_schema()  # before switching to WAL: a file that is not ours is never modified
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            # 64 MB page cache (used only as a file grows): inserts land at random places in the
            # span-id and request-key indexes, and the default 2 MB halves ingest beyond ~100k spans
            self.conn.execute("PRAGMA cache_size = -65536")
            # parameters one statement may bind (32,766 unless SQLite was built otherwise)
            self._max_params = min(32766, self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.conn is not None and self.conn.close()
            raise TraceFileError(f"cannot open trace file {self.path}: {e} (truncated or not a moakit trace file?)") from e
        except TraceFileError:
            self.conn.close()
            raise
        self.closed = False
        self._writer = None
        self._cache_index: dict[str, tuple[str, str, str]] | None = None
        self._trace_calls: dict[str, int] = {}  # trace id -> calls in the cache index
        self._replay_rows: dict[str, tuple] = {}  # span id -> its _LOOKUP row (see lookup_many)
        self._recorded: tuple[int, dict[str, str]] | None = None  # (data_version, recorded_agents())

    # ---- schema --------------------------------------------------------------------------
    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_schema(self) -> None:
        """Refuse, without writing anything, a SQLite file that is not a moakit trace file or
        that a newer moakit wrote (migrations unknown here)."""
        tables = self._tables()
        if tables and "_moakit_migrations" not in tables:
            raise TraceFileError(
                f"{self.path} is a SQLite file but not a moakit trace file (tables: {', '.join(sorted(tables))})")
        unknown = [m for m in migrations.applied(self.conn) if m not in {fn.__name__ for fn in migrations.MIGRATIONS}]
        if unknown:
            raise TraceFileError(f"{self.path} was written by a newer moakit (schema migrations {', '.join(unknown)} "
                                 "are unknown to this version): upgrade moakit to open it")

    def _migrate(self) -> None:
        self._check_schema()
        migrations.migrate(self.conn)
        missing = {"spans", "texts"} - self._tables()
        if missing:
            raise TraceFileError(f"{self.path} is not a complete moakit trace file: table(s) {', '.join(sorted(missing))} "
                                 "missing although its migrations say they were made")

    @property
    def schema_version(self) -> list[str]:
        return migrations.applied(self.conn)

    @property
    def writer(self):
        """The queue that runs write through (:class:`~moakit.store.writer.Writer`): durable rows
        committed at once, the rest in batches."""
        if self._writer is None:
            from .writer import Writer

            with self._lock:
                if self._writer is None:
                    self._writer = Writer(self)
        return self._writer

    def close(self) -> None:
        """Write what waits, then close the file (a closed store is not handed out by open_store)."""
        if self.closed:
            return
        if self._writer is not None:
            self._writer.flush()
        with self._lock:
            self.conn.close()
            self.closed = True

    def __repr__(self) -> str:
        return f"TraceStore({str(self.path)!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- writing -------------------------------------------------------------------------
    def write(self, rows: Sequence[dict[str, Any] | list], texts: dict[str, str] | None = None) -> None:
        """Write span rows (dicts keyed by :data:`SPAN_COLUMNS`, or lists of their values in that
        order with ``cached`` as 0 or 1) and their texts in one transaction. Each finished call is
        written at once, so a crash loses nothing finished."""
        self.write_prepared(self.prepare_write(rows, texts))

    def prepare_write(self, rows: Sequence[dict[str, Any] | list], texts: dict[str, str] | None = None,
                      bulk: bool = False) -> "PreparedWrite":
        """The Python half of :meth:`write` (the statements' parameters); :meth:`write_prepared`
        is the SQLite half, which a writer thread can run while the event loop goes on.

        ``bulk``: many rows per statement (as many as SQLite's limit on parameters allows)
        instead of ``executemany``. As fast alone, but ``executemany`` takes the GIL back after
        every row, and a thread doing that beside a busy event loop waits up to the 5 ms switch
        interval each time; one statement takes it once."""
        params = [r if type(r) is list else _span_params(r) for r in rows]
        if not bulk:
            return PreparedWrite(params, texts, None)
        limit = self._max_params
        statements = []
        items = list(texts.items()) if texts else []
        for (head, tpl), width, values in zip(_BULK_INSERTS, (2, len(SPAN_COLUMNS)), (items, params)):
            per = max(1, limit // width)
            for i in range(0, len(values), per):
                chunk = values[i:i + per]
                statements.append((_multi_insert(head, tpl, len(chunk)), list(itertools.chain.from_iterable(chunk))))
        return PreparedWrite(params, None, statements)

    def write_prepared(self, w: "PreparedWrite") -> None:
        """Commit what :meth:`prepare_write` made, in one transaction."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                if w.statements is not None:
                    for sql, values in w.statements:
                        self.conn.execute(sql, values)
                else:
                    if w.texts:
                        self.conn.executemany(_INSERT_TEXT, w.texts.items())
                    self.conn.executemany(_INSERT_SPAN, w.params)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            # what the store keeps about its rows is brought up to date only if it was asked for
            # (a replay into a fresh store never builds either)
            if self._recorded is not None and any(type(p[_MODEL]) is str and p[_MODEL].startswith("recorded/")
                                                  for p in w.params):
                self._recorded = None
            if self._cache_index is not None:
                index, calls = self._cache_index, self._trace_calls
                for p in w.params:
                    if p[_KIND] == "call" and p[_KEY] and not p[_ERROR] and p[_OUT] and p[_KEY] not in index:
                        index[p[_KEY]] = (p[_SPAN], p[_OUT], p[_TRACE])
                        calls[p[_TRACE]] = calls.get(p[_TRACE], 0) + 1

    # ---- reading helpers -----------------------------------------------------------------
    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, tuple(params)).fetchall()

    def frame(self, sql: str, params: Iterable[Any] = ()):
        import pandas as pd

        # the cyclic garbage collector would scan the millions of fresh row tuples and strings
        # again and again (a third of calls() for a million calls); none of them form cycles
        with _gc_paused(), self._lock:
            cur = self.conn.execute(sql, tuple(params))
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
            if not rows:
                return pd.DataFrame.from_records(rows, columns=cols)
            # column by column: pandas infers each column's dtype as from_records does, at about
            # half the cost (no 2-D object array; a string column goes to Arrow in one pass)
            data = {c: pd.Series(v, copy=False) for c, v in zip(cols, zip(*rows))}
            del rows
            return pd.DataFrame(data, copy=False)

    def span_rows(self, rowids: Sequence[int], chunk: int = 2000):
        """The rows of these spans (dicts of every column), in the order given, read ``chunk`` at
        a time so a large store is never loaded at once."""
        for i in range(0, len(rowids), chunk):
            part = list(rowids[i:i + chunk])
            with self._lock:
                cur = self.conn.execute(f"SELECT rowid, * FROM spans WHERE rowid IN ({', '.join('?' * len(part))})", part)
                cols = [d[0] for d in cur.description]
                got = {r[0]: dict(zip(cols[1:], r[1:])) for r in cur.fetchall()}
            for rid in part:
                if rid in got:
                    yield got[rid]

    def text(self, h: str | None) -> str | None:
        if h is None:
            return None
        r = self.query("SELECT text FROM texts WHERE hash = ?", (h,))
        return r[0][0] if r else None

    def trace_ids(self) -> list[str]:
        return [r[0] for r in self.query("SELECT trace_id FROM spans WHERE kind='run' ORDER BY start_ns")]

    def resolve_trace_id(self, trace_id: str) -> str:
        """Accept a full trace id or a unique prefix of one."""
        rows = self.query("SELECT DISTINCT trace_id FROM spans WHERE kind='run' AND trace_id LIKE ?", (trace_id + "%",))
        if len(rows) == 1:
            return rows[0][0]
        if not rows:
            raise KeyError(f"no run with trace id {trace_id!r} in {self.path}")
        raise KeyError(f"trace id prefix {trace_id!r} is ambiguous in {self.path} ({len(rows)} runs)")

    # ---- DataFrames ----------------------------------------------------------------------
    def _where(self, trace_id, kind: str):
        if trace_id is None:
            return "s.kind = ?", [kind]
        ids = [trace_id] if isinstance(trace_id, str) else list(trace_id)
        return f"s.kind = ? AND s.trace_id IN ({', '.join('?' * len(ids))})", [kind, *ids]

    def calls(self, trace_id: str | Sequence[str] | None = None):
        """One row per logical LLM call (its retries inside it): trace_id, span_id, parent_id,
        step_index, step, agent, model, sample, attempts (attempts made; 0 when served from the
        store), input_tokens, output_tokens, cost_usd, latency_s (the whole call, retries and
        their waits included), start_ns, end_ns, cached, error (the last attempt's, when the call
        finally failed), output, request_key. Each attempt: :meth:`attempts`.
        ``trace_id``: one id or a list restricts it to those runs."""
        where, params = self._where(trace_id, A.KIND_CALL)
        if trace_id is None:  # every call: a table scan beats a look-up per row through the kind index
            where = "+" + where
        df = None
        if _ARROW_MIN_ROWS is not None:
            df = self._calls_columnar(where, params, counted=trace_id is not None)
        if df is None:
            df = self._calls_sqlite3(where, params)
        df["cached"] = df["cached"].astype(bool)
        return df.rename(columns={"attempt": "attempts"})

    def attempts(self, trace_id: str | Sequence[str] | None = None):
        """One row per attempt of every call: trace_id, call_span_id, span_id (the attempt's own
        span for a failed attempt that was retried; the call's for its last attempt), agent,
        model, step_index, step, attempt (1, 2, ...), start_ns, end_ns, latency_s, error,
        retry_wait_s and retry_reason (the wait that followed a failed attempt, and why:
        ``retry-after`` or ``backoff``), final (the call's last attempt). Calls served from the
        store made no attempt and have no row."""
        where, params = self._where(trace_id, A.KIND_ATTEMPT)
        failed = self.frame(f"""
            SELECT s.trace_id, s.parent_id AS call_span_id, s.span_id, s.agent, s.model, s.step_index, s.step,
                   s.attempt, s.start_ns, s.end_ns, (s.end_ns - s.start_ns) / 1e9 AS latency_s, s.error,
                   json_extract(s.attributes, '$."{A.RETRY_WAIT}"') AS retry_wait_s,
                   json_extract(s.attributes, '$."{A.RETRY_REASON}"') AS retry_reason, 0 AS final
            FROM spans s WHERE {where}""", params)
        where, params = self._where(trace_id, A.KIND_CALL)
        last = self.frame(f"""
            SELECT s.trace_id, s.span_id AS call_span_id, s.span_id, s.agent, s.model, s.step_index, s.step,
                   s.attempt, coalesce(json_extract(s.attributes, '$."{A.LAST_ATTEMPT_START}"'), s.start_ns) AS start_ns,
                   s.end_ns, (s.end_ns - coalesce(json_extract(s.attributes, '$."{A.LAST_ATTEMPT_START}"'), s.start_ns))
                   / 1e9 AS latency_s, s.error, NULL AS retry_wait_s, NULL AS retry_reason, 1 AS final
            FROM spans s WHERE {where} AND s.cached = 0 AND s.attempt > 0""", params)
        import pandas as pd

        frames = [f for f in (failed, last) if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else failed
        df["final"] = df["final"].astype(bool)
        return df.sort_values(["start_ns", "attempt"], kind="stable").reset_index(drop=True)

    def call_timing(self, trace_id: str | Sequence[str] | None = None):
        """One row per call with where its time went besides the model's work: trace_id, span_id,
        queue_s (waited for a concurrency slot before its first attempt), rate_s (waited for a
        requests/tokens-per-minute budget), ttft_s (a streamed call: seconds from its last
        attempt's start to the first text), last_attempt_start_ns (a retried call: when its last
        attempt started). NaN where the call recorded none (no wait, not streamed)."""
        where, params = self._where(trace_id, A.KIND_CALL)
        return self.frame(f"""
            SELECT s.trace_id, s.span_id, json_extract(s.attributes, '$."{A.QUEUE_WAIT}"') AS queue_s,
                   json_extract(s.attributes, '$."{A.RATE_WAIT}"') AS rate_s,
                   json_extract(s.attributes, '$."{A.RESPONSE_TIME_TO_FIRST_CHUNK}"') AS ttft_s,
                   json_extract(s.attributes, '$."{A.LAST_ATTEMPT_START}"') AS last_attempt_start_ns
            FROM spans s WHERE {where}""", params)

    def _calls_columnar(self, where: str, params: list, counted: bool):
        """calls() through :func:`~moakit.store.columnar.calls_columnar` when the result has at least
        ``_ARROW_MIN_ROWS`` rows and pyarrow is installed; else None. ``counted``: the rows are
        few enough to count first (a look-up of a few traces); else the largest rowid tells
        whether the result is small (counting every call is a scan of its own, 0.25 s a million)."""
        try:
            import pyarrow
        except ImportError:
            return None
        with _gc_paused(), self._lock:
            if counted:
                n = self.conn.execute(f"SELECT count(*) FROM spans s WHERE {where}", params).fetchone()[0]
            else:
                n = self.conn.execute("SELECT max(rowid) FROM spans").fetchone()[0] or 0
            if not n or n < _ARROW_MIN_ROWS:
                return None
            own = not self.conn.in_transaction  # (a caller's open transaction is snapshot enough)
            # one snapshot for all queries; the reader's is the same when no other connection
            # committed between the start of this one's (PRAGMA data_version) and of the reader's
            version = self.conn.execute("PRAGMA data_version").fetchone()[0] if own else None
            reader = self._reader()
            # pages read from the file's memory map rather than copied by pread (~15% of the
            # scans); for this read only
            mmap_size = self.conn.execute("PRAGMA mmap_size").fetchone()[0]
            self.conn.execute(f"PRAGMA mmap_size = {_READ_MMAP_SIZE}")
            try:
                if own:
                    self.conn.execute("BEGIN")
                same_snapshot = reader is not None and own and \
                    self.conn.execute("PRAGMA data_version").fetchone()[0] == version
                cols = calls_columnar(self.conn, where, params, None, reader, same_snapshot)
            # a packed value over SQLite's 1 GB limit (tens of millions of calls), text that is
            # not UTF-8: the row-wise path copes, or says what is wrong
            except (sqlite3.DataError, ValueError, pyarrow.ArrowException):
                cols = None
            finally:
                if own and self.conn.in_transaction:
                    self.conn.execute("COMMIT")
                self.conn.execute(f"PRAGMA mmap_size = {mmap_size}")
                if reader is not None:
                    reader.close()
        return calls_frame(cols) if cols is not None else None

    def _reader(self) -> sqlite3.Connection | None:
        """Another, read-only connection to this file, in a read transaction, for a thread that
        reads beside ``conn`` (None when it cannot be opened)."""
        reader = None
        try:
            # the file this connection has open (self.path may be relative to another directory)
            file = next((r[2] for r in self.conn.execute("PRAGMA database_list") if r[1] == "main"), "")
            if not file:
                return None
            reader = sqlite3.connect(f"{Path(file).as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                     isolation_level=None, timeout=60)
            reader.execute(f"PRAGMA mmap_size = {_READ_MMAP_SIZE}")
            reader.execute("BEGIN")
            reader.execute("PRAGMA data_version")  # (the read transaction starts here)
            return reader
        except sqlite3.Error:
            reader is not None and reader.close()
            return None

    def _calls_sqlite3(self, where: str, params: list):
        """calls() through Python's sqlite3: every value a Python object first (slow for a
        million calls); used for small results and when the Arrow reader is not installed."""
        df = self.frame(f"""
            SELECT {_CALLS_COLUMNS.format(output="t.text AS output")}
            FROM spans s LEFT JOIN texts t ON t.hash = s.output_hash
            WHERE {where}""", params)
        # ordered by start time here, not by SQLite, whose sorter would carry every output text
        # through a temporary b-tree (a third of the time for a million calls)
        return _ordered(df, "start_ns", "_rowid").drop(columns="_rowid")

    def steps(self, trace_id: str | Sequence[str] | None = None):
        """One row per step span, with what the step did (permutation, kept, rank_choice and
        rank_parsed: whether the ranker's reply held a usable ranking) and the agents whose calls
        finally failed (dropped_failed)."""
        where, params = self._where(trace_id, A.KIND_STEP)
        df = self.frame(f"""
            SELECT s.trace_id, s.span_id, s.step_index, s.step, (s.end_ns - s.start_ns) / 1e9 AS duration_s,
                   s.start_ns, s.end_ns, s.error, s.attributes
            FROM spans s WHERE {where} ORDER BY s.trace_id, s.step_index""", params)
        attrs = [json.loads(a or "{}") for a in df.pop("attributes")]
        for col, key in (("permutation", A.PERMUTATION), ("kept", A.KEPT), ("rank_choice", A.RANK_CHOICE),
                         ("rank_parsed", A.RANK_PARSED), ("responses_in", A.RESPONSES_IN),
                         ("responses_out", A.RESPONSES_OUT), ("dropped_failed", A.DROPPED_FAILED)):
            df[col] = [maybe_json(a.get(key)) for a in attrs]
        return df

    def runs(self, trace_id: str | Sequence[str] | None = None):
        """One row per run: trace_id, span_id, pipeline (its name), seed, batch_id, batch_item,
        batch_seed, query_hash (identifies the prompt across batches), start_ns, duration_s,
        calls (logical calls), calls_cached, input_tokens, output_tokens, cost_usd (money paid:
        calls served from the store cost nothing), output, error.
        ``trace_id`` (one id or a list) restricts it to those runs."""
        where, params = self._where(trace_id, A.KIND_RUN)
        df = self.frame(f"""
            SELECT r.trace_id, r.span_id, json_extract(r.attributes, '$."{A.PIPELINE_NAME}"') AS pipeline,
                   json_extract(r.attributes, '$."{A.SEED}"') AS seed,
                   json_extract(r.attributes, '$."{A.BATCH_ID}"') AS batch_id,
                   json_extract(r.attributes, '$."{A.BATCH_ITEM}"') AS batch_item,
                   json_extract(r.attributes, '$."{A.BATCH_SEED}"') AS batch_seed,
                   json_extract(r.attributes, '$."{A.QUERY}"') AS query_hash,
                   r.start_ns, (r.end_ns - r.start_ns) / 1e9 AS duration_s,
                   (SELECT count(*) FROM spans c WHERE c.trace_id = r.trace_id AND c.kind='call') AS calls,
                   (SELECT coalesce(sum(c.cached), 0) FROM spans c WHERE c.trace_id = r.trace_id AND c.kind='call') AS calls_cached,
                   (SELECT sum(c.input_tokens) FROM spans c WHERE c.trace_id = r.trace_id AND c.kind='call') AS input_tokens,
                   (SELECT sum(c.output_tokens) FROM spans c WHERE c.trace_id = r.trace_id AND c.kind='call') AS output_tokens,
                   (SELECT coalesce(sum(c.cost_usd), 0) FROM spans c WHERE c.trace_id = r.trace_id AND c.kind='call'
                        AND c.cached = 0) AS cost_usd,
                   t.text AS output, r.error
            FROM spans r LEFT JOIN texts t ON t.hash = r.output_hash
            WHERE {where.replace("s.", "r.")} ORDER BY r.start_ns""", params)
        df["query_hash"] = [text_hash(q)[:16] if isinstance(q, str) else None for q in df["query_hash"]]
        return df

    def spans(self, trace_id: str | Sequence[str] | None = None):
        """Every span with all its attributes (content texts restored), one row a span."""
        import pandas as pd

        if trace_id is None:
            where, params = "1=1", []
        else:
            ids = [trace_id] if isinstance(trace_id, str) else list(trace_id)
            where, params = f"s.trace_id IN ({', '.join('?' * len(ids))})", ids
        df = self.frame(f"SELECT s.* FROM spans s WHERE {where} ORDER BY s.start_ns, s.rowid", params)
        df["attributes"] = [self.full_attributes(r) for r in df.to_dict("records")] if len(df) else pd.Series(dtype=object)
        return df

    def full_attributes(self, row: dict[str, Any]) -> dict[str, Any]:
        """A span's attributes as recorded, with the promoted columns and the content-addressed
        texts put back under their attribute names."""
        attrs = json.loads(row.get("attributes") or "{}")
        for key, col in A.PROMOTED.items():
            v = row.get(col)
            if v is not None and v == v:  # not None / NaN
                attrs[key] = bool(v) if col == "cached" else (int(v) if isinstance(v, float) and col in
                                                               A.INT_COLUMNS else v)
        if isinstance(row.get("input_hash"), str):  # not None / NaN (rows from a DataFrame)
            attrs[A.INPUT_MESSAGES] = self.text(row["input_hash"])
        if isinstance(row.get("system_hash"), str):
            attrs[A.SYSTEM_INSTRUCTIONS] = self.text(row["system_hash"])
        if isinstance(row.get("output_hash"), str):
            out = self.text(row["output_hash"])
            if row.get("kind") == A.KIND_RUN:
                attrs[A.OUTPUT] = out
            else:
                attrs[A.OUTPUT_MESSAGES] = output_messages(out or "")
        return attrs

    def run_attributes(self, trace_id: str) -> dict[str, Any]:
        """The run span's attributes (pipeline JSON, query, seed, models, ...), with its final
        answer under ``moakit.output`` and its error (or None) under ``error``."""
        rows = self.query("SELECT attributes, output_hash, error FROM spans WHERE trace_id=? AND kind='run'", (trace_id,))
        if not rows:
            raise KeyError(f"no run with trace id {trace_id!r} in {self.path}")
        attrs = json.loads(rows[0][0] or "{}")
        attrs[A.OUTPUT] = self.text(rows[0][1])
        attrs["error"] = rows[0][2]
        return attrs

    AGGREGATION_INPUT_COLUMNS = [
        "trace_id", "span_id", "step_index", "step", "agent", "position", "n_shown", "source_span_id",
        "source_agent", "source_text", "shown_text", "randomized", "shuffle_step", "output", "error", "pipeline",
        "batch_id", "batch_item", "batch_seed", "query_hash"]

    def aggregation_inputs(self, trace_id: str | Sequence[str] | None = None):
        """One row per response shown to an aggregating call (Synthesize, Aggregate, Vote, Rank).

        Columns: trace_id, span_id (the aggregating call), step_index, step, agent (the
        aggregator), position (1-based), n_shown, source_span_id (the call that produced the
        response), source_agent, source_text (that call's output), shown_text (the text as
        shown: differs from source_text after a Map step; NaN when the file predates recording
        it), randomized (the order shown was drawn at random by a Shuffle or Sample upstream in
        the run, and no step reordered it since), shuffle_step (the step whose draw set it),
        output, error; and the run's design: variant (pipeline name), batch_id, item (index in
        its batch), batch_seed (the seed given to run_batch: variants of an ablation share it per
        repeat), query_hash (identifies the prompt across batches)."""
        import pandas as pd

        calls = self.calls(trace_id)
        agg = calls[calls["step"].isin(["Synthesize", "Aggregate", "Vote", "Rank"])]
        if agg.empty:
            return pd.DataFrame(columns=self.AGGREGATION_INPUT_COLUMNS)
        where, params = self._where(trace_id, A.KIND_CALL)
        shown = {r[0]: r[1:] for r in self.query(f"""
            SELECT s.span_id, json_extract(s.attributes, '$."{A.INPUT_SOURCES}"'),
                   json_extract(s.attributes, '$."{A.INPUT_HASHES}"'),
                   json_extract(s.attributes, '$."{A.INPUT_RANDOMIZED}"'),
                   json_extract(s.attributes, '$."{A.INPUT_SHUFFLE_STEP}"')
            FROM spans s WHERE {where} AND s.step IN ('Synthesize', 'Aggregate', 'Vote', 'Rank')""", params)}
        traces = list(dict.fromkeys(agg["trace_id"]))
        design = {}
        for i in range(0, len(traces), 500):
            chunk = traces[i:i + 500]
            for tid, name, bid, item, bseed, query in self.query(f"""
                    SELECT trace_id, json_extract(attributes, '$."{A.PIPELINE_NAME}"'),
                           json_extract(attributes, '$."{A.BATCH_ID}"'), json_extract(attributes, '$."{A.BATCH_ITEM}"'),
                           json_extract(attributes, '$."{A.BATCH_SEED}"'), json_extract(attributes, '$."{A.QUERY}"')
                    FROM spans WHERE kind = 'run' AND trace_id IN ({', '.join('?' * len(chunk))})""", chunk):
                design[tid] = (name, bid, item, bseed, text_hash(query or "")[:16])
        derived = self._derived_order(traces)
        texts = self._texts({h for v in shown.values() if v[1] for h in json.loads(v[1])})
        out_by_span = dict(zip(calls["span_id"], calls["output"]))
        agent_by_span = dict(zip(calls["span_id"], calls["agent"]))
        rows = []
        for c in agg.itertuples():
            sources_json, hashes_json, randomized, shuffle_step = shown.get(c.span_id, (None, None, None, None))
            sources = json.loads(sources_json or "null") or []
            hashes = json.loads(hashes_json) if hashes_json else None
            mapped = False
            if randomized is None:  # recorded before moakit recorded it: from the run's steps
                randomized, shuffle_step, mapped = derived.get((c.trace_id, c.step_index), (False, None, False))
            name, bid, item, bseed, qh = design.get(c.trace_id, (None, None, None, None, None))
            for pos, src in enumerate(sources, start=1):
                rows.append((c.trace_id, c.span_id, c.step_index, c.step, c.agent, pos, len(sources), src,
                             agent_by_span.get(src), out_by_span.get(src),
                             (texts.get(hashes[pos - 1]) if pos <= len(hashes) else None) if hashes else
                             (None if mapped else out_by_span.get(src)),
                             bool(randomized), shuffle_step, c.output, c.error, name, bid, item, bseed, qh))
        return pd.DataFrame(rows, columns=self.AGGREGATION_INPUT_COLUMNS)

    def _texts(self, hashes: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        hs = list(hashes)
        for i in range(0, len(hs), 500):
            chunk = hs[i:i + 500]
            out.update(self.query(f"SELECT hash, text FROM texts WHERE hash IN ({', '.join('?' * len(chunk))})", chunk))
        return out

    def _derived_order(self, traces: Sequence[str]) -> dict[tuple[str, int], tuple[bool, int | None, bool]]:
        """(trace, step index) -> (randomized, shuffle step, mapped) of the responses shown to that
        step's calls, for files written before calls recorded them: Shuffle and Sample draw the
        order; Dropout, Take, Filter and Map keep it; any other step makes a new list. ``mapped``:
        a Map step rewrote the texts since they were produced (the shown text is then unknown)."""
        out: dict[tuple[str, int], tuple[bool, int | None, bool]] = {}
        state: dict[str, tuple[bool, int | None, bool]] = {}
        for i in range(0, len(traces), 500):
            chunk = list(traces[i:i + 500])
            for tid, idx, kind in self.query(f"""SELECT trace_id, step_index, step FROM spans WHERE kind = 'step'
                                               AND trace_id IN ({', '.join('?' * len(chunk))})
                                               ORDER BY trace_id, step_index""", chunk):
                randomized, by, mapped = cur = state.get(tid, (False, None, False))
                out[(tid, idx)] = cur  # what this step's calls were shown
                if kind in ("Shuffle", "Sample"):
                    state[tid] = (True, idx, mapped)
                elif kind == "Map":
                    state[tid] = (randomized, by, True)
                elif kind not in ("Dropout", "Take", "Filter"):
                    state[tid] = (False, None, False)
        return out

    def search(self, text: str, *, limit: int = 50):
        """Calls whose prompt or output matches ``text`` (SQLite full-text search: words,
        ``"a phrase"``, ``prefix*``, ``a OR b``), best matches first: trace_id, span_id, agent,
        model, step, matched (``prompt`` or ``output``), snippet. The index is brought up to
        date with the texts written since the last search (nothing is indexed while runs write)."""
        import sqlite_utils

        with self._lock:
            db = sqlite_utils.Database(self.conn)
            if not db["texts_fts"].exists():
                self.conn.execute("CREATE VIRTUAL TABLE texts_fts USING fts5(text, content='texts', content_rowid='rowid')")
            done = self.conn.execute("SELECT coalesce(max(rowid), 0) FROM texts_fts_docsize").fetchone()[0]
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute("INSERT INTO texts_fts(rowid, text) SELECT rowid, text FROM texts WHERE rowid > ?",
                                  (done,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        sql = """
            WITH hits AS (SELECT t.hash, snippet(texts_fts, 0, '[', ']', ' ... ', 12) AS snippet, texts_fts.rank
                          FROM texts_fts JOIN texts t ON t.rowid = texts_fts.rowid WHERE texts_fts MATCH ?)
            SELECT s.trace_id, s.span_id, s.agent, s.model, s.step,
                   CASE WHEN s.output_hash = h.hash THEN 'output' ELSE 'prompt' END AS matched, h.snippet
            FROM hits h JOIN spans s ON s.kind = 'call' AND (s.output_hash = h.hash OR s.input_hash = h.hash)
            ORDER BY h.rank, s.start_ns LIMIT ?"""
        try:
            return self.frame(sql, (text, int(limit)))
        except sqlite3.OperationalError:  # not a valid query of FTS5's syntax: searched as a phrase
            return self.frame(sql, ('"' + text.replace('"', '""') + '"', int(limit)))

    def call_contents(self, span_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What a few calls were sent, for viewers that load content a page at a time:
        span id -> {"messages": [{"role", "content"}] (empty when content recording was off),
        "input_agents": agents behind the numbered responses shown, "temperature", "max_tokens",
        "finish_reasons", "replayed_from" (the span a cached call was served from), "failed_attempts"
        (the attempts before the last: attempt, error, wait_s and reason of the wait that followed,
        "retry-after" or "backoff")}."""
        ids = list(span_ids)
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self.query(f"""SELECT s.span_id, ti.text, ts.text, s.attributes FROM spans s
                                  LEFT JOIN texts ti ON ti.hash = s.input_hash LEFT JOIN texts ts ON ts.hash = s.system_hash
                                  WHERE s.span_id IN ({', '.join('?' * len(chunk))})""", chunk)
            for span_id, inp, system, attrs in rows:
                a = json.loads(attrs or "{}")
                msgs = [{"role": "system", "content": parts_text(system)}] if system else []
                for m in json.loads(inp or "[]"):
                    msgs.append({"role": m.get("role"), "content": parts_text(m.get("parts", m.get("content")))})
                out[span_id] = {"messages": msgs, "input_agents": maybe_json(a.get(A.INPUT_AGENTS)) or [],
                                "temperature": a.get(A.REQUEST_TEMPERATURE), "max_tokens": a.get(A.REQUEST_MAX_TOKENS),
                                "finish_reasons": a.get(A.RESPONSE_FINISH_REASONS),
                                "replayed_from": a.get(A.REPLAYED_FROM), "failed_attempts": []}
            for parent, n, error, wait, reason in self.query(f"""
                    SELECT parent_id, attempt, error, json_extract(attributes, '$."{A.RETRY_WAIT}"'),
                           json_extract(attributes, '$."{A.RETRY_REASON}"')
                    FROM spans WHERE kind = '{A.KIND_ATTEMPT}' AND parent_id IN ({', '.join('?' * len(chunk))})
                    ORDER BY attempt""", chunk):
                if parent in out:
                    out[parent]["failed_attempts"].append({"attempt": n, "error": error, "wait_s": wait,
                                                           "reason": reason})
        return out

    # ---- replay ----------------------------------------------------------------------------
    PREFETCH_MAX_CALLS = 256  # a recorded call is read with its run's other calls when the run has at most this many
    PREFETCH_MEMO = 8192  # rows kept by lookup_many before it starts afresh

    def cache_index(self) -> dict[str, tuple[str, str, str]]:
        """request key -> (span id, output text hash, trace id) of the first good call recorded for it."""
        with self._lock:
            if self._cache_index is None:
                idx: dict[str, tuple[str, str, str]] = {}
                traces: dict[str, int] = {}
                for key, span_id, h, tid in self.conn.execute(
                        "SELECT request_key, span_id, output_hash, trace_id FROM spans WHERE request_key IS NOT NULL "
                        "AND kind='call' AND error IS NULL AND output_hash IS NOT NULL ORDER BY rowid"):
                    if key not in idx:
                        tid = sys.intern(tid)  # one string per trace id, however many calls share it
                        traces[tid] = traces.get(tid, 0) + 1
                        idx[key] = (span_id, h, tid)
                self._cache_index, self._trace_calls = idx, traces
            return self._cache_index

    def lookup(self, key: str) -> tuple[str, str, dict[str, Any]] | None:
        """A recorded answer for a request key: (span id, output text, usage attrs) or None."""
        return self.lookup_many([key])[0]

    def lookup_many(self, keys: Sequence[str]) -> list[tuple[str, str, dict[str, Any]] | None]:
        """``[self.lookup(k) for k in keys]``, reading the store once for all of them.

        A recorded call's row is read with the other calls of its run (trace) when that run
        holds at most ``PREFETCH_MAX_CALLS`` of them: replaying a run then reads the store once
        instead of once per layer (the later layers' keys depend on the earlier answers, so
        they cannot be asked together). The rows read are kept (up to ``PREFETCH_MEMO``) by
        span id; a recorded span's row does not change."""
        index = self.cache_index()
        found = [index.get(k) for k in keys]
        out: list[tuple[str, str, dict[str, Any]] | None] = []
        with self._lock:
            memo = self._replay_rows
            missing = [f for f in found if f is not None and f[0] not in memo]
            if missing:
                if len(memo) >= self.PREFETCH_MEMO:  # start afresh: every hit is read again
                    memo.clear()
                    missing = [f for f in found if f is not None]
                calls = self._trace_calls
                traces = list(dict.fromkeys(f[2] for f in missing if calls.get(f[2], 0) <= self.PREFETCH_MAX_CALLS))
                if traces:
                    for r in self._lookup_rows("s.kind = 'call' AND s.trace_id", traces):
                        memo[r[0]] = r
                ids = list(dict.fromkeys(f[0] for f in missing if f[0] not in memo))
                if ids:
                    for r in self._lookup_rows("s.span_id", ids):
                        memo[r[0]] = r
            for f in found:
                r = None if f is None else memo.get(f[0])
                if r is None:
                    out.append(None)
                else:
                    span_id, inp, outp, model, text, rmodel = r
                    out.append((span_id, text, {"input_tokens": inp, "output_tokens": outp,
                                                "response_model": rmodel or model}))
        return out

    def _lookup_rows(self, where: str, values: list) -> list:
        rows: list = []
        for i in range(0, len(values), 500):
            chunk = values[i:i + 500]
            rows += self.conn.execute(_LOOKUP + f"{where} IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return rows

    def recorded_agents(self) -> dict[str, str]:
        """Agents whose outputs were imported (model ``recorded/...``): agent -> model.

        Asked once per run planned (805 times for a batch of 805 prompts), and the query scans
        every call: the answer is kept until this store writes a recorded call or another
        connection commits (``PRAGMA data_version``)."""
        with self._lock:
            version = self.conn.execute("PRAGMA data_version").fetchone()[0]
            if self._recorded is None or self._recorded[0] != version:
                self._recorded = (version, dict(self.conn.execute(
                    "SELECT DISTINCT agent, model FROM spans WHERE kind='call' AND model LIKE 'recorded/%'").fetchall()))
            return dict(self._recorded[1])

    # ---- merging shards -------------------------------------------------------------------
    def merge(self, paths: Iterable[str | os.PathLike], *, on_shard=None) -> int:
        """Fold other trace files into this one (the shards a batch run on Ray wrote, files
        collected from several machines): every span whose span id is not here yet, and every
        text. Returns the number of spans added.

        One transaction per file: a crash (or a kill) mid-merge leaves each file either wholly
        merged or not at all, and the files themselves are only read (a shard written by an
        older moakit is brought up to date first). Merging again is harmless: a span already
        here is skipped, so a rerun after a crash finishes the job and a second merge adds
        nothing. ``on_shard(path, added)`` is told after each file's commit."""
        files = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        mine = os.path.realpath(self.path)
        for f in files:  # every file checked before the first is merged
            if not f.is_file():
                raise TraceFileError(f"cannot merge {f}: no such trace file")
            if os.path.realpath(f) == mine:
                raise TraceFileError(f"cannot merge {f} into itself")
        if self._writer is not None:
            self._writer.flush()
        cols = ", ".join(SPAN_COLUMNS)
        total = 0
        for f in files:
            TraceStore(f, create=False).close()  # a moakit trace file, its schema up to date (or TraceFileError)
            with self._lock:
                self.conn.execute("ATTACH DATABASE ? AS shard", (str(f),))
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    try:
                        self.conn.execute("INSERT OR IGNORE INTO texts (hash, text) SELECT hash, text FROM shard.texts")
                        added = self.conn.execute(
                            f"INSERT OR IGNORE INTO spans ({cols}) SELECT {cols} FROM shard.spans ORDER BY rowid").rowcount
                        self.conn.execute("COMMIT")
                    except BaseException:
                        self.conn.execute("ROLLBACK")
                        raise
                finally:
                    self.conn.execute("DETACH DATABASE shard")
                # what the store keeps about its rows is read again when next asked for
                self._cache_index, self._recorded = None, None
                self._trace_calls, self._replay_rows = {}, {}
            total += added
            if on_shard is not None:
                on_shard(f, added)
        return total

    # ---- import / export (moakit.tracing.io) ------------------------------------------------
    def import_outputs(self, path: str | os.PathLike, agent: str | None = None, **kwargs) -> int:
        """Record AlpacaEval ``model_outputs.json`` outputs as Propose calls of ``agent`` (default:
        each record's generator); see :func:`moakit.tracing.io.import_outputs`."""
        from .io import import_outputs

        return import_outputs(self, path, agent=agent, **kwargs)

    def export(self, path_or_endpoint: str | os.PathLike, format: str | None = None, **kwargs) -> int:
        """Export spans to JSONL, Parquet or an OTLP/HTTP collector; see :func:`moakit.tracing.io.export`."""
        from .io import export

        return export(self, path_or_endpoint, format=format, **kwargs)


# one TraceStore per trace file per process for the stores that moakit opens itself (a run
# with store=None or a path): a loop of runs shares one connection instead of opening one per
# run. Weak values: a store nobody uses any more (no Result, widget or caller holds it) is
# collected and its connection closed.
_open_stores: "weakref.WeakValueDictionary[str, TraceStore]" = weakref.WeakValueDictionary()
_open_stores_lock = threading.Lock()


def open_store(store: Any = None, *, create: bool = True) -> TraceStore:
    """The process's shared :class:`TraceStore` for ``store`` (a path, or None for the default
    file); a :class:`TraceStore` is returned as it is. Opening the same file again returns the
    same object, so code that runs in a loop never accumulates connections."""
    if isinstance(store, TraceStore):
        return store
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise TypeError(f"store must be a TraceStore, a path or None, got {type(store).__name__}")
    path = Path(store) if store is not None else default_path()
    key = os.path.realpath(path)
    with _open_stores_lock:
        st = _open_stores.get(key)
        if st is None or st.closed:
            st = TraceStore(path, create=create)
            _open_stores[key] = st
        return st


@contextlib.contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# the columns of calls(), in order; {output} is the output text (or, read through Arrow, its hash)
_CALLS_COLUMNS = """s.trace_id, s.span_id, s.parent_id, s.step_index, s.step, s.agent, s.model, s.sample,
       s.attempt, s.input_tokens, s.output_tokens, s.cost_usd,
       (s.end_ns - s.start_ns) / 1e9 AS latency_s, s.start_ns, s.end_ns,
       s.cached, s.error, {output}, s.request_key, s.rowid AS _rowid"""
# calls() of at least this many rows are read column-wise into Arrow (None: never); below it
# the row-wise sqlite3 path is as fast and needs no pyarrow
_ARROW_MIN_ROWS: int | None = 20_000
# the memory map calls() reads the file through (SQLite caps it at its SQLITE_MAX_MMAP_SIZE,
# 2 GB in most builds)
_READ_MMAP_SIZE = 1 << 40
_CACHED, _MODEL, _KEY, _SPAN, _OUT, _TRACE, _KIND, _ERROR = map(SPAN_COLUMNS.index, (
    "cached", "model", "request_key", "span_id", "output_hash", "trace_id", "kind", "error"))


class PreparedWrite(NamedTuple):
    """Statement parameters for one transaction (see :meth:`TraceStore.prepare_write`)."""

    params: list  # a row of values per span (for executemany, and for the store's own indexes)
    texts: dict[str, str] | None  # for executemany
    statements: list | None  # or (sql, parameters) of multi-row inserts, texts first


def _span_params(row: dict[str, Any]) -> list:
    values = list(map(row.get, SPAN_COLUMNS))
    values[_CACHED] = 1 if values[_CACHED] else 0
    return values


def _ordered(df, *columns: str):
    """``df`` sorted by ``columns`` (integers), without copying when it already is."""
    if len(df) < 2:
        return df.reset_index(drop=True)
    import numpy as np

    order = np.lexsort([df[c].to_numpy(dtype=np.int64, na_value=0) for c in reversed(columns)])
    if (order[1:] > order[:-1]).all():
        return df
    return df.take(order).reset_index(drop=True)


def maybe_json(v):
    """A JSON array or object stored as text, decoded; anything else as it is."""
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v
