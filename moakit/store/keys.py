"""Request keys: a canonical hash of what a call asks for, plus its occurrence number.

Six identical requests in one run (six samples of one model) are six calls: occurrence 0..5.
The key covers the agent, the model string, the messages and the sampling parameters; it
never covers credentials or endpoints."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Sequence


_canonical = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode
_plain = json.JSONEncoder(ensure_ascii=False).encode


def canonical(obj: Any) -> str:
    return _canonical(obj)  # = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def messages_json(messages: Sequence[dict]) -> str:
    """The canonical JSON of a request's messages, as :func:`request_hash` hashes it."""
    return canonical([{"role": m.get("role"), "content": m.get("content")} for m in messages])


# JSON of a scalar: agents, models and settings repeat on every call. typed: 1, 1.0 and True
# encode differently
_scalar = functools.lru_cache(maxsize=4096, typed=True)(_plain)


def request_hash(*, agent: str, model: str, messages: Sequence[dict], temperature: float | None,
                 max_tokens: int | None, seed: int | None, messages_canonical: str | None = None) -> str:
    """sha256 of ``canonical({"agent", "model", "messages", "temperature", "max_tokens", "seed"})``.

    The canonical text is assembled from its parts (keys in sorted order, the scalars encoded as
    ``canonical`` encodes them), so a layer's requests, which share their messages, can pass
    ``messages_canonical`` (:func:`messages_json` of ``messages``) computed once; the text, and so the
    key, is the same either way (tests/test_keys_fast.py checks it against the plain definition)."""
    mj = messages_json(messages) if messages_canonical is None else messages_canonical
    temp = None if temperature is None else float(temperature) + 0.0  # -0.0 is 0.0
    text = (f'{{"agent":{_scalar(agent)},"max_tokens":{_scalar(max_tokens)},"messages":{mj},'
            f'"model":{_scalar(model)},"seed":{_scalar(seed)},"temperature":{_scalar(temp)}}}')
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def request_key(base_hash: str, occurrence: int) -> str:
    return f"{base_hash}:{occurrence}"


def derived_seed(run_seed: int | None, key: str) -> int | None:
    """The seed sent to the model for one call: distinct per sample, fixed per run seed."""
    if run_seed is None:
        return None
    return int(hashlib.sha256(f"{run_seed}|{key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
