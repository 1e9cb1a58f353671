"""Running one pipeline over many prompts: one trace per prompt, shared caps on calls in
flight, a progress bar, resumable through the cache (a rerun pays only for what is missing)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import uuid
from typing import Any, Sequence

from .engine import _open_cache, _Runner, flush_pending, make_client, normalize_query, open_store, plan_run, run_sync
from .errors import MoakitError, PipelineError
from .steps import validate_pipeline
from .tracing.keys import derived_seed


def _prompt_list(prompts: Any) -> list:
    try:
        import pandas as pd

        if isinstance(prompts, pd.DataFrame):
            for col in ("prompt", "instruction", "query", "question"):
                if col in prompts.columns:
                    return list(prompts[col])
            raise PipelineError(f"the prompts DataFrame needs a column prompt, instruction, query or question; "
                                f"it has {list(prompts.columns)}")
        if isinstance(prompts, pd.Series):
            return list(prompts)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise PipelineError("prompts must be a list of queries (strings or message lists) or a DataFrame")
    return list(prompts)


async def arun_batch(pipeline, prompts, *, seed: int | None = None, models: Any = None, store: Any = None,
                     cache: Any = None, max_concurrency: int | None = None, offline: bool = False,
                     templates="together", max_tokens: int | None = None, per_model_concurrency: int | None = None,
                     client_config=None, progress: bool = True, name: str | None = None,
                     record_content: bool = True):
    """See :func:`run_batch`."""
    import pandas as pd

    items = _prompt_list(prompts)
    if not items:
        raise PipelineError("prompts is empty")
    validate_pipeline(pipeline)  # bad input fails before the trace file is even opened
    queries = []
    for i, q in enumerate(items):  # name the bad prompt: in a batch of 805, "the query is empty" is not enough
        try:
            queries.append(normalize_query(q))
        except PipelineError as e:
            raise PipelineError(f"prompt {i}: {e}") from None
    store = open_store(store)
    cache_store = _open_cache(cache, store)
    # plan before the first call: bad input fails here, nothing is spent. Pipeline, models and keys
    # are the same for every prompt, so they are checked once; each item gets its query and RNG seed.
    base = plan_run(pipeline, queries[0], seed=seed, models=models, templates=templates, max_tokens=max_tokens,
                    cache=cache_store, offline=offline, name=name)
    plans = [dataclasses.replace(base, query=q, rng_seed=derived_seed(seed, f"item{i}") if seed is not None
                                 else secrets.randbits(31))
             for i, q in enumerate(queries)]
    cap = 16 if max_concurrency is None else max_concurrency
    client, tracer = make_client(store, cache_store, offline, cap, per_model_concurrency, client_config,
                                 record_content)
    batch_id = uuid.uuid4().hex[:16]
    items_in_flight = asyncio.Semaphore(max(1, cap))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=f"moakit batch {batch_id[:8]}", unit="prompt")

    async def one(i: int, plan):
        async with items_in_flight:
            runner = _Runner(plan, client, tracer)
            row = {"item": i, "prompt": items[i], "output": None, "trace_id": None, "error": None}
            try:
                res = await runner.run(batch_id=batch_id, batch_item=i)
                row.update(output=res.output, trace_id=res.trace_id, error=res.error,
                           calls_paid=res.calls_paid, calls_reused=res.calls_reused)
            except MoakitError as e:  # e.g. ReplayMiss offline: this prompt fails, the batch goes on
                row["error"] = f"{type(e).__name__}: {e}"
            row.update({k: v for k, v in runner.totals.items()})
            if bar is not None:
                bar.update(1)
            return row

    try:
        rows = await asyncio.gather(*(one(i, p) for i, p in enumerate(plans)))
    finally:
        if bar is not None:
            bar.close()
        flush_pending(tracer)  # rows still waiting (replayed runs ride in the next commit): written now
    df = pd.DataFrame(rows)
    for col in ("calls_paid", "calls_reused"):
        df[col] = df.get(col, pd.Series(0, index=df.index)).fillna(0).astype(int)
    df.attrs["batch_id"] = batch_id
    return df[["item", "prompt", "output", "trace_id", "cost_usd", "input_tokens", "output_tokens", "calls",
               "calls_paid", "calls_reused", "error"]]


def run_batch(pipeline, prompts, **kwargs):
    """Run ``pipeline`` over ``prompts`` (a list, or a DataFrame with a ``prompt`` /
    ``instruction`` column) and return a DataFrame: item, prompt, output, trace_id, cost_usd,
    input_tokens, output_tokens, calls, calls_paid, calls_reused, error.

    Takes the keyword arguments of :func:`moakit.run` plus ``progress`` (tqdm bar, default on).
    With ``cache=True`` (or a store), a rerun after an interruption pays only for the calls
    that had not finished. A prompt whose aggregator fails gets ``error`` and no output."""
    return run_sync(arun_batch(pipeline, prompts, **kwargs))
