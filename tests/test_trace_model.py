"""What a trace holds, on the GenAI conventions as they stand (semantic-conventions-genai v0.1.0):
one ``chat`` span per logical call with its failed attempts as children, the run an
``invoke_workflow`` span named after its pipeline, what each aggregating call was shown (in
which order, whether that order was drawn at random, the texts as shown), full-text search, and
the same spans handed to the user's OpenTelemetry exporter."""

from __future__ import annotations

import json

import pandas as pd

import moakit
from moakit import Aggregate, Map, Propose, Shuffle, Synthesize
from moakit.store import schema as A
from moakit.testing.stub_server import StubServer


def _models(stub, agents):
    return {a: stub.model(a) for a in agents}


def test_run_and_call_spans_follow_the_conventions(stub, tmp_path):
    pipe = [Propose(["a", "b"], max_tokens=8), Aggregate("c", max_tokens=8)]
    r = moakit.run(pipe, "hello", models=_models(stub, "abc"), seed=1, store=tmp_path / "t.db", name="tiny")
    spans = r.store.spans(r.trace_id)
    run = spans[spans.kind == "run"].iloc[0]
    assert run["name"] == "invoke_workflow tiny"
    assert run.attributes[A.OPERATION_NAME] == "invoke_workflow" and run.attributes[A.AGENT_NAME] == "tiny"
    calls = spans[spans.kind == "call"]
    assert len(calls) == 3 and set(calls.name) == {"chat openai/a", "chat openai/b", "chat openai/c"}
    for a in calls.attributes:
        assert a[A.OPERATION_NAME] == "chat" and a[A.PROVIDER_NAME] == "openai"
        assert a[A.RESPONSE_FINISH_REASONS] == ["stop"]
        out = json.loads(a[A.OUTPUT_MESSAGES])
        assert out[0]["role"] == "assistant" and "finish_reason" not in out[0]  # deprecated there
    assert "workflow.name" not in json.dumps(list(run.attributes))  # replaced by gen_ai.agent.name


def test_retries_are_attempts_inside_one_call(tmp_path):
    with StubServer(fault_rate=0.6, faults="429,500", seed=3) as s:
        r = moakit.run([Propose(["a"] * 6, max_tokens=8)], "q", models=_models(s, "a"), seed=2,
                       store=tmp_path / "r.db", client_config=moakit.ClientConfig(retries=6, backoff=0.0,
                                                                                 max_retry_after=0.01))
        requests = s.stats()["requests"]
    calls, att = r.calls, r.store.attempts(r.trace_id)
    assert len(calls) == 6 and calls.error.isna().all()  # one row per logical call
    assert calls.attempts.sum() == len(att) == requests > 6  # one row per attempt, each one a request
    assert att.final.sum() == 6 and att[~att.final].error.notna().all()
    assert att[~att.final].retry_reason.isin(["retry-after", "backoff"]).all()
    for sid, group in att.groupby("call_span_id"):
        call = calls[calls.span_id == sid].iloc[0]
        assert list(group.sort_values("attempt").attempt) == list(range(1, call.attempts + 1))
        assert group.start_ns.min() >= call.start_ns and group.end_ns.max() <= call.end_ns


def test_aggregating_calls_record_what_they_were_shown(stub, tmp_path):
    pipe = [Propose(["a", "b", "c"], max_tokens=8), Shuffle(), Synthesize(["a", "b"], max_tokens=8),
            Map(str.upper), Aggregate("c", max_tokens=8)]
    r = moakit.run(pipe, "hi", models=_models(stub, "abc"), seed=5, store=tmp_path / "s.db")
    inputs = r.store.aggregation_inputs(r.trace_id)
    syn = inputs[inputs.step == "Synthesize"]
    agg = inputs[inputs.step == "Aggregate"]
    assert syn.randomized.all() and (syn.shuffle_step == 1).all()  # after the Shuffle
    assert not agg.randomized.any()  # the Synthesize layer answered in agent order: not random
    assert (syn.shown_text == syn.source_text).all()
    assert (agg.shown_text == agg.source_text.str.upper()).all()  # Map changed what was shown
    perm = r.store.steps(r.trace_id).set_index("step_index").permutation[1]
    proposers = ["a", "b", "c"]
    first_call = syn[syn.span_id == syn.span_id.iloc[0]].sort_values("position")
    assert list(first_call.source_agent) == [proposers[i] for i in perm]
    assert inputs.pipeline.nunique(dropna=False) == 1 and inputs.query_hash.nunique() == 1


def test_search_finds_prompts_and_outputs(stub, tmp_path):
    store = moakit.TraceStore(tmp_path / "f.db")
    moakit.run([Propose(["a"], max_tokens=8)], "zebras and giraffes", models=_models(stub, "a"), store=store)
    hits = store.search("giraffes")  # the prompt, and the stub's answer that quotes it
    assert set(hits.matched) == {"prompt", "output"} and all("[giraffes]" in x for x in hits.snippet)
    moakit.run([Propose(["a"], max_tokens=8)], "okapis only", models=_models(stub, "a"), store=store)
    assert len(store.search("okapis")) == 2  # texts written since the last search are indexed on the next
    digest = store.calls().output.iloc[-1].split()[2]  # "[a] answer <digest> to: ..." (the stub's answer)
    assert set(store.search(digest).matched) == {"output"}
    assert store.search("nothing-like-this").empty


def test_mirrored_spans_are_the_rows(stub, tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    r = moakit.run([Propose(["a", "b"], max_tokens=8), Aggregate("c", max_tokens=8)], "q",
                   models=_models(stub, "abc"), store=tmp_path / "o.db", otel=exporter)
    got = {format(s.context.span_id, "016x"): s for s in exporter.get_finished_spans()}
    rows = r.store.spans(r.trace_id)
    assert set(got) == set(rows.span_id)
    for row in rows.itertuples():
        s = got[row.span_id]
        assert s.name == row.name and s.start_time == row.start_ns and s.end_time == row.end_ns
        assert (format(s.parent.span_id, "016x") if s.parent else None) == (None if pd.isna(row.parent_id)
                                                                              else row.parent_id)
        assert s.attributes[A.SPAN_KIND] == row.kind
    assert {s.instrumentation_scope.schema_url for s in got.values()} == {A.SCHEMA_URL}
