"""The page's pipelines on the embedded model: span tree, provenance, seeds, failures."""

import json

import pandas as pd
import pytest

import moakit
from moakit import pipelines
from moakit.steps import Aggregate, Dropout, Propose, Shuffle, Synthesize

Q = "Name one primary colour."


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    return moakit.TraceStore(tmp_path_factory.mktemp("engine") / "t.db")


@pytest.fixture(scope="module")
def together(local_store):
    return moakit.run(pipelines.together_moa, Q, models="local", seed=7, max_tokens=8, store=local_store)


def test_together_moa_span_tree(together, local_store):
    spans = local_store.spans(together.trace_id)
    kinds = spans.kind.value_counts().to_dict()
    assert kinds == {"call": 19, "step": 4, "run": 1}
    run = spans[spans.kind == "run"].iloc[0]
    assert run["name"] == "invoke_workflow together_moa" and pd.isna(run.parent_id)
    steps = spans[spans.kind == "step"]
    assert set(steps.parent_id) == {run.span_id}
    assert list(steps.sort_values("step_index").step) == ["Propose", "Synthesize", "Synthesize", "Aggregate"]
    calls = spans[spans.kind == "call"]
    assert set(calls.parent_id) <= set(steps.span_id)
    assert all(n == "chat local/smollm2" for n in calls.name)
    per_step = calls.groupby("step_index").size().to_dict()
    assert per_step == {0: 6, 1: 6, 2: 6, 3: 1}
    assert together.ok and together.output


def test_call_spans_follow_genai_conventions(together, local_store):
    spans = local_store.spans(together.trace_id)
    call = spans[(spans.kind == "call") & (spans.step == "Aggregate")].iloc[0]
    a = call.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "local/smollm2"
    assert a["gen_ai.request.temperature"] == 0.7 and a["gen_ai.request.max_tokens"] == 8
    assert isinstance(a["gen_ai.request.seed"], int)
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    msgs = json.loads(a["gen_ai.input.messages"])
    assert msgs[0]["role"] == "system" and msgs[-1]["parts"][0]["content"] == Q
    assert "Responses from models:\n1. " in msgs[0]["parts"][0]["content"]
    out = json.loads(a["gen_ai.output.messages"])
    assert out[0]["parts"][0]["content"] == together.output
    # provenance: which call produced each numbered response, in the order shown
    sources = json.loads(a["moakit.input.sources"])
    layer2 = spans[(spans.kind == "call") & (spans.step_index == 2)]
    assert sorted(sources) == sorted(layer2.span_id) and len(sources) == 6


def test_calls_dataframe_columns(together):
    c = together.calls
    for col in ("trace_id", "span_id", "step_index", "step", "agent", "model", "sample", "input_tokens",
                "output_tokens", "cost_usd", "latency_s", "error", "output", "cached"):
        assert col in c.columns
    # the local switch keeps each agent's identity
    assert set(c[c.step == "Propose"].agent) == set(pipelines.PROPOSERS)
    assert (c.model == "local/smollm2").all()
    assert together.cost_usd == 0.0 and together.usage["calls"] == 19


def test_proposers_of_a_layer_overlap_in_time(together):
    c = together.calls
    layer = c[c.step_index == 0]
    # every proposer started before any of them ended: they were in flight together
    assert layer.start_ns.max() < layer.end_ns.min()


@pytest.mark.parametrize("name", [n for n in pipelines.PAGE if n != "together_moa"])
def test_every_page_pipeline_runs_offline_on_the_embedded_model(name, local_store):
    p = pipelines.ALL[name]
    r = moakit.run(p, Q, models="local", seed=1, max_tokens=6, store=local_store)
    assert r.ok, r.error
    spans = local_store.spans(r.trace_id)
    assert (spans.kind == "step").sum() == len(p)
    n_calls = (spans.kind == "call").sum()
    if name == "robust_moa":  # Dropout may drop proposals; the aggregator call is always made
        assert 2 <= n_calls <= pipelines.count_calls(p)
    else:
        assert n_calls == pipelines.count_calls(p)


def test_self_moa_samples_are_distinct(local_store):
    r = moakit.run(pipelines.self_moa, Q, models="local", seed=3, max_tokens=6, store=local_store)
    c = r.calls
    props = c[c.step == "Propose"]
    assert list(props["sample"]) == [0, 1, 2, 3, 4, 5] and set(props.agent) == {"gpt-4.1"}
    assert props.request_key.nunique() == 6  # six samples are six different calls


def test_self_moa_seq_carries_best_so_far(local_store):
    r = moakit.run(pipelines.self_moa_seq, Q, models="local", seed=3, max_tokens=6, store=local_store)
    c = r.calls.set_index("span_id")
    aggs = r.calls[r.calls.step == "Aggregate"].sort_values("step_index")
    first, second = aggs.iloc[0], aggs.iloc[1]
    sources = json.loads(r.store.query("SELECT json_extract(attributes, '$.\"moakit.input.sources\"') FROM spans "
                                       "WHERE span_id = ?", (second.span_id,))[0][0])
    # the second aggregator sees the first aggregate (carried over) followed by 3 new samples
    assert len(sources) == 4 and sources[0] == first.span_id
    assert list(c.loc[sources[1:], "step_index"]) == [2, 2, 2]


def test_seed_makes_shuffle_and_dropout_reproducible(local_store):
    p = [Propose(["a", "b", "c", "d"], max_tokens=4), Shuffle(), Dropout(0.5), Aggregate("e", max_tokens=4)]
    runs = [moakit.run(p, Q, models="local", seed=11, store=local_store) for _ in range(2)]
    other = moakit.run(p, Q, models="local", seed=12, store=local_store)
    steps = [r.steps.set_index("step") for r in (*runs, other)]
    assert steps[0].loc["Shuffle", "permutation"] == steps[1].loc["Shuffle", "permutation"]
    assert steps[0].loc["Dropout", "kept"] == steps[1].loc["Dropout", "kept"]
    assert sorted(steps[0].loc["Shuffle", "permutation"]) == [0, 1, 2, 3]
    assert runs[0].output == runs[1].output  # same seed, same sampled text
    assert other.seed == 12


def test_failed_aggregator_is_an_error_never_a_proposal(store):
    from moakit.testing.stub_server import StubServer

    with StubServer(fault_rate=1.0, faults="500") as bad:
        models = {"p": "local", "agg": bad.model("agg")}
        r = moakit.run([Propose(["p"], max_tokens=4), Aggregate("agg")], Q, models=models, store=store,
                       client_config=moakit.ClientConfig(retries=1, backoff=0.01))
    assert not r.ok and r.output is None and "Aggregate" in r.error
    c = r.calls
    assert c[c.step == "Aggregate"].error.notna().all() and list(c[c.step == "Aggregate"].attempts) == [2]  # 2 attempts
    assert store.runs().set_index("trace_id").loc[r.trace_id, "error"]


def test_failed_proposer_is_dropped_and_recorded(store):
    from moakit.testing.stub_server import StubServer

    with StubServer(fault_rate=1.0, faults="500") as bad:
        models = {"good": "local", "bad": bad.model("bad"), "agg": "local"}
        r = moakit.run([Propose(["good", "bad"], max_tokens=4), Aggregate("agg", max_tokens=4)], Q, models=models,
                       store=store, client_config=moakit.ClientConfig(retries=0))
    assert r.ok and r.output
    c = r.calls
    assert c[(c.agent == "bad")].error.str.contains("InternalServerError|500").all()
    agg = c[c.step == "Aggregate"].iloc[0]
    src = json.loads(store.query("SELECT json_extract(attributes, '$.\"moakit.input.sources\"') FROM spans "
                                 "WHERE span_id=?", (agg.span_id,))[0][0])
    assert src == list(c[c.agent == "good"].span_id)  # only the good proposal was shown


def test_bad_input_fails_before_any_call(store, tmp_path):
    from moakit.errors import ModelError, PipelineError

    cases = [
        (lambda: moakit.run([Propose([])], Q, store=store), PipelineError),
        (lambda: moakit.run([Propose(["a"]), "Vote"], Q, store=store, models="local"), PipelineError),
        (lambda: moakit.run([Propose(["no-such-model"])], Q, store=store), ModelError),
        (lambda: moakit.run([Propose(["gpt-4.1"])], Q, store=store), ModelError),  # no OPENAI_API_KEY
        (lambda: moakit.run(pipelines.moa_lite, "", models="local", store=store), PipelineError),
        (lambda: moakit.run(pipelines.moa_lite, Q, models="local", store=store, max_tokens=0), PipelineError),
    ]
    for make, exc in cases:
        with pytest.raises(exc):
            make()
    assert store.query("SELECT count(*) FROM spans")[0][0] == 0


def test_replaying_a_variant_is_not_recorded_under_the_original_name(together, local_store):
    variant = [*pipelines.together_moa[:-1], Shuffle(), pipelines.together_moa[-1]]
    r = moakit.replay(together.trace_id, store=local_store, pipeline=variant, offline=False)
    runs = local_store.runs().set_index("trace_id")
    assert runs.loc[together.trace_id, "pipeline"] == "together_moa"
    assert runs.loc[r.trace_id, "pipeline"] is None or pd.isna(runs.loc[r.trace_id, "pipeline"])
    assert r.calls_paid == 1 and r.calls_reused == 18
