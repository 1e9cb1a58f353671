"""B2 overhead per call: Together MoA (19 calls) on a zero-latency in-process model, tracing
and SQLite on. litellm is bypassed the same way for both: moakit's ``Caller._complete`` (the one
litellm call) returns at once, so moakit's engine, client, spans, redaction, hashing and store
writes all run; mixture-llm's client function returns at once (mixture-llm records nothing).
The model answers ~1,500 characters, so per-byte costs (JSON, hashes, redaction) count too."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from .common import (CaseResult, Row, alternate_async, instant_client_for, instant_moakit, median, mixture_pipeline,
                     pair_ratios, spread)


def measure(pairs: int, chars: int) -> dict:
    """Alternating pairs of one Together MoA run each; answers of ``chars`` characters."""
    import mixture_llm as ML

    import moakit
    from moakit.pipelines import count_calls, together_moa
    from moakit.store.store import TraceStore

    n_calls = count_calls(together_moa)
    models = {a: {"model": f"openai/{a}", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-unused-000000"}
              for s in together_moa for a in s.agents}
    ml_pipe = mixture_pipeline(together_moa)
    ml_client = instant_client_for(chars)
    with tempfile.TemporaryDirectory() as d, instant_moakit(chars):
        store = TraceStore(Path(d) / "b2.db")

        async def moakit_once(i):
            r = await moakit.arun(together_moa, f"Explain mixture of agents, take {i}", models=models, store=store,
                                  templates="mixture-llm")
            assert r.ok, r.error

        async def mixture_once(i):
            out, _ = await ML.run(ml_pipe, f"Explain mixture of agents, take {i}", ml_client)
            assert out

        async def main():
            return await alternate_async([moakit_once, mixture_once], pairs, warmup=3)

        a, b = asyncio.run(main())
        recorded = store.query("SELECT count(*) FROM spans WHERE kind='call'")[0][0]
        store.close()
    us_a = [t / n_calls * 1e6 for t in a]
    us_b = [t / n_calls * 1e6 for t in b]
    return {"moakit_us": us_a, "mixture_us": us_b, "pair_ratio": pair_ratios(a, b), "calls_recorded": recorded}


def run(quick: bool) -> CaseResult:
    pairs = 20 if quick else 300
    res = CaseResult("B2", "overhead per call: Together MoA on a zero-latency in-process model, tracing + SQLite on")
    for chars, label in ((60, "short answers (60 chars)"), (1500, "1,500-char answers")):
        m = measure(pairs, chars)
        us_a, us_b = m["moakit_us"], m["mixture_us"]
        added = [x - y for x, y in zip(us_a, us_b)]
        goal = chars == 60
        res.rows.append(Row("B2", f"cost per call, us, {label}", f"{median(us_a):.0f}", f"{median(us_b):.1f}",
                            f"{median(m['pair_ratio']):.0f}x", "moakit <= 100 us" if goal else "(per-byte costs)",
                            median(us_a) <= 100 if goal else None))
        res.details[f"chars{chars}"] = m
        res.notes.append(f"{label}: {pairs} alternating pairs; moakit us/call {spread(us_a)}, mixture-llm "
                         f"{spread(us_b)}; moakit's added cost {median(added):.0f} us/call; {m['calls_recorded']} "
                         f"call spans recorded (mixture-llm records nothing)")
    return res
