"""Issue 17: ``moakit.estimate`` before any call, checked against what the run then pays.

Priced models on the **stub** server (moakit.testing.stub_server, an OpenAI-compatible process
that is not a model: its answers are hashes of the request, its token counts are word counts):
prices are registered through litellm's public ``register_model`` for the stub's model names,
and litellm's local price map prices every call the stub answers."""

from __future__ import annotations

import math

import pytest

import moakit
from moakit import Shuffle
from moakit.llm.pricing import price, tokenizer_for
from moakit.models import ModelSpec
from moakit.pipelines import together_moa
from moakit.runner.estimate import ESTIMATE_COLUMNS
from moakit.testing.stub_server import StubServer

PRICES = {"moakit-test-priced-a": (1e-6, 4e-6), "moakit-test-priced-b": (3e-6, 1.2e-5)}
PROMPTS = [f"Question {i}: what is {i} times {i + 1}?" for i in range(8)]


@pytest.fixture(scope="module")
def stub():
    import litellm

    for name, (i, o) in PRICES.items():
        litellm.register_model({f"openai/{name}": {"input_cost_per_token": i, "output_cost_per_token": o,
                                                   "litellm_provider": "openai", "mode": "chat"}})
    with StubServer() as s:
        yield s


@pytest.fixture
def models(stub):
    # the aggregator on the dearer model: a per-agent price difference the estimate must follow
    return {"*": stub.model("moakit-test-priced-a"), "qwen1.5-110b-chat": stub.model("moakit-test-priced-b")}


def test_estimate_on_a_half_cached_batch_is_exact_in_calls_and_close_in_dollars(tmp_path, stub, models):
    path = tmp_path / "est.db"
    first = moakit.run_batch(together_moa, PROMPTS[:4], models=models, seed=3, store=path, cache=True,
                             progress=False)
    assert first["error"].isna().all() and first["calls_paid"].sum() == 4 * 19
    before = stub.stats()["requests"]
    est = moakit.estimate(together_moa, PROMPTS, models=models, seed=3, cache=path)
    assert stub.stats()["requests"] == before, "an estimate makes no call"
    assert list(est.columns) == [c for c in ESTIMATE_COLUMNS if c != "variant"]
    assert len(est) == 19  # one row per step and agent (the aggregator's agent also synthesizes: another step)
    t = est.attrs["totals"]
    df = moakit.run_batch(together_moa, PROMPTS, models=models, seed=3, store=path, cache=True, progress=False)
    assert df["error"].isna().all()
    # calls paid and reused: exact, in total and per step and agent
    assert (t["calls_paid"], t["calls_reused"]) == (int(df["calls_paid"].sum()), int(df["calls_reused"].sum()))
    assert (t["calls_paid"], t["calls_reused"]) == (76, 76)
    calls = moakit.TraceStore(path).calls(list(df["trace_id"]))
    actual = calls.groupby(["step_index", "agent"]).agg(paid=("cached", lambda c: int((~c).sum())),
                                                         reused=("cached", "sum"))
    for r in est.itertuples():
        a = actual.loc[(r.step_index, r.agent)]
        assert (r.calls_paid, r.calls_reused) == (a["paid"], a["reused"]), (r.step_index, r.agent)
    # what is exact: the cached half entirely, and the uncached half's proposals (their prompt is the query)
    props = est[est["step"] == "Propose"]
    assert props["exact"].all() and (props["keys_exact"] == 8).all()
    later = est[est["step"] != "Propose"]
    assert (~later["exact"]).all() and (later["keys_exact"] == 4).all()
    # dollars within 20% of what the run paid; never above the worst case
    paid = float(df["cost_usd"].sum())
    err = (t["cost_usd"] - paid) / paid
    print(f"\nestimate ${t['cost_usd']:.6f} vs paid ${paid:.6f}: error {100 * err:+.1f}% "
          f"(${t['cost_usd'] - paid:+.6f}); worst case ${t['cost_usd_max']:.6f}")
    assert abs(err) <= 0.20
    assert t["cost_usd_max"] >= paid
    # the dearer aggregator is priced as such
    agg = est[est["step"] == "Aggregate"].iloc[0]
    assert agg["model"] == "openai/moakit-test-priced-b" and agg["priced"]
    # how the numbers were obtained is said
    assert all("estimated with cl100k_base" in h and "billed/counted" in h for h in est["input_tokens_how"])
    assert all(h.startswith("mean of") for h in est["output_tokens_how"])
    assert est.attrs["summary"].startswith("152 calls: 76 to pay, 76 reused from the cache (100 exact, 52 estimated")


def test_estimate_of_an_ablation_counts_what_variants_share(tmp_path, models):
    path = tmp_path / "abl.db"
    moakit.TraceStore(path)
    variants = {"base": together_moa, "shuffle": [*together_moa[:-1], Shuffle(), together_moa[-1]]}
    est = moakit.estimate(variants, PROMPTS[:3], models=models, seed=0, cache=path, repeats=2)
    per = est.groupby("variant")[["calls_paid", "calls_reused"]].sum()
    # nothing cached: base pays all 19 calls per prompt and repeat; the shuffle variant reuses the
    # 18 upstream calls base will have paid and pays for its aggregator only (estimated keys)
    assert per.loc["base"].tolist() == [3 * 2 * 19, 0] and per.loc["shuffle"].tolist() == [3 * 2, 3 * 2 * 18]
    summary, items = moakit.analysis.ablate(variants, PROMPTS[:3], scorer=lambda out: 1.0, models=models, seed=0,
                                            store=path, repeats=2, items=True, progress=False, n_boot=0)
    paid = items.groupby("variant")["calls_paid"].sum()
    assert paid.to_dict() == {"base": 114, "shuffle": 6}


def test_run_batch_and_ablate_show_the_estimate_first(tmp_path, models, capsys):
    path = tmp_path / "show.db"
    df = moakit.run_batch(together_moa, PROMPTS[:2], models=models, seed=1, store=path, progress=False,
                          estimate=True)
    out = capsys.readouterr().out
    assert out.startswith("moakit estimate (before any call): 38 calls: 38 to pay")
    assert df.attrs["estimate"].attrs["totals"]["calls_paid"] == int(df["calls_paid"].sum()) == 38
    moakit.analysis.ablate({"base": together_moa}, PROMPTS[:2], scorer=lambda out: 1.0, models=models, seed=1,
                           store=path, progress=False, n_boot=0, estimate=True)
    assert "moakit estimate (before any call): 38 calls: 0 to pay, 38 reused" in capsys.readouterr().out


def test_unpriced_models_and_no_history_are_said_so(tmp_path, stub):
    est = moakit.estimate(together_moa, "one query", models={"*": stub.model("moakit-unpriced")}, seed=1)
    assert not est["priced"].any() and math.isnan(est.attrs["totals"]["cost_usd"])
    assert "unknown (a model has no price in litellm's map)" in est.attrs["summary"]
    assert set(est["output_tokens_how"]) == {"max_tokens (no recorded calls: an upper bound)"}
    assert (est["output_tokens"] == est["output_tokens_max"]).all()
    # the embedded model is free; keys need no API key: nothing is called
    local = moakit.estimate(together_moa, "one query", models="local", seed=1)
    assert local["priced"].all() and local.attrs["totals"]["cost_usd"] == 0.0
    gpt = moakit.estimate(moakit.pipelines.self_moa, "q", seed=1)  # gpt-4.1, whose key is not set here
    assert gpt.attrs["totals"]["calls_paid"] == 7 and gpt.attrs["totals"]["cost_usd"] > 0


def test_tokenizer_labels_and_prices():
    assert tokenizer_for("openai/gpt-4")[1:] == ("cl100k_base (the model's tokenizer)", True)
    assert tokenizer_for("deepseek/deepseek-chat")[1:] == ("litellm's deepseek tokenizer", True)
    # a Llama tokenizer would be downloaded from a hub: counted with cl100k_base and said so
    assert tokenizer_for("together_ai/meta-llama/Llama-3-70b-chat-hf") == ("", "estimated with cl100k_base", False)
    assert price(ModelSpec("local/smollm2")).cost(1000, 1000) == 0.0
    assert price(ModelSpec("openai/moakit-never-priced")) is None


def test_bad_input_fails_before_anything(tmp_path):
    with pytest.raises(moakit.PipelineError, match="prompts is empty"):
        moakit.estimate(together_moa, [], models="local")
    with pytest.raises(moakit.PipelineError, match="repeats > 1 needs a seed"):
        moakit.estimate(together_moa, ["q"], models="local", repeats=2)
    with pytest.raises(moakit.PipelineError, match="cache= takes the store"):
        moakit.estimate(together_moa, ["q"], models="local", cache=True)
    with pytest.raises(moakit.PipelineError, match="not a moakit step"):
        moakit.estimate([object()], ["q"], models="local")
