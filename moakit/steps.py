"""The step library: frozen, validated data. Nothing here calls a model.

Signatures follow the mixture-llm pipelines page (``Propose(PROPOSERS, temp=0.7,
max_tokens=512)``, ``Aggregate("qwen1.5-110b-chat")``, ``Rank(model, n=3)``, ``Dropout(0.2)``).
Invalid arguments raise :class:`moakit.errors.PipelineError` at construction, so a pipeline
fails before any money is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar

from .errors import PipelineError
from .mixture import convert_step

DEFAULT_TEMP = 0.7
DEFAULT_MAX_TOKENS = 2048  # the Together MoA reference setting for AlpacaEval


def _agents(value: Any, step: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    try:
        agents = tuple(value)
    except TypeError:
        raise PipelineError(f"{step}: agents must be a list of model names, got {value!r}") from None
    if not agents:
        raise PipelineError(f"{step}: the agent list is empty; give at least one model name")
    for a in agents:
        if not isinstance(a, str) or not a.strip():
            raise PipelineError(f"{step}: every agent must be a non-empty model name, got {a!r}")
    return agents


def _sampling(step: "Step") -> None:
    temp, max_tokens = getattr(step, "temp"), getattr(step, "max_tokens")
    if not isinstance(temp, (int, float)) or isinstance(temp, bool) or not 0 <= temp <= 2:
        raise PipelineError(f"{step.kind}: temp must be a number in [0, 2], got {temp!r}")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise PipelineError(f"{step.kind}: max_tokens must be a positive integer, got {max_tokens!r}")


class Step:
    """Base of all steps. ``calls_llm`` tells the engine whether the step makes LLM calls."""

    calls_llm: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if callable(v):
                v = {"callable": getattr(v, "__qualname__", repr(v)), "module": getattr(v, "__module__", None)}
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


class _OneAgent:
    """Steps made by a single agent (Aggregate, Rank, Vote) expose it as ``agents`` too."""

    @property
    def agents(self) -> tuple[str, ...]:
        return (self.agent,)  # type: ignore[attr-defined]


def _llm_step(cls):
    """Decorator for the LLM steps: validate agents and sampling settings."""
    cls.calls_llm = True
    return cls


@_llm_step
@dataclass(frozen=True)
class Propose(Step):
    """Each agent answers the user query. After earlier steps, the new candidates are
    appended to the responses carried over (Self-MoA-Seq's sliding window)."""

    agents: tuple[str, ...]
    temp: float = DEFAULT_TEMP
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self):
        object.__setattr__(self, "agents", _agents(self.agents, "Propose"))
        _sampling(self)


@_llm_step
@dataclass(frozen=True)
class Synthesize(Step):
    """Each agent sees all current responses (numbered) and writes a new one."""

    agents: tuple[str, ...]
    temp: float = DEFAULT_TEMP
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "agents", _agents(self.agents, "Synthesize"))
        _sampling(self)


@_llm_step
@dataclass(frozen=True)
class Aggregate(_OneAgent, Step):
    """One agent combines all current responses into the single final one."""

    agent: str
    temp: float = DEFAULT_TEMP
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt: str | None = None

    def __post_init__(self):
        _agents([self.agent], "Aggregate")
        _sampling(self)


@_llm_step
@dataclass(frozen=True)
class Refine(Step):
    """Each response is improved on its own; agents are used in turn (cycled)."""

    agents: tuple[str, ...]
    temp: float = DEFAULT_TEMP
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "agents", _agents(self.agents, "Refine"))
        _sampling(self)


@_llm_step
@dataclass(frozen=True)
class Rank(_OneAgent, Step):
    """An LLM orders the responses and the top ``n`` are kept. The parsed choice and the
    positions shown are recorded on the step span."""

    agent: str
    n: int = 3
    temp: float = DEFAULT_TEMP
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt: str | None = None

    def __post_init__(self):
        _agents([self.agent], "Rank")
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise PipelineError(f"Rank: n must be an integer >= 1, got {self.n!r}")
        _sampling(self)


@_llm_step
@dataclass(frozen=True)
class Vote(_OneAgent, Step):
    """An LLM picks (restates) the consensus answer among the responses."""

    agent: str
    temp: float = DEFAULT_TEMP
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt: str | None = None

    def __post_init__(self):
        _agents([self.agent], "Vote")
        _sampling(self)


@dataclass(frozen=True)
class Shuffle(Step):
    """Random permutation of the responses, drawn from the run's seeded RNG."""


@dataclass(frozen=True)
class Dropout(Step):
    """Each response is dropped with probability ``p``; at least one is always kept."""

    p: float

    def __post_init__(self):
        p = self.p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise PipelineError(f"Dropout: p must be in [0, 1), got {p!r}")


def _positive(step: str, n: Any) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise PipelineError(f"{step}: n must be an integer >= 1, got {n!r}")


@dataclass(frozen=True)
class Sample(Step):
    """Keep ``n`` responses drawn at random (seeded)."""

    n: int

    def __post_init__(self):
        _positive("Sample", self.n)


@dataclass(frozen=True)
class Take(Step):
    """Keep the first ``n`` responses."""

    n: int

    def __post_init__(self):
        _positive("Take", self.n)


@dataclass(frozen=True)
class Filter(Step):
    """Keep the responses whose text makes ``fn(text)`` true."""

    fn: Callable[[str], bool] = field(compare=False)

    def __post_init__(self):
        if not callable(self.fn):
            raise PipelineError(f"Filter: fn must be callable, got {self.fn!r}")


@dataclass(frozen=True)
class Map(Step):
    """Replace each response's text by ``fn(text)``."""

    fn: Callable[[str], str] = field(compare=False)

    def __post_init__(self):
        if not callable(self.fn):
            raise PipelineError(f"Map: fn must be callable, got {self.fn!r}")


STEP_TYPES: dict[str, type[Step]] = {
    c.__name__: c for c in (Propose, Synthesize, Aggregate, Refine, Rank, Vote, Shuffle, Dropout, Sample, Take, Filter, Map)
}


def validate_pipeline(pipeline: Any) -> list[Step]:
    """Check a pipeline (a list of steps) as a whole; return it as a list of moakit steps.

    Steps of the mixture-llm library (``from mixture_llm import Propose, ...``) are converted
    by their fields (:mod:`moakit.mixture`): use the returned list, not the one given."""
    if isinstance(pipeline, Step):
        pipeline = [pipeline]
    if isinstance(pipeline, (str, bytes)) or not hasattr(pipeline, "__iter__"):
        raise PipelineError(f"a pipeline is a list of steps, got {type(pipeline).__name__}")
    steps = list(pipeline)
    if not steps:
        raise PipelineError("the pipeline is empty; give at least one step, e.g. [Propose([...])]")
    for i, s in enumerate(steps):
        if not isinstance(s, Step):  # mixture-llm's steps (the page's code) convert by their fields
            converted = convert_step(s, STEP_TYPES, i)
            if converted is not None:
                steps[i] = s = converted
        if not isinstance(s, Step):
            raise PipelineError(
                f"step {i} is {s!r} ({type(s).__name__}), not a moakit step; known steps: {', '.join(STEP_TYPES)}"
            )
    if not isinstance(steps[0], Propose):
        raise PipelineError(f"the first step must be Propose (it produces the first responses), got {steps[0].kind}")
    return steps


def pipeline_to_json(pipeline: list[Step]) -> list[dict[str, Any]]:
    return [s.to_dict() for s in pipeline]


def pipeline_from_json(data: list[dict[str, Any]]) -> list[Step]:
    """Rebuild a pipeline from its stored JSON. Filter/Map hold code and cannot be rebuilt."""
    steps = []
    for d in data:
        d = dict(d)
        kind = d.pop("kind", None)
        cls = STEP_TYPES.get(kind)
        if cls is None:
            raise PipelineError(f"unknown step kind {kind!r} in stored pipeline")
        if cls in (Filter, Map):
            raise PipelineError(
                f"the stored pipeline has a {kind} step ({d.get('fn')}); its function is code and is not "
                "stored: pass the pipeline explicitly to replay it"
            )
        steps.append(cls(**d))
    return steps
