"""Running a pipeline: async fan-out per layer, caps on calls in flight, seeded randomness,
provenance of every response, and a span for the run and for each step.

The engine knows nothing about providers: it builds :class:`~moakit.client.CallRequest` s and
hands them to the :class:`~moakit.client.Client`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from opentelemetry import trace as otel_trace
from opentelemetry.trace import Status, StatusCode

from . import steps as S
from .client import CallRequest, Client, ClientConfig
from .errors import MoakitError, PipelineError
from .models import check_keys, check_providers, resolve
from .prompts import TemplateSet, get_template_set
from .rank_parse import parse_rank
from .result import Result
from .tracing import attributes as A
from .tracing.keys import derived_seed, messages_json, request_hash, request_key
from .tracing.exporter import _LONE_SURROGATE, RowSpan, SQLiteSpanProcessor, span_processors
from .tracing.store import TraceStore, open_store


@dataclass(frozen=True)
class Response:
    """A candidate answer and where it came from."""

    text: str
    agent: str
    sample: int
    span_id: str | None  # the call that produced it


class RunFailed(MoakitError):
    """A step that must produce an answer (Aggregate, Vote, Rank, a whole layer) failed."""


# ---- tracer per store: a private TracerProvider, never the global one --------------------
_providers_lock = threading.Lock()


def tracer_for(store: TraceStore):
    """The store's tracer, made once per store and kept on it (``store.tracer``): it lives and
    dies with the store, so a loop of runs adds no provider (the provider is not registered for
    shutdown at exit, which would keep it and its store alive forever; the store's rows are
    flushed at exit by the processor's own hook)."""
    with _providers_lock:
        tracer = getattr(store, "tracer", None)
        if tracer is None:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider

            from .tracing.ids import MoakitIdGenerator

            # span ids sequential per process (see tracing/ids.py): rows append to the store's indexes
            provider = TracerProvider(resource=Resource.create({"service.name": "moakit"}),
                                      id_generator=MoakitIdGenerator(), shutdown_on_exit=False)
            provider.add_span_processor(SQLiteSpanProcessor(store))
            tracer = store.tracer = provider.get_tracer("moakit")
        return tracer


def flush_pending(tracer) -> None:
    """Commit the rows the tracer's store processor holds back (step spans, replayed calls, the
    run spans of runs that paid for nothing): before a run or batch returns, its rows are in the file."""
    in_flight = sys.exc_info()[1]  # called from a ``finally``: an error already on its way out
    for p in span_processors(tracer):
        if isinstance(p, SQLiteSpanProcessor):
            try:
                p.flush()
            except Exception as e:  # noqa: BLE001
                if in_flight is None:
                    raise
                # keep the run's own error (the rows stay queued for the next commit) and say
                # that the trace write failed too, instead of hiding the first error behind it
                in_flight.add_note(f"moakit: writing the waiting trace rows also failed: {type(e).__name__}: {e}")


def normalize_query(query: Any) -> list[dict]:
    """A string or a list of chat messages -> a list of {"role", "content"} dicts."""
    if isinstance(query, str):
        if not query.strip():
            raise PipelineError("the query is empty")
        query = [{"role": "user", "content": query}]
    if isinstance(query, dict):
        query = [query]
    if not isinstance(query, (list, tuple)) or not query:
        raise PipelineError(f"the query must be a string or a non-empty list of chat messages, got {type(query).__name__}")
    out = []
    for i, m in enumerate(query):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise PipelineError(f"query message {i} must be {{'role': 'system'|'user'|'assistant', 'content': str}}, got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in out):
        raise PipelineError("the query messages hold no user turn")
    for i, m in enumerate(out):
        bad = _LONE_SURROGATE.search(m["content"])
        if bad:
            raise PipelineError(f"query message {i} is not valid Unicode: a lone surrogate U+{ord(bad.group()):04X} at "
                                f"character {bad.start()} (no provider accepts it; decode the text with "
                                "errors='replace' first)")
    return out


@dataclass
class RunPlan:
    """Everything checked before the first call."""

    pipeline: list[S.Step]
    query: list[dict]
    specs: dict
    tset: TemplateSet
    rng_seed: int
    model_seed: int | None  # None: the seed is not sent to models (and not part of keys)
    max_tokens: int | None
    name: str | None


def plan_run(pipeline, query, *, seed=None, models=None, templates="together", max_tokens=None, cache=None,
             offline=False, name=None, rng_seed=None) -> RunPlan:
    steps = S.validate_pipeline(pipeline)
    q = normalize_query(query)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise PipelineError(f"seed must be an integer or None, got {seed!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise PipelineError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    agents = [a for s in steps if s.calls_llm for a in s.agents]
    recorded = cache.recorded_agents() if cache is not None else None
    specs = resolve(agents, models, recorded=recorded)
    register_secrets(specs)
    if not offline:
        check_keys(specs)
        check_providers(specs)
    elif cache is None:
        raise PipelineError("offline=True needs cache= (a trace store, or True for store=) to serve the calls from")
    if rng_seed is None:
        rng_seed = seed if seed is not None else secrets.randbits(31)
    return RunPlan(steps, q, specs, get_template_set(templates), rng_seed, seed, max_tokens,
                   name or _pipeline_name(pipeline))


def register_secrets(specs) -> None:
    """Mask every credential this run may send (api_key=, key-like extra kwargs and headers, the
    provider key variables set in the environment) wherever it would be written to a trace,
    e.g. when a provider echoes it back in an error message."""
    from .tracing.redact import add_secret, env_secrets

    def add(value):  # placeholders such as api_key="EMPTY" or "ollama" are no secret: masking them would
        if isinstance(value, str) and len(value) >= 12:  # blank that word out of every prompt and output
            add_secret(value)

    env_secrets()
    for spec in specs.values():
        add(spec.api_key)
        for k, v in spec.extra:
            if isinstance(v, dict):  # headers / extra_headers
                for hk, hv in v.items():
                    if isinstance(hv, str) and re.search(r"(?i)auth|key|token|secret", str(hk)):
                        add(hv.split(" ", 1)[-1] if hv.lower().startswith("bearer ") else hv)
            elif isinstance(v, str) and re.search(r"(?i)key|token|secret|password", str(k)):
                add(v)


def _pipeline_name(pipeline) -> str | None:
    from . import pipelines

    for k, v in pipelines.ALL.items():
        if v is pipeline:
            return k
    return None


class _Runner:
    def __init__(self, plan: RunPlan, client: Client, tracer):
        self.plan, self.client, self.tracer = plan, client, tracer
        self.rng = random.Random(plan.rng_seed)
        self.occurrences: Counter = Counter()
        self.totals = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        self.paid = self.reused = 0  # this run's own counts (a batch's runs share one client)
        self.parent = None  # the step span's context when spans are rows (RowSpan), else None
        self._shown: tuple = (None, (), ())

    def request(self, agent: str, sample: int, messages: list[dict], step: S.Step, index: int,
                shown: Sequence[Response] = (), keyed: str | None = None) -> CallRequest:
        """``keyed``: ``messages_json(messages)`` when the caller has it (a layer's requests share
        their messages: canonical JSON once, not once per request)."""
        spec = self.plan.specs[agent]
        mt = step.max_tokens if self.plan.max_tokens is None else min(step.max_tokens, self.plan.max_tokens)
        model_seed = self.plan.model_seed
        if spec.is_recorded:  # imported outputs were keyed with the step's own settings and no seed
            mt, model_seed = step.max_tokens, None
        base = request_hash(agent=agent, model=spec.model, messages=messages, temperature=step.temp,
                            max_tokens=mt, seed=model_seed, messages_canonical=keyed)
        if self._shown[0] is not shown:  # a layer's requests are shown the same responses: one list each
            self._shown = (shown, [r.span_id for r in shown], [r.agent for r in shown])
        sources, source_agents = self._shown[1], self._shown[2]
        occ = self.occurrences[base]
        self.occurrences[base] += 1  # assigned before any await: deterministic under concurrency
        key = request_key(base, occ)
        return CallRequest(agent=agent, sample=sample, spec=spec, messages=messages, temperature=step.temp,
                           max_tokens=mt, key=key, seed=derived_seed(model_seed, key), step_index=index,
                           step_kind=step.kind, sources=sources, source_agents=source_agents, parent=self.parent)

    async def fan_out(self, reqs: list[CallRequest]):
        client = self.client
        if client.cache is not None:  # calls served from the store need no task: answered here, in order
            results = client.cached_many(reqs)
            missing = [i for i, r in enumerate(results) if r is None]
            if missing:
                got = await asyncio.gather(*(client.call(reqs[i], looked_up=True) for i in missing))
                for i, r in zip(missing, got):
                    results[i] = r
        elif len(reqs) == 1:  # an Aggregate / Vote / Rank call: no task to make
            results = [await client.call(reqs[0])]
        else:
            results = await asyncio.gather(*(client.call(r) for r in reqs))
        t = self.totals
        for r in results:
            t["calls"] += max(1, r.attempts)
            t["input_tokens"] += r.input_tokens
            t["output_tokens"] += r.output_tokens
            t["cost_usd"] += r.cost_usd
            if r.cached:
                self.reused += 1
            elif r.text is not None:
                self.paid += 1
        return results

    async def survivors(self, reqs: list[CallRequest], index: int, kind: str, span) -> list[Response]:
        """Make a layer's calls; keep the answers that arrived. Failed agents are dropped and
        recorded on the step span; a layer with no answer at all fails the run."""
        results = await self.fan_out(reqs)
        new = [Response(r.text, rq.agent, rq.sample, r.span_id) for rq, r in zip(reqs, results) if r.text is not None]
        failed = [f"{rq.agent}#{rq.sample}: {r.error}" for rq, r in zip(reqs, results) if r.text is None]
        if failed:
            span.set_attribute("moakit.dropped_failed", json.dumps(failed)[:4000])
        if not new:
            raise RunFailed(f"step {index} ({kind}): every call failed: {'; '.join(failed)[:1000]}")
        return new

    async def step(self, index: int, step: S.Step, responses: list[Response], span) -> list[Response]:
        q, tset = self.plan.query, self.plan.tset
        kind = step.kind
        texts = [r.text for r in responses]
        if step.calls_llm and kind != "Propose" and not responses:
            raise RunFailed(f"step {index} ({kind}) has no responses to work on: every earlier call failed or was filtered out")

        if kind in ("Propose", "Synthesize"):
            samples = _samples(step.agents)
            if kind == "Propose":
                msgs = [dict(m) for m in q]  # one copy for the layer (as Synthesize shares its messages)
                keyed = messages_json(msgs)
                reqs = [self.request(a, s, msgs, step, index, keyed=keyed)
                        for a, s in zip(step.agents, samples)]
            else:
                msgs = tset.aggregate_messages(q, texts, step.prompt)
                keyed = messages_json(msgs)
                reqs = [self.request(a, s, msgs, step, index, responses, keyed)
                        for a, s in zip(step.agents, samples)]
            new = await self.survivors(reqs, index, kind, span)
            return (responses + new) if kind == "Propose" else new

        if kind in ("Aggregate", "Vote"):
            msgs = tset.aggregate_messages(q, texts, step.prompt, vote=(kind == "Vote"))
            (r,) = await self.fan_out([self.request(step.agent, 0, msgs, step, index, responses)])
            if r.text is None:
                raise RunFailed(f"step {index} ({kind}, agent {step.agent!r}) failed: {r.error}")
            return [Response(r.text, step.agent, 0, r.span_id)]

        if kind == "Refine":
            counts: Counter = Counter()
            reqs = []
            for i, resp in enumerate(responses):
                agent = step.agents[i % len(step.agents)]
                reqs.append(self.request(agent, counts[agent], tset.refine_messages(q, resp.text, step.prompt),
                                         step, index, [resp]))
                counts[agent] += 1
            return await self.survivors(reqs, index, kind, span)

        if kind == "Rank":
            msgs = tset.rank_messages(q, texts, step.n, step.prompt)
            (r,) = await self.fan_out([self.request(step.agent, 0, msgs, step, index, responses)])
            if r.text is None:
                raise RunFailed(f"step {index} (Rank, agent {step.agent!r}) failed: {r.error}")
            choice = parse_rank(r.text, len(responses), step.n)
            span.set_attribute(A.RANK_PARSED, bool(choice))
            if not choice:  # unusable reply: keep the first n in the order shown, and say so
                choice = list(range(min(step.n, len(responses))))
            span.set_attribute(A.RANK_CHOICE, json.dumps(choice))
            return [responses[i] for i in choice]

        n = len(responses)
        if kind == "Shuffle":
            perm = self.rng.sample(range(n), n)
            span.set_attribute(A.PERMUTATION, json.dumps(perm))
            return [responses[i] for i in perm]
        if kind == "Dropout":
            kept = [i for i in range(n) if self.rng.random() >= step.p]
            if n and not kept:
                kept = [self.rng.randrange(n)]
        elif kind == "Sample":
            kept = self.rng.sample(range(n), min(step.n, n))
        elif kind == "Take":
            kept = list(range(min(step.n, n)))
        elif kind == "Filter":
            kept = [i for i, r in enumerate(responses) if step.fn(r.text)]
        elif kind == "Map":
            return [Response(str(step.fn(r.text)), r.agent, r.sample, r.span_id) for r in responses]
        else:  # pragma: no cover - validate_pipeline admits only known steps
            raise PipelineError(f"unknown step {kind}")
        span.set_attribute(A.KEPT, json.dumps(kept))
        return [responses[i] for i in kept]

    async def run(self, *, batch_id: str | None = None, batch_item: int | None = None) -> Result:
        plan = self.plan
        attrs = {
            A.SPAN_KIND: "run", A.OPERATION_NAME: "invoke_workflow",
            A.PIPELINE: _pipeline_json(plan.pipeline), A.SEED: plan.rng_seed,
            "moakit.seed.sent_to_models": plan.model_seed is not None,
            A.QUERY: json.dumps(plan.query, ensure_ascii=False), A.PROMPT_SET: plan.tset.name,
            A.MODELS: json.dumps({a: s.model for a, s in plan.specs.items()}),
        }
        if plan.max_tokens is not None:
            attrs["moakit.max_tokens_cap"] = plan.max_tokens
        if plan.name:
            attrs[A.PIPELINE_NAME] = plan.name
        if batch_id is not None:
            attrs[A.BATCH_ID] = batch_id
            attrs[A.BATCH_ITEM] = batch_item
        responses: list[Response] = []
        error = None
        # spans as rows (RowSpan) when the store's processor is the tracer's only one and the run
        # is no child of a caller's span; else OpenTelemetry SDK spans (the same rows either way)
        sink = self.client._row_sink()
        if sink is not None and otel_trace.get_current_span().get_span_context().is_valid:
            sink = None

        def span(name, attributes, parent, repeated):
            if sink is not None:
                rs = RowSpan(sink, name, parent, attributes)
                clean, a = self.client._clean_name, rs.attributes  # values shared by a batch's runs:
                for k in repeated:  # redacted once per client, as span_to_row would
                    v = a.get(k)
                    if type(v) is str:
                        a[k] = clean(v)
                rs.cleaned = repeated
                return rs
            return self.tracer.start_as_current_span(name, attributes=attributes, record_exception=False,
                                                     set_status_on_exception=False)

        with span("invoke_workflow moakit", attrs, None, _RUN_REPEATED) as run_span:
            run_ctx = run_span.get_span_context()
            trace_id = format(run_ctx.trace_id, "032x")
            try:
                for i, step in enumerate(plan.pipeline):
                    with span(f"step {step.kind.lower()}",
                              {A.SPAN_KIND: "step", A.STEP_INDEX: i, A.STEP_KIND: step.kind,
                               A.STEP_SPEC: _step_spec(step),
                               A.RESPONSES_IN: json.dumps([r.span_id for r in responses])},
                              run_ctx, _STEP_REPEATED) as sspan:
                        if sink is not None:
                            self.parent = sspan.get_span_context()
                        try:
                            responses = await self.step(i, step, responses, sspan)
                        except BaseException as e:
                            sspan.set_status(Status(StatusCode.ERROR, str(e)[:2000]))
                            sspan.set_attribute(A.ERROR_TYPE, type(e).__name__)
                            raise
                        sspan.set_attribute(A.RESPONSES_OUT, json.dumps([r.span_id for r in responses]))
            except RunFailed as e:
                error = str(e)
            except BaseException as e:
                run_span.set_status(Status(StatusCode.ERROR, str(e)[:2000]))
                run_span.set_attribute(A.ERROR_TYPE, type(e).__name__)
                raise
            if error:
                run_span.set_status(Status(StatusCode.ERROR, error[:2000]))
                run_span.set_attribute(A.ERROR_TYPE, "RunFailed")
                output = None
            else:
                output = responses[0].text if responses else None
                if output is not None:
                    run_span.set_attribute(A.OUTPUT, output)
                run_span.set_status(Status(StatusCode.OK))
            paid, reused = self.paid, self.reused
            run_span.set_attributes({"moakit.calls_paid": paid, "moakit.calls_reused": reused})
        return Result(output=output, trace_id=trace_id, store=self.client.tracer_store, error=error,
                      responses=list(responses), seed=plan.rng_seed, calls_paid=paid, calls_reused=reused,
                      pipeline=plan.pipeline, query=plan.query)


# attributes of run and step spans whose values repeat across a batch's runs (see _Runner.run)
_RUN_REPEATED = frozenset((A.SPAN_KIND, A.OPERATION_NAME, A.PIPELINE, A.PROMPT_SET, A.MODELS, A.PIPELINE_NAME,
                           A.BATCH_ID))
_STEP_REPEATED = frozenset((A.SPAN_KIND, A.STEP_KIND, A.STEP_SPEC))

_json_memo: dict[int, tuple[Any, str]] = {}  # id(step or pipeline) -> (it, its JSON): a batch's runs share them


def _memo_json(obj, make) -> str:
    hit = _json_memo.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    if len(_json_memo) >= 1024:
        _json_memo.clear()
    value = _json_memo[id(obj)] = (obj, make(obj))
    return value[1]


def _step_spec(step: S.Step) -> str:
    return _memo_json(step, lambda st: json.dumps(st.to_dict()))


def _pipeline_json(pipeline: list) -> str:
    """``json.dumps(S.pipeline_to_json(pipeline))``, from each step's memoized JSON (json.dumps
    joins list items with ", ")."""
    return "[" + ", ".join(_step_spec(s) for s in pipeline) + "]"


def _samples(agents: Sequence[str]) -> list[int]:
    """Sample index of each agent: its occurrence number within the list (Self-MoA)."""
    seen: Counter = Counter()
    out = []
    for a in agents:
        out.append(seen[a])
        seen[a] += 1
    return out


def _open_cache(cache, store: TraceStore) -> TraceStore | None:
    if cache is None or cache is False:
        return None
    if cache is True:
        return store
    return open_store(cache, create=False)


def make_client(store, cache, offline, max_concurrency, per_model_concurrency, client_config, record_content=True):
    for name, v in (("max_concurrency", max_concurrency), ("per_model_concurrency", per_model_concurrency)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise PipelineError(f"{name} must be a positive integer or None, got {v!r}")
    if client_config is not None and not isinstance(client_config, ClientConfig):
        raise PipelineError(f"client_config must be a moakit.ClientConfig, got {type(client_config).__name__}")
    tracer = tracer_for(store)
    cfg = client_config or ClientConfig()
    if not record_content:
        cfg = ClientConfig(**{**cfg.__dict__, "record_content": False})
    client = Client(tracer, cache=cache, offline=offline, config=cfg,
                    max_concurrency=16 if max_concurrency is None else max_concurrency,
                    per_model_concurrency=per_model_concurrency)
    client.tracer_store = store
    return client, tracer


async def arun(pipeline, query, *, seed: int | None = None, models: Any = None, store: Any = None,
               max_concurrency: int | None = None, cache: Any = None, offline: bool = False,
               templates: str | TemplateSet = "together", max_tokens: int | None = None,
               per_model_concurrency: int | None = None, client_config: ClientConfig | None = None,
               record_content: bool = True, name: str | None = None, _rng_seed: int | None = None) -> Result:
    """Run ``pipeline`` on ``query``; every call is recorded in ``store``. See :func:`run`."""
    S.validate_pipeline(pipeline)  # bad input fails before the trace file is even opened
    normalize_query(query)
    store = open_store(store)
    cache_store = _open_cache(cache, store)
    plan = plan_run(pipeline, query, seed=seed, models=models, templates=templates, max_tokens=max_tokens,
                    cache=cache_store, offline=offline, name=name, rng_seed=_rng_seed)
    client, tracer = make_client(store, cache_store, offline, max_concurrency, per_model_concurrency,
                                 client_config, record_content)
    try:
        return await _Runner(plan, client, tracer).run()
    finally:
        flush_pending(tracer)


_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The one event loop on which moakit's synchronous calls (``run``, ``run_batch``, ``replay``)
    run, on a daemon thread of its own, made on first use and kept for the process.

    One loop for every run, not a new one per call: the HTTP clients that litellm keeps are
    tied to the loop they were made on, so a loop per run left one open socket per run behind
    (a notebook looping over ``moakit.run`` ran out of descriptors), and their connection pools
    are reused across runs. A forked child makes a loop of its own."""
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop.is_closed() or _loop_thread is None or not _loop_thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="moakit-loop", daemon=True)
            thread.start()
            _loop, _loop_thread = loop, thread
        return _loop


def _forget_loop() -> None:  # in a forked child the parent's loop thread does not exist
    global _loop, _loop_thread
    _loop = _loop_thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_loop)


def run_sync(coro):
    """Run a coroutine to completion on moakit's background loop and return its result, from
    plain Python or from inside a running loop (Jupyter). Called on that loop's own thread (a
    scorer that runs a pipeline inside a run), it runs on a fresh loop in a worker thread
    instead: waiting for its own loop would never return. An interrupt (Ctrl-C, a notebook's
    stop button) cancels the run; the calls it paid for are already recorded."""
    loop = background_loop()
    if threading.current_thread() is _loop_thread:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moakit") as ex:
            return ex.submit(asyncio.run, coro).result()
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return fut.result()
    except BaseException:
        if not fut.done():
            fut.cancel()
            try:
                fut.result(timeout=30)  # let the run's cleanup (its trace rows) finish
            except BaseException:  # noqa: BLE001 - the interrupt below is what the caller sees
                pass
        raise


def run(pipeline, query, *, seed: int | None = None, models: Any = None, store: Any = None,
        max_concurrency: int | None = None, **kwargs) -> Result:
    """Run a pipeline on one query and return a :class:`~moakit.result.Result`.

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
    """
    return run_sync(arun(pipeline, query, seed=seed, models=models, store=store,
                         max_concurrency=max_concurrency, **kwargs))
