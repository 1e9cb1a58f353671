from moakit.prompts import MIXTURE_LLM, TOGETHER, TOGETHER_AGGREGATE


def test_paper_prompt_text():
    assert TOGETHER_AGGREGATE.startswith(
        "You have been provided with a set of responses from various open-source models to the latest user query. "
        "Your task is to synthesize these responses into a single, high-quality response.")
    assert TOGETHER_AGGREGATE.endswith("Responses from models:")


def test_together_layout_matches_reference_code():
    query = [{"role": "user", "content": "Explain MoA"}]
    msgs = TOGETHER.aggregate_messages(query, ["first answer", "second answer"])
    # system message before the user turn; the user turn is the original query
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1] == {"role": "user", "content": "Explain MoA"}
    # numbered "\n1. ...", "\n2. ..." right after "Responses from models:", no model names
    assert msgs[0]["content"] == TOGETHER_AGGREGATE + "\n1. first answer\n2. second answer"
    assert query == [{"role": "user", "content": "Explain MoA"}]  # caller's list untouched


def test_together_appends_to_existing_system_message():
    query = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]
    msgs = TOGETHER.aggregate_messages(query, ["a"])
    assert len(msgs) == 2
    assert msgs[0]["content"] == "Be brief.\n\n" + TOGETHER_AGGREGATE + "\n1. a"
    assert query[0]["content"] == "Be brief."


def test_mixture_llm_layout_puts_responses_in_user_message():
    msgs = MIXTURE_LLM.aggregate_messages([{"role": "user", "content": "Q?"}], ["a", "b"])
    assert msgs[0]["role"] == "system" and "Responses:" not in msgs[0]["content"]
    assert msgs[1]["content"] == "Responses:\n1. a\n\n2. b\n\nQuery: Q?"


def test_rank_and_refine_prompts():
    q = [{"role": "user", "content": "Q?"}]
    rank = TOGETHER.rank_messages(q, ["x", "y", "z"], 2)[0]["content"]
    assert "for the query: 'Q?'" in rank and "1. x\n\n2. y\n\n3. z" in rank and "top 2" in rank
    refine = TOGETHER.refine_messages(q, "draft")[0]["content"]
    assert refine == "Improve this response:\n\ndraft\n\nOriginal query: Q?"


def test_mixture_llm_prompts_match_the_installed_library():
    import pytest

    core = pytest.importorskip("mixture_llm.core")
    from moakit import prompts

    assert prompts.MIXTURE_SYNTH == core.P_SYNTH
    assert prompts.MIXTURE_REFINE == core.P_REFINE
    assert prompts.MIXTURE_VOTE == core.P_VOTE
    assert prompts.MIXTURE_RANK == core.P_RANK
