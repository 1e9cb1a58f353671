"""``run`` and ``arun``: one pipeline on one query, every call recorded."""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from .. import steps as S
from ..errors import PipelineError
from ..llm import Caller, ClientConfig
from ..llm.caller import check_transport
from ..prompts import TemplateSet
from ..store.store import open_store
from .budget import Budget, make_budget
from .engine import Runner, Session
from .loop import run_sync
from .plan import check_positive, check_store, normalize_query, open_cache, plan_run
from .recorder import Recorder
from .result import Result


def make_session(store, cache, *, offline=False, max_concurrency=None, per_model_concurrency=None,
                 client_config=None, record_content=True, otel=None, specs=None, budget=None,
                 listeners: Sequence = ()) -> Session:
    """The caller, recorder and cache a run (or a batch's runs) share; arguments checked first
    (``specs``: the run's models, checked against ``client_config.transport``; ``budget``: the
    run's or batch's :class:`~moakit.runner.budget.Budget`, or None; ``listeners``: told of every
    record, see :meth:`moakit.runner.recorder.Recorder.add_listener`)."""
    check_positive("max_concurrency", max_concurrency)
    check_positive("per_model_concurrency", per_model_concurrency)
    if client_config is not None and not isinstance(client_config, ClientConfig):
        raise PipelineError(f"client_config must be a moakit.ClientConfig, got {type(client_config).__name__}")
    cfg = client_config or ClientConfig()
    if specs is not None and not offline:
        check_transport(specs, cfg)
    caller = Caller(cfg, max_concurrency=16 if max_concurrency is None else max_concurrency,
                    per_model_concurrency=per_model_concurrency)
    return Session(caller, Recorder(store, otel=otel, listeners=listeners), store, cache=cache, offline=offline,
                   record_content=record_content and cfg.record_content, budget=budget)


def live_view(kind: str, **info):
    """``live=True``: the notebook view that fills in while the run (``kind="run"``) or batch
    (``"batch"``) is in flight, displayed now. It lives in the widgets layer, looked up by name
    (runs never draw); it is a recorder listener with ``finish(result)`` for the end."""
    return importlib.import_module("moakit.widgets").live_view(kind, **info)


def progress_bar(total: int, desc: str, unit: str):
    """A batch's or an ablation's tqdm bar, displayed now; in a notebook the widgets layer shows
    it so that a saved notebook reads its last line (looked up by name, as :func:`live_view`)."""
    return importlib.import_module("moakit.widgets").progress_bar(total, desc, unit)


def check_call(pipeline, query, store, cache) -> None:
    """Input errors that must fail before the trace file is even opened."""
    S.validate_pipeline(pipeline)
    normalize_query(query)
    check_store(store)
    check_store(None if isinstance(cache, bool) else cache)


async def arun(pipeline, query, *, seed: int | None = None, models: Any = None, store: Any = None,
               max_concurrency: int | None = None, cache: Any = None, offline: bool = False,
               templates: str | TemplateSet = "together", max_tokens: int | None = None,
               per_model_concurrency: int | None = None, client_config: ClientConfig | None = None,
               record_content: bool = True, name: str | None = None, otel: Any = None,
               rng_seed: int | None = None, budget_usd: float | None = None, max_paid_calls: int | None = None,
               budget: Budget | None = None, live: bool = False, listeners: Sequence = ()) -> Result:
    """Run ``pipeline`` on ``query``; every call is recorded in ``store``. See :func:`run`."""
    check_call(pipeline, query, store, cache)
    budget = make_budget(budget_usd, max_paid_calls, budget)
    view = live_view("run") if live else None
    try:
        st = open_store(store)
        cache_store = open_cache(cache, st)
        plan = plan_run(pipeline, query, seed=seed, models=models, templates=templates, max_tokens=max_tokens,
                        cache=cache_store, offline=offline, name=name, rng_seed=rng_seed)
        if budget is not None and not offline:
            budget.check_models(plan.specs)  # an unpriced model under budget_usd: refused before any call
        session = make_session(st, cache_store, offline=offline, max_concurrency=max_concurrency,
                               per_model_concurrency=per_model_concurrency, client_config=client_config,
                               record_content=record_content, otel=otel, specs=plan.specs, budget=budget,
                               listeners=[*listeners, *([view] if view is not None else [])])
        try:
            result = await Runner(plan, session).run()
        finally:
            session.recorder.flush()
    except BaseException as e:
        if view is not None:
            view.finish(None, error=e)
        raise
    if view is not None:
        view.finish(result)
        result.view = view
    return result


def run(pipeline, query, *, seed: int | None = None, models: Any = None, store: Any = None,
        max_concurrency: int | None = None, live: bool = False, **kwargs) -> Result:
    """Run a pipeline on one query and return a :class:`~moakit.run.result.Result`.

    Args:
        pipeline: a list of steps (e.g. ``moakit.pipelines.together_moa``).
        query: a string, or a list of chat messages.
        seed: makes Shuffle/Dropout/Sample reproducible and is sent (derived per call) to the models.
        models: ``"local"`` to run every agent on the embedded model, or a dict agent -> litellm model
            string (or ``{"model": ..., "api_base": ..., "api_key": ...}``); other agents resolve through
            :data:`moakit.models.ALIASES`.
        store: a :class:`TraceStore` or path (default ``$MOAKIT_TRACES`` or ``traces/moakit.db``).
        max_concurrency: calls in flight at once (default 16); ``per_model_concurrency`` caps each model.
        cache: a store (or ``True`` for ``store``) whose recorded calls are served instead of paid for.
        offline: with ``cache``, a call not in the store raises :class:`moakit.ReplayMiss`.
        templates: prompt set, ``"together"`` (the paper's layout, default) or ``"mixture-llm"``.
        max_tokens: caps every call's max_tokens (handy for quick runs on the embedded model).
        record_content: set False to keep prompts out of the trace (outputs are always kept for replay).
        otel: an OpenTelemetry ``SpanProcessor`` or ``SpanExporter`` that also gets every span.
        name: the run's pipeline name (default: the name in :mod:`moakit.pipelines`, if it is one).
        budget_usd: no call starts that could take this run's spending past it (worst case: the
            input counted before the call plus all of ``max_tokens``, at litellm's prices; see
            :mod:`moakit.runner.budget`); the run then raises :class:`moakit.BudgetExceeded`.
        max_paid_calls: at most this many calls are sent to models (calls served from the store
            are free and not counted).
        budget: a :class:`~moakit.runner.budget.Budget` shared with other work, instead of the two above.
        live: in a notebook, show the run's tree now and fill it in as calls finish (the
            aggregator's answer streams where the provider streams); the cell's ``result`` then
            draws nothing more. ``listeners``: callables told of every record (see
            :meth:`moakit.runner.recorder.Recorder.add_listener`).

    A pipeline may be built from ``mixture_llm``'s steps (the mixture-llm page's code): they are
    converted by their fields (:mod:`moakit.mixture`).
    """
    if not live:
        return run_sync(arun(pipeline, query, seed=seed, models=models, store=store,
                             max_concurrency=max_concurrency, **kwargs))
    check_call(pipeline, query, store, kwargs.get("cache"))
    view = live_view("run")  # displayed here, on the notebook's thread; told of records on the loop's
    listeners = [*kwargs.pop("listeners", ()), view]
    try:
        result = run_sync(arun(pipeline, query, seed=seed, models=models, store=store,
                               max_concurrency=max_concurrency, listeners=listeners, **kwargs))
    except BaseException as e:
        view.finish(None, error=e)
        raise
    view.finish(result)
    result.view = view
    return result
