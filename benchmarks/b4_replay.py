"""B4 replay: record a batch (805 AlpacaEval prompts x the page's Together MoA = 15,295 calls
answered as the zero-latency stub server answers), then replay it offline from the trace file (``run_batch(...,
cache=recorded, offline=True)``: no socket, litellm never called) into a fresh store, and check
every output is identical. A second line does the same with ~1,500-character answers from the
zero-latency in-process model, where per-byte costs (JSON, hashes, redaction) weigh more.
mixture-llm has no replay, so there is no peer column."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from .common import CaseResult, Row, alpaca_prompts, instant_moakit, median, spread


def _replay_rounds(pipeline, prompts, models, rec_path: Path, d: Path, rounds: int, expected):
    from moakit.runner.batch import arun_batch
    from moakit.store.store import TraceStore

    times, identical = [], True
    rec = TraceStore(rec_path)
    for k in range(rounds):
        out = TraceStore(d / f"replay{k}.db")
        t0 = time.perf_counter()
        df = asyncio.run(arun_batch(pipeline, prompts, models=models, store=out, cache=rec, offline=True,
                                    max_concurrency=64, progress=False, templates="together"))
        times.append(time.perf_counter() - t0)
        identical &= list(df["output"]) == expected and df["error"].isna().all() \
            and int(df["calls_reused"].sum()) == int(df["calls"].sum())
        out.close()
    rec.close()
    return times, identical


def run(quick: bool, n_prompts: int | None = None, rounds: int | None = None) -> CaseResult:
    from moakit.runner.batch import arun_batch
    from moakit.pipelines import count_calls, together_moa
    from moakit.store.store import TraceStore

    n_prompts, rounds = n_prompts or (20 if quick else 805), rounds or (1 if quick else 3)
    prompts, source = alpaca_prompts(n_prompts)
    n_calls = n_prompts * count_calls(together_moa)
    agents = [a for s in together_moa for a in s.agents]
    res = CaseResult("B4", f"replay: {n_prompts} prompts x Together MoA = {n_calls} calls, offline from the store")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # 1. the stub's answers, recorded in-process (HTTP would add minutes and change nothing)
        models = {a: {"model": f"openai/{a}", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-unused-000000"}
                  for a in agents}
        with instant_moakit(stub_answers=True):
            rec = TraceStore(d / "recorded.db")
            t0 = time.perf_counter()
            df = asyncio.run(arun_batch(together_moa, prompts, models=models, store=rec, max_concurrency=64,
                                        progress=False))
            record_s = time.perf_counter() - t0
            rec.close()
        assert df["error"].isna().all(), df["error"].dropna().head(3).tolist()
        times, identical = _replay_rounds(together_moa, prompts, models, d / "recorded.db", d, rounds,
                                          list(df["output"]))
        rate = [n_calls / t for t in times]
        res.rows.append(Row("B4", f"replay calls/s, stub answers ({n_calls} calls)", f"{median(rate):,.0f}",
                            goal=">= 20,000 and identical", met=median(rate) >= 20000 and identical))
        res.rows.append(Row("B4", "replayed outputs identical to the recorded ones", "yes" if identical else "NO"))
        res.details.update(record_s=record_s, replay_s=times, identical=identical, calls=n_calls, prompts=source)
        res.notes.append(f"recorded with the stub server's answer function in-process (same texts as over HTTP) in "
                         f"{record_s:.1f} s; replay wall s {median(times):.2f} ({spread(times)}) over {rounds} "
                         f"round(s), each into a fresh store; {source}")
        # 2. AlpacaEval-sized answers from the zero-latency in-process model
        models2 = models
        with instant_moakit():
            rec = TraceStore(d / "recorded2.db")
            df2 = asyncio.run(arun_batch(together_moa, prompts, models=models2, store=rec, max_concurrency=64,
                                         progress=False))
            rec.close()
        times2, identical2 = _replay_rounds(together_moa, prompts, models2, d / "recorded2.db", d, rounds,
                                            list(df2["output"]))
        rate2 = [n_calls / t for t in times2]
        res.rows.append(Row("B4", "replay calls/s, 1,500-character answers", f"{median(rate2):,.0f}",
                            goal="(no goal: shows per-byte cost)"))
        res.details.update(replay2_s=times2, identical2=identical2)
        res.notes.append(f"with 1,500-character answers: replay wall s {median(times2):.2f} ({spread(times2)}), "
                         f"outputs identical: {identical2}")
    return res
