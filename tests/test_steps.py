import pytest

from moakit import pipelines
from moakit.errors import PipelineError
from moakit.steps import (Aggregate, Dropout, Filter, Map, Propose, Rank, Refine, Sample, Shuffle, Synthesize, Take,
                          Vote, pipeline_from_json, pipeline_to_json, validate_pipeline)


def test_reference_page_signatures():
    p = Propose(pipelines.PROPOSERS, temp=0.7, max_tokens=512)
    assert p.agents == tuple(pipelines.PROPOSERS) and p.temp == 0.7 and p.max_tokens == 512
    assert Aggregate("qwen1.5-110b-chat").agent == "qwen1.5-110b-chat"
    assert Rank("m", n=3).n == 3 and Dropout(0.2).p == 0.2
    assert Refine(["gpt-5.2-chat-latest"]).agents == ("gpt-5.2-chat-latest",)
    assert Vote("m").agents == ("m",)


@pytest.mark.parametrize("make, fragment", [
    (lambda: Propose([]), "agent list is empty"),
    (lambda: Synthesize(["a", ""]), "non-empty model name"),
    (lambda: Dropout(1.5), "Dropout: p must be in [0, 1)"),
    (lambda: Dropout(1.0), "Dropout: p must be in [0, 1)"),
    (lambda: Dropout(-0.1), "Dropout: p must be in [0, 1)"),
    (lambda: Rank("m", n=0), "Rank: n must be an integer >= 1"),
    (lambda: Take(0), "Take: n must be"),
    (lambda: Sample(-2), "Sample: n must be"),
    (lambda: Propose(["a"], temp=5), "temp must be"),
    (lambda: Aggregate("a", max_tokens=0), "max_tokens must be"),
    (lambda: Filter("not callable"), "fn must be callable"),
])
def test_invalid_steps_fail_at_construction(make, fragment):
    with pytest.raises(PipelineError, match=None) as e:
        make()
    assert fragment in str(e.value)


def test_invalid_pipelines():
    with pytest.raises(PipelineError, match="empty"):
        validate_pipeline([])
    with pytest.raises(PipelineError, match="not a moakit step"):
        validate_pipeline([Propose(["a"]), "Aggregate"])
    with pytest.raises(PipelineError, match="first step must be Propose"):
        validate_pipeline([Shuffle(), Propose(["a"])])


def test_steps_are_frozen():
    p = Propose(["a"])
    with pytest.raises(Exception):
        p.temp = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("name", list(pipelines.ALL))
def test_pipeline_json_round_trip(name):
    p = pipelines.ALL[name]
    assert pipeline_from_json(pipeline_to_json(p)) == p


def test_filter_map_cannot_be_rebuilt_from_json():
    data = pipeline_to_json([Propose(["a"]), Map(str.upper)])
    with pytest.raises(PipelineError, match="Map"):
        pipeline_from_json(data)


def test_call_counts_of_the_page_and_the_paper():
    assert pipelines.count_calls(pipelines.together_moa) == 19  # the page: one Synthesize more
    assert pipelines.count_calls(pipelines.together_moa_paper) == 13  # the paper's 3 layers
    assert pipelines.count_calls(pipelines.moa_lite) == 13
    assert pipelines.count_calls(pipelines.self_moa) == 7
    assert pipelines.count_calls(pipelines.self_moa_seq) == 8
    assert pipelines.count_calls(pipelines.rank_aggregate) == 7
    assert pipelines.count_calls(pipelines.refine_pipeline) == 7
