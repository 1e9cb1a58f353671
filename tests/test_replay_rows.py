"""Replayed calls are written as rows without OpenTelemetry spans (``Client._replayed_row``),
and the engine's run and step spans as ``RowSpan`` s: the rows must be exactly what the span
path (``span_to_row`` of SDK spans) writes, redaction included. With another span processor
installed, everything stays a real OpenTelemetry span."""

from __future__ import annotations

import json

import pytest

import moakit
from moakit import client as C
from moakit.pipelines import together_moa
from moakit.steps import pipeline_to_json
from moakit.testing.stub_server import StubServer
from moakit.tracing import attributes as A
from moakit.tracing.exporter import _dumps
from moakit.tracing.store import SPAN_COLUMNS, TraceStore

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8J9k0" * 2
QUERY = "Name three rivers and say why each matters."
SECRET_QUERY = f"Summarise this config: OPENAI_API_KEY={SECRET} and say hi."
VARYING = {"span_id", "trace_id", "parent_id", "start_ns", "end_ns"}


def _rows(path, where="kind='call' AND cached=1"):
    st = TraceStore(path)
    cols = ", ".join(SPAN_COLUMNS)
    rows = [dict(zip(SPAN_COLUMNS, r)) for r in st.query(f"SELECT {cols} FROM spans WHERE {where}")]
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


def _same_columns(a, b):
    """Assert two rows agree on every column but ids and attributes, and on the attributes'
    keys and order; return both attribute dicts without their input sources, and the sources."""
    assert {k: v for k, v in a.items() if k not in VARYING | {"attributes"}} == \
        {k: v for k, v in b.items() if k not in VARYING | {"attributes"}}
    ja, jb = json.loads(a["attributes"]), json.loads(b["attributes"])
    assert list(ja) == list(jb)
    for raw, parsed in ((a["attributes"], ja), (b["attributes"], jb)):  # the text itself, byte for byte,
        assert raw == _dumps(parsed)  # as span_to_row's encoder writes it (rows assembled from pieces too)
    sa, sb = json.loads(ja.pop(A.INPUT_SOURCES, "[]")), json.loads(jb.pop(A.INPUT_SOURCES, "[]"))
    return ja, jb, sa, sb


def _same_rows(rows1, steps1, texts1, rows2, texts2):
    key = lambda r: r["request_key"]  # noqa: E731
    assert len(rows1) == len(rows2) > 0
    for a, b in zip(sorted(rows1, key=key), sorted(rows2, key=key)):
        # same keys in the same order, same values but the span ids of this run's earlier calls
        ja, jb, sa, sb = _same_columns(a, b)
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


IDS = (A.RESPONSES_IN, A.RESPONSES_OUT)  # JSON lists of this run's span ids


def _same_engine_rows(fast, slow, n_calls, hooked=False):
    """The run's and steps' rows of the row path (RowSpan) equal the SDK path's, ids aside."""
    (runs1, _, texts1), (runs2, _, texts2) = _rows(fast, "kind='run'"), _rows(slow, "kind='run'")
    (steps1, _, _), (steps2, _, _) = _rows(fast, "kind='step'"), _rows(slow, "kind='step'")
    (calls1, _, _) = _rows(fast, "kind='call'")
    assert len(runs1) == len(runs2) == 1 and len(steps1) == len(steps2) > 0 and len(calls1) == n_calls
    run1, run2 = runs1[0], runs2[0]
    same = lambda a, b: {k: v for k, v in a.items() if k not in VARYING | {"attributes"}} == \
        {k: v for k, v in b.items() if k not in VARYING | {"attributes"}}  # noqa: E731
    assert same(run1, run2) and run1["parent_id"] is None and run1["status"] == "OK"
    assert json.loads(run1["attributes"]) == json.loads(run2["attributes"])
    pipeline_json = json.dumps(pipeline_to_json(together_moa))
    if hooked:  # the redaction hook of the test below reached the run's repeated attributes too
        pipeline_json = pipeline_json.replace("wizardlm", "W").replace("chat", "CHAT")
        assert "wizardlm" not in run1["attributes"] and all("wizardlm" not in s["attributes"] for s in steps1)
    assert json.loads(run1["attributes"])[A.PIPELINE] == pipeline_json
    assert list(json.loads(run1["attributes"])) == list(json.loads(run2["attributes"]))
    assert texts1[run1["output_hash"]] == texts2[run2["output_hash"]]
    assert run1["start_ns"] <= run1["end_ns"]
    step_ids = set()
    for a, b in zip(sorted(steps1, key=lambda r: r["step_index"]), sorted(steps2, key=lambda r: r["step_index"])):
        assert same(a, b)
        ja, jb = json.loads(a["attributes"]), json.loads(b["attributes"])
        assert list(ja) == list(jb)
        for k in IDS:
            assert len(json.loads(ja.pop(k))) == len(json.loads(jb.pop(k)))
        assert ja == jb
        assert a["parent_id"] == run1["span_id"] and a["trace_id"] == run1["trace_id"]
        assert run1["start_ns"] <= a["start_ns"] <= a["end_ns"] <= run1["end_ns"]
        step_ids.add(a["span_id"])
    for c in calls1:  # every call is a child of one of this run's steps, in the run's trace
        assert c["parent_id"] in step_ids and c["trace_id"] == run1["trace_id"]
    ids = [r["span_id"] for r in runs1 + steps1 + calls1]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 and int(i, 16) for i in ids)
    assert len(run1["trace_id"]) == 32 and int(run1["trace_id"], 16)


def test_engine_spans_as_rows_equal_sdk_spans_replayed(recorded, tmp_path, monkeypatch):
    path, models = recorded
    _both_paths(QUERY, models, path, tmp_path, monkeypatch, offline=True)
    _same_engine_rows(tmp_path / "fast.db", tmp_path / "slow.db", 19)


def test_engine_spans_as_rows_equal_sdk_spans_paid_and_redacted(recorded, tmp_path, monkeypatch):
    """Paid calls (not from the store) under RowSpan steps, and a query holding a secret: the
    run row's attributes (the query, redacted) and the steps' rows are the same on both paths."""
    _, models = recorded
    agents = [a for s in together_moa for a in s.agents]
    rows = {}
    with StubServer(latency=0.0) as s:
        live = {a: s.model(a) for a in agents}
        for label, sink in (("fast", None), ("slow", lambda self: None)):
            with monkeypatch.context() as m:
                if sink is not None:
                    m.setattr(C.Client, "_row_sink", sink)
                r = moakit.run(together_moa, SECRET_QUERY, models=live, seed=3, store=tmp_path / f"{label}.db")
            assert r.ok and r.calls_paid == 19
            rows[label] = r
    assert rows["fast"].output == rows["slow"].output
    _same_engine_rows(tmp_path / "fast.db", tmp_path / "slow.db", 19)
    st = TraceStore(tmp_path / "fast.db")
    assert not any(SECRET in t for (t,) in st.query("SELECT text FROM texts"))
    assert not any(SECRET in (a or "") for (a,) in st.query("SELECT attributes FROM spans"))
    st.close()


def test_another_span_processor_gets_real_spans(recorded, tmp_path):
    """With a second processor on the tracer, runs, steps and calls (replayed and paid) are SDK
    spans that processor sees, and the store gets the same tree."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from moakit.engine import tracer_for

    path, models = recorded
    out = TraceStore(tmp_path / "other.db")
    exporter = InMemorySpanExporter()
    tracer_for(out).span_processor.add_span_processor(SimpleSpanProcessor(exporter))
    r = moakit.run(together_moa, QUERY, models=models, seed=3, store=out, cache=path, offline=True)
    assert r.ok and r.calls_reused == 19
    spans = exporter.get_finished_spans()
    kinds = sorted(s.attributes[A.SPAN_KIND] for s in spans)
    assert kinds.count("run") == 1 and kinds.count("call") == 19 and kinds.count("step") == len(together_moa)
    ids = {format(s.context.span_id, "016x") for s in spans}
    assert {r[0] for r in out.query("SELECT span_id FROM spans")} == ids
    run = next(s for s in spans if s.attributes[A.SPAN_KIND] == "run")
    for s in spans:
        assert s.context.trace_id == run.context.trace_id
        if s is not run:
            assert s.parent is not None and format(s.parent.span_id, "016x") in ids
    out.close()


def test_clean_id_equals_clean():
    """Ids, request keys and JSON lists of ids skip the redaction regexes: the same result as
    the full redaction, with and without a user's hook and an exact secret."""
    import json as js
    import random as rnd

    from moakit.tracing import redact as R
    from moakit.tracing.exporter import _clean, _clean_full, _clean_id

    rng = rnd.Random(5)
    hexes = ["".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(1, 40))) + rng.choice(["", ":0", ":12"])
             for _ in range(500)]
    samples = hexes + [js.dumps(hexes[i:i + rng.randint(0, 6)]) for i in range(0, 400, 7)] + [
        "sk-0123456789abcdef0123", "abc", "", "deadbeef" * 5, '["deadbeefdeadbeef", "00"]', "[]", ' "', "bearer x"]
    for v in samples:
        assert _clean_id(v) == _clean(v) == _clean_full(v)
    R.add_secret("deadbeefdeadbeef")
    R.add_redactor(lambda t: t.replace("0", "O"))
    try:
        for v in samples:
            assert _clean_id(v) == _clean(v) == _clean_full(v)
        assert "[REDACTED]" in _clean_id("00deadbeefdeadbeef00")
        assert "[REDACTED]" in _clean('["deadbeefdeadbeef"]')
    finally:
        R.clear_redactors()
        R._extra_secrets.discard("deadbeefdeadbeef")
    R.add_secret("0123456789ab")  # an exact secret alone (no hook)
    try:
        assert _clean('["0123456789abcd"]') == _clean_full('["0123456789abcd"]') == '["[REDACTED]cd"]'
    finally:
        R._extra_secrets.discard("0123456789ab")


def test_replayed_runs_are_in_the_file_when_run_and_run_batch_return(recorded, tmp_path):
    """The run span of a run that paid for nothing rides in a later commit (no run-per-commit in a
    replayed batch), but run / run_batch return only once every row is committed: another
    connection sees them all."""
    path, models = recorded
    out = tmp_path / "later.db"
    r = moakit.run(together_moa, QUERY, models=models, seed=3, store=out, cache=path, offline=True)
    assert r.ok and r.calls_paid == 0
    other = TraceStore(out)
    assert other.query("SELECT count(*) FROM spans WHERE kind='run' AND trace_id=?", (r.trace_id,))[0][0] == 1
    assert other.query("SELECT count(*) FROM spans WHERE trace_id=?", (r.trace_id,))[0][0] == 1 + len(together_moa) + 19
    other.close()
    df = moakit.run_batch(together_moa, [QUERY] * 5, models=models, seed=3, store=out, cache=path, offline=True,
                          progress=False)
    assert df["error"].isna().all() and (df["calls_paid"] == 0).all() and (df["calls_reused"] == 19).all()
    other = TraceStore(out)
    for t in df["trace_id"]:
        n_calls = other.query("SELECT count(*) FROM spans WHERE trace_id=? AND kind='call'", (t,))[0][0]
        assert other.query("SELECT count(*) FROM spans WHERE trace_id=? AND kind='run'", (t,))[0][0] == 1
        assert n_calls == df.loc[df["trace_id"] == t, "calls"].iloc[0]
    other.close()


def _same_paid_rows(fast, slow):
    """Paid calls and failed attempts: the RowSpan rows equal the SDK spans' rows, ids aside."""
    (c1, steps1, t1), (c2, _, t2) = _rows(fast, "kind='call'"), _rows(slow, "kind='call'")
    key = lambda r: (r["request_key"], r["attempt"])  # noqa: E731
    assert len(c1) == len(c2) > 0
    for a, b in zip(sorted(c1, key=key), sorted(c2, key=key)):
        ja, jb, sa, sb = _same_columns(a, b)
        assert (ja.pop(A.RESPONSE_ID, None) is None) == (jb.pop(A.RESPONSE_ID, None) is None)  # the stub counts
        assert len(sa) == len(sb) and ja == jb
        assert steps1[a["parent_id"]] == a["trace_id"]
        assert a["start_ns"] <= a["end_ns"]
        for col in ("input_hash", "output_hash"):
            assert (a[col] is None) == (b[col] is None) and (a[col] is None or t1[a[col]] == t2[b[col]])
    return c1


def _paid_both_paths(tmp_path, monkeypatch, query, stub_options, **kwargs):
    agents = [a for s in together_moa for a in s.agents]
    out = {}
    with StubServer(latency=0.0, **stub_options) as s:
        live = {a: s.model(a) for a in agents}
        built = []  # paid rows assembled by Client._paid_row on the fast path
        real = C.Client._paid_row
        for label, sink in (("fast", None), ("slow", lambda self: None)):
            with monkeypatch.context() as m:
                if sink is not None:
                    m.setattr(C.Client, "_row_sink", sink)
                else:
                    m.setattr(C.Client, "_paid_row", lambda self, *a: built.append(1) or real(self, *a))
                out[label] = moakit.run(together_moa, query, models=live, seed=3, store=tmp_path / f"{label}.db",
                                        **kwargs)
    assert out["fast"].output == out["slow"].output and out["fast"].error == out["slow"].error
    assert len(built) == out["fast"].calls_paid > 0
    return _same_paid_rows(tmp_path / "fast.db", tmp_path / "slow.db")


def test_paid_call_rows_equal_sdk_rows_with_a_secret_and_a_hook(tmp_path, monkeypatch):
    from moakit.tracing import redact as R

    R.add_redactor(lambda t: t.replace("wizardlm", "W").replace("chat", "CHAT"))
    try:
        rows = _paid_both_paths(tmp_path, monkeypatch, SECRET_QUERY, {})
        _same_engine_rows(tmp_path / "fast.db", tmp_path / "slow.db", 19, hooked=True)
    finally:
        R.clear_redactors()
    assert len(rows) == 19 and all(r["cached"] == 0 and r["status"] == "OK" for r in rows)
    assert any(r["agent"] == "W-2-8x22b" for r in rows)
    assert all(json.loads(r["attributes"])[A.OPERATION_NAME] == "CHAT" for r in rows)
    st = TraceStore(tmp_path / "fast.db")
    assert not any(SECRET in t for (t,) in st.query("SELECT text FROM texts"))
    st.close()


def test_failed_attempts_rows_equal_sdk_rows(tmp_path, monkeypatch):
    """Persistent faults (the same requests fail on both paths): error rows, retries, dropped agents."""
    rows = _paid_both_paths(tmp_path, monkeypatch, QUERY, {"persistent_fault_rate": 0.3, "seed": 1},
                            client_config=moakit.ClientConfig(retries=1, backoff=0.0))
    failed = [r for r in rows if r["status"] == "ERROR"]
    assert failed and all(r["error"] and r["output_hash"] is None for r in failed)
    assert any(r["attempt"] == 2 for r in failed)
