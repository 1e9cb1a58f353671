"""Model names: the alias table for the pipelines page's short names, resolution of an
agent to the litellm request it makes, and the API-key check done before any call.

An agent is a name in a pipeline (``"qwen1.5-110b-chat"``). It resolves to a
:class:`ModelSpec`: a litellm model string plus optional ``api_base`` / ``api_key``.
``models="local"`` maps every agent onto the embedded model; a dict maps chosen agents
(``{"qwen1.5-110b-chat": "openai/my-vllm-model"}`` or a dict with ``api_base``), the rest
resolve through :data:`ALIASES`. Extend the table with :func:`register_alias`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ModelError
from .store.schema import RECORDED_PREFIX  # noqa: F401 - agents of imported outputs resolve to it

LOCAL_MODEL = "local/smollm2"

ALIASES: dict[str, str] = {
    # Together MoA proposers (Wang et al. 2024), served by Together AI
    "wizardlm-2-8x22b": "together_ai/microsoft/WizardLM-2-8x22B",
    "qwen1.5-110b-chat": "together_ai/Qwen/Qwen1.5-110B-Chat",
    "qwen1.5-72b-chat": "together_ai/Qwen/Qwen1.5-72B-Chat",
    "llama-3-70b-instruct": "together_ai/meta-llama/Llama-3-70b-chat-hf",
    "mixtral-8x22b-instruct": "together_ai/mistralai/Mixtral-8x22B-Instruct-v0.1",
    "dbrx-instruct": "together_ai/databricks/dbrx-instruct",
    "llama-3.3-70b": "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "llama-3.1-8b": "together_ai/meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    # OpenAI
    "gpt-5.2-chat-latest": "openai/gpt-5.2-chat-latest",
    "gpt-4.1": "openai/gpt-4.1",
    "gpt-4.1-mini": "openai/gpt-4.1-mini",
    "gpt-4o": "openai/gpt-4o",
    # Anthropic ("claude-haiku-4" on the page has no exact API id; Haiku 4.5 is the nearest)
    "claude-sonnet-4-5": "anthropic/claude-sonnet-4-5",
    "claude-haiku-4": "anthropic/claude-haiku-4-5",
    # Google
    "gemini-2.5-flash": "gemini/gemini-2.5-flash",
    # the embedded model
    "local": LOCAL_MODEL,
    "smollm2": LOCAL_MODEL,
}

# Environment variables litellm reads for each provider (any one is enough).
PROVIDER_KEYS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY", "TOGETHER_AI_API_KEY"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "groq": ("GROQ_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "cohere": ("COHERE_API_KEY",),
    "fireworks_ai": ("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY"),
}


@dataclass(frozen=True)
class ModelSpec:
    """What one agent's calls are sent to. ``api_key`` is never recorded in a trace."""

    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    extra: tuple[tuple[str, Any], ...] = ()  # further litellm kwargs, e.g. (("timeout", 30),)

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else "openai"

    @property
    def is_local(self) -> bool:
        return self.model == LOCAL_MODEL

    @property
    def is_recorded(self) -> bool:
        return self.model.startswith(RECORDED_PREFIX)

    def litellm_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(self.extra)
        if self.api_base:
            kw["api_base"] = self.api_base
        if self.api_key:
            kw["api_key"] = self.api_key
        return kw


def register_alias(name: str, model: str) -> None:
    """Add or replace a short name, e.g. ``register_alias("my-llama", "ollama/llama3.1")``."""
    if not name or not model:
        raise ModelError("register_alias needs a name and a litellm model string")
    ALIASES[name] = model


def _spec(value: Any, agent: str) -> ModelSpec:
    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, str):
        return ModelSpec(model=_model_string(value, agent))
    if isinstance(value, Mapping):
        d = dict(value)
        model = d.pop("model", None)
        if not model:
            raise ModelError(f"models[{agent!r}] is a dict without 'model': {sorted(d)}")
        api_base, api_key = d.pop("api_base", None), d.pop("api_key", None)
        return ModelSpec(model=_model_string(model, agent), api_base=api_base, api_key=api_key,
                         extra=tuple(sorted(d.items())))
    raise ModelError(f"models[{agent!r}] must be a model string, a dict or a ModelSpec, got {type(value).__name__}")


def _model_string(name: str, agent: str) -> str:
    if name in ALIASES:
        return ALIASES[name]
    if "/" in name and name.split("/", 1)[0] and name.split("/", 1)[1]:
        return name
    close = difflib.get_close_matches(name, list(ALIASES), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelError(
        f"unknown model {name!r} (agent {agent!r}): not an alias in moakit.models.ALIASES and not a litellm "
        f"'provider/model' string.{hint} Add one with moakit.models.register_alias(name, 'provider/model')."
    )


def resolve(agents: list[str], models: Any = None, recorded: Mapping[str, str] | None = None) -> dict[str, ModelSpec]:
    """Resolve every agent name to a :class:`ModelSpec`; raise :class:`ModelError` on the first
    unknown name. ``recorded`` maps agents imported into a cache store to their recorded model."""
    recorded = recorded or {}
    out: dict[str, ModelSpec] = {}
    if models is not None and not isinstance(models, (str, Mapping)):
        raise ModelError(f"models must be 'local', a dict of agent -> model, or None; got {type(models).__name__}")
    if isinstance(models, str) and models not in ("local",) and models not in ALIASES and "/" not in models:
        raise ModelError(f"models={models!r}: use 'local' for the embedded model, or a dict of agent -> model")
    for agent in dict.fromkeys(agents):
        if isinstance(models, Mapping) and agent in models:
            out[agent] = _spec(models[agent], agent)
        elif agent in recorded:
            out[agent] = ModelSpec(model=recorded[agent])
        elif isinstance(models, str):  # "local" (or one model string for every agent)
            out[agent] = _spec(models, agent)
        elif isinstance(models, Mapping) and "*" in models:
            out[agent] = _spec(models["*"], agent)
        else:
            out[agent] = _spec(agent, agent)
    if isinstance(models, Mapping) and "*" not in models:
        _warn_near_misses([k for k in models if isinstance(k, str) and k not in out], [a for a in out if a not in models])
    return out


class ModelMappingWarning(UserWarning):
    """A key of ``models=`` looks like a misspelt agent name."""


def _warn_near_misses(unused: list[str], unmapped: list[str]) -> None:
    """Warn when an agent was resolved by its own name while ``models=`` has an unused key that
    is nearly that name (``"gpt4o"`` for agent ``"gpt-4o"``): the call would go to the alias,
    not to the model the user mapped. Unused keys that match no agent are fine (one mapping
    shared by several pipelines)."""
    import warnings

    for agent in unmapped:
        close = difflib.get_close_matches(agent, unused, n=1, cutoff=0.8)
        if close:
            warnings.warn(f"agent {agent!r} is not a key of models= and was resolved by its own name; models= has "
                          f"the unused key {close[0]!r}: a typo?", ModelMappingWarning, stacklevel=4)


def check_keys(specs: Mapping[str, ModelSpec], environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ModelError` naming the first agent whose provider needs a key that is
    not set. Agents with their own ``api_base`` or ``api_key`` are not checked."""
    environ = os.environ if environ is None else environ
    for agent, spec in specs.items():
        if spec.api_key or spec.api_base or spec.is_local or spec.is_recorded:
            continue
        needed = PROVIDER_KEYS.get(spec.provider)
        if needed and not any(environ.get(k) for k in needed):
            raise ModelError(
                f"agent {agent!r} uses {spec.model!r}, whose provider {spec.provider!r} needs an API key: set "
                f"{' or '.join(needed)}, or run offline with models='local' (the embedded model)"
            )
