"""The one place that calls ``litellm.acompletion``: caps on calls in flight, retries with
backoff that honours Retry-After, a timeout per attempt, token counts and cost.

A call returns one :class:`Outcome` per attempt (``on_attempt`` hears of each failed attempt
that is tried again before the wait that follows it); it builds no rows and no spans: the run
layer records what it is told.

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
from typing import Any, Callable

from ..errors import ModelError
from ..models import ModelSpec
from ..store.redact import redact, replace_surrogates
from . import transport as T
from .limits import AdaptiveLimit, RateBudget, budget_for, check_limits, estimate_tokens

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


def litellm_loaded() -> bool:
    return _litellm is not None


TRANSPORTS = ("auto", "litellm", "direct")


@dataclass
class ClientConfig:
    """How calls are made: retries, timeouts, the transport, and the limits on calls in flight
    and per minute.

    Args:
        retries: attempts after the first (default 4: at most 5 attempts).
        timeout: seconds one attempt may take.
        backoff: the first wait before a retry (doubling each attempt, with jitter), capped by
            ``max_backoff``; a Retry-After the provider sends is honoured instead (capped by
            ``max_retry_after``).
        record_content: False keeps prompts out of the trace.
        transport: ``"auto"`` (default): models on an OpenAI-compatible chat completions API
            (``openai/...`` with or without ``api_base``, ``hosted_vllm/...``, and the providers
            in ``moakit.llm.transport.DIRECT_PROVIDERS``) go through the direct transport (one
            pooled aiohttp session, the body litellm would send, no litellm on the way of each
            call); every other model through litellm. ``"litellm"``: every call through
            litellm. ``"direct"``: like auto, but a model the direct transport cannot serve
            (other than the embedded one) is an error before any call. Spans, retries,
            backoff, Retry-After, timeouts, error types and request keys are the same on both
            paths; ``moakit.transport`` on each call's span says which one served it.
        adaptive: shrink an endpoint's limit on calls in flight when it answers 429 or 503,
            and grow it back while calls succeed (AIMD; between 1 and ``max_concurrency``).
        rpm, tpm: requests and tokens per minute allowed per provider: a number (each provider
            on its own) or a dict of provider name (``"openai"``) or api_base -> number. An
            attempt waits until it fits; the wait is recorded on its call's span
            (``moakit.wait.rate_s``).
    """

    retries: int = 4
    timeout: float = 120.0
    backoff: float = 0.5  # first wait; doubles each attempt, with jitter
    max_backoff: float = 30.0
    max_retry_after: float = 120.0  # never sleep longer than this for one Retry-After
    record_content: bool = True
    transport: str = "auto"
    rpm: Any = None
    tpm: Any = None
    adaptive: bool = True

    def __post_init__(self):
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"ClientConfig: retries must be an integer >= 0, got {self.retries!r}")
        for name in ("timeout", "backoff", "max_backoff", "max_retry_after"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (name == "timeout" and v == 0):
                raise ValueError(f"ClientConfig: {name} must be a {'positive' if name == 'timeout' else 'non-negative'}"
                                 f" number of seconds, got {v!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"ClientConfig: transport must be one of {', '.join(map(repr, TRANSPORTS))}, got "
                             f"{self.transport!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"ClientConfig: adaptive must be True or False, got {self.adaptive!r}")
        check_limits("rpm", self.rpm)
        check_limits("tpm", self.tpm)


@dataclass(slots=True)
class Request:
    """What one LLM call asks for."""

    spec: ModelSpec
    messages: list[dict]
    temperature: float
    max_tokens: int
    seed: int | None = None


@dataclass(slots=True)
class Outcome:
    """One attempt's result: an answer, or an error (classified; with the wait before the next
    attempt when it is tried again)."""

    attempt: int
    start_ns: int
    end_ns: int
    text: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # None: litellm has no price for the model
    response_model: str | None = None
    finish_reason: str | None = None
    response_id: str | None = None
    error_type: str | None = None
    error: str | None = None  # redacted, at most 2,000 characters
    wait_s: float | None = None  # a failed attempt that is tried again: the wait that follows
    wait_reason: str | None = None  # "retry-after" or "backoff"
    first_start_ns: int = 0  # when the call's first attempt started (after its slot was free)
    queue_s: float = 0.0  # seconds the call waited for slots (caps on calls in flight, the endpoint's limit)
    rate_s: float = 0.0  # seconds its attempts waited for requests / tokens per minute
    transport: str = "litellm"  # what served it: "litellm" or "direct"
    ttft_s: float | None = None  # a streamed attempt: seconds from its start to the first text chunk

    @property
    def ok(self) -> bool:
        return self.error_type is None


# --- error classification ---------------------------------------------------------------
_RETRYABLE_NAMES = {
    "RateLimitError", "InternalServerError", "ServiceUnavailableError", "APIConnectionError", "Timeout",
    "APITimeoutError", "TimeoutError", "BadGatewayError", "APIError", "MalformedResponse", "ReadTimeout",
    "ConnectError", "RemoteProtocolError", "ReadError", "JSONDecodeError",
}
_FATAL_NAMES = {"AuthenticationError", "PermissionDeniedError", "NotFoundError", "BadRequestError",
                "ContextWindowExceededError", "UnsupportedParamsError", "ContentPolicyViolationError"}


# answers that mean "too many requests now": the endpoint's adaptive limit shrinks
OVERLOAD_ERRORS = frozenset({"RateLimitError", "ServiceUnavailableError"})


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


# models whose provider cannot stream (asked once, then called whole)
_NO_STREAM: set[str] = set()

# (model asked, model answered) -> size of litellm's price map when it had no price for them:
# not asked again until the map changes (litellm.register_model); asking costs ~0.3 ms a call
_UNPRICED: dict[tuple[str, str | None], int] = {}


@dataclass(slots=True)
class Target:
    """Where one model's calls go: the transport, the direct route (None: litellm), the limit on
    attempts in flight to its endpoint and its provider's per-minute budget."""

    spec: ModelSpec  # kept: the caller's memo is keyed by its id
    transport: str
    route: T.Route | None
    endpoint: str
    limit: AdaptiveLimit
    budget: RateBudget | None


# resolved routes, shared by every caller of the process: spec key -> Route, or the reason why
# there is none (NotDirect)
_ROUTES: dict[tuple, Any] = {}


def spec_key(spec: ModelSpec) -> tuple:
    return (spec.model, spec.api_base, spec.api_key, repr(spec.extra))


def direct_route(spec: ModelSpec) -> T.Route:
    """The direct route of ``spec`` (resolved through litellm once per process), or
    :class:`~moakit.llm.transport.NotDirect` saying why there is none."""
    key = spec_key(spec)
    hit = _ROUTES.get(key)
    if hit is None:
        try:
            hit = T.resolve(spec, get_litellm())
        except T.NotDirect as e:
            hit = e
        except Exception as e:  # noqa: BLE001 - anything litellm raised while resolving: not direct
            hit = T.NotDirect(f"resolving it through litellm failed ({type(e).__name__}: {e})")
        _ROUTES[key] = hit
    if isinstance(hit, T.NotDirect):
        raise hit
    return hit


def check_transport(specs, config: ClientConfig) -> None:
    """With ``transport="direct"``, raise :class:`ModelError` naming the first agent whose model
    the direct transport cannot serve (before any call)."""
    if config.transport != "direct":
        return
    for agent, spec in specs.items():
        if spec.is_local or spec.is_recorded:
            continue
        try:
            direct_route(spec)
        except T.NotDirect as e:
            raise ModelError(f"agent {agent!r}: ClientConfig(transport='direct') cannot serve {spec.model!r}: {e}. "
                             "Use transport='auto' to send it through litellm.") from None


class Caller:
    """Makes the LLM calls of one run or batch: caps on calls in flight (global, per model),
    then per attempt the endpoint's adaptive limit and the provider's per-minute budget, then the
    direct transport or litellm, with retries. One caller per event loop (its semaphores belong
    to that loop)."""

    DEFAULT_CAP = 256  # the endpoint limit's ceiling when there is no cap on calls in flight

    def __init__(self, config: ClientConfig | None = None, *, max_concurrency: int | None = 16,
                 per_model_concurrency: int | None = None):
        self.config = config or ClientConfig()
        self._global = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._cap = max_concurrency or self.DEFAULT_CAP
        self._per_model_cap = per_model_concurrency
        self._per_model: dict[str, asyncio.Semaphore] = {}
        self._targets: dict[int, Target] = {}
        self.limits: dict[str, AdaptiveLimit] = {}  # endpoint -> its adaptive limit
        self.budgets: dict[str, RateBudget] = {}  # provider or api_base -> its per-minute budget

    def _slots(self, model: str) -> list[asyncio.Semaphore]:
        sems = [] if self._global is None else [self._global]
        if self._per_model_cap:
            sem = self._per_model.get(model)
            if sem is None:
                sem = self._per_model[model] = asyncio.Semaphore(self._per_model_cap)
            sems.append(sem)
        return sems

    def target(self, spec: ModelSpec) -> Target:
        """Where ``spec``'s calls go (worked out once per spec)."""
        t = self._targets.get(id(spec))
        if t is not None and t.spec is spec:
            return t
        cfg = self.config
        route = None
        if cfg.transport != "litellm" and not spec.is_local and not spec.is_recorded:
            try:
                route = direct_route(spec)
            except T.NotDirect as e:
                if cfg.transport == "direct":
                    raise ModelError(f"ClientConfig(transport='direct') cannot serve {spec.model!r}: {e}") from None
        if route is not None:
            endpoint, api_base = route.endpoint, route.api_base
        else:
            api_base = spec.api_base.rstrip("/") if spec.api_base else None
            endpoint = api_base or spec.provider
        limit = self.limits.get(endpoint)
        if limit is None:
            limit = self.limits[endpoint] = AdaptiveLimit(self._cap, adaptive=cfg.adaptive)
        budget = None
        rpm, tpm = budget_for(cfg.rpm, spec.provider, api_base), budget_for(cfg.tpm, spec.provider, api_base)
        if rpm is not None or tpm is not None:
            by_base = api_base is not None and any(
                isinstance(x, dict) and budget_for(x, "", api_base) is not None for x in (cfg.rpm, cfg.tpm))
            bkey = api_base if by_base else spec.provider  # one budget per API base named, else per provider
            budget = self.budgets.get(bkey)
            if budget is None:
                budget = self.budgets[bkey] = RateBudget(rpm, tpm)
        t = self._targets[id(spec)] = Target(spec, "direct" if route is not None else "litellm", route, endpoint,
                                             limit, budget)
        return t

    async def call(self, req: Request, on_attempt: Callable[[Outcome], None] | None = None, *,
                   on_chunk: Callable[[str], None] | None = None) -> Outcome:
        """Make the call; return its last attempt's outcome (with when the first attempt started,
        how long the call waited for slots and for per-minute budgets, and which transport served
        it). ``on_attempt(outcome)`` is told of every failed attempt that will be tried again,
        before the wait that follows it. With ``on_chunk`` the answer is streamed and
        ``on_chunk(text so far)`` hears of it as it comes; the request, and so its key and
        replay, are the same as unstreamed."""
        if _litellm is None:  # import (seconds) off the event loop
            await asyncio.to_thread(get_litellm)
        target = self.target(req.spec)
        sems = self._slots(req.spec.model)
        queued = time.perf_counter()
        for s in sems:
            await s.acquire()
        waited = time.perf_counter() - queued
        try:
            out = await self._attempts(req, on_attempt, target, on_chunk)
        finally:
            for s in reversed(sems):
                s.release()
        out.queue_s += waited
        return out

    async def _attempts(self, req: Request, on_attempt, target: Target | None = None, on_chunk=None) -> Outcome:
        cfg = self.config
        target = target or self.target(req.spec)
        attempt, queue_s, rate_s, first = 0, 0.0, 0.0, 0
        while True:
            attempt += 1
            q, r, start, out, exc = await self._attempt(req, target, on_chunk)
            queue_s += q
            rate_s += r
            first = first or start
            if exc is None:
                out.attempt, out.start_ns, out.end_ns = attempt, start, time.time_ns()
            else:
                etype, retryable = classify(exc)
                out = Outcome(attempt, start, time.time_ns(), error_type=etype,
                              error=redact(str(exc))[:2000])  # redact before cutting: no key survives half-masked
            out.first_start_ns, out.queue_s, out.rate_s, out.transport = first, queue_s, rate_s, target.transport
            if exc is None or not (retryable and attempt <= cfg.retries):
                return out
            wait, reason = retry_after(exc), "retry-after"
            if wait is None:
                wait = min(cfg.max_backoff, cfg.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                reason = "backoff"
            out.wait_s, out.wait_reason = float(min(wait, cfg.max_retry_after)), reason
            if on_attempt is not None:
                on_attempt(out)
            await asyncio.sleep(out.wait_s)

    async def _attempt(self, req: Request, target: Target, on_chunk=None):
        """One attempt: a slot of the endpoint's limit and the per-minute budget first, then the
        request. Returns (slot wait, budget wait, start ns, outcome or None, exception or None)."""
        limit, budget = target.limit, target.budget
        q = await limit.acquire()
        r, ticket, signal, used = 0.0, None, None, 0
        try:
            if budget is not None:
                r, ticket = await budget.take(estimate_tokens(req.messages, req.max_tokens))
            start, sent = time.time_ns(), time.monotonic()
            try:
                out = await self._complete(req, on_chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome
                status = getattr(exc, "status_code", None)
                signal = "overload" if status in (429, 503) or type(exc).__name__ in OVERLOAD_ERRORS else "error"
                return q, r, start, None, exc
            signal, used = "ok", out.input_tokens + out.output_tokens
            return q, r, start, out, None
        finally:
            limit.release(sent if signal is not None else time.monotonic(), signal == "overload", signal == "ok")
            if ticket is not None:
                budget.settle(ticket, used)

    async def _complete(self, req: Request, on_chunk=None) -> Outcome:
        """The request of one attempt, through the direct transport or litellm, streamed when
        ``on_chunk`` is given and the model has not been found unable to stream."""
        target = self.target(req.spec)
        stream = on_chunk is not None and req.spec.model not in _NO_STREAM
        if target.route is not None:
            return await self._complete_direct(req, target.route, on_chunk if stream else None)
        if stream:
            return await self.complete_stream(req, on_chunk)
        return await self._complete_litellm(req)

    async def _complete_direct(self, req: Request, route: T.Route, on_chunk=None) -> Outcome:
        ttft = None
        if on_chunk is None:
            data = await T.post(route, req.messages, req.temperature, req.max_tokens, req.seed, self.config.timeout)
        else:
            data, ttft = await T.post_stream(route, req.messages, req.temperature, req.max_tokens, req.seed,
                                             self.config.timeout, on_chunk)
        text, inp, outp, rmodel, finish, rid, has_choice = T.parse(data)
        if not has_choice:
            raise MalformedResponse("the provider returned no choices")
        if text is None:
            raise MalformedResponse("the provider returned a choice without content")
        return Outcome(0, 0, 0, text=text, input_tokens=inp, output_tokens=outp, cost_usd=route.cost(rmodel, inp, outp),
                       response_model=rmodel, finish_reason=finish, response_id=rid, transport="direct", ttft_s=ttft)

    def _kwargs(self, req: Request) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            model=req.spec.model, messages=req.messages, temperature=req.temperature, max_tokens=req.max_tokens,
            timeout=self.config.timeout, drop_params=True, max_retries=0, **req.spec.litellm_kwargs())
        if req.seed is not None:
            kwargs["seed"] = req.seed
        return kwargs

    async def _complete_litellm(self, req: Request) -> Outcome:
        litellm = get_litellm()
        resp = await asyncio.wait_for(litellm.acompletion(**self._kwargs(req)), timeout=self.config.timeout + 5)
        return self._outcome(litellm, req, resp)

    async def complete_stream(self, req: Request, on_chunk: Callable[[str], None]) -> Outcome:
        """One attempt through litellm, streamed (``stream=True``): ``on_chunk(text so far)`` after
        each piece of text; the outcome is built from the chunks as from a whole response (usage,
        cost, finish reason), with ``ttft_s``, the seconds to the first text. The same attempt
        timeout holds for the whole stream. A provider that cannot stream is asked again without
        streaming (and not asked to stream again in this process)."""
        litellm = get_litellm()
        start = time.perf_counter()
        chunks: list = []
        parts: list[str] = []
        ttft = None

        async def read():
            nonlocal ttft
            try:
                stream = await litellm.acompletion(**self._kwargs(req), stream=True,
                                                   stream_options={"include_usage": True})
            except Exception as exc:  # noqa: BLE001
                if "not implemented" in str(exc).lower():  # e.g. a custom provider without astreaming
                    _NO_STREAM.add(req.spec.model)
                    return None
                raise
            finished = False
            async for chunk in stream:
                chunks.append(chunk)
                choices = getattr(chunk, "choices", None) or []
                piece = getattr(getattr(choices[0], "delta", None), "content", None) if choices else None
                finished = finished or bool(choices and getattr(choices[0], "finish_reason", None))
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(piece)
                    on_chunk(replace_surrogates("".join(parts)))
            if not finished and not parts:  # a server that ignored stream=True: its answer is not in chunks
                _NO_STREAM.add(req.spec.model)
                return None
            return stream

        if await asyncio.wait_for(read(), timeout=self.config.timeout + 5) is None:
            return await self._complete_litellm(req)
        if not chunks:
            raise MalformedResponse("the provider's stream held no chunk")
        resp = litellm.stream_chunk_builder(chunks, messages=req.messages)
        out = self._outcome(litellm, req, resp)
        out.ttft_s = ttft
        return out

    def _outcome(self, litellm, req: Request, resp) -> Outcome:
        choices = getattr(resp, "choices", None) or []
        if not choices:
            raise MalformedResponse("the provider returned no choices")
        text = getattr(choices[0].message, "content", None)
        if text is None:
            raise MalformedResponse("the provider returned a choice without content")
        text = replace_surrogates(text)  # a JSON "\ud800" escape: not storable, not sendable
        usage = getattr(resp, "usage", None)
        rmodel = getattr(resp, "model", None)
        cost = 0.0 if req.spec.is_local else None
        if cost is None:
            priced = (req.spec.model, rmodel)
            if _UNPRICED.get(priced) != len(litellm.model_cost):
                try:
                    cost = float(litellm.completion_cost(completion_response=resp))
                except Exception:  # noqa: BLE001 - unknown price: cost stays unknown
                    _UNPRICED[priced] = len(litellm.model_cost)
        return Outcome(0, 0, 0, text=text, input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                       output_tokens=int(getattr(usage, "completion_tokens", 0) or 0), cost_usd=cost,
                       response_model=rmodel, finish_reason=choices[0].finish_reason or "stop",
                       response_id=getattr(resp, "id", None))
