"""B6 local model: the embedded SmolLM2-135M through moakit (``models="local"``: engine, litellm
custom provider, worker thread, spans, SQLite) against llama-cpp-python called directly
(``moakit.llm.local.get_llama().create_chat_completion``, the same ``Llama`` instance), with the same
prompt, temperature, max_tokens and seed (the seed moakit sent, read back from its span), so
both generate the same tokens. The prompt cache is reset before each call so neither reuses
the other's evaluated prompt."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from .common import CaseResult, Row, alternate_async, median, pair_ratios, spread

PROMPTS = [
    "Write a detailed essay about the history of the printing press.",
    "Explain step by step how a refrigerator keeps food cold.",
    "Describe a walk through a busy market in a large city, with many details.",
    "Write a long story about a robot who learns to paint.",
    "Explain the water cycle to a ten-year-old, at length.",
    "Give a thorough comparison of trains and planes for travel in Europe.",
]


def run(quick: bool) -> CaseResult:
    import moakit
    from moakit.llm import local
    from moakit.steps import Propose
    from moakit.store.store import TraceStore

    pairs, max_tokens = (1, 16) if quick else (12, 128)  # 12: the machine's speed drifts between pairs
    pipeline = [Propose(["smollm2"], temp=0.7, max_tokens=max_tokens)]
    res = CaseResult("B6", f"embedded model: moakit (models='local') vs llama-cpp-python direct, {max_tokens} tokens")
    llm = local.get_llama()
    with tempfile.TemporaryDirectory() as d:
        store = TraceStore(Path(d) / "b6.db")
        last: dict = {}
        tokens: dict[str, list[int]] = {"moakit": [], "direct": []}
        same = []

        async def via_moakit(i):
            prompt = PROMPTS[i % len(PROMPTS)]
            llm.reset()
            r = await moakit.arun(pipeline, prompt, models="local", store=store, seed=1000 + i)
            assert r.ok, r.error
            row = store.query("SELECT output_tokens, json_extract(attributes, '$.\"gen_ai.request.seed\"') "
                              "FROM spans WHERE trace_id = ? AND kind = 'call'", (r.trace_id,))[0]
            last.update(prompt=prompt, seed=row[1], text=r.output)
            if i >= 0:
                tokens["moakit"].append(row[0])

        async def direct(i):
            llm.reset()
            out = llm.create_chat_completion(messages=[{"role": "user", "content": last["prompt"]}], temperature=0.7,
                                             max_tokens=max_tokens, seed=int(last["seed"]))
            if i >= 0:
                tokens["direct"].append(out["usage"]["completion_tokens"])
                same.append(out["choices"][0]["message"]["content"] == last["text"])

        async def main():
            return await alternate_async([via_moakit, direct], pairs, warmup=1)

        a, b = asyncio.run(main())
        store.close()
    tps_a = [n / t for n, t in zip(tokens["moakit"], a)]
    tps_b = [n / t for n, t in zip(tokens["direct"], b)]
    ratios = pair_ratios(tps_a, tps_b)
    res.rows.append(Row("B6", "output tokens/s", f"{median(tps_a):.1f}", f"{median(tps_b):.1f} (direct)",
                        f"{median(ratios):.3f}", ">= 0.95 x direct", median(ratios) >= 0.95))
    res.details = {"moakit_s": a, "direct_s": b, "tokens": tokens, "same_text": same, "pair_ratio": ratios}
    res.notes.append(f"{pairs} alternating pairs; moakit tokens/s {spread(tps_a)}, direct {spread(tps_b)}; "
                     f"same generated text in {sum(same)}/{len(same)} pairs; peer column is llama-cpp-python, "
                     f"not mixture-llm (which has no local model)")
    return res
