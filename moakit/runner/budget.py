"""Budgets: ``budget_usd=`` and ``max_paid_calls=`` on ``run``, ``run_batch`` and ``ablate``.

What must hold: **no call starts that could take the work past its budget.** Before a layer's
calls that are not served from the store start, the engine reserves each one's worst case
(its input tokens, counted before the call, plus its whole ``max_tokens`` of output, at
litellm's prices) and its place among ``max_paid_calls``; the layer starts only if
``spent + reserved by calls in flight + this layer's worst case <= budget_usd`` (and the call
count fits). When a call ends its reservation is settled with what it really cost (the worst
case when the provider's price is unknown for that answer). So the money spent never exceeds
the budget, with any number of calls in flight.

A layer is reserved whole: if one of its calls does not fit, none of them starts (a layer with
half its proposals would be another experiment). A layer that does not fit only because of the
worst cases held by calls in flight waits for them to settle (they usually cost far less). A
layer that cannot fit in what is left is refused, and the first refusal stops the work: every later
reservation is refused too, the calls in flight finish and are recorded, and
:class:`~moakit.errors.BudgetExceeded` says what finished. A rerun with ``cache=True`` and a
larger budget serves what was paid from the store and pays only for the rest.

A model that litellm's price map does not price cannot be budgeted in dollars: with
``budget_usd`` such a model is refused before any call (register its price with
``litellm.register_model`` or budget it with ``max_paid_calls``). The embedded model is free;
calls served from the store are never paid and never reserved.

The input count gets a margin (5% and 16 tokens) for the provider's own chat template, so the
worst case stays an upper bound when the provider counts a few tokens more than the tokenizer.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence

from ..errors import BudgetExceeded, PipelineError
from ..llm.pricing import count_input_tokens, price

INPUT_MARGIN = 1.05
INPUT_MARGIN_TOKENS = 16


def check_budget_args(budget_usd: Any, max_paid_calls: Any) -> None:
    if budget_usd is not None and (isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float))
                                   or not math.isfinite(budget_usd) or budget_usd < 0):
        raise PipelineError(f"budget_usd must be a non-negative number of dollars or None, got {budget_usd!r}")
    if max_paid_calls is not None and (isinstance(max_paid_calls, bool) or not isinstance(max_paid_calls, int)
                                       or max_paid_calls < 0):
        raise PipelineError(f"max_paid_calls must be a non-negative integer or None, got {max_paid_calls!r}")


def worst_input_tokens(counted: int) -> int:
    """The input tokens a provider may bill for a prompt the tokenizer counted as ``counted``."""
    return math.ceil(counted * INPUT_MARGIN) + INPUT_MARGIN_TOKENS


class Budget:
    """Money and paid calls one piece of work (a run, a batch, an ablation) may spend.

    Shared by every run of that work (pass one ``Budget`` as ``budget=`` to several
    ``run_batch`` calls, as ``ablate`` does). Not shared across processes."""

    def __init__(self, usd: float | None = None, max_paid_calls: int | None = None):
        check_budget_args(usd, max_paid_calls)
        self.usd = None if usd is None else float(usd)
        self.max_paid_calls = max_paid_calls
        self.spent_usd = 0.0
        self.calls = 0  # calls started (paid, failed or in flight)
        self.reserved_usd = 0.0  # worst case of the calls in flight
        self.stopped: str | None = None  # why the first call was refused
        self.refused_trace_ids: list[str] = []
        self._lock = threading.Lock()
        self._prices: dict[str, Any] = {}
        self._waiters: list = []

    @property
    def limited(self) -> bool:
        return self.usd is not None or self.max_paid_calls is not None

    def __repr__(self) -> str:
        usd = "no dollar limit" if self.usd is None else f"${self.spent_usd:.6f} of ${self.usd:.6f}"
        calls = "" if self.max_paid_calls is None else f", {self.calls} of {self.max_paid_calls} calls"
        return f"Budget({usd}{calls}{', stopped' if self.stopped else ''})"

    def check_models(self, specs) -> None:
        """Before any call: with a dollar budget, every model that may be paid needs a price."""
        if self.usd is None:
            return
        for agent, spec in specs.items():
            if self.price_of(spec) is None:
                raise PipelineError(
                    f"budget_usd needs a price for every model that may be paid, and litellm's price map has none "
                    f"for {spec.model!r} (agent {agent!r}): no call could be proven to fit the budget. Register its "
                    f"price (litellm.register_model({{{spec.model!r}: {{'input_cost_per_token': ..., "
                    f"'output_cost_per_token': ..., 'litellm_provider': ..., 'mode': 'chat'}}}})), or budget it by "
                    "calls with max_paid_calls= instead.")

    def price_of(self, spec):
        if spec.model not in self._prices:
            self._prices[spec.model] = price(spec)
        return self._prices[spec.model]

    def worst_case(self, request) -> tuple[float, int]:
        """(worst-case dollars, input tokens counted) of one request."""
        spec = request.spec
        if self.usd is None or spec.is_local or spec.is_recorded:
            return 0.0, 0
        p = self.price_of(spec)
        if p is None:  # (check_models refused it already; a model added later is refused here)
            raise PipelineError(f"budget_usd: litellm has no price for {spec.model!r}")
        n, _, _ = count_input_tokens(spec, request.messages)
        return p.cost(worst_input_tokens(n), request.max_tokens), n

    async def reserve(self, plans: Sequence[Any], trace_id: str | None = None) -> list[float]:
        """Reserve a layer's calls (``CallPlan``s) or refuse them all with BudgetExceeded.

        When the layer would fit in what is left once the calls in flight have settled (their
        worst cases are held, and most calls cost far less), it waits for them instead of being
        refused; it is refused when it cannot fit even then."""
        worst = [self.worst_case(p.request) for p in plans]
        need = sum(w for w, _ in worst)
        while True:
            with self._lock:
                why = self.stopped
                if why is None and self.max_paid_calls is not None and \
                        self.calls + len(plans) > self.max_paid_calls:
                    why = (f"max_paid_calls={self.max_paid_calls}: {self.calls} calls were started and the next "
                           f"layer (step {plans[0].step_index} {plans[0].step_kind}) needs {len(plans)} more")
                over = self.usd is not None and self.spent_usd + self.reserved_usd + need > self.usd + 1e-12
                if why is None and over and self.reserved_usd > 0 and self.spent_usd + need <= self.usd + 1e-12:
                    wait = self.changed()  # it may fit once the calls in flight have settled
                elif why is None and over:
                    first = plans[0]
                    why = (f"budget_usd=${self.usd:.6f}: step {first.step_index} ({first.step_kind}) would start "
                           f"{len(plans)} call(s) costing at most ${need:.6f} (input counted before the call, "
                           f"max_tokens={first.request.max_tokens} of output, model {first.request.spec.model!r}) "
                           f"with ${self.spent_usd:.6f} spent")
                    wait = None
                else:
                    wait = None
                if why is not None:
                    if self.stopped is None:
                        self.stopped = why
                    if trace_id:
                        self.refused_trace_ids.append(trace_id)
                    raise self.exceeded(why)
                if wait is None:
                    self.calls += len(plans)
                    self.reserved_usd += need
                    return [w for w, _ in worst]
            await wait

    def changed(self):
        """A future resolved at the next settlement (in this event loop)."""
        import asyncio

        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def settle(self, reserved: float, cost: float | None) -> None:
        """A reserved call ended: release its worst case, count what it cost (unknown: the worst case)."""
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved)
            if self.reserved_usd < 1e-15:
                self.reserved_usd = 0.0
            self.spent_usd += reserved if cost is None else float(cost)
            waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def exceeded(self, why: str, **kw) -> BudgetExceeded:
        return BudgetExceeded(f"stopped by the budget: {why}. Spent ${self.spent_usd:.6f} on {self.calls} "
                              "call(s) started; every call paid for is in the trace store (rerun with cache=True "
                              "and a larger budget to pay only for the rest).",
                              spent_usd=self.spent_usd, budget_usd=self.usd, paid_calls=self.calls,
                              max_paid_calls=self.max_paid_calls, refused=why, **kw)


def make_budget(budget_usd=None, max_paid_calls=None, budget: Budget | None = None) -> Budget | None:
    """The Budget of a run or batch: ``budget`` (shared with other work) or a new one; None
    when nothing is limited."""
    check_budget_args(budget_usd, max_paid_calls)
    if budget is not None:
        if not isinstance(budget, Budget):
            raise PipelineError(f"budget must be a moakit Budget, got {type(budget).__name__}")
        if budget_usd is not None or max_paid_calls is not None:
            raise PipelineError("give budget= or budget_usd= / max_paid_calls=, not both")
        return budget
    if budget_usd is None and max_paid_calls is None:
        return None
    return Budget(budget_usd, max_paid_calls)
