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

# Literals one of which must occur for a pattern to match (lower case for the patterns that
# ignore case). A text holding none of them skips that pattern: the regexes cost ~0.1 us per
# character, the literal scans ~0.005 us, and prompts and answers of many kilobytes pass here
# for every call. A pattern added without an entry here is always run.
_NEEDS: dict[str, tuple[str, ...]] = {
    SECRET_PATTERNS[0].pattern: ("sk-", "pk-", "rk-"),
    SECRET_PATTERNS[1].pattern: ("gsk_",),
    SECRET_PATTERNS[2].pattern: ("AIza",),
    SECRET_PATTERNS[3].pattern: ("authorization",),
    SECRET_PATTERNS[4].pattern: ("bearer",),
    SECRET_PATTERNS[5].pattern: ("api_key", "api-key", "apikey", "access_token", "access-token", "accesstoken"),
}
# The non-ASCII characters that re.IGNORECASE equates with an ASCII letter (dotted and dotless
# i, long s, Kelvin sign): str.lower() does not map them onto that one letter, so a text holding
# one runs every case-insensitive pattern.
_FOLDS_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")
_ALL_NEEDS = tuple(dict.fromkeys(n.lower() for needs in _NEEDS.values() for n in needs))
_IGNORECASE = int(re.IGNORECASE)  # an int: "flags & re.IGNORECASE" goes through the enum, ~1 us

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


def _folds_to_ascii(text: str) -> bool:
    for c in _FOLDS_TO_ASCII:
        if c in text:
            return True
    return False


def _absent(needles: tuple[str, ...], hay: str) -> bool:
    for n in needles:
        if n in hay:
            return False
    return True


def _all_known() -> bool:
    for p in SECRET_PATTERNS:
        if p.pattern not in _NEEDS:
            return False
    return True


def redact(text: str) -> str:
    if not text:
        return text
    for s in _extra_secrets:
        if s in text:
            text = text.replace(s, MASK)
    low = "" if _folds_to_ascii(text) else text.lower()  # "": the literal checks are unsafe
    if low and _absent(_ALL_NEEDS, low) and _all_known():  # the common case: nothing looks like a key
        for fn in _hooks:
            text = fn(text)
        return text
    for p in SECRET_PATTERNS:
        needs = _NEEDS.get(p.pattern)
        if needs is not None:
            if p.flags & _IGNORECASE:
                if low is None:
                    low = "" if _folds_to_ascii(text) else text.lower()
                hay = low
            else:
                hay = text
            if hay and _absent(needs, hay):
                continue
        masked = p.sub(_sub, text)
        if masked != text:
            text, low = masked, None
    for fn in _hooks:
        text = fn(text)
    return text


_env_names: tuple = ((), [])  # (names, the names as os.environ stores them)


def env_secrets() -> None:
    """Mask the values of the provider key variables set in this process (read again on every
    run: a key set or changed between runs is masked too)."""
    import os

    from ..models import PROVIDER_KEYS

    names = tuple(n for group in PROVIDER_KEYS.values() for n in group)
    data = getattr(os.environ, "_data", None)
    if os.name == "posix" and type(data) is dict:  # os.environ's own bytes mapping: ~1 us for all the
        global _env_names  # names, where os.environ.get costs ~0.6 us each (a KeyError per unset name)
        if _env_names[0] != names:
            _env_names = (names, [os.fsencode(n) for n in names])
        for key in _env_names[1]:
            raw = data.get(key)
            if raw:
                add_secret(os.fsdecode(raw))
        return
    for n in names:
        add_secret(os.environ.get(n))
