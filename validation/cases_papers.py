"""Validation of the MoA papers' analyses: gains over proposers, Self-MoA's quality/diversity
regression and MoA's Figure 4b, on simulated data whose truth is known.

* ``gains``: per prompt, proposer j scores ``mu_j + u_p + e_pj`` and the final answer
  ``mu_F + u_p + e_pF`` (u: the prompt's difficulty, shared; e: noise), or binary scores with
  ``logit P = logit mu_j + u_p``. Truths: gain over the mean proposer ``mu_F - mean(mu)``, over
  the best proposer ``mu_F - max(mu)``, over the oracle ``mu_F - E[max_j score_pj]`` (binary:
  the same with the expectations over u, by a large Monte Carlo run, once per process).
* ``quality_diversity``: six proposers with fixed quality and style vectors (three share a
  style); the 20 triples are the configurations; each prompt's proposals are the styles plus
  noise. The final score is the configuration's quality plus ``effect`` x the Vendi score of
  the prompt's proposals, plus noise. Truth: the regression of the configurations' population
  mean final score on their standardized population quality and diversity (exact quality;
  E[Vendi] by Monte Carlo over 4,000 prompts, once per process).
* ``figure4b``: six proposals per prompt. Null: the aggregate draws its words uniformly from
  the proposals (texts, TF-IDF similarity), scores independent: mean rho 0. Alternative: the
  similarity to each proposal is its score plus noise; the truth E[rho] by Monte Carlo.

Every case simulates 600 datasets: at a true coverage of 0.95 the Monte Carlo standard error
of the measured coverage is 0.009 (0.015 at 200), so a sound interval does not miss the 0.93
goal by the luck of the draw.
"""

from __future__ import annotations

import functools
import itertools

from .core import Case, Outcome

# ---- gains --------------------------------------------------------------------------------------------
MU_SPREAD = (0.40, 0.45, 0.50, 0.55, 0.60)
MU_BINARY = (0.30, 0.40, 0.50, 0.55, 0.60)


def _expit(x):
    import numpy as np

    return 1 / (1 + np.exp(-x))


def _scores(rng, n, mu, mu_f, binary):
    import numpy as np

    mu = np.asarray(mu, dtype=float)
    if binary:
        u = rng.normal(0, 1.0, n)[:, None]
        logit = np.log(np.r_[mu, mu_f] / (1 - np.r_[mu, mu_f]))
        s = (rng.random((n, len(mu) + 1)) < _expit(logit + u)).astype(float)
    else:
        u = rng.normal(0, 0.5, n)[:, None]
        s = np.r_[mu, mu_f] + u + rng.normal(0, 0.3, (n, len(mu) + 1))
    return s[:, :-1], s[:, -1]


@functools.lru_cache(maxsize=None)
def _gains_truth(mu, mu_f, binary) -> dict[str, float]:
    import numpy as np

    s, f = _scores(np.random.default_rng(99), 1_000_000, mu, mu_f, binary)
    means = s.mean(axis=0)
    return {"mean proposer": float(f.mean() - means.mean()), "best proposer": float(f.mean() - means.max()),
            "oracle best-of-n": float(f.mean() - s.max(axis=1).mean())}


def _gains(rng, *, mu, mu_f, binary=False, n=60) -> Outcome:
    import numpy as np
    import pandas as pd

    from moakit.analysis import gains

    s, f = _scores(rng, n, mu, mu_f, binary)
    names = [f"p{j}" for j in range(len(mu))]
    frame = pd.DataFrame({"prompt": np.repeat(np.arange(n), len(mu) + 1),
                          "source": np.tile([*names, "moa"], n),
                          "score": np.column_stack([s, f]).ravel()})
    g = gains(frame, "moa", output=None, n_boot=2000, seed=int(rng.integers(1 << 30))).set_index("comparison")
    truth = _gains_truth(tuple(mu), mu_f, binary)
    best = f"proposer: {names[int(np.argmax(mu))]}"
    return Outcome(
        rejected={"final = mean proposer": g.loc["mean proposer", "p_value"] < 0.05,
                  "final = best proposer": g.loc["best proposer", "p_value"] < 0.05,
                  "final = the truly best proposer (max-t)": g.loc[best, "p_value"] < 0.05},
        covered={c: g.loc[c, "ci_low"] <= truth[c] <= g.loc[c, "ci_high"] for c in truth},
        extra={"best proposer gain - truth": g.loc["best proposer", "gain"] - truth["best proposer"],
               "mean proposer gain - truth": g.loc["mean proposer", "gain"] - truth["mean proposer"]})


# ---- quality / diversity --------------------------------------------------------------------------------
QUALITY = (0.2, 0.35, 0.5, 0.6, 0.7, 0.8)
CONFIGS = list(itertools.combinations(range(6), 3))


@functools.lru_cache(maxsize=1)
def _centres():
    import numpy as np

    rng = np.random.default_rng(2025)  # the design: fixed across datasets
    base = rng.normal(size=12)
    return np.stack([base * 3 + rng.normal(0, 0.3, 12) for _ in range(3)] + [rng.normal(size=12) * 3 for _ in range(3)])


def _vendi_draws(rng, prompts):
    """(prompts, configs) Vendi scores and the (prompts, configs, 3, 12) embeddings."""
    import numpy as np

    from moakit.analysis import vendi_score

    centres = _centres()
    idx = np.array(CONFIGS)
    emb = centres[idx][None] + rng.normal(0, 1, (prompts, len(CONFIGS), 3, 12))
    u = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    k = np.einsum("pcid,pcjd->pcij", u, u)
    return vendi_score(k.reshape(-1, 3, 3)).reshape(prompts, len(CONFIGS)), emb


@functools.lru_cache(maxsize=None)
def _qd_truth(effect: float) -> tuple[float, float]:
    import numpy as np

    v, _ = _vendi_draws(np.random.default_rng(4242), 4000)
    d = v.mean(axis=0)
    q = np.array([np.mean([QUALITY[m] for m in c]) for c in CONFIGS])
    f = q + effect * d
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731  population sd, as quality_diversity standardizes
    X = np.column_stack([np.ones(len(q)), z(q), z(d)])
    beta = np.linalg.lstsq(X, f, rcond=None)[0]
    return float(beta[1]), float(beta[2])


def _qd(rng, *, effect: float, prompts: int = 40, plain: bool = False) -> Outcome:
    import numpy as np
    import pandas as pd

    from moakit.analysis import quality_diversity

    v, emb = _vendi_draws(rng, prompts)
    names = ["+".join(map(str, c)) for c in CONFIGS]
    n_c = len(CONFIGS)
    props = pd.DataFrame({
        "config": np.tile(np.repeat(names, 3), prompts), "prompt": np.repeat(np.arange(prompts), n_c * 3),
        "emb": list(emb.reshape(-1, 12)),
        "score": np.tile(np.array([QUALITY[m] for c in CONFIGS for m in c]), prompts) + rng.normal(0, 0.1, prompts * n_c * 3)})
    q_true = np.array([np.mean([QUALITY[m] for m in c]) for c in CONFIGS])
    finals = pd.DataFrame({"config": np.tile(names, prompts), "prompt": np.repeat(np.arange(prompts), n_c),
                           "score": (q_true[None] + effect * v + rng.normal(0, 0.1, v.shape)).ravel()})
    r = quality_diversity(props, finals, embedding="emb", n_boot=1000, seed=int(rng.integers(1 << 30)))
    r = r.set_index("term")
    bq, bd = _qd_truth(effect)
    extra = {}
    if plain:  # what Self-MoA's plain least squares would conclude on the same data
        naive = quality_diversity(props, finals, embedding="emb", n_boot=1000, seed=1,
                                  errors_in_variables=False).set_index("term")
        extra["plain least squares: diversity p < 0.05 (rate)"] = float(naive.loc["diversity", "p_value"] < 0.05)
    return Outcome(rejected={"diversity coefficient = 0": r.loc["diversity", "p_value"] < 0.05,
                             "quality coefficient = 0": r.loc["quality", "p_value"] < 0.05},
                   covered={"quality coefficient": r.loc["quality", "ci_low"] <= bq <= r.loc["quality", "ci_high"],
                            "diversity coefficient": r.loc["diversity", "ci_low"] <= bd <= r.loc["diversity", "ci_high"]},
                   extra={"quality coef - truth": r.loc["quality", "estimate"] - bq,
                          "diversity coef - truth": r.loc["diversity", "estimate"] - bd, **extra})


# ---- Figure 4b ------------------------------------------------------------------------------------------
def _fig4b_null(rng, prompts: int = 40) -> Outcome:
    import numpy as np
    import pandas as pd

    from moakit.analysis import similarity_vs_score

    vocab = np.array([f"w{i}" for i in range(300)])
    rows, aggs = [], {}
    for p in range(prompts):
        texts = [" ".join(rng.choice(vocab, 40)) for _ in range(6)]
        pool = " ".join(texts).split()
        aggs[p] = " ".join(rng.choice(pool, 60))  # draws on every proposal alike, whatever its score
        rows += [{"prompt": p, "output": t, "score": float(s)} for t, s in zip(texts, rng.random(6))]
    s = similarity_vs_score(pd.DataFrame(rows), aggs).iloc[0]
    return Outcome(rejected={"mean rho = 0": s["p_value"] < 0.05},
                   covered={"mean rho": s["ci_low"] <= 0.0 <= s["ci_high"]}, extra={"mean rho": s["mean_rho"]})


def _rank_rows(x):
    import numpy as np

    return np.argsort(np.argsort(x, axis=1), axis=1).astype(float)


@functools.lru_cache(maxsize=None)
def _rho_truth(noise: float) -> float:
    import numpy as np

    rng = np.random.default_rng(31)
    sc = rng.random((400_000, 6))
    sim = sc + rng.normal(0, noise, sc.shape)
    a, b = _rank_rows(sc), _rank_rows(sim)  # no ties in continuous draws
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    return float(((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))).mean())


def _fig4b_follow(rng, *, noise: float = 0.4, prompts: int = 30) -> Outcome:
    import numpy as np
    import pandas as pd

    from moakit.analysis import similarity_vs_score

    sc = rng.random((prompts, 6))
    sim = sc + rng.normal(0, noise, sc.shape)
    frame = pd.DataFrame({"prompt": np.repeat(np.arange(prompts), 6), "score": sc.ravel(), "similarity": sim.ravel()})
    s = similarity_vs_score(frame).iloc[0]
    truth = _rho_truth(noise)
    return Outcome(rejected={"mean rho = 0": s["p_value"] < 0.05},
                   covered={"mean rho": s["ci_low"] <= truth <= s["ci_high"]},
                   extra={"mean rho - truth": s["mean_rho"] - truth})


CASES = [
    Case("gains", "final equals the best proposer", "5 proposers, means 0.40-0.60 in steps of 0.05 (two close at "
         "the top), final 0.60; prompt effect sd 0.5, noise sd 0.3; 60 prompts",
         lambda rng: _gains(rng, mu=MU_SPREAD, mu_f=0.60),
         null=("final = best proposer", "final = the truly best proposer (max-t)"), datasets=600),
    Case("gains", "final equals the mean proposer", "as above, final 0.50 (the proposers' mean)",
         lambda rng: _gains(rng, mu=MU_SPREAD, mu_f=0.50), null=("final = mean proposer",), datasets=600),
    Case("gains", "binary scores and a final better than all", "binary scores, proposers 0.30-0.60, final 0.75, "
         "prompt difficulty sd 1 (logit); 200 prompts",
         lambda rng: _gains(rng, mu=MU_BINARY, mu_f=0.75, binary=True, n=200),
         power_goal={"final = mean proposer": 0.8, "final = best proposer": 0.8}, datasets=600),
    Case("quality_diversity", "quality only", "20 triples of 6 proposers, 40 prompts; final = quality + noise "
         "(diversity coefficient 0)", lambda rng: _qd(rng, effect=0.0, plain=True), null=("diversity coefficient = 0",),
         power_goal={"quality coefficient = 0": 0.8}, datasets=600),
    Case("quality_diversity", "quality and diversity", "as above, final = quality + 0.1 x Vendi + noise",
         lambda rng: _qd(rng, effect=0.1), power_goal={"diversity coefficient = 0": 0.8}, datasets=600),
    Case("figure4b", "aggregate ignores scores", "6 proposals of 40 words, aggregate = 60 words drawn from all "
         "alike, TF-IDF similarity; 40 prompts (mean rho 0)", _fig4b_null, null=("mean rho = 0",), datasets=600),
    Case("figure4b", "aggregate follows good proposals", "similarity = score + N(0, 0.4); 30 prompts",
         _fig4b_follow, power_goal={"mean rho = 0": 0.8}, datasets=600),
]
