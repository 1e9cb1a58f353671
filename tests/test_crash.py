"""Crash safety (issue 7, item 2): a batch in a child process killed with SIGKILL mid-run
(a notebook kernel that dies) leaves a trace file that passes ``PRAGMA integrity_check`` and
holds every call that had finished before the kill; a rerun with ``cache=True`` pays only for
the calls that had not finished.

The child prints ``CALL <span id>`` for every paid call when ``Runner.paid`` hands its answer
to the engine, so "finished" means "the engine was told it is done": the guarantee is that
such a call is committed by then (with the other calls ending in the same event-loop turn, by
the group commit the call awaits). It prints ``RUN <trace id>`` when a run that paid returns:
its run row is committed by then. The parent kills the child once a third of the calls have
been printed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import moakit
from moakit import Aggregate, Propose, TraceStore
from moakit.testing.stub_server import StubServer

N_PROMPTS = 60
CALLS_PER_PROMPT = 3
KILL_AFTER = 60  # finished calls seen before the SIGKILL

CHILD = r'''
import os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import moakit
from moakit import Aggregate, Propose
from moakit.runner import engine

_paid = engine.Runner.paid

async def paid(self, p):
    res = await _paid(self, p)  # the engine is told the call is done when this returns
    if isinstance(res, engine.Response):
        print("CALL", res.span_id, flush=True)
    return res

_run = engine.Runner.run

async def run(self, **kw):
    res = await _run(self, **kw)  # a run that paid returns once its run row is committed
    if res.calls_paid and res.ok:
        print("RUN", res.trace_id, flush=True)
    return res

engine.Runner.paid = paid
engine.Runner.run = run
api_base, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
models = {a: {"model": f"openai/{a}", "api_base": api_base, "api_key": "sk-stub-not-a-real-key-000000"}
          for a in ("p1", "p2", "agg")}
print("START", flush=True)
moakit.run_batch([Propose(["p1", "p2"], max_tokens=16), Aggregate("agg", max_tokens=16)],
                 [f"prompt {i}" for i in range(n)], models=models, store=db, seed=3, progress=False,
                 max_concurrency=4)
print("DONE", flush=True)
'''


def _models(stub):
    return {a: stub.model(a) for a in ("p1", "p2", "agg")}


def test_sigkill_mid_batch_loses_no_finished_call_and_rerun_pays_only_the_rest(tmp_path):
    db = tmp_path / "crash.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    printed: list[str] = []
    runs: list[str] = []  # runs that had returned before the kill
    with StubServer(latency=0.05) as stub:
        child = subprocess.Popen([sys.executable, str(script), stub.api_base, str(db), str(N_PROMPTS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            deadline = time.time() + 120
            for line in child.stdout:
                if line.startswith("RUN "):
                    runs.append(line.split()[1])
                if line.startswith("CALL "):
                    printed.append(line.split()[1])
                    if len(printed) >= KILL_AFTER:
                        os.kill(child.pid, signal.SIGKILL)
                        break
                assert not line.startswith("DONE"), "the batch finished before it could be killed"
                assert time.time() < deadline, "the child made no progress"
        finally:
            child.kill()
            child.wait(10)
        assert child.returncode == -signal.SIGKILL
        sent_before_kill = stub.stats()["ok"]

    # the file is intact, even opened with plain sqlite3 (which recovers the WAL)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()

    store = TraceStore(db)
    calls = store.calls()
    good = calls[calls["error"].isna() & calls["output"].notna()]
    # every call reported finished before the kill is in the file, with its output
    assert set(printed) <= set(good["span_id"])
    assert len(good) < N_PROMPTS * CALLS_PER_PROMPT, "the kill came too late to test anything"
    assert good["request_key"].is_unique
    # every run that had returned before the kill is in the file with its output, and its calls
    assert runs, "no run had returned before the kill"
    done = store.runs().set_index("trace_id")
    assert set(runs) <= set(done.index) and done.loc[runs, "output"].notna().all()
    assert (good["trace_id"].isin(runs)).sum() == CALLS_PER_PROMPT * len(runs)
    # no run finished writing its outputs without its calls: every recorded output has its call
    assert len(good) <= sent_before_kill
    store.close()

    # rerun with the cache: only what had not finished is paid for
    with StubServer(latency=0.0) as stub2:
        df = moakit.run_batch([Propose(["p1", "p2"], max_tokens=16), Aggregate("agg", max_tokens=16)],
                              [f"prompt {i}" for i in range(N_PROMPTS)], models=_models(stub2), store=db,
                              cache=True, seed=3, progress=False, max_concurrency=4)
        paid_requests = stub2.stats()["requests"]
    assert df["error"].isna().all() and df["output"].notna().all()
    missing = N_PROMPTS * CALLS_PER_PROMPT - len(good)
    print(f"\nkilled after {len(printed)} printed calls; {len(good)} good calls in the file; rerun paid {paid_requests}")
    assert paid_requests == missing
    assert df["calls_paid"].sum() == missing
    assert df["calls_reused"].sum() == len(good)
    store = TraceStore(db)
    assert store.query("PRAGMA integrity_check") == [("ok",)]
    store.close()
