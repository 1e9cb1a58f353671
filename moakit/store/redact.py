"""Redaction: secrets never reach a trace file. Every string is redacted before it is
written; users add their own rules (e.g. e-mail addresses) with :func:`add_redactor`.

A :class:`Redactor` holds the rules: built-in patterns for API keys and bearer tokens, exact
secret values (every ``api_key=`` moakit is given, the provider key variables set in the
environment) and the user's hooks. moakit writes through the process's :data:`REDACTOR`;
a separate ``Redactor()`` is for redacting text of your own the same way.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

# API keys and bearer tokens as they appear in text (prompts, error messages, headers).
SECRET_PATTERNS = (
    re.compile(r"\b(sk|pk|rk)-(?:ant-|proj-|live-|test-)?[A-Za-z0-9_\-]{16,}"),  # OpenAI / Anthropic style
    re.compile(r"\bgsk_[A-Za-z0-9]{20,}"),  # Groq
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),  # Google
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|access[_-]?token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
)
# Literals one of which must occur for the pattern at the same index to match (lower case for
# the patterns that ignore case): a text holding none of them skips that pattern. The regexes
# cost ~0.1 us per character, the literal scans ~0.005 us, and prompts and answers of many
# kilobytes pass here for every call.
PATTERN_NEEDS = (("sk-", "pk-", "rk-"), ("gsk_",), ("AIza",), ("authorization",), ("bearer",),
                 ("api_key", "api-key", "apikey", "access_token", "access-token", "accesstoken"))
MASK = "[REDACTED]"
MIN_SECRET = 12  # shorter values (placeholders such as "EMPTY") are not treated as secrets

# The non-ASCII characters that re.IGNORECASE equates with an ASCII letter (dotted and dotless
# i, long s, Kelvin sign): str.lower() does not map them onto that letter, so a text holding
# one runs every pattern.
_FOLDS_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")
_ALL_NEEDS = tuple(dict.fromkeys(n.lower() for needs in PATTERN_NEEDS for n in needs))
# Strings made only of these characters (span ids, request keys, JSON lists of ids) match no
# built-in pattern (each needs a letter beyond 'f', a capital, '-' or '_'): only exact secrets
# and hooks can change them.
_ID_CHARS = '0123456789abcdef:[]", '
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _sub(m: re.Match) -> str:
    # keep the "api_key=" / "Authorization: " prefix when the pattern captured one
    return (m.group(1) if m.re.groups and m.group(1) and not m.group(1).isalnum() else "") + MASK


def lone_surrogate(text: str) -> re.Match | None:
    """The first lone surrogate in ``text`` (which no provider accepts and SQLite's UTF-8 cannot hold)."""
    return _LONE_SURROGATE.search(text)


def replace_surrogates(text: str) -> str:
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


class Redactor:
    """Masks secrets in text: built-in key patterns, exact values and user hooks.

    ``redactor(text)`` returns the text with every secret replaced by ``[REDACTED]`` and lone
    surrogates by U+FFFD (SQLite stores UTF-8)."""

    def __init__(self, patterns: Iterable[re.Pattern] = SECRET_PATTERNS,
                 needs: Iterable[tuple[str, ...]] = PATTERN_NEEDS):
        self.patterns = list(patterns)
        self._needs = list(needs)
        self.hooks: list[Callable[[str], str]] = []
        self.secrets: set[str] = set()
        self.version = 0  # changes whenever a rule is added: memoized redactions are then stale

    def add_hook(self, fn: Callable[[str], str]) -> None:
        """Run ``fn(text) -> text`` on every text after the built-in rules."""
        if not callable(fn):
            raise TypeError(f"a redactor must be a callable text -> text, got {type(fn).__name__}")
        self.hooks.append(fn)
        self.version += 1

    def clear_hooks(self) -> None:
        self.hooks.clear()
        self.version += 1

    def add_secret(self, value: str | None) -> None:
        """Mask this exact value wherever it appears (values shorter than 12 characters are ignored)."""
        if isinstance(value, str) and len(value) >= MIN_SECRET and value not in self.secrets:
            self.secrets.add(value)
            self.version += 1

    def add_pattern(self, pattern: str | re.Pattern) -> None:
        self.patterns.append(re.compile(pattern) if isinstance(pattern, str) else pattern)
        self._needs.append(None)  # no literal known: always run
        self.version += 1

    def id_passes(self, text: str) -> bool:
        """True when ``text`` is made of id characters and no exact secret or hook could change
        it: redaction would return it unchanged (span ids, request keys, lists of them)."""
        return not text.strip(_ID_CHARS) and not self.hooks and not any(s in text for s in self.secrets)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for s in self.secrets:
            if s in text:
                text = text.replace(s, MASK)
        # "": literal checks unsafe (the fold characters are not ASCII: an ASCII text skips the scan)
        low = text.lower() if text.isascii() or not any(c in text for c in _FOLDS_TO_ASCII) else ""
        if not low or any(n in low for n in _ALL_NEEDS) or None in self._needs:
            for p, needs in zip(self.patterns, self._needs):
                if needs is not None and low:
                    hay = low if p.flags & re.IGNORECASE else text
                    if not any(n in hay for n in needs):
                        continue
                masked = p.sub(_sub, text)
                if masked != text:
                    text = masked
                    low = "" if any(c in text for c in _FOLDS_TO_ASCII) else text.lower()
        for fn in self.hooks:
            text = fn(text)
        return replace_surrogates(text)


REDACTOR = Redactor()  # the rules every trace write goes through


def redact(text: str) -> str:
    """``text`` redacted by the process's rules (:data:`REDACTOR`)."""
    return REDACTOR(text)


def add_redactor(fn: Callable[[str], str]) -> None:
    """Register ``fn(text) -> text``, applied to every text before it is written to a trace."""
    REDACTOR.add_hook(fn)


def clear_redactors() -> None:
    REDACTOR.clear_hooks()


def add_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears (moakit adds every api_key it is given)."""
    REDACTOR.add_secret(value)


def add_env_secrets(names: Iterable[str]) -> None:
    """Mask the values of these environment variables (provider keys), read now: a key set or
    changed between runs is masked too."""
    import os

    for n in names:
        REDACTOR.add_secret(os.environ.get(n))
