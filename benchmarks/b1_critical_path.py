"""B1 critical path: the page's Together MoA (Propose, Synthesize, Synthesize, Aggregate: 19
calls in 4 layers) against the stub server answering after a fixed 100 ms.
The best possible wall time is 4 layers x 100 ms; we report wall / 0.4 s for moakit on its
direct transport, moakit through litellm, and mixture-llm (litellm client; same server, same
prompts), run alternately (A B C A B C ...) in one event loop. Beside them the floor
(mixture-llm's engine over plain aiohttp) alone and with a fixed amount of extra client CPU per
call, which shows what each tenth of a millisecond of a client's own work costs here."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from .common import (CaseResult, Row, aiohttp_client, alternate_async, litellm_client, median, mixture_pipeline,
                     pair_ratios, spread, stub_models)

LATENCY = 0.1
# client CPU per call added to the floor, seconds: how the ratio grows with a client's work per
# call on this machine (the stub answering on the same cores)
SLOPE_S = (0.1e-3, 0.25e-3)


def run(quick: bool) -> CaseResult:
    import mixture_llm as ML

    import moakit
    from moakit.pipelines import together_moa
    from moakit.testing.stub_server import StubServer
    from moakit.store.store import TraceStore

    pairs = 3 if quick else 20
    agents = [a for s in together_moa for a in s.agents]
    layers = sum(1 for s in together_moa if s.calls_llm)
    ideal = layers * LATENCY
    res = CaseResult("B1", "critical path: Together MoA (page, 19 calls, 4 layers), stub answering after 100 ms")
    with tempfile.TemporaryDirectory() as d, StubServer(latency=LATENCY) as stub:
        store = TraceStore(Path(d) / "b1.db")
        models = stub_models(stub, agents)
        ml_pipe = mixture_pipeline(together_moa)
        client = litellm_client(stub.api_base)
        floor_client = aiohttp_client(stub.api_base)
        outputs: dict[str, str] = {}

        direct, via_litellm = moakit.ClientConfig(transport="direct"), moakit.ClientConfig(transport="litellm")

        async def moakit_once(i):
            r = await moakit.arun(together_moa, f"What is mixture of agents? ({i})", models=models, store=store,
                                  templates="mixture-llm", client_config=direct)
            assert r.ok, r.error
            outputs["moakit"] = r.output

        async def moakit_litellm_once(i):
            r = await moakit.arun(together_moa, f"What is mixture of agents? ({i})", models=models, store=store,
                                  templates="mixture-llm", client_config=via_litellm)
            assert r.ok, r.error
            outputs["moakit-litellm"] = r.output

        async def mixture_once(i):
            out, _ = await ML.run(ml_pipe, f"What is mixture of agents? ({i})", client)
            assert out, "mixture-llm returned no answer"
            outputs["mixture"] = out

        def spin(seconds: float) -> None:  # client CPU of a given size (busy, as Python work is)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        def floor_with(extra_s: float):
            """mixture-llm's engine over plain aiohttp (the floor: what this machine and stub allow),
            with ``extra_s`` more client CPU per call, half before the request and half after the
            answer (where a client's own work per call sits): what that much work costs."""
            async def timed_client(**kw):
                spin(extra_s / 2)
                out = await floor_client(**kw)
                spin(extra_s / 2)
                return out

            async def once(i):
                out, _ = await ML.run(ml_pipe, f"What is mixture of agents? ({i})",
                                      timed_client if extra_s else floor_client)
                assert out
                if not extra_s:
                    outputs["floor"] = out
            return once

        cpu: list = []

        async def main():
            try:
                return await alternate_async([moakit_once, moakit_litellm_once, mixture_once,
                                              *(floor_with(x) for x in (0.0, *SLOPE_S))], pairs, warmup=2, cpu=cpu)
            finally:
                await floor_client.close()

        a, c, b, f, *fx = asyncio.run(main())
        store.close()
    ra = [t / ideal for t in a]
    rb = [t / ideal for t in b]
    rc = [t / ideal for t in c]
    per_pair = pair_ratios(a, b)
    res.rows.append(Row("B1", f"wall / ({layers} layers x 100 ms), median of {pairs}; moakit on its direct transport",
                        f"{median(ra):.3f}", f"{median(rb):.3f}", f"{median(per_pair):.3f}",
                        "<= 1.05 and below mixture-llm's", median(ra) <= 1.05 and median(ra) < median(rb)))
    rf = [t / ideal for t in f]
    res.rows.append(Row("B1", "the floor here: mixture-llm's engine over plain aiohttp (peer: moakit direct / the "
                        "floor, pair by pair)", f"{median(rf):.3f}", f"{median(pair_ratios(a, f)):.3f}"))
    for x, t in zip(SLOPE_S, fx):
        res.rows.append(Row("B1", f"the floor with {x * 1e3:.2f} ms more client CPU per call (half before the request, "
                            "half after the answer)", f"{median([v / ideal for v in t]):.3f}"))
    res.rows.append(Row("B1", f"the same, moakit through litellm (transport='litellm')", f"{median(rc):.3f}",
                        f"{median(rb):.3f}", f"{median(pair_ratios(c, b)):.3f}", "ratio <= 1.05 (no slower than "
                        "before: 1.012 / 1.034)", median(pair_ratios(c, b)) <= 1.05))
    n_calls = len(agents)
    cpu_ms = [median(x) / n_calls * 1e3 for x in cpu]
    res.rows.append(Row("B1", "client CPU per call, ms (moakit direct; peer: mixture-llm + litellm)",
                        f"{cpu_ms[0]:.2f}", f"{cpu_ms[2]:.2f}"))
    res.rows.append(Row("B1", "client CPU per call, ms (moakit through litellm)", f"{cpu_ms[1]:.2f}", f"{cpu_ms[2]:.2f}"))
    res.rows.append(Row("B1", "client CPU per call, ms (moakit direct; peer: the floor)", f"{cpu_ms[0]:.2f}",
                        f"{cpu_ms[3]:.2f}"))
    same = outputs.get("moakit") == outputs.get("mixture") == outputs.get("moakit-litellm") == outputs.get("floor")
    res.details = {"moakit_s": a, "moakit_litellm_s": c, "mixture_s": b, "floor_s": f, "cpu_s": cpu,
                   "floor_with_extra_cpu_s": dict(zip(SLOPE_S, fx)),
                   "pair_ratio": per_pair,
                   "ideal_s": ideal, "same_output": same}
    res.notes.append(f"wall s moakit direct {median(a):.4f} ({spread(a)}), moakit through litellm {median(c):.4f} "
                     f"({spread(c)}), mixture-llm {median(b):.4f} ({spread(b)}), mixture-llm over plain aiohttp {median(f):.4f} "
                     f"({spread(f)}); all use mixture-llm's prompts "
                     f"(moakit templates='mixture-llm'), so the stub sees the same requests; last answers identical: "
                     f"{same}")
    return res
