"""Adaptive concurrency per endpoint and per-minute budgets (issue 16, item 2): the AIMD limit's
rules, the budgets' sliding window, and both in runs against the STUB server, with every wait and
every 429 on a span. No timing is asserted beyond what the rules guarantee by construction (a
budget never lets an attempt start before its window allows)."""

from __future__ import annotations

import asyncio

import pytest

import moakit
from moakit import ClientConfig, Propose, TraceStore
from moakit.llm import limits as L
from moakit.pipelines import moa_lite
from moakit.testing.stub_server import StubServer


def test_aimd_shrinks_once_per_window_and_grows_back_by_one_per_window():
    lim = L.AdaptiveLimit(10)
    assert lim.limit == 10

    async def go():
        for _ in range(10):
            assert await lim.acquire() == 0.0
        sent = L.time.monotonic()
        lim.release(sent, overloaded=True)  # one 429: x0.7
        assert lim.limit == pytest.approx(7.0)
        for _ in range(3):  # more 429s to attempts sent before that decrease: the same signal
            lim.release(sent, overloaded=True)
        assert lim.limit == pytest.approx(7.0) and lim.decreases == 1 and lim.overloads == 4
        # 6 in flight, limit 7: one more may go; the next waits
        assert lim.in_flight == 6
        await lim.acquire()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        lim.release(L.time.monotonic(), overloaded=False)  # a success: +1/7, and the waiter gets the slot
        await asyncio.sleep(0)
        assert waiter.done() and lim.in_flight == 7 and lim.limit == pytest.approx(7 + 1 / 7)
        for _ in range(7):
            lim.release(L.time.monotonic(), overloaded=False, answered=True)
        assert lim.in_flight == 0 and 7.9 < lim.limit < 8.1  # ~ one slot per window of successes
        for _ in range(10):  # a 429 to an attempt sent after the decrease shrinks it again, never below 1
            await lim.acquire()
            lim.release(L.time.monotonic() + 1, overloaded=True)
        assert lim.limit == 1.0 and lim.low == 1.0
        for _ in range(1000):
            await lim.acquire()
            lim.release(L.time.monotonic(), overloaded=False)
        assert lim.limit == 10  # never above the cap
    asyncio.run(go())


def test_an_error_that_says_nothing_about_load_changes_nothing_and_off_means_off():
    lim = L.AdaptiveLimit(8)
    off = L.AdaptiveLimit(8, adaptive=False)

    async def go():
        await lim.acquire()
        await lim.acquire()
        lim.release(L.time.monotonic(), overloaded=True)
        before = lim.limit
        lim.release(L.time.monotonic(), overloaded=False, answered=False)  # e.g. a reset connection
        assert lim.limit == before
        await off.acquire()
        off.release(L.time.monotonic(), overloaded=True)
        assert off.limit == 8
    asyncio.run(go())


def test_a_cancelled_waiter_leaves_no_slot_taken():
    lim = L.AdaptiveLimit(1)

    async def go():
        await lim.acquire()
        w = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        lim.release(L.time.monotonic(), overloaded=False)
        assert lim.in_flight == 0
        assert await lim.acquire() == 0.0
    asyncio.run(go())


def test_rate_budget_keeps_every_window_within_its_limits(monkeypatch):
    monkeypatch.setattr(L, "WINDOW_S", 0.3)
    b = L.RateBudget(rpm=3, tpm=100)

    async def go():
        starts = []
        for tokens in (10, 10, 10, 10, 80, 30):
            _, ticket = await b.take(tokens)
            starts.append((L.time.monotonic(), tokens))
        return starts
    starts = asyncio.run(go())
    for i, (t, _) in enumerate(starts):
        window = [n for (u, n) in starts[:i + 1] if u > t - 0.3 + 1e-3]
        assert len(window) <= 3 and sum(window) <= 100, (i, starts)
    # settling a ticket to the tokens really used frees what was over-estimated
    b2 = L.RateBudget(tpm=100)

    async def go2():
        _, t = await b2.take(90)
        b2.settle(t, 20)
        waited, _ = await b2.take(70)
        return waited
    assert asyncio.run(go2()) == 0.0


def test_bad_limits_and_how_a_limit_is_found():
    assert L.budget_for(None, "openai", None) is None
    assert L.budget_for(60, "openai", "http://x/v1") == 60
    limits = {"openai": 10, "http://x/v1": 5}
    assert L.budget_for(limits, "openai", "http://x/v1") == 5 and L.budget_for(limits, "openai", None) == 10
    assert L.budget_for(limits, "together_ai", None) is None
    for bad in (0, -1, float("inf"), "10", {"openai": 0}, {1: 5}):
        with pytest.raises(ValueError):
            L.check_limits("rpm", bad)


def test_rpm_is_kept_and_every_wait_is_on_the_calls_span(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "WINDOW_S", 0.5)
    with StubServer() as s:
        models = {a: s.model(a) for a in ("a", "b", "c")}
        df = moakit.run_batch([Propose(["a", "b", "c"], max_tokens=8)], [f"q{i}" for i in range(4)], models=models,
                              store=tmp_path / "r.db", seed=1, progress=False,
                              client_config=ClientConfig(rpm=5, transport="direct"))
    assert df["error"].isna().all()
    st = TraceStore(tmp_path / "r.db")
    starts = sorted(st.attempts()["start_ns"])
    assert len(starts) == 12
    for i, t in enumerate(starts):  # no 0.5 s holds more than 5 attempts (5 ms of clock slack)
        assert sum(1 for u in starts[:i + 1] if u > t - 0.5e9 + 5e6) <= 5
    waits = [a.get("moakit.wait.rate_s") for a in st.spans()["attributes"] if a.get("moakit.span.kind") == "call"]
    assert sum(1 for w in waits if w) >= 6  # 12 attempts, 5 a window: at least 7 waited (>= 1 ms recorded)
    st.close()


def test_a_64_cap_batch_against_an_endpoint_of_20_backs_off(tmp_path):
    """The stub answers 429 above 20 calls in flight; a batch capped at 64 finishes with under 5%
    of its attempts rate-limited after its first second, and every 429 the stub sent is an
    attempt span with error.type RateLimitError. Without the adaptive limit, a third or more
    are."""
    shares = {}
    for adaptive in (True, False):
        with StubServer(latency=0.05, max_in_flight=20, retry_after=0.2) as s:
            models = {a: s.model(a) for st in moa_lite for a in st.agents}
            db = tmp_path / f"o-{adaptive}.db"
            df = moakit.run_batch(moa_lite, [f"q{i}" for i in range(60)], models=models, store=db, seed=3,
                                  max_concurrency=64, templates="mixture-llm", progress=False,
                                  client_config=ClientConfig(transport="direct", adaptive=adaptive, retries=8))
            stats = s.stats()
        assert df["error"].isna().all()
        st = TraceStore(db)
        att = st.attempts()
        limited = att["error"].fillna("").str.startswith("RateLimitError")
        assert limited.sum() == stats.get("fault_overload", 0)  # every 429 is on a span
        assert len(att) == stats["requests"]
        spans = st.spans()
        # failed attempts that were retried are attempt spans; a call whose last attempt failed
        # (a proposer dropped after 9 attempts) carries it on its own span
        kinds = [a.get("error.type") for a in spans[spans.kind.isin(["attempt", "call"])]["attributes"]]
        assert kinds.count("RateLimitError") == limited.sum()
        late = att["start_ns"] >= att["start_ns"].min() + 1e9
        shares[adaptive] = limited[late].mean()
        st.close()
    assert shares[True] < 0.05, shares
    assert shares[False] > 0.2, shares
