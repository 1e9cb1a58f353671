"""Redaction: secrets never reach a trace file. Every text attribute passes through
:func:`redact` before it is written; users add their own hooks (e.g. e-mail addresses)."""

from __future__ import annotations

import re
from typing import Callable

# API keys and bearer tokens as they appear in text (prompts, error messages, headers).
SECRET_PATTERNS = [
    re.compile(r"\b(sk|pk|rk)-(?:ant-|proj-|live-|test-)?[A-Za-z0-9_\-]{16,}"),  # OpenAI / Anthropic style
    re.compile(r"\bgsk_[A-Za-z0-9]{20,}"),  # Groq
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),  # Google
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|access[_-]?token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
]
MASK = "[REDACTED]"

_hooks: list[Callable[[str], str]] = []
_extra_secrets: set[str] = set()


def _sub(m: re.Match) -> str:
    # keep the "api_key=" / "Authorization: " prefix when the pattern captured one
    return (m.group(1) if m.re.groups and m.group(1) and not m.group(1).isalnum() else "") + MASK


def add_redactor(fn: Callable[[str], str]) -> None:
    """Register ``fn(text) -> text``, applied to every text before it is written to a trace."""
    _hooks.append(fn)


def clear_redactors() -> None:
    _hooks.clear()


def add_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears (moakit adds every api_key it is given)."""
    if value and len(value) >= 6:
        _extra_secrets.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    for s in _extra_secrets:
        if s in text:
            text = text.replace(s, MASK)
    for p in SECRET_PATTERNS:
        text = p.sub(_sub, text)
    for fn in _hooks:
        text = fn(text)
    return text


def env_secrets() -> None:
    """Mask the values of the provider key variables set in this process."""
    import os

    from ..models import PROVIDER_KEYS

    for names in PROVIDER_KEYS.values():
        for n in names:
            add_secret(os.environ.get(n))
