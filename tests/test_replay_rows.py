"""Replayed calls are written as rows without OpenTelemetry spans (``Client._replayed_row``):
the rows must be exactly what the span path (``span_to_row``) writes, redaction included."""

from __future__ import annotations

import json

import pytest

import moakit
from moakit import client as C
from moakit.pipelines import together_moa
from moakit.testing.stub_server import StubServer
from moakit.tracing import attributes as A
from moakit.tracing.store import SPAN_COLUMNS, TraceStore

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8J9k0" * 2
QUERY = "Name three rivers and say why each matters."
SECRET_QUERY = f"Summarise this config: OPENAI_API_KEY={SECRET} and say hi."
VARYING = {"span_id", "trace_id", "parent_id", "start_ns", "end_ns"}


def _rows(path):
    st = TraceStore(path)
    cols = ", ".join(SPAN_COLUMNS)
    rows = [dict(zip(SPAN_COLUMNS, r)) for r in st.query(f"SELECT {cols} FROM spans WHERE kind='call' AND cached=1")]
    steps = {r[0]: r[1] for r in st.query("SELECT span_id, trace_id FROM spans WHERE kind='step'")}
    texts = dict(st.query("SELECT hash, text FROM texts"))
    st.close()
    return rows, steps, texts


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Both queries recorded on the stub server, which stays up for the replays (a redacted
    answer changes the next layer's prompt, so the secret query's later layers are paid again)."""
    path = tmp_path_factory.mktemp("rows") / "rec.db"
    agents = [a for s in together_moa for a in s.agents]
    with StubServer(latency=0.0) as s:
        models = {a: s.model(a) for a in agents}
        for q in (QUERY, SECRET_QUERY):
            r = moakit.run(together_moa, q, models=models, seed=3, store=path)
            assert r.ok, r.error
        yield path, models


def _both_paths(query, models, cache, tmp_path, monkeypatch, offline):
    fast, slow = tmp_path / "fast.db", tmp_path / "slow.db"
    used = []
    real = C.Client._replayed_row
    with monkeypatch.context() as m:
        m.setattr(C.Client, "_replayed_row", lambda self, *a: used.append(1) or real(self, *a))
        r1 = moakit.run(together_moa, query, models=models, seed=3, store=fast, cache=cache, offline=offline)
    assert len(used) == r1.calls_reused > 0  # the row path served every call from the store
    with monkeypatch.context() as m:
        m.setattr(C.Client, "_row_sink", lambda self: None)  # force the OpenTelemetry span path
        r2 = moakit.run(together_moa, query, models=models, seed=3, store=slow, cache=cache, offline=offline)
    assert r1.ok and r2.ok and r1.output == r2.output
    return r1, r2, _rows(fast), _rows(slow)


def _same_rows(rows1, steps1, texts1, rows2, texts2):
    key = lambda r: r["request_key"]  # noqa: E731
    assert len(rows1) == len(rows2) > 0
    for a, b in zip(sorted(rows1, key=key), sorted(rows2, key=key)):
        assert {k: v for k, v in a.items() if k not in VARYING | {"attributes"}} == \
            {k: v for k, v in b.items() if k not in VARYING | {"attributes"}}
        # same keys in the same order, same values but the span ids of this run's earlier calls
        ja, jb = json.loads(a["attributes"]), json.loads(b["attributes"])
        assert list(ja) == list(jb)
        sa, sb = json.loads(ja.pop(A.INPUT_SOURCES, "[]")), json.loads(jb.pop(A.INPUT_SOURCES, "[]"))
        assert ja == jb and len(sa) == len(sb) and set(sa) <= set(r["span_id"] for r in rows1)
        assert a["cached"] == 1 and a["status"] == "UNSET" and a["attempt"] == 0 and a["kind"] == "call"
        assert len(a["span_id"]) == 16 and int(a["span_id"], 16) != 0 and a["span_id"] != b["span_id"]
        assert steps1[a["parent_id"]] == a["trace_id"]  # child of its step span, in the run's trace
        assert a["start_ns"] <= a["end_ns"]
        assert texts1[a["input_hash"]] == texts2[b["input_hash"]]
        assert texts1[a["output_hash"]] == texts2[b["output_hash"]]
    assert len({r["span_id"] for r in rows1}) == len(rows1)


def test_row_path_writes_what_the_span_path_writes(recorded, tmp_path, monkeypatch):
    path, models = recorded
    r1, r2, (rows1, steps1, texts1), (rows2, _, texts2) = _both_paths(QUERY, models, path, tmp_path, monkeypatch,
                                                                       offline=True)
    assert len(rows1) == 19
    _same_rows(rows1, steps1, texts1, rows2, texts2)
    assert r1.calls["output"].tolist() == r2.calls["output"].tolist()
    assert r1.calls["cached"].all() and r1.calls.columns.tolist() == r2.calls.columns.tolist()


def test_row_path_redacts(recorded, tmp_path, monkeypatch):
    path, models = recorded
    _, _, (rows1, steps1, texts1), (rows2, _, texts2) = _both_paths(SECRET_QUERY, models, path, tmp_path,
                                                                     monkeypatch, offline=False)
    assert len(rows1) >= 6  # the first layer at least comes from the store
    _same_rows(rows1, steps1, texts1, rows2, texts2)
    assert not any(SECRET in t for t in texts1.values())
    assert any("OPENAI_API_KEY=" in texts1[r["input_hash"]] for r in rows1)
