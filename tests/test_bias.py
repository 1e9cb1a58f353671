"""Positional bias (issue 13): position, agent and length told apart; tests that hold their level.

The scenario tests run the real engine -> client -> HTTP path against the stub server's
scripted models (``moakit.testing.scripted``), whose behaviour is known: proposers writing
random pseudo-words, aggregators that copy a position, prefer one agent's content, or blend
every answer equally. The statistical properties (false-positive rates, coverage, power over
hundreds of datasets) are checked by ``python -m validation.run --full --only positional_bias``
(VALIDATION.md); here each property is checked once, on data where the answer is known.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import ALPACA, needs_alpaca

import moakit
from moakit import Aggregate, Dropout, Map, Propose, Rank, Sample, Shuffle, Synthesize

PROMPTS = [f"stub question {i}" for i in range(80)]
PROPOSE = Propose(["a", "b", "c", "d"])


def scripted(stub, *, d="scripted-propose-12@d", **aggregators):
    """``models=`` for proposers a, b, c (12 pseudo-words each), d as given, and aggregators."""
    models = {a: stub.model(f"scripted-propose-12@{a}") for a in "abc"}
    return {**models, "d": stub.model(d), **{k: stub.model(v) for k, v in aggregators.items()}}


def _row(df, **kw):
    sub = df
    for k, v in kw.items():
        sub = sub[sub[k] == v]
    assert len(sub) == 1, (kw, sub)
    return sub.iloc[0]


# ---- attribution ----------------------------------------------------------------------------------
def test_attribution_counts_distinctive_content_not_length():
    from moakit.analysis import attribute

    short = [f"alpha{i} beta{i} gamma{i} delta{i} eps{i} zeta{i} eta{i} theta{i}" for i in range(3)]
    long = " ".join(f"w{i}" for i in range(60))
    shown = short + [long]
    copy = attribute(short[1] + " and some words of its own", shown)
    assert copy.source == 1 and copy.shares[1] == 1.0 and copy.reason == "attributed"
    # an equal blend: six words from each, the long answer no more than the others
    blend = " ".join(" ".join(t.split()[:6]) for t in shown)
    eq = attribute(blend, shown)
    assert eq.source is None and eq.reason == "no majority source"
    assert max(eq.shares) - min(eq.shares) < 1e-9 and len(set(eq.hits)) == 1
    # content every answer shares says nothing about which one was used
    common = "the answer is forty two"
    assert attribute(common, [f"{common} {t}" for t in short]).reason == "no distinctive content"
    assert attribute("too short", shown).reason == "output too short"
    with pytest.raises(ValueError, match="dominance"):
        attribute(blend, shown, dominance=1.5)


# ---- the design --------------------------------------------------------------------------------
def test_design_follows_each_runs_steps(stub, tmp_path):
    from moakit.analysis import design_columns

    store = moakit.TraceStore(tmp_path / "design.db")
    models = scripted(stub, **{x: "scripted-copypos-1-0" for x in ("s1", "s2", "s3", "s4", "agg")},
                      m="scripted-propose-12")
    variants = {
        "layers": [PROPOSE, Shuffle(), Synthesize(["s1", "s2"]), Synthesize(["s3", "s4"]), Aggregate("agg")],
        "shuffle_dropout": [PROPOSE, Shuffle(), Dropout(0.3), Aggregate("agg")],
        "dropout": [PROPOSE, Dropout(0.3), Aggregate("agg")],
        "sample": [PROPOSE, Sample(3), Aggregate("agg")],
        "self_moa": [Propose(["m"] * 4), Aggregate("agg")],
        "mapped": [PROPOSE, Shuffle(), Map(str.upper), Aggregate("agg")],
    }
    for name, pipe in variants.items():
        moakit.run_batch(pipe, PROMPTS[:3], seed=7, store=store, models=models, progress=False, cache=True, name=name)
    d = design_columns(store.aggregation_inputs(), store)
    design = d.groupby(["variant", "step_index"])["design"].agg(set).to_dict()
    assert design == {("layers", 2): {"shuffled"}, ("layers", 3): {"fixed"}, ("layers", 4): {"fixed"},
                      ("shuffle_dropout", 3): {"shuffled"}, ("dropout", 2): {"fixed"}, ("sample", 2): {"shuffled"},
                      ("self_moa", 1): {"exchangeable"}, ("mapped", 3): {"shuffled"}}
    assert (d["randomized"] == d["design"].isin(["shuffled", "exchangeable"])).all()
    # after Map the shown text is not the producing call's output: the store recorded the hash of
    # the text shown (and the Map step stored that text), so attribution reads what was shown
    mapped = d["variant"] == "mapped"
    assert d["shown_known"].all()
    assert (d.loc[mapped, "shown_text"] == d.loc[mapped, "source_text"].str.upper()).all()
    assert (d.loc[mapped, "shown_text"] != d.loc[mapped, "source_text"]).all()
    assert (d.loc[~mapped, "shown_text"] == d.loc[~mapped, "source_text"]).all()
    # one item per prompt across variants, one repeat per seed
    assert d.groupby("item")["variant"].nunique().eq(len(variants)).all() and d["item"].nunique() == 3
    assert d.groupby("item")["repeat"].nunique().eq(1).all()
    off = design_columns(store.aggregation_inputs(), store, exchangeable=False)
    assert set(off.loc[off["variant"] == "self_moa", "design"]) == {"fixed"}
    from moakit.analysis import bias_inputs

    rows = bias_inputs(store)  # the copier copied position 1 as shown (upper-cased): attributed to it
    assert set(rows.loc[rows["variant"] == "mapped", "status"]) == {"attributed"}
    # a frame without the shown texts (an older file's): after Map they are unknown, never guessed
    old = design_columns(store.aggregation_inputs().drop(columns=["shown_text"]), store)
    assert not old.loc[old["variant"] == "mapped", "shown_known"].any()
    assert old.loc[old["variant"] != "mapped", "shown_known"].all()


def _copied_share(store, variant, agent):
    """The share of a variant's aggregate calls whose output is agent's answer verbatim."""
    inputs = store.aggregation_inputs()
    runs = store.runs().set_index("trace_id")["pipeline"]
    inputs = inputs[inputs["trace_id"].map(runs).fillna("") == variant] if variant else inputs
    copied = inputs[inputs["output"] == inputs["source_text"]]
    return (copied["source_agent"] == agent).sum() / inputs["span_id"].nunique()


# ---- the three scenarios of the issue --------------------------------------------------------------
@pytest.fixture(scope="module")
def pooled(stub, tmp_path_factory):
    """An aggregator preferring agent d's content (q = 0.6), no position preference, run as an
    ablation runs variants: base, Shuffle and Dropout in one store."""
    store = moakit.TraceStore(tmp_path_factory.mktemp("bias") / "pooled.db")
    models = scripted(stub, d="scripted-propose-12-star@d", agg="scripted-copymark-star-0.6")
    for name, pipe in {"base": [PROPOSE, Aggregate("agg")], "shuffle": [PROPOSE, Shuffle(), Aggregate("agg")],
                       "dropout": [PROPOSE, Dropout(0.3), Aggregate("agg")]}.items():
        moakit.run_batch(pipe, PROMPTS, seed=1, store=store, models=models, progress=False, cache=True, name=name)
    return store


def test_agent_preference_over_pooled_variants_is_found_by_agent_not_by_position(pooled):
    from moakit.analysis import BIAS_COLUMNS, positional_bias

    pos = positional_bias(pooled)
    assert list(pos.columns) == BIAS_COLUMNS
    assert pos.groupby("variant")["randomized"].first().to_dict() == {"base": False, "shuffle": True, "dropout": False}
    shuffled = pos[pos["variant"] == "shuffle"]
    assert (shuffled["p_value"] > 0.05).all() and ((shuffled["ci_low"] <= 0) & (shuffled["ci_high"] >= 0)).all()
    assert pos.loc[~pos["randomized"], "p_value"].isna().all()  # no position p-value where nothing was randomized
    # Dropout moves agents between positions, yet keeps their order: it separates nothing
    assert _row(pos, variant="dropout", position=1)["cramers_v"] < 0.9 and _row(pos, variant="base", position=1)[
        "cramers_v"] == pytest.approx(1.0)
    lines = dict(line.split(",", 1) for line in pos.attrs["reading"].splitlines())
    assert "no position effect detected" in lines["shuffle"]
    assert "never randomized" in lines["base"] and "never randomized" in lines["dropout"]

    by_agent = positional_bias(pooled, by="agent")
    d = _row(by_agent, variant="shuffle", agent="d")
    assert d["p_value"] < 0.01 and d["ci_low"] > 0.3
    # attribution recovers what the aggregator did (its copies are verbatim): the share of calls
    # that copied d's answer, whose expectation is 0.6 + 0.4 / 4 (this seed's draw: 66 of 80)
    assert d["share"] == _copied_share(pooled, "shuffle", "d")
    assert "agent d is drawn on beyond chance" in by_agent.attrs["reading"]
    assert by_agent.loc[~by_agent["randomized"], "p_value"].isna().all()


def test_copying_position_1_after_shuffle_is_found(stub, tmp_path):
    from moakit.analysis import positional_bias, reading

    store = moakit.TraceStore(tmp_path / "pos.db")
    moakit.run_batch([PROPOSE, Shuffle(), Aggregate("agg")], PROMPTS, seed=1, store=store, progress=False,
                     models=scripted(stub, agg="scripted-copypos-1-0.6"))
    df = positional_bias(store)
    top = _row(df, position=1)
    assert top["randomized"] and top["chance"] == pytest.approx(0.25) and top["n"] == 80
    assert top["p_value"] < 0.01 and top["ci_low"] > 0.3
    inputs = store.aggregation_inputs()  # what the aggregator did: copies verbatim, here of position 1
    assert top["share"] == ((inputs["output"] == inputs["source_text"]) & (inputs["position"] == 1)).sum() / 80
    assert (df[df["position"] > 1]["excess"] < 0).all()  # the others lose what position 1 wins
    block = df.attrs["blocks"][0]
    assert block["test"]["method"].startswith("randomization") and block["test"]["p_value"] < 0.01
    assert reading(df) == df.attrs["reading"] and "position 1 is drawn on beyond chance" in reading(df)


def test_equal_blend_with_one_long_source_is_credited_to_no_one(stub, tmp_path):
    from moakit.analysis import positional_bias, scorers

    store = moakit.TraceStore(tmp_path / "blend.db")
    moakit.run_batch([PROPOSE, Shuffle(), Aggregate("agg")], PROMPTS, seed=1, store=store, progress=False,
                     models=scripted(stub, d="scripted-propose-36@d", agg="scripted-blend-6"))
    # the trap is in the data: containment (ROUGE-L precision) credits the long answer
    inputs = store.aggregation_inputs()
    best = inputs.assign(c=[scorers.rouge_l_scores(o, s)[0] for o, s in zip(inputs["output"], inputs["source_text"])])
    long_wins = best.loc[best.groupby("span_id")["c"].idxmax(), "source_agent"].eq("d").mean()
    assert long_wins > 0.5
    for by in ("agent", "position"):
        df = positional_bias(store, by=by)
        assert df.empty
        (block,) = df.attrs["blocks"]
        assert block["picked"] == 0 and block["status"] == {"unattributed: no majority source": 80}
        assert "no call could be attributed to one source" in df.attrs["reading"]


# ---- more of the design ---------------------------------------------------------------------------
def test_rank_kept_positions_and_unparsed_replies(stub, tmp_path):
    from moakit.analysis import positional_bias

    store = moakit.TraceStore(tmp_path / "rank.db")
    models = scripted(stub, ranker="scripted-rankpos-1-0.5", junk="scripted-propose-5")  # junk: no ranking in it
    moakit.run_batch([PROPOSE, Shuffle(), Rank("ranker", n=1)], PROMPTS, seed=3, store=store, models=models,
                     progress=False)
    moakit.run_batch([PROPOSE, Shuffle(), Rank("junk", n=2)], PROMPTS[:10], seed=3, store=store, models=models,
                     progress=False, name="junk")
    df = positional_bias(store)
    assert set(df["measure"]) == {"kept"} and set(df["variant"]) == {"Propose>Shuffle>Rank"}
    top = _row(df, position=1)
    assert top["chance"] == pytest.approx(0.25) and top["ci_low"] <= 0.5 <= top["ci_high"] and top["p_value"] < 0.01
    assert df.attrs["excluded"] == {"Rank reply not parsed (or no choice recorded)": 10}


def test_self_moa_samples_are_exchangeable_not_tangled(stub, tmp_path):
    from moakit.analysis import positional_bias

    store = moakit.TraceStore(tmp_path / "self.db")
    moakit.run_batch([Propose(["m"] * 4), Aggregate("agg")], PROMPTS, seed=2, store=store, progress=False,
                     models={"m": stub.model("scripted-propose-12"), "agg": stub.model("scripted-copypos-1-0.5")})
    df = positional_bias(store)
    assert df["randomized"].all() and set(df["design"]) == {"exchangeable"} and df["cramers_v"].isna().all()
    assert _row(df, position=1)["p_value"] < 0.01 and "tangled" not in df.attrs["reading"]
    fixed = positional_bias(store, exchangeable=False)
    assert not fixed["randomized"].any() and fixed["p_value"].isna().all()
    assert "single source agent" in fixed.attrs["reading"]
    by_agent = positional_bias(store, by="agent")
    assert list(by_agent["agent"]) == ["m"] and math.isnan(by_agent["excess"].iloc[0])  # one agent: nothing to compare


def test_sources_agree(pooled):
    from moakit.analysis import bias_inputs, positional_bias

    a = positional_bias(pooled)
    b = positional_bias(pooled.aggregation_inputs(), store=pooled)
    c = positional_bias(bias_inputs(pooled))
    cols = ["variant", "position", "n", "share", "excess", "ci_low", "ci_high", "p_value"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    pd.testing.assert_frame_equal(a[cols], c[cols])


def test_a_rerun_from_the_cache_counts_once(stub, tmp_path):
    from moakit.analysis import positional_bias

    store = moakit.TraceStore(tmp_path / "rerun.db")
    kw = dict(seed=4, store=store, progress=False, cache=True, name="shuffle",
              models=scripted(stub, agg="scripted-copypos-1-0.5"))
    moakit.run_batch([PROPOSE, Shuffle(), Aggregate("agg")], PROMPTS[:30], **kw)
    once = positional_bias(store)
    again = moakit.run_batch([PROPOSE, Shuffle(), Aggregate("agg")], PROMPTS[:30], **kw)
    assert again["calls_paid"].sum() == 0
    twice = positional_bias(store)
    pd.testing.assert_frame_equal(once, twice)
    assert twice.attrs["excluded"] == {"repeats an earlier run (same variant, item and seed)": 30}


# ---- inference on simulated frames -------------------------------------------------------------------
def test_calls_shown_one_list_share_one_permutation():
    """Six calls of a Synthesize layer shown one shuffled list are one draw of the design:
    copying each call six times within its run leaves the estimate unchanged and the interval
    and the test as uncertain as one call's, where six independent runs would be six times the
    evidence."""
    from validation.cases_bias import shuffled_aggregate

    from moakit.analysis import positional_bias

    one = shuffled_aggregate(np.random.default_rng(5), items=40, p_pos=0.25)
    copies = [one.assign(span_id=one["span_id"] + f"-{k}", agent=f"s{k}") for k in range(6)]
    layer = pd.concat(copies)
    independent = pd.concat([c.assign(item=c["item"] + c["agent"], trace_id=c["trace_id"] + c["agent"])
                             for c in copies])
    a, b, c = (positional_bias(f, draws=499, seed=3) for f in (one, layer, independent))
    assert np.allclose(a["excess"], b["excess"]) and np.allclose(a["excess"], c["excess"])
    width = [(r["ci_high"] - r["ci_low"]).mean() for r in (a, b, c)]
    assert width[1] >= 0.9 * width[0] and width[2] <= 0.6 * width[0]
    p = [r.attrs["blocks"][0]["test"]["p_value"] for r in (a, b, c)]
    assert p[2] < p[1] / 10  # six independent runs: far stronger evidence than one run's six calls


def test_intervals_and_tests_agree():
    from validation.cases_bias import shuffled_aggregate

    from moakit.analysis import positional_bias

    seen = set()
    for i, (p, q) in enumerate([(0.0, 0.0), (0.15, 0.0), (0.0, 0.2), (0.1, 0.1), (0.2, 0.2)]):
        df = shuffled_aggregate(np.random.default_rng(i), items=120, p_pos=p, q_agent=q)
        for by in ("position", "agent"):
            res = positional_bias(df, by=by, draws=499, seed=i)
            excludes = (res["ci_low"] > 0) | (res["ci_high"] < 0)
            assert (excludes == (res["p_value"] <= 0.05)).all(), res
            seen |= set(excludes)
    assert seen == {True, False}  # both outcomes were met


def test_choice_model_terms_and_what_it_cannot_separate():
    from validation.cases_bias import Frame, answer, copy_of

    from moakit.analysis import CHOICE_COLUMNS, choice_model, reading

    rng = np.random.default_rng(11)
    f = Frame()
    for i in range(300):
        lengths = rng.integers(6, 41, 4)
        props = [answer(rng, w) for w in lengths]
        for variant in ("shuffle", "base"):
            order = list(rng.permutation(4)) if variant == "shuffle" else [0, 1, 2, 3]
            agents, shown = ["abcd"[j] for j in order], [props[j] for j in order]
            util = np.array([(-1.0 if k == 1 else 0.0) + (1.0 if agents[k] == "a" else 0.0)
                             + 0.7 * math.log1p(len(shown[k].split())) for k in range(4)])
            pick = int(rng.choice(4, p=np.exp(util) / np.exp(util).sum()))
            f.call(trace=f"{variant}{i}", step="Aggregate", step_index=2, aggregator="agg", agents=agents, shown=shown,
                   output=copy_of(rng, shown[pick]), randomized=variant == "shuffle", variant=variant, item=f"q{i}")
    frame = f.frame()
    cm = choice_model(frame, variant="shuffle")
    assert list(cm.columns) == CHOICE_COLUMNS
    coef = {(r.term, r.level): r for r in cm.itertuples()}
    pos2 = coef[("position", "2")]
    assert pos2.ci_low <= -1.0 <= pos2.ci_high and pos2.p_holm < 0.05
    assert coef[("agent", "b")].ci_high < 0 and coef[("agent", "b")].reference == "a"  # a is preferred to b
    assert coef[("log_length", "")].ci_low <= 0.7 <= coef[("log_length", "")].ci_high
    assert coef[("log_length", "")].odds_ratio == pytest.approx(2 ** coef[("log_length", "")].coef)
    assert cm.attrs["fits"][0]["converged"] and "doubling a response's length" in reading(cm)
    # on fixed-order calls agent and position are the same thing: the agent terms are dropped, and said so
    both = choice_model(frame, calls="all")
    base = both[both["variant"] == "base"]
    assert set(base["term"]) == {"position", "log_length"}
    assert "dropped as not separable" in both.attrs["reading"]
    assert choice_model(frame, variant="shuffle", terms=("position",))["term"].eq("position").all()


# ---- bad input -------------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly(pooled):
    from moakit.analysis import choice_model, positional_bias

    with pytest.raises(ValueError, match="by must be"):
        positional_bias(pooled, by="colour")
    with pytest.raises(ValueError, match="draws must be"):
        positional_bias(pooled, draws=5)
    with pytest.raises(ValueError, match="no variant"):
        positional_bias(pooled, variant="nope")
    with pytest.raises(TypeError, match="TraceStore"):
        positional_bias(42)
    with pytest.raises(ValueError, match="lack"):
        positional_bias(pd.DataFrame({"trace_id": ["t"], "position": [1]}))
    with pytest.raises(ValueError, match="terms"):
        choice_model(pooled, terms=("colour",))
    with pytest.raises(ValueError, match="Rank"):
        choice_model(pooled, steps=("Rank",))
    bare = pooled.aggregation_inputs().drop(columns=["randomized", "shuffle_step"])
    with pytest.warns(UserWarning, match="randomized"):
        df = positional_bias(bare)  # no store, no design columns: nothing counts as randomized
    assert not df["randomized"].any() and df["p_value"].isna().all()
    empty = positional_bias(bare.iloc[:0], store=pooled)
    assert empty.empty and empty.attrs["reading"] == "no aggregating calls to analyse"


# ---- AlpacaEval outputs as proposals ---------------------------------------------------------------
@needs_alpaca()
@pytest.mark.slow
def test_alpaca_outputs_as_proposals_positional_bias_of_embedded_aggregator(tmp_path):
    from moakit.analysis import BIAS_COLUMNS, positional_bias

    generators = ["Qwen1.5-72B-Chat", "Meta-Llama-3-70B-Instruct", "Mixtral-8x22B-Instruct-v0.1"]
    store = moakit.TraceStore(tmp_path / "alpaca.db")
    outputs = {}
    for g in generators:
        assert store.import_outputs(ALPACA / g / "model_outputs.json", agent=g) > 700
        rows = json.loads((ALPACA / g / "model_outputs.json").read_text())
        outputs[g] = {r["instruction"]: r["output"] for r in rows}
    # the few dozen prompts whose three answers are shortest keep the embedded aggregator quick
    common = set.intersection(*(set(o) for o in outputs.values()))
    prompts = sorted(common, key=lambda q: sum(len(outputs[g][q]) for g in generators))[:24]
    pipe = [Propose(generators), Shuffle(), Aggregate("smol-aggregator", max_tokens=24)]
    df = moakit.run_batch(pipe, prompts, seed=0, store=store, cache=True, models={"smol-aggregator": "local"},
                          progress=False)
    assert df["error"].isna().all()
    assert (df["calls_reused"] == 3).all() and (df["calls_paid"] == 1).all()  # proposals came from the import
    bias = positional_bias(store, draws=499)
    assert list(bias.columns) == BIAS_COLUMNS and set(bias["position"]) <= {1, 2, 3}
    (block,) = bias.attrs["blocks"]
    assert block["randomized"] and block["calls"] == 24 and sum(block["status"].values()) == 24
    assert ((bias["ci_low"] <= bias["excess"]) & (bias["excess"] <= bias["ci_high"])).all()
    by_agent = positional_bias(store, by="agent", draws=499)
    assert set(by_agent["agent"]) <= set(generators)
