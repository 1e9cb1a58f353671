"""B3 batch throughput: 200 prompts x MoA-Lite (13 calls each) against the stub answering after
50 ms, at most 64 calls in flight. The cap allows at most 64 / 0.05 s = 1,280 calls/s; we
report calls/s achieved as a fraction of that. mixture-llm does the same work (all prompts
gathered, its client capped by a semaphore of 64) alternately in the same event loop. A third
contender, "litellm alone", makes the same number of calls straight through litellm (one user
message each, no layers, no library, same cap): the ceiling any library driving litellm from
one event loop can reach on this machine."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from .common import (CaseResult, Row, alpaca_prompts, alternate_async, litellm_client, median, mixture_pipeline,
                     pair_ratios, spread, stub_models)

LATENCY = 0.05
CAP = 64


def run(quick: bool) -> CaseResult:
    import mixture_llm as ML

    from moakit.runner.batch import arun_batch
    from moakit.pipelines import count_calls, moa_lite
    from moakit.testing.stub_server import StubServer
    from moakit.store.store import TraceStore

    n_prompts, pairs = (20, 1) if quick else (200, 3)
    prompts, source = alpaca_prompts(n_prompts)
    n_calls = n_prompts * count_calls(moa_lite)
    ideal_rate = CAP / LATENCY
    res = CaseResult("B3", f"batch throughput: {n_prompts} prompts x MoA-Lite, 50 ms stub, {CAP} calls in flight")
    with tempfile.TemporaryDirectory() as d, StubServer(latency=LATENCY) as stub:
        store = TraceStore(Path(d) / "b3.db")
        models = stub_models(stub, [a for s in moa_lite for a in s.agents])
        ml_pipe = mixture_pipeline(moa_lite)
        stats: dict = {}

        async def moakit_once(i):
            df = await arun_batch(moa_lite, prompts, models=models, store=store, max_concurrency=CAP,
                                  templates="mixture-llm", progress=False)
            assert df["error"].isna().all(), df["error"].dropna().head(3).tolist()
            stats["moakit_calls"] = int(df["calls"].sum())

        async def mixture_once(i):
            client = litellm_client(stub.api_base, asyncio.Semaphore(CAP))
            outs = await asyncio.gather(*(ML.run(ml_pipe, p, client) for p in prompts))
            assert all(o for o, _ in outs)

        async def litellm_alone(i):
            client = litellm_client(stub.api_base, asyncio.Semaphore(CAP))
            agents = [a for s in moa_lite for a in s.agents]
            outs = await asyncio.gather(*(client(model=agents[k % len(agents)], messages=[{"role": "user", "content": p}],
                                                 temp=0.7, max_tokens=512)
                                          for p in prompts for k in range(count_calls(moa_lite))))
            assert all(o for o, _, _ in outs)

        cpu: list = []

        async def main():
            return await alternate_async([moakit_once, mixture_once, litellm_alone], pairs,
                                         warmup=1 if not quick else 0, cpu=cpu)

        a, b, c = asyncio.run(main())
        max_in_flight = stub.stats().get("max_in_flight")
        store.close()
    rate_a = [n_calls / t for t in a]
    rate_b = [n_calls / t for t in b]
    res.rows.append(Row("B3", "calls/s as a fraction of the ideal 1,280/s", f"{median(rate_a) / ideal_rate:.2f}",
                        f"{median(rate_b) / ideal_rate:.2f}", f"{median(pair_ratios(b, a)):.2f}",
                        ">= 0.80", median(rate_a) / ideal_rate >= 0.8))
    res.rows.append(Row("B3", "calls/s", f"{median(rate_a):.0f}", f"{median(rate_b):.0f}"))
    rate_c = [n_calls / t for t in c]
    res.rows.append(Row("B3", "moakit's throughput / the ceiling, litellm alone (same calls, no library, no "
                        "layers; peer column: the ceiling's fraction of the ideal)",
                        f"{median(pair_ratios(c, a)):.2f}", f"{median(rate_c) / ideal_rate:.2f}"))
    cpu_ms = [median(x) / n_calls * 1e3 for x in cpu]
    res.rows.append(Row("B3", "client CPU per call, ms (litellm + library, this process)", f"{cpu_ms[0]:.2f}",
                        f"{cpu_ms[1]:.2f}"))
    res.details = {"moakit_s": a, "mixture_s": b, "litellm_alone_s": c, "cpu_s": cpu, "calls": n_calls, "ideal_calls_per_s": ideal_rate,
                   "stub_max_in_flight": max_in_flight, "prompts": source}
    res.notes.append(f"{n_calls} calls per round, {pairs} alternating rounds; wall s moakit {median(a):.2f} "
                     f"({spread(a)}), mixture-llm {median(b):.2f} ({spread(b)}), litellm alone {median(c):.2f} ({spread(c)}); "
                     f"ratio column = moakit's throughput / the peer's (mixture-llm, then litellm alone); stub saw at most {max_in_flight} requests in flight; one event loop on "
                     f"one core can complete at most 1 / (CPU per call) = {1e3 / cpu_ms[0]:.0f} calls/s for moakit and "
                     f"{1e3 / cpu_ms[1]:.0f} for mixture-llm ({1e3 / cpu_ms[2]:.0f} for litellm alone), whatever the cap; {source}")
    return res
