"""The direct transport (issue 16): what it sends, what it makes of every answer, and that a
trace cannot tell it from the litellm path.

Both paths run against the STUB server (moakit.testing.stub_server): ``inspect...`` models answer
with the request as it arrived on the wire, ``fault-<kind>`` models meet one fault on every
request. The llama.cpp server comparison is in tests/test_http.py."""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest

import moakit
from moakit import Aggregate, ClientConfig, Propose, TraceStore
from moakit.errors import ModelError
from moakit.llm import Caller, Request, classify, retry_after
from moakit.llm import caller as C
from moakit.llm import transport as T
from moakit.models import ModelSpec
from moakit.pipelines import moa_lite
from moakit.testing.stub_server import StubServer

KEY = "sk-stub-not-a-real-key-000000"
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo \U0001f600 \"q\""}]


@pytest.fixture(scope="module")
def stub():
    with StubServer(retry_after=0.25) as s:
        yield s


def spec(stub, model, provider="openai", **extra):
    return ModelSpec(f"{provider}/{model}", api_base=stub.api_base, api_key=KEY, extra=tuple(sorted(extra.items())))


def one(transport, sp, messages=MSGS, temperature=0.7, max_tokens=12, seed=5, **cfg):
    """One call through a fresh caller; the outcome."""
    caller = Caller(ClientConfig(transport=transport, retries=0, timeout=cfg.pop("timeout", 5.0), **cfg))

    async def go():
        return await caller.call(Request(sp, [dict(m) for m in messages], temperature, max_tokens, seed))
    return asyncio.run(go())


def raised(transport, sp, timeout=5.0):
    """The exception the one attempt of a call raised (through the caller's own dispatch)."""
    caller = Caller(ClientConfig(transport=transport, retries=0, timeout=timeout))

    async def go():
        C.get_litellm()
        try:
            await caller._complete(Request(sp, [dict(m) for m in MSGS], 0.7, 12, 5))
        except Exception as e:  # noqa: BLE001
            return e
        return None
    return asyncio.run(go())


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm"])
@pytest.mark.parametrize("extra", [{}, {"top_p": 0.9, "stop": ["\n\n"], "extra_headers": {"X-Trace-Tag": "t1"},
                                        "extra_body": {"top_k": 20}}])
def test_the_wire_request_is_the_one_litellm_sends(stub, provider, extra):
    """Same path, same JSON body (model name, messages, every parameter mapped as litellm maps
    it), the same Authorization, content type and extra headers."""
    sp = spec(stub, "inspect-m", provider, **extra)
    got = {}
    for transport in ("litellm", "direct"):
        out = one(transport, sp)
        assert out.ok, out.error
        assert out.transport == transport
        got[transport] = json.loads(out.text)
    lit, dir_ = got["litellm"], got["direct"]
    assert dir_["path"] == lit["path"] == "/v1/chat/completions"
    assert dir_["body"] == lit["body"]
    assert list(dir_["body"]) == list(lit["body"])  # in the same order
    assert dir_["body"]["messages"] == MSGS and dir_["body"]["seed"] == 5
    lower = {t: {k.lower(): v for k, v in got[t]["headers"].items()} for t in got}  # (names are case-blind)
    for h in ("Authorization", "Content-Type", *(extra.get("extra_headers") or {})):
        assert lower["direct"].get(h.lower()) == lower["litellm"].get(h.lower()) is not None, h
    assert dir_["headers"]["Authorization"] == f"Bearer {KEY}"


def test_parameters_litellm_drops_or_renames_are_dropped_or_renamed(stub):
    """gpt-5 takes max_completion_tokens and no temperature other than 1 (litellm drops it with
    drop_params): the direct body follows litellm's mapping, asked once per setting."""
    sp = spec(stub, "gpt-5")
    route = C.direct_route(sp)
    body = route.body(MSGS, 0.7, 12, 5)
    assert "max_tokens" not in body and body["max_completion_tokens"] == 12 and "temperature" not in body
    assert route.body(MSGS, 1.0, 12, None).get("temperature") == 1.0 and "seed" not in route.body(MSGS, 1.0, 12, None)


def test_answers_tokens_and_fields_match(stub):
    sp = spec(stub, "m1")
    a, b = one("litellm", sp), one("direct", sp)
    for f in ("text", "input_tokens", "output_tokens", "response_model", "finish_reason", "cost_usd", "attempt",
              "error_type"):
        assert getattr(a, f) == getattr(b, f), f
    assert a.cost_usd is None  # the stub's model has no price on either path


def test_cost_is_litellms_price(stub):
    """A model litellm has a price for (the stub answers under the name asked for): the same
    cost, to the last digit, without litellm's per-call cost calculation."""
    sp = spec(stub, "gpt-4.1-mini")
    a, b = one("litellm", sp), one("direct", sp)
    assert a.cost_usd and a.cost_usd > 0
    assert b.cost_usd == pytest.approx(a.cost_usd, rel=1e-12)


FAULT_MODELS = ["fault-400", "fault-401", "fault-403", "fault-404", "fault-408", "fault-409", "fault-422", "fault-429",
                "fault-500", "fault-502", "fault-503", "fault-504", "fault-plain500", "fault-malformed", "fault-html",
                "fault-reset", "fault-empty"]


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm"])
def test_every_error_is_the_one_litellm_raises(stub, provider):
    """Status codes, a plain-text error page, a 200 that is not JSON, a reset connection, an empty
    choice list: the same exception type, status, message, retry decision and Retry-After."""
    for model in FAULT_MODELS:
        sp = spec(stub, model, provider)
        a, b = raised("litellm", sp), raised("direct", sp)
        if model == "fault-empty":
            assert type(a) is type(b) is C.MalformedResponse and str(a) == str(b)
            continue
        assert type(a).__name__ == type(b).__name__, (model, a, b)
        assert classify(a) == classify(b), model
        assert retry_after(a) == retry_after(b), model
        assert getattr(a, "status_code", None) == getattr(b, "status_code", None), model
        if model != "fault-reset":  # (the words of a reset differ: the SDK's "Connection error." vs aiohttp's)
            assert str(a) == str(b), (model, str(a), str(b))
    assert retry_after(raised("direct", spec(stub, "fault-429", provider))) == 0.25


def test_a_timeout_is_litellms_timeout(stub):
    sp = spec(stub, "fault-hang")
    a, b = raised("litellm", sp, timeout=0.5), raised("direct", sp, timeout=0.5)
    assert type(b).__name__ == "Timeout" and classify(b) == ("Timeout", True)
    assert type(a).__name__ in ("Timeout", "TimeoutError") and classify(a)[1]


def test_auto_sends_only_what_it_can_serve_as_litellm_would(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caller = Caller(ClientConfig())
    assert caller.target(spec(stub, "m")).transport == "direct"
    assert caller.target(spec(stub, "m", "hosted_vllm")).transport == "direct"
    assert caller.target(ModelSpec("local/smollm2")).transport == "litellm"
    assert caller.target(ModelSpec("anthropic/claude-sonnet-4-5")).transport == "litellm"
    assert caller.target(spec(stub, "m", timeout=30)).transport == "litellm"  # an argument only litellm carries
    assert caller.target(ModelSpec("openai/m", api_base=stub.api_base)).transport == "litellm"  # no key anywhere
    assert caller.target(spec(stub, "m", "groq")).transport == "litellm"  # quirks of its own
    assert Caller(ClientConfig(transport="litellm")).target(spec(stub, "m")).transport == "litellm"


def test_direct_refuses_a_model_it_cannot_serve_before_any_call(tmp_path, stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    before = stub.stats()["requests"]
    models = {"a": stub.model("a"), "b": {"model": "openai/b", "api_base": stub.api_base}}  # b: no key
    with pytest.raises(ModelError, match=r"agent 'b'.*transport='direct'.*no API key"):
        moakit.run([Propose(["a", "b"])], "q", models=models, store=tmp_path / "t.db",
                   client_config=ClientConfig(transport="direct"))
    assert stub.stats()["requests"] == before


@pytest.mark.parametrize("kwargs, match", [
    ({"transport": "fast"}, "transport must be one of"), ({"rpm": 0}, "rpm must be"), ({"rpm": -5}, "rpm must be"),
    ({"tpm": {"openai": "lots"}}, "tpm must be"), ({"tpm": {}}, "tpm must be"), ({"rpm": True}, "rpm must be"),
    ({"adaptive": "yes"}, "adaptive must be")])
def test_client_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClientConfig(**kwargs)
    ClientConfig(rpm=600, tpm={"openai": 90_000, "http://127.0.0.1:8000/v1": 1e6})  # fine


def test_a_batch_is_the_same_trace_on_both_paths(tmp_path, stub):
    """Same request keys, outputs, tokens and call attributes (but the transport's name, the
    response id the server numbers and the span ids); a store recorded through litellm replays a
    direct run whole, and the other way round."""
    models = {a: stub.model(a) for s in moa_lite for a in s.agents}
    prompts = [f"question {i}" for i in range(6)]
    stores = {}
    for transport in ("litellm", "direct"):
        st = stores[transport] = TraceStore(tmp_path / f"{transport}.db")
        df = moakit.run_batch(moa_lite, prompts, models=models, store=st, seed=11, progress=False,
                              client_config=ClientConfig(transport=transport))
        assert df["error"].isna().all()
    frames = {t: s.calls().sort_values("request_key").reset_index(drop=True) for t, s in stores.items()}
    a, b = frames["litellm"], frames["direct"]
    for col in ("request_key", "output", "input_tokens", "output_tokens", "cost_usd", "agent", "model", "step",
                "sample", "attempts"):
        assert a[col].equals(b[col]), col
    # what differs between any two runs: the server's numbering of responses, span ids (the
    # sources shown are span ids; their agents and texts are compared), measured waits
    skip = {"gen_ai.response.id", "moakit.transport", "moakit.request.key", "moakit.input.sources"}

    def attrs(store):
        sp = store.spans()
        rows = sp[sp.kind == "call"]
        return {r["moakit.request.key"]: {k: v for k, v in r.items() if k not in skip and not k.startswith("moakit.wait.")}
                for r in rows.attributes}
    la, lb = attrs(stores["litellm"]), attrs(stores["direct"])
    assert la.keys() == lb.keys()
    for k in la:
        diff = {n for n in la[k].keys() | lb[k].keys() if la[k].get(n) != lb[k].get(n)}
        assert not diff, (k, {n: (la[k].get(n), lb[k].get(n)) for n in diff})
    transports = {t: {r.get("moakit.transport") for r in s.spans().attributes if "moakit.transport" in r}
                  for t, s in stores.items()}
    assert transports == {"litellm": {"litellm"}, "direct": {"direct"}}
    # a replay cannot tell them apart: each store serves the other transport's run in full
    for recorded, other in (("litellm", "direct"), ("direct", "litellm")):
        df = moakit.run_batch(moa_lite, prompts, models=models, store=tmp_path / f"replay-{other}.db", seed=11,
                              cache=stores[recorded], offline=True, progress=False,
                              client_config=ClientConfig(transport=other))
        assert df["error"].isna().all() and (df["calls_reused"] == df["calls"]).all()
    for s in stores.values():
        s.close()


def test_faults_on_the_direct_path_are_retried_and_recorded_like_litellms(tmp_path):
    """A fault-injecting stub, the direct transport: every attempt the stub saw is an attempt in
    attempts(), every 429 waited its Retry-After, the error types match the faults injected."""
    cfg = ClientConfig(transport="direct", retries=3, timeout=1.0, backoff=0.01, max_backoff=0.05, adaptive=False)
    with StubServer(fault_rate=0.25, seed=3, retry_after=0.2, faults="429,500,503,hang,reset,malformed,empty") as s:
        models = {a: s.model(a) for a in ("p1", "p2", "agg")}
        df = moakit.run_batch([Propose(["p1", "p2"], max_tokens=8), Aggregate("agg", max_tokens=8)],
                              [f"q{i}" for i in range(40)], models=models, store=tmp_path / "f.db", seed=2,
                              client_config=cfg, progress=False)
        stats = s.stats()
    st = TraceStore(tmp_path / "f.db")
    att = st.attempts()
    assert len(att) == stats["requests"]
    errors = att[att["error"].notna()]["error"].str.split(":").str[0].value_counts().to_dict()
    assert errors.get("RateLimitError", 0) == stats.get("fault_429", 0) > 0
    assert errors.get("Timeout", 0) == stats.get("fault_hang", 0) > 0
    assert errors.get("MalformedResponse", 0) == stats.get("fault_empty", 0) > 0
    assert errors.get("ServiceUnavailableError", 0) == stats.get("fault_503", 0) > 0
    assert errors.get("InternalServerError", 0) == stats.get("fault_500", 0) + stats.get("fault_reset", 0) + \
        stats.get("fault_malformed", 0)
    att = att.sort_values(["call_span_id", "attempt"])
    gaps = []
    for _, g in att.groupby("call_span_id"):
        rows = g.to_dict("records")
        for prev, nxt in zip(rows, rows[1:]):
            assert nxt["start_ns"] >= prev["end_ns"] + prev["retry_wait_s"] * 1e9 - 1e7
            if prev["error"].startswith("RateLimitError"):
                assert prev["retry_reason"] == "retry-after" and prev["retry_wait_s"] == pytest.approx(0.2)
                gaps.append((nxt["start_ns"] - prev["end_ns"]) / 1e9)
    assert gaps and min(gaps) >= 0.19
    assert (df["output"].notna() ^ df["error"].notna()).all()
    st.close()


def test_the_loops_session_is_closed_with_the_loop(stub):
    """asyncio.run closes the session it made (no 'Unclosed client session' at exit)."""
    sp = spec(stub, "m2")
    seen = []

    async def go():
        out = await Caller(ClientConfig(transport="direct")).call(Request(sp, list(MSGS), 0.7, 8, None))
        seen.append(await T.session())
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        assert asyncio.run(go()).ok
    assert seen[0].closed
