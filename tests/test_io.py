"""Issue 3: importing AlpacaEval outputs as recorded Propose calls, and exporting traces to
JSONL, Parquet and an OTLP/HTTP receiver on 127.0.0.1 that decodes what it gets."""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import moakit
from moakit import Aggregate, Propose, Shuffle
from moakit.pipelines import PROPOSERS, together_moa
from moakit.testing.stub_server import StubServer
from moakit.store import schema as A
from moakit.store.io import TraceIOError, iter_records
from moakit.store.store import TraceStore

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"
if not ALPACA.is_dir():
    ALPACA = Path("/work/shared/data/alpaca_eval")
GENERATORS = ["Qwen1.5-110B-Chat", "Qwen1.5-72B-Chat", "Meta-Llama-3-70B-Instruct", "Mixtral-8x22B-Instruct-v0.1",
              "dbrx-instruct"]
FAKE_KEY = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

SMALL = [
    {"instruction": "What is 2 + 2?", "output": "4", "generator": "tiny-gen", "dataset": "unit"},
    {"instruction": "Name a fruit.", "output": "An apple.", "generator": "tiny-gen", "dataset": "unit"},
    {"instruction": "Say hi.", "output": "Hi!", "generator": "tiny-gen", "dataset": "unit"},
]


def write_outputs(path: Path, records) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


# ---- import: a small file ---------------------------------------------------------------------
def test_import_small_file_as_propose_calls(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    f = write_outputs(tmp_path / "model_outputs.json", SMALL)
    assert store.import_outputs(f) == 3
    calls = store.calls()
    assert len(calls) == 3
    assert set(calls.agent) == {"tiny-gen"} and set(calls.model) == {"recorded/tiny-gen"}
    assert set(calls.step) == {"Propose"} and set(calls.step_index) == {0} and set(calls["sample"]) == {0}
    assert not calls["cached"].any() and calls["error"].isna().all()
    assert sorted(calls.output) == sorted(r["output"] for r in SMALL)
    assert all(k.endswith(":0") for k in calls.request_key)
    assert store.runs().empty, "an import is not a run"
    kinds = dict(store.query("SELECT kind, count(*) FROM spans GROUP BY kind"))
    assert kinds == {"call": 3, "import": 1}
    parent = store.query("SELECT span_id FROM spans WHERE kind='import'")[0][0]
    assert set(calls.parent_id) == {parent}
    assert store.recorded_agents() == {"tiny-gen": "recorded/tiny-gen"}
    # the prompt is stored as a live Propose call's would be, once per distinct text
    attrs = store.full_attributes(dict(zip(*_row(store, calls.span_id[0]))))
    msgs = json.loads(attrs[A.INPUT_MESSAGES])
    assert msgs[0]["role"] == "user" and msgs[0]["parts"][0]["content"] in {r["instruction"] for r in SMALL}
    assert attrs[A.REQUEST_TEMPERATURE] == 0.7 and attrs[A.REQUEST_MAX_TOKENS] == 2048
    # importing again writes nothing; under another agent name it does
    assert store.import_outputs(f) == 0
    assert store.import_outputs(tmp_path, agent="other") == 3  # a folder holding model_outputs.json
    assert store.recorded_agents() == {"tiny-gen": "recorded/tiny-gen", "other": "recorded/tiny-gen"}


def _row(store, span_id):
    cur = store.conn.execute("SELECT * FROM spans WHERE span_id = ?", (span_id,))
    return [d[0] for d in cur.description], cur.fetchone()


@pytest.mark.parametrize("content, message", [
    (None, "no outputs file"),
    ("{not json", "is not valid JSON"),
    ('{"instruction": "x", "output": "y"}', "holds a JSON dict"),
    ("[]", "empty list"),
    ('[{"instruction": "x", "generator": "g"}]', "record 0 has no output"),
    ('[{"output": "y", "generator": "g"}]', "record 0 has no instruction"),
    ('[{"instruction": "x", "output": "y"}]', "record 0 has no generator"),
    ('[{"instruction": "x", "output": "y", "generator": "g"}, 5]', "record 1 is a int"),
])
def test_import_errors_are_clear_and_write_nothing(tmp_path, content, message):
    store = TraceStore(tmp_path / "t.db")
    f = tmp_path / "model_outputs.json"
    if content is not None:
        f.write_text(content)
    with pytest.raises(TraceIOError, match=message):
        store.import_outputs(f)
    assert store.query("SELECT count(*) FROM spans")[0][0] == 0


def test_pipeline_over_imported_outputs_pays_only_the_aggregator(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    f = write_outputs(tmp_path / "a.json", SMALL)
    store.import_outputs(f, agent="prop-a")
    store.import_outputs(f, agent="prop-b")
    pipe = [Propose(["prop-a", "prop-b"]), Shuffle(), Aggregate("aggregator", max_tokens=16)]
    with StubServer() as s:
        # a seed and a run-wide max_tokens cap do not stop the imported outputs from being served
        r = moakit.run(pipe, "Name a fruit.", models={"aggregator": s.model("agg")}, cache=store, store=store,
                       seed=5, max_tokens=16)
        assert s.stats()["requests"] == 1
    assert r.ok, r.error
    assert (r.calls_paid, r.calls_reused) == (1, 2)
    c = r.calls
    assert c.set_index("agent").loc[["prop-a", "prop-b"], "cached"].all()
    assert set(c[c.step == "Propose"].model) == {"recorded/tiny-gen"}
    shown = store.aggregation_inputs(r.trace_id)
    assert sorted(shown.source_text) == ["An apple.", "An apple."]
    assert set(shown.source_agent) == {"prop-a", "prop-b"}
    # a query with no imported output fails before any call, naming what is missing
    with pytest.raises(moakit.ReplayMiss, match="prop-a.*recorded/tiny-gen.*import_outputs"):
        moakit.run(pipe, "Not imported", models={"aggregator": "local"}, cache=store, store=store)


@pytest.mark.skipif(not ALPACA.is_dir(), reason="AlpacaEval outputs (../shared/data/alpaca_eval) not present")
def test_import_alpaca_eval_proposers_and_aggregate_locally(tmp_path):
    store = TraceStore(tmp_path / "alpaca.db")
    records = {}
    for g in GENERATORS:
        path = ALPACA / g / "model_outputs.json"
        records[g] = json.loads(path.read_text(encoding="utf-8"))
        t = time.perf_counter()
        assert store.import_outputs(path) == 805
        print(f"\nimported {g}: 805 outputs in {time.perf_counter() - t:.3f} s", end="")
    counts = dict(store.query("SELECT agent, count(*) FROM spans WHERE kind='call' GROUP BY agent"))
    assert counts == {g: 805 for g in GENERATORS}
    assert set(store.recorded_agents()) == set(GENERATORS)

    # the three prompts with the shortest proposals keep the embedded aggregator's prompt small
    by_len = sorted(range(805), key=lambda i: sum(len(records[g][i]["output"]) for g in GENERATORS))[:3]
    prompts = [records[GENERATORS[0]][i]["instruction"] for i in by_len]
    pipe = [Propose(GENERATORS), Aggregate("aggregator")]
    t = time.perf_counter()
    df = moakit.run_batch(pipe, prompts, models={"aggregator": "local"}, cache=store, store=store, max_tokens=12,
                          progress=False)
    print(f"\nlocal Aggregate over 5 imported proposers x 3 prompts: {time.perf_counter() - t:.1f} s")
    assert df["error"].isna().all(), df["error"].tolist()
    assert df["output"].notna().all()
    assert df["calls_paid"].tolist() == [1, 1, 1] and df["calls_reused"].tolist() == [5, 5, 5]
    for tid, i in zip(df.trace_id, by_len):
        shown = store.aggregation_inputs(tid)
        assert len(shown) == 5
        want = {g: records[g][i]["output"] for g in GENERATORS}
        assert dict(zip(shown.source_agent, shown.source_text)) == want


# ---- export -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported_store(tmp_path_factory):
    """Together MoA (19 calls) on the stub server with a key-like string in the query, plus a
    small import: (store, run Result)."""
    d = tmp_path_factory.mktemp("export")
    store = TraceStore(d / "t.db")
    with StubServer() as s:
        r = moakit.run(together_moa, f"My key is {FAKE_KEY}; explain MoA.", models={a: s.model(a) for a in PROPOSERS},
                       store=store, seed=1)
    assert r.ok, r.error
    store.import_outputs(write_outputs(d / "small.json", SMALL))
    return store, r


def _expected(store, trace_id=None):
    df = store.spans(trace_id)
    return {row["span_id"]: row for row in df.to_dict("records")}


def test_jsonl_round_trip(exported_store, tmp_path):
    store, r = exported_store
    out = tmp_path / "spans.jsonl"
    n = store.export(out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert n == len(lines) == 24 + 4
    recs = [json.loads(line) for line in lines]
    want = _expected(store)
    assert {rec["span_id"] for rec in recs} == set(want)
    for rec in recs:
        w = want[rec["span_id"]]
        for col in ("trace_id", "parent_id", "name", "kind", "start_ns", "end_ns", "status", "step", "agent",
                    "model", "input_tokens", "output_tokens", "request_key"):
            assert rec[col] == (None if w[col] != w[col] else w[col]), col  # NaN -> None
        for k, v in w["attributes"].items():
            assert rec["attributes"][k] == v, k
    calls = {rec["span_id"]: rec for rec in recs if rec["kind"] == "call"}
    stored = store.calls()
    assert {sid: calls[sid]["output"] for sid in stored.span_id} == dict(zip(stored.span_id, stored.output))
    call = next(rec for rec in recs if rec["kind"] == "call" and rec["step"] == "Aggregate")
    a = call["attributes"]
    assert a[A.OPERATION_NAME] == "chat" and a[A.REQUEST_MODEL] == "openai/qwen1.5-110b-chat"
    assert a[A.USAGE_INPUT_TOKENS] == call["input_tokens"] > 0 and a[A.CACHED] is False
    stored_out = stored.set_index("span_id").loc[call["span_id"], "output"]
    assert json.loads(a[A.OUTPUT_MESSAGES])[0]["parts"][0]["content"] == stored_out == call["output"]
    assert json.loads(a[A.INPUT_SOURCES]) and A.SYSTEM_INSTRUCTIONS in a or A.INPUT_MESSAGES in a
    # one trace only, by prefix
    assert store.export(tmp_path / "one.jsonl", trace_id=r.trace_id[:6]) == 24


def test_parquet_round_trip(exported_store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pandas as pd

    store, r = exported_store
    out = tmp_path / "spans.parquet"
    assert store.export(out) == 28
    table = pq.read_table(out)
    assert table.num_rows == 28
    for col in ("trace_id", "span_id", "parent_id", "kind", "model", "input_tokens", "cached", "output", "attributes"):
        assert col in table.column_names
    jl = {rec["span_id"]: rec for rec in iter_records(store)}
    rows = table.to_pylist()
    assert {row["span_id"] for row in rows} == set(jl)
    for row in rows:
        rec = jl[row["span_id"]]
        assert json.loads(row.pop("attributes")) == rec["attributes"]
        assert row == {k: v for k, v in rec.items() if k != "attributes"}
    df = pd.read_parquet(out)
    calls = df[df.kind == "call"]
    assert len(calls) == 19 + 3
    run_calls = calls[calls.trace_id == r.trace_id]
    assert run_calls.input_tokens.sum() == r.calls.input_tokens.sum()
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}') WHERE kind = 'call'").fetchone()[0]
    assert got == 22


def test_exports_hold_no_secret(exported_store, tmp_path):
    store, r = exported_store
    stub_key = "sk-stub-not-a-real-key-000000"
    raw = store.path.read_bytes()
    assert FAKE_KEY.encode() not in raw, "the store is redacted on write"
    store.export(tmp_path / "s.jsonl")
    store.export(tmp_path / "s.parquet")
    for f in ("s.jsonl", "s.parquet"):
        data = (tmp_path / f).read_bytes()
        assert FAKE_KEY.encode() not in data and stub_key.encode() not in data, f
    assert "[REDACTED]" in (tmp_path / "s.jsonl").read_text()
    with OTLPReceiver() as rx:
        store.export(rx.endpoint, trace_id=r.trace_id)
    assert FAKE_KEY.encode() not in rx.raw and stub_key.encode() not in rx.raw


def test_export_format_errors(exported_store, tmp_path):
    store, _ = exported_store
    with pytest.raises(TraceIOError, match="cannot tell the export format"):
        store.export(tmp_path / "x.csv")
    with pytest.raises(TraceIOError, match="unknown export format"):
        store.export(tmp_path / "x", format="xml")
    with pytest.raises(KeyError, match="no trace"):
        store.export(tmp_path / "x.jsonl", trace_id="ffffffffffff")


# ---- OTLP ---------------------------------------------------------------------------------
class OTLPReceiver:
    """A minimal OTLP/HTTP receiver on 127.0.0.1 that decodes ExportTraceServiceRequest protobufs."""

    def __init__(self):
        self.requests = []
        self.raw = b""

    def __enter__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest, ExportTraceServiceResponse)

        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                rx.raw += body
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                rx.requests.append((self.path, self.headers.get("Content-Type"), req))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def spans(self):
        return [(rs, sp) for _, _, req in self.requests for rs in req.resource_spans for ss in rs.scope_spans
                for sp in ss.spans]

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind)


def test_otlp_export_reaches_a_local_receiver(exported_store):
    store, r = exported_store
    with OTLPReceiver() as rx:
        n = store.export(rx.endpoint, trace_id=r.trace_id)
    assert n == 24
    assert all(path == "/v1/traces" and ctype == "application/x-protobuf" for path, ctype, _ in rx.requests)
    got = rx.spans()
    assert len(got) == 24
    resource = {a.key: _value(a.value) for a in got[0][0].resource.attributes}
    assert resource["service.name"] == "moakit"
    spans = {sp.span_id.hex(): sp for _, sp in got}
    assert {sp.trace_id.hex() for sp in spans.values()} == {r.trace_id}
    stored = store.spans(r.trace_id).set_index("span_id")
    assert set(spans) == set(stored.index)
    # the tree: run -> 4 steps -> 19 calls, with the recorded ids and times
    roots = [sp for sp in spans.values() if not sp.parent_span_id]
    assert len(roots) == 1 and roots[0].name == "invoke_workflow together_moa"
    assert {s.schema_url for s, _ in got} == {"https://opentelemetry.io/schemas/1.45.0"}
    steps = [sp for sp in spans.values() if sp.parent_span_id == roots[0].span_id]
    assert sorted(sp.name for sp in steps) == ["step aggregate", "step propose", "step synthesize", "step synthesize"]
    step_ids = {sp.span_id for sp in steps}
    calls = [sp for sp in spans.values() if sp.parent_span_id in step_ids]
    assert len(calls) == 19
    for sid, sp in spans.items():
        assert sp.start_time_unix_nano == stored.loc[sid, "start_ns"] and sp.end_time_unix_nano == stored.loc[sid, "end_ns"]
        assert sp.status.code == {"UNSET": 0, "OK": 1, "ERROR": 2}[stored.loc[sid, "status"]]
    assert roots[0].status.code == 1 and all(sp.status.code == 1 for sp in calls)
    by_id = r.calls.set_index("span_id")
    for sp in calls:
        attrs = {a.key: _value(a.value) for a in sp.attributes}
        sid = sp.span_id.hex()
        assert sp.kind == 3  # SPAN_KIND_CLIENT
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == by_id.loc[sid, "model"] and sp.name == f"chat {attrs['gen_ai.request.model']}"
        assert attrs["gen_ai.usage.input_tokens"] == by_id.loc[sid, "input_tokens"] > 0
        assert attrs["gen_ai.usage.output_tokens"] == by_id.loc[sid, "output_tokens"]
        assert attrs["gen_ai.request.temperature"] == 0.7 and attrs["gen_ai.provider.name"] == "openai"
        assert attrs["moakit.agent"] == by_id.loc[sid, "agent"] and attrs["moakit.cached"] is False
        out = json.loads(attrs["gen_ai.output.messages"])
        assert out[0]["parts"][0]["content"] == by_id.loc[sid, "output"]
    run_attrs = {a.key: _value(a.value) for a in roots[0].attributes}
    assert run_attrs["gen_ai.operation.name"] == "invoke_workflow"
    assert run_attrs["moakit.output"] == store.runs().set_index("trace_id").loc[r.trace_id, "output"]


def test_otlp_export_to_nothing_fails_clearly(exported_store):
    import socket

    store, r = exported_store
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TraceIOError, match="did not accept"):
        store.export(f"http://127.0.0.1:{port}", trace_id=r.trace_id, timeout=1)
