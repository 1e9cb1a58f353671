"""Running one pipeline over many prompts: one trace per prompt, shared caps on calls in
flight, a progress bar, resumable through the cache (a rerun pays only for what is missing)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from typing import Any, Sequence

from ..errors import MoakitError, PipelineError
from ..steps import validate_pipeline
from ..store.keys import derived_seed
from ..store.records import CallRecord
from ..store.store import open_store
from .api import live_view, make_session
from .engine import Runner
from .loop import run_sync
from .plan import check_store, normalize_query, open_cache, pipeline_name, plan_run, prompt_list

def pipeline_label(pipeline) -> str:
    """What a progress bar calls an unnamed pipeline: its steps (``Propose×3 → Shuffle → Aggregate``)."""
    parts = []
    for step in pipeline:
        agents = getattr(step, "agents", None)
        parts.append(f"{step.kind}×{len(agents)}" if agents and len(agents) > 1 else step.kind)
    return " → ".join(parts)


class Progress:
    """The batch's tqdm bar: prompts done, and (a recorder listener) the calls paid and reused
    and the dollars spent so far, redrawn at most twice a second."""

    def __init__(self, bar):
        self.bar = bar
        self.paid = self.reused = self.failed = self.unpriced = 0
        self.cost = 0.0
        self.shown = 0.0

    def __call__(self, rec) -> None:
        if not isinstance(rec, CallRecord):
            return
        if rec.cached:
            self.reused += 1
        elif rec.error_type is not None:
            self.failed += 1
        else:
            self.paid += 1
            self.cost += rec.cost_usd or 0.0
            self.unpriced += rec.cost_usd is None
        self.show(force=False)

    def show(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.shown < 0.5:
            return
        self.shown = now
        failed = f" · {self.failed} failed" if self.failed else ""
        unpriced = f" (+{self.unpriced} calls without a price)" if self.unpriced else ""
        self.bar.set_postfix_str(f"calls {self.paid} paid · {self.reused} reused{failed} · ${self.cost:.4f}{unpriced}",
                                 refresh=True)


BATCH_COLUMNS = ["item", "prompt", "output", "trace_id", "cost_usd", "input_tokens", "output_tokens", "calls",
                 "attempts", "calls_paid", "calls_reused", "error"]


async def arun_batch(pipeline, prompts, *, seed: int | None = None, models: Any = None, store: Any = None,
                     cache: Any = None, max_concurrency: int | None = None, offline: bool = False,
                     templates="together", max_tokens: int | None = None, per_model_concurrency: int | None = None,
                     client_config=None, progress: bool = True, name: str | None = None,
                     record_content: bool = True, otel: Any = None, live: bool = False, listeners: Sequence = ()):
    """See :func:`run_batch`."""
    import pandas as pd

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
    plans = [dataclasses.replace(base, query=q, rng_seed=derived_seed(seed, f"item{i}") if seed is not None
                                 else secrets.randbits(31))
             for i, q in enumerate(queries)]
    cap = 16 if max_concurrency is None else max_concurrency
    label = base.name or pipeline_label(base.pipeline)
    bar = meter = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=label, unit="prompt")
        meter = Progress(bar)
    view = live_view("batch", total=len(items), name=label) if live else None
    listeners = [*listeners, *([meter] if meter else []), *([view] if view else [])]
    session = make_session(st, cache_store, offline=offline, max_concurrency=cap,
                           per_model_concurrency=per_model_concurrency, client_config=client_config,
                           record_content=record_content, otel=otel, listeners=listeners)
    batch_id = uuid.uuid4().hex[:16]
    items_in_flight = asyncio.Semaphore(max(1, cap))

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
        try:
            rows = await asyncio.gather(*(one(i, p) for i, p in enumerate(plans)))
        finally:
            if bar is not None:
                meter.show()
                bar.close()
            session.recorder.flush()  # rows still waiting (replayed runs ride in the next commit): written now
    except BaseException as e:
        if view is not None:
            view.finish(None, error=e)
        raise
    df = pd.DataFrame(rows, columns=BATCH_COLUMNS)
    df.attrs["batch_id"] = batch_id
    if view is not None:
        view.finish(df, store=st)
    return df


def run_batch(pipeline, prompts, **kwargs):
    """Run ``pipeline`` over ``prompts`` (a list, or a DataFrame with a ``prompt`` /
    ``instruction`` column) and return a DataFrame: item, prompt, output, trace_id, cost_usd,
    input_tokens, output_tokens, calls (logical calls), attempts (made to providers), calls_paid,
    calls_reused, error.

    Takes the keyword arguments of :func:`moakit.run` plus ``progress`` (a tqdm bar named after
    the pipeline or variant, counting prompts, calls paid and reused and dollars so far; default
    on). With ``cache=True`` (or a store), a rerun after an interruption pays only for the calls
    that had not finished. A prompt whose aggregator fails gets ``error`` and no output.
    ``live=True`` (in a notebook) shows the batch view now and fills it in as runs progress."""
    if not kwargs.get("live"):
        return run_sync(arun_batch(pipeline, prompts, **kwargs))
    # the view is made and displayed here, on the notebook's thread, and finished here too
    kwargs.pop("live")
    steps = validate_pipeline(pipeline)  # bad input fails before anything is drawn
    items = prompt_list(prompts)
    view = live_view("batch", total=len(items), name=kwargs.get("name") or pipeline_name(pipeline)
                     or pipeline_label(steps))
    try:
        df = run_sync(arun_batch(pipeline, prompts, listeners=[*kwargs.pop("listeners", ()), view], **kwargs))
    except BaseException as e:
        view.finish(None, error=e)
        raise
    view.finish(df, store=kwargs.get("store"))
    return df
