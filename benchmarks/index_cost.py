"""What the spans table's indexes cost to write and what they save on reads (issue 16).

Not a case of ``benchmarks.run``: a tool for comparing schema versions, each measured in a fresh
process, alternately::

    python -m benchmarks.index_cost build /tmp/t.db 500 --upto m006_one_span_per_logical_call
    python -m benchmarks.index_cost compare /tmp/t.db --upto m006_one_span_per_logical_call --pairs 5

``build``: a paid MoA-Lite batch on the stub, then its replay from the store (17,221 spans for 500
prompts), in a file at the older schema (a file is only ever upgraded).

``compare`` runs ``insert`` and ``reads`` for the schema up to ``--upto`` ("before") and for the
current one ("after"), alternating. ``insert``: every span row of the file written into a fresh file
through ``prepare_write(bulk=True)`` + ``write_prepared`` (the writer thread's path), ``--tx`` rows a
transaction, their texts with them; us a row, wall and this thread's CPU. ``reads``: the main read
paths on a copy of the file at that schema. ``--drop a,b`` drops those indexes too (what one index
costs). Under ``valgrind --tool=callgrind``, ``sqlite3_step``'s inclusive count gives SQLite's
instructions, free of the machine's noise (subtract a run with ``--rows-only``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _schema(upto: str | None) -> None:
    """Make TraceStore stop at migration ``upto`` (None: every migration)."""
    from moakit.store import migrations

    if upto:
        names = [f.__name__ for f in migrations.MIGRATIONS]
        del migrations.MIGRATIONS[names.index(upto) + 1:]


def build(path: Path, n: int, upto: str | None) -> None:
    _schema(upto)
    from moakit import ClientConfig
    from moakit.pipelines import moa_lite
    from moakit.runner.batch import arun_batch
    from moakit.store.store import TraceStore
    from moakit.testing.stub_server import StubServer

    prompts = [f"Question {i}: explain topic number {i} in a few sentences." for i in range(n)]
    cfg = ClientConfig(transport="direct", backoff=0.001, max_backoff=0.002)
    # a few transient faults: retried calls, with their failed attempts as spans
    with StubServer(latency=0, fault_rate=0.03, seed=3, faults="500,503,429", retry_after=0.01) as stub:
        models = {a: stub.model(a) for s in moa_lite for a in s.agents}
        store = TraceStore(path)
        for cache in (None, store):  # paid, then replayed from the store (cached rows)
            asyncio.run(arun_batch(moa_lite, prompts, models=models, store=store, cache=cache, max_concurrency=16,
                                   seed=1, templates="mixture-llm", progress=False, client_config=cfg))
        store.close()
    import sqlite3

    print(sqlite3.connect(path).execute("SELECT kind, cached, count(*) FROM spans GROUP BY 1, 2").fetchall())


def insert(src: Path, upto: str | None, drop: list[str], tx: int, reps: int, rows_only: bool) -> dict:
    import sqlite3

    from moakit.store.schema import SPAN_COLUMNS

    c = sqlite3.connect(src)
    rows = [list(r) for r in c.execute(f"SELECT {', '.join(SPAN_COLUMNS)} FROM spans ORDER BY rowid")]
    texts = dict(c.execute("SELECT hash, text FROM texts"))
    c.close()
    hashes = [SPAN_COLUMNS.index(col) for col in ("input_hash", "output_hash", "system_hash")]
    batches, seen = [], set()
    for i in range(0, len(rows), tx):  # each text goes with the first row naming it, as the writer queues them
        part = rows[i:i + tx]
        new = {h: texts[h] for r in part for h in (r[j] for j in hashes) if h and h not in seen}
        seen.update(new)
        batches.append((part, new))
    if rows_only:
        return {}
    _schema(upto)
    from moakit.store.store import TraceStore

    out = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as d:
            st = TraceStore(Path(d) / "t.db")
            for ix in drop:
                st.conn.execute(f"DROP INDEX {ix}")
            t0, c0 = time.perf_counter(), time.thread_time()
            for part, new in batches:
                st.write_prepared(st.prepare_write(part, new, bulk=True))
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            st.close()
        out.append((wall / len(rows) * 1e6, cpu / len(rows) * 1e6))
    return {"rows": len(rows), "wall_us": statistics.median(w for w, _ in out),
            "cpu_us": statistics.median(c for _, c in out)}


def reads(path: Path, upto: str | None) -> dict:
    _schema(upto)
    from moakit.store.store import TraceStore

    st = TraceStore(path)
    ids = st.trace_ids()
    retried = [r[0] for r in st.query("SELECT DISTINCT trace_id FROM spans WHERE kind = 'attempt'")] or ids
    keys = [r[0] for r in st.query("SELECT request_key FROM spans WHERE kind = 'call' AND cached = 0 ORDER BY rowid")]

    def med(f, n):
        xs = []
        for i in range(n):
            t = time.perf_counter()
            f(i)
            xs.append(time.perf_counter() - t)
        return round(statistics.median(xs) * 1e3, 3)

    def load_trace(i):  # what a trace view reads: a run's calls, steps, attempts and its calls' contents
        t = retried[i % len(retried)]
        calls = st.calls(t)
        st.steps(t)
        st.attempts(t)
        st.call_contents(list(calls["span_id"]))

    def fresh_cache(i):  # a replay's first look-up in a store just opened: the key index, then a run's calls
        s2 = TraceStore(path)
        s2.lookup_many(keys[(i * 13) % len(keys):][:13])
        s2.close()

    out = {
        "load a trace (calls, steps, attempts, call_contents), ms": med(load_trace, 60),
        "spans(trace_id), ms": med(lambda i: st.spans(ids[i % len(ids)]), 60),
        "paid call by request key (SQL), ms": med(lambda i: st.query(
            "SELECT * FROM spans WHERE request_key = ? AND cached = 0", (keys[i * 7 % len(keys)],)), 500),
        "cache: open, cache_index, lookup_many of 13 keys, ms": med(fresh_cache, 10),
        "list runs: runs(), ms": med(lambda i: st.runs(), 10),
        "trace_ids(), ms": med(lambda i: st.trace_ids(), 30),
        "attempts() of every run, ms": med(lambda i: st.attempts(), 10),
    }
    st.close()
    return out


def compare(path: Path, upto: str, pairs: int, tx: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    results: dict = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as d:
        copies = {}
        for side in results:
            copies[side] = Path(d) / f"{side}.db"
            shutil.copy(path, copies[side])
        for _ in range(pairs):
            for side in results:
                schema = ["--upto", upto] if side == "before" else []
                out = {}
                for what, args in (("insert", [str(path), "--tx", str(tx)]), ("reads", [str(copies[side])])):
                    p = subprocess.run([sys.executable, "-m", "benchmarks.index_cost", what, *args, *schema],
                                       capture_output=True, text=True, env=env, check=True)
                    out.update(json.loads(p.stdout))
                results[side].append(out)
    for k in results["before"][0]:
        b = [r[k] for r in results["before"]]
        a = [r[k] for r in results["after"]]
        print(f"{k:58s} before {statistics.median(b):9.3f} {b}\n{'':58s} after  {statistics.median(a):9.3f} {a}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("path", type=Path)
    b.add_argument("prompts", type=int)
    b.add_argument("--upto")
    i = sub.add_parser("insert")
    i.add_argument("src", type=Path)
    i.add_argument("--upto")
    i.add_argument("--drop", default="")
    i.add_argument("--tx", type=int, default=64)
    i.add_argument("--reps", type=int, default=3)
    i.add_argument("--rows-only", action="store_true", help="read the source rows and stop (callgrind's baseline)")
    r = sub.add_parser("reads")
    r.add_argument("path", type=Path)
    r.add_argument("--upto")
    c = sub.add_parser("compare")
    c.add_argument("path", type=Path)
    c.add_argument("--upto", required=True)
    c.add_argument("--pairs", type=int, default=3)
    c.add_argument("--tx", type=int, default=64)
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.path, a.prompts, a.upto)
    elif a.cmd == "insert":
        print(json.dumps(insert(a.src, a.upto, [x for x in a.drop.split(",") if x], a.tx, a.reps, a.rows_only)))
    elif a.cmd == "reads":
        print(json.dumps(reads(a.path, a.upto)))
    else:
        compare(a.path, a.upto, a.pairs, a.tx)


if __name__ == "__main__":
    main()
