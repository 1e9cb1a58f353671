"""Schema migrations, in the manner of simonw/llm: each migration is a function registered in
order; the names of those applied are recorded in ``_moakit_migrations`` inside the trace
file, so a file written by an older moakit opens and is upgraded in place, nothing lost."""

from __future__ import annotations

import sqlite3
import time
from typing import Callable

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


def applied(conn: sqlite3.Connection) -> list[str]:
    try:
        return [r[0] for r in conn.execute("SELECT name FROM _moakit_migrations ORDER BY rowid")]
    except sqlite3.OperationalError:  # no table yet: a new file
        return []


def migrate(conn: sqlite3.Connection, upto: str | None = None) -> list[str]:
    """Apply every migration not yet recorded (up to and including ``upto``) in one
    ``BEGIN IMMEDIATE`` transaction, so two processes opening a new file do not race.
    The connection must be in autocommit mode (``isolation_level=None``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS _moakit_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        done = set(applied(conn))
        ran = []
        for fn in MIGRATIONS:
            if fn.__name__ not in done:
                fn(conn)
                conn.execute("INSERT INTO _moakit_migrations VALUES (?, ?)", (fn.__name__, time.time()))
                ran.append(fn.__name__)
            if upto and fn.__name__ == upto:
                break
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ran


@migration
def m001_initial(conn):
    conn.execute("""
        CREATE TABLE texts (
            hash TEXT PRIMARY KEY,  -- blake2b-128 of the text: each long text stored once
            text TEXT NOT NULL
        )""")
    conn.execute("""
        CREATE TABLE spans (
            span_id TEXT PRIMARY KEY,
            trace_id TEXT NOT NULL,
            parent_id TEXT,
            name TEXT NOT NULL,
            kind TEXT,              -- run | step | call
            start_ns INTEGER,
            end_ns INTEGER,
            status TEXT,            -- OK | ERROR | UNSET
            error TEXT,
            step_index INTEGER,
            step TEXT,
            agent TEXT,
            model TEXT,
            sample INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cost_usd REAL,
            request_key TEXT,
            input_hash TEXT REFERENCES texts(hash),
            output_hash TEXT REFERENCES texts(hash),
            attributes TEXT         -- the remaining attributes, JSON
        )""")
    conn.execute("CREATE INDEX spans_trace ON spans(trace_id)")


@migration
def m002_cache_columns(conn):
    # replay: served-from-cache flag, retry attempt number, index for request-key look-ups
    conn.execute("ALTER TABLE spans ADD COLUMN cached INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE spans ADD COLUMN attempt INTEGER")
    conn.execute("CREATE INDEX spans_request_key ON spans(request_key) WHERE request_key IS NOT NULL")
    conn.execute("CREATE INDEX spans_kind_trace ON spans(kind, trace_id)")


@migration
def m003_system_and_runs_view(conn):
    conn.execute("ALTER TABLE spans ADD COLUMN system_hash TEXT REFERENCES texts(hash)")
    conn.execute("CREATE INDEX spans_parent ON spans(parent_id)")
    # a view for Datasette / sqlite3 users: one row a run
    conn.execute("""
        CREATE VIEW runs AS
        SELECT trace_id, span_id, name, start_ns, end_ns, status, error,
               json_extract(attributes, '$."moakit.pipeline.name"') AS pipeline
        FROM spans WHERE kind = 'run'""")


@migration
def m004_kind_indexes_for_runs_and_steps_only(conn):
    # spans_kind_trace (kind, trace_id) held every span, yet queries need it only to find the runs
    # or the steps without a trace id (calls are found by trace id, or by a table scan when all are
    # wanted). Calls are most spans, and each insert into an index keyed by random ids dirties a
    # page of its own: at a million calls this index cost ~6% of ingest and ~60 MB of the file.
    # Partial indexes keep those look-ups (SQLite uses them for `kind = ?` bound to 'run' / 'step').
    conn.execute("DROP INDEX IF EXISTS spans_kind_trace")
    conn.execute("CREATE INDEX spans_run ON spans(trace_id) WHERE kind = 'run'")
    conn.execute("CREATE INDEX spans_step ON spans(trace_id) WHERE kind = 'step'")


@migration
def m005_request_key_index_for_paid_calls_only(conn):
    # Replay finds recorded answers through TraceStore.cache_index (one scan into a dict), not
    # through this index; it serves people's own look-ups ("which call answered this request").
    # A replayed call repeats the key of the paid call it was served from (two thirds of the rows
    # of a Shuffle ablation), and each key is a random place in the index: at a million calls
    # the full index cost ~20% of ingest. Keyed look-ups of the paid (recorded) call stay
    # indexed: `WHERE request_key = ? AND cached = 0`.
    conn.execute("DROP INDEX IF EXISTS spans_request_key")
    conn.execute("CREATE INDEX spans_paid_request_key ON spans(request_key) WHERE cached = 0 AND request_key IS NOT NULL")
