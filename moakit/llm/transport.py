"""The direct transport: chat completions sent to an OpenAI-compatible endpoint over one pooled
aiohttp session per event loop, plain JSON in and out, with no litellm (and no pydantic object)
on the way of each call.

What litellm would send is worked out through litellm's public API once per model and kept
(:func:`resolve`): the provider, API base and key (``litellm.get_llm_provider``), the mapping of
temperature / max_tokens / seed and the spec's other sampling arguments to the provider's
parameters (``litellm.utils.get_optional_params``, with ``drop_params`` as moakit's litellm path
sends it), the body (the provider config's ``transform_request``), the URL
(``get_complete_url``), the headers (``validate_environment`` plus ``extra_headers``) and the
price (``litellm.get_model_info``). A request this way has the body litellm would send for it
(tests/test_transport.py compares them on the wire).

Errors are turned into the exceptions litellm raises for the same answer: the provider config's
``get_error_class`` and ``litellm.exception_type``, as litellm's own handlers do, so that the
error types, messages, status codes and Retry-After headers -- and therefore retries, backoff
and the spans -- are the same on both paths.

Which models go this way (``ClientConfig(transport="auto")``, the default): providers whose
litellm route is OpenAI's chat completions API and whose error mapping was checked against
litellm's here (:data:`DIRECT_PROVIDERS`), with an API base and (where the route needs one) a
key, and no litellm argument the direct path does not carry. Everything else goes through
litellm as before.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..models import ModelSpec
from ..store.redact import replace_surrogates

# provider -> how litellm serves it, which decides the shape of its errors: "sdk" (through the
# OpenAI SDK: the error's message is the body's error.message) or "http" (litellm's own HTTP
# handler: the raw body). Checked one by one against litellm 1.110 with the same faults
# (tests/test_transport.py); providers with quirks of their own (groq, mistral, openrouter,
# fireworks_ai) stay on litellm.
DIRECT_PROVIDERS: dict[str, str] = {
    "openai": "sdk", "lm_studio": "sdk", "llamafile": "sdk", "deepinfra": "sdk", "perplexity": "sdk",
    "hosted_vllm": "http", "together_ai": "http", "deepseek": "http", "xai": "http",
}
# arguments of a model spec the direct path carries: sampling parameters (mapped through litellm
# like temperature), extra_headers and extra_body; any other (timeout, api_version, ...) keeps the
# model on litellm
SAMPLING_ARGS = frozenset({"top_p", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "user",
                           "response_format", "logprobs", "top_logprobs"})
PASSED_ARGS = SAMPLING_ARGS | {"extra_headers", "extra_body"}
_STANDARD_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_SENTINEL_SEED = 1_234_567_891
_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]


class NotDirect(Exception):
    """A model the direct transport cannot serve as litellm would (the reason is the message)."""


@dataclass
class Route:
    """How one model spec is reached directly: fixed for the process once resolved."""

    spec: ModelSpec
    provider: str
    flavour: str  # "sdk" or "http" (DIRECT_PROVIDERS)
    model: str  # the model name sent
    url: str
    api_base: str
    headers: dict[str, str]
    config: Any  # litellm's provider config (transform_request, get_error_class)
    extras: dict[str, Any]  # the spec's sampling arguments
    extra_body: dict[str, Any]
    passthrough: bool  # litellm sends the messages as they are (else transform_request per call)
    litellm: Any
    templates: dict = field(default_factory=dict)  # (temperature, max_tokens, seeded) -> (head, tail, seed key)
    prices: dict = field(default_factory=dict)  # response model -> (input, output price per token) | None

    @property
    def endpoint(self) -> str:
        return self.api_base

    # ---- the request -------------------------------------------------------------------
    def template(self, temperature, max_tokens, seeded: bool) -> tuple[dict, str | None]:
        """(body without messages, the key the seed goes under) for these settings: litellm's
        parameter mapping asked once per combination (it may depend on the values, e.g. a
        temperature a model does not accept is dropped)."""
        key = (temperature, max_tokens, seeded)  # (True == 1: a seeded and an unseeded call never share one)
        hit = self.templates.get(key)
        if hit is None:
            params = self.litellm_params(temperature, max_tokens, _SENTINEL_SEED if seeded else None)
            seed_key = next((k for k, v in params.items() if v == _SENTINEL_SEED and k != "max_tokens"), None) \
                if seeded else None
            body = self.config.transform_request(self.model, [dict(m) for m in _PROBE], params, {}, {})
            hit = self.templates[key] = (self.finish_body(body), seed_key)  # (the seed's place kept: same order)
        return hit

    def litellm_params(self, temperature, max_tokens, seed) -> dict:
        get_optional_params = self.litellm.utils.get_optional_params
        kw = dict(self.extras)
        if seed is not None:
            kw["seed"] = seed
        return get_optional_params(model=self.model, custom_llm_provider=self.provider, temperature=temperature,
                                   max_tokens=max_tokens, drop_params=True, **kw)

    def finish_body(self, body: dict) -> dict:
        """What the OpenAI SDK / litellm's HTTP handler make of ``transform_request``'s dict on
        the wire: no ``stream: false``, ``extra_body`` merged into the body, ``max_retries`` gone."""
        body = dict(body)
        if body.get("stream") is False:
            body.pop("stream")
        body.pop("max_retries", None)
        extra = body.pop("extra_body", None) or {}
        body.update(extra)
        body.update(self.extra_body)
        return body

    def body(self, messages: list[dict], temperature, max_tokens, seed) -> dict:
        tpl, seed_key = self.template(temperature, max_tokens, seed is not None)
        if self.passthrough:
            body = dict(tpl)
            body["messages"] = messages
        else:  # e.g. o-series models: system turns become user turns; litellm's transform per call
            params = self.litellm_params(temperature, max_tokens, seed)
            body = self.finish_body(self.config.transform_request(self.model, [dict(m) for m in messages],
                                                                  params, {}, {}))
            return body
        if seed_key is not None:
            body[seed_key] = seed
        return body

    # ---- the answer ----------------------------------------------------------------------
    def cost(self, response_model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        """The price litellm's ``completion_cost`` gives such an answer (the response's model's
        price, else the request's), None when litellm has no price for either."""
        version = len(self.litellm.model_cost)
        hit = self.prices.get(response_model)
        if hit is None or hit[0] != version:
            hit = self.prices[response_model] = (version, self.price(response_model))
        unit = hit[1]
        if unit is None:
            return None
        if unit == "tiered":
            for cand in dict.fromkeys(c for c in (response_model, self.model) if c):
                try:
                    p, c = self.litellm.cost_per_token(model=cand, custom_llm_provider=self.provider,
                                                       prompt_tokens=input_tokens, completion_tokens=output_tokens)
                    return float(p + c)
                except Exception:  # noqa: BLE001 - not this name
                    continue
            return None
        return float(input_tokens * unit[0] + output_tokens * unit[1])

    def price(self, response_model: str | None):
        """(input, output) USD per token, "tiered" when the price depends on the size of the
        request (then litellm prices each call), None when unknown."""
        for cand in dict.fromkeys(c for c in (response_model, self.model) if c):
            try:
                info = self.litellm.get_model_info(model=cand, custom_llm_provider=self.provider)
            except Exception:  # noqa: BLE001 - litellm has no price for this name
                continue
            ic, oc = info.get("input_cost_per_token"), info.get("output_cost_per_token")
            if ic is None and oc is None:
                continue
            if any(v for k, v in info.items() if "above" in k and "cost" in k):
                return "tiered"
            return (float(ic or 0.0), float(oc or 0.0))
        return None

    # ---- errors, as litellm raises them ------------------------------------------------
    def error(self, status: int, message: str, headers=None) -> Exception:
        """The exception litellm raises for this answer (its provider config's error class, mapped
        by ``litellm.exception_type``)."""
        err = self.config.get_error_class(error_message=message, status_code=status, headers=dict(headers or {}))
        try:
            self.litellm.exception_type(model=self.spec.model, original_exception=err,
                                        custom_llm_provider=self.provider)
        except Exception as mapped:  # noqa: BLE001 - exception_type raises what it maps to
            return mapped
        return err

    def status_error(self, status: int, raw: bytes, headers) -> Exception:
        text = raw.decode("utf-8", "replace")
        if self.flavour == "sdk":  # the OpenAI SDK keeps the body's error message
            message = f"Error code: {status}"
            try:
                data = json.loads(text)
                err = data.get("error", data) if isinstance(data, dict) else None
                if isinstance(err, dict) and isinstance(err.get("message"), str):
                    message = err["message"]
                elif data is not None:
                    message = f"Error code: {status} - {data}"
            except ValueError:
                pass
            return self.error(status, message, headers)
        return self.error(status, text, headers)

    def malformed(self, raw: bytes, exc: Exception, content_type: str = "application/json") -> Exception:
        """A 200 whose body is not JSON."""
        if self.flavour == "sdk":
            if not content_type.split(";")[0].strip().endswith("json"):  # the SDK hands such a body back as text
                return self.error(500, f"Empty or invalid response from LLM endpoint. Received: "
                                       f"{raw.decode('utf-8', 'replace')!r}. Check the reverse proxy or model server "
                                       "configuration.")
            return self.error(500, str(exc))
        return self.error(200, f"Unable to get json response - {exc}, Original Response: "
                               f"{raw.decode('utf-8', 'replace')}")

    def connection_error(self, exc: BaseException) -> Exception:
        return self.error(500, "Connection error." if self.flavour == "sdk" else (str(exc) or type(exc).__name__))

    def timeout_error(self, timeout: float, took: float) -> Exception:
        return self.error(408, f"litellm.Timeout: Read timed out. Timeout passed={timeout}, time taken={took:.3f} "
                               "seconds")


def resolve(spec: ModelSpec, litellm) -> Route:
    """The direct route of ``spec``, or :class:`NotDirect` saying why there is none."""
    extra = dict(spec.extra)
    other = sorted(set(extra) - PASSED_ARGS)
    if other:
        raise NotDirect(f"it passes litellm argument(s) {', '.join(other)}, which only litellm carries")
    headers_in = extra.pop("extra_headers", None) or {}
    extra_body = extra.pop("extra_body", None) or {}
    if not isinstance(headers_in, dict) or not isinstance(extra_body, dict):
        raise NotDirect("extra_headers and extra_body must be dicts")
    try:
        model, provider, dyn_key, api_base = litellm.get_llm_provider(spec.model, api_base=spec.api_base,
                                                                      api_key=spec.api_key)
    except Exception as e:  # noqa: BLE001
        raise NotDirect(f"litellm does not resolve it ({type(e).__name__}: {e})") from None
    flavour = DIRECT_PROVIDERS.get(provider)
    if flavour is None:
        raise NotDirect(f"its provider {provider!r} is not served by the direct transport (it serves "
                        f"{', '.join(sorted(DIRECT_PROVIDERS))})")
    key = spec.api_key or dyn_key
    if provider == "openai":  # litellm's openai route: these before the SDK's own defaults
        key = key or litellm.api_key or getattr(litellm, "openai_key", None) or os.environ.get("OPENAI_API_KEY")
        api_base = api_base or litellm.api_base or os.environ.get("OPENAI_BASE_URL") or \
            os.environ.get("OPENAI_API_BASE") or "https://api.openai.com/v1"
    if not api_base:
        raise NotDirect(f"no API base is known for provider {provider!r} (give api_base)")
    if key is None and flavour == "sdk":
        raise NotDirect("no API key is set for it (litellm's route would fail on every call)")
    config = litellm.utils.ProviderConfigManager.get_provider_chat_config(model, litellm.LlmProviders(provider))
    if config is None:
        raise NotDirect(f"litellm has no chat config for provider {provider!r}")
    params = litellm.utils.get_optional_params(model=model, custom_llm_provider=provider, temperature=0.5,
                                               max_tokens=16, drop_params=True, **extra)
    probe = [dict(m) for m in _PROBE]
    body = config.transform_request(model, probe, dict(params), {}, {})
    passthrough = body.get("messages") == _PROBE
    headers = config.validate_environment(dict(headers_in), model, [], dict(params), {}, api_key=key,
                                          api_base=api_base)
    if provider == "openai":
        org = getattr(litellm, "organization", None) or os.environ.get("OPENAI_ORGANIZATION")
        if org:
            headers.setdefault("OpenAI-Organization", org)
    url = config.get_complete_url(api_base, key, model, dict(params), {})
    return Route(spec, provider, flavour, model, url, api_base.rstrip("/"),
                 {str(k): str(v) for k, v in headers.items()}, config, extra, extra_body, passthrough, litellm)


# ---- one pooled session per event loop ------------------------------------------------------
_dumps = json.JSONEncoder(ensure_ascii=False).encode  # = json.dumps(obj, ensure_ascii=False), no encoder per call
_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple]" = weakref.WeakKeyDictionary()
_timeouts: dict[float, Any] = {}


async def _keeper(session):
    """Holds the loop's session and closes it when the loop shuts its async generators down
    (``asyncio.run`` does, before closing the loop): no session is left unclosed."""
    try:
        yield
    finally:
        await session.close()


def open_session():
    """This event loop's aiohttp session if it has an open one, else None (no await on the way
    of each call)."""
    hit = _sessions.get(asyncio.get_running_loop())
    return hit[0] if hit is not None and not hit[0].closed else None


async def session():
    """This event loop's aiohttp session (made on first use; closed with the loop)."""
    loop = asyncio.get_running_loop()
    hit = _sessions.get(loop)
    if hit is not None and not hit[0].closed:
        return hit[0]
    import aiohttp

    s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
                              skip_auto_headers=("User-Agent",), raise_for_status=False)
    keeper = _keeper(s)
    await keeper.asend(None)  # started: asyncio tracks it and finalizes it at shutdown_asyncgens
    _sessions[loop] = (s, keeper)
    return s


def close_sessions() -> None:
    """Forget the sessions of loops that are gone (tests; a forked child)."""
    _sessions.clear()


@atexit.register
def _close_at_exit() -> None:
    """Close the sessions of loops still running at exit (moakit's background loop), so that no
    'Unclosed client session' is reported as the interpreter goes down."""
    for loop, (s, _) in list(_sessions.items()):
        if not s.closed and loop.is_running() and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(s.close(), loop).result(2)
            except Exception:  # noqa: BLE001 - the loop is going down too
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=close_sessions)


def _timeout(seconds: float):
    t = _timeouts.get(seconds)
    if t is None:
        import aiohttp

        t = _timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
    return t


def finish_reason(value) -> str:
    """As litellm maps a provider's finish reason (OpenAI's own pass as they are)."""
    if value is None or value in _STANDARD_FINISH:
        return value or "stop"
    from litellm.litellm_core_utils.core_helpers import map_finish_reason

    return map_finish_reason(value)


async def post(route: Route, messages: list[dict], temperature, max_tokens, seed, timeout: float) -> dict:
    """Send one chat completion; return the answer's fields (text, tokens, model, finish reason,
    id), or raise the exception litellm would raise for what came back."""
    import aiohttp

    payload = _dumps(route.body(messages, temperature, max_tokens, seed)).encode("utf-8")
    s = open_session() or await session()
    t0 = time.perf_counter()
    try:
        async with s.post(route.url, data=payload, headers=route.headers, timeout=_timeout(timeout)) as resp:
            raw = await resp.read()
            status, headers, ctype = resp.status, resp.headers, resp.headers.get("Content-Type", "")
    except asyncio.TimeoutError:
        raise route.timeout_error(timeout, time.perf_counter() - t0) from None
    except (aiohttp.ClientError, ConnectionError, OSError) as e:
        raise route.connection_error(e) from None
    return whole_answer(route, status, raw, headers, ctype)


def whole_answer(route: Route, status: int, raw: bytes, headers, ctype: str) -> dict:
    """The JSON object of a whole (unstreamed) answer, or the exception litellm would raise for it."""
    if status >= 400:
        raise route.status_error(status, raw, headers)
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise route.malformed(raw, e, ctype) from None
    if not isinstance(data, dict):
        raise route.malformed(raw, ValueError("the body is not a JSON object"), ctype)
    return data


async def post_stream(route: Route, messages: list[dict], temperature, max_tokens, seed, timeout: float,
                      on_chunk) -> tuple[dict, float | None]:
    """Send one chat completion with ``stream: true`` and read its server-sent events:
    ``on_chunk(text so far)`` after each piece of text. Returns the answer as a whole response's
    fields (the shape :func:`parse` reads: text, usage from the last chunk, model, id, finish
    reason) and the seconds from sending to the first text (None if no text came). A server that
    answers with one JSON body instead is read as such. Errors as :func:`post`; ``timeout`` holds
    for the whole stream."""
    import aiohttp

    body = route.body(messages, temperature, max_tokens, seed)
    body = dict(body, stream=True, stream_options={"include_usage": True})
    payload = _dumps(body).encode("utf-8")
    s = open_session() or await session()
    t0 = time.perf_counter()
    parts: list[str] = []
    ttft = None
    out: dict[str, Any] = {"choices": []}
    finish = None
    try:
        async with s.post(route.url, data=payload, headers=route.headers, timeout=_timeout(timeout)) as resp:
            status, headers, ctype = resp.status, resp.headers, resp.headers.get("Content-Type", "")
            if status >= 400 or "text/event-stream" not in ctype:
                raw = await resp.read()
            else:
                raw = None
                async for line in resp.content:
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue  # comments, event names, blank separators
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as e:
                        raise route.malformed(data, e, ctype) from None
                    for k in ("id", "model"):
                        if chunk.get(k) and k not in out:
                            out[k] = chunk[k]
                    if chunk.get("usage"):
                        out["usage"] = chunk["usage"]
                    for c in chunk.get("choices") or []:
                        if not isinstance(c, dict) or c.get("index", 0) != 0:
                            continue
                        piece = (c.get("delta") or {}).get("content")
                        finish = c.get("finish_reason") or finish
                        if piece:
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            parts.append(piece)
                            on_chunk(replace_surrogates("".join(parts)))
    except asyncio.TimeoutError:
        raise route.timeout_error(timeout, time.perf_counter() - t0) from None
    except (aiohttp.ClientError, ConnectionError, OSError) as e:
        raise route.connection_error(e) from None
    if raw is not None:  # an error, or a server that ignored stream=True
        return whole_answer(route, status, raw, headers, ctype), None
    if parts or finish is not None:
        out["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                           "finish_reason": finish}]
    return out, ttft


def parse(data: dict) -> tuple[str | None, int, int, str | None, str | None, str | None, bool]:
    """(text, input tokens, output tokens, response model, finish reason, response id, has a choice)."""
    choices = data.get("choices") or []
    usage = data.get("usage") or {}
    if not choices:
        return None, 0, 0, data.get("model"), None, data.get("id"), False
    c0 = choices[0] if isinstance(choices[0], dict) else {}
    msg = c0.get("message") or {}
    text = msg.get("content")
    if isinstance(text, str):
        text = replace_surrogates(text)
    return (text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), data.get("model"),
            finish_reason(c0.get("finish_reason")), data.get("id"), True)
