"""``request_hash`` assembles the canonical request text from its parts (so a layer's requests
can share their messages' JSON): the keys must be exactly those of the plain definition, or
every recorded trace would stop replaying."""

from __future__ import annotations

import random

import hashlib

from moakit.store.keys import canonical, messages_json, request_hash


def reference_hash(*, agent, model, messages, temperature, max_tokens, seed) -> str:
    """The definition request_hash must agree with: sha256 of the canonical JSON of the request."""
    payload = {
        "agent": agent,
        "model": model,
        "messages": [{"role": m.get("role"), "content": m.get("content")} for m in messages],
        "temperature": None if temperature is None else float(temperature) + 0.0,  # -0.0 is 0.0
        "max_tokens": max_tokens,
        "seed": seed,
    }
    return hashlib.sha256(canonical(payload).encode("utf-8", "surrogatepass")).hexdigest()[:32]

ODD = ["", "é", "日本語", "\ud800", "a\"b\\c", "\n\t", "\u2028", "😀", "</script>", "null", "1e5", "\x00"]


def _text(rng):
    return "".join(rng.choice(ODD + ["word", " ", "x" * rng.randint(0, 40)]) for _ in range(rng.randint(0, 8)))


def test_request_hash_equals_the_reference_definition():
    rng = random.Random(7)
    for i in range(3000):
        msgs = [{"role": rng.choice(["system", "user", "assistant", None]), "content": _text(rng),
                 **({"name": "x"} if rng.random() < 0.1 else {})} for _ in range(rng.randint(0, 5))]
        kw = dict(agent=_text(rng) or "a", model=rng.choice(["openai/gpt-4.1", "é/ü", "m\"q"]),
                  messages=msgs, temperature=rng.choice([None, 0, 0.7, -0.0, 1, 1e-300, 2.5, float("inf")]),
                  max_tokens=rng.choice([None, 1, 2048]), seed=rng.choice([None, 0, 3, 2**31 - 1]))
        want = reference_hash(**kw)
        assert request_hash(**kw) == want
        assert request_hash(**kw, messages_canonical=messages_json(msgs)) == want
