"""Length-controlled win rate in the manner of AlpacaEval 2.0 (Dubois et al. 2024,
"Length-Controlled AlpacaEval"), with intervals that respect clustering by instruction.

LLM judges prefer longer answers. AlpacaEval 2.0 answers the counterfactual question "what
would the preference be if the output and the baseline had the same length?" by fitting a
logistic GLM of the judge's preference on a length-difference term and predicting at zero
difference. This module does the same:

    logit P(output preferred) = theta + beta * tanh(delta / sd(delta)) [+ gamma * difficulty]

where ``delta = len(output) - len(reference)`` in characters (AlpacaEval's "std_delta_len":
the difference divided by its standard deviation in the data, bounded by tanh so a few very
long answers cannot dominate). **Estimand**: the LC win rate, the mean over rows of
``P(output preferred | delta = 0, difficulty)``; without a difficulty covariate, simply
``expit(theta)``. AlpacaEval's own GLM adds a per-instruction difficulty estimated from every
model on its leaderboard; pass such a column as ``difficulty=`` if you have one (a covariate
computed from *other* models' results; never from the outputs being rated).

Intervals: cluster-robust covariance of the GLM (CR3, see :func:`cluster_cov_cr3`), clusters =
instructions (the two orders of a pairwise judgement, and several references, share an
instruction), the delta method on the logit scale (so the interval stays within (0, 1)) and
t quantiles with G - 1 degrees of freedom. The p-value tests LC = 0.5 with the same t, so it
agrees with the interval. Checked on simulated judges that prefer the
longer answer with no quality difference (VALIDATION.md, analysis ``length``).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

__all__ = ["length_controlled_win_rate", "cluster_cov_cr3", "LC_COLUMNS"]

LC_COLUMNS = ["n", "n_clusters", "missing", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "lc_win_rate",
              "lc_ci_low", "lc_ci_high", "p_value", "length_coef", "length_coef_ci_low", "length_coef_ci_high",
              "output_length", "reference_length", "length_sd", "note"]


def _expit(x):
    import numpy as np

    return 1.0 / (1.0 + np.exp(-x))


def _fit(y, X, groups):
    """Binomial GLM (logit link; fractional preferences allowed: quasi-likelihood) fitted by
    statsmodels, with a CR3 cluster-robust covariance (below). Returns (params, cov, G) or
    raises ValueError on separation or divergence."""
    import numpy as np
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            res = sm.GLM(y, X, family=sm.families.Binomial()).fit()
        except PerfectSeparationWarning as e:
            raise ValueError("perfect separation: the preference is fully predicted by the length term") from e
    params = np.asarray(res.params, float)
    if not np.all(np.isfinite(params)) or np.any(np.abs(params) > 30):
        raise ValueError("the GLM did not converge to finite estimates")
    cov = cluster_cov_cr3(X, y, _expit(X @ params), groups)
    if not np.all(np.isfinite(cov)):
        raise ValueError("the cluster-robust covariance is not finite")
    return params, cov


def cluster_cov_cr3(X, y, p, groups):
    """CR3 cluster-robust covariance of a logistic GLM's coefficients (the jackknife-like
    small-sample form of the sandwich: each cluster's working residuals are inflated by
    ``(I - H_gg)^-1``, its leverage). The usual sandwich (CR1, statsmodels' ``cov_type="cluster"``)
    ran narrow here: with 150 instructions and outputs mostly longer than the references, the
    zero-difference prediction is an extrapolation whose standard error CR1 understated by
    ~7% (coverage 0.92 in simulation); CR3 with t(G - 1) quantiles brings it to the nominal
    level at AlpacaEval's 805 instructions (VALIDATION.md)."""
    import numpy as np

    w = np.clip(p * (1 - p), 1e-10, None)
    Z = X * np.sqrt(w)[:, None]
    e = (y - p) / np.sqrt(w)
    bread = np.linalg.pinv(Z.T @ Z)
    order = np.argsort(groups, kind="stable")
    gs = groups[order]
    bounds = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1], True])
    starts, sizes = bounds[:-1], np.diff(bounds)
    meat = np.zeros((X.shape[1], X.shape[1]))
    for k in np.unique(sizes):  # clusters of one size at a time, as stacked (m, k, ...) arrays
        idx = order[starts[sizes == k][:, None] + np.arange(k)]
        zg, eg = Z[idx], e[idx]  # (m, k, p), (m, k)
        h = np.eye(k) - np.einsum("mip,pq,mjq->mij", zg, bread, zg)
        adj = np.linalg.solve(h, eg[..., None])[..., 0] if np.all(np.linalg.cond(h) < 1e12) else eg
        sc = np.einsum("mkp,mk->mp", zg, adj)
        meat += sc.T @ sc
    g = len(bounds) - 1
    return (g - 1) / g * bread @ meat @ bread


def _share_at(params, cov, X0, g: int) -> tuple[float, float, float, float]:
    """Mean predicted probability over the rows of X0, its delta-method interval on the logit
    scale with t(g - 1) quantiles (g clusters) and the p-value of 0.5 from the same t."""
    from scipy import stats

    q = float(stats.t.ppf(0.975, max(g - 1, 1)))
    p = _expit(X0 @ params)
    share = float(p.mean())
    grad = (p * (1 - p)) @ X0 / len(X0)  # d share / d params
    var = float(grad @ cov @ grad)
    if not 0 < share < 1 or var <= 0:
        return share, math.nan, math.nan, math.nan
    se_logit = math.sqrt(var) / (share * (1 - share))
    centre = math.log(share / (1 - share))
    lo, hi = _expit(centre - q * se_logit), _expit(centre + q * se_logit)
    return share, float(lo), float(hi), float(2 * stats.t.sf(abs(centre) / se_logit, max(g - 1, 1)))


def _one(d, preference: str, out_len: str, ref_len: str, cluster: str | None, difficulty: str | None) -> dict:
    import numpy as np
    import pandas as pd
    from scipy import stats

    y_all = pd.to_numeric(d[preference], errors="coerce")
    keep = y_all.notna().to_numpy()
    missing = int((~keep).sum())
    d = d[keep]
    y = y_all[keep].to_numpy(float)
    row = dict.fromkeys(LC_COLUMNS, math.nan)
    row.update(n=len(d), missing=missing, note="")
    if len(d) == 0:
        row.update(n_clusters=0, note="no readable preference")
        return row
    if (y < 0).any() or (y > 1).any():
        raise ValueError(f"length_controlled_win_rate: {preference!r} must lie in [0, 1] (1 = output preferred)")
    lo_len, ref = d[out_len].to_numpy(float), d[ref_len].to_numpy(float)
    if np.isnan(lo_len).any() or np.isnan(ref).any():
        raise ValueError(f"length_controlled_win_rate: {out_len!r} and {ref_len!r} must be numbers on every row")
    groups = pd.factorize(d[cluster])[0] if cluster else np.arange(len(d))
    g = int(groups.max()) + 1
    row.update(n_clusters=g, output_length=float(lo_len.mean()), reference_length=float(ref.mean()))
    delta = lo_len - ref
    sd = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0
    row["length_sd"] = sd
    ones = np.ones((len(d), 1))
    raw = float(y.mean())
    row["win_rate"] = raw
    if g < 2:
        row.update(lc_win_rate=raw, note="fewer than two clusters: no interval")
        return row
    if y.min() == y.max():
        row.update(lc_win_rate=raw, note="every preference is the same: the GLM has no finite fit")
        return row
    try:
        params, cov = _fit(y, ones, groups)
        _, row["win_rate_ci_low"], row["win_rate_ci_high"], _ = _share_at(params, cov, ones, g)
    except ValueError as e:
        row["note"] = f"raw win rate: {e}"
    extra = []
    if difficulty is not None:
        extra.append(d[difficulty].to_numpy(float))
    if sd == 0:
        X = np.column_stack([ones, *extra])
        X0 = X
        note = "every length difference is the same: no length term"
    else:
        x = np.tanh(delta / sd)
        X = np.column_stack([ones, x, *extra])
        X0 = X.copy()
        X0[:, 1] = 0.0  # the counterfactual: output and reference of equal length
        note = ""
    try:
        params, cov = _fit(y, X, groups)
    except ValueError as e:
        row.update(note=f"length-controlled: {e}")
        return row
    lc, lc_lo, lc_hi, p = _share_at(params, cov, X0, g)
    row.update(lc_win_rate=lc, lc_ci_low=lc_lo, lc_ci_high=lc_hi, p_value=p, note=note or row["note"])
    if sd != 0:
        se = math.sqrt(cov[1, 1]) * float(stats.t.ppf(0.975, g - 1))
        row.update(length_coef=float(params[1]), length_coef_ci_low=float(params[1] - se),
                   length_coef_ci_high=float(params[1] + se))
    return row


def length_controlled_win_rate(frame, *, preference: str = "score", output_length: str = "output_length",
                               reference_length: str = "reference_length", cluster: str | None = "item",
                               by: str | Sequence[str] | None = None, difficulty: str | None = None):
    """The length-controlled (LC) win rate of outputs against references, in the manner of
    AlpacaEval 2.0, one row per group (``by``) with the columns ``LC_COLUMNS``.

    ``frame``: one row per judgement, e.g. :meth:`moakit.analysis.judge.LLMJudge.judgements`
    (whose ``score`` is 1 / 0.5 / 0 / NaN). Columns (names configurable):

    * ``preference`` (default ``score``): in [0, 1], 1 = the output was preferred; fractional
      values (ties, order-averaged verdicts) are allowed; NaN rows (unreadable judgements)
      are dropped and counted in ``missing``;
    * ``output_length`` / ``reference_length``: lengths in characters (if absent, computed from
      ``output`` / ``reference`` text columns);
    * ``cluster`` (default ``item``; ``None``: every row independent): the instruction, which
      the rows of one item share; give ``"prompt"`` for a frame of several variants judged on
      the same prompts when fitting them together;
    * ``difficulty``: optional per-row covariate (AlpacaEval's instruction difficulty).

    Returns ``n, n_clusters, missing``; the raw ``win_rate`` with a clustered interval; the
    ``lc_win_rate`` (predicted at zero length difference) with ``lc_ci_low, lc_ci_high`` and
    ``p_value`` (LC = 0.5); ``length_coef`` (beta, how strongly the judge follows length) with
    its interval; mean ``output_length`` and ``reference_length`` and ``length_sd`` (the scale
    of the tanh term); ``note`` says when a fit was impossible (every preference equal,
    perfect separation, one cluster), in which case intervals are NaN."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"length_controlled_win_rate: frame must be a pandas DataFrame, got {type(frame).__name__}")
    d = frame.copy()
    for col, text in ((output_length, "output"), (reference_length, "reference")):
        if col not in d.columns:
            if text in d.columns:
                d[col] = d[text].astype(str).str.len()
            else:
                raise ValueError(f"length_controlled_win_rate: the frame needs a {col!r} column (or {text!r} texts)")
    keys = [] if by is None else ([by] if isinstance(by, str) else list(by))
    for col in [preference, *keys, *([cluster] if cluster else []), *([difficulty] if difficulty else [])]:
        if col not in d.columns:
            raise ValueError(f"length_controlled_win_rate: no column {col!r} (columns: {list(d.columns)})")
    rows = []
    groups = d.groupby(keys, sort=False, dropna=False) if keys else [((), d)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)),
                     **_one(part, preference, output_length, reference_length, cluster, difficulty)})
    return pd.DataFrame(rows, columns=[*keys, *LC_COLUMNS])
