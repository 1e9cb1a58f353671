"""How many calls may go out, and when: an adaptive concurrency limit per endpoint (AIMD) and
optional requests-per-minute / tokens-per-minute budgets per provider.

Both work per *attempt*: an attempt takes a slot of its endpoint's limit and a share of its
provider's budgets before it is sent, and gives the slot back when its answer (or error) is in;
a call that waits out a Retry-After holds no endpoint slot meanwhile. The caps on calls in flight
(``max_concurrency``, ``per_model_concurrency``) still hold whole calls, above these.

* :class:`AdaptiveLimit`: additive increase, multiplicative decrease, as TCP's congestion
  window. Each answer that is not an overload signal adds ``1 / limit`` (one slot more per
  window of answers); a 429 or 503 multiplies the limit by ``DECREASE`` -- once per window:
  overload answers to attempts that were sent before the last decrease do not shrink it again
  (a burst of 429s is one signal). Starts at the cap, so with no overload signal it never holds
  anything back.
* :class:`RateBudget`: at most ``rpm`` attempts and ``tpm`` tokens in any 60-second window.
  An attempt reserves its estimated tokens (prompt characters / 4 + max_tokens, as providers
  count a request against a tokens-per-minute limit before it runs), settled to the tokens the
  answer reports once it is in. Waiters are served in order.

Every wait is returned to the caller, which records it on the call's span
(``moakit.wait.queue_s``, ``moakit.wait.rate_s``).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Mapping

WINDOW_S = 60.0


class AdaptiveLimit:
    """AIMD limit on attempts in flight to one endpoint, between ``floor`` and ``cap``."""

    DECREASE = 0.7  # the limit after an overload signal, as a share of what it was (CUBIC's beta)

    def __init__(self, cap: int, floor: int = 1, adaptive: bool = True):
        if cap < 1:
            raise ValueError(f"AdaptiveLimit: cap must be >= 1, got {cap}")
        self.cap, self.floor, self.adaptive = cap, max(1, min(floor, cap)), adaptive
        self.limit = float(cap)
        self.in_flight = 0
        self.last_decrease = -math.inf  # time.monotonic() of the last decrease
        self.decreases = 0  # overload signals acted on
        self.overloads = 0  # overload answers seen
        self.low = float(cap)  # the lowest limit reached
        self._waiters: collections.deque = collections.deque()

    def __repr__(self) -> str:
        return f"AdaptiveLimit(limit={self.limit:.1f}, cap={self.cap}, in_flight={self.in_flight})"

    async def acquire(self) -> float:
        """Take a slot; return the seconds waited for it."""
        if not self._waiters and self.in_flight < int(self.limit):
            self.in_flight += 1
            return 0.0
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        t0 = time.perf_counter()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot was handed over as we were cancelled
                self.in_flight -= 1
                self._wake()
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        return time.perf_counter() - t0

    def release(self, sent_at: float, overloaded: bool, answered: bool = True) -> None:
        """Give a slot back. ``sent_at``: ``time.monotonic()`` when the attempt was sent;
        ``overloaded``: it was answered 429 or 503; ``answered``: the endpoint answered at all
        (an error that says nothing about load, e.g. a reset connection, changes nothing)."""
        self.in_flight -= 1
        if self.adaptive:
            if overloaded:
                self.overloads += 1
                if sent_at >= self.last_decrease:
                    self.limit = max(float(self.floor), self.limit * self.DECREASE)
                    self.low = min(self.low, self.limit)
                    self.last_decrease = time.monotonic()
                    self.decreases += 1
            elif answered and self.limit < self.cap:
                self.limit = min(float(self.cap), self.limit + 1.0 / self.limit)
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < int(self.limit):
            fut = waiters.popleft()
            if not fut.done():
                self.in_flight += 1  # handed straight to the waiter: no one overtakes it
                fut.set_result(None)


class RateBudget:
    """At most ``rpm`` attempts and ``tpm`` tokens in any ``WINDOW_S`` seconds (None: no limit)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.rpm, self.tpm = rpm, tpm
        self._sent: collections.deque = collections.deque()  # a Ticket per attempt in the window
        self._tokens = 0.0
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"RateBudget(rpm={self.rpm}, tpm={self.tpm})"

    def _expire(self, now: float) -> None:
        sent = self._sent
        while sent and sent[0].at <= now - WINDOW_S:
            t = sent.popleft()
            self._tokens -= t.tokens
            t.gone = True

    def _delay(self, now: float, tokens: float) -> float:
        """Seconds until an attempt of ``tokens`` fits (0: now)."""
        self._expire(now)
        sent = self._sent
        wait = 0.0
        if self.rpm is not None:
            n = max(1, int(self.rpm))
            if len(sent) >= n:  # the (len - n)-th oldest must leave the window first
                wait = sent[len(sent) - n].at + WINDOW_S - now
        if self.tpm is not None and sent and self._tokens + tokens > self.tpm:
            # the oldest entries must leave the window until the new one fits (alone it always does)
            left = self._tokens + tokens - self.tpm
            for t in sent:
                left -= t.tokens
                if left <= 0:
                    wait = max(wait, t.at + WINDOW_S - now)
                    break
            else:
                wait = max(wait, sent[-1].at + WINDOW_S - now)
        return max(0.0, wait)

    async def take(self, tokens: float) -> tuple[float, "Ticket"]:
        """Wait until an attempt of ``tokens`` (estimated) fits; return (seconds waited, its
        ticket for :meth:`settle`)."""
        now = time.monotonic()
        if self._lock is None:
            self._lock = asyncio.Lock()
        if not self._lock.locked() and self._delay(now, tokens) == 0.0:
            return 0.0, self._add(now, tokens)
        t0 = time.perf_counter()
        async with self._lock:  # waiters in order: the first to wait is the first to go
            while True:
                now = time.monotonic()
                d = self._delay(now, tokens)
                if d == 0.0:
                    return time.perf_counter() - t0, self._add(now, tokens)
                await asyncio.sleep(d)

    def _add(self, now: float, tokens: float) -> "Ticket":
        ticket = Ticket(now, tokens)
        self._sent.append(ticket)
        self._tokens += tokens
        return ticket

    def settle(self, ticket: "Ticket", tokens: float) -> None:
        """The attempt used ``tokens`` (the answer's input + output tokens; 0 for a failed attempt)."""
        if not ticket.gone:  # still counted in the window
            self._tokens += tokens - ticket.tokens
        ticket.tokens = tokens


class Ticket:
    """One attempt in a :class:`RateBudget`'s window."""

    __slots__ = ("at", "tokens", "gone")

    def __init__(self, at: float, tokens: float):
        self.at, self.tokens, self.gone = at, tokens, False


def estimate_tokens(messages, max_tokens: int | None) -> int:
    """What an attempt is counted for before it runs: ~4 characters a prompt token, plus the
    most it may write."""
    chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 0 for m in messages)
    return chars // 4 + 1 + (max_tokens or 0)


def budget_for(limits: float | Mapping[str, float] | None, provider: str, api_base: str | None) -> float | None:
    """The limit that applies to an endpoint: a number applies to every provider on its own; a
    mapping names providers (``"openai"``) or API bases (``"http://host:8000/v1"``, tried first)."""
    if limits is None or isinstance(limits, (int, float)):
        return limits
    if api_base is not None:
        for key in (api_base, api_base.rstrip("/"), api_base.rstrip("/") + "/"):
            if key in limits:
                return limits[key]
    return limits.get(provider)


def check_limits(name: str, value) -> None:
    """Raise ValueError unless ``value`` is None, a positive number, or a mapping of names to them."""
    def ok(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)

    if value is None or ok(value):
        return
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and k and ok(v) for k, v in value.items()):
        return
    raise ValueError(f"ClientConfig: {name} must be None, a positive number (each provider's own limit) or a dict "
                     f"of provider name or api_base -> positive number, got {value!r}")
