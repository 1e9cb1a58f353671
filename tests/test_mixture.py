"""Issue 17: mixture-llm code runs unchanged in moakit.

1. The reference page's code, with its ``from mixture_llm import ...`` line, builds pipelines of
   mixture_llm's own step objects; ``moakit.run`` (and run_batch, ablate, estimate) accept them,
   converted by their fields, and moakit.mixture never imports mixture_llm.
2. ``mixture_llm.run(pipeline, query, moakit.mixture_client(...))`` records one call span per call
   under a run span, with what each aggregating call was shown; replay and the analyses read it.

Calls go to the **stub** server (moakit.testing.stub_server, an OpenAI-compatible process that
answers with a hash of the request: not a model)."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import mixture_llm
import pytest

import moakit
from moakit import pipelines as P
from moakit.steps import pipeline_to_json, validate_pipeline

ROOT = Path(__file__).resolve().parents[1]
QUERY = "Why do mixtures of agents help?"


def page_code() -> dict:
    """The page's pipelines as its code writes them: moakit/pipelines.py's page section (a copy
    of the page) with the page's own import line, ``from mixture_llm import ...``."""
    src = (ROOT / "moakit" / "pipelines.py").read_text()
    src = src.split("# ---- paper-faithful variants")[0]
    line = next(ln for ln in src.splitlines() if ln.startswith("from .steps import"))
    src = src.replace(line, line.replace("from .steps import", "from mixture_llm import"))
    assert "from mixture_llm import Aggregate, Dropout, Propose, Rank, Refine, Shuffle, Synthesize, Vote" in src
    ns: dict = {}
    exec(compile(src, "mixture-llm-pipelines-page", "exec"), ns)
    return ns


@pytest.fixture
def models(stub):
    # every agent its own model name on the stub, so proposers give different answers
    names = {a for p in P.PAGE for s in P.get(p) if s.calls_llm for a in s.agents}
    return {a: stub.model(a) for a in names}


def test_the_pages_code_with_mixture_llm_imports_runs_in_moakit(tmp_path, models):
    page = page_code()
    assert type(page["together_moa"][0]) is mixture_llm.Propose
    for name in P.PAGE:
        pipe = page[name]
        converted = validate_pipeline(pipe)
        # the same pipeline as moakit's own steps: field by field (mixture-llm's default prompts -> None)
        assert pipeline_to_json(converted) == pipeline_to_json(P.get(name)), name
        r = moakit.run(pipe, QUERY, models=models, seed=1, store=tmp_path / "page.db")
        assert r.ok, (name, r.error)
        assert len(r.calls) == P.count_calls(P.get(name)) or name == "robust_moa", name  # Dropout may drop
    # the other entry points take them too
    df = moakit.run_batch(page["moa_lite"], ["a?", "b?"], models=models, seed=1, store=tmp_path / "page.db",
                          progress=False)
    assert df["error"].isna().all()
    est = moakit.estimate(page["moa_lite"], ["a?", "b?"], models=models, seed=1, cache=tmp_path / "page.db")
    assert est.attrs["totals"]["calls_reused"] == 26
    variants = moakit.analysis.robustness_variants(page["moa_lite"])
    assert [s.kind for s in variants["shuffle"]] == ["Propose", "Synthesize", "Shuffle", "Aggregate"]


def test_conversion_keeps_custom_values_and_refuses_bad_ones():
    from mixture_llm import Aggregate, Dropout, Propose, Rank

    steps = validate_pipeline([Propose(["a", "a"], temp=0.2, max_tokens=64), Rank("a", n=1, prompt="Pick {n}: "
                               "{responses} for {query}"), Aggregate("a", prompt="Merge these.")])
    assert steps[0].agents == ("a", "a") and (steps[0].temp, steps[0].max_tokens) == (0.2, 64)
    assert steps[1].n == 1 and steps[1].prompt.startswith("Pick") and steps[2].prompt == "Merge these."
    with pytest.raises(moakit.PipelineError, match=r"step 1 \(Dropout from mixture_llm.*p must be in \[0, 1\)"):
        validate_pipeline([Propose(["a"]), Dropout(1.0)])
    with pytest.raises(moakit.PipelineError, match="step 0 is .*not a moakit step"):
        validate_pipeline([object()])


def test_conversion_is_by_class_name_and_fields_without_importing_mixture_llm():
    # no module of moakit imports mixture_llm
    for path in (ROOT / "moakit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "mixture_llm" for n in names), path
    # look-alikes convert the same way, and mixture_llm is never loaded
    code = """
import sys
from typing import NamedTuple
from moakit.steps import validate_pipeline
class Propose(NamedTuple):
    agents: list
    temp: float = 0.7
    max_tokens: int = 2048
class Aggregate(NamedTuple):
    agent: str
    prompt: str = "You have been provided with responses from various models to a query. Synthesize into a single, high-quality response. Critically evaluate\u2014some may be biased or incorrect. Do not simply replicate; offer a refined, accurate reply."
    temp: float = 0.7
    max_tokens: int = 2048
steps = validate_pipeline([Propose(["x", "y"]), Aggregate("x")])
print(steps[0].kind, steps[1].kind, steps[1].prompt, "mixture_llm" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["Propose", "Aggregate", "None", "False"], out.stderr


def test_mixture_llm_run_with_moakits_client_records_one_call_span_per_call(tmp_path, stub, models):
    page = page_code()
    path = tmp_path / "client.db"
    client = moakit.mixture_client(models=models, store=path)
    answer, history = asyncio.run(mixture_llm.run(page["together_moa"], QUERY, client))
    made = [c for h in history for c in h["llm_calls"]]
    assert len(made) == 19 and not any("error" in c for c in made)
    store = moakit.TraceStore(path)
    (tid,) = client.trace_ids
    calls = store.calls(tid)
    assert len(calls) == 19 and calls["error"].isna().all() and not calls["cached"].any()
    # one run span, a span per LLM step, the calls under them with mixture-llm's token counts
    spans = store.spans(tid)
    assert (spans["kind"] == "run").sum() == 1 and (spans["kind"] == "step").sum() == 4
    steps = spans[spans["kind"] == "step"].set_index("span_id")
    assert set(calls["parent_id"]) == set(steps.index)
    assert [s for s in store.steps(tid)["step"]] == ["Propose", "Synthesize", "Synthesize", "Aggregate"]
    assert sorted(calls["input_tokens"]) == sorted(c["in_tokens"] for c in made)
    run = store.runs(tid).iloc[0]
    assert run["pipeline"] == "mixture_llm" and run["output"] == answer
    attrs = store.run_attributes(tid)
    inferred = json.loads(attrs["moakit.pipeline"])
    assert [s["kind"] for s in inferred] == ["Propose", "Synthesize", "Synthesize", "Aggregate"]
    assert inferred[0]["agents"] == list(P.PROPOSERS) and attrs["moakit.prompts"] == "mixture-llm"
    # what each aggregating call was shown: the six answers of the layer before, in order
    shown = store.aggregation_inputs(tid)
    agg = shown[shown["step"] == "Aggregate"]
    assert list(agg["source_agent"]) == list(P.PROPOSERS) and list(agg["position"]) == [1, 2, 3, 4, 5, 6]
    syn = shown[(shown["step"] == "Synthesize") & (shown["step_index"] == 1)]
    props = calls[calls["step"] == "Propose"].set_index("span_id")
    assert set(syn["source_span_id"]) == set(props.index)
    # replay: the run re-made from its trace, offline, gives the same answer
    again = moakit.replay(tid, store=path)
    assert again.output == answer and (again.calls_paid, again.calls_reused) == (0, 19)
    # moakit.run of the same code with mixture-llm's prompt set sends the same requests: all served
    same = moakit.run(page["together_moa"], QUERY, models=models, store=path, cache=True, templates="mixture-llm")
    assert same.output == answer and same.calls_paid == 0
    # and mixture_llm itself, with the cache on, pays for nothing the second time
    sent = stub.stats()["requests"]
    cached = moakit.mixture_client(models=models, store=path, cache=True)
    answer2, _ = asyncio.run(mixture_llm.run(page["together_moa"], QUERY, cached))
    assert answer2 == answer and stub.stats()["requests"] == sent
    assert store.calls(cached.trace_ids[0])["cached"].all()


def test_client_runs_refine_rank_vote_and_repeated_agents(tmp_path, stub):
    from mixture_llm import Aggregate, Propose, Rank, Refine, Vote

    path = tmp_path / "kinds.db"
    client = moakit.mixture_client(models={"*": stub.model("m")}, store=path, seed=3)
    pipe = [Propose(["m"] * 3, max_tokens=32), Refine(["m", "n"]), Rank("m", n=2), Vote("m"), Aggregate("m")]

    async def two():
        return [await mixture_llm.run(pipe, q, client) for q in ("first query", "second query")]

    results = asyncio.run(two())
    assert len(client.trace_ids) == 2
    store = moakit.TraceStore(path)
    for (answer, history), tid in zip(results, client.trace_ids):
        calls = store.calls(tid)
        assert len(calls) == sum(len(h["llm_calls"]) for h in history) == 3 + 3 + 1 + 1 + 1
        assert list(store.steps(tid)["step"]) == ["Propose", "Refine", "Rank", "Vote", "Aggregate"]
        props = calls[calls["step"] == "Propose"].sort_values("sample")
        assert list(props["sample"]) == [0, 1, 2]  # three samples of one model (Self-MoA)
        assert sorted(int(k.split(":")[1]) for k in props["request_key"]) == [0, 1, 2]
        assert store.runs(tid)["output"].iloc[0] == answer


def test_client_bad_input_fails_when_it_is_made(tmp_path):
    with pytest.raises(moakit.PipelineError, match="offline=True needs cache="):
        moakit.mixture_client(offline=True, store=tmp_path / "x.db")
    with pytest.raises(moakit.ModelError):
        moakit.mixture_client(models={"a": "no-such-model"}, store=tmp_path / "x.db")
    with pytest.raises(moakit.PipelineError, match="seed must be"):
        moakit.mixture_client(seed="1", store=tmp_path / "x.db")
