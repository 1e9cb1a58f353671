"""Exceptions moakit raises. Every one names what is wrong and how to fix it."""


class MoakitError(Exception):
    """Base class of moakit's own errors."""


class PipelineError(MoakitError, ValueError):
    """A pipeline or step is invalid. Raised when it is built or before the first call."""


class ModelError(MoakitError, ValueError):
    """A model name or alias cannot be resolved, or its provider's API key is missing."""


class ReplayMiss(MoakitError, LookupError):
    """An offline run needed a call that the trace store does not hold."""

    def __init__(self, message: str, *, step=None, agent=None, model=None, request_key=None):
        super().__init__(message)
        self.step, self.agent, self.model, self.request_key = step, agent, model, request_key


class TraceFileError(MoakitError):
    """A trace file cannot be opened: not SQLite, truncated, or not a moakit schema."""


class CallFailed(MoakitError):
    """One LLM call failed after every retry it was allowed."""

    def __init__(self, message: str, *, error_type: str = "error", retryable: bool = False):
        super().__init__(message)
        self.error_type, self.retryable = error_type, retryable


class BudgetExceeded(MoakitError):
    """Work stopped because its next call could have taken it past ``budget_usd`` or
    ``max_paid_calls``. No call that could cross the budget was started; every call that was
    paid for is in the trace store, so a rerun with ``cache=True`` and a larger budget pays only
    for the rest.

    Attributes: ``spent_usd`` (money paid so far), ``budget_usd``, ``paid_calls``,
    ``max_paid_calls``, ``refused`` (what the refused call would have cost at worst, and
    whose it was), ``partial`` (``run_batch`` / ``ablate``: the rows of the work done, with
    ``error`` set where a prompt was stopped; ``None`` for ``run``), ``trace_ids`` (the runs
    that were stopped)."""

    def __init__(self, message: str, *, spent_usd: float = 0.0, budget_usd: float | None = None,
                 paid_calls: int = 0, max_paid_calls: int | None = None, refused: str | None = None,
                 partial=None, trace_ids=()):
        super().__init__(message)
        self.spent_usd, self.budget_usd = spent_usd, budget_usd
        self.paid_calls, self.max_paid_calls = paid_calls, max_paid_calls
        self.refused, self.partial, self.trace_ids = refused, partial, list(trace_ids)
