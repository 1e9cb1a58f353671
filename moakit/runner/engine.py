"""Running a pipeline: async fan-out per layer, seeded randomness, the provenance of every
response, and a record of the run, each step and each call.

The engine knows nothing about providers or rows: it asks the :class:`~moakit.llm.Caller` for
answers (or the cache store for recorded ones) and tells the :class:`~.recorder.Recorder`
what happened.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import steps as S
from ..errors import MoakitError, PipelineError, ReplayMiss
from ..llm import Caller, Outcome, Request
from ..rank_parse import parse_rank
from ..store.ids import span_id_hex, trace_id_hex
from ..store.keys import derived_seed, messages_json, request_hash, request_key
from ..store.records import AttemptRecord, CallRecord, RunRecord, StepRecord
from ..store.schema import LAST_ATTEMPT_START, QUEUE_WAIT, RATE_WAIT, RESPONSE_TIME_TO_FIRST_CHUNK, TRANSPORT
from .plan import RunPlan, step_json
from .recorder import Recorder, StreamChunk
from .result import Result


@dataclass(slots=True)
class Response:
    """A candidate answer and where it came from."""

    text: str
    agent: str
    sample: int
    span_id: str | None  # the call that produced it
    text_hash: str | None = None  # the stored text's hash (the call's output, or a Map step's)


#: the steps whose answer streams to a live view (the provider permitting): the one answer a
#: reader waits for; proposals and syntheses arrive whole
STREAMED_STEPS = ("Aggregate", "Vote")


class RunFailed(MoakitError):
    """A step that must produce an answer (Aggregate, Vote, Rank, a whole layer) failed."""


@dataclass
class Session:
    """What the runs of one ``run`` or ``run_batch`` share: the caller (caps on calls in
    flight), the recorder (the store written to), the cache store served from."""

    caller: Caller
    recorder: Recorder
    store: Any
    cache: Any = None  # a TraceStore whose recorded calls are served
    offline: bool = False  # with cache: a call not in it raises ReplayMiss
    record_content: bool = True
    budget: Any = None  # a runner.budget.Budget: calls reserved before they start (budget_usd, max_paid_calls)


@dataclass(slots=True)
class CallPlan:
    """One LLM call the engine wants made, with what the run knows about it."""

    agent: str
    sample: int
    request: Request
    key: str
    step_index: int
    step_kind: str
    shown: Sequence[Response] = ()
    reserved: float = 0.0  # the worst case held for it in the session's budget until it ends


@dataclass
class Totals:
    calls: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    paid: int = 0
    reused: int = 0
    extra: dict = field(default_factory=dict)


def samples(agents: Sequence[str]) -> list[int]:
    """Sample index of each agent: its occurrence number within the list (Self-MoA)."""
    seen: Counter = Counter()
    out = []
    for a in agents:
        out.append(seen[a])
        seen[a] += 1
    return out


def run_context() -> tuple[str, str | None]:
    """(trace id, parent span id) of a new run: a child of the caller's OpenTelemetry span when
    one is active (the run then belongs to the caller's trace), else a new trace."""
    try:
        from opentelemetry import trace as otel_trace
    except ImportError:  # pragma: no cover - opentelemetry-sdk is a dependency
        return trace_id_hex(), None
    ctx = otel_trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    return trace_id_hex(), None


def call_extra(o: Outcome) -> dict:
    """A call's further span attributes: the transport that served it, the waits longer than a
    millisecond (slots, per-minute budgets), for a retried call when its last attempt started, and
    for a streamed one the seconds to its first chunk."""
    extra = {TRANSPORT: o.transport}
    if o.queue_s >= 1e-3:
        extra[QUEUE_WAIT] = round(o.queue_s, 6)
    if o.rate_s >= 1e-3:
        extra[RATE_WAIT] = round(o.rate_s, 6)
    if o.attempt > 1:
        extra[LAST_ATTEMPT_START] = o.start_ns
    if o.ttft_s is not None:
        extra[RESPONSE_TIME_TO_FIRST_CHUNK] = round(o.ttft_s, 6)
    return extra


class Runner:
    """Runs one plan (one query) within a session."""

    def __init__(self, plan: RunPlan, session: Session):
        self.plan, self.s = plan, session
        self.rng = random.Random(plan.rng_seed)
        self.occurrences: Counter = Counter()
        self.totals = Totals()
        self.trace_id = ""
        self.step_span: str | None = None
        self.order: tuple[bool, int | None] = (False, None)  # (randomized, by which step) of the current list
        self._shown_lists: tuple = (None, (), (), ())  # the last shown list and its sources, agents, hashes

    # ---- calls ---------------------------------------------------------------------------
    def plan_call(self, agent: str, sample: int, messages: list[dict], step: S.Step, index: int,
                  shown: Sequence[Response] = (), keyed: str | None = None) -> CallPlan:
        """``keyed``: ``messages_json(messages)`` when the caller has it (a layer's calls share
        their messages: canonical JSON once, not once per call)."""
        spec = self.plan.specs[agent]
        mt = step.max_tokens if self.plan.max_tokens is None else min(step.max_tokens, self.plan.max_tokens)
        model_seed = self.plan.model_seed
        if spec.is_recorded:  # imported outputs were keyed with the step's own settings and no seed
            mt, model_seed = step.max_tokens, None
        base = request_hash(agent=agent, model=spec.model, messages=messages, temperature=step.temp,
                            max_tokens=mt, seed=model_seed, messages_canonical=keyed)
        occ = self.occurrences[base]
        self.occurrences[base] += 1  # assigned before any await: deterministic under concurrency
        key = request_key(base, occ)
        req = Request(spec, messages, step.temp, mt, derived_seed(model_seed, key))
        return CallPlan(agent, sample, req, key, index, step.kind, shown)

    def _shown(self, shown: Sequence[Response]) -> tuple:
        """(sources, agents, hashes) of a shown list: one set of lists per layer (its calls share them)."""
        hit = self._shown_lists
        if hit[0] is not shown:
            hit = self._shown_lists = (shown, [r.span_id for r in shown], [r.agent for r in shown],
                                       [r.text_hash for r in shown] if all(r.text_hash for r in shown) else ())
        return hit[1], hit[2], hit[3]

    def record(self, p: CallPlan, **outcome) -> CallRecord:
        """The call's record: the request, what it was shown, and ``outcome`` (the fields of
        :class:`~moakit.store.records.CallRecord` that describe the answer)."""
        req = p.request
        sources, agents, hashes = self._shown(p.shown) if p.shown else ((), (), ())
        randomized, by = self.order if p.shown else (False, None)
        return CallRecord(
            outcome.pop("span_id"), self.trace_id, self.step_span, outcome.pop("start_ns"), outcome.pop("end_ns"),
            req.spec.model, req.spec.provider, p.agent, p.sample, p.step_index, p.step_kind, p.key,
            req.temperature, req.max_tokens, req.seed, req.messages if self.s.record_content else None,
            sources, agents, hashes, randomized, by, **outcome)

    async def call_layer(self, plans: list[CallPlan]) -> list[Outcome | Response | None]:
        """Make a layer's calls: recorded ones from the cache (in order, no task), the rest
        concurrently. Returns, per call, its Response or None when it finally failed (with
        the error kept in ``self.errors``)."""
        s = self.s
        results: list = [None] * len(plans)
        todo = list(range(len(plans)))
        if s.cache is not None:
            hits = s.cache.lookup_many([p.key for p in plans])
            todo = []
            for i, (p, hit) in enumerate(zip(plans, hits)):
                if hit is None:
                    todo.append(i)
                else:
                    results[i] = self.replayed(p, hit)
        if todo and s.budget is not None and not s.offline:
            # the layer's calls are reserved together before any starts: all fit or none starts
            priced = [i for i in todo if not plans[i].request.spec.is_recorded]
            for i, w in zip(priced, await s.budget.reserve([plans[i] for i in priced], self.trace_id)):
                plans[i].reserved = w
        if len(todo) == 1:
            results[todo[0]] = await self.paid(plans[todo[0]])
        elif todo:
            got = await asyncio.gather(*(self.paid(plans[i]) for i in todo))
            for i, r in zip(todo, got):
                results[i] = r
        return results

    def replayed(self, p: CallPlan, hit) -> Response:
        span_src, text, usage = hit
        now = time.time_ns()
        sid = span_id_hex()
        inp, outp = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
        h = self.s.recorder.replayed(self.record(
            p, span_id=sid, start_ns=now, end_ns=now, output=text, response_model=usage.get("response_model"),
            input_tokens=inp, output_tokens=outp, cost_usd=0.0, cached=True, replayed_from=span_src, attempts=0))
        t = self.totals
        t.calls += 1
        t.reused += 1
        t.input_tokens += inp
        t.output_tokens += outp
        return Response(text, p.agent, p.sample, sid, h)

    async def paid(self, p: CallPlan) -> Response | str:
        """Make a call that is not in the cache. Returns its Response, or its error text when
        it finally failed."""
        s = self.s
        spec = p.request.spec
        if s.offline or spec.is_recorded:
            why = "offline=True" if s.offline else f"{spec.model} holds imported outputs only"
            raise ReplayMiss(
                f"no recorded call for step {p.step_index} ({p.step_kind}), agent {p.agent!r}, model "
                f"{spec.model!r} (request key {p.key}); {why}, so it cannot be made. "
                + ("Run without offline=True (or with fill) to record it." if s.offline else
                   "Import this agent's output for this query (store.import_outputs), or map the agent to a "
                   "real model in models=."),
                step=p.step_index, agent=p.agent, model=spec.model, request_key=p.key)
        sid = span_id_hex()
        rec = s.recorder

        def on_attempt(o: Outcome) -> None:
            rec.attempt(AttemptRecord(span_id_hex(), self.trace_id, sid, o.start_ns, o.end_ns, o.attempt, spec.model,
                                      p.agent, p.step_index, p.step_kind, p.key, o.error_type, o.error or "",
                                      o.wait_s, o.wait_reason))

        on_chunk = None
        if p.step_kind in STREAMED_STEPS and rec.wants_chunks:  # a live view shows the answer as it comes
            def on_chunk(text: str) -> None:
                rec.chunk(StreamChunk(self.trace_id, sid, p.step_index, p.step_kind, p.agent, text))

        start = time.time_ns()
        cost = None  # what the budget is told it cost (None: unknown, its worst case counts)
        try:
            o = await (s.caller.call(p.request, on_attempt) if on_chunk is None else
                       s.caller.call(p.request, on_attempt, on_chunk=on_chunk))
            cost = (o.cost_usd if o.ok else 0.0)  # a call that finally failed gave no answer to bill
        except asyncio.CancelledError:
            rec.failed(self.record(p, span_id=sid, start_ns=start, end_ns=time.time_ns(), error_type="cancelled",
                                   error="the run was cancelled while this call was in flight", attempts=1))
            raise
        finally:
            if s.budget is not None and not s.offline and not spec.is_recorded:
                s.budget.settle(p.reserved, cost)
        t = self.totals
        t.calls += 1
        t.attempts += o.attempt
        extra = call_extra(o)
        if not o.ok:
            rec.failed(self.record(p, span_id=sid, start_ns=o.first_start_ns, end_ns=o.end_ns, attempts=o.attempt,
                                   error_type=o.error_type, error=o.error, extra=extra))
            return f"{o.error_type}: {o.error}"
        h = await rec.paid(self.record(
            p, span_id=sid, start_ns=o.first_start_ns, end_ns=o.end_ns, output=o.text, finish_reason=o.finish_reason,
            response_model=o.response_model, response_id=o.response_id, input_tokens=o.input_tokens,
            output_tokens=o.output_tokens, cost_usd=o.cost_usd, attempts=o.attempt, extra=extra))
        t.paid += 1
        t.input_tokens += o.input_tokens
        t.output_tokens += o.output_tokens
        t.cost_usd += o.cost_usd or 0.0
        return Response(o.text, p.agent, p.sample, sid, h)

    async def survivors(self, plans: list[CallPlan], index: int, kind: str, srec: StepRecord) -> list[Response]:
        """Make a layer's calls; keep the answers that arrived. Failed agents are dropped and
        recorded on the step; a layer with no answer at all fails the run."""
        results = await self.call_layer(plans)
        new = [r for r in results if isinstance(r, Response)]
        failed = [f"{p.agent}#{p.sample}: {r}" for p, r in zip(plans, results) if not isinstance(r, Response)]
        if failed:
            srec.dropped_failed = failed
        if not new:
            raise RunFailed(f"step {index} ({kind}): every call failed: {'; '.join(failed)[:1000]}")
        return new

    async def one(self, p: CallPlan, index: int, kind: str) -> Response:
        (r,) = await self.call_layer([p])
        if not isinstance(r, Response):
            raise RunFailed(f"step {index} ({kind}, agent {p.agent!r}) failed: {r}")
        return r

    # ---- steps ---------------------------------------------------------------------------
    async def step(self, index: int, step: S.Step, responses: list[Response], srec: StepRecord,
                   texts: dict[str, str]) -> list[Response]:
        q, tset = self.plan.query, self.plan.tset
        if step.calls_llm and not isinstance(step, S.Propose) and not responses:
            raise RunFailed(f"step {index} ({step.kind}) has no responses to work on: every earlier call failed or "
                            "was filtered out")
        shown_texts = [r.text for r in responses]
        n = len(responses)
        match step:
            case S.Propose():
                msgs = [dict(m) for m in q]  # one copy for the layer (as Synthesize shares its messages)
                keyed = messages_json(msgs)
                plans = [self.plan_call(a, sm, msgs, step, index, keyed=keyed)
                         for a, sm in zip(step.agents, samples(step.agents))]
                new = await self.survivors(plans, index, step.kind, srec)
                self.order = (False, None)  # carried-over responses first, new ones in agent order
                return responses + new
            case S.Synthesize():
                msgs = tset.aggregate_messages(q, shown_texts, step.prompt)
                keyed = messages_json(msgs)
                plans = [self.plan_call(a, sm, msgs, step, index, responses, keyed)
                         for a, sm in zip(step.agents, samples(step.agents))]
                new = await self.survivors(plans, index, step.kind, srec)
                self.order = (False, None)
                return new
            case S.Aggregate() | S.Vote():
                msgs = tset.aggregate_messages(q, shown_texts, step.prompt, vote=isinstance(step, S.Vote))
                r = await self.one(self.plan_call(step.agent, 0, msgs, step, index, responses), index, step.kind)
                self.order = (False, None)
                return [r]
            case S.Refine():
                counts: Counter = Counter()
                plans = []
                for i, resp in enumerate(responses):
                    agent = step.agents[i % len(step.agents)]
                    plans.append(self.plan_call(agent, counts[agent], tset.refine_messages(q, resp.text, step.prompt),
                                                step, index, [resp]))
                    counts[agent] += 1
                new = await self.survivors(plans, index, step.kind, srec)
                self.order = (False, None)
                return new
            case S.Rank():
                msgs = tset.rank_messages(q, shown_texts, step.n, step.prompt)
                r = await self.one(self.plan_call(step.agent, 0, msgs, step, index, responses), index, step.kind)
                choice = parse_rank(r.text, n, step.n)
                srec.rank_parsed = bool(choice)
                if not choice:  # unusable reply: keep the first n in the order shown, and say so
                    choice = list(range(min(step.n, n)))
                srec.rank_choice = choice
                self.order = (False, None)  # the ranker's order
                return [responses[i] for i in choice]
            case S.Shuffle():
                perm = self.rng.sample(range(n), n)
                srec.permutation = perm
                self.order = (True, index)
                return [responses[i] for i in perm]
            case S.Sample():
                kept = self.rng.sample(range(n), min(step.n, n))
                self.order = (True, index)  # a random subset in random order
            case S.Dropout():
                kept = [i for i in range(n) if self.rng.random() >= step.p]
                if n and not kept:
                    kept = [self.rng.randrange(n)]
            case S.Take():
                kept = list(range(min(step.n, n)))
            case S.Filter():
                kept = [i for i, r in enumerate(responses) if step.fn(r.text)]
            case S.Map():
                out = []
                for r in responses:  # the mapped text is what later steps are shown: stored, and hashed
                    text = str(step.fn(r.text))
                    h, value = self.s.recorder.content(text)
                    texts[h] = value
                    out.append(Response(text, r.agent, r.sample, r.span_id, h))
                return out
            case _:  # pragma: no cover - validate_pipeline admits only known steps
                raise PipelineError(f"unknown step {step.kind}")
        srec.kept = kept
        return [responses[i] for i in kept]

    async def run(self, *, batch_id: str | None = None, batch_item: int | None = None,
                  batch_seed: int | None = None) -> Result:
        plan, rec = self.plan, self.s.recorder
        self.trace_id, parent = run_context()
        run_span = span_id_hex()
        start = time.time_ns()
        responses: list[Response] = []
        error = error_type = None
        output = None
        if rec.listeners:  # a live view: the run's query and place in its batch, before its first call
            rec.started(RunRecord(
                run_span, self.trace_id, start, 0, plan.pipeline_json(), json.dumps(plan.query, ensure_ascii=False),
                plan.rng_seed, plan.model_seed is not None, plan.tset.name, plan.models_json(), plan.name, parent,
                plan.max_tokens, batch_id, batch_item, batch_seed))
        try:
            try:
                for i, step in enumerate(plan.pipeline):
                    self.step_span = span_id_hex()
                    srec = StepRecord(self.step_span, self.trace_id, run_span, time.time_ns(), 0, i, step.kind,
                                      step_json(step), [r.span_id for r in responses])
                    texts: dict[str, str] = {}
                    try:
                        responses = await self.step(i, step, responses, srec, texts)
                    except BaseException as e:
                        srec.error_type, srec.error = type(e).__name__, str(e)
                        raise
                    finally:
                        srec.end_ns = time.time_ns()
                        if srec.error_type is None:
                            srec.responses_out = [r.span_id for r in responses]
                        rec.step(srec, texts)
            except RunFailed as e:
                error, error_type = str(e), "RunFailed"
            else:
                output = responses[0].text if responses else None
        except BaseException as e:
            error, error_type = str(e), type(e).__name__
            raise
        finally:
            t = self.totals
            record = RunRecord(
                run_span, self.trace_id, start, time.time_ns(), plan.pipeline_json(), json.dumps(plan.query,
                                                                                                   ensure_ascii=False),
                plan.rng_seed, plan.model_seed is not None, plan.tset.name, plan.models_json(), plan.name, parent,
                plan.max_tokens, batch_id, batch_item, batch_seed, output, error_type, error, t.paid, t.reused)
            if t.paid > 0 and error_type in (None, "RunFailed"):
                # a run that paid, ending normally: committed before it returns, in the group commit of the
                # calls ending now (not a transaction of its own on the loop)
                await rec.run_committed(record)
            else:  # an error on its way out (committed now), or a run that paid nothing (next commit)
                rec.run(record, durable=error_type is not None and error_type != "RunFailed")
        return Result(output=output, trace_id=self.trace_id, store=self.s.store, error=error,
                      responses=list(responses), seed=plan.rng_seed, calls_paid=self.totals.paid,
                      calls_reused=self.totals.reused, pipeline=plan.pipeline, query=plan.query)
