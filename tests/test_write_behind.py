"""Rows that may wait (steps, replayed calls) are committed by a writer thread while the event
loop goes on (``moakit.store.writer.Writer``), with multi-row INSERT statements
(``TraceStore.prepare_write(bulk=True)``); and replay reads a recorded run's answers together
(``TraceStore.lookup_many``). Each is checked against the plain path on real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from moakit.runner.batch import arun_batch
from moakit.pipelines import count_calls, together_moa
from moakit.store.records import Rows, text_hash
from moakit.store.schema import SPAN_COLUMNS
from moakit.store.store import TraceStore
from moakit.store.writer import Writer

MODELS = {a: {"model": f"openai/{a}", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-unused-000000"}
          for s in together_moa for a in s.agents}


def _rows(n: int, seed: int = 0):
    """Span rows with awkward values: NUL and non-ASCII characters, NULLs, floats, large integers."""
    import random

    rnd = random.Random(seed)
    rows, texts = [], {}
    for i in range(n):
        out = ["with\x00nul", "plain", "caf\u00e9 \U0001F600", "quote \" back\\slash", ""][i % 5] + f" {i}"
        h = text_hash(out)
        texts[h] = out
        rows.append({
            "span_id": f"{rnd.getrandbits(64):016x}", "trace_id": f"{i // 7:032x}", "parent_id": None if i % 7 == 0
            else f"{rnd.getrandbits(64):016x}", "name": "chat m\x00x", "kind": "call", "start_ns": 1_700_000_000_000_000_000 + i,
            "end_ns": 1_700_000_000_000_000_000 + 2 * i, "status": "UNSET", "error": None if i % 5 else "E: x",
            "step_index": i % 4, "step": "Propose", "agent": "a\u00e9", "model": "m", "sample": 0,
            "input_tokens": i, "output_tokens": None, "cost_usd": [0.0, 1e-7 * i, 0.1 + 0.2, float("nan")][i % 4],
            "request_key": f"{i:064x}:0", "input_hash": None, "output_hash": h,
            "attributes": '{"k": "v\\u0000", "n": 1}', "cached": bool(i % 2), "attempt": i % 3, "system_hash": None,
        })
    return rows, texts


def _dump(store: TraceStore):
    cols = ", ".join(SPAN_COLUMNS)
    return (store.query(f"SELECT {cols} FROM spans ORDER BY rowid"),
            store.query("SELECT hash, text, typeof(text) FROM texts ORDER BY hash"))


@pytest.mark.parametrize("n", [1, 1500, 3000])  # 3,000 rows x 24 columns: several statements
def test_bulk_statements_write_what_executemany_writes(tmp_path, n):
    rows, texts = _rows(n)
    a, b = TraceStore(tmp_path / "a.db"), TraceStore(tmp_path / "b.db")
    a.write(rows, texts)
    prepared = b.prepare_write(rows, texts, bulk=True)
    assert prepared.statements is not None and (n < 1500 or len(prepared.statements) > 2)
    b.write_prepared(prepared)
    assert _dump(a) == _dump(b)
    assert any("\x00" in t for _, t, _ in _dump(b)[1])  # NUL kept, not cut off
    a.close(), b.close()


def test_a_failed_write_behind_keeps_its_rows_and_raises_at_the_next_flush(tmp_path, monkeypatch):
    store = TraceStore(tmp_path / "t.db")
    proc = Writer(store)
    monkeypatch.setattr(Writer, "MAX_PENDING", 4)
    rows, texts = _rows(10)
    real = TraceStore.write_prepared
    fails = [1]

    def flaky(self, w):
        if fails:
            fails.pop()
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, w)

    monkeypatch.setattr(TraceStore, "write_prepared", flaky)
    for r in rows[:4]:  # the 4th hands the first four to the writer thread, which fails
        proc.add(Rows([r], {r["output_hash"]: texts[r["output_hash"]]}))
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        proc.flush()  # the writer's error surfaces here; its rows went back to the queue
    for r in rows[4:]:
        proc.add(Rows([r], {r["output_hash"]: texts[r["output_hash"]]}))
    proc.flush()
    got = {r[0] for r in store.query("SELECT span_id FROM spans")}
    assert got == {r["span_id"] for r in rows}
    store.close()


def _batch(store, prompts, **kw):
    return asyncio.run(arun_batch(together_moa, prompts, models=MODELS, store=store, max_concurrency=8,
                                  progress=False, **kw))


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    from moakit.llm import caller as C

    async def _complete(self, req, on_chunk=None):
        return C.Outcome(0, 0, 0, text=f"answer {req.seed} of {req.spec.model}", input_tokens=10, output_tokens=5,
                         cost_usd=0.0, response_model=req.spec.model, finish_reason="stop", response_id="id-1")

    monkeypatch.setattr(C.Caller, "_complete", _complete)
    prompts = [f"question {i}" for i in range(12)]
    store = TraceStore(tmp_path / "rec.db")
    df = _batch(store, prompts)
    monkeypatch.undo()
    return store, prompts, df


def test_a_replayed_batch_written_behind_is_complete_when_it_returns(recorded, tmp_path, monkeypatch):
    rec, prompts, df = recorded
    plain = TraceStore(tmp_path / "plain.db")
    df_plain = _batch(plain, prompts, cache=rec, offline=True)
    monkeypatch.setattr(Writer, "MAX_PENDING", 8)  # the writer thread takes most rows
    behind = TraceStore(tmp_path / "behind.db")
    taken = []
    real = TraceStore.write_prepared
    monkeypatch.setattr(TraceStore, "write_prepared", lambda self, w: (taken.append(w.statements is not None),
                                                                       real(self, w)))
    df_behind = _batch(behind, prompts, cache=rec, offline=True)
    assert list(df_behind["output"]) == list(df_plain["output"]) == list(df["output"])
    assert sum(taken) >= 10 and behind.writer.pending == 0  # the thread wrote, and nothing is left waiting
    n_calls = len(prompts) * count_calls(together_moa)
    other = sqlite3.connect(tmp_path / "behind.db")  # another connection sees every row: committed
    assert other.execute("SELECT count(*) FROM spans WHERE kind = 'call' AND cached = 1").fetchone()[0] == n_calls
    assert other.execute("SELECT count(*) FROM spans").fetchone()[0] == \
        plain.query("SELECT count(*) FROM spans")[0][0]
    other.close()
    cols = "kind, step_index, step, agent, model, sample, input_tokens, output_tokens, cached, attempt, " \
           "request_key, input_hash, output_hash"
    assert sorted(behind.query(f"SELECT {cols} FROM spans")) == sorted(plain.query(f"SELECT {cols} FROM spans"))


_ONE_BY_ONE = ("SELECT s.input_tokens, s.output_tokens, s.model, t.text, "
               "json_extract(s.attributes, '$.\"gen_ai.response.model\"') "
               "FROM spans s JOIN texts t ON t.hash = s.output_hash WHERE s.span_id = ?")


@pytest.mark.parametrize("max_calls,memo", [(256, 8192), (3, 8192), (256, 5)])
def test_lookup_many_answers_as_a_query_per_key(recorded, monkeypatch, max_calls, memo):
    """Whole runs read at once, runs too large for that read by span id, and a small memo that
    must start afresh: the same answers as one query per key."""
    rec, _, _ = recorded
    monkeypatch.setattr(TraceStore, "PREFETCH_MAX_CALLS", max_calls)
    monkeypatch.setattr(TraceStore, "PREFETCH_MEMO", memo)
    rec._replay_rows.clear()
    index = rec.cache_index()
    keys = list(index)[::-1] + ["no-such-key:0"]
    got = []
    for i in range(0, len(keys), 6):
        got += rec.lookup_many(keys[i:i + 6])
    assert got[-1] is None and rec.lookup("no-such-key:0") is None
    for key, hit in zip(keys[:-1], got[:-1]):
        span_id = index[key][0]
        inp, outp, model, text, rmodel = rec.query(_ONE_BY_ONE, (span_id,))[0]
        assert hit == (span_id, text, {"input_tokens": inp, "output_tokens": outp, "response_model": rmodel or model})
        assert rec.lookup(key) == hit
