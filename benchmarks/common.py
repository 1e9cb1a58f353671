"""Shared pieces of the benchmark cases: sizes per mode, alternating timers, the figures table,
the peer (mixture-llm) pipelines and clients, and the zero-latency in-process model."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

def _data_dir() -> Path:
    """The AlpacaEval folder: $MOAKIT_ALPACA_DIR, else shared/data/alpaca_eval beside the checkout."""
    if os.environ.get("MOAKIT_ALPACA_DIR"):
        return Path(os.environ["MOAKIT_ALPACA_DIR"])
    for root in (Path(__file__).resolve().parents[2], Path("/work")):
        if (root / "shared" / "data" / "alpaca_eval").exists():
            return root / "shared" / "data" / "alpaca_eval"
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"


DATA_DIR = _data_dir()
STUB_KEY = "sk-stub-not-a-real-key-000000"


# ---- figures -------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table. ``met`` is None when the line has no goal."""

    case: str
    measure: str
    moakit: str
    peer: str = "-"
    ratio: str = "-"
    goal: str = "-"
    met: bool | None = None


@dataclass
class CaseResult:
    case: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pair_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i] for each alternating pair."""
    return [x / y for x, y in zip(a, b) if y > 0]


def spread(xs: Sequence[float]) -> str:
    """min..max, to show the noise next to a median."""
    return f"{min(xs):.3g}..{max(xs):.3g}" if xs else "-"


async def alternate_async(contenders: Sequence[Callable[[int], Awaitable[Any]]], pairs: int,
                          warmup: int = 1, cpu: list[list[float]] | None = None) -> list[list[float]]:
    """Run the contenders alternately (A B A B ...), ``warmup`` untimed rounds first; returns
    each one's wall times in seconds, pair by pair (and fills ``cpu`` with this process's CPU
    seconds per round, which other processes on the machine do not inflate)."""
    for i in range(warmup):
        for c in contenders:
            await c(-1 - i)
    times: list[list[float]] = [[] for _ in contenders]
    if cpu is not None:
        cpu[:] = [[] for _ in contenders]
    for i in range(pairs):
        for k, c in enumerate(contenders):
            c0 = time.process_time()
            t0 = time.perf_counter()
            await c(i)
            times[k].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu[k].append(time.process_time() - c0)
    return times


def alternate(contenders: Sequence[Callable[[int], Any]], pairs: int, warmup: int = 1) -> list[list[float]]:
    """Synchronous :func:`alternate_async`."""
    for i in range(warmup):
        for c in contenders:
            c(-1 - i)
    times: list[list[float]] = [[] for _ in contenders]
    for i in range(pairs):
        for k, c in enumerate(contenders):
            t0 = time.perf_counter()
            c(i)
            times[k].append(time.perf_counter() - t0)
    return times


# ---- prompts and texts -----------------------------------------------------------------------
def alpaca_prompts(n: int) -> tuple[list[str], str]:
    """``n`` AlpacaEval instructions (from the shared data folder when present), else synthetic
    ones of similar length; returns (prompts, where they came from)."""
    path = DATA_DIR / "gpt4_1106_preview" / "model_outputs.json"
    if path.exists():
        rows = json.loads(path.read_text())
        prompts = [r["instruction"] for r in rows]
        out = [prompts[i % len(prompts)] + ("" if i < len(prompts) else f" (variant {i // len(prompts)})")
               for i in range(n)]
        return out, f"AlpacaEval 2.0 instructions ({DATA_DIR})"
    return [synthetic_prompt(i) for i in range(n)], "synthetic prompts (AlpacaEval folder absent)"


def alpaca_outputs() -> list[str]:
    """Real answer texts (every generator in the shared folder), or synthetic ones."""
    texts: list[str] = []
    if DATA_DIR.exists():
        for p in sorted(DATA_DIR.glob("*/model_outputs.json")):
            texts += [r["output"] for r in json.loads(p.read_text()) if r.get("output")]
    if not texts:
        texts = [synthetic_answer(i, 1500) for i in range(2000)]
    return texts


_WORDS = ("the model answer aggregate layer response quality proposer synthesis evaluate careful detail "
          "example because however therefore summary first second finally consider result approach").split()


def synthetic_prompt(i: int) -> str:
    return f"Question {i}: explain " + " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(18)) + "?"


def synthetic_answer(i: int, chars: int) -> str:
    words, k = [], i
    while sum(len(w) + 1 for w in words) < chars:
        words.append(_WORDS[(k * 2654435761) % len(_WORDS)])
        k += 1
    return " ".join(words)[:chars]


ANSWER = synthetic_answer(0, 1500)


def fake_answer(model: str, chars: int = 1500) -> str:
    """The zero-latency model's reply: ~1,500 characters by default (an AlpacaEval-sized answer)."""
    return f"[{model}] " + (ANSWER if chars == 1500 else synthetic_answer(0, chars))


def instant_client_for(chars: int):
    """mixture-llm's client for the zero-latency model (answers of ``chars`` characters)."""
    answers: dict[str, str] = {}

    async def client(*, model, messages, temp, max_tokens):
        if model not in answers:
            answers[model] = fake_answer(model, chars)
        return answers[model], 10, 300
    return client


# ---- the peer: mixture-llm -----------------------------------------------------------------------
def mixture_pipeline(pipeline) -> list:
    """The same pipeline as mixture-llm steps (Propose / Synthesize / Aggregate)."""
    import mixture_llm as ML

    out = []
    for s in pipeline:
        if s.kind == "Propose":
            out.append(ML.Propose(list(s.agents), temp=s.temp, max_tokens=s.max_tokens))
        elif s.kind == "Synthesize":
            out.append(ML.Synthesize(list(s.agents), temp=s.temp, max_tokens=s.max_tokens))
        elif s.kind == "Aggregate":
            out.append(ML.Aggregate(s.agent, temp=s.temp, max_tokens=s.max_tokens))
        else:  # pragma: no cover - the benchmarks use these three only
            raise ValueError(f"no mixture-llm mirror for {s.kind}")
    return out


def litellm_client(api_base: str, semaphore: asyncio.Semaphore | None = None):
    """mixture-llm's client: ``(model, messages, temp, max_tokens) -> (text, in, out)`` through
    litellm to the stub server, as moakit calls it (same provider path, same HTTP client)."""
    from moakit.llm import get_litellm

    litellm = get_litellm()

    async def client(*, model, messages, temp, max_tokens):
        async def call():
            return await litellm.acompletion(model=f"openai/{model}", messages=messages, temperature=temp,
                                             max_tokens=max_tokens, api_base=api_base, api_key=STUB_KEY,
                                             drop_params=True, max_retries=0)
        if semaphore is None:
            resp = await call()
        else:
            async with semaphore:
                resp = await call()
        u = resp.usage
        return resp.choices[0].message.content, u.prompt_tokens, u.completion_tokens

    return client


async def instant_client(*, model, messages, temp, max_tokens):
    """mixture-llm's client for the zero-latency model: returns at once."""
    return fake_answer(model), 10, 300


@contextlib.contextmanager
def instant_moakit(chars: int = 1500, stub_answers: bool = False):
    """moakit with a zero-latency in-process model: ``Caller._complete`` (the one litellm call)
    is replaced, so moakit's engine, recorder, redaction and store writes all run; restored on
    exit. With ``stub_answers`` it answers what the stub server would (``stub_server.answer_text``)."""
    import itertools

    from moakit.llm import caller as C
    from moakit.testing.stub_server import answer_text

    C.get_litellm()  # imported once here, never inside a timed run
    original = C.Caller._complete
    answers: dict[str, str] = {}
    unique = itertools.count()

    async def _complete(self, req, on_chunk=None):
        model = req.spec.model
        if stub_answers:
            text = answer_text({"model": model.split("/", 1)[-1], "messages": req.messages, "seed": req.seed})
            return C.Outcome(0, 0, 0, text=text, input_tokens=10, output_tokens=len(text.split()), cost_usd=0.0,
                             response_model=model, finish_reason="stop", response_id="instant")
        if model not in answers:
            answers[model] = fake_answer(model.split("/", 1)[-1], chars)
        # unique per request (as real answers are)
        return C.Outcome(0, 0, 0, text=f"{next(unique):08d} {answers[model]}", input_tokens=10, output_tokens=300,
                         cost_usd=0.0, response_model=model, finish_reason="stop", response_id="instant")

    C.Caller._complete = _complete
    try:
        yield
    finally:
        C.Caller._complete = original


def stub_models(stub, agents: Sequence[str]) -> dict[str, dict]:
    """``models=`` sending each agent to the stub under its own name (``openai/<agent>``)."""
    return {a: stub.model(a) for a in dict.fromkeys(agents)}


def digest(texts: Sequence[str | None]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update((t or "\x00").encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


def aiohttp_client(api_base: str, semaphore: asyncio.Semaphore | None = None):
    """The ceiling a Python client reaches here: one pooled aiohttp session, the request as plain
    JSON, the answer's JSON read as a dict; nothing else. Same signature as :func:`litellm_client`.
    Call ``client.close()`` (a coroutine) when done."""
    import aiohttp

    state: dict = {}
    url = api_base.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {STUB_KEY}", "Content-Type": "application/json"}

    async def client(*, model, messages, temp, max_tokens):
        s = state.get("session")
        if s is None:
            s = state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body = json.dumps({"model": model, "messages": messages, "temperature": temp, "max_tokens": max_tokens})

        async def call():
            async with s.post(url, data=body, headers=headers) as r:
                return json.loads(await r.read())
        if semaphore is None:
            data = await call()
        else:
            async with semaphore:
                data = await call()
        u = data["usage"]
        return data["choices"][0]["message"]["content"], u["prompt_tokens"], u["completion_tokens"]

    async def close():
        if state.get("session") is not None:
            await state.pop("session").close()

    client.close = close
    return client
