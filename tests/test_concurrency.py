"""Concurrent writers (issue 7, item 3): four processes write 1,000 calls each to ONE trace
file through the real path (run_batch -> litellm -> stub server -> spans -> SQLite), all
starting at the same moment on a file that does not exist yet (so they also race to create
it and run its migrations), while a fifth process plays the notebook: it reads
``store.calls()`` and ``store.runs()`` in a loop. No process may see "database is locked"
(or any error), and no span may be lost: every call span id a writer saw committed is in the
file at the end, and the counts add up exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from moakit import TraceStore
from moakit.testing.stub_server import StubServer

WRITERS = 4
PROMPTS_PER_WRITER = 500  # x 2 proposers = 1,000 calls per writer

WRITER = r'''
import json, os, sys, time
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import moakit
from moakit import Propose
from moakit.llm import get_litellm
from moakit.runner import recorder

api_base, db, n, go, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
seen = []
_paid = recorder.Recorder.paid

async def paid(self, rec):  # a paid call, reported once its row is committed
    h = await _paid(self, rec)
    seen.append(rec.span_id)
    return h

recorder.Recorder.paid = paid
get_litellm()  # import before the start line, so the four writers really overlap
print("READY", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
models = {a: {"model": f"openai/{a}", "api_base": api_base, "api_key": "sk-stub-not-a-real-key-000000"}
          for a in ("a", "b")}
df = moakit.run_batch([Propose(["a", "b"], max_tokens=8)], [f"w{os.getpid()} prompt {i}" for i in range(n)],
                      models=models, store=db, progress=False, max_concurrency=8)
errors = [e for e in df["error"] if e is not None]
json.dump({"seen": seen, "errors": errors, "outputs": int(df["output"].notna().sum())}, open(out, "w"))
'''

READER = r'''
import json, os, sys, time
from moakit import TraceStore
db, go, stop, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.01)
counts, errors = [], []
while not os.path.exists(stop):
    try:
        if not os.path.exists(db):
            time.sleep(0.01)
            continue
        store = TraceStore(db)  # a notebook cell opening the file while it is being written
        for _ in range(20):
            counts.append(len(store.calls()))
            store.runs()
            if os.path.exists(stop):
                break
        store.close()
    except Exception as e:  # noqa: BLE001 - everything is reported to the test
        errors.append(f"{type(e).__name__}: {e}")
        time.sleep(0.05)
json.dump({"counts": counts, "errors": errors}, open(out, "w"))
'''


def test_four_writers_and_a_reader_no_lock_error_no_lost_span(tmp_path):
    db = tmp_path / "shared.db"  # does not exist yet: the writers race to create it
    go, stop = tmp_path / "go", tmp_path / "stop"
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "reader.py").write_text(READER)
    with StubServer() as stub:
        writers = [subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), stub.api_base, str(db),
                                     str(PROMPTS_PER_WRITER), str(go), str(tmp_path / f"w{i}.json")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for i in range(WRITERS)]
        reader = subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(db), str(go), str(stop),
                                   str(tmp_path / "reader.json")], stderr=subprocess.PIPE, text=True)
        try:
            for w in writers:
                assert w.stdout.readline().strip() == "READY"
            t0 = time.perf_counter()
            go.touch()
            results = [w.communicate(timeout=300) for w in writers]
            elapsed = time.perf_counter() - t0
            stop.touch()
            _, reader_err = reader.communicate(timeout=60)
        finally:
            for p in [*writers, reader]:
                p.kill()
                p.wait()
        requests = stub.stats()["requests"]

    for w, (_, err) in zip(writers, results):
        assert "database is locked" not in err
        assert w.returncode == 0, err[-3000:]
    assert "database is locked" not in reader_err and reader.returncode == 0, reader_err[-3000:]

    seen, total_outputs = set(), 0
    for i in range(WRITERS):
        r = json.loads((tmp_path / f"w{i}.json").read_text())
        assert r["errors"] == []
        assert len(r["seen"]) == 2 * PROMPTS_PER_WRITER
        seen |= set(r["seen"])
        total_outputs += r["outputs"]
    rd = json.loads((tmp_path / "reader.json").read_text())
    assert rd["errors"] == [], rd["errors"][:5]
    assert len(rd["counts"]) >= 5, "the reader did not get to read while the writers wrote"
    assert rd["counts"] == sorted(rd["counts"]), "a reader saw committed calls disappear"

    n_calls = WRITERS * 2 * PROMPTS_PER_WRITER
    assert len(seen) == n_calls and total_outputs == WRITERS * PROMPTS_PER_WRITER
    assert requests == n_calls
    store = TraceStore(db)
    calls = store.calls()
    assert len(calls) == n_calls and set(calls["span_id"]) == seen  # no span lost, none invented
    assert calls["error"].isna().all() and calls["output"].notna().all()
    kinds = dict(store.query("SELECT kind, count(*) FROM spans GROUP BY kind"))
    assert kinds == {"run": WRITERS * PROMPTS_PER_WRITER, "step": WRITERS * PROMPTS_PER_WRITER, "call": n_calls}
    assert store.query("PRAGMA integrity_check") == [("ok",)]
    assert len(store.schema_version) == len(set(store.schema_version))  # migrations ran once
    store.close()
    print(f"\n{WRITERS} writers x {2 * PROMPTS_PER_WRITER} calls in {elapsed:.1f} s; "
          f"reader read {len(rd['counts'])} times, last saw {rd['counts'][-1]} calls")
