"""Schema migrations, in the manner of simonw/llm: each migration is a function of a
``sqlite_utils.Database`` registered in order; the names of those applied are recorded in
``_moakit_migrations`` inside the trace file, so a file written by an older moakit opens and is
upgraded in place, nothing lost. All pending migrations run in one ``BEGIN IMMEDIATE``
transaction (two processes opening a new file do not race)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import sqlite_utils

MIGRATIONS: list[Callable[["sqlite_utils.Database"], None]] = []


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
    if upto is None and {fn.__name__ for fn in MIGRATIONS} <= set(applied(conn)):
        return []  # up to date: nothing to lock
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS _moakit_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        done = set(applied(conn))
        ran = []
        for fn in MIGRATIONS:
            if fn.__name__ not in done:
                fn(db)
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
def m001_initial(db):
    db.execute("""
        CREATE TABLE texts (
            hash TEXT PRIMARY KEY,  -- blake2b-128 of the text: each long text stored once
            text TEXT NOT NULL
        )""")
    db.execute("""
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
    db["spans"].create_index(["trace_id"], index_name="spans_trace")


@migration
def m002_cache_columns(db):
    # replay: served-from-cache flag, retry attempt number, index for request-key look-ups
    db.execute("ALTER TABLE spans ADD COLUMN cached INTEGER NOT NULL DEFAULT 0")
    db["spans"].add_column("attempt", int)
    db.execute("CREATE INDEX spans_request_key ON spans(request_key) WHERE request_key IS NOT NULL")
    db["spans"].create_index(["kind", "trace_id"], index_name="spans_kind_trace")


@migration
def m003_system_and_runs_view(db):
    db.execute("ALTER TABLE spans ADD COLUMN system_hash TEXT REFERENCES texts(hash)")
    db["spans"].create_index(["parent_id"], index_name="spans_parent")
    # a view for Datasette / sqlite3 users: one row a run
    db.execute("""
        CREATE VIEW runs AS
        SELECT trace_id, span_id, name, start_ns, end_ns, status, error,
               json_extract(attributes, '$."moakit.pipeline.name"') AS pipeline
        FROM spans WHERE kind = 'run'""")


@migration
def m004_kind_indexes_for_runs_and_steps_only(db):
    # spans_kind_trace (kind, trace_id) held every span, yet queries need it only to find the runs
    # or the steps without a trace id (calls are found by trace id, or by a table scan when all are
    # wanted). Calls are most spans, and each insert into an index keyed by random ids dirties a
    # page of its own: at a million calls this index cost ~6% of ingest and ~60 MB of the file.
    # Partial indexes keep those look-ups (SQLite uses them for `kind = ?` bound to 'run' / 'step').
    db.execute("DROP INDEX IF EXISTS spans_kind_trace")
    db.execute("CREATE INDEX spans_run ON spans(trace_id) WHERE kind = 'run'")
    db.execute("CREATE INDEX spans_step ON spans(trace_id) WHERE kind = 'step'")


@migration
def m005_request_key_index_for_paid_calls_only(db):
    # Replay finds recorded answers through TraceStore.cache_index (one scan into a dict), not
    # through this index; it serves people's own look-ups ("which call answered this request").
    # A replayed call repeats the key of the paid call it was served from (two thirds of the rows
    # of a Shuffle ablation), and each key is a random place in the index: at a million calls
    # the full index cost ~20% of ingest. Keyed look-ups of the paid (recorded) call stay
    # indexed: `WHERE request_key = ? AND cached = 0`.
    db.execute("DROP INDEX IF EXISTS spans_request_key")
    db.execute("CREATE INDEX spans_paid_request_key ON spans(request_key) WHERE cached = 0 AND request_key IS NOT NULL")


@migration
def m006_one_span_per_logical_call(db):
    # The GenAI conventions ask for one span per logical call, retries inside it. Files written
    # before recorded one "call" span per attempt, siblings under the step. Per call (the
    # attempts of one request key in one trace), the last attempt becomes the call: it starts
    # when the first attempt started and counts the attempts made; the earlier attempts become
    # its children of kind "attempt" (their error and the wait that followed kept as they were).
    db.execute("""
        CREATE TEMP TABLE m006_calls AS
        SELECT trace_id, request_key, count(*) AS n, min(start_ns) AS first_start,
               (SELECT c.span_id FROM spans c WHERE c.trace_id = g.trace_id AND c.request_key = g.request_key
                   AND c.kind = 'call' AND c.cached = 0 ORDER BY c.attempt DESC, c.start_ns DESC LIMIT 1) AS last_id
        FROM spans g WHERE kind = 'call' AND cached = 0 AND request_key IS NOT NULL
        GROUP BY trace_id, request_key HAVING count(*) > 1""")
    db.execute("""
        UPDATE spans SET kind = 'attempt', parent_id = m.last_id, name = 'attempt ' || coalesce(spans.attempt, '?')
                         || ' ' || coalesce(spans.model, ''), input_hash = NULL, output_hash = NULL
        FROM m006_calls m WHERE spans.trace_id = m.trace_id AND spans.request_key = m.request_key
          AND spans.kind = 'call' AND spans.cached = 0 AND spans.span_id != m.last_id""")
    db.execute("""
        UPDATE spans SET start_ns = m.first_start, attempt = m.n,
                         attributes = json_set(coalesce(attributes, '{}'), '$."moakit.attempt.last_start_ns"',
                                               spans.start_ns)
        FROM m006_calls m WHERE spans.span_id = m.last_id""")
    db.execute("DROP TABLE m006_calls")
    # The run: an invoke_workflow operation named after its pipeline (gen_ai.agent.name).
    db.execute("""
        UPDATE spans SET name = 'invoke_workflow ' || coalesce(json_extract(attributes, '$."moakit.pipeline.name"'), 'moakit'),
                         attributes = CASE WHEN json_extract(attributes, '$."moakit.pipeline.name"') IS NULL THEN attributes
                                      ELSE json_set(attributes, '$."gen_ai.agent.name"',
                                                    json_extract(attributes, '$."moakit.pipeline.name"')) END
        WHERE kind = 'run'""")


@migration
def m007_parent_index_for_attempts_only(db):
    # The only look-up by parent id is of a call's failed attempts (TraceStore.call_contents:
    # `kind = 'attempt' AND parent_id IN (...)`); runs, steps and calls are found by trace id
    # (spans_trace, spans_run, spans_step). Attempts are the few retried calls' rows, so a
    # partial index keeps that look-up indexed while the other rows stay out of it.
    db.execute("DROP INDEX IF EXISTS spans_parent")
    db.execute("CREATE INDEX IF NOT EXISTS spans_attempt_parent ON spans(parent_id) WHERE kind = 'attempt'")
