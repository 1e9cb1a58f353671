"""The MoA papers' own analyses, with intervals.

* :func:`quality_diversity`: Self-MoA's (Li et al. 2025, "Rethinking Mixture-of-Agents")
  quality/diversity regression. Per configuration (a proposer set), quality = mean score of its
  proposals, diversity = Vendi score of the proposals' embeddings (per prompt, averaged over
  prompts); the configuration's final score is regressed on both, standardized, with
  bootstrap intervals.
* :func:`gains`: the final answer against the best single proposer, the mean proposer and an
  oracle best-of-n (the best proposal of each prompt), per prompt and overall, with paired
  intervals (and simultaneous ones where a maximum over proposers is taken).
* :func:`similarity_vs_score`: the MoA paper's (Wang et al. 2024) Figure 4b: per prompt, the
  Spearman correlation between the aggregate's similarity to each proposal and that
  proposal's score, and the distribution of those correlations.
* :func:`vendi_score`: exp of the Shannon entropy of the eigenvalues of K/n (Friedman & Dieng
  2023) for a similarity matrix K with unit diagonal: 1 for n identical items, n for n
  orthogonal ones.
* :func:`alpaca_eval_outputs`, :func:`alpaca_eval_leaderboard`, :func:`find_alpaca_eval`: read
  published AlpacaEval 2.0 outputs (``<dir>/<model>/model_outputs.json``) and leaderboard.

Every function takes pandas DataFrames in long form (one row per proposal or answer), so the
outputs of ``moakit.run_batch``, ``TraceStore.calls()`` or published files feed them alike.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["vendi_score", "quality_diversity", "gains", "similarity_vs_score", "find_alpaca_eval",
           "alpaca_eval_outputs", "alpaca_eval_leaderboard", "QD_COLUMNS", "QD_CONFIG_COLUMNS", "GAINS_COLUMNS",
           "GAINS_PROMPT_COLUMNS", "FIG4B_COLUMNS", "FIG4B_PROMPT_COLUMNS"]

QD_COLUMNS = ["term", "estimate", "ci_low", "ci_high", "p_value", "n_configs", "n_prompts", "resample", "backend"]
QD_CONFIG_COLUMNS = ["config", "n_prompts", "proposals", "quality", "diversity", "final", "proposal_length",
                     "final_length"]
GAINS_COLUMNS = ["final", "comparison", "baseline", "final_score", "baseline_score", "gain", "ci_low", "ci_high",
                 "p_value", "n_prompts", "final_length", "baseline_length", "ci_method"]
GAINS_PROMPT_COLUMNS = ["final", "prompt", "final_score", "mean_proposer", "best_proposer", "oracle",
                        "gain_vs_mean", "gain_vs_best", "gain_vs_oracle", "proposals"]
FIG4B_COLUMNS = ["n_prompts", "dropped", "mean_rho", "ci_low", "ci_high", "p_value", "median_rho", "q25", "q75",
                 "share_positive", "similarity"]
FIG4B_PROMPT_COLUMNS = ["prompt", "proposals", "rho", "similarity_mean", "score_mean"]


# ---- Vendi score ------------------------------------------------------------------------------------
def vendi_score(similarity) -> Any:
    """The Vendi score of a similarity matrix ``K`` (``(n, n)``, symmetric, positive
    semi-definite, ones on the diagonal), or of a stack of them (``(m, n, n)`` -> ``m`` scores):
    ``exp(-sum(l * log l))`` over the eigenvalues ``l`` of ``K / n``. It is the effective number
    of distinct items: 1 when all are identical, n when all are orthogonal. Cosine similarities
    of embeddings are such a ``K``; a zero diagonal entry (an empty text) is set to 1."""
    import numpy as np

    k = np.array(similarity, dtype=float)
    single = k.ndim == 2
    if single:
        k = k[None]
    if k.ndim != 3 or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"vendi_score: expected an (n, n) or (m, n, n) similarity matrix, got shape {k.shape}")
    n = k.shape[-1]
    if n == 0:
        raise ValueError("vendi_score: no items")
    diag = np.einsum("mii->mi", k)
    diag[diag <= 0] = 1.0
    lam = np.linalg.eigvalsh((k + np.swapaxes(k, -1, -2)) / (2 * n))
    lam = np.clip(lam, 0.0, None)
    lam = lam / lam.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(lam > 0, lam * np.log(lam), 0.0).sum(axis=-1)
    out = np.exp(ent)
    return float(out[0]) if single else out


def _unit(v) -> Any:
    import numpy as np

    v = np.asarray(v, dtype=float)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


# ---- helpers ----------------------------------------------------------------------------------------
def _need(frame, cols: Sequence[str], who: str) -> None:
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{who}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{who}: missing column(s) {missing} (columns: {list(frame.columns)})")


def _bootstrap_t(boot, est, units: int):
    """A t interval around ``est`` with the bootstrap's standard error, and its p-value of 0
    (the same t, so the two agree). The bootstrap variance of a mean over ``units`` resampled
    units is low by (units - 1) / units, so it is scaled back, and t(units - 1) quantiles
    replace the normal's. Used by :func:`quality_diversity`, whose corrected estimator is
    unbiased but whose bootstrap distribution is not centred on it (a percentile interval then
    covered the truth 91% of the time in simulation, this one 94%)."""
    import numpy as np
    from scipy import stats

    boot = np.asarray(boot, dtype=float)
    boot = boot[np.isfinite(boot)]
    if len(boot) < 2 or units < 2 or not np.isfinite(est):
        return np.nan, np.nan, np.nan
    se = float(boot.std(ddof=1)) * math.sqrt(units / (units - 1))
    if se == 0:
        return est, est, np.nan
    q = float(stats.t.ppf(0.975, units - 1))
    return est - q * se, est + q * se, float(2 * stats.t.sf(abs(est) / se, units - 1))


# ---- quality / diversity ----------------------------------------------------------------------------
def _diversity_table(proposals, config, prompt, output, embedding, backend):
    """Vendi score of each (config, prompt)'s proposals. Texts are embedded once per prompt:
    MiniLM, or TF-IDF with its idf fitted on that prompt's distinct proposals, so every
    configuration's diversity on a prompt is measured in the same space."""
    import numpy as np
    import pandas as pd

    from .embedding import minilm_encode, similarity_matrix

    cfg_codes, cfgs = pd.factorize(proposals[config])
    pr_codes, prs = pd.factorize(proposals[prompt])
    group, _ = pd.factorize(pr_codes.astype(np.int64) * len(cfgs) + cfg_codes)
    n_groups = int(group.max()) + 1
    first = np.full(n_groups, -1)
    first[group[::-1]] = np.arange(len(group))[::-1]  # a row of each group, for its (config, prompt)
    if embedding is not None:
        unit = _unit(np.stack([np.asarray(v, dtype=float) for v in proposals[embedding]]))
        sims = None
    else:
        # per prompt: the similarity matrix of its distinct proposals, and each row's place in it
        texts = proposals[output].astype(str).to_numpy()
        sims, place = {}, np.zeros(len(texts), dtype=int)
        for k in range(len(prs)):
            rows = np.flatnonzero(pr_codes == k)
            uniq, inv = np.unique(texts[rows], return_inverse=True)
            place[rows] = inv
            if backend == "minilm":
                e = minilm_encode(list(uniq))
                sims[k] = e @ e.T
            else:
                sims[k] = similarity_matrix(list(uniq), backend="tfidf")
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1], True])
    sizes = np.diff(bounds)
    div = np.zeros(n_groups)
    for size in np.unique(sizes):  # groups of one size at a time: a stack of (size x size) matrices
        starts = bounds[:-1][sizes == size]
        idx = order[starts[:, None] + np.arange(size)]  # (m, size) rows of each group
        if sims is None:
            u = unit[idx]
            k = np.einsum("mid,mjd->mij", u, u)
        else:
            k = np.stack([sims[pr_codes[r[0]]][np.ix_(place[r], place[r])] for r in idx])
        div[group[idx[:, 0]]] = vendi_score(k) if k.ndim == 3 else vendi_score(k[None])
    return pd.DataFrame({"config": cfgs[cfg_codes[first]], "prompt": prs[pr_codes[first]], "diversity": div})


def _qd_fit(X, present, wp, wc, correct: bool):
    """The standardized regression of the final score on quality and diversity over
    configurations, for a batch of replicate weights.

    ``X``: (C, P, 3) per (configuration, prompt) values of quality, diversity, final;
    ``present``: (C, P) 0/1; ``wp``: (B, P) prompt weights; ``wc``: (B, C) configuration weights.
    Returns (intercept, b_quality, b_diversity, r2), each (B,).

    The configurations' means are estimated from a finite set of prompts, so the regressors
    carry measurement error; where quality and diversity are correlated, error in quality leaks
    into the diversity coefficient (a spurious diversity effect) and attenuates quality's. With
    ``correct`` the across-configuration moment matrix is corrected by the average sampling
    covariance of the configurations' means (method of moments, Fuller 1987), estimated from the
    prompts: ``Var_p(x_cp - mean_c' x_c'p) / n_c`` (deviations from the prompt's mean over
    configurations, because errors shared by every configuration, a hard prompt, move them
    together and cancel in the regression). The coefficients are then those of the regression
    on the configurations' true means, standardized by their true (population) standard
    deviations."""
    import numpy as np

    W = present[None] * wp[:, None, :]  # (B, C, P)
    n = W.sum(-1)  # prompts per configuration (with multiplicity)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.einsum("bcp,cpk->bck", W, X) / n[..., None]  # configuration means
        sw = wc.sum(-1)
        mbar = np.einsum("bc,bck->bk", wc, m) / sw[:, None]
        dev = m - mbar[:, None, :]
        S = np.einsum("bc,bck,bcl->bkl", wc, dev, dev) / sw[:, None, None]
        if correct:
            cnt = present.sum(0)  # configurations present in each prompt
            prompt_mean = (X * present[..., None]).sum(0) / np.maximum(cnt, 1)[:, None]  # (P, 3)
            xt = X - prompt_mean[None]
            xt = xt * present[..., None]
            mt = np.einsum("bcp,cpk->bck", W, xt) / n[..., None]
            s2 = (np.einsum("bcp,cpk,cpl->bckl", W, xt, xt) - n[..., None, None] * mt[..., :, None] * mt[..., None, :]) \
                / (n - 1)[..., None, None]
            omega = np.einsum("bc,bckl->bkl", wc, s2 / n[..., None, None]) / sw[:, None, None]
            S = S - omega
        sxx, sxy, syy = S[:, :2, :2], S[:, :2, 2], S[:, 2, 2]
        det = sxx[:, 0, 0] * sxx[:, 1, 1] - sxx[:, 0, 1] ** 2
        ok = (det > 1e-15 * np.maximum(sxx[:, 0, 0] * sxx[:, 1, 1], 1e-300)) & (sxx[:, 0, 0] > 0) & (sxx[:, 1, 1] > 0)
        b = np.full((len(S), 2), np.nan)
        b[ok] = np.linalg.solve(sxx[ok], sxy[ok][..., None])[..., 0]
        sd = np.sqrt(np.clip(np.stack([sxx[:, 0, 0], sxx[:, 1, 1]], -1), 0, None))
        # corrected R^2: the share of the true means' variance explained; with few prompts the
        # corrected variances are noisy and the ratio can leave [0, 1], so it is clipped there
        r2 = np.clip((b * sxy).sum(-1) / syy, 0.0, 1.0)
    return mbar[:, 2], b[:, 0] * sd[:, 0], b[:, 1] * sd[:, 1], r2


def quality_diversity(proposals, finals, *, config: str = "config", prompt: str = "prompt", output: str = "output",
                      score: str = "score", embedding: str | None = None, backend: str = "auto",
                      resample: str = "prompts", n_boot: int = 2000, seed: int = 0, errors_in_variables: bool = True,
                      per_config: bool = False):
    """Self-MoA's quality/diversity analysis: is a MoA configuration's final score explained by
    the quality or by the diversity of its proposals?

    ``proposals``: one row per proposal, columns ``config`` (the proposer set's name),
    ``prompt``, ``output`` (text; or give ``embedding``, a column of vectors) and ``score``
    (the proposal's own score). ``finals``: one row per (config, prompt) with the final
    answer's ``score`` (and ``output``, for its length). ``finals=None`` gives the per-config
    table only.

    Per configuration c: ``quality`` = mean over prompts of the mean proposal score;
    ``diversity`` = mean over prompts of the Vendi score of that prompt's proposals (cosine
    similarities of MiniLM embeddings, or of TF-IDF vectors whose idf is fitted on the prompt's
    distinct proposals; ``backend="auto"`` warns when it falls back to TF-IDF); ``final`` =
    mean final score. Only prompts with both proposals and a final score count.

    **Estimand**: the coefficients of the least-squares fit, over the given configurations, of
    their mean final scores on their mean quality and diversity (means over the population of
    prompts), ``final = intercept + b_q * z(quality) + b_d * z(diversity)``, with z standardizing
    to mean 0 and standard deviation 1 across configurations (population sd), so ``b_q`` and
    ``b_d`` are score changes per standard deviation of each, as in Self-MoA; and its R^2.
    Estimated from finitely many prompts, the regressors carry sampling error, which biases
    plain least squares (Self-MoA's fit): it attenuates quality and, quality and diversity being
    correlated, lends diversity part of quality's effect (about 0.4 standard errors each way at
    40 prompts in simulation; with a percentile bootstrap, which doubles the bias, the
    diversity test's false-positive rate was 0.13). ``errors_in_variables=True`` (default) corrects the moments for it (see
    :func:`_qd_fit`); ``False`` gives the plain fit.

    Intervals: ``estimate +- t * SE`` with the bootstrap's standard error (``n_boot`` draws,
    see :func:`_bootstrap_t`) and ``p_value`` of 0 from the same t; for R^2 (bounded,
    descriptive) the bootstrap percentiles and no test.
    ``resample="prompts"`` (default) re-draws prompts and recomputes every configuration's
    quality, diversity and final score on them: the configurations are a designed set judged
    on the *same* prompts, so their errors are correlated through the prompts, and the prompts
    are where the sampling randomness lies; the interval is for these configurations.
    ``resample="configurations"`` re-draws configurations (as if they were sampled from a
    population of possible proposer sets, which a designed grid rarely is; it ignores the
    prompts' noise in each point). Returns the coefficients (``QD_COLUMNS``; terms
    ``quality``, ``diversity``, ``intercept``, ``r2``) and, with ``per_config=True``, also the
    per-config table (``QD_CONFIG_COLUMNS``)."""
    import numpy as np
    import pandas as pd

    from .embedding import resolve_backend
    from .stats import percentile_interval

    _need(proposals, [config, prompt, score, embedding or output], "quality_diversity")
    if resample not in ("prompts", "configurations"):
        raise ValueError(f"quality_diversity: resample must be 'prompts' or 'configurations', got {resample!r}")
    if not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"quality_diversity: n_boot must be an integer >= 100, got {n_boot!r}")
    if finals is not None:
        _need(finals, [config, prompt, score], "quality_diversity (finals)")
    backend_used = "embedding" if embedding is not None else resolve_backend(backend, warn_from="quality_diversity")
    props = proposals[proposals[score].notna()]
    if props.empty:
        raise ValueError("quality_diversity: no proposal has a score")
    div = _diversity_table(props, config, prompt, output, embedding, backend_used)
    cp = props.groupby([config, prompt], sort=False).agg(quality=(score, "mean"), proposals=(score, "size"))
    cp = cp.reset_index().rename(columns={config: "config", prompt: "prompt"}).merge(div, on=["config", "prompt"])
    if output in props.columns:
        lengths = props.assign(_len=props[output].astype(str).str.len()).groupby([config, prompt])["_len"].mean()
        cp["proposal_length"] = lengths.reindex(pd.MultiIndex.from_frame(cp[["config", "prompt"]])).to_numpy()
    else:
        cp["proposal_length"] = np.nan
    if finals is not None:
        fin = finals[finals[score].notna()].copy()
        fin["_flen"] = fin[output].astype(str).str.len() if output in fin.columns else np.nan
        fin = fin.groupby([config, prompt], sort=False).agg(final=(score, "mean"), final_length=("_flen", "mean"))
        fin = fin.reset_index().rename(columns={config: "config", prompt: "prompt"})
        cp = cp.merge(fin, on=["config", "prompt"], how="inner")
    else:
        cp["final"], cp["final_length"] = np.nan, np.nan
    table = cp.groupby("config", sort=False).agg(
        n_prompts=("prompt", "nunique"), proposals=("proposals", "mean"), quality=("quality", "mean"),
        diversity=("diversity", "mean"), final=("final", "mean"), proposal_length=("proposal_length", "mean"),
        final_length=("final_length", "mean")).reset_index()[QD_CONFIG_COLUMNS]
    n_cfg, n_pr = len(table), int(cp["prompt"].nunique())
    base = {"n_configs": n_cfg, "n_prompts": n_pr, "resample": resample, "backend": backend_used}
    terms = ["quality", "diversity", "intercept", "r2"]
    if finals is None or n_cfg < 4:
        coefs = pd.DataFrame([{"term": t, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                               "p_value": np.nan, **base} for t in terms], columns=QD_COLUMNS)
        return (coefs, table) if per_config else coefs
    # the (config x prompt) matrices the estimate and every bootstrap replicate are computed from
    cfgs = table["config"].tolist()
    prs = list(dict.fromkeys(cp["prompt"]))
    ci_ = pd.Index(cfgs).get_indexer(cp["config"])
    pi_ = pd.Index(prs).get_indexer(cp["prompt"])
    shape = (len(cfgs), len(prs))
    mats = {}
    for name in ("quality", "diversity", "final"):
        m = np.zeros(shape)
        m[ci_, pi_] = cp[name].to_numpy(float)
        mats[name] = m
    present = np.zeros(shape)
    present[ci_, pi_] = 1.0

    X = np.stack([mats["quality"], mats["diversity"], mats["final"]], axis=-1)
    ones_p, ones_c = np.ones((1, len(prs))), np.ones((1, n_cfg))
    est = [float(v[0]) for v in _qd_fit(X, present, ones_p, ones_c, errors_in_variables)]
    rng = np.random.default_rng(seed)
    if resample == "prompts":
        wp = rng.multinomial(len(prs), np.full(len(prs), 1 / len(prs)), size=n_boot).astype(float)
        boot = _qd_fit(X, present, wp, np.ones((n_boot, n_cfg)), errors_in_variables)
    else:
        wc = rng.multinomial(n_cfg, np.full(n_cfg, 1 / n_cfg), size=n_boot).astype(float)
        boot = _qd_fit(X, present, np.ones((n_boot, len(prs))), wc, errors_in_variables)
    order = {"intercept": 0, "quality": 1, "diversity": 2, "r2": 3}
    rows = []
    for t in terms:
        b = boot[order[t]]
        if t == "r2":  # bounded and descriptive: its bootstrap percentiles, no test
            lo, hi, p = percentile_interval(b)
        else:
            lo, hi, p = _bootstrap_t(b, est[order[t]], len(prs) if resample == "prompts" else n_cfg)
        rows.append({"term": t, "estimate": float(est[order[t]]), "ci_low": float(lo), "ci_high": float(hi),
                     "p_value": float(p) if t in ("quality", "diversity") else np.nan, **base})
    coefs = pd.DataFrame(rows, columns=QD_COLUMNS)
    return (coefs, table) if per_config else coefs


# ---- gains over proposers ----------------------------------------------------------------------------
def _critical(draws, alpha: float) -> float:
    """The bootstrap critical value c with ``stat > c`` exactly when ``P*(draw >= stat) < alpha``:
    the sorted draw at index floor((1 - alpha) m). So an interval built from c and the p-value
    ``P*(draw >= stat)`` agree, even where a small bootstrap's draws tie."""
    import numpy as np

    if len(draws) == 0:
        return np.nan
    x = np.sort(np.asarray(draws, dtype=float))
    return float(x[min(int(np.floor((1 - alpha) * len(x))), len(x) - 1)])


def gains(frame, final: str | Sequence[str], *, prompt: str = "prompt", source: str = "source", score: str = "score",
          output: str | None = "output", proposers: Sequence[str] | None = None, n_boot: int = 4000, seed: int = 0,
          per_prompt: bool = False):
    """How much the final answer gains over its proposers, per prompt and overall.

    ``frame``: long form, one row per answer: ``prompt``, ``source`` (the proposer's name, or
    the final answer's label given as ``final``), ``score`` and optionally ``output`` (text, for
    lengths). Several rows of one (prompt, source) (repeats) are averaged first; the prompt is
    the unit. ``final`` may name several final answers (e.g. MoA and Self-MoA), each compared
    with the same proposers (every other source, or ``proposers``).

    Rows per final (``GAINS_COLUMNS``), ``gain`` = final minus baseline, mean over prompts:

    * ``mean proposer``: baseline = the mean of the prompt's proposal scores. Paired t interval.
    * ``oracle best-of-n``: baseline = the prompt's best proposal score (what a perfect
      selector of these proposals would get; with a noisy scorer it is inflated, as any
      maximum of noisy values is). Paired t interval.
    * ``best proposer``: baseline = the proposer with the highest *true* mean score. Which one
      that is must itself be estimated, and the sample's best is biased upward (a maximum of
      noisy means), so the interval is built for ``min_j (final - proposer_j)``: the lower
      bound is the smallest per-proposer lower t bound (one-sided 2.5%, no adjustment needed:
      the minimum is below the true best's difference), the upper bound the smallest
      simultaneous upper bound (max-t bootstrap over prompts, one-sided 2.5%). Coverage is
      >= 95% whichever proposer is best; the point estimate ``min_j`` of the sample
      differences is biased low when proposers are close. ``p_value`` agrees with the interval.
      ``baseline`` names the sample's best proposer.
    * ``proposer: <name>``: each proposer, with simultaneous 95% intervals (max-|t| bootstrap)
      and p-values adjusted the same way (``ci_method="max-t"``).

    ``final_length`` / ``baseline_length``: mean lengths in characters when ``output`` is given.
    With ``per_prompt=True`` also returns one row per (final, prompt) (``GAINS_PROMPT_COLUMNS``;
    ``best_proposer`` is the sample-best proposer's score on that prompt)."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    from .stats import t_interval

    _need(frame, [prompt, source, score], "gains")
    finals = [final] if isinstance(final, str) else list(final)
    sources = list(dict.fromkeys(frame[source]))
    missing = [f for f in finals if f not in sources]
    if missing:
        raise ValueError(f"gains: final {missing} not among the sources {sources}")
    props = [s for s in sources if s not in finals] if proposers is None else list(proposers)
    unknown = [p for p in props if p not in sources]
    if unknown:
        raise ValueError(f"gains: proposers {unknown} not among the sources {sources}")
    if len(props) < 2:
        raise ValueError(f"gains: need at least two proposers, got {props}")
    if not isinstance(n_boot, int) or n_boot < 200:
        raise ValueError(f"gains: n_boot must be an integer >= 200, got {n_boot!r}")
    d = frame[frame[source].isin([*finals, *props])].copy()
    has_len = output is not None and output in d.columns
    d["_len"] = d[output].astype(str).str.len() if has_len else np.nan
    wide = d.pivot_table(index=prompt, columns=source, values=score, aggfunc="mean", dropna=False)
    lens = d.pivot_table(index=prompt, columns=source, values="_len", aggfunc="mean", dropna=False) if has_len else None
    rows, per = [], []
    rng = np.random.default_rng(seed)
    for fin in finals:
        ok = wide[fin].notna() & wide[props].notna().all(axis=1)  # complete prompts: every comparison paired
        w = wide[ok]
        n = len(w)
        F, S = w[fin].to_numpy(float), w[props].to_numpy(float)
        if n < 3:
            raise ValueError(f"gains: {n} prompts with scores for {fin!r} and every proposer; need at least 3")
        mean_p, oracle = S.mean(axis=1), S.max(axis=1)
        D = F[:, None] - S  # (n, J): final minus each proposer
        dbar, sd = D.mean(axis=0), D.std(axis=0, ddof=1)
        se = np.where(sd > 0, sd / math.sqrt(n), np.nan)
        tq = float(stats.t.ppf(0.975, n - 1))
        # max-t bootstrap over prompts: studentized deviations of every proposer at once
        wts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float) / n
        m1, m2 = wts @ D, wts @ (D * D)
        se_b = np.sqrt(np.clip(m2 - m1 * m1, 0, None) * n / (n - 1) / n)
        # a proposer whose difference from the final never varies (both always right, say) has
        # no standard error: it drops out of the max-t statistics (NaN), as it should
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tb = np.where(se_b > 0, (dbar - m1) / se_b, np.nan)  # bootstrap analogue of (true - estimate) / se
            tb[:, ~(se > 0)] = np.nan
            # the max over proposers of each resample; resamples where no proposer varies are
            # left out of the critical values and of the p-values alike, so the two agree
            max_t, max_abs = np.nanmax(tb, axis=1), np.nanmax(np.abs(tb), axis=1)
            max_t, max_abs = max_t[np.isfinite(max_t)], max_abs[np.isfinite(max_abs)]
            c_up, c_two = _critical(max_t, 0.025), _critical(max_abs, 0.05)
            t_obs = dbar / se
        flen = float(lens.loc[ok, fin].mean()) if has_len else np.nan
        plen = lens.loc[ok, props] if has_len else None

        def row(comp, base_name, base_score, gain, lo, hi, p, blen, method):
            rows.append({"final": fin, "comparison": comp, "baseline": base_name, "final_score": float(F.mean()),
                         "baseline_score": float(base_score), "gain": float(gain), "ci_low": float(lo),
                         "ci_high": float(hi), "p_value": float(p), "n_prompts": n, "final_length": flen,
                         "baseline_length": float(blen), "ci_method": method})

        g, lo, hi, p = t_interval(F - mean_p)
        row("mean proposer", "mean of proposers", mean_p.mean(), g, lo, hi, p,
            plen.to_numpy(float).mean() if has_len else np.nan, "t")
        best_j = int(np.argmax(S.mean(axis=0)))
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo_b = float(np.nanmin(dbar - tq * se))
            hi_b = float(np.nanmin(dbar + c_up * se))
            p_iut = float(np.nanmax(stats.t.sf(t_obs, n - 1)))  # every difference > 0 (intersection-union)
            p_any = float(np.mean(max_t >= np.nanmax(-t_obs))) if len(max_t) else np.nan  # some proposer beats it
        row("best proposer", props[best_j], S.mean(axis=0)[best_j], float(np.min(dbar)), lo_b, hi_b,
            min(1.0, 2 * np.nanmin([p_iut, p_any])), plen[props[best_j]].mean() if has_len else np.nan, "t / max-t")
        g, lo, hi, p = t_interval(F - oracle)
        if has_len:
            pick = plen.to_numpy(float)[np.arange(n), np.argmax(S, axis=1)]
        row("oracle best-of-n", "best proposal per prompt", oracle.mean(), g, lo, hi, p,
            pick.mean() if has_len else np.nan, "t")
        for j, name in enumerate(props):
            p_adj = float(np.mean(max_abs >= abs(t_obs[j]))) if se[j] > 0 and len(max_abs) else np.nan
            row(f"proposer: {name}", name, S[:, j].mean(), dbar[j], dbar[j] - c_two * se[j], dbar[j] + c_two * se[j],
                p_adj, plen[name].mean() if has_len else np.nan, "max-t")
        if per_prompt:
            for k, pr in enumerate(w.index):
                per.append({"final": fin, "prompt": pr, "final_score": F[k], "mean_proposer": mean_p[k],
                            "best_proposer": S[k, best_j], "oracle": oracle[k], "gain_vs_mean": F[k] - mean_p[k],
                            "gain_vs_best": F[k] - S[k, best_j], "gain_vs_oracle": F[k] - oracle[k],
                            "proposals": len(props)})
    out = pd.DataFrame(rows, columns=GAINS_COLUMNS)
    if per_prompt:
        return out, pd.DataFrame(per, columns=GAINS_PROMPT_COLUMNS)
    return out


# ---- MoA Figure 4b ----------------------------------------------------------------------------------
def _similarities(agg: str, texts: list[str], similarity) -> list[float]:
    from .embedding import cross_similarity
    from .scorers import rouge_l_scores

    if callable(similarity):
        return [float(similarity(agg, t)) for t in texts]
    if similarity == "rouge_l":
        return [rouge_l_scores(t, agg)[2] for t in texts]
    # tfidf: idf fitted on this prompt's proposals and aggregate; minilm: sentence embeddings
    return list(cross_similarity([agg], texts, backend=similarity, corpus=[agg, *texts])[0])


def similarity_vs_score(proposals, aggregates=None, *, prompt: str = "prompt", output: str = "output",
                        score: str = "score", similarity: str | Callable[[str, str], float] = "tfidf",
                        per_prompt: bool = False):
    """The MoA paper's Figure 4b: does the aggregator draw more on the better proposals?

    ``proposals``: one row per proposal with ``prompt``, ``output`` and ``score`` (e.g. its win
    rate or any scorer's value). ``aggregates``: the aggregate per prompt, as a DataFrame
    with ``prompt`` and ``output`` columns, a Series or a dict prompt -> text; or ``None`` when
    ``proposals`` already has a ``similarity`` column. ``similarity``: ``"tfidf"`` (default;
    cosine, idf fitted per prompt on its proposals and aggregate; the paper used BLEU,
    Levenshtein and TF-IDF and found them to agree), ``"rouge_l"`` (F1), ``"minilm"`` or a
    function ``f(aggregate, proposal) -> float``.

    Per prompt: Spearman's rho between the similarity of the aggregate to each proposal and the
    proposal's score (``FIG4B_PROMPT_COLUMNS``). Prompts with fewer than three proposals, or
    whose scores or similarities are all equal, have no rho and are counted in ``dropped``.
    **Estimand**: the mean over prompts of rho, ``mean_rho``, with a t interval over prompts
    (prompts independent) and its t-test p-value of 0; plus the median, quartiles and share of
    positive rhos (the paper's distribution). Ties get average ranks."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    from .stats import t_interval

    cols = [prompt, score] + ([output] if aggregates is not None else ["similarity"])
    _need(proposals, cols, "similarity_vs_score")
    name = similarity if isinstance(similarity, str) else getattr(similarity, "__name__", "custom")
    if isinstance(similarity, str):
        if similarity not in ("tfidf", "rouge_l", "minilm"):
            raise ValueError(f"similarity_vs_score: similarity must be 'tfidf', 'rouge_l', 'minilm' or a function, "
                             f"got {similarity!r}")
        if similarity == "minilm":
            from .embedding import resolve_backend

            resolve_backend("minilm")
    elif not callable(similarity):
        raise TypeError("similarity_vs_score: similarity must be a name or a function")
    if aggregates is not None:
        if isinstance(aggregates, pd.DataFrame):
            _need(aggregates, [prompt, output], "similarity_vs_score (aggregates)")
            agg = dict(zip(aggregates[prompt], aggregates[output]))
        else:
            agg = dict(aggregates)
        absent = [p for p in dict.fromkeys(proposals[prompt]) if p not in agg]
        if absent:
            raise ValueError(f"similarity_vs_score: no aggregate for {len(absent)} prompt(s), e.g. {absent[0]!r}")
    rows = []
    for p, part in proposals.groupby(prompt, sort=False):
        part = part[part[score].notna()]
        if aggregates is not None:
            a = agg[p]
            sims = np.array(_similarities(str(a), part[output].astype(str).tolist(), similarity), dtype=float) \
                if a is not None and len(part) else np.array([])
        else:
            sims = part["similarity"].to_numpy(float)
        sc = part[score].to_numpy(float)
        rho = np.nan
        if len(part) >= 3 and len(sims) == len(sc) and np.ptp(sc) > 0 and np.ptp(sims) > 0:
            rho = float(stats.spearmanr(sims, sc).statistic)
        rows.append({"prompt": p, "proposals": len(part), "rho": rho,
                     "similarity_mean": float(sims.mean()) if len(sims) else np.nan,
                     "score_mean": float(sc.mean()) if len(sc) else np.nan})
    per = pd.DataFrame(rows, columns=FIG4B_PROMPT_COLUMNS)
    r = per["rho"].dropna().to_numpy()
    m, lo, hi, p = t_interval(r)
    q25, med, q75 = (np.quantile(r, [0.25, 0.5, 0.75]) if len(r) else (np.nan,) * 3)
    summary = pd.DataFrame([{"n_prompts": len(r), "dropped": int(per["rho"].isna().sum()), "mean_rho": m,
                             "ci_low": lo, "ci_high": hi, "p_value": p, "median_rho": med, "q25": q25, "q75": q75,
                             "share_positive": float((r > 0).mean()) if len(r) else np.nan, "similarity": name}],
                           columns=FIG4B_COLUMNS)
    return (summary, per) if per_prompt else summary


# ---- AlpacaEval data ----------------------------------------------------------------------------------
def find_alpaca_eval(path: str | os.PathLike | None = None) -> Path | None:
    """The folder of published AlpacaEval 2.0 outputs: ``path`` if given (it must exist), else
    ``$MOAKIT_ALPACA_EVAL``, else the first ``shared/data/alpaca_eval`` found walking up from
    the working directory. ``None`` when there is none (callers skip cleanly)."""
    if path is not None:
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"no AlpacaEval folder at {p}")
        return p
    env = os.environ.get("MOAKIT_ALPACA_EVAL")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path.cwd().resolve()
    for d in [here, *here.parents]:
        cand = d / "shared" / "data" / "alpaca_eval"
        if cand.is_dir():
            return cand
    return None


def alpaca_eval_outputs(models: Sequence[str] | None = None, *, path: str | os.PathLike | None = None,
                        n: int | None = None):
    """Published AlpacaEval 2.0 outputs as a long DataFrame: ``instruction``, ``dataset``,
    ``model`` (the folder name), ``output``, ``length`` (characters), ``index`` (the instruction's
    position in the file: the same across models). ``models``: folder names (default: every
    folder holding ``model_outputs.json``); ``n``: the first n instructions only. Read-only:
    nothing is copied."""
    import pandas as pd

    root = find_alpaca_eval(path)
    if root is None:
        raise FileNotFoundError("no AlpacaEval outputs found: set MOAKIT_ALPACA_EVAL or pass path=")
    names = list(models) if models is not None else sorted(
        p.name for p in root.iterdir() if (p / "model_outputs.json").is_file())
    frames = []
    for m in names:
        f = root / m / "model_outputs.json"
        if not f.is_file():
            raise FileNotFoundError(f"no {f}")
        recs = json.loads(f.read_text(encoding="utf-8"))
        if n is not None:
            recs = recs[:n]
        frames.append(pd.DataFrame({"index": range(len(recs)), "instruction": [r["instruction"] for r in recs],
                                    "dataset": [r.get("dataset") for r in recs], "model": m,
                                    "output": [r["output"] for r in recs]}))
    out = pd.concat(frames, ignore_index=True)
    out["length"] = out["output"].str.len()
    return out


def alpaca_eval_leaderboard(*, path: str | os.PathLike | None = None):
    """The AlpacaEval 2.0 leaderboard CSV of the data folder (one row per model; duplicate rows
    dropped), e.g. ``length_controlled_winrate`` and ``avg_length``."""
    import pandas as pd

    root = find_alpaca_eval(path)
    if root is None:
        raise FileNotFoundError("no AlpacaEval data found: set MOAKIT_ALPACA_EVAL or pass path=")
    df = pd.read_csv(root / "leaderboard_AlpacaEval_2.csv")
    first = df.columns[0]
    return df.rename(columns={first: "model"}).drop_duplicates("model").reset_index(drop=True)
