"""Research analyses over traces, each returning a pandas DataFrame (the widgets draw them).

* :func:`positional_bias` / :func:`bias_summary`: does the aggregator draw on a response because
  of the position it was shown at (or its source agent)? Estimated where the order was randomized.
* :func:`choice_model` / :func:`choice_summary`: a conditional logit of which shown response an
  output draws on, with position, source agent and length as terms.
* :func:`attribute` / :func:`bias_inputs` / :func:`design_columns`: the length-neutral attribution
  and the per-call design (randomized order, variant, item, repeat) both analyses read.
* :func:`ablate` / :func:`robustness_variants`: pipeline variants (Shuffle, Dropout, ...) scored
  with intervals, identical calls paid once; :func:`ablation_summary` gives its statistics
  from per-run rows (real or simulated).
* :func:`impact` / :func:`table4` / :func:`impact_summary`: aggregator vs proposer choice, in the
  MoA paper's Table 4 design or a full grid; :func:`impact_statistics` gives its statistics
  from per-run rows (real or simulated).
* :mod:`moakit.analysis.scorers`: exact, normalised, numeric, answer, ROUGE-L and embedding
  scorers; :func:`as_scorer` wraps any callable.
* :func:`llm_judge` / :func:`judge_summary` / :func:`judge_agreement` (:mod:`.judge`): pairwise
  LLM judges with their diagnostics; :func:`length_controlled_win_rate` (:mod:`.length`).
* :func:`quality_diversity`, :func:`gains`, :func:`similarity_vs_score` (:mod:`.papers`): the
  Self-MoA and MoA papers' own analyses; :func:`alpaca_eval_outputs` reads published outputs.
* :func:`questions`: the small question set with reference answers shipped with moakit.

Imports are lazy: ``import moakit.analysis`` loads neither pandas nor numpy.
See docs/analysis.md for what each estimate means and how its statistics are computed.
"""

from __future__ import annotations

import importlib

# The function ``impact`` shares its name with its module: bind the function now (the module
# imports nothing heavy), so a later ``import moakit.analysis.impact`` cannot shadow it.
from .impact import impact  # noqa: E402,F401

_EXPORTS = {
    "positional_bias": "bias", "bias_summary": "bias", "bias_inputs": "bias", "BIAS_COLUMNS": "bias",
    "choice_model": "choice", "choice_summary": "choice", "CHOICE_COLUMNS": "choice",
    "attribute": "attribution", "design_columns": "design",
    "ablate": "ablation", "ablation_summary": "ablation", "robustness_variants": "ablation",
    "ABLATION_COLUMNS": "ablation", "ITEM_COLUMNS": "ablation",
    "sign_flip": "ablation", "holm": "ablation",
    "table4": "impact", "paper_table4": "impact", "impact_summary": "impact", "impact_statistics": "impact",
    "IMPACT_COLUMNS": "impact", "IMPACT_ITEM_COLUMNS": "impact", "TABLE4_COLUMNS": "impact",
    "PAPER_MODELS": "impact", "PAPER_AGGREGATOR": "impact",
    "Scorer": "scorers", "as_scorer": "scorers", "exact_match": "scorers", "normalized_match": "scorers",
    "numeric_match": "scorers", "answer_match": "scorers", "rouge_l": "scorers",
    "embedding_similarity": "scorers",
    "llm_judge": "judge", "judge_summary": "judge", "judge_agreement": "judge", "cohen_kappa": "judge",
    "read_judgements": "judge", "parse_verdict": "judge",
    "length_controlled_win_rate": "length",
    "quality_diversity": "papers", "gains": "papers", "similarity_vs_score": "papers", "vendi_score": "papers",
    "alpaca_eval_outputs": "papers", "alpaca_eval_leaderboard": "papers", "find_alpaca_eval": "papers",
}

_MODULES = ("scorers", "bias", "ablation", "judge", "length", "papers", "embedding", "stats", "choice",
            "attribution", "design", "text")

__all__ = sorted([*_EXPORTS, "impact", "questions", "reading", *_MODULES])


def reading(df) -> str:
    """The one-line reading of any analysis DataFrame of this package: positional bias
    (:func:`bias_summary`), the choice model (:func:`choice_summary`), impact
    (:func:`impact_summary`) or ablation (each variant against the baseline). The widgets show
    it under their charts."""
    cols = set(getattr(df, "columns", ()))
    if {"excess", "share", "chance", "measure"} <= cols:
        from .bias import bias_summary

        return bias_summary(df)
    if {"term", "coef", "odds_ratio"} <= cols:
        from .choice import choice_summary

        return choice_summary(df)
    if {"level", "factor", "aggregator", "proposers"} <= cols:
        from .impact import impact_summary

        return impact_summary(df)
    if {"variant", "score", "delta"} <= cols:
        from .ablation import ablation_reading

        return ablation_reading(df)
    raise ValueError(f"not a moakit.analysis result (columns {sorted(cols)})")


def questions():
    """The shipped question set (40 short factual and arithmetic questions written for moakit,
    with reference answers): a DataFrame with columns id, category, answer_type (``number`` or
    ``text``), question, reference (the canonical answer) and aliases (every accepted answer).

    Made for offline demos of Vote and the scorers on the embedded model; score it with
    ``scorers.answer_match()`` (numbers by value, text by whole-word containment)."""
    import importlib.resources
    import json

    import pandas as pd

    text = importlib.resources.files("moakit").joinpath("data/questions.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["id", "category", "answer_type", "question", "reference", "aliases"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"moakit.analysis.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f"moakit.analysis.{name}")
    raise AttributeError(f"module 'moakit.analysis' has no attribute {name!r}")


def __dir__():
    return __all__
