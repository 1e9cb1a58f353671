"""B1 critical path: the page's Together MoA (Propose, Synthesize, Synthesize, Aggregate: 19
calls in 4 layers) through litellm against the stub server answering after a fixed 100 ms.
The best possible wall time is 4 layers x 100 ms; we report wall / 0.4 s for moakit and for
mixture-llm (same server, same litellm path, same prompts), run alternately in one event loop."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from .common import (CaseResult, Row, alternate_async, litellm_client, median, mixture_pipeline, pair_ratios,
                     spread, stub_models)

LATENCY = 0.1


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
        outputs: dict[str, str] = {}

        async def moakit_once(i):
            r = await moakit.arun(together_moa, f"What is mixture of agents? ({i})", models=models, store=store,
                                  templates="mixture-llm")
            assert r.ok, r.error
            outputs["moakit"] = r.output

        async def mixture_once(i):
            out, _ = await ML.run(ml_pipe, f"What is mixture of agents? ({i})", client)
            assert out, "mixture-llm returned no answer"
            outputs["mixture"] = out

        cpu: list = []

        async def main():
            return await alternate_async([moakit_once, mixture_once], pairs, warmup=2, cpu=cpu)

        a, b = asyncio.run(main())
        store.close()
    ra = [t / ideal for t in a]
    rb = [t / ideal for t in b]
    per_pair = pair_ratios(a, b)
    res.rows.append(Row("B1", f"wall / ({layers} layers x 100 ms), median of {pairs}", f"{median(ra):.3f}",
                        f"{median(rb):.3f}", f"{median(per_pair):.3f}", "<= 1.05 and <= mixture-llm's",
                        median(ra) <= 1.05 and median(ra) <= median(rb) * 1.0 + 1e-9))
    n_calls = len(agents)
    cpu_ms = [median(c) / n_calls * 1e3 for c in cpu]
    res.rows.append(Row("B1", "client CPU per call, ms (litellm + library)", f"{cpu_ms[0]:.2f}", f"{cpu_ms[1]:.2f}"))
    res.details = {"moakit_s": a, "mixture_s": b, "cpu_s": cpu, "pair_ratio": per_pair, "ideal_s": ideal,
                   "same_output": outputs.get("moakit") == outputs.get("mixture")}
    res.notes.append(f"wall s moakit {median(a):.4f} ({spread(a)}), mixture-llm {median(b):.4f} ({spread(b)}); "
                     f"both use mixture-llm's prompts (moakit templates='mixture-llm'), so the stub sees the same "
                     f"requests; last answers identical: {res.details['same_output']}")
    return res
