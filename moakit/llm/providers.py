"""Checking that every model names a provider litellm knows, before any call."""

from __future__ import annotations

import difflib
from typing import Mapping

from ..errors import ModelError
from ..models import LOCAL_MODEL, PROVIDER_KEYS, ModelSpec
from .caller import get_litellm

# Providers moakit knows without asking litellm (asking means importing it: seconds).
_COMMON_PROVIDERS = frozenset(PROVIDER_KEYS) | {
    "ollama", "ollama_chat", "vllm", "hosted_vllm", "azure", "azure_ai", "bedrock", "vertex_ai", "huggingface",
    "lm_studio", "llamafile", "litellm_proxy", "openai_like", "custom_openai", "perplexity", "deepinfra"}


def check_providers(specs: Mapping[str, ModelSpec]) -> None:
    """Raise :class:`ModelError` naming the first agent whose model string names a provider
    litellm does not know (``"opnai/gpt-4.1"``), or a local model other than the embedded one,
    so a typo fails before any call instead of as one failed call per prompt."""
    unknown = {}
    for agent, spec in specs.items():
        if spec.provider == "local" and spec.model != LOCAL_MODEL:
            raise ModelError(f"agent {agent!r}: unknown local model {spec.model!r}; the embedded model is "
                             f"{LOCAL_MODEL!r} (or use models='local')")
        if spec.provider not in _COMMON_PROVIDERS and spec.provider != "local" and not spec.is_recorded \
                and "custom_llm_provider" not in dict(spec.extra):
            unknown[agent] = spec
    if not unknown:
        return
    litellm = get_litellm()
    known = {getattr(p, "value", p) for p in litellm.provider_list}
    known |= {p.get("provider") for p in litellm.custom_provider_map}
    for agent, spec in unknown.items():
        if spec.provider not in known:
            close = difflib.get_close_matches(spec.provider, sorted(k for k in known if k), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ModelError(
                f"agent {agent!r}: model {spec.model!r} names the provider {spec.provider!r}, which litellm does not "
                f"know.{hint} Write 'provider/model' (e.g. 'openai/gpt-4.1'; 'openai/<name>' with api_base for an "
                "OpenAI-compatible server).")
