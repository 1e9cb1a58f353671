"""Length-controlled win rate (issue 14, item 3): a GLM of the preference with a tanh-scaled
length difference, predicted at zero difference, with intervals clustered by instruction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from moakit.analysis import length_controlled_win_rate
from moakit.analysis.length import LC_COLUMNS, cluster_cov_cr3


def judged(seed: int, n: int = 600, quality: float = 0.0) -> pd.DataFrame:
    """Both orders per instruction; the judge prefers the longer output (and, with quality > 0,
    the output itself); outputs are mostly longer than the references."""
    rng = np.random.default_rng(seed)
    ref = np.exp(rng.normal(np.log(1200), 0.5, n))
    out = ref * np.exp(rng.normal(0.35, 0.5, n))
    u = rng.normal(0, 0.8, n)
    rows = []
    for pos in (0.4, -0.4):
        p = 1 / (1 + np.exp(-(quality + u + pos + 1.5 * np.tanh((out - ref) / 900))))
        rows.append(pd.DataFrame({"item": np.arange(n), "score": (rng.random(n) < p).astype(float),
                                  "output_length": out, "reference_length": ref}))
    return pd.concat(rows, ignore_index=True)


def test_length_preferring_judge_no_quality_difference():
    r = length_controlled_win_rate(judged(1)).iloc[0]
    assert list(length_controlled_win_rate(judged(1)).columns) == LC_COLUMNS
    assert r["win_rate"] > 0.6 and r["win_rate_ci_low"] > 0.5  # the raw rate is fooled by length
    assert r["lc_ci_low"] < 0.5 < r["lc_ci_high"] and abs(r["lc_win_rate"] - 0.5) < 0.05
    assert r["p_value"] > 0.05 and r["length_coef_ci_low"] > 0  # the judge follows length
    assert r["n"] == 1200 and r["n_clusters"] == 600 and r["missing"] == 0


def test_true_quality_difference_is_found():
    r = length_controlled_win_rate(judged(2, quality=0.8)).iloc[0]
    assert r["lc_win_rate"] > 0.6 and r["p_value"] < 0.05 and r["lc_ci_low"] > 0.5


def test_estimate_is_the_glm_prediction_at_zero_difference():
    import statsmodels.api as sm

    d = judged(3, n=300)
    delta = d["output_length"] - d["reference_length"]
    X = sm.add_constant(np.tanh(delta / delta.std()).to_numpy())
    fit = sm.GLM(d["score"].to_numpy(), X, family=sm.families.Binomial()).fit()
    r = length_controlled_win_rate(d).iloc[0]
    assert r["lc_win_rate"] == pytest.approx(1 / (1 + math.exp(-fit.params[0])))
    assert r["length_coef"] == pytest.approx(fit.params[1])
    assert r["win_rate"] == pytest.approx(d["score"].mean())


def test_cr3_covariance_is_close_to_the_cluster_jackknife():
    import statsmodels.api as sm

    d = judged(4, n=80)
    y = d["score"].to_numpy()
    delta = (d["output_length"] - d["reference_length"]).to_numpy()
    X = np.column_stack([np.ones(len(y)), np.tanh(delta / delta.std(ddof=1))])
    g = d["item"].to_numpy()
    fit = sm.GLM(y, X, family=sm.families.Binomial()).fit()
    p = 1 / (1 + np.exp(-X @ fit.params))
    cr3 = cluster_cov_cr3(X, y, p, g)
    jack = np.array([sm.GLM(y[g != k], X[g != k], family=sm.families.Binomial()).fit().params for k in range(80)])
    jk = (79 / 80) * ((jack - jack.mean(0)).T @ (jack - jack.mean(0)))
    assert np.sqrt(np.diag(cr3)) == pytest.approx(np.sqrt(np.diag(jk)), rel=0.1)
    cr1 = sm.GLM(y, X, family=sm.families.Binomial()).fit(cov_type="cluster", cov_kwds={"groups": g}).cov_params()
    assert (np.diag(cr3) > np.diag(np.asarray(cr1)) * 0.95).all()  # never narrower than the usual sandwich


def test_missing_groups_text_lengths_and_difficulty():
    d = judged(5, n=200)
    d.loc[:9, "score"] = np.nan
    d["variant"] = np.where(d.index % 2, "x", "y")
    r = length_controlled_win_rate(d, by="variant")
    assert list(r["variant"]) == ["y", "x"] and r["missing"].sum() == 10
    texts = pd.DataFrame({"item": range(40), "score": [1.0, 0.0, 1.0, 1.0] * 10,
                          "output": ["long " * (5 + i % 7) for i in range(40)], "reference": ["mid " * 6] * 40})
    r = length_controlled_win_rate(texts).iloc[0]
    assert r["output_length"] == pytest.approx(texts["output"].str.len().mean())
    d["difficulty"] = np.random.default_rng(0).normal(size=len(d))
    r = length_controlled_win_rate(d, difficulty="difficulty").iloc[0]
    assert 0 < r["lc_ci_low"] < r["lc_win_rate"] < r["lc_ci_high"] < 1


def test_degenerate_data_say_why_instead_of_failing():
    same = pd.DataFrame({"item": range(10), "score": 1.0, "output_length": range(100, 110), "reference_length": 50})
    r = length_controlled_win_rate(same).iloc[0]
    assert r["lc_win_rate"] == 1.0 and math.isnan(r["lc_ci_low"]) and "same" in r["note"]
    flat = pd.DataFrame({"item": range(20), "score": [0.0, 1.0] * 10, "output_length": 100, "reference_length": 50})
    r = length_controlled_win_rate(flat).iloc[0]
    assert "no length term" in r["note"] and r["lc_win_rate"] == pytest.approx(0.5)
    none = pd.DataFrame({"item": [0], "score": [np.nan], "output_length": [1], "reference_length": [1]})
    assert length_controlled_win_rate(none).iloc[0]["note"] == "no readable preference"


def test_bad_input_is_refused_clearly():
    d = judged(6, n=20)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        length_controlled_win_rate(d.assign(score=d["score"] * 2))
    with pytest.raises(ValueError, match="output_length"):
        length_controlled_win_rate(d.drop(columns="output_length"))
    with pytest.raises(ValueError, match="no column 'prompt'"):
        length_controlled_win_rate(d, cluster="prompt")
    with pytest.raises(TypeError, match="DataFrame"):
        length_controlled_win_rate([1, 2])
