"""Ablation statistics (issue 14, item 6): the sign-flip test and the interval that inverts it,
Holm's adjustment, and ``ablation_summary`` on per-run rows built by hand (no model call).
The end-to-end ablations on the embedded and scripted models are in test_analysis.py; the
simulations with known truth (false rejections, coverage) in validation/cases_ablation.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import moakit
from moakit.analysis import ABLATION_COLUMNS, ablate, ablation_summary, holm, reading, sign_flip


def brute_p(d, x, signs):
    """The sign-flip p-value of H0: mean = x, by direct comparison over every sign vector."""
    e = np.asarray(d, float) - x
    return float(np.mean(np.abs(signs @ e) >= abs(e.sum()) - 1e-9))


def test_sign_flip_interval_is_the_set_the_exact_test_accepts():
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(2, 10))
        d = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=n)
        r = sign_flip(d, n_perm=0, rng=rng)
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        assert r["method"] == "sign-flip exact" and r["delta"] == pytest.approx(d.mean())
        assert r["p_value"] == pytest.approx(brute_p(d, 0.0, signs))
        for x in np.linspace(-1.6, 1.6, 161):
            if min(abs(x - r["ci_low"]), abs(x - r["ci_high"])) < 1e-6:
                continue  # the boundary itself belongs to the interval; rounding decides the brute side
            assert (r["ci_low"] <= x <= r["ci_high"]) == (brute_p(d, x, signs) >= 0.05), (d, x, r)


def test_sign_flip_monte_carlo_interval_and_p_never_disagree():
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(150):
        n = int(rng.integers(17, 45))  # beyond the exact limit: random sign vectors
        d = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.5, 0.3], size=n).astype(float)
        r = sign_flip(d, n_perm=999, rng=rng)
        assert r["method"] == "sign-flip Monte Carlo" and r["ci_low"] <= r["delta"] <= r["ci_high"]
        excludes = r["ci_low"] > 0 or r["ci_high"] < 0
        assert excludes == (r["p_value"] < 0.05), r
        seen.add(excludes)
    assert seen == {True, False}  # both kinds of rows were checked


def test_sign_flip_degenerate_inputs():
    rng = np.random.default_rng(0)
    # a variant identical to the baseline: exactly [0, 0] (not the tie margin, -1e-12), exact and Monte Carlo
    for n in (6, 40):
        r = sign_flip([0.0] * n, n_perm=100, rng=rng)
        assert r["p_value"] == 1.0 and (r["ci_low"], r["ci_high"]) == (0.0, 0.0)
    # five prompts: the smallest exact two-sided p is 2/32 > 0.05, so no delta is ever rejected
    r = sign_flip([1.0] * 5, n_perm=100, rng=rng)
    assert r["p_value"] == 2 / 32 and r["ci_low"] == -math.inf and r["ci_high"] == math.inf
    r = sign_flip([math.nan, math.nan], n_perm=100, rng=rng)
    assert r["n"] == 0 and math.isnan(r["p_value"]) and math.isnan(r["ci_low"])


def test_holm_matches_its_definition():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = rng.random(int(rng.integers(1, 7))) ** 2
        adj = holm(p)
        order = np.argsort(p)
        m = len(p)
        expect = np.empty(m)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            expect[i] = running
        assert np.allclose(adj, expect)
        assert all(a >= q for a, q in zip(adj, p))
    assert math.isnan(holm([0.01, math.nan])[1]) and holm([0.01, math.nan])[0] == pytest.approx(0.01)


def simulated_items(seed=0, n=30, deltas=(0.0, 0.3), repeats=1):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.2, 0.6, n)
    rows = []
    for r in range(repeats):
        u0 = rng.random(n)
        for k, d in enumerate((0.0, *deltas)):
            # most runs of a variant reuse the baseline's draw (shared proposals): strong pairing
            u = np.where(rng.random(n) < 0.7, u0, rng.random(n))
            rows.append(pd.DataFrame({"variant": f"v{k}", "repeat": r, "item": range(n),
                                      "score": (u < p + d).astype(float)}))
    return pd.concat(rows, ignore_index=True)


def test_ablation_summary_of_simulated_rows():
    items = simulated_items()
    s = ablation_summary(items, n_boot=200, n_perm=2000)
    assert list(s.columns) == ABLATION_COLUMNS and list(s["variant"]) == ["v0", "v1", "v2"]
    base, rest = s.iloc[0], s.iloc[1:]
    assert base["delta"] == 0 and math.isnan(base["p_value"]) and math.isnan(base["p_holm"])
    assert (rest["p_holm"] >= rest["p_value"] - 1e-12).all()
    wide = items.pivot(index="item", columns="variant", values="score")
    assert rest["delta"].tolist() == pytest.approx([(wide["v1"] - wide["v0"]).mean(), (wide["v2"] - wide["v0"]).mean()])
    for r in rest.itertuples():
        assert ((r.delta_ci_low > 0) or (r.delta_ci_high < 0)) == (r.p_value < 0.05)
    assert s.loc[2, "p_value"] < 0.05  # +0.3 on 30 items is found
    assert (s["calls"] == 0).all() and (s["errors"] == 0).all()  # no bookkeeping columns: zeros
    assert "Holm" in reading(s)
    three = ablation_summary(simulated_items(repeats=3), n_boot=200)
    assert (three["repeats"] == 3).all() and (three["n"] == 30).all() and (three["ci_method"] == "bootstrap").all()


def test_ablation_summary_rejects_bad_input():
    items = simulated_items()
    with pytest.raises(ValueError, match="columns"):
        ablation_summary(items.drop(columns=["item"]))
    with pytest.raises(ValueError, match="baseline"):
        ablation_summary(items, baseline="nope")
    with pytest.raises(ValueError, match="alpha"):
        ablation_summary(items, alpha=1.5)
    with pytest.raises(ValueError, match="n_perm"):
        ablation_summary(items, n_perm=-1)


def test_ablate_checks_baseline_and_statistics_before_any_call(tmp_path):
    from moakit.pipelines import moa_lite

    store = tmp_path / "never.db"
    with pytest.raises(ValueError, match="baseline"):
        ablate({"a": moa_lite}, ["q1"], scorer=lambda o: 1.0, models="local", store=store, baseline="b")
    with pytest.raises(ValueError, match="alpha"):
        ablate({"a": moa_lite}, ["q1"], scorer=lambda o: 1.0, models="local", store=store, alpha=0)
    assert moakit.TraceStore(store).calls().empty
