"""Running one pipeline over many prompts: one trace per prompt, shared caps on calls in
flight, a progress bar, resumable through the cache (a rerun pays only for what is missing)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import uuid
from typing import Any

from ..errors import BudgetExceeded, MoakitError, PipelineError
from ..steps import validate_pipeline
from ..store.keys import derived_seed
from ..store.store import open_store
from .api import make_session
from .budget import Budget, make_budget
from .engine import Runner
from .loop import run_sync
from .plan import check_store, normalize_query, open_cache, plan_run, prompt_list

BATCH_COLUMNS = ["item", "prompt", "output", "trace_id", "cost_usd", "input_tokens", "output_tokens", "calls",
                 "attempts", "calls_paid", "calls_reused", "error"]


async def arun_batch(pipeline, prompts, *, seed: int | None = None, models: Any = None, store: Any = None,
                     cache: Any = None, max_concurrency: int | None = None, offline: bool = False,
                     templates="together", max_tokens: int | None = None, per_model_concurrency: int | None = None,
                     client_config=None, progress: bool = True, name: str | None = None,
                     record_content: bool = True, otel: Any = None, budget_usd: float | None = None,
                     max_paid_calls: int | None = None, budget: Budget | None = None, estimate: bool = False):
    """See :func:`run_batch`."""
    import pandas as pd

    budget = make_budget(budget_usd, max_paid_calls, budget)

    items = prompt_list(prompts)
    if not items:
        raise PipelineError("prompts is empty")
    validate_pipeline(pipeline)  # bad input fails before the trace file is even opened
    queries = []
    for i, q in enumerate(items):  # name the bad prompt: in a batch of 805, "the query is empty" is not enough
        try:
            queries.append(normalize_query(q))
        except PipelineError as e:
            raise PipelineError(f"prompt {i}: {e}") from None
    check_store(store)
    check_store(None if isinstance(cache, bool) else cache)
    st = open_store(store)
    cache_store = open_cache(cache, st)
    # planned before the first call: pipeline, models and keys are the same for every prompt, so
    # they are checked once; each item gets its query and RNG seed
    base = plan_run(pipeline, queries[0], seed=seed, models=models, templates=templates, max_tokens=max_tokens,
                    cache=cache_store, offline=offline, name=name)
    if budget is not None and not offline:
        budget.check_models(base.specs)  # an unpriced model under budget_usd: refused before any call
    if estimate:  # the bill before paying it: shown, and kept on the result
        from .estimate import ashow_estimate

        shown = await ashow_estimate(base.pipeline, queries, seed=seed, models=models, cache=cache_store,
                              max_tokens=max_tokens, templates=templates, name=base.name)
    plans = [dataclasses.replace(base, query=q, rng_seed=derived_seed(seed, f"item{i}") if seed is not None
                                 else secrets.randbits(31))
             for i, q in enumerate(queries)]
    cap = 16 if max_concurrency is None else max_concurrency
    session = make_session(st, cache_store, offline=offline, max_concurrency=cap,
                           per_model_concurrency=per_model_concurrency, client_config=client_config,
                           record_content=record_content, otel=otel, budget=budget)
    batch_id = uuid.uuid4().hex[:16]
    items_in_flight = asyncio.Semaphore(max(1, cap))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = base.name or "pipeline"
        bar = tqdm(total=len(items), desc=f"moakit {label}", unit="prompt")

    async def one(i: int, plan):
        async with items_in_flight:
            runner = Runner(plan, session)
            row = {"item": i, "prompt": items[i], "output": None, "trace_id": None, "error": None}
            try:
                res = await runner.run(batch_id=batch_id, batch_item=i, batch_seed=seed)
                row.update(output=res.output, trace_id=res.trace_id, error=res.error)
            except MoakitError as e:  # e.g. ReplayMiss offline: this prompt fails, the batch goes on
                row["error"] = f"{type(e).__name__}: {e}"
                row["trace_id"] = runner.trace_id or None
            t = runner.totals
            row.update(cost_usd=t.cost_usd, input_tokens=t.input_tokens, output_tokens=t.output_tokens,
                       calls=t.calls, attempts=t.attempts, calls_paid=t.paid, calls_reused=t.reused)
            if bar is not None:
                bar.update(1)
            return row

    try:
        rows = await asyncio.gather(*(one(i, p) for i, p in enumerate(plans)))
    finally:
        if bar is not None:
            bar.close()
        session.recorder.flush()  # rows still waiting (replayed runs ride in the next commit): written now
    df = pd.DataFrame(rows, columns=BATCH_COLUMNS)
    df.attrs["batch_id"] = batch_id
    df.attrs["store"] = str(st.path)  # where its traces are (moakit.diff finds them there)
    if estimate:
        df.attrs["estimate"] = shown
    stopped = df["error"].fillna("").str.startswith(BudgetExceeded.__name__)
    if budget is not None and stopped.any():
        raise budget.exceeded(f"{budget.stopped}. Of {len(df)} prompts, {batch_progress(df, stopped)}",
                              partial=df, trace_ids=[t for t in df.loc[stopped, "trace_id"] if t])
    return df


def batch_progress(df, stopped) -> str:
    """What finished and what the budget stopped, in a batch's rows."""
    done = df["error"].isna() & ~stopped
    failed = ~done & ~stopped

    def items(mask):
        idx = list(df.loc[mask, "item"])
        return ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "")

    parts = [f"{int(done.sum())} finished" + (f" (items {items(done)})" if done.any() else ""),
             f"{int(stopped.sum())} stopped by the budget (items {items(stopped)}; their calls that were paid "
             "are recorded)"]
    if failed.any():
        parts.append(f"{int(failed.sum())} failed otherwise (items {items(failed)})")
    return "; ".join(parts) + f"; ${float(df['cost_usd'].fillna(0).sum()):.6f} paid by this batch"


def run_batch(pipeline, prompts, **kwargs):
    """Run ``pipeline`` over ``prompts`` (a list, or a DataFrame with a ``prompt`` /
    ``instruction`` column) and return a DataFrame: item, prompt, output, trace_id, cost_usd,
    input_tokens, output_tokens, calls (logical calls), attempts (made to providers), calls_paid,
    calls_reused, error.

    Takes the keyword arguments of :func:`moakit.run` plus ``progress`` (tqdm bar, default on).
    With ``cache=True`` (or a store), a rerun after an interruption pays only for the calls
    that had not finished. A prompt whose aggregator fails gets ``error`` and no output.

    ``estimate=True`` shows :func:`moakit.estimate`'s table (calls paid and reused, tokens,
    dollars per step and agent) before the first call, and keeps it in ``df.attrs["estimate"]``.

    ``budget_usd`` / ``max_paid_calls`` (or a shared ``budget=``): no call starts that could take
    the batch past them (see :mod:`moakit.runner.budget`). When one is refused the batch stops
    cleanly (calls in flight finish and are recorded, nothing new starts) and raises
    :class:`moakit.BudgetExceeded` saying what finished; ``e.partial`` is this DataFrame, with
    ``error`` set on the prompts that were stopped. Run it again with ``cache=True`` and a larger
    budget: it pays only for the rest."""
    return run_sync(arun_batch(pipeline, prompts, **kwargs))
