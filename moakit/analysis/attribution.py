"""Which shown response does an aggregating output draw on? Length-neutral attribution.

An aggregating call (Synthesize, Aggregate, Vote) is shown ``n`` responses and writes one
output. Asking "which response does the output resemble most" by containment or ROUGE-L
rewards length: a long response shares more words, in order, with any output. Here an
output is attributed by **distinctive content** instead:

* each text is cut into word n-grams (lower-cased ``\\w+`` tokens, ``ngram`` words, 3 by default);
* an n-gram of the output is *distinctive* of shown response ``i`` when it occurs in response
  ``i`` and in no other shown response (content shared by several responses says nothing
  about which one was used);
* ``hits[i]`` counts the output's distinct n-grams that are distinctive of ``i``, and
  ``share[i] = hits[i] / sum(hits)`` is the share of the output's traceable content that
  comes from ``i`` alone.

The call is attributed to response ``j`` when ``share[j] > dominance`` (default 0.5: a strict
majority of the traceable content) and ``sum(hits) >= min_hits``; otherwise it is
**unattributed** (an equal blend of four responses has shares near 0.25 each, whatever
their lengths, and is credited to no one). Nothing is forced to an argmax.

A long response contributes no more hits than the output takes from it; what remains of a
length effect (a long response offers more n-grams for the output to hit by coincidence)
is a term of :func:`moakit.analysis.choice_model` (log length), not hidden in the attribution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Attribution", "attribute", "tokens", "ngrams"]

_WORD = re.compile(r"\w+")


def tokens(text: str | None) -> list[str]:
    """Lower-cased word tokens (``\\w+``) of ``text`` (``None`` -> no tokens)."""
    return _WORD.findall(text.lower()) if text else []


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """The set of word ``n``-grams of a token list (empty when it has fewer than ``n`` words)."""
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Attribution:
    """The attribution of one output.

    ``source``: 0-based index of the shown response the output is attributed to, or None;
    ``shares``: per shown response, its share of the output's distinctive content (all 0 when
    nothing is traceable); ``hits``: per shown response, the output's n-grams distinctive of it;
    ``reason``: why ``source`` is None (``"no distinctive content"``, ``"no majority source"``,
    ``"output too short"``) or ``"attributed"``."""

    source: int | None
    shares: tuple[float, ...]
    hits: tuple[int, ...] = field(default=())
    reason: str = "attributed"


def attribute(output: str | None, shown: list[str], *, ngram: int = 3, dominance: float = 0.5, min_hits: int = 2,
              cache: dict | None = None) -> Attribution:
    """Attribute ``output`` to one of the ``shown`` texts by distinctive n-grams (module doc).

    ``cache`` (optional dict) memoises the n-gram sets of texts seen before: the same
    proposals are shown to many calls."""
    if not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"ngram must be a positive integer, got {ngram!r}")
    if not 0 <= dominance < 1:
        raise ValueError(f"dominance must be in [0, 1), got {dominance!r}")
    n = len(shown)

    def grams(text):
        if cache is None:
            return ngrams(tokens(text), ngram)
        key = (text, ngram)
        got = cache.get(key)
        if got is None:
            got = cache[key] = ngrams(tokens(text), ngram)
        return got

    out = ngrams(tokens(output), ngram)
    if not out:
        return Attribution(None, (0.0,) * n, (0,) * n, "output too short")
    sets = [grams(t) for t in shown]
    seen_once: set = set()
    seen_twice: set = set()
    for s in sets:
        seen_twice |= seen_once & s
        seen_once |= s
    hits = tuple(len((s - seen_twice) & out) for s in sets)
    total = sum(hits)
    if total == 0:
        return Attribution(None, (0.0,) * n, hits, "no distinctive content")
    shares = tuple(h / total for h in hits)
    best = max(range(n), key=shares.__getitem__)
    if total < min_hits:
        return Attribution(None, shares, hits, "no distinctive content")
    if shares[best] <= dominance:
        return Attribution(None, shares, hits, "no majority source")
    return Attribution(best, shares, hits, "attributed")
