"""The one place that calls ``litellm.acompletion``: replay from the store first, then retries
with backoff that honours Retry-After, a timeout, token counts, cost, and one ``chat {model}``
span per attempt (OpenTelemetry GenAI conventions).

litellm is imported lazily (it takes seconds and, without ``LITELLM_LOCAL_MODEL_COST_MAP``,
downloads a price map): a run served wholly from the store never imports it."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from dataclasses import dataclass
from json.encoder import encode_basestring as _encode_str
from typing import Any, Sequence

from opentelemetry.trace import Status, StatusCode

from .errors import ReplayMiss
from .models import ModelSpec
from .tracing import attributes as A
from .tracing.exporter import (_LONE_SURROGATE, _UNSET, RowSpan, SQLiteSpanProcessor, _clean, _clean_id, _dumps, output_text,
                               span_processors)
from .tracing.ids import span_id_hex
from .tracing.redact import redact
from .tracing.store import text_hash

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_litellm = None


def get_litellm():
    """Import litellm once, offline, quietly; register the embedded model's provider."""
    global _litellm
    if _litellm is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        from .local import register

        register(litellm)
        _litellm = litellm
    return _litellm


@dataclass
class CallRequest:
    """One LLM call the engine wants made."""

    agent: str
    sample: int
    spec: ModelSpec
    messages: list[dict]
    temperature: float
    max_tokens: int
    key: str  # request key (hash:occurrence)
    seed: int | None  # the seed sent to the model (derived from the run seed), or None
    step_index: int
    step_kind: str
    sources: Sequence[str] = ()  # span ids behind the numbered responses shown, in order
    source_agents: Sequence[str] = ()
    parent: Any = None  # the step span's SpanContext when the engine records spans as rows, else None


@dataclass
class CallResult:
    text: str | None
    span_id: str | None
    error: str | None = None
    cached: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 1


@dataclass
class ClientConfig:
    """Retry and timeout policy. ``retries`` counts attempts after the first."""

    retries: int = 4
    timeout: float = 120.0
    backoff: float = 0.5  # first wait; doubles each attempt, with jitter
    max_backoff: float = 30.0
    max_retry_after: float = 120.0  # never sleep longer than this for one Retry-After
    record_content: bool = True

    def __post_init__(self):
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"ClientConfig: retries must be an integer >= 0, got {self.retries!r}")
        for name in ("timeout", "backoff", "max_backoff", "max_retry_after"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (name == "timeout" and v == 0):
                raise ValueError(f"ClientConfig: {name} must be a {'positive' if name == 'timeout' else 'non-negative'}"
                                 f" number of seconds, got {v!r}")



def semconv_messages(messages: Sequence[dict]) -> str:
    return _dumps([{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content") or ""}]}
                   for m in messages])


_OUTPUT_HEAD = '[{"role": "assistant", "parts": [{"type": "text", "content": '


def _output_messages(text: str, finish: str | None) -> str:
    """``_dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}],
    "finish_reason": finish or "stop"}])``, assembled around the encoded text (the same string:
    ``_dumps`` encodes a str inside a list as ``encode_basestring`` does), at a third of the cost."""
    if type(text) is str and (finish is None or type(finish) is str):
        return f'{_OUTPUT_HEAD}{_encode_str(text)}}}], "finish_reason": {_encode_str(finish or "stop")}}}]'
    return _dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}],
                    "finish_reason": finish or "stop"}])


# --- error classification ---------------------------------------------------------------
_RETRYABLE_NAMES = {
    "RateLimitError", "InternalServerError", "ServiceUnavailableError", "APIConnectionError", "Timeout",
    "APITimeoutError", "TimeoutError", "BadGatewayError", "APIError", "MalformedResponse", "ReadTimeout",
    "ConnectError", "RemoteProtocolError", "ReadError", "JSONDecodeError",
}
_FATAL_NAMES = {"AuthenticationError", "PermissionDeniedError", "NotFoundError", "BadRequestError",
                "ContextWindowExceededError", "UnsupportedParamsError", "ContentPolicyViolationError"}


class MalformedResponse(Exception):
    """The provider answered 200 with no usable choice."""


def classify(exc: BaseException) -> tuple[str, bool]:
    """(error.type, retryable) for an exception raised by a call."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if name in _FATAL_NAMES or status in (400, 401, 403, 404, 422):
        return name, False
    if name in _RETRYABLE_NAMES or isinstance(exc, (asyncio.TimeoutError, ConnectionError, json.JSONDecodeError)):
        return name, True
    if isinstance(status, int) and (status == 429 or status >= 500):
        return name, True
    return name, False


def retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header carried by the exception, if any."""
    headers = None
    for attr in ("litellm_response_headers", "headers"):
        headers = getattr(exc, attr, None) or headers
    resp = getattr(exc, "response", None)
    if headers is None and resp is not None:
        headers = getattr(resp, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# keys of a replayed or paid row's attributes JSON, encoded (see Client._request_json)
_SEED_KEY = f", {_encode_str(A.REQUEST_SEED)}: "
_REPLAYED_KEY = f", {_encode_str('moakit.replayed_from')}: "
_RMODEL_KEY = f", {_encode_str(A.RESPONSE_MODEL)}: "
_FINISH_KEY = f", {_encode_str(A.RESPONSE_FINISH_REASONS)}: "
_RID_KEY = f", {_encode_str(A.RESPONSE_ID)}: "

# the attributes Client._start_row stores already redacted
_PRE_CLEANED = frozenset((A.SPAN_KIND, A.OPERATION_NAME, A.PROVIDER_NAME, A.REQUEST_MODEL, A.REQUEST_TEMPERATURE,
                          A.REQUEST_MAX_TOKENS, A.AGENT, A.SAMPLE, A.STEP_INDEX, A.STEP_KIND, A.REQUEST_KEY, A.ATTEMPT,
                          A.REQUEST_SEED, A.INPUT_SOURCES, A.INPUT_AGENTS, A.INPUT_MESSAGES))

_PAID_CLEANED = _PRE_CLEANED | {A.USAGE_INPUT_TOKENS, A.USAGE_OUTPUT_TOKENS, A.RESPONSE_FINISH_REASONS, A.CACHED,
                                A.COST_USD, A.RESPONSE_MODEL}

# (model asked, model answered) -> size of litellm's price map when it had no price for them:
# not asked again until the map changes (litellm.register_model)
_UNPRICED: dict[tuple[str, str | None], int] = {}


class Client:
    """Makes calls for one run (or batch): cache first, then litellm with retries."""

    def __init__(self, tracer, *, cache=None, offline: bool = False, config: ClientConfig | None = None,
                 max_concurrency: int | None = 16, per_model_concurrency: int | None = None):
        self.tracer = tracer
        self.cache = cache
        self.offline = offline
        self.config = config or ClientConfig()
        self._global = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._per_model_cap = per_model_concurrency
        self._per_model: dict[str, asyncio.Semaphore] = {}
        self.paid = 0
        self.reused = 0
        self._sink: Any = False  # resolved on the first replayed call (see _row_sink)
        self._inputs: dict[int, tuple] = {}  # id(messages) -> (messages, redacted JSON, hash)
        self._cleaned: dict[str, str] = {}  # short repeated attribute strings -> redacted
        self._lists: list[tuple] = [(None, None), (None, None)]  # last (sources, JSON), (agents, JSON)
        self._parent_ids: tuple = (None, None, None)  # last parent SpanContext and its hex ids
        self._attr_heads: dict[tuple, str] = {}  # (provider, temperature, max tokens) -> a call row's JSON head
        self._piece: tuple = (None, None, "")  # the last sources / agents and their piece of JSON

    def _model_sem(self, model: str):
        if not self._per_model_cap:
            return None
        if model not in self._per_model:
            self._per_model[model] = asyncio.Semaphore(self._per_model_cap)
        return self._per_model[model]

    def _start(self, req: CallRequest, attempt: int):
        """The call's span: a RowSpan when spans of this tracer go only to the store (its row is
        the SDK span's row; a paid call's commit is then awaited as a group, see ``_ended``),
        else an OpenTelemetry SDK span, child of the engine's step span."""
        sink = self._row_sink()
        parent = req.parent
        if sink is not None:
            if parent is None:
                from opentelemetry import trace as otel_trace

                parent = otel_trace.get_current_span().get_span_context()
            if not parent.is_valid:
                parent = None  # a root span (the SDK samples roots)
            elif not parent.trace_flags.sampled:
                sink = None  # the SDK decides (it records nothing)
        if sink is not None:
            return self._start_row(sink, req, attempt, parent)
        if req.parent is not None:  # the engine's spans are rows: no current span to inherit from
            from opentelemetry.trace import NonRecordingSpan, set_span_in_context

            span = self.tracer.start_span(f"chat {req.spec.model}",
                                          context=set_span_in_context(NonRecordingSpan(req.parent)))
        else:
            span = self.tracer.start_span(f"chat {req.spec.model}")
        span.set_attributes({
            A.SPAN_KIND: "call",
            A.OPERATION_NAME: "chat",
            A.PROVIDER_NAME: req.spec.provider,
            A.REQUEST_MODEL: req.spec.model,
            A.REQUEST_TEMPERATURE: float(req.temperature),
            A.REQUEST_MAX_TOKENS: int(req.max_tokens),
            A.AGENT: req.agent,
            A.SAMPLE: req.sample,
            A.STEP_INDEX: req.step_index,
            A.STEP_KIND: req.step_kind,
            A.REQUEST_KEY: req.key,
            A.ATTEMPT: attempt,
        })
        if req.seed is not None:
            span.set_attribute(A.REQUEST_SEED, req.seed)
        if req.sources:
            span.set_attribute(A.INPUT_SOURCES, json.dumps(list(req.sources)))
            span.set_attribute(A.INPUT_AGENTS, json.dumps(list(req.source_agents)))
        if self.config.record_content:
            span.set_attribute(A.INPUT_MESSAGES, semconv_messages(req.messages))
        return span

    @staticmethod
    def _span_id(span) -> str:
        return format(span.get_span_context().span_id, "016x")

    def cached_many(self, reqs: Sequence[CallRequest]) -> list[CallResult | None]:
        """Serve what the store holds of ``reqs``, in order, without a task or an await (one
        query for all the hits); None for each miss, to be made with ``call(req, looked_up=True)``."""
        hits = self.cache.lookup_many([r.key for r in reqs])
        return [None if hit is None else self._replayed(req, hit) for req, hit in zip(reqs, hits)]

    async def call(self, req: CallRequest, looked_up: bool = False) -> CallResult:
        if self.cache is not None and not looked_up:
            hit = self.cache.lookup(req.key)
            if hit is not None:
                return self._replayed(req, hit)
        if self.offline or req.spec.is_recorded:
            why = "offline=True" if self.offline else f"{req.spec.model} holds imported outputs only"
            raise ReplayMiss(
                f"no recorded call for step {req.step_index} ({req.step_kind}), agent {req.agent!r}, model "
                f"{req.spec.model!r} (request key {req.key}); {why}, so it cannot be made. "
                + ("Run without offline=True (or with fill) to record it." if self.offline else
                   "Import this agent's output for this query (store.import_outputs), or map the agent to a "
                   "real model in models=."),
                step=req.step_index, agent=req.agent, model=req.spec.model, request_key=req.key)
        if _litellm is None:  # import (seconds) off the event loop and before any span starts
            await asyncio.to_thread(get_litellm)
        sems = [s for s in (self._global, self._model_sem(req.spec.model)) if s is not None]
        for s in sems:
            await s.acquire()
        try:
            return await self._call_with_retries(req)
        finally:
            for s in reversed(sems):
                s.release()

    def _row_sink(self):
        """The store's span processor when spans of this tracer go only to it (then a replayed
        call can be written as a row without an OpenTelemetry span), else None."""
        if self._sink is False:
            self._sink = None
            from opentelemetry.sdk.trace import sampling

            procs = span_processors(self.tracer)
            limits = getattr(self.tracer, "_span_limits", None)
            if (len(procs) == 1 and type(procs[0]) is SQLiteSpanProcessor
                    and getattr(self.tracer, "sampler", None) is sampling.DEFAULT_ON
                    and limits is not None and limits.max_attribute_length is None):
                self._sink = procs[0]
        return self._sink

    def _input_text(self, messages) -> tuple[str, str]:
        """(redacted semconv JSON, its hash) of a request's messages: the synthesizers of a layer
        share one list, so it is computed once. The entry keeps the list alive (its id stays its)."""
        hit = self._inputs.get(id(messages))
        if hit is not None and hit[0] is messages:
            return hit[1], hit[2]
        value = _clean(semconv_messages(messages))
        h = text_hash(value)
        if len(self._inputs) >= 256:
            self._inputs.clear()
        self._inputs[id(messages)] = (messages, value, h)
        return value, h

    def _clean_name(self, v: str) -> str:
        """Redacted ``v``; names (provider, model, agent, step) repeat on every call: redacted once."""
        memo = self._cleaned
        c = memo.get(v)
        if c is None:
            if len(memo) >= 4096:
                memo.clear()
            c = memo[v] = _clean(v)
        return c

    def _list_json(self, values, slot: int) -> str:
        """Redacted ``json.dumps(list(values))``, kept for the last list seen in ``slot``."""
        hit = self._lists[slot]
        if hit[0] is values:
            return hit[1]
        value = _clean(json.dumps(list(values)))
        self._lists[slot] = (values, value)
        return value

    def _request_json(self, req: CallRequest) -> list[str]:
        """The start of a call row's attributes JSON, as ``_dumps`` writes it (without the closing
        brace), in pieces: operation, provider, temperature and max tokens (one string per
        setting), the seed, and the sources and agents shown (one string per layer)."""
        head_key = (req.spec.provider, req.temperature, req.max_tokens)
        head = self._attr_heads.get(head_key)
        if head is None:
            if len(self._attr_heads) >= 256:
                self._attr_heads.clear()
            clean = self._clean_name
            head = self._attr_heads[head_key] = _dumps({
                A.OPERATION_NAME: clean("chat"), A.PROVIDER_NAME: clean(req.spec.provider),
                A.REQUEST_TEMPERATURE: float(req.temperature), A.REQUEST_MAX_TOKENS: int(req.max_tokens)})[:-1]
        parts = [head]
        seed = req.seed
        if seed is not None:
            parts.append(_SEED_KEY + (int.__repr__(seed) if type(seed) is int else _dumps(seed)))
        if req.sources:  # a layer's calls share these lists (the engine passes the same ones)
            parts.append(self._sources_piece(req))
        return parts

    def _sources_piece(self, req: CallRequest) -> str:
        """The sources and agents attributes of a call row's JSON (``, "k": "v", "k": "v"``)."""
        hit = self._piece
        if hit[0] is req.sources and hit[1] is req.source_agents:
            return hit[2]
        piece = (f", {_encode_str(A.INPUT_SOURCES)}: {_encode_str(self._list_json(req.sources, 0))}"
                 f", {_encode_str(A.INPUT_AGENTS)}: {_encode_str(self._list_json(req.source_agents, 1))}")
        self._piece = (req.sources, req.source_agents, piece)
        return piece

    def _row_texts(self, req: CallRequest, text: str, out_json: str) -> tuple[dict[str, str], str | None, str]:
        """A call row's texts, as ``span_to_row`` stores them: (texts, input hash or None when
        prompts are not recorded, output hash). The output is the text itself unless redaction
        changed its messages JSON (then the text of the redacted JSON)."""
        texts: dict[str, str] = {}
        input_hash = None
        if self.config.record_content:
            value, input_hash = self._input_text(req.messages)
            texts[input_hash] = value
        c = _clean(out_json)
        out = text if c is out_json or c == out_json else output_text(c)
        h = text_hash(out)
        texts[h] = out
        return texts, input_hash, h

    def _replayed_row(self, sink, req: CallRequest, hit, parent) -> CallResult:
        """A call served from the store, written as the row :func:`span_to_row` would make of its
        span (same columns, attributes, redaction and hashes), without the OpenTelemetry SDK."""
        span_id_src, text, usage = hit
        start = time.time_ns()
        sid = span_id_hex()
        inp, outp = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
        clean = self._clean_name
        parts = self._request_json(req)
        parts.append(_REPLAYED_KEY + _encode_str(_clean_id(span_id_src)))
        if usage.get("response_model"):
            parts.append(_RMODEL_KEY + _encode_str(clean(usage["response_model"])))
        parts.append("}")
        ids = self._parent_ids
        if ids[0] is not parent:  # a layer's calls share their parent (the step span)
            ids = self._parent_ids = (parent, format(parent.trace_id, "032x"), format(parent.span_id, "016x"))
        texts, input_hash, h = self._row_texts(req, text, _output_messages(text, None))
        # the row's values in SPAN_COLUMNS order (the store takes a list as it is: no dict to map)
        sink.add_row([sid, ids[1], ids[2], f"chat {req.spec.model}", clean("call"), start, time.time_ns(), "UNSET",
                      None, req.step_index, clean(req.step_kind), clean(req.agent), clean(req.spec.model), req.sample,
                      inp, outp, 0.0, _clean_id(req.key), input_hash, h, "".join(parts), 1, 0, None], texts)
        self.reused += 1
        return CallResult(text=text, span_id=sid, cached=True, input_tokens=inp, output_tokens=outp, attempts=0)

    def _replayed(self, req: CallRequest, hit) -> CallResult:
        sink = self._row_sink()
        if sink is not None:
            from opentelemetry import trace as otel_trace

            parent = req.parent if req.parent is not None else otel_trace.get_current_span().get_span_context()
            if parent.is_valid and parent.trace_flags.sampled:  # a root or unsampled span: the SDK decides
                return self._replayed_row(sink, req, hit, parent)
        span_id_src, text, usage = hit
        span = self._start(req, 0)
        span.set_attributes({
            A.CACHED: True, A.COST_USD: 0.0,
            A.USAGE_INPUT_TOKENS: usage.get("input_tokens") or 0,
            A.USAGE_OUTPUT_TOKENS: usage.get("output_tokens") or 0,
            "moakit.replayed_from": span_id_src,
        })
        if usage.get("response_model"):
            span.set_attribute(A.RESPONSE_MODEL, usage["response_model"])
        span.set_attribute(A.OUTPUT_MESSAGES, _output_messages(text, None))
        sid = self._span_id(span)
        span.end()
        self.reused += 1
        return CallResult(text=text, span_id=sid, cached=True, input_tokens=usage.get("input_tokens") or 0,
                          output_tokens=usage.get("output_tokens") or 0, attempts=0)

    def _start_row(self, sink, req: CallRequest, attempt: int, parent) -> RowSpan:
        """``_start`` as a RowSpan: the same attributes in the same order, the strings stored
        already redacted (names once per client, a layer's shared sources and prompt once per
        layer, with the prompt's hash), which ``span_to_row`` then takes as they are. They are
        set when the span is first touched (an error, a retry): a call that succeeds at once
        gets its row from ``_paid_row`` without them."""
        span = RowSpan(sink, f"chat {req.spec.model}", parent)
        span.group = True
        span.fill = (self._call_attributes, req, attempt)
        return span

    def _call_attributes(self, span: RowSpan, req: CallRequest, attempt: int) -> None:
        """Set a call's first attributes on its RowSpan (see ``_start_row``)."""
        clean = self._clean_name
        a = span.attributes
        a[A.SPAN_KIND] = clean("call")  # a user's redaction hook sees every string
        a[A.OPERATION_NAME] = clean("chat")
        a[A.PROVIDER_NAME] = clean(req.spec.provider)
        a[A.REQUEST_MODEL] = clean(req.spec.model)
        a[A.REQUEST_TEMPERATURE] = float(req.temperature)
        a[A.REQUEST_MAX_TOKENS] = int(req.max_tokens)
        a[A.AGENT] = clean(req.agent)
        a[A.SAMPLE] = req.sample
        a[A.STEP_INDEX] = req.step_index
        a[A.STEP_KIND] = clean(req.step_kind)
        a[A.REQUEST_KEY] = _clean_id(req.key)
        a[A.ATTEMPT] = attempt
        if req.seed is not None:
            a[A.REQUEST_SEED] = req.seed
        if req.sources:
            a[A.INPUT_SOURCES] = self._list_json(req.sources, 0)
            a[A.INPUT_AGENTS] = self._list_json(req.source_agents, 1)
        if self.config.record_content:
            value, h = self._input_text(req.messages)
            a[A.INPUT_MESSAGES] = value
            span.input_hash = (value, h)
        span.cleaned = _PRE_CLEANED

    def _paid_row(self, span: RowSpan, req: CallRequest, attempt: int, text: str, usage, cost, rmodel, reason: str,
                  rid, out_json: str) -> tuple[list, dict[str, str]]:
        """The row :func:`span_to_row` would make of a paid call's RowSpan with its first and its
        success attributes set (usage, finish reason, cached, cost, response model and id,
        output), built from the request and the pieces a layer shares (as ``_replayed_row``
        does); tests/test_replay_rows.py compares it with the SDK path's row."""
        clean = self._clean_name
        parts = self._request_json(req)
        parts.append(_FINISH_KEY + "[" + _encode_str(clean(reason)) + "]")
        if rmodel:
            parts.append(_RMODEL_KEY + _encode_str(clean(rmodel)))
        if rid:
            parts.append(_RID_KEY + _encode_str(_clean(str(rid))))
        parts.append("}")
        texts, input_hash, h = self._row_texts(req, text, out_json)
        ctx, parent = span.context, span.parent
        return [format(ctx.span_id, "016x"), format(ctx.trace_id, "032x"),
                None if parent is None else format(parent.span_id, "016x"), span.name, clean("call"),
                span.start_time, span.end_time, "OK", None, req.step_index, clean(req.step_kind), clean(req.agent),
                clean(req.spec.model), req.sample, usage[0], usage[1], cost, _clean_id(req.key), input_hash, h,
                "".join(parts), 0, attempt, None], texts

    @staticmethod
    async def _ended(span) -> None:
        """End a paid attempt's span; return once its row is committed. A RowSpan's row waits
        for the group commit of the calls ending in this event-loop turn (one transaction for
        them all); an SDK span's row was committed by ``on_end`` already."""
        span.end()
        if getattr(span, "group", False):
            await span._sink.committed()

    async def _call_with_retries(self, req: CallRequest) -> CallResult:
        cfg = self.config
        last_error = "error"
        sid = None
        for attempt in range(1, cfg.retries + 2):
            span = self._start(req, attempt)
            sid = self._span_id(span)
            try:
                text, usage, cost, rmodel, finish, rid = await self._complete(req)
            except BaseException as exc:  # noqa: BLE001 - every failure is recorded on its span
                if isinstance(exc, asyncio.CancelledError):
                    span.set_status(Status(StatusCode.ERROR, "cancelled"))
                    span.set_attribute(A.ERROR_TYPE, "cancelled")
                    span.end()
                    if getattr(span, "group", False):
                        span._sink.flush()  # no await while cancelled: committed here
                    raise
                etype, retryable = classify(exc)
                msg = redact(str(exc))[:2000]  # redact before cutting: no key survives half-masked
                span.set_attribute(A.ERROR_TYPE, etype)
                span.set_status(Status(StatusCode.ERROR, msg))
                last_error = f"{etype}: {msg}"
                retry = retryable and attempt <= cfg.retries
                if retry:  # the wait that follows is recorded on this attempt's span
                    wait, reason = retry_after(exc), "retry-after"
                    if wait is None:
                        wait = min(cfg.max_backoff, cfg.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                        reason = "backoff"
                    wait = min(wait, cfg.max_retry_after)
                    span.set_attributes({A.RETRY_WAIT: float(wait), A.RETRY_REASON: reason})
                await self._ended(span)
                if not retry:
                    return CallResult(text=None, span_id=sid, error=last_error, attempts=attempt)
                await asyncio.sleep(wait)
                continue
            reason = finish or "stop"
            # values of the types the row paths store as they are (else the SDK's cleaning, below)
            plain = type(span) is RowSpan and isinstance(reason, str) and isinstance(rmodel, (str, type(None))) \
                and type(usage[0]) is int and type(usage[1]) is int and isinstance(cost, (float, type(None)))
            if plain and type(reason) is str and span.fill is not None and span.status is _UNSET:
                # the row span_to_row would make of the span after the attributes below, built directly
                out_json = _output_messages(text, finish)
                span.fill, span.end_time = None, time.time_ns()
                sink = span._sink
                sink.add_row(*self._paid_row(span, req, attempt, text, usage, cost, rmodel, reason, rid, out_json))
                await sink.committed()
                self.paid += 1
                return CallResult(text=text, span_id=sid, input_tokens=usage[0], output_tokens=usage[1],
                                  cost_usd=cost or 0.0, attempts=attempt)
            if plain:
                # what the SDK path sets, in its order, the strings redacted here (memo of names)
                if span.fill is not None:
                    span._filled()
                a = span.attributes
                a[A.USAGE_INPUT_TOKENS], a[A.USAGE_OUTPUT_TOKENS] = usage
                a[A.RESPONSE_FINISH_REASONS] = (self._clean_name(reason),)
                a[A.CACHED] = False
                if cost is not None:
                    a[A.COST_USD] = cost
                if rmodel:
                    a[A.RESPONSE_MODEL] = self._clean_name(rmodel)
                span.cleaned = _PAID_CLEANED
            else:
                span.set_attributes({
                    A.USAGE_INPUT_TOKENS: usage[0], A.USAGE_OUTPUT_TOKENS: usage[1],
                    A.RESPONSE_FINISH_REASONS: [reason], A.CACHED: False,
                })
                if cost is not None:
                    span.set_attribute(A.COST_USD, cost)
                if rmodel:
                    span.set_attribute(A.RESPONSE_MODEL, rmodel)
            if rid:
                span.set_attribute(A.RESPONSE_ID, str(rid))
            # the output is always kept: replay needs it even when prompts are not recorded
            out_json = _output_messages(text, finish)
            span.set_attribute(A.OUTPUT_MESSAGES, out_json)
            if type(span) is RowSpan:
                span.output_text = (out_json, text)
            span.set_status(Status(StatusCode.OK))
            await self._ended(span)
            self.paid += 1
            return CallResult(text=text, span_id=sid, input_tokens=usage[0], output_tokens=usage[1],
                              cost_usd=cost or 0.0, attempts=attempt)
        return CallResult(text=None, span_id=sid, error=last_error)

    async def _complete(self, req: CallRequest):
        litellm = get_litellm()
        kwargs: dict[str, Any] = dict(
            model=req.spec.model, messages=req.messages, temperature=req.temperature, max_tokens=req.max_tokens,
            timeout=self.config.timeout, drop_params=True, max_retries=0, **req.spec.litellm_kwargs())
        if req.seed is not None:
            kwargs["seed"] = req.seed
        resp = await asyncio.wait_for(litellm.acompletion(**kwargs), timeout=self.config.timeout + 5)
        choices = getattr(resp, "choices", None) or []
        if not choices:
            raise MalformedResponse("the provider returned no choices")
        msg = choices[0].message
        text = getattr(msg, "content", None)
        if text is None:
            raise MalformedResponse("the provider returned a choice without content")
        text = _LONE_SURROGATE.sub("\ufffd", text)  # a JSON "\\ud800" escape: not storable, not sendable
        usage = getattr(resp, "usage", None)
        tokens = (int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0))
        cost = 0.0 if req.spec.is_local else None
        if cost is None:
            priced = (req.spec.model, getattr(resp, "model", None))
            if _UNPRICED.get(priced) != len(litellm.model_cost):  # 0.3 ms a call to learn it again
                try:
                    cost = float(litellm.completion_cost(completion_response=resp))
                except Exception:  # noqa: BLE001 - unknown price: cost stays unknown
                    _UNPRICED[priced] = len(litellm.model_cost)
        return text, tokens, cost, getattr(resp, "model", None), choices[0].finish_reason, getattr(resp, "id", None)
