"""B9 adaptive concurrency: a batch capped at 64 calls in flight against a stub that answers 429
(with Retry-After 0.2 s) to every request above 20 in flight, 50 ms answers otherwise (MoA-Lite,
the direct transport). With the adaptive limit (the default) and without it, alternately: the
share of attempts rate-limited after the first 2 seconds (the goal: under 5%), every 429 on a
span (the stub's count against the attempts recorded with RateLimitError), calls/s."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from .common import CaseResult, Row, alpaca_prompts, median, spread, stub_models

LATENCY = 0.05
CAP = 64
SERVER_SLOTS = 20
SETTLE_S = 2.0


def run(quick: bool) -> CaseResult:
    from moakit import ClientConfig
    from moakit.pipelines import count_calls, moa_lite
    from moakit.runner.batch import arun_batch
    from moakit.store.store import TraceStore
    from moakit.testing.stub_server import StubServer

    n_prompts, pairs = (20, 1) if quick else (200, 3)
    # the quick run (260 calls) can end within 2 s on a quiet machine: it counts from 0.2 s
    settle = 0.2 if quick else SETTLE_S
    prompts, source = alpaca_prompts(n_prompts)
    n_calls = n_prompts * count_calls(moa_lite)
    res = CaseResult("B9", f"adaptive concurrency: {n_prompts} prompts x MoA-Lite, cap {CAP}, stub answering 429 above "
                           f"{SERVER_SLOTS} in flight")
    out: dict[str, dict[str, list]] = {k: {"late_share": [], "share": [], "rate": [], "on_spans": [], "served_max": []}
                                       for k in ("adaptive", "fixed")}
    with tempfile.TemporaryDirectory() as d:
        for i in range(-1 if not quick else 0, pairs):  # (the first pair of a full run warms up, untimed)
            for name, adaptive in (("adaptive", True), ("fixed", False)):
                with StubServer(latency=LATENCY, max_in_flight=SERVER_SLOTS, retry_after=0.2) as stub:
                    models = stub_models(stub, [a for s in moa_lite for a in s.agents])
                    db = Path(d) / f"{name}{i}.db"
                    cfg = ClientConfig(transport="direct", adaptive=adaptive, retries=8)
                    t0 = time.perf_counter()
                    df = asyncio.run(arun_batch(moa_lite, prompts, models=models, store=db, max_concurrency=CAP,
                                                seed=1, templates="mixture-llm", progress=False, client_config=cfg))
                    wall = time.perf_counter() - t0
                    stats = stub.stats()
                if i < 0:
                    continue
                st = TraceStore(db)
                att = st.attempts()
                st.close()
                limited = att["error"].fillna("").str.startswith("RateLimitError")
                late = att["start_ns"] >= att["start_ns"].min() + settle * 1e9
                o = out[name]
                o["late_share"].append(float(limited[late].mean()) if late.any() else float("nan"))
                o["share"].append(float(limited.mean()))
                o["rate"].append(int(df["calls"].sum()) / wall)
                o["on_spans"].append(int(limited.sum()) == stats.get("fault_overload", 0) and len(att) == stats["requests"])
                o["served_max"].append(stats.get("max_in_flight_served"))
    ad, fx = out["adaptive"], out["fixed"]
    res.rows.append(Row("B9", f"share of attempts answered 429 after the first {settle:g} s (peer: the same without "
                              "the adaptive limit)", f"{median(ad['late_share']):.1%}", f"{median(fx['late_share']):.1%}",
                        goal="< 5%", met=median(ad["late_share"]) < 0.05))
    on = all(ad["on_spans"]) and all(fx["on_spans"])
    res.rows.append(Row("B9", "every 429 the stub sent is an attempt span with RateLimitError", "yes" if on else "NO",
                        goal="yes", met=on))
    res.rows.append(Row("B9", "share of all attempts answered 429, first seconds included", f"{median(ad['share']):.1%}",
                        f"{median(fx['share']):.1%}"))
    res.rows.append(Row("B9", f"calls/s (the server's ideal: {SERVER_SLOTS} / 50 ms = 400)", f"{median(ad['rate']):.0f}",
                        f"{median(fx['rate']):.0f}"))
    res.details = {"adaptive": ad, "fixed": fx, "calls": n_calls}
    res.notes.append(f"{n_calls} calls per run, {pairs} alternating pairs, a fresh stub each run; 429 shares after "
                     f"{settle:g} s adaptive {spread(ad['late_share'])}, without {spread(fx['late_share'])}; calls/s "
                     f"adaptive {spread(ad['rate'])}, without {spread(fx['rate'])} (retries=8, Retry-After 0.2 s); the "
                     f"stub served at most {max(ad['served_max'] + fx['served_max'])} at once; {source}")
    return res
