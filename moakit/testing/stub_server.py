"""A **stub** OpenAI-compatible chat-completions server on 127.0.0.1, for injecting latency
and faults. It is not a model: it answers with a deterministic text derived from the request.

Run it as a process (so its work does not share the client's GIL)::

    python -m moakit.testing.stub_server --port 0 --latency 0.1 --fault-rate 0.1

It prints ``STUB READY <port>`` on stdout once listening. :class:`StubServer` starts it and
stops it for tests and benchmarks. Faults (chosen at random, seeded, per request):
``429`` (with Retry-After), ``500``, ``503``, ``hang`` (sleeps past any sane timeout),
``reset`` (closes the connection with no answer), ``malformed`` (invalid JSON body with 200),
``empty`` (200 with an empty choice list). ``GET /stats`` returns counters as JSON. A request
with ``"stream": true`` gets its answer as server-sent events, a word per chunk.

``--max-in-flight N`` answers 429 (with Retry-After, at once) to every request that arrives
while N others are being answered: an endpoint whose capacity is N calls in flight, for the
adaptive-concurrency tests and benchmark. Its count is ``fault_overload`` in ``/stats``.

Besides these transient faults (drawn afresh for every attempt), ``--persistent-fault-rate``
makes a share of *requests* fail on every attempt (503), chosen by a hash of the request's
model and messages, so a retried request meets the same fault: that is how a call that
finally fails is produced. Model-name prefixes change the answer for tests:
``echo...`` replies with the last message's content verbatim (unicode and length round
trips), ``inspect...`` with the request's body, headers and path as JSON (what a client sent on
the wire), ``fault-<kind>`` meets that fault on every request (a kind of ``FAULTS``, a status
code such as ``fault-429`` with a JSON error, ``fault-plain500``, ``fault-html``: a 200 whose body
is an HTML page), ``scripted-...`` answers as a scripted proposer or aggregator whose behaviour is known
(:mod:`moakit.testing.scripted`), ``leaky...`` answers 500 with an error message that echoes the request's
Authorization header and all its headers (a provider leaking the key back, for redaction tests).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter

from . import scripted

FAULTS = ("429", "500", "503", "hang", "reset", "malformed", "empty")


def answer_text(body: dict) -> str:
    """Deterministic reply: model + a hash of the messages (+ sampling seed)."""
    msgs = body.get("messages") or []
    digest = hashlib.sha256(json.dumps([msgs, body.get("seed")], sort_keys=True).encode()).hexdigest()[:12]
    last = str(msgs[-1].get("content", ""))[:40] if msgs else ""
    return f"[{body.get('model')}] answer {digest} to: {last}"


def persistent_fault(body: dict, seed: int, rate: float) -> bool:
    """Whether this request fails on every attempt: a hash of (seed, model, messages) < rate."""
    if not rate:
        return False
    h = hashlib.sha256(json.dumps([seed, body.get("model"), body.get("messages")], sort_keys=True).encode())
    return int.from_bytes(h.digest()[:8], "big") / 2 ** 64 < rate


def make_app(latency: float = 0.0, fault_rate: float = 0.0, faults=FAULTS, seed: int = 0,
             retry_after: float = 0.2, hang: float = 3600.0, persistent_fault_rate: float = 0.0,
             max_in_flight: int = 0):
    from aiohttp import web

    rng = random.Random(seed)
    stats: Counter = Counter()
    in_flight = {"now": 0, "max": 0, "served_max": 0}

    async def chat(request: web.Request):
        stats["requests"] += 1
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            if max_in_flight and in_flight["now"] > max_in_flight:
                await request.read()
                stats["fault_overload"] += 1
                return web.json_response({"error": {"message": f"too many requests in flight (stub limit "
                                                               f"{max_in_flight})", "type": "rate_limit"}},
                                         status=429, headers={"Retry-After": str(retry_after)})
            in_flight["served_max"] = max(in_flight["served_max"], in_flight["now"])
            raw = await request.read()
            body = json.loads(raw or b"{}")
            fault = rng.choice(faults) if fault_rate and rng.random() < fault_rate else None
            if latency:
                await asyncio.sleep(latency)
            model = str(body.get("model", ""))
            if model.startswith("fault-"):  # this fault on every request, whatever the fault rate
                kind = model[len("fault-"):]
                if kind.isdigit():
                    stats[f"fault_status_{kind}"] += 1
                    return web.json_response({"error": {"message": f"stub status {kind}", "type": "stub"}},
                                             status=int(kind), headers={"Retry-After": str(retry_after)}
                                             if kind in ("429", "503") else None)
                if kind == "plain500":
                    return web.Response(text="stub plain-text failure", status=500)
                if kind == "html":
                    return web.Response(text="<html>bad gateway page</html>", content_type="text/html")
                fault = kind
            if model.startswith("leaky"):
                stats["fault_leaky"] += 1
                auth = request.headers.get("Authorization", "")
                return web.json_response({"error": {"message": f"stub leaky fault: request had Authorization: {auth} "
                                                               f"(key {auth.removeprefix('Bearer ')}), headers "
                                                               f"{json.dumps(dict(request.headers))}",
                                                    "type": "server_error"}}, status=500)
            if fault is None and persistent_fault(body, seed, persistent_fault_rate):
                stats["fault_persistent"] += 1
                return web.json_response({"error": {"message": "stub persistent fault 503", "type": "server_error"}},
                                         status=503)
            if fault:
                stats[f"fault_{fault}"] += 1
            if fault == "429":
                return web.json_response({"error": {"message": "rate limited (stub)", "type": "rate_limit"}},
                                         status=429, headers={"Retry-After": str(retry_after)})
            if fault in ("500", "503"):
                return web.json_response({"error": {"message": f"stub fault {fault}", "type": "server_error"}},
                                         status=int(fault))
            if fault == "hang":
                await asyncio.sleep(hang)
            if fault == "reset":
                request.transport.abort() if request.transport else None
                raise ConnectionResetError("stub reset")
            if fault == "malformed":
                return web.Response(text='{"id": "x", "choices": [ {"message": ', content_type="application/json")
            if model.startswith("echo"):
                msgs = body.get("messages") or [{}]
                text = str(msgs[-1].get("content", ""))
            elif model.startswith("inspect"):  # what arrived: the body and the headers, as JSON
                text = json.dumps({"body": body, "headers": dict(request.headers), "path": request.path})
            elif model.startswith(scripted.PREFIX):
                try:
                    text = scripted.reply(body)
                except ValueError as e:  # a misspelt behaviour: the caller's error, not retried
                    return web.json_response({"error": {"message": str(e), "type": "invalid_request_error"}},
                                             status=400)
            else:
                text = answer_text(body)
            n_in = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
            payload = {
                "id": f"stub-{stats['requests']}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "stub"),
                "choices": [] if fault == "empty" else [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": len(text.split()),
                          "total_tokens": n_in + len(text.split())},
            }
            stats["ok" if fault != "empty" else "fault_empty_sent"] += 1
            if body.get("stream") and fault != "empty":
                return await stream(request, payload, body)
            return web.json_response(payload)
        finally:
            in_flight["now"] -= 1

    async def stream(request, payload: dict, body: dict):
        """The answer as server-sent events, a word per chunk (``stream: true``), with the usage
        in a last chunk when ``stream_options.include_usage`` asks for it."""
        stats["streamed"] += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        text = payload["choices"][0]["message"]["content"]
        head = {k: payload[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

        async def send(choices, **extra):
            await resp.write(f"data: {json.dumps(head | {'choices': choices} | extra)}\n\n".encode())

        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        words = text.split(" ")
        for i, w in enumerate(words):
            await send([{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}])
            if latency:
                await asyncio.sleep(latency / max(1, len(words)))
        await send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=payload["usage"])
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def get_stats(request):
        return web.json_response({**stats, "max_in_flight": in_flight["max"],
                                  "max_in_flight_served": in_flight["served_max"]})

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", get_stats)
    return app


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-after", type=float, default=0.2)
    ap.add_argument("--persistent-fault-rate", type=float, default=0.0)
    ap.add_argument("--max-in-flight", type=int, default=0, help="answer 429 above this many requests in flight")
    a = ap.parse_args(argv)
    from aiohttp import web

    # the "reset" fault raises in the handler on purpose: keep aiohttp from logging a traceback for it
    logging.getLogger("aiohttp.server").addFilter(
        lambda rec: not (rec.exc_info and isinstance(rec.exc_info[1], ConnectionResetError)))

    async def serve():
        app = make_app(a.latency, a.fault_rate, tuple(a.faults.split(",")), a.seed, a.retry_after,
                       persistent_fault_rate=a.persistent_fault_rate, max_in_flight=a.max_in_flight)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", a.port))  # port 0: any free port, read back below
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        port = sock.getsockname()[1]
        print(f"STUB READY {port}", flush=True)
        while True:
            await asyncio.sleep(3600)

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


class StubServer:
    """Start the stub in a subprocess: ``with StubServer(latency=0.1) as s: s.api_base``."""

    def __init__(self, **options):
        self.options = options
        self.proc = None
        self.port = None

    def __enter__(self):
        args = [sys.executable, "-m", "moakit.testing.stub_server"]
        for k, v in self.options.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ})
        line = self.proc.stdout.readline()
        if not line.startswith("STUB READY"):
            self.proc.kill()
            raise RuntimeError(f"stub server did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            return json.loads(r.read())

    def model(self, name: str = "stub") -> dict:
        """A ``models=`` entry sending an agent to this stub through litellm's OpenAI path."""
        return {"model": f"openai/{name}", "api_base": self.api_base, "api_key": "sk-stub-not-a-real-key-000000"}

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    main()
