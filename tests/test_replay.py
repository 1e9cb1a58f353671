"""Issue 3: request keys, cache and offline replay, counterfactual reuse, resume, ReplayMiss,
schema migrations of old trace files, and the ``moakit traces`` CLI.

Together MoA (the reference page's, 19 calls) is recorded once per module on the embedded
model with a tiny ``max_tokens``; everything else replays it or runs on the stub server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import moakit
from moakit import Aggregate, Dropout, Propose, ReplayMiss, Shuffle
from moakit.llm import ClientConfig
from moakit.pipelines import together_moa
from moakit.testing.stub_server import StubServer
from moakit.store import migrations
from moakit.store.store import SPAN_COLUMNS, TraceStore

QUERY = "Name one primary colour."
SEED = 7
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Together MoA on the embedded model, recorded once: (store path, Result, calls DataFrame)."""
    path = tmp_path_factory.mktemp("replay") / "moa.db"
    t = time.perf_counter()
    r = moakit.run(together_moa, QUERY, models="local", max_tokens=MAX_TOKENS, seed=SEED, store=path)
    print(f"\nrecorded Together MoA (19 calls, embedded model, max_tokens={MAX_TOKENS}) in "
          f"{time.perf_counter() - t:.1f} s")
    assert r.ok, r.error
    calls = r.calls
    assert len(calls) == 19 and not calls["cached"].any() and calls["error"].isna().all()
    return path, r, calls


def _copy(src, dst):
    """A private copy of a trace file (tests that write must not disturb the others)."""
    s = sqlite3.connect(src)
    d = sqlite3.connect(dst)
    s.backup(d)
    s.close()
    d.close()
    return dst


# ---- request keys ---------------------------------------------------------------------------
def test_identical_requests_get_occurrence_numbers_and_all_replay(tmp_path):
    pipe = [Propose(["m"] * 3, max_tokens=8), Aggregate("m", max_tokens=8)]
    store = TraceStore(tmp_path / "k.db")
    with StubServer() as s:
        r = moakit.run(pipe, "hello", models={"m": s.model("m")}, store=store)
        assert r.ok, r.error
        calls = r.calls
        props = calls[calls.step == "Propose"]
        bases = {k.split(":")[0] for k in props.request_key}
        assert len(bases) == 1, "three samples of one model send one request"
        assert sorted(int(k.split(":")[1]) for k in props.request_key) == [0, 1, 2]
        assert sorted(props["sample"]) == [0, 1, 2]
        before = s.stats()["requests"]
        again = moakit.run(pipe, "hello", models={"m": s.model("m")}, store=store, cache=True)
        assert s.stats()["requests"] == before, "a fully cached run sends no request"
    assert again.output == r.output
    assert (again.calls_paid, again.calls_reused) == (0, 4)
    assert again.calls["cached"].all()


# ---- offline replay ---------------------------------------------------------------------------
NO_NETWORK = textwrap.dedent("""
    import json, socket, sys, time

    def _refuse(*a, **k):
        raise OSError("network disabled by the test")

    _init = socket.socket.__init__

    def _init_no_inet(self, family=-1, type=-1, proto=-1, fileno=None):
        # asyncio's self-pipe is an AF_UNIX socketpair (no network): allowed; any IP socket raises
        if family in (socket.AF_INET, socket.AF_INET6) or (family == -1 and fileno is None):
            raise OSError("network sockets disabled by the test")
        _init(self, family, type, proto, fileno)

    socket.socket.__init__ = _init_no_inet
    socket.socket.connect = socket.socket.connect_ex = _refuse
    socket.create_connection = socket.getaddrinfo = _refuse
    try:
        socket.create_connection(("127.0.0.1", 80))
        raise SystemExit("the socket guard does not work")
    except OSError:
        pass

    t0 = time.perf_counter()
    import moakit
    t1 = time.perf_counter()
    r = moakit.replay(sys.argv[2], store=sys.argv[1], offline=True)
    t2 = time.perf_counter()
    calls = r.calls
    print(json.dumps({
        "output": r.output, "error": r.error, "n_calls": len(calls), "all_cached": bool(calls["cached"].all()),
        "paid": r.calls_paid, "reused": r.calls_reused, "keys": sorted(calls["request_key"]),
        "outputs": dict(zip(calls["request_key"], calls["output"])),
        "litellm_imported": "litellm" in sys.modules, "llama_imported": "llama_cpp" in sys.modules,
        "import_s": t1 - t0, "replay_s": t2 - t1}))
""")


def test_offline_replay_in_a_process_where_sockets_raise(recorded, tmp_path):
    path, r, calls = recorded
    db = _copy(path, tmp_path / "copy.db")
    script = tmp_path / "no_network_replay.py"
    script.write_text(NO_NETWORK)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run([sys.executable, str(script), str(db), r.trace_id[:10]], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\noffline replay of 19 calls: {got['replay_s'] * 1000:.1f} ms (import moakit {got['import_s']:.2f} s)")
    assert got["error"] is None
    assert got["output"] == r.output
    assert got["n_calls"] == 19 and got["all_cached"]
    assert (got["paid"], got["reused"]) == (0, 19)
    assert got["keys"] == sorted(calls["request_key"])
    assert got["outputs"] == dict(zip(calls["request_key"], calls["output"]))
    assert not got["litellm_imported"] and not got["llama_imported"]


def test_replay_in_process_records_a_cached_run(recorded, tmp_path):
    path, r, calls = recorded
    store = TraceStore(_copy(path, tmp_path / "copy.db"))
    again = moakit.replay(r.trace_id, store=store)
    assert again.trace_id != r.trace_id and again.output == r.output
    c = again.calls
    assert len(c) == 19 and c["cached"].all() and (c["cost_usd"].fillna(0) == 0).all()
    assert sorted(c["request_key"]) == sorted(calls["request_key"])
    assert dict(zip(c["request_key"], c["output"])) == dict(zip(calls["request_key"], calls["output"]))
    runs = store.runs().set_index("trace_id")
    assert runs.loc[again.trace_id, "calls_cached"] == 19 and runs.loc[again.trace_id, "cost_usd"] == 0
    assert runs.loc[again.trace_id, "output"] == r.output


# ---- counterfactual reuse -----------------------------------------------------------------
def _variant_with(step_before_aggregate):
    return [*together_moa[:-1], step_before_aggregate, together_moa[-1]]


@pytest.mark.parametrize("variant", ["shuffle", "dropout", "other_aggregator"])
def test_variant_pays_only_for_changed_calls(recorded, tmp_path, variant):
    path, r, _ = recorded
    store = TraceStore(_copy(path, tmp_path / "copy.db"))
    if variant == "shuffle":
        pipe = _variant_with(Shuffle())
    elif variant == "dropout":
        pipe = _variant_with(Dropout(0.5))
    else:
        pipe = [*together_moa[:-1], Aggregate("qwen1.5-72b-chat")]
    v = moakit.run(pipe, QUERY, models="local", max_tokens=MAX_TOKENS, seed=SEED, store=store, cache=store)
    assert v.ok, v.error
    c = v.calls
    steps = v.steps
    changed = 1
    if variant == "shuffle":
        perm = steps[steps.step == "Shuffle"].permutation.iloc[0]
        assert sorted(perm) == list(range(6)) and perm != list(range(6)), perm
    if variant == "dropout":
        kept = steps[steps.step == "Dropout"].kept.iloc[0]
        changed = 0 if kept == list(range(6)) else 1  # nothing dropped: the aggregator prompt is the recorded one
    assert (v.calls_paid, v.calls_reused) == (changed, 19 - changed)
    assert len(c) == 19
    assert int((~c["cached"]).sum()) == changed
    assert c[~c["cached"]]["step"].tolist() == ["Aggregate"] * changed
    assert c[c.step != "Aggregate"]["cached"].all(), "every upstream call is served from the store"


# ---- offline misses -----------------------------------------------------------------------
def test_replay_miss_names_step_agent_and_model(recorded, tmp_path):
    path, r, _ = recorded
    store = TraceStore(_copy(path, tmp_path / "copy.db"))
    n_calls = len(store.calls())
    pipe = [*together_moa[:-1], Aggregate("gpt-4.1")]
    with pytest.raises(ReplayMiss) as ei:
        moakit.replay(r.trace_id, store=store, pipeline=pipe, offline=True)
    e = ei.value
    assert (e.step, e.agent, e.model) == (3, "gpt-4.1", "openai/gpt-4.1")
    msg = str(e)
    assert "step 3 (Aggregate)" in msg and "'gpt-4.1'" in msg and "'openai/gpt-4.1'" in msg
    calls = store.calls()
    assert len(calls) == n_calls + 18 and calls["cached"].sum() == 18, "only the 18 cached calls were recorded"


def test_offline_batch_replays_what_it_has_and_fails_only_the_missing_prompt(recorded, tmp_path):
    path, r, _ = recorded
    store = TraceStore(_copy(path, tmp_path / "copy.db"))
    df = moakit.run_batch(together_moa, [QUERY, "Something never recorded"], models="local",
                          max_tokens=MAX_TOKENS, seed=SEED, store=store, cache=store, offline=True, progress=False)
    assert df["output"].iloc[0] == r.output and not isinstance(df["error"].iloc[0], str)
    assert (df["calls_paid"].iloc[0], df["calls_reused"].iloc[0]) == (0, 19)
    assert df["error"].iloc[1].startswith("ReplayMiss") and "step 0 (Propose)" in df["error"].iloc[1]
    assert df["calls_paid"].sum() == 0


# ---- resume -------------------------------------------------------------------------------
def test_interrupted_batch_resumes_paying_only_for_missing_calls(tmp_path):
    pipe = [Propose(["a", "b", "c"], max_tokens=16), Aggregate("agg", max_tokens=16)]
    prompts = [f"question {i}" for i in range(6)]
    store = TraceStore(tmp_path / "resume.db")
    cfg = ClientConfig(retries=0)
    with StubServer() as good, StubServer(fault_rate=0.5, faults="500", seed=3) as flaky:
        models = {a: good.model(a) for a in "abc"}
        first = moakit.run_batch(pipe, prompts, models={**models, "agg": flaky.model("agg")}, store=store,
                                 cache=True, client_config=cfg, progress=False)
        failed = first["error"].notna()
        assert 0 < failed.sum() < len(prompts), f"the flaky aggregator should fail some prompts: {first['error']}"
        assert (first["calls_paid"][~failed] == 4).all()
        proposals_sent = good.stats()["requests"]
        assert proposals_sent == 18

        second = moakit.run_batch(pipe, prompts, models={**models, "agg": good.model("agg")}, store=store,
                                  cache=True, client_config=cfg, progress=False)
        assert second["error"].isna().all()
        # the healthy server only saw the aggregator calls that had failed
        assert good.stats()["requests"] == proposals_sent + failed.sum()
    assert second["calls_paid"].tolist() == [1 if f else 0 for f in failed]
    assert second["calls_reused"].tolist() == [3 if f else 4 for f in failed]
    ok_before = first["output"][~failed].tolist()
    assert second["output"][~failed].tolist() == ok_before, "reused answers are the recorded ones"
    for tid, f in zip(second["trace_id"], failed):
        c = store.calls(tid)
        assert c[c.step == "Propose"]["cached"].all()
        assert bool(c[c.step == "Aggregate"]["cached"].iloc[0]) is (not f)


def test_run_interrupted_mid_pipeline_resumes(tmp_path):
    """A run cancelled during its second layer: the rerun pays only for what had not finished."""
    import asyncio

    pipe = [Propose(["a", "b"], max_tokens=8), Aggregate("slow", max_tokens=8)]
    store = TraceStore(tmp_path / "cancel.db")
    with StubServer() as fast, StubServer(latency=30) as slow:
        models = {"a": fast.model("a"), "b": fast.model("b"), "slow": slow.model("slow")}

        async def interrupted():
            task = asyncio.create_task(moakit.arun(pipe, "q", models=models, store=store, cache=True))
            for _ in range(600):  # wait until both proposals are recorded, then cancel
                await asyncio.sleep(0.05)
                if len(store.calls()) >= 2 and store.calls()["output"].notna().sum() >= 2:
                    break
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupted())
        before = fast.stats()["requests"]
        r = moakit.run(pipe, "q", models={**models, "slow": fast.model("slow")}, store=store, cache=True)
        assert fast.stats()["requests"] == before + 1
    assert r.ok and (r.calls_paid, r.calls_reused) == (1, 2)


# ---- schema migrations --------------------------------------------------------------------
def test_file_from_first_schema_version_opens_with_nothing_lost(recorded, tmp_path):
    path, r, calls = recorded
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old, isolation_level=None)
    assert migrations.migrate(conn, upto="m001_initial") == ["m001_initial"]
    v1_cols = [row[1] for row in conn.execute("PRAGMA table_info(spans)")]
    assert "cached" not in v1_cols and "system_hash" not in v1_cols
    src = sqlite3.connect(path)
    rows = src.execute(f"SELECT {', '.join(v1_cols)} FROM spans WHERE trace_id = ? ORDER BY rowid",
                       (r.trace_id,)).fetchall()
    texts = src.execute("SELECT hash, text FROM texts").fetchall()
    src.close()
    conn.executemany(f"INSERT INTO spans ({', '.join(v1_cols)}) VALUES ({', '.join('?' * len(v1_cols))})", rows)
    conn.executemany("INSERT INTO texts VALUES (?, ?)", texts)
    conn.close()

    store = TraceStore(old)
    assert store.schema_version == [fn.__name__ for fn in migrations.MIGRATIONS]
    assert set(SPAN_COLUMNS) <= {row[1] for row in store.query("PRAGMA table_info(spans)")}
    assert store.query("SELECT count(*) FROM spans")[0][0] == len(rows) == 24
    got = store.calls(r.trace_id)
    for col in ("span_id", "request_key", "agent", "model", "step", "input_tokens", "output_tokens", "output"):
        assert got[col].tolist() == calls[col].tolist(), col
    assert not got["cached"].any()
    run = store.runs().iloc[0]
    assert run.output == r.output and run.calls == 19
    # and it still replays, offline, to the same answer
    again = moakit.replay(r.trace_id, store=store, offline=True)
    assert again.output == r.output and again.calls["cached"].all()
    store.close()
    # a second open finds nothing to migrate
    reopened = sqlite3.connect(old, isolation_level=None)
    assert migrations.migrate(reopened) == []
    reopened.close()


def test_store_pragmas(recorded):
    path, _, _ = recorded
    store = TraceStore(path)
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.query("PRAGMA busy_timeout")[0][0] >= 1000
    n_texts = store.query("SELECT count(*) FROM texts")[0][0]
    n_refs = store.query("SELECT count(input_hash) + count(output_hash) FROM spans")[0][0]
    assert n_texts < n_refs, "repeated texts (the shared query, replayed outputs) are stored once"
    # the paid call behind a request key is an index look-up (replayed copies are not indexed)
    plan = store.query("EXPLAIN QUERY PLAN SELECT * FROM spans WHERE request_key = ? AND cached = 0", ("x",))
    assert any("spans_paid_request_key" in str(p) for p in plan)
    key, n_paid = store.query("SELECT request_key, count(*) FROM spans WHERE request_key IS NOT NULL AND cached = 0 "
                              "GROUP BY request_key LIMIT 1")[0]
    assert store.query("SELECT count(*) FROM spans WHERE request_key = ? AND cached = 0", (key,))[0][0] == n_paid >= 1


# ---- CLI ----------------------------------------------------------------------------------
def test_cli_traces_ls_show_export_replay(recorded, tmp_path, capsys):
    from moakit.cli import main

    path, r, _ = recorded
    db = str(_copy(path, tmp_path / "copy.db"))
    assert main(["traces", "ls", "--traces", db]) == 0
    out = capsys.readouterr().out
    assert r.trace_id in out and "together_moa" in out

    assert main(["traces", "show", r.trace_id[:8], "--traces", db]) == 0
    out = capsys.readouterr().out
    assert out.count("local/smollm2") == 19 and "Aggregate" in out

    jsonl = tmp_path / "out.jsonl"
    assert main(["traces", "export", str(jsonl), "--traces", db, "--trace", r.trace_id[:8]]) == 0
    assert "exported 24 spans" in capsys.readouterr().out
    assert len(jsonl.read_text().splitlines()) == 24

    assert main(["traces", "replay", r.trace_id[:8], "--traces", db]) == 0
    out = capsys.readouterr().out
    assert r.output in out and "(0 paid, 19 reused)" in out

    assert main(["traces", "replay", "ffffffff", "--traces", db]) == 2
    assert "no run with trace id" in capsys.readouterr().err
    assert main(["traces", "export", str(tmp_path / "out.csv"), "--traces", db]) == 2
    assert "cannot tell the export format" in capsys.readouterr().err
    assert main(["traces", "show", "--traces", db]) == 2
