"""Aggregator vs proposer impact (:func:`moakit.analysis.impact_statistics`, the statistics
behind ``impact``) on simulated binary scores whose truth is known.

The model (the issue's): a run's score is Bernoulli(sigmoid(b_prompt + a_aggregator +
c_proposers + u_prompt,proposers)), b ~ N(0, 1) a prompt's difficulty, u ~ N(0, 1.5) the draw of
a prompt's proposals, **shared by every aggregator** that reads them (the correlation that made
the old per-block permutation test reject 22% of true nulls).

Truth. A level's mean mu_j is the population mean score of that level: the expectation over
prompts and proposal draws (b + u ~ N(0, sqrt(1 + 1.5^2)), computed by Gauss-Hermite
quadrature), in the grid averaged over the other factor's levels. A factor's effect is
tau = sqrt(mean_j (mu_j - mean mu)^2), the SD of its level means; a contrast is mu_i - mu_j;
the ratio is tau_aggregator / tau_proposers. Intervals are checked against these.

The null cases simulate 1000 datasets, the others 300: a test that is exactly 5% false-positive
(the permutation tests are exact here: the level labels are exchangeable within a prompt) would
still exceed the 7% goal in about 6% of 300-dataset runs (Monte Carlo SE 1.3 points), and 0.2%
of 1000-dataset runs. The first full run, at 300, measured the paper design's proposer test at
22/300 = 7.3%.
"""

from __future__ import annotations

import math

from .core import Case, Outcome

SD_PROMPT, SD_PROPOSALS = 1.0, 1.5
N_PERM, N_BOOT = 1000, 500


def _sigmoid(x):
    import numpy as np

    return 1.0 / (1.0 + np.exp(-x))


def _population_mean(shift):
    """E sigmoid(Z + shift), Z ~ N(0, sqrt(SD_PROMPT^2 + SD_PROPOSALS^2)), for an array of shifts."""
    import numpy as np
    from numpy.polynomial.hermite_e import hermegauss

    z, w = hermegauss(80)
    w = w / w.sum()
    sd = math.hypot(SD_PROMPT, SD_PROPOSALS)
    # one scalar sum per distinct shift: equal shifts get bit-equal means, so a null contrast is exactly 0
    values, inverse = np.unique(np.asarray(shift, dtype=float), return_inverse=True)
    means = np.array([float(np.dot(w, _sigmoid(sd * z + v))) for v in values])
    return means[inverse].reshape(np.shape(shift))


def _tau(mu) -> float:
    import numpy as np

    return float(np.sqrt(np.mean((mu - mu.mean()) ** 2)))


def _frame(arm, aggs, props, item, score):
    import pandas as pd

    return pd.DataFrame({"arm": arm, "aggregator": aggs, "proposers": props, "item": item, "score": score})


def _grid(rng, a, c, prompts):
    """Items of a full grid: prompts x aggregators x proposer sets, one run each."""
    import numpy as np

    a, c = np.asarray(a, float), np.asarray(c, float)
    b = rng.normal(0, SD_PROMPT, prompts)
    u = rng.normal(0, SD_PROPOSALS, (prompts, len(c)))  # one proposal draw per prompt x proposer set
    eta = b[:, None, None] + a[None, :, None] + c[None, None, :] + u[:, None, :]
    y = (rng.random(eta.shape) < _sigmoid(eta)).astype(float)
    p, ai, si = np.meshgrid(np.arange(prompts), np.arange(len(a)), np.arange(len(c)), indexing="ij")
    agg_names = np.array([f"agg{i}" for i in range(len(a))])
    set_names = np.array([f"set{i}" for i in range(len(c))])
    return _frame("grid", agg_names[ai.ravel()], set_names[si.ravel()], p.ravel(), y.ravel())


def _paper(rng, a, c, prompts, fixed=0):
    """Items of the paper design: aggregator arm (each aggregator over one shared proposal draw
    of the full set) and proposer arm (each model's own proposal draw under aggregator ``fixed``)."""
    import numpy as np
    import pandas as pd

    a, c = np.asarray(a, float), np.asarray(c, float)
    k = len(a)
    names = np.array([f"m{i}" for i in range(k)])
    b = rng.normal(0, SD_PROMPT, prompts)
    u_all = rng.normal(0, SD_PROPOSALS, prompts)  # the full set's draw, shared by every aggregator
    u_own = rng.normal(0, SD_PROPOSALS, (prompts, k))  # each model's six samples: its own draw
    ya = (rng.random((prompts, k)) < _sigmoid(b[:, None] + a[None, :] + u_all[:, None])).astype(float)
    yp = (rng.random((prompts, k)) < _sigmoid(b[:, None] + a[fixed] + c[None, :] + u_own)).astype(float)
    p, j = np.meshgrid(np.arange(prompts), np.arange(k), indexing="ij")
    return pd.concat([_frame("aggregator", names[j.ravel()], "all", p.ravel(), ya.ravel()),
                      _frame("proposer", names[fixed], names[j.ravel()], p.ravel(), yp.ravel())],
                     ignore_index=True)


def _check(out, factor, mu, labels) -> dict:
    """Coverage of the effect interval and of the simultaneous contrasts; interval/p agreement."""
    import numpy as np

    eff = out[(out["level"] == "effect") & (out["factor"] == factor)].iloc[0]
    con = out[(out["level"] == "contrast") & (out["factor"] == factor)]
    col = "aggregator" if factor == "aggregator" else "proposers"
    idx = {lab: i for i, lab in enumerate(labels)}
    truth = np.array([mu[idx[x]] - mu[idx[v]] for x, v in zip(con[col], con["versus"])])
    tau = _tau(mu)
    excl = (con["ci_low"] > 0) | (con["ci_high"] < 0)
    return {
        "effect_cov": bool(eff["ci_low"] <= tau <= eff["ci_high"]),
        "contrasts_cov": bool(np.all((con["ci_low"].to_numpy() <= truth) & (truth <= con["ci_high"].to_numpy()))),
        "reject": bool(eff["p_value"] < 0.05),
        "agree": bool((excl == (con["p_value"] < 0.05)).all()
                      and ((eff["ci_low"] > 0) == (eff["p_value"] < 0.05))),
        "estimate": float(eff["score"]), "tau": tau,
    }


def _outcome(out, mus, labels, ratio_truth=None) -> Outcome:
    o = Outcome()
    agree = True
    for factor, name in (("aggregator", "aggregator"), ("proposers", "proposer")):
        r = _check(out, factor, mus[factor], labels[factor])
        o.rejected[f"{name} effect p < 0.05"] = r["reject"]
        o.covered[f"{name} effect interval (truth: SD of level means)"] = r["effect_cov"]
        o.covered[f"{name} contrasts, all simultaneously"] = r["contrasts_cov"]
        o.extra[f"{name} effect estimate minus truth"] = r["estimate"] - r["tau"]
        agree &= r["agree"]
    o.covered["interval and p agree in every row"] = agree
    if ratio_truth is not None:
        rr = out[(out["level"] == "effect") & (out["factor"] == "ratio")].iloc[0]
        o.covered["ratio interval (Fieller)"] = bool(rr["ci_low"] <= ratio_truth <= rr["ci_high"])
        o.extra["ratio interval bounded (share)"] = float(math.isfinite(rr["ci_high"]))
    return o


def grid_case(a, c, prompts):
    import numpy as np

    a_, c_ = np.asarray(a, float), np.asarray(c, float)
    cell = _population_mean(a_[:, None] + c_[None, :])
    mus = {"aggregator": cell.mean(axis=1), "proposers": cell.mean(axis=0)}
    labels = {"aggregator": [f"agg{i}" for i in range(len(a))], "proposers": [f"set{i}" for i in range(len(c))]}

    def run(rng):
        from moakit.analysis import impact_statistics

        out = impact_statistics(_grid(rng, a, c, prompts), n_perm=N_PERM, n_boot=N_BOOT,
                                seed=int(rng.integers(2 ** 31)))
        return _outcome(out, mus, labels)

    return run


def paper_case(a, c, prompts):
    import numpy as np

    a_, c_ = np.asarray(a, float), np.asarray(c, float)
    mus = {"aggregator": _population_mean(a_), "proposers": _population_mean(a_[0] + c_)}
    labels = {"aggregator": [f"m{i}" for i in range(len(a))], "proposers": [f"m{i}" for i in range(len(c))]}
    ta, tp = _tau(mus["aggregator"]), _tau(mus["proposers"])
    ratio = ta / tp if tp > 1e-9 else None  # no proposer effect: the ratio is undefined

    def run(rng):
        from moakit.analysis import impact_statistics

        out = impact_statistics(_paper(rng, a, c, prompts), n_perm=N_PERM, n_boot=N_BOOT,
                                seed=int(rng.integers(2 ** 31)))
        return _outcome(out, mus, labels, ratio)

    return run


GRID = "grid: 4 aggregators x 4 proposer sets x 40 prompts, one binary run per cell"
PAPER = "paper design: 6 models, each as aggregator of the 6 and as proposer under m0, 60 prompts, binary"
NULLS = ("aggregator effect p < 0.05", "proposer effect p < 0.05")
_A1 = [1.0, 0.0, 0.0, 0.0]
_A_PAPER = [0.0, 0.6, 1.2, 1.8, 2.4, 3.0]
_C_PAPER = [0.0, 0.4, 0.8, 1.2, 1.6, 2.0]

CASES = [
    Case("impact", "grid, nothing matters", f"{GRID}; a = c = 0 (effects 0), u SD 1.5 shared across aggregators",
         grid_case([0] * 4, [0] * 4, 40), null=NULLS, datasets=1000),
    Case("impact", "grid, one aggregator +1 logit",
         f"{GRID}; a = (+1, 0, 0, 0) logit (aggregator SD of level means "
         f"{_tau(_population_mean(_A1)):.3f}), c = 0, u SD 1.5 shared across aggregators",
         grid_case(_A1, [0] * 4, 40), null=(NULLS[1],), power_goal={NULLS[0]: 0.8}, datasets=300),
    Case("impact", "paper design, nothing matters", f"{PAPER}; a = c = 0", paper_case([0] * 6, [0] * 6, 60),
         null=NULLS, datasets=1000),
    Case("impact", "paper design, both matter",
         f"{PAPER}; a = 0..3 logit, c = 0..2 logit in even steps (SDs "
         f"{_tau(_population_mean(_A_PAPER)):.3f} and {_tau(_population_mean(_C_PAPER)):.3f}, ratio "
         f"{_tau(_population_mean(_A_PAPER)) / _tau(_population_mean(_C_PAPER)):.2f})",
         paper_case(_A_PAPER, _C_PAPER, 60), datasets=300),
]
