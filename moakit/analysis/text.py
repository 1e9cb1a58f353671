"""Word tokens for ROUGE-L, TF-IDF and the attribution of outputs to their sources."""

from __future__ import annotations

import re
import unicodedata


def tokenize(text: str) -> list[str]:
    """Word tokens for ROUGE-L and TF-IDF, lower-cased.

    ASCII text: runs of ``[a-z0-9]``, exactly the tokens of the ``rouge-score`` package without
    stemming. Other text is NFKC-normalised and case-folded first; a word is then a run of
    letters, digits and combining marks of any script (so Hindi's vowel signs and decomposed
    accents stay inside their word, where ``rouge-score`` drops every non-ASCII character), and
    each character of a script written without spaces (Han, Hiragana, Katakana, Thai, Lao,
    Khmer, Myanmar) is a token of its own, so Chinese and Japanese get character-level ROUGE-L
    instead of one token per sentence."""
    text = str(text)
    if text.isascii():
        return _ASCII_TOKEN.findall(text.lower())
    text = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    word: list[str] = []
    for c in text:
        if unspaced(c):
            if word:
                out.append("".join(word))
                word = []
            out.append(c)
        elif unicodedata.category(c)[0] in "LNM" and (word or unicodedata.category(c)[0] != "M"):
            word.append(c)  # a mark continues a word; a mark with no word before it is dropped
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out


_ASCII_TOKEN = re.compile(r"[a-z0-9]+")
# scripts written without spaces between words: one token per character
_UNSPACED = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF), (0x3400, 0x4DBF),
             (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))


def unspaced(c: str) -> bool:
    o = ord(c)
    return any(lo <= o <= hi for lo, hi in _UNSPACED)
