"""B8 Ray executor: a litellm-bound batch (MoA-Lite through litellm against the stub answering
after 50 ms, 64 calls in flight) run by ``run_batch`` in one process and by
``run_batch(..., executor="ray")`` on a local Ray with 2 workers (one shard each, the cap shared
out: 32 each), alternately. One event loop completes at most 1 / (litellm's CPU per call) calls
a second; two worker processes have two loops. The Ray side's time includes dealing the shards
out, the workers' runs and the merge of their files into the batch's store; Ray's start and the
workers' first import of litellm fall in the untimed warm-up round."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .common import CaseResult, Row, alpaca_prompts, median, pair_ratios, spread, stub_models

LATENCY = 0.05
CAP = 64
WORKERS = 2


def run(quick: bool) -> CaseResult:
    import moakit
    from moakit import ClientConfig
    from moakit.pipelines import count_calls, moa_lite
    from moakit.store.store import TraceStore
    from moakit.testing.stub_server import StubServer

    try:
        import ray
    except ImportError:
        res = CaseResult("B8", "Ray executor: skipped, Ray is not installed (pip install 'moakit[ray]')")
        res.rows.append(Row("B8", "skipped: Ray is not installed", "-", goal="speed-up > 1", met=None))
        return res
    n_prompts, pairs = (8, 1) if quick else (120, 3)
    prompts, source = alpaca_prompts(n_prompts)
    n_calls = n_prompts * count_calls(moa_lite)
    res = CaseResult("B8", f"Ray executor: {n_prompts} prompts x MoA-Lite through litellm, 50 ms stub, {CAP} in flight, "
                           f"1 process vs Ray with {WORKERS} local workers")
    cfg = ClientConfig(transport="litellm")
    started_ray = not ray.is_initialized()
    times: dict[str, list[float]] = {"one": [], "ray": []}
    same = True
    with tempfile.TemporaryDirectory() as d, StubServer(latency=LATENCY) as stub:
        models = stub_models(stub, [a for s in moa_lite for a in s.agents])
        common = dict(models=models, seed=5, progress=False, templates="mixture-llm", max_concurrency=CAP,
                      client_config=cfg)

        def one(i):
            return moakit.run_batch(moa_lite, prompts, store=Path(d) / f"one{i}.db", **common)

        def on_ray(i):
            return moakit.run_batch(moa_lite, prompts, store=Path(d) / f"ray{i}.db", executor="ray", workers=WORKERS,
                                    **common)
        one(-1), on_ray(-1)  # warm-up: litellm imported here and in both workers, Ray started
        for i in range(pairs):
            for name, fn in (("one", one), ("ray", on_ray)):
                t0 = time.perf_counter()
                df = fn(i)
                times[name].append(time.perf_counter() - t0)
                assert df["error"].isna().all(), df["error"].dropna().head(3).tolist()
            a = TraceStore(Path(d) / f"one{i}.db").calls().sort_values("request_key")
            b = TraceStore(Path(d) / f"ray{i}.db").calls().sort_values("request_key")
            same = same and len(a) == len(b) == n_calls and a["request_key"].tolist() == b["request_key"].tolist() \
                and a["output"].tolist() == b["output"].tolist()
        cpus = int(ray.cluster_resources().get("CPU", 0))
    if started_ray:
        ray.shutdown()
    speedup = pair_ratios(times["one"], times["ray"])
    res.rows.append(Row("B8", f"speed-up, 1 process / Ray with {WORKERS} workers (wall, merge included)",
                        f"{median(speedup):.2f}x", f"{n_calls / median(times['one']):.0f} calls/s in 1 process",
                        f"{n_calls / median(times['ray']):.0f} calls/s on Ray", "> 1 (a speed-up)",
                        median(speedup) > 1))
    res.rows.append(Row("B8", "merged file holds the single-process run's calls, outputs and request keys",
                        "yes" if same else "NO", goal="yes", met=same))
    res.details = {"one_s": times["one"], "ray_s": times["ray"], "speedup": speedup, "same": same, "calls": n_calls,
                   "ray_cpus": cpus}
    res.notes.append(f"{n_calls} calls per run, {pairs} alternating pairs; wall s 1 process {median(times['one']):.2f} "
                     f"({spread(times['one'])}), Ray {median(times['ray']):.2f} ({spread(times['ray'])}); Ray cluster "
                     f"CPUs {cpus}; the stub server shares the machine's cores with both; {source}")
    return res
