"""Parsing an LLM's ranking reply into positions. Robust to prose, brackets, repeats and
out-of-range numbers: it never raises, it returns what it could read."""

from __future__ import annotations

import re

_NUM = re.compile(r"(?<![\d.])(\d{1,4})(?![\d.]*\d)")


def parse_rank(text: str | None, n_shown: int, n: int) -> list[int]:
    """0-based positions of the top ``n`` responses named in ``text``, in the order named.
    Numbers outside 1..n_shown and repeats are skipped; an empty list means nothing usable."""
    if not text or n_shown < 1 or n < 1:
        return []
    out: list[int] = []
    for m in _NUM.finditer(text):
        i = int(m.group(1)) - 1
        if 0 <= i < n_shown and i not in out:
            out.append(i)
            if len(out) >= n:
                break
    return out
