"""Issue 17: budgets (``budget_usd=``, ``max_paid_calls=``) on run, run_batch and ablate.

Priced models on the **stub** server (moakit.testing.stub_server: an OpenAI-compatible process,
not a model), prices registered through litellm's ``register_model``; the stub's request
counter says what was really sent, the trace file what was recorded."""

from __future__ import annotations

import asyncio

import pytest

import moakit
from moakit import BudgetExceeded, PipelineError
from moakit.pipelines import together_moa
from moakit.runner.budget import Budget
from moakit.testing.stub_server import StubServer

PROMPTS = [f"Budget question {i}: name {i} colours." for i in range(6)]
# The stub answers with about 10 words whatever max_tokens says; the budget reserves a call's
# whole max_tokens, so a cap near the real length keeps the worst case close to the real cost
# (with 512, one layer's worst case alone would exceed the whole batch's real cost).
CAP = 16


@pytest.fixture(scope="module")
def stub():
    import litellm

    litellm.register_model({"openai/moakit-test-budget": {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6,
                                                          "litellm_provider": "openai", "mode": "chat"}})
    with StubServer() as s:
        yield s


@pytest.fixture
def models(stub):
    return {"*": stub.model("moakit-test-budget")}


def paid_calls(path):
    c = moakit.TraceStore(path).calls()
    return c[~c["cached"]]


def test_a_batch_over_budget_pays_at_most_the_budget_loses_nothing_and_a_rerun_pays_the_rest(tmp_path, stub, models):
    # the whole batch's cost, measured on a file of its own
    full = moakit.run_batch(together_moa, PROMPTS, models=models, seed=2, store=tmp_path / "full.db", progress=False,
                            max_tokens=CAP)
    cost = float(full["cost_usd"].sum())
    assert full["error"].isna().all() and cost > 0
    path = tmp_path / "budget.db"
    budget = cost / 2
    sent = stub.stats()["requests"]
    with pytest.raises(BudgetExceeded) as info:
        moakit.run_batch(together_moa, PROMPTS, models=models, seed=2, store=path, cache=True, progress=False,
                         budget_usd=budget, max_tokens=CAP)
    e = info.value
    sent = stub.stats()["requests"] - sent
    paid = paid_calls(path)
    # no more than the budget was paid, and every call sent to the model is in the file
    assert paid["cost_usd"].sum() <= budget + 1e-12 and e.spent_usd == pytest.approx(paid["cost_usd"].sum())
    assert sent == len(paid) == e.paid_calls
    assert 0 < len(paid) < 6 * 19
    # it says what finished, and the partial DataFrame is on the exception
    df = e.partial
    stopped = df["error"].fillna("").str.startswith("BudgetExceeded")
    assert len(df) == 6 and stopped.any()
    assert f"Of 6 prompts, {int((~stopped).sum())} finished" in str(e) and "stopped by the budget" in str(e)
    assert e.budget_usd == budget and e.refused and set(e.trace_ids) == set(df.loc[stopped, "trace_id"])
    assert (df.loc[~stopped, "output"].notna()).all()
    # the rerun with a larger budget completes, paying only for the calls not paid before
    sent = stub.stats()["requests"]
    again = moakit.run_batch(together_moa, PROMPTS, models=models, seed=2, store=path, cache=True, progress=False,
                             budget_usd=cost * 10, max_tokens=CAP)
    assert again["error"].isna().all()
    assert int(again["calls_paid"].sum()) == 6 * 19 - len(paid) == stub.stats()["requests"] - sent
    assert float(paid["cost_usd"].sum()) + float(again["cost_usd"].sum()) == pytest.approx(cost)
    assert list(again["output"]) == list(full["output"])
    print(f"\nbudget ${budget:.6f} (half of ${cost:.6f}): paid ${paid['cost_usd'].sum():.6f} for {len(paid)} calls, "
          f"{int((~stopped).sum())} of 6 prompts finished; the rerun paid {int(again['calls_paid'].sum())} calls")


def test_max_paid_calls_on_run(tmp_path, stub, models):
    path = tmp_path / "calls.db"
    sent = stub.stats()["requests"]
    with pytest.raises(BudgetExceeded, match="max_paid_calls=10") as info:
        moakit.run(together_moa, PROMPTS[0], models=models, seed=1, store=path, max_paid_calls=10)
    # the 6 proposals fit; the next layer (6 calls) does not, and none of it starts
    assert stub.stats()["requests"] - sent == 6 == len(paid_calls(path))
    assert info.value.partial is None and info.value.paid_calls == 6
    runs = moakit.TraceStore(path).runs()
    assert len(runs) == 1 and "stopped by the budget: max_paid_calls=10" in runs["error"].iloc[0]
    # served from the store, calls are free: a rerun with cache needs only the 13 others
    r = moakit.run(together_moa, PROMPTS[0], models=models, seed=1, store=path, cache=True, max_paid_calls=13)
    assert r.ok and (r.calls_paid, r.calls_reused) == (13, 6)


def test_an_unpriced_model_under_budget_usd_is_refused_before_any_call(tmp_path, stub):
    sent = stub.stats()["requests"]
    with pytest.raises(PipelineError, match="litellm's price map has none .* register_model|max_paid_calls"):
        moakit.run_batch(together_moa, PROMPTS, models={"*": stub.model("moakit-unpriced")}, store=tmp_path / "u.db",
                         budget_usd=1.0, progress=False)
    assert stub.stats()["requests"] == sent
    # calls can still be budgeted by count, and the embedded model is free
    Budget(max_paid_calls=3).check_models({"a": moakit.models.ModelSpec("openai/moakit-unpriced")})
    Budget(usd=0.0).check_models({"a": moakit.models.ModelSpec("local/smollm2")})
    with pytest.raises(PipelineError, match="budget_usd must be"):
        moakit.run(together_moa, "q", models="local", budget_usd=-1)
    with pytest.raises(PipelineError, match="max_paid_calls must be"):
        moakit.run(together_moa, "q", models="local", max_paid_calls=1.5)


def test_ablate_stops_at_its_budget_with_the_rows_so_far(tmp_path, models):
    variants = {"base": together_moa, "shuffle": [*together_moa[:-1], moakit.Shuffle(), together_moa[-1]]}
    path = tmp_path / "abl.db"
    # one budget for the whole ablation: base needs 2 x 19 calls; after both prompts' proposals and
    # first syntheses (24 calls) only one more layer of 6 fits in 30
    with pytest.raises(BudgetExceeded, match="stopped in variant 'base', repeat 0; finished before it: none") as info:
        moakit.analysis.ablate(variants, PROMPTS[:2], scorer=lambda out: 1.0, models=models, seed=0, store=path,
                               progress=False, n_boot=0, max_paid_calls=30)
    items = info.value.partial
    assert list(items["variant"]) == ["base", "base"] and "score" in items.columns
    assert items["error"].fillna("").str.startswith("BudgetExceeded").any()
    assert len(paid_calls(path)) == 30
    summary = moakit.analysis.ablate(variants, PROMPTS[:2], scorer=lambda out: 1.0, models=models, seed=0,
                                     store=path, progress=False, n_boot=0, max_paid_calls=10)
    assert summary["calls_paid"].sum() == 2 * 19 + 2 - 30  # the rest: 8 base calls and 2 aggregators


def test_the_reservation_waits_for_calls_in_flight_and_never_overspends():
    """Concurrent layers against one Budget: each reserves its worst case, waits when only the
    money held by calls in flight is in the way, and the spending never passes the budget."""
    b = Budget(usd=1.0)
    b.worst_case = lambda request: (request.worst, 0)  # a request's worst case, in dollars, given

    class P:  # a CallPlan's fields the budget reads
        def __init__(self, worst):
            spec = moakit.models.ModelSpec("openai/x")
            self.request = type("Req", (), {"worst": worst, "max_tokens": 100, "spec": spec})()
            self.step_index, self.step_kind = 0, "Propose"

    async def layer(worst, real, log):
        held = await b.reserve([P(worst)])
        assert b.spent_usd + b.reserved_usd <= 1.0 + 1e-12
        await asyncio.sleep(0.01)
        b.settle(held[0], real)
        log.append(real)

    async def main():
        log: list = []
        results = await asyncio.gather(*(layer(0.4, 0.1, log) for _ in range(8)), return_exceptions=True)
        return log, results

    log, results = asyncio.run(main())
    # 0.4 worst each, 0.1 real: two start at once (0.8 held), the others wait for them and start
    # as money is released; the 8th would need 0.4 on top of 0.7 spent: refused, never started
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(log) == 7 and len(refused) == 1 and "budget_usd=$1.000000" in str(refused[0])
    assert b.spent_usd == pytest.approx(0.7) and b.reserved_usd == 0 and b.calls == 7
    with pytest.raises(BudgetExceeded):  # after the first refusal every reservation is refused
        asyncio.run(b.reserve([P(0.01)]))
