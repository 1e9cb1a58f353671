"""Trace and span ids for every span moakit records (runs, steps, calls, attempts, imported
outputs).

Trace ids are random 128-bit numbers: a trace id is shown and typed by its prefix
(``result.trace_id[:8]``, ``moakit show 3f2a9c1b``), so its first digits must tell runs apart. They
come from a generator of moakit's own, seeded by the operating system, not from the ``random``
module that the SDK's ``RandomIdGenerator`` uses: a notebook that calls ``random.seed(42)`` before
each run for reproducibility (or Hypothesis, which does so for each example) would otherwise give
every run the same trace id, and with random span ids the same span ids too, so that a run's rows
replaced the previous run's in the store.

Span ids are **sequential from a random 64-bit start**, one sequence per process. The store
indexes span ids (its primary key) and parent ids; a random id is an insert at a random place in
each index, so once the indexes outgrow the page cache every row dirtied a page of its own in
both (at a million calls a 10,000-row commit wrote ~90 MB of index pages). A process's ids are
consecutive instead, so its rows append at one place in each index, however large the file.
Within a process ids never repeat (the period is 2^64); two processes collide only if their
ranges overlap, with probability about (n1 + n2) / 2^64 for n1 and n2 spans, far below random
ids' birthday bound (n^2 / 2^65). A forked child starts a sequence of its own. Consecutive ids
differ in their last digits: show a span id's end (``span_id[-8:]``), not its start.
"""

from __future__ import annotations

import itertools
import os
import random

_MASK64 = (1 << 64) - 1
_next_span: "itertools.count[int]"  # set by _restart
_trace_random = random.Random()  # seeded from os.urandom; random.seed() does not reach it


def _restart() -> None:
    """A new sequence from a random start, and a freshly seeded trace-id generator (at import,
    and in a forked child, which would otherwise repeat its parent's ids)."""
    global _next_span
    _next_span = itertools.count(int.from_bytes(os.urandom(8), "big"))
    _trace_random.seed()


_restart()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart)


def new_span_id() -> int:
    """The next span id of this process (never 0, which OpenTelemetry reserves for 'invalid')."""
    # next() on itertools.count is one C call: safe from any thread without a lock
    return (next(_next_span) & _MASK64) or (next(_next_span) & _MASK64)


def new_trace_id() -> int:
    """A random, non-zero 128-bit trace id (whatever the ``random`` module was seeded with)."""
    return _trace_random.getrandbits(128) or 1


def span_id_hex() -> str:
    """:func:`new_span_id` as the 16 hex digits the store keeps."""
    return format(new_span_id(), "016x")


def trace_id_hex() -> str:
    """:func:`new_trace_id` as the 32 hex digits the store keeps."""
    return format(new_trace_id(), "032x")
