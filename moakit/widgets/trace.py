"""What the tree, batch and timeline views draw: one run's records as plain dicts, read from the
store (a run that ended) or gathered from the recorder's events (a run in flight).

:class:`TraceData` holds one run: ``run`` (its pipeline, query, seed, answer, error, times),
``steps`` (what each step did), ``calls`` (one dict per logical call, the keys of
``TraceStore.calls()`` plus ``queue_s``, ``rate_s``, ``ttft_s`` and ``last_attempt_start_ns``),
``attempts`` (the failed attempts before a call's last), ``plan`` (the pipeline's steps as
JSON, for the calls still to come) and, for a run in flight, ``streaming`` (the text so far
of a streamed answer). Every text of a run in flight passes through the store's redactor
before it is drawn, as it does before it is stored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..store import schema as A
from ..store.records import AttemptRecord, CallRecord, RunRecord, StepRecord
from ..store.redact import REDACTOR
from .html import as_float, as_int, isnull

CALL_KEYS = ("span_id", "trace_id", "step_index", "step", "agent", "model", "sample", "attempts", "input_tokens",
             "output_tokens", "cost_usd", "latency_s", "start_ns", "end_ns", "cached", "error", "output", "queue_s",
             "rate_s", "ttft_s", "last_attempt_start_ns")


def query_text(query_json) -> str:
    """The last user turn of a run's recorded query (what a reader calls the prompt)."""
    try:
        msgs = json.loads(query_json) if isinstance(query_json, str) else (query_json or [])
        users = [m.get("content", "") for m in msgs if m.get("role") == "user"]
        return users[-1] if users else ""
    except (ValueError, AttributeError, TypeError):
        return str(query_json or "")


def _plan(pipeline_json) -> list[dict]:
    try:
        steps = json.loads(pipeline_json) if isinstance(pipeline_json, str) else (pipeline_json or [])
        return [s if isinstance(s, dict) else {} for s in steps]
    except (ValueError, TypeError):
        return []


def _missing(v) -> bool:
    return v is None or v is pd_NA or v is pd_NaT or (isinstance(v, float) and v != v)


def _records(df) -> list[dict]:
    """A DataFrame's rows as dicts, missing values as None. Column by column (``tolist``):
    going through ``astype(object)`` iterated every Arrow-backed string one by one (a 500-call
    batch's BatchView spent a third of its reading there)."""
    if not len(df):
        return []
    names = list(df.columns)
    cols = []
    for name in names:
        vals = df[name].tolist()
        cols.append([None if _missing(v) else v for v in vals])
    return [dict(zip(names, row)) for row in zip(*cols)]


try:
    from pandas import NA as pd_NA, NaT as pd_NaT
except ImportError:  # pragma: no cover
    pd_NA = pd_NaT = object()


@dataclass
class TraceData:
    """One run's records (see the module's docstring). ``live``: the run is (or was) followed
    while in flight; ``ended``: its run record has arrived."""

    trace_id: str | None = None
    run: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    plan: list[dict] = field(default_factory=list)
    contents: dict[str, dict] = field(default_factory=dict)
    streaming: dict[str, dict] = field(default_factory=dict)
    live: bool = False
    ended: bool = False
    version: int = 0  # bumped at every change (views redraw what changed)

    # ---- from the store ------------------------------------------------------------------
    @classmethod
    def from_store(cls, store, trace_id: str) -> "TraceData":
        return cls.many_from_store(store, [trace_id])[trace_id]

    @classmethod
    def many_from_store(cls, store, trace_ids: list[str], *, calls=None) -> dict[str, "TraceData"]:
        """The runs ``trace_ids`` read with a few queries for all of them (a batch's timeline)."""
        out = {t: cls(trace_id=t, ended=True) for t in trace_ids}
        if not trace_ids:
            return out
        runs = store.runs(trace_ids)
        for r in _records(runs):
            out[r["trace_id"]].run = r
        for t in trace_ids:
            if not out[t].run:
                raise KeyError(f"no run with trace id {t!r} in {store.path}")
        for tid, attrs in _run_attributes(store, trace_ids).items():
            d = out[tid]
            d.run["query"] = query_text(attrs.get(A.QUERY))
            d.run["seed"] = attrs.get(A.SEED)
            d.plan = _plan(attrs.get(A.PIPELINE))
        calls = store.calls(trace_ids) if calls is None else calls
        timing = {r["span_id"]: r for r in _records(store.call_timing(trace_ids))}
        for c in _records(calls):
            t = timing.get(c["span_id"], {})
            c.update({k: t.get(k) for k in ("queue_s", "rate_s", "ttft_s", "last_attempt_start_ns")})
            c["cached"] = bool(c.get("cached"))
            out[c["trace_id"]].calls.append(c)
        for s in _records(store.steps(trace_ids)):
            out[s["trace_id"]].steps.append(s)
        att = store.attempts(trace_ids)
        if len(att):
            for a in _records(att[~att["final"]]):
                out[a["trace_id"]].attempts.append(a)
        return out

    def load_contents(self, store, span_ids) -> None:
        """Read the prompts of these calls (a page at a time) from the store."""
        missing = [s for s in span_ids if s not in self.contents]
        if missing and store is not None:
            self.contents.update(store.call_contents(missing))

    # ---- from the recorder's events -------------------------------------------------------
    def apply(self, event) -> bool:
        """Take one recorder event (a record of this run, or a streamed chunk); True if it changed
        anything."""
        if isinstance(event, CallRecord):
            self._call(event)
        elif isinstance(event, AttemptRecord):
            self.attempts.append({"trace_id": event.trace_id, "call_span_id": event.parent_id,
                                  "span_id": event.span_id, "attempt": event.number, "start_ns": event.start_ns,
                                  "end_ns": event.end_ns, "error": _redacted(f"{event.error_type}: {event.error}"),
                                  "retry_wait_s": event.wait_s, "retry_reason": event.wait_reason,
                                  "step_index": event.step_index, "agent": event.agent})
        elif isinstance(event, StepRecord):
            self.steps = [s for s in self.steps if s["step_index"] != event.index]
            self.steps.append({"trace_id": event.trace_id, "span_id": event.span_id, "step_index": event.index,
                               "step": event.kind, "duration_s": (event.end_ns - event.start_ns) / 1e9,
                               "start_ns": event.start_ns, "end_ns": event.end_ns,
                               "error": _redacted(f"{event.error_type}: {event.error}") if event.error_type else None,
                               "permutation": _list(event.permutation), "kept": _list(event.kept),
                               "rank_choice": _list(event.rank_choice), "rank_parsed": event.rank_parsed,
                               "responses_in": list(event.responses_in),
                               "responses_out": _list(event.responses_out),
                               "dropped_failed": _list(event.dropped_failed)})
            self.steps.sort(key=lambda s: s["step_index"])
        elif isinstance(event, RunRecord):
            self._run(event)
        elif hasattr(event, "text") and hasattr(event, "span_id"):  # a streamed chunk
            self.streaming[event.span_id] = {"step_index": event.step_index, "step": event.step_kind,
                                             "agent": event.agent, "text": event.text}
        else:
            return False
        self.version += 1
        return True

    def _run(self, r: RunRecord) -> None:
        self.trace_id = r.trace_id
        self.live = True
        run = self.run
        run.update(trace_id=r.trace_id, span_id=r.span_id, pipeline=r.name, seed=r.seed, batch_id=r.batch_id,
                   batch_item=r.batch_item, batch_seed=r.batch_seed, start_ns=r.start_ns,
                   query=query_text(r.query_json))
        if not self.plan:
            self.plan = _plan(r.pipeline_json)
        if r.end_ns:
            self.ended = True
            run.update(duration_s=(r.end_ns - r.start_ns) / 1e9, end_ns=r.end_ns,
                       output=_redacted(r.output) if r.output is not None else None,
                       error=_redacted(f"{r.error_type}: {r.error}") if r.error_type else None)

    def _call(self, r: CallRecord) -> None:
        extra = r.extra or {}
        error = _redacted(f"{r.error_type}: {r.error}".rstrip(": ")) if r.error_type is not None else None
        self.calls.append({
            "span_id": r.span_id, "trace_id": r.trace_id, "step_index": r.step_index, "step": r.step_kind,
            "agent": r.agent, "model": r.model, "sample": r.sample, "attempts": r.attempts,
            "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
            "cost_usd": 0.0 if r.cached else r.cost_usd, "latency_s": (r.end_ns - r.start_ns) / 1e9,
            "start_ns": r.start_ns, "end_ns": r.end_ns, "cached": bool(r.cached), "error": error,
            "output": _redacted(r.output) if r.output is not None else None,
            "queue_s": extra.get(A.QUEUE_WAIT), "rate_s": extra.get(A.RATE_WAIT),
            "ttft_s": extra.get(A.RESPONSE_TIME_TO_FIRST_CHUNK), "last_attempt_start_ns": extra.get(A.LAST_ATTEMPT_START)})
        self.streaming.pop(r.span_id, None)
        self.contents[r.span_id] = {
            "messages": [{"role": m.get("role"), "content": _redacted(m.get("content") or "")}
                         for m in (r.messages or [])],
            "input_agents": list(r.source_agents), "temperature": r.temperature, "max_tokens": r.max_tokens,
            "finish_reasons": [r.finish_reason] if r.finish_reason else None, "replayed_from": r.replayed_from,
            "failed_attempts": [{"attempt": a["attempt"], "error": a["error"], "wait_s": a["retry_wait_s"],
                                 "reason": a["retry_reason"]} for a in self.attempts
                                if a["call_span_id"] == r.span_id]}

    # ---- what the views ask ----------------------------------------------------------------
    def step_calls(self, step_index: int) -> list[dict]:
        """The calls of a step in the order their answers were passed to the next step (the
        step's ``responses_out``), then the calls whose answers were not passed on (failed),
        by start; while the step runs, in the order its agents are listed."""
        calls = [c for c in self.calls if c["step_index"] == step_index]
        step = next((s for s in self.steps if s["step_index"] == step_index), None)
        out = (step or {}).get("responses_out") or []
        if out:
            pos = {sid: i for i, sid in enumerate(out)}
            return sorted(calls, key=lambda c: (pos.get(c["span_id"], len(pos)), c["start_ns"] or 0))
        planned = self.planned(step_index)
        if planned:
            pos = {k: i for i, k in enumerate(planned)}
            return sorted(calls, key=lambda c: (pos.get((c["agent"], c["sample"]), len(pos)), c["start_ns"] or 0))
        return sorted(calls, key=lambda c: c["start_ns"] or 0)

    def passed_on(self, step_index: int) -> dict[str, int]:
        """span id -> the 1-based position at which the step passed that call's answer on."""
        step = next((s for s in self.steps if s["step_index"] == step_index), None)
        return {sid: i for i, sid in enumerate((step or {}).get("responses_out") or [], 1)}

    def planned(self, step_index: int) -> list[tuple[str, int]]:
        """(agent, sample) of every call a step will make, when the pipeline says (Propose,
        Synthesize, Aggregate, Vote, Rank); [] when it depends on the answers (Refine)."""
        if step_index >= len(self.plan):
            return []
        spec = self.plan[step_index]
        agents = spec.get("agents") or ([spec["agent"]] if spec.get("agent") else [])
        if spec.get("kind") == "Refine":
            return []
        seen: dict[str, int] = {}
        out = []
        for a in agents:
            out.append((a, seen.get(a, 0)))
            seen[a] = seen.get(a, 0) + 1
        return out

    def step_indexes(self) -> list[int]:
        idx = {s["step_index"] for s in self.steps} | {c["step_index"] for c in self.calls
                                                      if c["step_index"] is not None}
        if self.live and not self.ended and self.plan:  # the step in flight
            done = max((s["step_index"] for s in self.steps), default=-1)
            if done + 1 < len(self.plan):
                idx.add(done + 1)
        return sorted(idx)

    def step(self, step_index: int) -> dict:
        """A step's record; a step still in flight gets what the plan says of it."""
        s = next((s for s in self.steps if s["step_index"] == step_index), None)
        if s is not None:
            return s
        kind = self.plan[step_index].get("kind") if step_index < len(self.plan) else None
        if kind is None:
            kind = next((c["step"] for c in self.calls if c["step_index"] == step_index), "?")
        return {"step_index": step_index, "step": kind, "duration_s": None, "error": None, "in_flight": True,
                "start_ns": None, "end_ns": None}

    def totals(self) -> dict[str, Any]:
        c = self.calls
        reused = sum(1 for x in c if x["cached"])
        failed = sum(1 for x in c if x["error"])
        unpriced = sum(1 for x in c if not x["cached"] and not x["error"] and isnull(x["cost_usd"]))
        return {"calls": len(c), "calls_reused": reused, "calls_paid": len(c) - reused, "calls_failed": failed,
                "calls_unpriced": unpriced,
                "input_tokens": sum(as_int(x["input_tokens"]) or 0 for x in c),
                "output_tokens": sum(as_int(x["output_tokens"]) or 0 for x in c),
                "cost_usd": sum(as_float(x["cost_usd"]) or 0.0 for x in c if not x["cached"])}

    def expected_calls(self) -> int | None:
        """How many calls the plan makes when it does not depend on the answers, else None."""
        n = 0
        for i, spec in enumerate(self.plan):
            if spec.get("kind") == "Refine":
                return None
            n += len(self.planned(i))
        return n or None

    def elapsed_s(self) -> float | None:
        start = self.run.get("start_ns")
        if not start:
            return None
        if self.ended and not isnull(self.run.get("duration_s")):
            return float(self.run["duration_s"])
        return (time.time_ns() - int(start)) / 1e9


def _redacted(text):
    return None if text is None else REDACTOR(str(text))


def _list(v):
    return None if v is None else list(v)


def _run_attributes(store, trace_ids: list[str]) -> dict[str, dict]:
    """The run span's attributes (query, seed, pipeline) of many runs, a few queries."""
    out = {}
    for i in range(0, len(trace_ids), 500):
        chunk = trace_ids[i:i + 500]
        for tid, attrs in store.query(
                f"SELECT trace_id, attributes FROM spans WHERE kind = '{A.KIND_RUN}' AND trace_id IN "
                f"({', '.join('?' * len(chunk))})", chunk):
            out[tid] = json.loads(attrs or "{}")
    return out
