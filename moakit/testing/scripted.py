"""Scripted models for the stub server: proposers and aggregators whose behaviour is known,
so an analysis run through the real engine -> client -> HTTP path can be checked against
the truth.

The stub answers a request whose model name starts with ``scripted-`` with
:func:`reply`. The behaviour is spelt in the name (parameters joined by ``-``); anything after
an ``@`` is a tag that only makes otherwise identical names distinct (``scripted-propose-12@a``):

* ``propose-<words>[-<marker>]``: ``words`` random pseudo-words (the first one ``marker``, if
  given: a word that lets an aggregator recognise this agent's answers without seeing its
  name, at no cost in length);
* ``copypos-<k>-<p>``: copies the response shown at position ``k`` with probability ``p``,
  else one chosen uniformly (true position-k excess: ``p``);
* ``copymark-<marker>-<q>``: copies the response starting with ``marker`` with probability
  ``q``, else one chosen uniformly (a preference for one agent's content, none for position);
* ``blend-<words>``: ``words`` consecutive words of every shown response, in random order (an
  equal blend: it draws on each response equally, whatever their lengths);
* ``rankpos-<k>-<p>``: a ranking that puts position ``k`` first with probability ``p``, the rest
  in random order (for Rank).

Randomness is drawn from a hash of the model name, the messages and the request's seed, so a
replayed request gets the same answer. The shown responses are read from the numbered list
of the Together layout (``"\\n1. ...\\n2. ..."`` in the system message) or mixture-llm's
(``"1. ...\\n\\n2. ..."`` in the user message).
"""

from __future__ import annotations

import hashlib
import json
import random
import re

PREFIX = "scripted-"
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_ITEM = re.compile(r"(?:^|\n)(\d+)\. ")
_VOCAB: list[str] = []
_WEIGHTS: list[float] = []


def words(rng: random.Random, n: int) -> str:
    """``n`` pseudo-words drawn as words are in text: from a 400-word vocabulary with Zipf's
    law frequencies (the k-th most common word with weight 1/k), so answers share common
    words, as real answers do, and a long answer overlaps any output more than a short one."""
    if not _VOCAB:
        r = random.Random(0)
        vocab: set[str] = set()
        while len(vocab) < 400:
            vocab.add("".join(r.choice(SYLLABLES) for _ in range(3)))
        _VOCAB.extend(sorted(vocab))
        _WEIGHTS.extend(1.0 / (k + 1) for k in range(len(_VOCAB)))
    return " ".join(rng.choices(_VOCAB, weights=_WEIGHTS, k=n))


def shown_responses(messages: list[dict]) -> list[str]:
    """The numbered responses an aggregating request shows (empty if it shows none)."""
    for m in messages:
        text = str(m.get("content") or "")
        first = re.search(r"(?:^|\n)1\. ", text)
        if not first:
            continue
        parts = _ITEM.split(text[first.start():])
        out = []
        for i in range(1, len(parts) - 1, 2):
            if int(parts[i]) != len(out) + 1:
                break
            out.append(parts[i + 1])
        if out:
            out[-1] = out[-1].split("\n\n", 1)[0]  # what follows the list (mixture-llm's "Query: ...")
            return [r.strip() for r in out]
    return []


def reply(body: dict) -> str:
    """The scripted answer to a chat-completions request body (module doc)."""
    model = str(body.get("model", ""))
    if not model.startswith(PREFIX):
        raise ValueError(f"not a scripted model: {model!r}")
    spec = model[len(PREFIX):].split("@", 1)[0]
    kind, *args = spec.split("-")
    msgs = body.get("messages") or []
    digest = hashlib.sha256(json.dumps([model, msgs, body.get("seed")], sort_keys=True).encode()).hexdigest()
    rng = random.Random(int(digest[:16], 16))
    try:
        if kind == "propose":
            n = int(args[0])
            return f"{args[1]} {words(rng, n - 1)}" if len(args) > 1 else words(rng, n)
        shown = shown_responses(msgs)
        if not shown:
            return words(rng, 8)
        n = len(shown)
        if kind == "copypos":
            k, p = int(args[0]), float(args[1])
            return shown[k - 1] if rng.random() < p and k <= n else shown[rng.randrange(n)]
        if kind == "copymark":
            marker, q = args[0], float(args[1])
            marked = [r for r in shown if r.split(" ", 1)[0] == marker]
            return marked[0] if marked and rng.random() < q else shown[rng.randrange(n)]
        if kind == "blend":
            w = int(args[0])
            pieces = []
            for r in shown:
                toks = r.split()
                start = rng.randrange(max(1, len(toks) - w + 1))
                pieces.append(" ".join(toks[start:start + w]))
            rng.shuffle(pieces)
            return " ".join(pieces)
        if kind == "rankpos":
            k, p = int(args[0]), float(args[1])
            m = re.search(r"top (\d+)", str(msgs[-1].get("content", "")))
            top = int(m.group(1)) if m else 1
            order = list(range(1, n + 1))
            rng.shuffle(order)
            if rng.random() < p and k <= n:
                order.remove(k)
                order.insert(0, k)
            return ", ".join(str(x) for x in order[:top])
    except (IndexError, ValueError) as e:
        raise ValueError(f"scripted model {model!r}: bad parameters ({e}); see moakit.testing.scripted") from e
    raise ValueError(f"scripted model {model!r}: unknown behaviour {kind!r}; see moakit.testing.scripted")
