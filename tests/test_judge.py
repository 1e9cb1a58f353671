"""The pairwise LLM judge (issue 14, item 2): verdicts read, not first mentions; unreadable
replies missing and counted, never 0.5; diagnostics as columns; both orders; every reference
used; structured output where supported; agreement of two judges.

The end-to-end tests run the real moakit -> litellm path against ``judgebot``, a litellm custom
provider registered here whose replies are scripted by model name."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pandas as pd
import pytest

import moakit
from moakit.analysis import judge as J

SEEN: list[dict] = []  # optional params of every judgebot request (to see response_format)


def _shown(messages) -> tuple[str, str]:
    text = messages[-1]["content"]
    a = text.split("# Output (a)\n", 1)[1].split("\n\n# Output (b)", 1)[0]
    b = text.split("# Output (b)\n", 1)[1].split("\n\n# Your verdict", 1)[0]
    return a, b


def judgebot_reply(model: str, messages: list[dict], params: dict) -> str:
    """``content``: prefers the output containing "correct", says so in a sentence that names
    (a) first; ``first``: always "Output (a)"; ``garbage``: never a verdict; ``longer``: prefers
    the longer output; ``json``: JSON when asked through response_format, else prose."""
    name = model.split("/", 1)[-1]
    a, b = _shown(messages)
    if name == "first":
        return "Output (a)"
    if name == "garbage":
        return "Both outputs have merits and I cannot decide."
    pick = ("a" if len(a) >= len(b) else "b") if name == "longer" else ("a" if "correct" in a else "b")
    if name == "json" and "response_format" in params:
        return json.dumps({"better": pick})
    return f"Between Output (a) and Output (b), ({pick}) is better."


@pytest.fixture(scope="module")
def judgebot():
    import litellm
    from litellm import CustomLLM
    from litellm.types.utils import ModelResponse

    if not any(p.get("provider") == "judgebot" for p in litellm.custom_provider_map):
        class Bot(CustomLLM):
            async def acompletion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                                  encoding, api_key, logging_obj, optional_params, *args, **kwargs):
                SEEN.append(dict(optional_params))
                text = judgebot_reply(model, messages, optional_params)
                return ModelResponse(model=model, created=int(time.time()), choices=[
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})

        litellm.custom_provider_map = [*litellm.custom_provider_map, {"provider": "judgebot", "custom_handler": Bot()}]
    return True


def bot(behaviour: str, store, **kw):
    return J.llm_judge("judge", models={"judge": f"judgebot/{behaviour}"}, store=store, **kw)


OUTPUTS = ["the correct answer", "a wrong answer", "another correct one", "nope"]
REFS = ["a reference", "the correct reference", "some reference", "the correct one"]
PROMPTS = ["q1", "q2", "q3", "q4"]


# ---- reading verdicts -------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, want", [
    ("Between Output (a) and Output (b), (b) is better.", "b"),  # the example: not the first mention
    ("Output (a) is detailed, but Output (b) is clearly the better one.", "b"),
    ("Output (b) is not better than Output (a).", "a"),
    ("Output (a) is worse.", "b"),
    ("I prefer Output (b).", "b"),
    ("Verdict: Output (a)", "a"),
    ("Output (b)", "b"),
    ("(a)", "a"),
    ("B.", "b"),
    ('{"better": "b"}', "b"),
    ('Here you go: {"verdict": "Output (a)"}', "a"),
    ("Output (b)\n\nExplanation: it is shorter.", "b"),
    ("Output (a) is longer than Output (b).", None),  # mentions, no verdict
    ("Both are equally good: a tie.", None),
    ("I think a good answer needs more detail.", None),  # the article "a" is not a label
    ("", None),
    (None, None),
])
def test_parse_verdict_reads_the_verdict(reply, want):
    assert J.parse_verdict(reply) == want


def test_read_judgements_unreadable_is_missing_and_counted_never_a_tie():
    replies = pd.DataFrame({"reply_ab": ["Output (a)", "Output (a)", "no idea", None],
                            "reply_ba": ["Output (b)", "Output (a)", "Output (b)", "Output (b)"]})
    r = J.read_judgements(replies)
    assert r["score"].iloc[0] == 1.0  # won both orders
    assert r["score"].iloc[1] == 0.5 and not r["consistent"].iloc[1]  # followed the position
    assert math.isnan(r["score"].iloc[2]) and math.isnan(r["score"].iloc[3])  # never 0.5
    assert list(r["parse_failures"]) == [0, 0, 1, 0] and list(r["call_failures"]) == [0, 0, 0, 1]
    assert r["consistent"].isna().tolist() == [False, False, True, True]
    assert r["win_output_second"].iloc[2] == 1.0  # the readable order is kept for the per-order rates
    with pytest.raises(ValueError, match="reply_ba"):
        J.read_judgements(pd.DataFrame({"reply_ab": ["x"]}))


# ---- the judge end to end ---------------------------------------------------------------------------
def test_judge_reads_verdict_sentences_both_orders_traced_and_cached(judgebot, tmp_path):
    store = moakit.TraceStore(tmp_path / "judge.db")
    j = bot("content", store)
    assert j.score_many(OUTPUTS, REFS, PROMPTS) == [1.0, 0.0, 1.0, 0.0]
    d = j.last_details
    assert list(d.columns) == J.JUDGEMENT_COLUMNS
    assert d["consistent"].all() and (d["parse_failures"] == 0).all()
    assert list(d["output_length"]) == [len(o) for o in OUTPUTS]
    assert (store.runs()["pipeline"] == "llm_judge").sum() == 8  # 4 items x 2 orders
    before = len(store.calls())
    j.score_many(OUTPUTS, REFS, PROMPTS)
    assert store.calls().tail(len(store.calls()) - before)["cached"].all()  # a rerun pays nothing


def test_position_following_judge_is_diagnosed(judgebot, tmp_path):
    j = bot("first", tmp_path / "j.db")
    d = j.judgements(OUTPUTS, REFS, PROMPTS)
    s = J.judge_summary(d).iloc[0]
    assert list(J.judge_summary(d).columns) == J.SUMMARY_COLUMNS
    assert s["win_rate"] == 0.5 and s["inconsistent"] == 1.0
    assert s["win_rate_output_first"] == 1.0 and s["win_rate_output_second"] == 0.0
    assert s["p_first"] == 1.0 and s["p_first_ci_low"] > 0.5 and s["p_first_p_value"] < 0.05
    fair = J.judge_summary(bot("content", tmp_path / "j.db").judgements(OUTPUTS, REFS, PROMPTS)).iloc[0]
    assert fair["p_first"] == 0.5 and fair["p_first_p_value"] > 0.5 and fair["inconsistent"] == 0.0


def test_unreadable_replies_are_nan_and_counted(judgebot, tmp_path):
    j = bot("garbage", tmp_path / "j.db")
    scores = j.score_many(OUTPUTS, REFS, PROMPTS)
    assert all(math.isnan(s) for s in scores)  # not 0.5
    s = J.judge_summary(j.last_details).iloc[0]
    assert s["parse_failures"] == 8 and s["parse_failure_rate"] == 1.0 and s["n_scored"] == 0
    assert math.isnan(s["win_rate"])


def test_every_reference_of_a_list_is_used(judgebot, tmp_path):
    j = bot("content", tmp_path / "j.db")
    scores = j.score_many(["the correct answer"], [["a plain reference", "the correct reference", "plain again"]],
                          ["q"])
    d = j.last_details
    # against a plain reference the output wins both orders; against a "correct" one the bot
    # sees "correct" in whatever is shown as (a) and follows the position: 0.5
    assert list(d["reference_index"]) == [0, 1, 2] and list(d["score"]) == [1.0, 0.5, 1.0]  # judged against all
    assert scores == [pytest.approx(2.5 / 3)]  # the item's score averages them


def test_longer_preferring_judge_gives_lengths_and_lc_frame(judgebot, tmp_path):
    from moakit.analysis import length_controlled_win_rate

    outs = ["x" * (10 + 7 * i) for i in range(12)]
    refs = ["y" * 40] * 12
    d = bot("longer", tmp_path / "j.db").judgements(outs, refs, [f"q{i}" for i in range(12)])
    assert (d["score"] == (d["output_length"] >= d["reference_length"]).astype(float)).all()
    lc = length_controlled_win_rate(d)
    assert lc["n"].iloc[0] == 12 and lc["output_length"].iloc[0] == pytest.approx(sum(map(len, outs)) / 12)


def test_structured_output_passes_response_format_and_is_parsed(judgebot, tmp_path):
    SEEN.clear()
    j = bot("json", tmp_path / "j.db", structured=True)
    assert j.uses_structured_output()
    assert j.score_many(OUTPUTS, REFS, PROMPTS) == [1.0, 0.0, 1.0, 0.0]
    assert SEEN and all(p.get("response_format") == J.VERDICT_SCHEMA for p in SEEN)
    assert j.last_details["structured"].all() and j.last_details["reply_ab"].str.startswith("{").all()
    assert "JSON object" in j.messages("q", "x", "y")[-1]["content"]
    # the text judge asks differently, so its requests never collide with the JSON ones in the cache
    SEEN.clear()
    text = bot("json", tmp_path / "j.db", structured=False)
    assert text.score_many(OUTPUTS, REFS, PROMPTS) == [1.0, 0.0, 1.0, 0.0]
    assert len(SEEN) == 8 and not any("response_format" in p for p in SEEN)


def test_structured_auto_is_off_for_the_embedded_and_unknown_models(judgebot):
    assert not J.llm_judge(models="local").uses_structured_output()
    assert not bot("content", None).uses_structured_output()  # litellm does not know judgebot's models


def test_bad_input_fails_before_any_call(judgebot, tmp_path):
    from moakit import ModelError

    path = tmp_path / "bad.db"
    j = bot("content", path)
    with pytest.raises(ValueError, match="reference"):
        j.score_many(OUTPUTS)
    with pytest.raises(ValueError, match="4 outputs but 3 references"):
        j.score_many(OUTPUTS, REFS[:3], PROMPTS)
    with pytest.raises(TypeError, match="not a string"):
        j.score_many(["x"], [[1]], ["q"])
    with pytest.raises(ModelError):
        J.llm_judge("judge", models={"judge": "no-such-model"}, store=path).score_many(["x"], ["y"], ["q"])
    with pytest.raises(ValueError, match="structured"):
        J.llm_judge(structured="yes")
    with pytest.raises(ValueError, match="template"):
        J.llm_judge(template="no placeholders")
    assert not path.exists() or (moakit.TraceStore(path).runs().empty)


# ---- agreement --------------------------------------------------------------------------------------
def test_cohen_kappa_known_values():
    k = J.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0])
    assert k["agreement"] == 0.75 and k["kappa"] == pytest.approx(0.5)  # po .75, pe .5
    k = J.cohen_kappa([1, 0] * 20, [1, 0] * 20)
    assert k["kappa"] == 1.0 and k["n"] == 40
    k = J.cohen_kappa([1, None, 0, 1], [1, 0, float("nan"), 1])
    assert k["dropped"] == 2 and k["n"] == 2
    with pytest.raises(ValueError, match="3 labels against 2"):
        J.cohen_kappa([1, 0, 1], [1, 0])


def test_cohen_kappa_interval_and_test_agree():
    import numpy as np

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 300)
    a = np.where(rng.random(300) < 0.8, truth, rng.integers(0, 2, 300))
    b = np.where(rng.random(300) < 0.8, truth, rng.integers(0, 2, 300))
    k = J.cohen_kappa(a, b, clusters=np.arange(300) // 2)
    assert k["ci_low"] < k["kappa"] < k["ci_high"] and k["ci_low"] > 0 and k["p_value"] < 0.05
    null = J.cohen_kappa(a, rng.integers(0, 2, 300))
    assert null["ci_low"] < 0 < null["ci_high"] and null["p_value"] >= 0.05


def test_judge_agreement_is_about_content_not_position(judgebot, tmp_path):
    outs = [("the correct answer " if i % 2 else "a wrong answer ") + str(i) for i in range(30)]
    refs = [("plain reference " if i % 3 else "the correct reference ") + str(i) for i in range(30)]
    prompts = [f"q{i}" for i in range(30)]
    content = bot("content", tmp_path / "j.db").judgements(outs, refs, prompts)
    same = J.judge_agreement(content, content).iloc[0]
    assert same["kappa"] == 1.0 and same["agreement"] == 1.0
    first = bot("first", tmp_path / "j.db").judgements(outs, refs, prompts)
    vs = J.judge_agreement(content, first).iloc[0]
    assert list(J.judge_agreement(content, first).columns) == J.AGREEMENT_COLUMNS
    assert vs["ci_low"] < 0.2 and vs["kappa"] < 0.2 and vs["n"] == 60
    with pytest.raises(ValueError, match="not a judgements frame"):
        J.judge_agreement(content, pd.DataFrame({"item": [0]}))


def test_summary_by_variant(judgebot, tmp_path):
    j = bot("content", tmp_path / "j.db")
    both = pd.concat([j.judgements(OUTPUTS, REFS, PROMPTS).assign(variant="v1"),
                      j.judgements(OUTPUTS[::-1], REFS, PROMPTS).assign(variant="v2")])
    s = J.judge_summary(both, by="variant")
    assert list(s["variant"]) == ["v1", "v2"] and list(s.columns[1:]) == J.SUMMARY_COLUMNS
    with pytest.raises(ValueError, match="not a column"):
        J.judge_summary(both, by="nope")
    assert re.search("win_rate", " ".join(s.columns))


def test_percentile_interval_agrees_with_its_p_value_at_ties():
    from moakit.analysis.stats import percentile_interval

    for draws in ([0.0] * 3 + [1.0] * 97, [0.0] * 2 + [1.0] * 98, [-1.0] * 30 + [0.0] * 40 + [1.0] * 30,
                  list(np.linspace(-0.1, 2, 1000))):
        lo, hi, p = percentile_interval(draws)
        assert (p < 0.05) == (not lo <= 0 <= hi), draws[:5]
