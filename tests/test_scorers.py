"""Scorers (issue 14, item 5): answer_match scores the stated answer, not any mention; the
TF-IDF fallback warns and fits its idf once per reference set; ROUGE-L tokenizes every script."""

from __future__ import annotations

import math
import warnings

import pytest

from moakit.analysis import scorers as S


# ---- answer_match ---------------------------------------------------------------------------------
@pytest.mark.parametrize("output, reference, want", [
    ("Canberra is the capital.", "Canberra", 1.0),
    ("It could be Sydney, Melbourne or Canberra.", "Canberra", 0.0),  # a list of candidates: the first counts
    ("Sydney, Melbourne or Canberra", "Sydney", 1.0),
    ("Sure!\nCanberra.", "Canberra", 1.0),  # an opener line is not the answer
    ("The proposals say Sydney or Perth. The answer is Canberra.", "Canberra", 1.0),  # the marker's answer
    ("The proposals say Canberra or Perth. The answer is Sydney.", "Canberra", 0.0),
    ("I think it is Washington, D.C.", "Washington, D.C.", 1.0),  # a reference with a comma in it
    ("Romeo and Juliet, by Shakespeare.", "Romeo and Juliet", 1.0),  # "and" is not a separator
    ("It is the Pacific Ocean, by far.", "Pacific Ocean", 1.0),
    ("The answer is twelve.", "12", 1.0),
    ("7 + 5 = 12", "12", 1.0),  # numbers: the last one stated
    ("Maybe 12, maybe 13", "12", 0.0),
    ("The answer is 12 (since 7 + 5 = 12), not 13.", "12", 1.0),  # the number right after the marker
    ("Answer: 11. Final answer: 12", "12", 1.0),  # the last marker for numbers
])
def test_answer_match_scores_the_stated_answer(output, reference, want):
    assert S.answer_match()(output, reference) == want


def test_answer_match_first_or_last_is_configurable():
    text = "Paris, Lyon or Marseille"
    assert S.answer_match("first")(text, "Paris") == 1.0 and S.answer_match("first")(text, "Marseille") == 0.0
    assert S.answer_match("last")(text, "Marseille") == 1.0 and S.answer_match("last")(text, "Paris") == 0.0
    assert S.answer_match("first")("Maybe 12, maybe 13", "12") == 1.0
    assert S.answer_match("last").name == "answer_match[last]" and S.answer_match().name == "answer_match"
    with pytest.raises(ValueError, match="which"):
        S.answer_match("any")


def test_listing_candidates_earns_nothing_a_plain_answer_would_not():
    """The bias of the old scorer: an aggregator that lists every proposer's answer was always right."""
    ans = S.answer_match()
    listed = ["Sydney, Melbourne, Perth or Canberra", "Perth, Canberra or Sydney", "Canberra, Sydney or Perth"]
    assert [ans(t, "Canberra") for t in listed] == [0.0, 0.0, 1.0]


def test_answer_segment():
    assert S.answer_segment("So the answer is Paris. Done.") == "Paris"
    assert S.answer_segment("answer: 3.5 apples. Next", "first") == "3.5 apples"
    assert S.answer_segment("no marker here") is None


# ---- ROUGE-L tokenization -------------------------------------------------------------------------
def test_tokenize_unicode_scripts():
    assert S.tokenize("Hello, World_x 3.5") == ["hello", "world", "x", "3", "5"]  # ASCII: rouge-score's tokens
    assert S.tokenize("Café crème") == ["café", "crème"]
    assert S.tokenize("Cafe\u0301") == ["café"]  # a decomposed accent stays inside its word (NFKC)
    assert S.tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # vowel signs are marks, not separators
    assert S.tokenize("我喜欢猫") == ["我", "喜", "欢", "猫"]  # no spaces: one token per character
    assert S.tokenize("東京タワーは高い") == list("東京タワーは高い")


def test_rouge_l_on_chinese_is_character_level():
    # one shared character of four: with sentence-sized tokens this was 0 (or 1 for equal strings)
    assert S.rouge_l()("我喜欢猫", "我讨厌狗") == pytest.approx(0.25)
    assert S.rouge_l()("我喜欢猫", "我喜欢狗") == pytest.approx(0.75)


# ---- embedding similarity: TF-IDF fallback ---------------------------------------------------------
def test_auto_backend_warns_when_it_falls_back(monkeypatch):
    from moakit.analysis import embedding

    monkeypatch.setattr(embedding, "minilm_available", lambda: False)
    with pytest.warns(UserWarning, match="TF-IDF"):
        e = S.embedding_similarity()
    assert e.name == "embedding[tfidf]"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.embedding_similarity("tfidf")  # an explicit choice does not warn


def test_tfidf_score_does_not_depend_on_the_other_outputs_of_the_batch():
    e = S.embedding_similarity("tfidf")
    refs = ["Paris is the capital of France", "The Nile is a river in Africa"]
    alone = e.score_many(["the capital of France is Paris", "a river"], refs)
    # same references, very different companions: the first output's score must not move
    crowd = e.score_many(["the capital of France is Paris", "capital capital capital France France"], refs)
    assert alone[0] == pytest.approx(crowd[0])
    # the idf is fitted on the references: a word in every reference weighs less than a rare one
    model = e.tfidf_model(refs)
    assert model.idf["is"] < model.idf["paris"]


def test_tfidf_fixed_corpus_and_single_calls_agree_with_batches():
    corpus = ["the cat sat", "the dog ran", "a bird flew"]
    e = S.embedding_similarity("tfidf", corpus=corpus)
    one = e("the cat ran", "the cat sat")
    many = e.score_many(["the cat ran", "completely unrelated"], ["the cat sat", "the dog ran"])
    assert one == pytest.approx(many[0]) and 0 < one < 1
    assert e("no shared words", "the cat sat") == 0.0
    sims = e.score_many(["yellow bananas", None], [["red apples", "yellow bananas"], "x"])
    assert sims[0] == pytest.approx(1.0) and math.isnan(sims[1])  # a list of references: the best counts


def test_embedding_score_many_checks_its_input():
    e = S.embedding_similarity("tfidf")
    with pytest.raises(ValueError, match="reference"):
        e.score_many(["a"])
    with pytest.raises(ValueError, match="1 outputs but 2"):
        e.score_many(["a"], ["b", "c"])


def test_judge_names_come_from_the_judge_module_and_the_analysis_package():
    # scorers no longer re-exports the judge (judge.py imports scorers: the import ran in a circle)
    from moakit import analysis
    from moakit.analysis import judge

    assert analysis.llm_judge is judge.llm_judge and analysis.parse_verdict is judge.parse_verdict
    with pytest.raises(AttributeError):
        S.llm_judge  # noqa: B018
