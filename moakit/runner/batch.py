"""Running one pipeline over many prompts: one trace per prompt, shared caps on calls in
flight, a progress bar, resumable through the cache (a rerun pays only for what is missing)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from typing import Any, Sequence

from ..errors import BudgetExceeded, MoakitError, PipelineError
from ..steps import validate_pipeline
from ..store.keys import derived_seed
from ..store.records import CallRecord
from ..store.store import open_store
from .api import live_view, make_session, progress_bar
from .budget import Budget, make_budget
from .engine import Runner
from .loop import run_sync
from .plan import check_positive, check_store, normalize_query, open_cache, pipeline_name, plan_run, prompt_list
from .ray_executor import plain, run_on_ray

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


def check_batch(pipeline, prompts) -> tuple[list, list]:
    """(the prompts as given, their queries): refused before anything else happens."""
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
    return items, queries


def plan_batch(pipeline, queries, store, cache, **plan):
    """(the store, the cache store, the first prompt's plan). Planned before the first call:
    pipeline, models and keys are the same for every prompt, so they are checked once; each item
    then gets its query and RNG seed."""
    check_store(store)
    check_store(None if isinstance(cache, bool) else cache)
    st = open_store(store)
    cache_store = open_cache(cache, st)
    return st, cache_store, plan_run(pipeline, queries[0], cache=cache_store, **plan)


async def arun_batch(pipeline, prompts, *, seed: int | None = None, models: Any = None, store: Any = None,
                     cache: Any = None, max_concurrency: int | None = None, offline: bool = False,
                     templates="together", max_tokens: int | None = None, per_model_concurrency: int | None = None,
                     client_config=None, progress: bool = True, name: str | None = None,
                     record_content: bool = True, otel: Any = None, budget_usd: float | None = None,
                     max_paid_calls: int | None = None, budget: Budget | None = None, estimate: bool = False,
                     item_indices=None, batch_id: str | None = None, live: bool = False, listeners: Sequence = ()):
    """See :func:`run_batch`. ``item_indices`` and ``batch_id``: these prompts are part of a
    larger batch (a shard run by the Ray executor): their item numbers in it (which also derive
    each item's seed) and its id."""
    import pandas as pd

    budget = make_budget(budget_usd, max_paid_calls, budget)
    items, queries = check_batch(pipeline, prompts)
    if item_indices is None:
        item_indices = range(len(items))
    elif len(item_indices) != len(items):
        raise PipelineError(f"item_indices has {len(item_indices)} entries for {len(items)} prompts")
    st, cache_store, base = plan_batch(pipeline, queries, store, cache, seed=seed, models=models, templates=templates,
                                       max_tokens=max_tokens, offline=offline, name=name)
    if budget is not None and not offline:
        budget.check_models(base.specs)  # an unpriced model under budget_usd: refused before any call
    if estimate:  # the bill before paying it: shown, and kept on the result
        from .estimate import ashow_estimate

        shown = await ashow_estimate(base.pipeline, queries, seed=seed, models=models, cache=cache_store,
                                     max_tokens=max_tokens, templates=templates, name=base.name)
    plans = [dataclasses.replace(base, query=q, rng_seed=derived_seed(seed, f"item{i}") if seed is not None
                                 else secrets.randbits(31))
             for i, q in zip(item_indices, queries)]
    cap = 16 if max_concurrency is None else max_concurrency
    label = base.name or pipeline_label(base.pipeline)
    bar = meter = None
    if progress:
        bar = progress_bar(len(items), label, "prompt")
        meter = Progress(bar)
    view = live_view("batch", total=len(items), name=label) if live else None
    listeners = [*listeners, *([meter] if meter else []), *([view] if view else [])]
    session = make_session(st, cache_store, offline=offline, max_concurrency=cap,
                           per_model_concurrency=per_model_concurrency, client_config=client_config,
                           record_content=record_content, otel=otel, specs=base.specs, budget=budget,
                           listeners=listeners)
    batch_id = batch_id or uuid.uuid4().hex[:16]
    items_in_flight = asyncio.Semaphore(max(1, cap))

    async def one(k: int, plan):
        i = item_indices[k]
        async with items_in_flight:
            runner = Runner(plan, session)
            row = {"item": i, "prompt": items[k], "output": None, "trace_id": None, "error": None}
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
            rows = await asyncio.gather(*(one(k, p) for k, p in enumerate(plans)))
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
    df.attrs["store"] = str(st.path)  # where its traces are (moakit.diff finds them there)
    if view is not None:
        view.finish(df, store=st)
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


def run_batch(pipeline, prompts, *, executor: str = "local", shards: int | None = None, workers: int | None = None,
              shard_dir=None, collect: bool = False, **kwargs):
    """Run ``pipeline`` over ``prompts`` (a list, or a DataFrame with a ``prompt`` /
    ``instruction`` column) and return a DataFrame: item, prompt, output, trace_id, cost_usd,
    input_tokens, output_tokens, calls (logical calls), attempts (made to providers), calls_paid,
    calls_reused, error.

    Takes the keyword arguments of :func:`moakit.run` plus ``progress`` (a tqdm bar named after
    the pipeline or variant, counting prompts, calls paid and reused and dollars so far; default
    on). With ``cache=True`` (or a store), a rerun after an interruption pays only for the calls
    that had not finished. A prompt whose aggregator fails gets ``error`` and no output.
    ``live=True`` (in a notebook) shows the batch view now and fills it in as runs progress.

    ``estimate=True`` shows :func:`moakit.estimate`'s table (calls paid and reused, tokens,
    dollars per step and agent) before the first call, and keeps it in ``df.attrs["estimate"]``.

    ``budget_usd`` / ``max_paid_calls`` (or a shared ``budget=``): no call starts that could take
    the batch past them (see :mod:`moakit.runner.budget`). When one is refused the batch stops
    cleanly (calls in flight finish and are recorded, nothing new starts) and raises
    :class:`moakit.BudgetExceeded` saying what finished; ``e.partial`` is this DataFrame, with
    ``error`` set on the prompts that were stopped. Run it again with ``cache=True`` and a larger
    budget: it pays only for the rest.

    ``executor="ray"`` (needs ``pip install 'moakit[ray]'``) deals the prompts into ``shards``
    Ray tasks (default: one per CPU of the cluster), each writing its own trace file; the files
    are merged into ``store`` when all are done (see :mod:`moakit.runner.ray_executor`). The
    calls, outputs and request keys are those of the same batch run in one process with the same
    seed; ``max_concurrency`` is shared out among the tasks running at once. ``workers``: the
    CPUs of the local Ray started when none is running; ``shard_dir``: a folder every node can
    write (default: a temporary folder beside the store, removed after the merge);
    ``collect=True``: the files come back through Ray's object store instead."""
    if executor == "local":
        if shards is not None or workers is not None or shard_dir is not None or collect:
            raise PipelineError("shards, workers, shard_dir and collect go with executor='ray'")
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
    if executor != "ray":
        raise PipelineError(f"executor must be 'local' or 'ray', got {executor!r}")
    if kwargs.get("live"):
        raise PipelineError("live=True goes with executor='local' (the Ray tasks' calls are not seen here)")
    given = [k for k in ("budget_usd", "max_paid_calls", "budget", "estimate") if kwargs.get(k) not in (None, False)]
    if given:  # one budget shared by shards on several machines is not built: refuse, never overspend
        raise PipelineError(f"{', '.join(given)} not supported with executor='ray' (run the batch locally, "
                            "or estimate it first with moakit.estimate)")
    return run_sync(arun_batch_ray(pipeline, prompts, shards=shards, workers=workers, shard_dir=shard_dir,
                                   collect=collect, **kwargs))


async def arun_batch_ray(pipeline, prompts, *, shards=None, workers=None, shard_dir=None, collect=False,
                         seed: int | None = None, models: Any = None, store: Any = None, cache: Any = None,
                         max_concurrency: int | None = None, offline: bool = False, templates="together",
                         max_tokens: int | None = None, client_config=None, progress: bool = True,
                         name: str | None = None, **kwargs):
    """``run_batch(..., executor="ray")``: everything checked here, before any task starts."""
    import pandas as pd

    items, queries = check_batch(pipeline, prompts)
    st, cache_store, base = plan_batch(pipeline, queries, store, cache, seed=seed, models=models, templates=templates,
                                       max_tokens=max_tokens, offline=offline, name=name)
    check_positive("max_concurrency", max_concurrency)
    make_session(st, cache_store, offline=offline, max_concurrency=max_concurrency, client_config=client_config,
                 specs=base.specs, per_model_concurrency=kwargs.get("per_model_concurrency"))  # (checks only)
    shard_kwargs = dict(kwargs, seed=seed, models=models, cache=plain(st if cache is True else cache_store),
                        offline=offline, templates=templates, max_tokens=max_tokens, client_config=client_config,
                        name=base.name)
    rows, batch_id = await asyncio.to_thread(
        run_on_ray, arun_batch, pipeline, items, store=st, shards=shards, workers=workers, shard_dir=shard_dir,
        collect=collect, max_concurrency=max_concurrency, kwargs=shard_kwargs)
    df = pd.DataFrame(rows, columns=BATCH_COLUMNS)
    df["prompt"] = items  # (as given: rows came back in item order)
    df.attrs["batch_id"] = batch_id
    return df
