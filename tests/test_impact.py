"""Aggregator vs proposer impact (issue 14, item 1): the statistics on per-run rows built by
hand (no model call), the paper's Table 4 layout, input checks before any call, and the
paper design end to end on the embedded model. The simulations with known truth (false
positives, power, coverage) are in validation/cases_impact.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import moakit
from moakit.analysis import (IMPACT_COLUMNS, PAPER_MODELS, TABLE4_COLUMNS, impact, impact_statistics, impact_summary,
                             paper_table4, reading, table4)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def grid_items(seed=0, a=(0.0, 0.0, 0.0), c=(0.0, 0.0), prompts=40, u_sd=1.5):
    """Binary runs of a full grid; u (a prompt's proposal draw per proposer set) is shared by
    every aggregator."""
    rng = np.random.default_rng(seed)
    b = rng.normal(0, 1, prompts)
    u = rng.normal(0, u_sd, (prompts, len(c)))
    rows = []
    for p in range(prompts):
        for i, ai in enumerate(a):
            for j, cj in enumerate(c):
                rows.append({"aggregator": f"agg{i}", "proposers": f"set{j}", "item": p,
                             "score": float(rng.random() < sigmoid(b[p] + ai + cj + u[p, j]))})
    return pd.DataFrame(rows)


def paper_items(seed=0, a=(0.0,) * 3, c=(0.0,) * 3, prompts=40, names=None):
    rng = np.random.default_rng(seed)
    names = names or [f"m{i}" for i in range(len(a))]
    b = rng.normal(0, 1, prompts)
    rows = []
    for p in range(prompts):
        u_all = rng.normal(0, 1.5)
        for i, n in enumerate(names):
            rows.append({"arm": "aggregator", "aggregator": n, "proposers": "all", "item": p,
                         "score": float(rng.random() < sigmoid(b[p] + a[i] + u_all))})
            rows.append({"arm": "proposer", "aggregator": names[0], "proposers": n, "item": p,
                         "score": float(rng.random() < sigmoid(b[p] + a[0] + c[i] + rng.normal(0, 1.5)))})
    return pd.DataFrame(rows)


def rows(out, level, factor=None):
    sel = out["level"] == level
    if factor is not None:
        sel &= out["factor"] == factor
    return out[sel].reset_index(drop=True)


def test_grid_statistics_rows_and_debiased_effect():
    items = grid_items(a=(1.5, 0.0, 0.0), prompts=60)
    out = impact_statistics(items, n_perm=500, n_boot=200)
    assert list(out.columns) == IMPACT_COLUMNS and out.attrs["design"] == "grid"
    assert len(rows(out, "cell")) == 6 and len(rows(out, "aggregator")) == 3 and len(rows(out, "proposers")) == 2
    assert len(rows(out, "contrast", "aggregator")) == 3 and len(rows(out, "contrast", "proposers")) == 1
    assert list(rows(out, "effect")["factor"]) == ["aggregator", "proposers", "ratio"]
    # the effect: (1/K) sum_j (ybar_j^2 - var(y_.j)/P), y = a prompt's level scores centred on its own mean
    x = items.pivot_table(index="item", columns="aggregator", values="score", aggfunc="mean").to_numpy()
    y = x - x.mean(axis=1, keepdims=True)
    theta = np.mean(y.mean(axis=0) ** 2 - y.var(axis=0, ddof=1) / len(y))
    eff = rows(out, "effect", "aggregator").iloc[0]
    assert eff["score"] == pytest.approx(math.sqrt(max(theta, 0)))
    raw_sd = float(np.sqrt(np.mean((x.mean(axis=0) - x.mean()) ** 2)))
    assert eff["score"] < raw_sd  # the sampling variance is taken out of the spread
    assert eff["p_value"] < 0.05 and eff["ci_low"] > 0 and eff["ci_low"] <= eff["score"] <= eff["ci_high"]
    # level means are the per-prompt marginal means; contrasts their differences
    lv = rows(out, "aggregator").set_index("aggregator")["score"]
    assert lv.to_numpy() == pytest.approx(x.mean(axis=0))
    con = rows(out, "contrast", "aggregator")
    assert con["score"].tolist() == pytest.approx([lv[r.aggregator] - lv[r.versus] for r in con.itertuples()])


def test_every_interval_agrees_with_its_test():
    seen = set()
    for seed in range(12):
        out = impact_statistics(grid_items(seed, a=(0.6 * (seed % 3), 0.0, 0.0), prompts=30), n_perm=300, n_boot=0)
        con = rows(out, "contrast")
        excl = (con["ci_low"] > 0) | (con["ci_high"] < 0)
        assert (excl == (con["p_value"] < 0.05)).all()
        eff = rows(out, "effect")
        eff = eff[eff["factor"] != "ratio"]
        assert ((eff["ci_low"] > 0) == (eff["p_value"] < 0.05)).all()
        # the global p of a factor is its smallest adjusted contrast p (one max-t distribution)
        for f in ("aggregator", "proposers"):
            assert eff.set_index("factor").loc[f, "p_value"] == pytest.approx(
                rows(out, "contrast", f)["p_value"].min())
        seen |= set(excl)
    assert seen == {True, False}


def test_proposer_test_keeps_shared_proposals_together():
    """With proposals shared across aggregators (large u) and no proposer effect, the test must
    permute whole prompts' proposer rows: permuting within (prompt, aggregator) blocks rejected
    about a fifth of such datasets."""
    rejected = 0
    for seed in range(40):
        out = impact_statistics(grid_items(seed, a=(0.0, 0.0, 0.0, 0.0), c=(0.0,) * 3, prompts=20, u_sd=2.5),
                                n_perm=200, n_boot=0)
        rejected += rows(out, "effect", "proposers").loc[0, "p_value"] < 0.05
    assert rejected <= 5  # 40 x 0.05 = 2 expected; a per-block permutation gives about 9


def test_ratio_is_labelled_and_bounded_only_with_a_clear_proposer_effect():
    strong = impact_statistics(paper_items(1, a=(0.0, 1.5, 3.0), c=(0.0, 1.0, 2.0), prompts=80),
                               n_perm=300, n_boot=300)
    r = rows(strong, "effect", "ratio").iloc[0]
    assert "moakit's own" in r["ci_method"] and math.isnan(r["p_value"])
    assert 0 < r["ci_low"] <= r["score"] <= r["ci_high"] < math.inf
    a, p = (rows(strong, "effect", f).loc[0, "score"] for f in ("aggregator", "proposers"))
    assert r["score"] == pytest.approx(a / p)
    none = impact_statistics(paper_items(2, a=(0.0, 1.5, 3.0), c=(0.0, 0.0, 0.0), prompts=40), n_perm=300, n_boot=300)
    assert rows(none, "effect", "ratio").loc[0, "ci_high"] == math.inf


def test_paper_design_statistics_and_table4_layout():
    names = ["dbrx-instruct", "qwen1.5-110b-chat", "my-model"]
    out = impact_statistics(paper_items(3, a=(0.0, 1.0, 0.0), names=names), n_perm=300, n_boot=200)
    assert out.attrs["design"] == "paper"
    assert set(rows(out, "aggregator")["arm"]) == {"aggregator"} and set(rows(out, "proposers")["arm"]) == {"proposer"}
    assert (rows(out, "aggregator")["proposers"] == "all").all()
    assert (rows(out, "proposers")["aggregator"] == "dbrx-instruct").all()
    t = table4(out)
    assert list(t.columns) == TABLE4_COLUMNS
    # the paper's models first, in the paper's order; the paper's figures beside moakit's
    assert list(t["model"]) == ["qwen1.5-110b-chat", "dbrx-instruct", "my-model"]
    assert list(t["paper_model"][:2]) == ["Qwen1.5-110B-Chat", "dbrx-instruct"] and pd.isna(t["paper_model"][2])
    assert t.loc[0, "paper_as_aggregator"] == 61.3 and t.loc[1, "paper_as_proposer"] == 55.1
    agg = rows(out, "aggregator").set_index("aggregator")
    assert t.loc[0, "as_aggregator"] == pytest.approx(100 * agg.loc["qwen1.5-110b-chat", "score"])
    assert table4(out, scale=1).loc[0, "as_aggregator"] == pytest.approx(agg.loc["qwen1.5-110b-chat", "score"])
    with pytest.raises(ValueError, match="design='paper'"):
        table4(impact_statistics(grid_items(), n_perm=50, n_boot=0))
    text = impact_summary(out)
    assert text == reading(out) and "aggregator effect SD" in text and "moakit" in text


def test_paper_table4_figures():
    t = paper_table4()
    assert list(t["model"]) == ["Qwen1.5-110B-Chat", "Qwen1.5-72B-Chat", "WizardLM-2-8x22B", "LLaMA-3-70B-Instruct",
                                "Mixtral-8x22B-Instruct-v0.1", "dbrx-instruct"]
    assert t["as_aggregator"].tolist() == [61.3, 59.3, 52.9, 45.0, 48.4, 41.5]
    assert t["as_proposer"].tolist() == [56.7, 53.3, 63.8, 60.6, 54.8, 55.1]
    from moakit.models import ALIASES

    assert all(m in ALIASES for m in PAPER_MODELS)


def test_impact_statistics_rejects_bad_rows():
    items = grid_items()
    with pytest.raises(ValueError, match="columns"):
        impact_statistics(items.drop(columns=["proposers"]))
    with pytest.raises(ValueError, match="arm"):
        impact_statistics(items.assign(arm="elsewhere"))
    with pytest.raises(ValueError, match="every aggregator x proposers cell"):
        impact_statistics(items[~((items["aggregator"] == "agg0") & (items["proposers"] == "set1"))])
    bad = paper_items()
    bad.loc[bad["arm"] == "proposer", "aggregator"] = np.where(bad.loc[bad["arm"] == "proposer", "item"] % 2, "x", "y")
    with pytest.raises(ValueError, match="one aggregator"):
        impact_statistics(bad)


def test_impact_refuses_bad_input_before_any_call(tmp_path):
    store = tmp_path / "never.db"
    kw = dict(scorer=lambda o: 1.0, models="local", store=store)
    with pytest.raises(ValueError, match="design"):
        impact(["a"], {"s": ["b"]}, ["q"], design="table4", **kw)
    with pytest.raises(ValueError, match="proposer_sets"):
        impact(["x"], ["a", "b"], ["q"], **kw)
    with pytest.raises(ValueError, match="aggregators"):
        impact("x", {"s": ["a"]}, ["q"], **kw)
    with pytest.raises(ValueError, match="layers"):
        impact(prompts=["q"], design="paper", layers=1, **kw)
    with pytest.raises(ValueError, match="samples of itself"):
        impact(["a"], [["b", "c"]], ["q"], design="paper", **kw)
    with pytest.raises(ValueError, match="build"):
        impact(["a"], {"s": ["b"]}, ["q"], build=lambda a, p: [], layers=3, **kw)
    with pytest.raises(ValueError, match="prompts"):
        impact(["a"], {"s": ["b"]}, **kw)
    with pytest.raises(moakit.ModelError):  # the paper's models without a key: refused before the first call
        impact(prompts=["q"], design="paper", scorer=lambda o: 1.0, store=store)
    assert moakit.TraceStore(store).calls().empty


# ---- on the embedded model ---------------------------------------------------------------------------
@pytest.mark.slow
def test_paper_design_on_the_embedded_model(tmp_path):
    from moakit.analysis import questions, scorers

    qs = questions().iloc[[0, 22]]
    store = moakit.TraceStore(tmp_path / "paper.db")
    out, items = impact(["m-a", "m-b"], prompts=qs, design="paper", samples=2, scorer=scorers.embedding_similarity("tfidf"),
                        models="local", store=store, max_tokens=8, seed=0, progress=False, n_boot=100, n_perm=100,
                        items=True)
    assert out.attrs["design"] == "paper" and out.attrs["fixed_aggregator"] == "m-a" and out.attrs["layers"] == 2
    assert set(items["arm"]) == {"aggregator", "proposer"} and len(items) == 2 * 4
    cells = rows(out, "cell")
    # per prompt, 12 calls: 3 per cell. The two proposals of the full set are paid once and replayed for the
    # second aggregator and as sample 0 of each model's own pair: at least 4 replays (more when the tiny
    # model happens to write identical texts, which makes an aggregation request identical too)
    assert (cells["calls_paid"] + cells["calls_reused"]).sum() == 2 * 12 and cells["calls_reused"].sum() >= 2 * 4
    calls = store.calls()
    first_samples = calls[(calls["step"] == "Propose") & (calls["sample"] == 0)]
    assert first_samples.groupby("agent")["cached"].sum().to_dict() == {"m-a": 2 * 2, "m-b": 2 * 2}
    runs = store.runs()
    assert set(runs["pipeline"]) == {"aggregator m-a | all", "aggregator m-b | all", "proposer m-a x2 | m-a",
                                     "proposer m-b x2 | m-a"}
    t = table4(out)
    assert list(t["model"]) == ["m-a", "m-b"] and t["as_aggregator"].notna().all() and t["as_proposer"].notna().all()
    assert t["paper_model"].isna().all()


@pytest.mark.slow
def test_grid_on_the_embedded_model_reuses_proposals(tmp_path):
    from moakit.analysis import questions, scorers

    qs = questions().iloc[[0, 22, 30]]
    store = moakit.TraceStore(tmp_path / "impact.db")
    out = impact(["agg-a", "agg-b"], {"set1": ["p1", "p2"], "set2": ["p3", "p4"]}, qs,
                 scorer=scorers.embedding_similarity("tfidf"), models="local", store=store, max_tokens=12, seed=0,
                 progress=False, n_boot=200, n_perm=200)
    cells = rows(out, "cell")
    assert len(cells) == 4 and set(zip(cells["aggregator"], cells["proposers"])) == {
        ("agg-a", "set1"), ("agg-a", "set2"), ("agg-b", "set1"), ("agg-b", "set2")}
    # proposals are made once per set and replayed for the second aggregator
    assert cells["calls_paid"].sum() == 3 * 4 * 3 - 12 and cells["calls_reused"].sum() == 12
    eff = rows(out, "effect").set_index("factor")
    for f in ("aggregator", "proposers"):
        assert eff.loc[f, "score"] >= 0 and eff.loc[f, "ci_low"] <= eff.loc[f, "score"] <= eff.loc[f, "ci_high"]
        assert 0 < eff.loc[f, "p_value"] <= 1
    # differently named agents on the one embedded model are different samples
    calls = store.calls()
    props = calls[(calls["step"] == "Propose") & ~calls["cached"]]
    assert len(props) == 12 and (props.groupby("trace_id")["output"].nunique() == 2).sum() >= 4
