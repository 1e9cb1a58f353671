"""``moakit.mixture_client``: a client for ``mixture_llm.run(pipeline, query, client)`` that
records every call in a moakit trace store.

mixture-llm hands its client one request at a time (``await client(model=..., messages=...,
temp=..., max_tokens=...)`` -> ``(text, input_tokens, output_tokens)``) and never says which run
or step a call belongs to. This client infers it from the requests, which mixture-llm lays out
in a fixed way (``mixture_llm/core.py``):

* a Propose call is the query alone, as one user message; the Propose calls of a step are
  started together (``asyncio.gather``), so they reach the client before any of them is
  answered;
* Synthesize, Aggregate and Vote calls are a system prompt and a user message
  ``"Responses:\\n1. ...\\n\\n2. ...\\n\\nQuery: <query>"``: the query names the run, the numbered
  texts are earlier answers of that run (so each one's producing call is known), the calls of a
  Synthesize step share one request, an Aggregate is alone, a Vote has mixture-llm's vote prompt;
* Refine and Rank calls are one user message quoting one (Refine) or several (Rank) earlier
  answers of the run.

So each ``mixture_llm.run`` becomes one moakit run (a trace with its run span, a span per step
and one call span per call) with request keys, ``moakit.input.sources`` (what each aggregating
call was shown, so ``store.aggregation_inputs()`` and the positional-bias analysis work), cost and
tokens. The run span holds the pipeline as inferred from the calls (its LLM steps, with the
"mixture-llm" prompt set): ``moakit.replay(trace_id)`` re-runs it from the store, offline, and
gives the same answer; ``mixture_client(cache=store)`` serves recorded calls to mixture-llm
itself.

What cannot be seen from the calls (say so where it matters):

* Shuffle, Dropout, Sample, Take, Filter and Map make no call: they are not in the trace, and
  their effect shows only as the order and set of responses the next call was shown
  (``moakit.input.sources``); step indices count LLM steps only. mixture-llm draws them from
  Python's global ``random`` (seed it for a reproducible run).
* A Propose after other steps (Self-MoA-Seq) looks like the start of another run of the same
  query: the trace splits there into two runs.
* Two runs of the same query started at the same moment (gathered together) may share a run
  in the trace.
* mixture-llm catches every exception its client raises and goes on without that answer:
  an unknown model, a ``ReplayMiss`` (``offline=True``) or a ``BudgetExceeded`` shows as an
  ``error`` in mixture-llm's history (and no span, as no request was made).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .. import steps as S
from ..errors import PipelineError
from ..models import check_keys, resolve
from ..prompts import MIXTURE_LLM, MIXTURE_SYNTH, MIXTURE_VOTE
from ..rank_parse import parse_rank
from ..store.ids import span_id_hex
from ..store.keys import messages_json
from ..store.records import RunRecord, StepRecord
from ..store.store import open_store
from .api import make_session
from .budget import make_budget
from .engine import Response, Runner, run_context
from .plan import RunPlan, check_store, open_cache, pipeline_json, register_secrets

MAX_OPEN_RUNS = 64  # runs a new call may still belong to (the most recent ones)
_QUERY_SEP = "\n\nQuery: "


@dataclass
class Entry:
    """One call of an inferred step."""

    model: str
    messages: list[dict]
    temp: float
    max_tokens: int
    sample: int
    shown: list[Response]
    key: str  # canonical JSON of the messages


@dataclass
class InferredStep:
    index: int
    shape: str  # "propose" | "agg" | "refine" | "rank"
    key: str  # the messages' JSON (propose, agg), else ""
    query: str
    span_id: str
    start_ns: int
    end_ns: int = 0
    entries: list[Entry] = field(default_factory=list)
    started: bool = False  # a call of this step has begun (no sibling joins after)
    kind: str | None = None
    prompt: str | None = None  # a system prompt that is not mixture-llm's default
    outputs: list[Response] = field(default_factory=list)
    answered: dict[int, Response] = field(default_factory=dict)  # position among the entries -> answer
    rank_choice: list[int] | None = None
    rank_n: int = 3

    def decide(self) -> str:
        """The step's kind, fixed when its first call starts (every sibling has arrived then)."""
        if self.kind is None:
            if self.shape == "propose":
                self.kind = "Propose"
            elif self.shape == "refine":
                self.kind = "Refine"
            elif self.shape == "rank":
                self.kind = "Rank"
            elif self.prompt == MIXTURE_VOTE:
                self.kind = "Vote"
            else:
                self.kind = "Synthesize" if len(self.entries) > 1 else "Aggregate"
        return self.kind

    def moakit_step(self, e: Entry | None = None) -> S.Step:
        """The moakit step this one is (one agent's, for planning a call; all agents' for the record)."""
        kind = self.decide()
        agents = (e.model,) if e is not None else tuple(x.model for x in self.entries)
        first = e or self.entries[0]
        prompt = None if self.prompt in (None, MIXTURE_SYNTH, MIXTURE_VOTE) else self.prompt
        kw = dict(temp=first.temp, max_tokens=first.max_tokens)
        if kind == "Propose":
            return S.Propose(agents, **kw)
        if kind == "Synthesize":
            return S.Synthesize(agents, prompt=prompt, **kw)
        if kind == "Refine":
            return S.Refine(agents, **kw)
        if kind == "Rank":
            return S.Rank(agents[0], n=self.rank_n, **kw)
        if kind == "Vote":
            return S.Vote(agents[0], prompt=prompt, **kw)
        return S.Aggregate(agents[0], prompt=prompt, **kw)


class ClientRunner(Runner):
    """A runner for one inferred run: the engine's call path (cache, budget, request keys,
    records), with each call's token counts kept for mixture-llm's answer."""

    def __init__(self, plan, session):
        super().__init__(plan, session)
        self.usage: dict[str, tuple[int, int]] = {}

    def record(self, p, **outcome):
        self.usage[outcome["span_id"]] = (int(outcome.get("input_tokens") or 0), int(outcome.get("output_tokens") or 0))
        return super().record(p, **outcome)


@dataclass
class InferredRun:
    trace_id: str
    parent_id: str | None
    span_id: str
    start_ns: int
    query: str
    runner: ClientRunner
    steps: list[InferredStep] = field(default_factory=list)
    # text -> the calls that answered it: (step index, position in the step, response), the
    # latest step first (identical answers are told apart by the order they are listed in)
    outputs: dict[str, list] = field(default_factory=dict)
    end_ns: int = 0

    @property
    def current(self) -> InferredStep | None:
        return self.steps[-1] if self.steps else None


class MixtureClient:
    """A mixture-llm client recording into a moakit store. Make it with :func:`mixture_client`."""

    def __init__(self, *, models=None, store=None, cache=None, offline=False, seed=None, max_tokens=None,
                 client_config=None, max_concurrency=None, per_model_concurrency=None, record_content=True,
                 name="mixture_llm", budget_usd=None, max_paid_calls=None, otel=None):
        check_store(store)
        check_store(None if isinstance(cache, bool) else cache)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise PipelineError(f"seed must be an integer or None, got {seed!r}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            raise PipelineError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        if offline and cache is None:
            raise PipelineError("offline=True needs cache= (a trace store, or True for store=) to serve calls from")
        if isinstance(models, dict):  # the mapping is checked now, not at the first call
            specs = resolve(list(k for k in models if k != "*"), models)
            register_secrets(specs)
            if not offline:
                check_keys(specs)
        elif models is not None:
            resolve(["x"], models)
        self.store = open_store(store)
        self.cache = open_cache(cache, self.store)
        self.models, self.offline, self.seed, self.max_tokens, self.name = models, offline, seed, max_tokens, name
        self.budget = make_budget(budget_usd, max_paid_calls)
        self.session_args = dict(offline=offline, max_concurrency=max_concurrency,
                                 per_model_concurrency=per_model_concurrency, client_config=client_config,
                                 record_content=record_content, otel=otel, budget=self.budget)
        self.specs: dict = {}
        self.runs: list[InferredRun] = []
        self.loop = None
        self.session = None

    def __repr__(self) -> str:
        return f"MixtureClient(store={str(self.store.path)!r}, runs={len(self.runs)})"

    @property
    def trace_ids(self) -> list[str]:
        """The runs recorded so far, oldest first."""
        return [r.trace_id for r in self.runs]

    # ---- the mixture-llm protocol ---------------------------------------------------------
    async def __call__(self, *, model: str, messages: list, temp: float, max_tokens: int) -> tuple[str, int, int]:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new event loop (asyncio.run per query): a caller bound to it
            self.loop = loop
            self.session = make_session(self.store, self.cache, **self.session_args)
            self.runs = []  # runs do not span event loops
        msgs = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        run, step, entry = self.attach(model, msgs, temp, max_tokens)
        await asyncio.sleep(0)  # every call mixture-llm gathered with this one arrives first
        step.started = True
        spec = self.spec(model)
        run.runner.plan.specs[model] = spec
        runner = run.runner
        runner.step_span = step.span_id
        plan = runner.plan_call(model, entry.sample, entry.messages, step.moakit_step(entry), step.index,
                                entry.shown, entry.key)
        (r,) = await runner.call_layer([plan])
        now = time.time_ns()
        step.end_ns = run.end_ns = max(step.end_ns, now)
        if not isinstance(r, Response):
            self.write(run, step)
            await self.store.writer.committed()
            raise RuntimeError(f"moakit: {r}")
        position = step.entries.index(entry)
        step.answered[position] = r
        step.outputs = [step.answered[k] for k in sorted(step.answered)]  # in the order of the step's agents
        producers = run.outputs.setdefault(r.text, [])
        producers.append((step.index, position, r))
        producers.sort(key=lambda x: (-x[0], x[1]))
        if step.decide() == "Rank":
            step.rank_choice = parse_rank(r.text, len(entry.shown), step.rank_n) or None
        self.write(run, step)
        await self.store.writer.committed()  # the step and run rows are in the file when mixture-llm goes on
        n_in, n_out = runner.usage.get(r.span_id, (0, 0))
        return r.text, n_in, n_out

    def spec(self, agent: str):
        if agent not in self.specs:
            recorded = self.cache.recorded_agents() if self.cache is not None else None
            specs = resolve([agent], self.models, recorded=recorded)
            register_secrets(specs)
            if not self.offline:
                check_keys(specs)
            if self.budget is not None and not self.offline:
                self.budget.check_models(specs)
            self.specs.update(specs)
        return self.specs[agent]

    # ---- which run and step a call belongs to ---------------------------------------------
    def attach(self, model: str, msgs: list[dict], temp: float, max_tokens: int):
        content = str(msgs[-1].get("content") or "") if msgs else ""
        key = messages_json(msgs)
        agg = (len(msgs) == 2 and msgs[0].get("role") == "system" and msgs[1].get("role") == "user"
               and content.startswith("Responses:\n") and _QUERY_SEP in content)
        single = len(msgs) == 1 and msgs[0].get("role") == "user"
        open_runs = list(reversed(self.runs[-MAX_OPEN_RUNS:]))
        if agg:
            query = content[content.rindex(_QUERY_SEP) + len(_QUERY_SEP):]
            run = next((r for r in open_runs if r.query == query and self.found(r, content)), None) or \
                next((r for r in open_runs if self.found(r, content)), None)
            if run is None:
                run = self.new_run(query)
            shown = self.enumerated(run, content[len("Responses:\n"):content.rindex(_QUERY_SEP)])
            cur = run.current
            if cur is not None and cur.shape == "agg" and cur.key == key and not cur.started:
                step = cur
            else:
                step = self.new_step(run, "agg", key, query)
                step.prompt = str(msgs[0].get("content") or "")
            return run, step, self.add(step, model, msgs, temp, max_tokens, shown, key)
        if single:
            for run in open_runs:
                found = self.found(run, content)
                if not found:
                    continue
                if len(found) >= 2 or content.startswith("Rank these responses"):
                    step = self.new_step(run, "rank", "", run.query)
                    m = re.search(r"top (\d+)", content)
                    step.rank_n = int(m.group(1)) if m else 3
                    shown = self.enumerated(run, content)
                    return run, step, self.add(step, model, msgs, temp, max_tokens, shown, key)
                src = found[0]
                cur = run.current  # the Refine calls of a step are gathered: they all arrive before any starts
                step = cur if cur is not None and cur.shape == "refine" and not cur.started \
                    else self.new_step(run, "refine", "", run.query)
                return run, step, self.add(step, model, msgs, temp, max_tokens, [src], key)
        query = content
        run = next((r for r in open_runs if r.query == query and r.current is not None
                    and r.current.shape == "propose" and r.current.key == key and not r.current.started), None)
        if run is None:
            run = self.new_run(query)
            step = self.new_step(run, "propose", key, query)
        else:
            step = run.current
        return run, step, self.add(step, model, msgs, temp, max_tokens, [], key)

    @staticmethod
    def found(run: InferredRun, content: str) -> list[Response]:
        """The run's answers quoted in ``content`` (longest first: a short answer may sit inside a
        longer one), each as the latest call that gave it."""
        return [ps[0][2] for t, ps in sorted(run.outputs.items(), key=lambda kv: -len(kv[0])) if t and t in content]

    @staticmethod
    def enumerated(run: InferredRun, block: str) -> list[Response]:
        """The numbered answers of ``block`` (``"1. a\\n\\n2. b"``), in order, as the calls that made them."""
        texts = sorted(run.outputs, key=len, reverse=True)
        out: list[Response] = []
        seen: dict[str, int] = {}  # the k-th time a text is listed: the k-th call that gave it
        pos = block.find("1. ")
        n = 1
        while pos >= 0:
            prefix = f"{n}. "
            if not block.startswith(prefix, pos):
                break
            start = pos + len(prefix)
            hit = next((t for t in texts if t and block.startswith(t, start)
                        and (start + len(t) == len(block) or block.startswith("\n\n", start + len(t)))), None)
            if hit is None:
                break  # a text this run did not produce (a Map step rewrote it): sources stop here
            producers = run.outputs[hit]
            k = seen.get(hit, 0)
            seen[hit] = k + 1
            out.append(producers[min(k, len(producers) - 1)][2])
            pos = start + len(hit) + 2
            n += 1
        return out

    def new_run(self, query: str) -> InferredRun:
        trace_id, parent = run_context()
        q = [{"role": "user", "content": query}]
        plan = RunPlan([], q, {}, MIXTURE_LLM, self.seed if self.seed is not None else 0, self.seed,
                       self.max_tokens, self.name)
        runner = ClientRunner(plan, self.session)
        runner.trace_id = trace_id
        run = InferredRun(trace_id, parent, span_id_hex(), time.time_ns(), query, runner)
        self.runs.append(run)
        if len(self.runs) > 4 * MAX_OPEN_RUNS:
            self.runs = self.runs[-MAX_OPEN_RUNS:]
        return run

    @staticmethod
    def new_step(run: InferredRun, shape: str, key: str, query: str) -> InferredStep:
        step = InferredStep(len(run.steps), shape, key, query, span_id_hex(), time.time_ns())
        run.steps.append(step)
        return step

    @staticmethod
    def add(step: InferredStep, model, msgs, temp, max_tokens, shown, key) -> Entry:
        sample = sum(e.model == model for e in step.entries)
        e = Entry(model, msgs, temp, max_tokens, sample, list(shown), key)
        step.entries.append(e)
        return e

    # ---- records ---------------------------------------------------------------------------
    def write(self, run: InferredRun, step: InferredStep) -> None:
        """(Re)write the step's and the run's rows as they now stand (same span ids: replaced)."""
        rec = self.session.recorder
        steps = [s.moakit_step() for s in run.steps if s.entries]
        shown = [r.span_id for e in step.entries for r in e.shown]
        rec.step(StepRecord(step.span_id, run.trace_id, run.span_id, step.start_ns, step.end_ns, step.index,
                            step.decide(), json.dumps(steps[step.index].to_dict()),
                            list(dict.fromkeys(shown)), [r.span_id for r in step.outputs],
                            rank_choice=step.rank_choice, rank_parsed=None if step.kind != "Rank"
                            else step.rank_choice is not None))
        last = run.steps[-1].outputs
        t = run.runner.totals
        rec.run(RunRecord(run.span_id, run.trace_id, run.start_ns, run.end_ns, pipeline_json(steps),
                          json.dumps([{"role": "user", "content": run.query}], ensure_ascii=False),
                          self.seed if self.seed is not None else 0, self.seed is not None, MIXTURE_LLM.name,
                          json.dumps({a: s.model for a, s in run.runner.plan.specs.items()}), self.name, run.parent_id,
                          self.max_tokens, output=last[0].text if last else None, calls_paid=t.paid,
                          calls_reused=t.reused), durable=False)

    def flush(self) -> None:
        """Commit every row still waiting (each call already awaits its commit; kept for scripts
        that stop a run half-way)."""
        self.store.writer.flush()


def mixture_client(*, models: Any = None, store: Any = None, cache: Any = None, offline: bool = False,
                   seed: int | None = None, max_tokens: int | None = None, client_config=None,
                   max_concurrency: int | None = None, per_model_concurrency: int | None = None,
                   record_content: bool = True, name: str = "mixture_llm", budget_usd: float | None = None,
                   max_paid_calls: int | None = None, otel: Any = None) -> MixtureClient:
    """A client for ``mixture_llm.run(pipeline, query, client)`` that makes each call through
    moakit (litellm, retries, the embedded model with ``models="local"``) and records it: one
    trace per ``mixture_llm.run``, a span per LLM step, one call span per call.

    ::

        from mixture_llm import Propose, Aggregate, run
        client = moakit.mixture_client(models="local", store="traces/moakit.db")
        answer, history = await run([Propose(["a", "b"]), Aggregate("a")], "Explain MoA", client)
        moakit.TraceStore("traces/moakit.db").calls(client.trace_ids[-1])

    Arguments as :func:`moakit.run`'s: ``models`` (agent -> model; ``"local"``), ``store``,
    ``cache`` (serve recorded calls; ``True`` = ``store``) and ``offline``, ``seed`` (sent to the
    models and part of the request keys), ``max_tokens`` (a cap), ``client_config``,
    ``max_concurrency``, ``budget_usd`` / ``max_paid_calls``, ``otel``; ``name`` is the runs'
    pipeline name. See :mod:`moakit.runner.mixture_client` for how calls are grouped into runs
    and steps, and what cannot be seen."""
    return MixtureClient(models=models, store=store, cache=cache, offline=offline, seed=seed, max_tokens=max_tokens,
                         client_config=client_config, max_concurrency=max_concurrency,
                         per_model_concurrency=per_model_concurrency, record_content=record_content, name=name,
                         budget_usd=budget_usd, max_paid_calls=max_paid_calls, otel=otel)
