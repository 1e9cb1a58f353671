"""Request keys: a canonical hash of what a call asks for, plus its occurrence number.

Six identical requests in one run (six samples of one model) are six calls: occurrence 0..5.
The key covers the agent, the model string, the messages and the sampling parameters; it
never covers credentials or endpoints."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_hash(*, agent: str, model: str, messages: Sequence[dict], temperature: float | None,
                 max_tokens: int | None, seed: int | None) -> str:
    payload = {
        "agent": agent,
        "model": model,
        "messages": [{"role": m.get("role"), "content": m.get("content")} for m in messages],
        "temperature": None if temperature is None else float(temperature) + 0.0,  # -0.0 is 0.0
        "max_tokens": max_tokens,
        "seed": seed,
    }
    return hashlib.sha256(canonical(payload).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def request_key(base_hash: str, occurrence: int) -> str:
    return f"{base_hash}:{occurrence}"


def derived_seed(run_seed: int | None, key: str) -> int | None:
    """The seed sent to the model for one call: distinct per sample, fixed per run seed."""
    if run_seed is None:
        return None
    return int(hashlib.sha256(f"{run_seed}|{key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
