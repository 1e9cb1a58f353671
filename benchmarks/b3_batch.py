"""B3 batch throughput: 200 prompts x MoA-Lite (13 calls each) against the stub answering after
50 ms, at most 64 calls in flight. The cap allows at most 64 / 0.05 s = 1,280 calls/s; we
report calls/s achieved as a fraction of that. Five contenders, alternately in one event loop:
moakit on its direct transport, moakit through litellm, mixture-llm (all prompts gathered, its
litellm client capped by a semaphore of 64), "litellm alone" (the same number of calls straight
through litellm: one user message each, no layers, no library, same cap: the ceiling of any
library driving litellm) and "plain aiohttp" (the same calls through one pooled aiohttp session
with plain JSON: the ceiling a Python client reaches here)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from .common import (CaseResult, Row, aiohttp_client, alpaca_prompts, alternate_async, litellm_client, median,
                     mixture_pipeline, pair_ratios, spread, stub_models)

LATENCY = 0.05
CAP = 64


def run(quick: bool) -> CaseResult:
    import mixture_llm as ML

    from moakit import ClientConfig
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

        direct, via_litellm = ClientConfig(transport="direct"), ClientConfig(transport="litellm")
        agents = [a for s in moa_lite for a in s.agents]

        async def moakit_once(i):
            df = await arun_batch(moa_lite, prompts, models=models, store=store, max_concurrency=CAP,
                                  templates="mixture-llm", progress=False, client_config=direct)
            assert df["error"].isna().all(), df["error"].dropna().head(3).tolist()
            stats["moakit_calls"] = int(df["calls"].sum())

        async def moakit_litellm_once(i):
            df = await arun_batch(moa_lite, prompts, models=models, store=store, max_concurrency=CAP,
                                  templates="mixture-llm", progress=False, client_config=via_litellm)
            assert df["error"].isna().all(), df["error"].dropna().head(3).tolist()

        async def mixture_once(i):
            client = litellm_client(stub.api_base, asyncio.Semaphore(CAP))
            outs = await asyncio.gather(*(ML.run(ml_pipe, p, client) for p in prompts))
            assert all(o for o, _ in outs)

        async def flat(client):
            outs = await asyncio.gather(*(client(model=agents[k % len(agents)], messages=[{"role": "user", "content": p}],
                                                 temp=0.7, max_tokens=512)
                                          for p in prompts for k in range(count_calls(moa_lite))))
            assert all(o for o, _, _ in outs)

        async def litellm_alone(i):
            await flat(litellm_client(stub.api_base, asyncio.Semaphore(CAP)))

        async def plain_aiohttp(i):
            client = aiohttp_client(stub.api_base, asyncio.Semaphore(CAP))
            try:
                await flat(client)
            finally:
                await client.close()

        cpu: list = []

        async def main():
            return await alternate_async([moakit_once, moakit_litellm_once, mixture_once, litellm_alone, plain_aiohttp],
                                         pairs, warmup=1 if not quick else 0, cpu=cpu)

        a, al, b, c, h = asyncio.run(main())
        max_in_flight = stub.stats().get("max_in_flight")
        store.close()
    rate = {k: [n_calls / t for t in v] for k, v in
            {"direct": a, "litellm": al, "mixture": b, "alone": c, "aiohttp": h}.items()}
    frac = {k: median(v) / ideal_rate for k, v in rate.items()}
    of_aiohttp = median(pair_ratios(h, a))  # direct's throughput / plain aiohttp's, pair by pair
    res.rows.append(Row("B3", "calls/s as a fraction of the ideal 1,280/s: moakit direct (peer: plain aiohttp, same "
                        "run; ratio: moakit / aiohttp)", f"{frac['direct']:.2f}", f"{frac['aiohttp']:.2f}",
                        f"{of_aiohttp:.2f}", ">= 0.80 and >= 0.90 of plain aiohttp",
                        frac["direct"] >= 0.8 and of_aiohttp >= 0.9))
    res.rows.append(Row("B3", "calls/s: moakit direct (peer: plain aiohttp)", f"{median(rate['direct']):.0f}",
                        f"{median(rate['aiohttp']):.0f}"))
    res.rows.append(Row("B3", "calls/s: moakit through litellm (peer: mixture-llm; ratio: moakit / mixture-llm)",
                        f"{median(rate['litellm']):.0f}", f"{median(rate['mixture']):.0f}",
                        f"{median(pair_ratios(b, al)):.2f}", "ratio >= 0.88 (no slower than before: 0.88-1.01)",
                        median(pair_ratios(b, al)) >= 0.88))
    res.rows.append(Row("B3", "moakit through litellm / the ceiling, litellm alone (peer column: the ceiling's fraction "
                        "of the ideal)", f"{median(pair_ratios(c, al)):.2f}", f"{frac['alone']:.2f}"))
    res.rows.append(Row("B3", "moakit direct / moakit through litellm (the speed-up of the direct transport)",
                        f"{median(pair_ratios(al, a)):.1f}x"))
    cpu_ms = [median(x) / n_calls * 1e3 for x in cpu]
    res.rows.append(Row("B3", "client CPU per call, ms, this process: moakit direct (peer: plain aiohttp)",
                        f"{cpu_ms[0]:.2f}", f"{cpu_ms[4]:.2f}"))
    res.rows.append(Row("B3", "client CPU per call, ms: moakit through litellm (peer: mixture-llm)",
                        f"{cpu_ms[1]:.2f}", f"{cpu_ms[2]:.2f}"))
    res.details = {"moakit_s": a, "moakit_litellm_s": al, "mixture_s": b, "litellm_alone_s": c, "aiohttp_s": h,
                   "cpu_s": cpu, "calls": n_calls, "ideal_calls_per_s": ideal_rate,
                   "stub_max_in_flight": max_in_flight, "prompts": source}
    res.notes.append(f"{n_calls} calls per round, {pairs} alternating rounds; wall s moakit direct {median(a):.2f} "
                     f"({spread(a)}), moakit through litellm {median(al):.2f} ({spread(al)}), mixture-llm "
                     f"{median(b):.2f} ({spread(b)}), litellm alone {median(c):.2f} ({spread(c)}), plain aiohttp "
                     f"{median(h):.2f} ({spread(h)}); stub saw at most {max_in_flight} requests in flight; one event "
                     f"loop on one core completes at most 1 / (CPU per call) calls a second: "
                     + ", ".join(f"{k} {1e3 / v:.0f}" for k, v in zip(
                         ("moakit direct", "moakit litellm", "mixture-llm", "litellm alone", "plain aiohttp"), cpu_ms))
                     + f"; {source}")
    return res
