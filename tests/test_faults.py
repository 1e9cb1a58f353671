"""Provider faults (issue 7, item 1): a batch of ~1,000 calls through litellm's real HTTP path
to the fault-injecting STUB server (moakit.testing.stub_server) at a 10% fault rate.

The stub injects, per attempt, 429 with Retry-After, 500, 503, a hang past the client's
timeout, a connection reset, malformed JSON and an empty choice list; on top, a small share
of requests fails on *every* attempt (a hash of the request picks them), so some proposers
and some aggregators finally fail. What we check, from the trace file and the stub's own
counters:

* the batch completes, every prompt has either an answer or an error, never both;
* every attempt the stub saw is an attempt of a call (litellm's own retries are off): one call
  span per logical call, a child span per failed attempt before its last; every failed attempt
  is an error span with ``error.type``, and the fault counts match the error spans;
* transient faults are retried, never beyond the budget (``retries + 1`` attempts);
* Retry-After is honoured: the next attempt starts at least that long after the 429 ended;
* a proposer that finally fails is dropped, recorded on its step, and never shown to the
  aggregator; an aggregator that finally fails leaves the prompt with ``error`` and no output
  (never a proposer's answer passed off as the result).
"""

from __future__ import annotations

import json
import time

import pytest

import moakit
from moakit import Aggregate, ClientConfig, Propose, TraceStore
from moakit.testing.stub_server import StubServer

N_PROMPTS = 334  # x (2 proposers + 1 aggregator) = 1,002 calls before retries
FAULT_RATE = 0.10
PERSISTENT_RATE = 0.015
RETRY_AFTER = 0.5  # seconds the stub's 429 asks for
CONFIG = ClientConfig(retries=3, timeout=2.0, backoff=0.02, max_backoff=0.1)  # 2 s: room for a loaded CI box
PIPELINE = [Propose(["p1", "p2"], max_tokens=16), Aggregate("agg", max_tokens=16)]
TRANSIENT = ("429", "500", "503", "hang", "reset", "malformed", "empty")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    db = tmp_path_factory.mktemp("faults") / "faults.db"
    t0 = time.perf_counter()
    with StubServer(fault_rate=FAULT_RATE, seed=7, retry_after=RETRY_AFTER,
                    persistent_fault_rate=PERSISTENT_RATE) as stub:
        models = {a: stub.model(a) for a in ("p1", "p2", "agg")}
        df = moakit.run_batch(PIPELINE, [f"question {i}: what is {i} squared?" for i in range(N_PROMPTS)],
                              models=models, store=db, client_config=CONFIG, seed=1, progress=False,
                              max_concurrency=16)
        stats = stub.stats()
    elapsed = time.perf_counter() - t0
    store = TraceStore(db)
    calls = store.calls()
    spans = store.spans()
    attempts = store.attempts()
    yield {"df": df, "stats": stats, "store": store, "calls": calls, "spans": spans, "attempts": attempts,
           "elapsed": elapsed}
    store.close()


def test_batch_completes_every_prompt_answered_or_failed(batch):
    df = batch["df"]
    assert len(df) == N_PROMPTS
    answered = df["output"].notna()
    failed = df["error"].notna()
    assert (answered ^ failed).all(), df[~(answered ^ failed)]
    # almost all prompts survive 10% transient faults; only persistent faults fail a prompt
    assert answered.sum() >= N_PROMPTS * 0.9
    # the batch really made about 1,000 calls (first attempts) plus retries
    first_attempts = (batch["attempts"]["attempt"] == 1).sum()
    assert first_attempts == len(batch["calls"]) >= 1000 - 2 * failed.sum()
    assert batch["stats"]["requests"] >= 1000


def test_litellm_retries_are_off_every_attempt_is_a_span(batch):
    """If litellm (or the OpenAI SDK under it) retried on its own, the stub would count more
    requests than there are attempts; every attempt before a call's last is a span of its own."""
    calls, attempts, spans = batch["calls"], batch["attempts"], batch["spans"]
    assert not calls["cached"].any()
    assert len(attempts) == calls["attempts"].sum() == batch["stats"]["requests"]
    assert (spans["kind"] == "attempt").sum() == len(attempts) - len(calls)


def test_every_failed_attempt_is_an_error_span_with_error_type(batch):
    stats, calls, spans = batch["stats"], batch["calls"], batch["spans"]
    for f in TRANSIENT:  # the seeded stub injected every kind of fault
        assert stats.get(f"fault_{f}", 0) > 0, (f, stats)
    injected = sum(stats.get(f"fault_{f}", 0) for f in TRANSIENT) + stats.get("fault_persistent", 0)
    errors = batch["attempts"][batch["attempts"]["error"].notna()]
    assert len(errors) == injected
    call_spans = spans[spans["kind"].isin(["call", "attempt"])]
    bad = call_spans[call_spans["status"] == "ERROR"]
    assert len(bad) == injected
    types = [a.get("error.type") for a in bad["attributes"]]
    assert all(types), "an error span without error.type"
    counts = {t: types.count(t) for t in set(types)}
    # the types moakit itself names or times out on map one to one onto the injected faults
    assert counts.get("RateLimitError", 0) == stats["fault_429"]
    assert counts.get("Timeout", 0) == stats["fault_hang"]  # a hang never stalls the batch
    assert counts.get("MalformedResponse", 0) == stats["fault_empty"]
    # successful attempts carry no error
    assert (call_spans[call_spans["status"] != "ERROR"]["error"].isna()).all()


def _attempt_chains(attempts):
    return {k: g.sort_values("attempt") for k, g in attempts.groupby("call_span_id")}


def test_transient_faults_retried_within_the_budget(batch):
    budget = CONFIG.retries + 1
    chains = _attempt_chains(batch["attempts"])
    retried = 0
    for key, g in chains.items():
        attempts = list(g["attempt"])
        assert attempts == list(range(1, len(attempts) + 1)), (key, attempts)
        assert len(attempts) <= budget
        errs = list(g["error"].notna())
        assert all(errs[:-1]), f"{key}: an attempt after a success"
        if errs[-1]:  # finally failed: only after spending the whole budget (every fault is retryable)
            assert len(attempts) == budget, (key, list(g["error"]))
        retried += len(attempts) > 1
    assert retried >= 50  # ~10% of ~1,000 calls met a fault and were retried


def test_retry_after_is_honoured(batch):
    gaps = []
    for _, g in _attempt_chains(batch["attempts"]).items():
        rows = g.to_dict("records")
        for prev, nxt in zip(rows, rows[1:]):
            if prev["error"] and prev["error"].startswith("RateLimitError"):
                gaps.append((nxt["start_ns"] - prev["end_ns"]) / 1e9)
    assert len(gaps) >= 5
    # backoff alone would wait <= max_backoff (0.1 s); Retry-After asks for 0.5 s (10 ms of clock slack)
    assert min(gaps) >= RETRY_AFTER - 0.01, sorted(gaps)[:5]


def test_each_retried_attempt_records_the_wait_that_followed(batch):
    """A failed attempt that is retried carries moakit.retry.wait_s and moakit.retry.reason: the
    provider's Retry-After after a 429, else the backoff; the next attempt starts no earlier."""
    store, reasons = batch["store"], []
    for _, g in _attempt_chains(batch["attempts"]).items():
        rows = g.to_dict("records")
        for prev, nxt in zip(rows, rows[1:]):
            attrs = json.loads(store.query("SELECT attributes FROM spans WHERE span_id = ?", [prev["span_id"]])[0][0])
            wait, reason = attrs["moakit.retry.wait_s"], attrs["moakit.retry.reason"]
            reasons.append(reason)
            if prev["error"].startswith("RateLimitError"):
                assert reason == "retry-after" and wait == pytest.approx(RETRY_AFTER), attrs
            else:
                assert reason == "backoff" and 0 < wait <= CONFIG.max_backoff, attrs
            assert (nxt["start_ns"] - prev["end_ns"]) / 1e9 >= wait - 0.01
        assert rows[-1]["final"] and rows[-1]["retry_wait_s"] is None  # nothing followed the last attempt
        last = json.loads(store.query("SELECT attributes FROM spans WHERE span_id = ?", [rows[-1]["span_id"]])[0][0])
        assert "moakit.retry.wait_s" not in last
    assert {"retry-after", "backoff"} <= set(reasons)


def test_proposer_that_finally_fails_is_dropped_with_its_error(batch):
    calls, store = batch["calls"], batch["store"]
    budget = CONFIG.retries + 1
    prop = calls[calls["step"] == "Propose"]
    dead = prop[prop["error"].notna()]
    assert (dead["attempts"] == budget).all()  # finally failed: only after the whole budget
    dead_calls = dead
    assert len(dead_calls) >= 1, "the seeded stub should finally fail at least one proposer"
    steps = store.steps()
    for row in dead_calls.itertuples():
        step0 = steps[(steps["trace_id"] == row.trace_id) & (steps["step_index"] == 0)].iloc[0]
        attrs = store.full_attributes(store.frame("SELECT attributes FROM spans WHERE span_id = ?",
                                                  [step0["span_id"]]).iloc[0].to_dict())
        dropped = json.loads(attrs["moakit.dropped_failed"])
        assert f"{row.agent}#{row.sample}: {row.error}" in dropped, (row.error, dropped)  # the final error
        # the aggregator (if the prompt got that far) was shown only the surviving proposer
        agg = calls[(calls["trace_id"] == row.trace_id) & (calls["step"] == "Aggregate")]
        dead_spans = set(dead[dead["trace_id"] == row.trace_id]["span_id"])
        inputs = store.aggregation_inputs(row.trace_id)
        assert not set(inputs.get("source_span_id", [])) & dead_spans
        if len(agg):
            assert row.agent not in set(inputs["source_agent"])
            assert (inputs["n_shown"] == 1).all() and len(dropped) == 1  # every attempt saw one response


def test_aggregator_that_finally_fails_marks_the_prompt_failed(batch):
    df, calls, store = batch["df"], batch["calls"], batch["store"]
    budget = CONFIG.retries + 1
    agg = calls[calls["step"] == "Aggregate"]
    finally_failed = agg[agg["error"].notna()]
    failed_traces = set(finally_failed["trace_id"])
    assert len(failed_traces) >= 1, "the seeded stub should finally fail at least one aggregator"
    assert (finally_failed["attempts"] == budget).all() and len(finally_failed) == len(failed_traces)
    rows = df[df["trace_id"].isin(failed_traces)]
    assert len(rows) == len(failed_traces)
    assert rows["output"].isna().all()
    assert rows["error"].str.contains("Aggregate").all()
    runs = store.runs().set_index("trace_id")
    assert runs.loc[list(failed_traces), "output"].isna().all()
    assert runs.loc[list(failed_traces), "error"].notna().all()
    # never a wrong answer: every output is exactly the text of its own aggregator's good call
    good = agg[agg["error"].isna()].set_index("trace_id")["output"]
    answered = df[df["output"].notna()]
    for r in answered.itertuples():
        assert r.output == good[r.trace_id]
        assert r.output.startswith("[agg] ")


def test_finally_failing_call_in_isolation_no_hidden_retries(tmp_path):
    """One proposer against an always-503 stub: exactly retries + 1 requests reach the server
    (the OpenAI SDK's default of 2 retries per attempt would make 3x as many), each one an
    error span; the other proposer's answer goes on to the aggregator."""
    with StubServer(fault_rate=1.0, faults="503") as bad, StubServer() as good:
        models = {"dead": bad.model("dead"), "alive": good.model("alive"), "agg": good.model("agg")}
        r = moakit.run([Propose(["dead", "alive"], max_tokens=8), Aggregate("agg", max_tokens=8)], "hello",
                       models=models, store=tmp_path / "t.db", client_config=ClientConfig(retries=2, backoff=0.01))
        assert bad.stats()["requests"] == 3
    calls, att = r.calls, r.store.attempts(r.trace_id)
    dead = calls[calls["agent"] == "dead"]
    assert len(dead) == 1 and dead["attempts"].iloc[0] == 3
    tries = att[att["agent"] == "dead"].sort_values("attempt")
    assert list(tries["attempt"]) == [1, 2, 3] and tries["error"].str.startswith("ServiceUnavailableError").all()
    assert r.ok and r.output.startswith("[agg] ")
    assert list(r.store.aggregation_inputs(r.trace_id)["source_agent"]) == ["alive"]


def test_report_figures(batch, capsys):
    att, df = batch["attempts"], batch["df"]
    print(f"\n{len(df)} prompts, {len(att)} attempts ({(att['attempt'] == 1).sum()} first), "
          f"{att['error'].notna().sum()} failed attempts, {df['error'].notna().sum()} failed prompts, "
          f"stub {batch['stats']}, {batch['elapsed']:.1f} s")
