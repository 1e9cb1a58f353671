"""The one record builder: run, step, call and attempt records -> rows of the ``spans`` table.

Whatever makes a trace row (a live run, a replayed call, an imported output, a migration of an
old file) describes it as a record below and hands it to :class:`RowBuilder`, which

* promotes the indexed attributes into their columns and writes the rest as JSON, in a fixed
  order (:mod:`moakit.store.schema` names every attribute);
* redacts every string through the store's :class:`~moakit.store.redact.Redactor`;
* moves the long texts (prompts, outputs) into the content-addressed ``texts`` table.

A row is a list of values in :data:`~moakit.store.schema.SPAN_COLUMNS` order. The builder keeps
what a layer's calls share (their prompt, the responses shown, names and settings) redacted
and encoded once; it is not thread-safe (one per writer).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _encode
from typing import Any, Sequence

from . import schema as A
from .redact import REDACTOR, Redactor

dumps = json.JSONEncoder(ensure_ascii=False).encode  # = json.dumps(obj, ensure_ascii=False)
MAX_ERROR = 2000  # characters of an error message kept (after redaction: no key survives half-masked)


def text_hash(text: str) -> str:
    """The content address of a text in the ``texts`` table (blake2b, 128 bits, hex)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def semconv_messages(messages: Sequence[dict]) -> str:
    """Chat messages as the GenAI conventions' ``gen_ai.input.messages`` JSON (text parts)."""
    return dumps([{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content") or ""}]}
                  for m in messages])


def output_messages(text: str) -> str:
    """An answer as the GenAI conventions' ``gen_ai.output.messages`` JSON."""
    return dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}])


def parts_text(v: Any) -> str:
    """The plain text of a message's content: a string, or a list of ``{"type": "text", "content"}`` parts."""
    if isinstance(v, str):
        try:
            v = json.loads(v) if v[:1] == "[" else v
        except ValueError:
            return v
    if isinstance(v, list):
        return "".join(p.get("content", "") if isinstance(p, dict) else str(p) for p in v
                       if not isinstance(p, dict) or p.get("type", "text") == "text")
    return "" if v is None else str(v)


@dataclass(slots=True)
class RunRecord:
    """One run of a pipeline on one query (the root span of its trace)."""

    span_id: str
    trace_id: str
    start_ns: int
    end_ns: int
    pipeline_json: str  # the steps as JSON (moakit.steps.pipeline_to_json)
    query_json: str  # the query messages as JSON
    seed: int
    seed_sent: bool  # whether the seed was sent to the models (and is part of request keys)
    prompt_set: str
    models_json: str  # agent -> model string (no keys)
    name: str | None = None  # the pipeline's (or variant's) name
    parent_id: str | None = None  # a caller's span, when the run is part of a larger trace
    max_tokens_cap: int | None = None
    batch_id: str | None = None
    batch_item: int | None = None
    batch_seed: int | None = None
    output: str | None = None
    error_type: str | None = None
    error: str | None = None
    calls_paid: int = 0
    calls_reused: int = 0


@dataclass(slots=True)
class StepRecord:
    """One step of a run: what came in, what went out, and the step's own choices."""

    span_id: str
    trace_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    index: int
    kind: str
    spec_json: str
    responses_in: Sequence[str] = ()
    responses_out: Sequence[str] | None = None
    permutation: Sequence[int] | None = None
    kept: Sequence[int] | None = None
    rank_choice: Sequence[int] | None = None
    rank_parsed: bool | None = None
    dropped_failed: Sequence[str] | None = None
    error_type: str | None = None
    error: str | None = None


@dataclass(slots=True)
class CallRecord:
    """One logical LLM call: its request, what was shown to it, and its outcome after every
    attempt (the failed attempts before the last are :class:`AttemptRecord` children)."""

    span_id: str
    trace_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    model: str
    provider: str
    agent: str
    sample: int = 0
    step_index: int | None = None
    step_kind: str | None = None
    request_key: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    messages: Sequence[dict] | None = None  # None: prompts not recorded (the output always is)
    sources: Sequence[str] = ()  # span id behind each numbered response shown, in order
    source_agents: Sequence[str] = ()
    shown_hashes: Sequence[str] = ()  # text hash of each response as shown
    randomized: bool = False  # the order shown was drawn at random
    shuffle_step: int | None = None  # the step whose draw set that order
    output: str | None = None
    finish_reason: str | None = None
    response_model: str | None = None
    response_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    cached: bool = False
    replayed_from: str | None = None
    attempts: int = 1
    error_type: str | None = None
    error: str | None = None
    extra: dict[str, Any] | None = None  # further attributes (waits, transport, time to first chunk)


@dataclass(slots=True)
class AttemptRecord:
    """A failed attempt of a call that was tried again (or cancelled), a child of the call."""

    span_id: str
    trace_id: str
    parent_id: str  # the call's span id
    start_ns: int
    end_ns: int
    number: int  # 1 for the first attempt
    model: str
    agent: str
    step_index: int | None
    step_kind: str | None
    request_key: str | None
    error_type: str
    error: str
    wait_s: float | None = None  # the wait before the next attempt
    wait_reason: str | None = None  # "retry-after" or "backoff"


@dataclass(slots=True)
class Rows:
    """Rows and the texts they reference, ready for :meth:`TraceStore.write`."""

    rows: list = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


_SEED = f", {_encode(A.REQUEST_SEED)}: "
_FINISH = f", {_encode(A.RESPONSE_FINISH_REASONS)}: ["
_RMODEL = f", {_encode(A.RESPONSE_MODEL)}: "
_RID = f", {_encode(A.RESPONSE_ID)}: "
_REPLAYED = f", {_encode(A.REPLAYED_FROM)}: "
_ETYPE = f", {_encode(A.ERROR_TYPE)}: "


@functools.lru_cache(maxsize=256)
def _member(key: str) -> str:
    """``, "key": `` (the few keys of a call's further attributes repeat on every call)."""
    return f", {_encode(key)}: "


class RowBuilder:
    """Turns records into rows (see the module's docstring). ``redactor`` defaults to the
    process's :data:`~moakit.store.redact.REDACTOR`."""

    MEMO = 4096  # entries each memo keeps before it starts afresh

    def __init__(self, redactor: Redactor | None = None):
        self.redactor = redactor or REDACTOR
        self._version = -1
        self._names: dict[str, str] = {}
        self._heads: dict[tuple, str] = {}
        self._inputs: dict[int, tuple] = {}  # id(messages) -> (messages, redacted JSON, hash)
        # id(sources) -> (the shown lists, randomized, shuffle step, their JSON piece): the calls of a layer
        # share these lists, and the layers of a batch's runs end interleaved
        self._shown: dict[int, tuple] = {}
        self._long: dict[str, str] = {}  # repeated long run / step values (pipeline, models) -> redacted

    # ---- redaction ---------------------------------------------------------------------
    def _fresh(self) -> None:
        """Forget what was redacted under older rules (a hook or secret added since)."""
        if self._version != self.redactor.version:
            self._version = self.redactor.version
            self._names.clear()
            self._heads.clear()
            self._inputs.clear()
            self._long.clear()
            self._shown.clear()

    def clean(self, v: str) -> str:
        """``v`` redacted (an id-like string passes as it is when nothing could change it)."""
        return v if self.redactor.id_passes(v) else self.redactor(v)

    def name(self, v: str) -> str:
        """A short string that repeats on every call (agent, model, provider, step kind), redacted once."""
        c = self._names.get(v)
        if c is None:
            if len(self._names) >= self.MEMO:
                self._names.clear()
            c = self._names[v] = self.clean(v)
        return c

    def long(self, v: str) -> str:
        """A long value that repeats across a batch's runs (the pipeline's JSON), redacted once."""
        c = self._long.get(v)
        if c is None:
            if len(self._long) >= 64:
                self._long.clear()
            c = self._long[v] = self.clean(v)
        return c

    def error_text(self, etype: str | None, message: str | None) -> str:
        msg = self.redactor(message or "")[:MAX_ERROR]  # redact before cutting
        return f"{etype or 'error'}: {msg}".rstrip(": ")

    def _input(self, messages: Sequence[dict]) -> tuple[str, str]:
        """(redacted input messages JSON, its hash): a layer's calls share one list, encoded once."""
        hit = self._inputs.get(id(messages))
        if hit is not None and hit[0] is messages:
            return hit[1], hit[2]
        value = self.clean(semconv_messages(messages))
        h = text_hash(value)
        if len(self._inputs) >= 256:
            self._inputs.clear()
        self._inputs[id(messages)] = (messages, value, h)
        return value, h

    # ---- rows --------------------------------------------------------------------------
    def _head(self, provider: str, temperature, max_tokens) -> str:
        key = (provider, temperature, max_tokens)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= 256:
                self._heads.clear()
            d: dict[str, Any] = {A.OPERATION_NAME: A.OPERATION_CHAT, A.PROVIDER_NAME: self.name(provider)}
            if temperature is not None:
                d[A.REQUEST_TEMPERATURE] = float(temperature)
            if max_tokens is not None:
                d[A.REQUEST_MAX_TOKENS] = int(max_tokens)
            head = self._heads[key] = dumps(d)[:-1]
        return head

    def _shown_piece(self, r: CallRecord) -> str:
        """The attributes describing what was shown to a call (one string per layer: its calls
        share these lists)."""
        hit = self._shown.get(id(r.sources))
        if hit is not None and hit[0] is r.sources and hit[1] is r.source_agents and hit[2] is r.shown_hashes \
                and hit[3] == r.randomized and hit[4] == r.shuffle_step:
            return hit[5]
        piece = (f", {_encode(A.INPUT_SOURCES)}: {_encode(self.clean(dumps(list(r.sources))))}"
                 f", {_encode(A.INPUT_AGENTS)}: {_encode(self.clean(dumps(list(r.source_agents))))}")
        if r.shown_hashes:
            piece += f", {_encode(A.INPUT_HASHES)}: {_encode(dumps(list(r.shown_hashes)))}"
        piece += f", {_encode(A.INPUT_RANDOMIZED)}: {'true' if r.randomized else 'false'}"
        if r.shuffle_step is not None:
            piece += f", {_encode(A.INPUT_SHUFFLE_STEP)}: {int(r.shuffle_step)}"
        if len(self._shown) >= 256:
            self._shown.clear()
        self._shown[id(r.sources)] = (r.sources, r.source_agents, r.shown_hashes, r.randomized, r.shuffle_step, piece)
        return piece

    def _extra(self, extra: dict[str, Any]) -> str:
        """The further attributes as JSON members, as ``dumps`` writes them: strings redacted
        (a call's are from a short fixed set, e.g. the transport: memoized like names), finite
        floats and ints by their repr (what ``dumps`` writes for them)."""
        out = []
        for k, v in extra.items():
            t = type(v)
            if t is str:
                value = _encode(self.name(v))
            elif t is float and v - v == 0.0:  # finite (NaN and the infinities have JSON spellings of their own)
                value = float.__repr__(v)
            elif t is int:
                value = int.__repr__(v)
            else:
                value = dumps(self.clean(v) if isinstance(v, str) else v)
            out.append(_member(k) + value)
        return "".join(out)

    def content(self, text: str) -> tuple[str, str]:
        """(hash, redacted text) of a text to store in the ``texts`` table."""
        self._fresh()
        value = self.redactor(text)
        return text_hash(value), value

    def call(self, r: CallRecord, out: Rows) -> str | None:
        """Append the row of a call (and its texts) to ``out``; return its output's text hash."""
        self._fresh()
        name = self.name
        parts = [self._head(r.provider, r.temperature, r.max_tokens)]
        if r.seed is not None:
            parts.append(_SEED + (int.__repr__(r.seed) if type(r.seed) is int else dumps(r.seed)))
        if r.sources:
            parts.append(self._shown_piece(r))
        if r.finish_reason is not None:
            parts.append(_FINISH + _encode(name(r.finish_reason)) + "]")
        if r.response_model:
            parts.append(_RMODEL + _encode(name(r.response_model)))
        if r.response_id:
            parts.append(_RID + _encode(self.clean(str(r.response_id))))
        if r.replayed_from:
            parts.append(_REPLAYED + _encode(self.clean(r.replayed_from)))
        if r.error_type:
            parts.append(_ETYPE + _encode(name(r.error_type)))
        if r.extra:
            parts.append(self._extra(r.extra))
        parts.append("}")
        texts = out.texts
        input_hash = output_hash = None
        if r.messages is not None:
            value, input_hash = self._input(r.messages)
            texts[input_hash] = value
        if r.output is not None:
            value = self.redactor(r.output)
            output_hash = text_hash(value)
            texts[output_hash] = value
        error = self.error_text(r.error_type, r.error) if r.error_type is not None else None
        out.rows.append([
            r.span_id, r.trace_id, r.parent_id, f"chat {r.model}", A.KIND_CALL, r.start_ns, r.end_ns,
            "ERROR" if error is not None else "OK", error, r.step_index,
            None if r.step_kind is None else name(r.step_kind), name(r.agent), name(r.model), r.sample,
            r.input_tokens, r.output_tokens, r.cost_usd,
            None if r.request_key is None else self.clean(r.request_key), input_hash, output_hash,
            "".join(parts), 1 if r.cached else 0, r.attempts, None])
        return output_hash

    def attempt(self, r: AttemptRecord, out: Rows) -> None:
        self._fresh()
        attrs: dict[str, Any] = {A.OPERATION_NAME: A.OPERATION_CHAT, A.ERROR_TYPE: self.name(r.error_type)}
        if r.wait_s is not None:
            attrs[A.RETRY_WAIT] = float(r.wait_s)
            attrs[A.RETRY_REASON] = r.wait_reason
        out.rows.append([
            r.span_id, r.trace_id, r.parent_id, f"attempt {r.number} {r.model}", A.KIND_ATTEMPT, r.start_ns, r.end_ns,
            "ERROR", self.error_text(r.error_type, r.error), r.step_index,
            None if r.step_kind is None else self.name(r.step_kind), self.name(r.agent), self.name(r.model), None,
            None, None, None, None if r.request_key is None else self.clean(r.request_key), None, None,
            dumps(attrs), 0, r.number, None])

    def step(self, r: StepRecord, out: Rows) -> None:
        self._fresh()
        attrs: dict[str, Any] = {A.STEP_SPEC: self.long(r.spec_json),
                                 A.RESPONSES_IN: self.clean(dumps(list(r.responses_in)))}
        if r.responses_out is not None:
            attrs[A.RESPONSES_OUT] = self.clean(dumps(list(r.responses_out)))
        if r.permutation is not None:
            attrs[A.PERMUTATION] = dumps(list(r.permutation))
        if r.kept is not None:
            attrs[A.KEPT] = dumps(list(r.kept))
        if r.rank_parsed is not None:
            attrs[A.RANK_PARSED] = bool(r.rank_parsed)
        if r.rank_choice is not None:
            attrs[A.RANK_CHOICE] = dumps(list(r.rank_choice))
        if r.dropped_failed:
            attrs[A.DROPPED_FAILED] = self.clean(dumps(list(r.dropped_failed)))[:4000]
        error = None
        if r.error_type is not None:
            attrs[A.ERROR_TYPE] = self.name(r.error_type)
            error = self.error_text(r.error_type, r.error)
        out.rows.append([
            r.span_id, r.trace_id, r.parent_id, f"step {r.kind.lower()}", A.KIND_STEP, r.start_ns, r.end_ns,
            "ERROR" if error is not None else "OK", error, r.index, self.name(r.kind), None, None, None,
            None, None, None, None, None, None, dumps(attrs), 0, None, None])

    def run(self, r: RunRecord, out: Rows) -> None:
        self._fresh()
        attrs: dict[str, Any] = {A.OPERATION_NAME: A.OPERATION_WORKFLOW}
        if r.name:
            attrs[A.AGENT_NAME] = self.name(r.name)
            attrs[A.PIPELINE_NAME] = self.name(r.name)
        attrs.update({A.PIPELINE: self.long(r.pipeline_json), A.SEED: r.seed, A.SEED_SENT: bool(r.seed_sent),
                      A.QUERY: self.redactor(r.query_json), A.PROMPT_SET: self.name(r.prompt_set),
                      A.MODELS: self.long(r.models_json)})
        if r.max_tokens_cap is not None:
            attrs[A.MAX_TOKENS_CAP] = r.max_tokens_cap
        if r.batch_id is not None:
            attrs[A.BATCH_ID] = r.batch_id
            attrs[A.BATCH_ITEM] = r.batch_item
            if r.batch_seed is not None:
                attrs[A.BATCH_SEED] = r.batch_seed
        attrs[A.CALLS_PAID] = r.calls_paid
        attrs[A.CALLS_REUSED] = r.calls_reused
        error = None
        if r.error_type is not None:
            attrs[A.ERROR_TYPE] = self.name(r.error_type)
            error = self.error_text(r.error_type, r.error)
        output_hash = None
        if r.output is not None:
            value = self.redactor(r.output)
            output_hash = text_hash(value)
            out.texts[output_hash] = value
        out.rows.append([
            r.span_id, r.trace_id, r.parent_id, f"{A.OPERATION_WORKFLOW} {self.name(r.name or 'moakit')}", A.KIND_RUN,
            r.start_ns, r.end_ns, "ERROR" if error is not None else "OK", error, None, None, None, None, None,
            None, None, None, None, None, output_hash, dumps(attrs), 0, None, None])
