"""The MoA papers' own analyses (issue 14, item 4): Self-MoA's quality/diversity regression
with the Vendi score, gains over the best / mean / oracle proposer, MoA's Figure 4b."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from conftest import ALPACA
from moakit.analysis import papers as P


# ---- Vendi score ----------------------------------------------------------------------------------
def test_vendi_score_definition():
    assert P.vendi_score(np.eye(5)) == pytest.approx(5.0)  # orthogonal: 5 distinct items
    assert P.vendi_score(np.ones((5, 5))) == pytest.approx(1.0)  # identical: one
    two_same_one_apart = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1.0]])
    # eigenvalues of K/3 are 2/3 and 1/3: exp(entropy) = 1.89
    want = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert P.vendi_score(two_same_one_apart) == pytest.approx(want)
    stack = P.vendi_score(np.stack([np.eye(3), np.ones((3, 3))]))
    assert stack == pytest.approx([3.0, 1.0])
    with pytest.raises(ValueError, match="similarity matrix"):
        P.vendi_score(np.ones((2, 3)))


# ---- quality / diversity --------------------------------------------------------------------------
def qd_data(seed: int, diversity_effect: float, prompts: int = 40):
    """Six proposers with known quality and a style vector each (models 0-2 share one style,
    3-5 differ); configurations = every triple; the final score is the proposals' quality plus
    ``diversity_effect`` times the Vendi score of the prompt's proposals, plus noise."""
    rng = np.random.default_rng(seed)
    qual = np.array([0.2, 0.35, 0.5, 0.6, 0.7, 0.8])
    base = rng.normal(size=12)
    centres = np.stack([base * 3 + rng.normal(0, 0.3, 12) for _ in range(3)] + [rng.normal(size=12) * 3 for _ in range(3)])
    props, fins = [], []
    for p in range(prompts):
        for c in itertools.combinations(range(6), 3):
            name = "+".join(map(str, c))
            embs = np.stack([centres[m] + rng.normal(0, 1, 12) for m in c])
            u = embs / np.linalg.norm(embs, axis=1, keepdims=True)
            for m, e in zip(c, embs):
                props.append({"config": name, "prompt": p, "emb": e, "score": qual[m] + rng.normal(0, 0.1)})
            fins.append({"config": name, "prompt": p, "score": qual[list(c)].mean()
                         + diversity_effect * P.vendi_score(u @ u.T) + rng.normal(0, 0.1)})
    return pd.DataFrame(props), pd.DataFrame(fins)


def test_quality_diversity_finds_quality_not_diversity():
    props, fins = qd_data(0, diversity_effect=0.0)
    coefs, table = P.quality_diversity(props, fins, embedding="emb", per_config=True)
    assert list(coefs.columns) == P.QD_COLUMNS and list(table.columns) == P.QD_CONFIG_COLUMNS
    q = coefs.set_index("term")
    assert q.loc["quality", "ci_low"] > 0 and q.loc["quality", "p_value"] < 0.05
    assert q.loc["diversity", "ci_low"] < 0 < q.loc["diversity", "ci_high"]
    assert len(table) == 20 and (table["n_prompts"] == 40).all() and q.loc["quality", "n_configs"] == 20
    # quality is the mean proposal score of the configuration, as defined
    first = table.iloc[0]
    want = props[props["config"] == first["config"]]["score"].mean()
    assert first["quality"] == pytest.approx(want)
    assert table["diversity"].between(1, 3).all()


def test_plain_fit_is_least_squares_on_the_table_and_the_correction_changes_it():
    props, fins = qd_data(2, diversity_effect=0.0, prompts=15)
    plain, table = P.quality_diversity(props, fins, embedding="emb", errors_in_variables=False, per_config=True)
    z = lambda x: (x - x.mean()) / x.std(ddof=0)  # noqa: E731
    X = np.column_stack([np.ones(len(table)), z(table["quality"]), z(table["diversity"])])
    beta = np.linalg.lstsq(X, table["final"].to_numpy(), rcond=None)[0]
    p = plain.set_index("term")["estimate"]
    assert [p["intercept"], p["quality"], p["diversity"]] == pytest.approx(list(beta))
    corrected = P.quality_diversity(props, fins, embedding="emb").set_index("term")["estimate"]
    assert corrected["intercept"] == pytest.approx(p["intercept"])  # the correction leaves the mean alone
    assert corrected["quality"] != pytest.approx(p["quality"], rel=1e-6)


def test_quality_diversity_finds_a_diversity_effect_and_both_resamplings_run():
    props, fins = qd_data(1, diversity_effect=0.1)
    for resample in ("prompts", "configurations"):
        q = P.quality_diversity(props, fins, embedding="emb", resample=resample).set_index("term")
        assert q.loc["diversity", "ci_low"] > 0, resample  # more diverse proposals -> better final
        assert q.loc["quality", "estimate"] > 0


def test_quality_diversity_on_texts_and_without_finals():
    words = [f"w{i}" for i in range(50)]
    rng = np.random.default_rng(0)
    rows = [{"config": c, "prompt": p, "output": " ".join(rng.choice(words[: 10 if c == "narrow" else 50], 12)),
             "score": rng.random()} for c in ("narrow", "wide") for p in range(5) for _ in range(4)]
    coefs, table = P.quality_diversity(pd.DataFrame(rows), None, backend="tfidf", per_config=True)
    assert coefs["estimate"].isna().all()  # no finals: the table only
    t = table.set_index("config")
    assert t.loc["wide", "diversity"] > t.loc["narrow", "diversity"] and t.loc["wide", "proposal_length"] > 0
    with pytest.raises(ValueError, match="resample"):
        P.quality_diversity(pd.DataFrame(rows), None, resample="items")
    with pytest.raises(ValueError, match="missing column"):
        P.quality_diversity(pd.DataFrame(rows).drop(columns="score"), None)


# ---- gains ----------------------------------------------------------------------------------------
def gains_data(seed: int, final_mean: float, n: int = 80):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n):
        u = rng.normal(0, 0.5)
        for name, mu in (("a", 0.4), ("b", 0.5), ("c", 0.6), ("moa", final_mean)):
            rows.append({"prompt": p, "source": name, "score": mu + u + rng.normal(0, 0.3),
                         "output": "x" * (300 if name == "moa" else 100)})
    return pd.DataFrame(rows)


def test_gains_rows_and_per_prompt_values():
    df = gains_data(0, 0.8)
    out, per = P.gains(df, "moa", per_prompt=True)
    assert list(out.columns) == P.GAINS_COLUMNS and list(per.columns) == P.GAINS_PROMPT_COLUMNS
    r = out.set_index("comparison")
    assert set(r.index) == {"mean proposer", "best proposer", "oracle best-of-n", "proposer: a", "proposer: b",
                            "proposer: c"}
    wide = df.pivot(index="prompt", columns="source", values="score")
    assert per["gain_vs_mean"].to_numpy() == pytest.approx((wide["moa"] - wide[["a", "b", "c"]].mean(1)).to_numpy())
    assert per["oracle"].to_numpy() == pytest.approx(wide[["a", "b", "c"]].max(1).to_numpy())
    assert r.loc["mean proposer", "gain"] == pytest.approx(per["gain_vs_mean"].mean())
    sample_best = wide[["a", "b", "c"]].mean().idxmax()
    assert r.loc["best proposer", "baseline"] == sample_best and r.loc["best proposer", "ci_low"] > 0
    assert r.loc["mean proposer", "final_length"] == 300 and r.loc["mean proposer", "baseline_length"] == 100
    # the best proposer's lower bound is the smallest per-proposer t lower bound
    from scipy import stats

    d = wide["moa"].to_numpy()[:, None] - wide[["a", "b", "c"]].to_numpy()
    lows = d.mean(0) - stats.t.ppf(0.975, 79) * d.std(0, ddof=1) / math.sqrt(80)
    assert r.loc["best proposer", "ci_low"] == pytest.approx(lows.min())
    # simultaneous intervals are wider than one comparison's t interval
    assert r.loc["proposer: c", "ci_low"] < lows[2]


def test_gains_when_final_equals_the_best_and_several_finals():
    df = pd.concat([gains_data(1, 0.6), gains_data(1, 0.6).query("source == 'moa'").assign(source="self-moa")])
    out = P.gains(df, ["moa", "self-moa"])
    best = out[out["comparison"] == "best proposer"]
    assert len(best) == 2 and (best["ci_low"] < 0).all() and (best["ci_high"] > 0).all()
    assert (best["p_value"] > 0.05).all()


def test_gains_refuses_bad_input():
    df = gains_data(2, 0.5)
    with pytest.raises(ValueError, match="not among the sources"):
        P.gains(df, "nope")
    with pytest.raises(ValueError, match="two proposers"):
        P.gains(df, "moa", proposers=["a"])
    with pytest.raises(ValueError, match="at least 3"):
        P.gains(df[df["prompt"] < 2], "moa")


# ---- Figure 4b ------------------------------------------------------------------------------------
def fig4b_data(seed: int, follow: bool, prompts: int = 40):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    rows, aggs = [], {}
    for p in range(prompts):
        texts = [" ".join(rng.choice(words, 40)) for _ in range(6)]
        scores = rng.random(6)
        weights = scores / scores.sum() if follow else np.full(6, 1 / 6)
        agg = [w for t, k in zip(texts, rng.multinomial(60, weights)) for w in rng.choice(t.split(), k)]
        aggs[p] = " ".join(agg)
        rows += [{"prompt": p, "output": t, "score": s} for t, s in zip(texts, scores)]
    return pd.DataFrame(rows), aggs


def test_similarity_vs_score_finds_an_aggregator_that_follows_good_proposals():
    props, aggs = fig4b_data(0, follow=True)
    s, per = P.similarity_vs_score(props, aggs, per_prompt=True)
    assert list(s.columns) == P.FIG4B_COLUMNS and list(per.columns) == P.FIG4B_PROMPT_COLUMNS
    r = s.iloc[0]
    assert r["mean_rho"] > 0.3 and r["ci_low"] > 0 and r["p_value"] < 0.05 and r["n_prompts"] == 40
    assert r["mean_rho"] == pytest.approx(per["rho"].mean())
    rl = P.similarity_vs_score(props, aggs, similarity="rouge_l").iloc[0]
    assert rl["mean_rho"] > 0.3 and rl["similarity"] == "rouge_l"
    null = P.similarity_vs_score(*fig4b_data(1, follow=False)).iloc[0]
    assert null["ci_low"] < 0.15 and abs(null["mean_rho"]) < 0.15


def test_similarity_vs_score_precomputed_and_dropped_prompts():
    props = pd.DataFrame({"prompt": [0] * 4 + [1] * 4 + [2] * 2, "score": [1, 2, 3, 4, 1, 1, 1, 1, 1, 2],
                          "similarity": [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    s, per = P.similarity_vs_score(props, per_prompt=True)
    assert per["rho"].iloc[0] == pytest.approx(1.0)
    assert per["rho"].iloc[1:].isna().all() and s.iloc[0]["dropped"] == 2  # constant scores; two proposals
    with pytest.raises(ValueError, match="no aggregate"):
        P.similarity_vs_score(props.assign(output="x"), {0: "a"})
    with pytest.raises(ValueError, match="similarity must be"):
        P.similarity_vs_score(props.assign(output="x"), {0: "a", 1: "b", 2: "c"}, similarity="bleu")


# ---- AlpacaEval data -------------------------------------------------------------------------------
def test_find_alpaca_eval_respects_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOAKIT_ALPACA_EVAL", str(tmp_path / "absent"))
    assert P.find_alpaca_eval() is None
    with pytest.raises(FileNotFoundError):
        P.alpaca_eval_outputs()
    with pytest.raises(FileNotFoundError):
        P.find_alpaca_eval(tmp_path / "absent")


def _alpaca_dir():
    found = P.find_alpaca_eval()
    return found if found is not None else (ALPACA if ALPACA.is_dir() else None)


@pytest.mark.skipif(_alpaca_dir() is None, reason="shared AlpacaEval data not found")
def test_alpaca_eval_outputs_and_leaderboard():
    root = _alpaca_dir()
    df = P.alpaca_eval_outputs(["Together-MoA", "dbrx-instruct"], path=root, n=5)
    assert len(df) == 10 and set(df["model"]) == {"Together-MoA", "dbrx-instruct"}
    a, b = (df[df["model"] == m].sort_values("index") for m in ("Together-MoA", "dbrx-instruct"))
    assert list(a["instruction"]) == list(b["instruction"])  # the same instructions in the same order
    assert (df["length"] == df["output"].str.len()).all()
    lb = P.alpaca_eval_leaderboard(path=root).set_index("model")
    assert lb.loc["Together-MoA", "length_controlled_winrate"] == pytest.approx(65.38, abs=0.01)
    assert lb.index.is_unique


def test_gains_intervals_and_p_values_agree_even_on_small_binary_data():
    """0 lies outside the interval exactly when p < 0.05, for every row, also where a small
    bootstrap's draws tie (binary scores, a handful of prompts)."""
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 30))
        rows = [{"prompt": p, "source": s, "score": float(rng.random() < mu)} for p in range(n)
                for s, mu in (("a", 0.4), ("b", 0.5), ("c", 0.55), ("moa", rng.choice([0.3, 0.55, 0.8])))]
        g = P.gains(pd.DataFrame(rows), "moa", output=None, n_boot=300, seed=seed).dropna(subset=["p_value", "ci_low"])
        outside = ~((g["ci_low"] <= 0) & (0 <= g["ci_high"]))
        assert ((g["p_value"] < 0.05) == outside).all(), (seed, g)
