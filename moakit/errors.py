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
