"""A joint model of which shown response an aggregating output draws on.

:func:`positional_bias` gives one factor at a time (each marginal over the others, which is
what Shuffle makes unbiased). When position, source agent and length are partly tangled, or
to see all three at once, :func:`choice_model` fits McFadden's conditional logit: for an
attributed call shown responses ``i = 1..n``,

    P(the output draws on i) = exp(x_i . beta) / sum_j exp(x_j . beta)

with ``x_i`` = position dummies (reference: position 1), source-agent dummies (reference: the
first agent, or ``reference_agent``) and ``log(1 + words)`` of the shown text. A coefficient
is a log odds ratio: ``exp(beta_position_2)`` is how much less (or more) likely the response
at position 2 is to be drawn on than the same response at position 1, holding agent and
length fixed; ``exp(gamma * log 2)`` is the odds ratio for doubling a response's length.
Only terms that vary within calls are identified (Self-MoA's single agent has no agent term;
on calls in a fixed order, agent and position are collinear and the agent terms are dropped,
which ``attrs["dropped"]`` says).

Fitted by statsmodels' ``ConditionalLogit`` (grouped by call). Standard errors are
cluster-robust (sandwich over item x repeat clusters, from the model's per-call scores and
Hessian), so calls that share proposals or a permutation are not counted as independent.
``p_value`` and the interval agree (Wald, per coefficient); ``p_holm`` adjusts a term's
levels for multiplicity (Holm, within the position levels and within the agent levels).
By default only randomized calls are used (``calls="all"`` adds the fixed-order ones, whose
position effects then rest on the model alone).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

__all__ = ["choice_model", "choice_summary", "CHOICE_COLUMNS"]

CHOICE_COLUMNS = ["variant", "term", "level", "reference", "coef", "se", "ci_low", "ci_high", "odds_ratio",
                  "p_value", "p_holm", "n_calls", "n_clusters"]
TERMS = ("position", "agent", "length")
SEPARATION = 10.0  # |log odds ratio| beyond which a coefficient is taken as diverging (odds x22,000)


def choice_model(source, *, variant: str | Sequence[str] | None = None, pool_variants: bool = False,
                 calls: str = "randomized", terms: Sequence[str] = TERMS, reference_agent: str | None = None,
                 cluster: str = "item_repeat", level: float = 0.95, steps: Sequence[str] | None = None,
                 ngram: int = 3, dominance: float = 0.5, min_hits: int = 2, exchangeable: bool = True,
                 dedupe: bool = True, store: Any = None, trace_id: str | Sequence[str] | None = None):
    """Conditional-logit model of which shown response each attributed copy call draws on
    (module doc), one fit per variant.

    Args:
        source: as :func:`moakit.analysis.positional_bias` (a store, an aggregation-inputs
            frame, or :func:`moakit.analysis.bias_inputs` rows).
        variant, pool_variants: which variants, fitted separately (default) or pooled.
        calls: ``"randomized"`` (default) or ``"all"``.
        terms: any of ``"position"``, ``"agent"``, ``"length"``.
        reference_agent: the agent the agent terms are compared with (default: the first in
            sort order).
        cluster: ``"item_repeat"`` or ``"item"``: the clusters of the robust standard errors.
        level: confidence level of the (per-coefficient) intervals.
        steps: copy steps to use (default Synthesize, Aggregate, Vote; Rank keeps several and
            is not modelled here).

    Returns:
        DataFrame with columns :data:`CHOICE_COLUMNS`: ``term`` (``position``, ``agent``,
        ``log_length``), ``level`` (the position or agent; empty for log_length), ``reference``,
        ``coef`` (log odds ratio), ``se`` (cluster-robust), ``ci_low``/``ci_high``,
        ``odds_ratio`` (``exp(coef)``; for log_length, per doubling of length), ``p_value``
        (Wald), ``p_holm``, ``n_calls``, ``n_clusters``. ``attrs``: ``fits`` (per variant:
        converged, dropped terms and why, log-likelihood), ``method``, ``reading``.
    """
    import pandas as pd

    from .bias import COPY_STEPS, INPUT_COLUMNS, bias_inputs

    bad = set(terms) - set(TERMS)
    if bad or not terms:
        raise ValueError(f"choice_model: terms must be a non-empty subset of {TERMS}, got {list(terms)}")
    if calls not in ("randomized", "all"):
        raise ValueError(f"choice_model: calls must be 'randomized' or 'all', got {calls!r}")
    if cluster not in ("item_repeat", "item"):
        raise ValueError(f"choice_model: cluster must be 'item_repeat' or 'item', got {cluster!r}")
    if not 0.5 <= level < 1:
        raise ValueError(f"choice_model: level must be in [0.5, 1), got {level!r}")
    steps = tuple(steps) if steps is not None else COPY_STEPS
    if set(steps) - set(COPY_STEPS):
        raise ValueError(f"choice_model: steps must be among {COPY_STEPS} (Rank keeps several responses and is "
                         f"analysed by positional_bias), got {list(steps)}")
    if isinstance(source, pd.DataFrame) and set(INPUT_COLUMNS) <= set(source.columns):
        rows = source
    else:
        rows = bias_inputs(source, store=store, trace_id=trace_id, steps=steps, ngram=ngram, dominance=dominance,
                           min_hits=min_hits, exchangeable=exchangeable, dedupe=dedupe)
    rows = rows[(rows["measure"] == "copied") & rows["step"].isin(steps) & (rows["status"] == "attributed")]
    if calls == "randomized":
        rows = rows[rows["randomized"].astype(bool)]
    if variant is not None:
        chosen = [variant] if isinstance(variant, str) else list(variant)
        unknown = [v for v in chosen if v not in set(rows["variant"])]
        if unknown:
            raise ValueError(f"choice_model: no attributed {calls} calls of variant {unknown}; variants: "
                             f"{sorted(set(rows['variant']))}")
        rows = rows[rows["variant"].isin(chosen)]
    if pool_variants and len(rows):
        rows = rows.assign(variant=" + ".join(dict.fromkeys(rows["variant"])))
    cluster_cols = ["item", "repeat"] if cluster == "item_repeat" else ["item"]
    out, fits = [], []
    for v, g in rows.groupby("variant", sort=False):
        res, fit = _fit(g, terms, reference_agent, cluster_cols, level)
        fit["variant"] = v
        fits.append(fit)
        out += [{"variant": v, **r} for r in res]
    df = pd.DataFrame(out, columns=CHOICE_COLUMNS)
    df.attrs.update({"fits": fits, "level": level, "calls": calls,
                     "method": "conditional logit (statsmodels ConditionalLogit, grouped by call); cluster-robust "
                               f"sandwich standard errors over {' x '.join(cluster_cols)} clusters; Wald intervals"})
    df.attrs["reading"] = choice_summary(df)
    if not len(rows):
        df.attrs["reading"] = f"no attributed {calls} copy calls to model"
    return df


def _design(g, terms, reference_agent):
    """(X, column names [(term, level, reference)], y, call codes)."""
    import numpy as np

    g = g.sort_values(["span_id", "position"], kind="stable")
    cols, names = [], []
    if "position" in terms:
        ks = sorted(set(g["position"]))
        for k in ks[1:]:
            cols.append((g["position"] == k).to_numpy(float))
            names.append(("position", str(k), str(ks[0])))
    if "agent" in terms:
        agents = sorted(set(g["source_agent"]))
        ref = reference_agent if reference_agent is not None else (agents[0] if agents else None)
        if reference_agent is not None and reference_agent not in agents:
            raise ValueError(f"choice_model: reference_agent {reference_agent!r} is not among the source agents "
                             f"{agents}")
        for a in agents:
            if a != ref:
                cols.append((g["source_agent"] == a).to_numpy(float))
                names.append(("agent", str(a), str(ref)))
    if "length" in terms:
        cols.append(g["log_length"].to_numpy(float))
        names.append(("log_length", "", ""))
    X = np.column_stack(cols) if cols else np.zeros((len(g), 0))
    codes = {s: i for i, s in enumerate(dict.fromkeys(g["span_id"]))}
    call = np.fromiter((codes[s] for s in g["span_id"]), dtype=np.int64, count=len(g))
    return X, names, g["picked"].to_numpy(float), call, g


def _identified(X, call, names):
    """Columns kept (varying within calls and linearly independent after removing call means,
    position and length first, then agents) and (name, reason) of those dropped."""
    import numpy as np

    sums = np.zeros((call.max() + 1, X.shape[1]))
    np.add.at(sums, call, X)
    within = X - (sums / np.bincount(call)[:, None])[call]
    order = [j for j, n in enumerate(names) if n[0] != "agent"] + [j for j, n in enumerate(names) if n[0] == "agent"]
    kept, dropped = [], []
    for j in order:
        if np.abs(within[:, j]).max() < 1e-12:
            dropped.append((names[j], "does not vary within calls"))
            continue
        trial = within[:, kept + [j]]
        if np.linalg.matrix_rank(trial) == len(kept) + 1:
            kept.append(j)
        else:
            dropped.append((names[j], "collinear with the terms kept before it (position, length, other agents): "
                                      "not separable in these calls"))
    return sorted(kept), dropped


def _fit(g, terms, reference_agent, cluster_cols, level):
    import numpy as np
    from scipy import stats
    from statsmodels.discrete.conditional_models import ConditionalLogit
    from statsmodels.stats.multitest import multipletests

    X, names, y, call, g = _design(g, terms, reference_agent)
    n_calls = int(call.max() + 1) if len(call) else 0
    first = g.drop_duplicates("span_id")
    cl_codes = {c: i for i, c in enumerate(dict.fromkeys(zip(*(first[c].tolist() for c in cluster_cols))))}
    cl_of_call = np.array([cl_codes[c] for c in zip(*(first[c].tolist() for c in cluster_cols))], dtype=np.int64)
    G = len(cl_codes)
    fit = {"calls": n_calls, "clusters": G, "dropped": [], "converged": None, "llf": math.nan}
    if n_calls < 2 or X.shape[1] == 0:
        fit["dropped"] = [{"term": n[0], "level": n[1], "why": "too few calls"} for n in names]
        return [], fit
    kept, dropped = _identified(X, call, names)
    fit["dropped"] = [{"term": n[0], "level": n[1], "why": why} for n, why in dropped]
    if not kept:
        return [], fit
    Xk = X[:, kept]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ConditionalLogit(y, Xk, groups=call)
        # statsmodels' own covariance is skipped: it fails on a singular Hessian (few calls,
        # separation), and the cluster-robust one below replaces it anyway
        res = model.fit(method="bfgs", maxiter=500, skip_hessian=True)
    params = np.asarray(res.params, dtype=float)
    fit["llf"] = float(res.llf)
    fit["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught})
    hess = np.atleast_2d(model.hessian(params))
    scores = np.array([model.score_grp(k, params) for k in range(n_calls)])
    # converged: the log-likelihood's gradient (the sum of the calls' scores) is ~0 per call
    fit["converged"] = bool(np.abs(scores.sum(0)).max() < 1e-3 * max(1, n_calls) ** 0.5)
    per_cluster = np.zeros((G, len(kept)))
    np.add.at(per_cluster, cl_of_call, scores)
    try:
        bread = np.linalg.inv(-hess)
    except np.linalg.LinAlgError:
        bread = np.linalg.pinv(-hess)
    meat = (G / (G - 1) if G > 1 else math.nan) * per_cluster.T @ per_cluster
    cov = bread @ meat @ bread
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    z = stats.norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2 * stats.norm.sf(np.abs(params / se))
    # separation: a term (or the whole model) that predicts the choices perfectly has no finite
    # estimate, and its sandwich SE collapses to ~0; report it as not estimable, not as significant
    complete = fit["llf"] > -1e-2
    diverged = complete | (np.abs(params) > SEPARATION)
    if diverged.any():
        fit["not_estimable"] = [f"{names[j][0]} {names[j][1]}".strip() for i, j in enumerate(kept) if diverged[i]]
        se = np.where(diverged, np.nan, se)
        p = np.where(diverged, np.nan, p)
    if G < 20:
        fit["warnings"].append(f"only {G} clusters: robust standard errors are unreliable")
    out = []
    for i, j in enumerate(kept):
        term, lvl, ref = names[j]
        scale = math.log(2) if term == "log_length" else 1.0  # odds ratio per doubling of length
        out.append({"term": term, "level": lvl, "reference": ref, "coef": float(params[i]), "se": float(se[i]),
                    "ci_low": float(params[i] - z * se[i]), "ci_high": float(params[i] + z * se[i]),
                    "odds_ratio": math.nan if diverged[i] else float(math.exp(params[i] * scale)),
                    "p_value": float(p[i]), "p_holm": math.nan, "n_calls": n_calls, "n_clusters": G})
    for term in ("position", "agent"):
        idx = [i for i, r in enumerate(out) if r["term"] == term and r["p_value"] == r["p_value"]]
        if idx:
            adj = multipletests([out[i]["p_value"] for i in idx], method="holm")[1]
            for i, a in zip(idx, adj):
                out[i]["p_holm"] = float(a)
    for r in out:
        if r["term"] == "log_length":
            r["p_holm"] = r["p_value"]
    return out, fit


def choice_summary(df) -> str:
    """The choice model in words: each term's odds ratio with its interval, per variant."""
    if df is None or len(df) == 0:
        return "no attributed calls to model"
    level = float(df.attrs.get("level", 0.95))
    lines = []
    for v, g in df.groupby("variant", sort=False):
        parts = []
        for _, r in g.iterrows():
            if r["se"] != r["se"]:  # not estimable: said below
                continue
            scale = math.log(2) if r["term"] == "log_length" else 1.0
            lo, hi = (math.exp(min(700.0, r["ci_low"] * scale)), math.exp(min(700.0, r["ci_high"] * scale)))
            what = ("doubling a response's length" if r["term"] == "log_length" else
                    f"{r['term']} {r['level']} vs {r['reference']}")
            mark = " *" if r["p_holm"] <= 1 - level else ""
            parts.append(f"{what}: odds x{r['odds_ratio']:.2f} [{lo:.2f}, {hi:.2f}]{mark}")
        fit = next((f for f in df.attrs.get("fits", []) if f.get("variant") == v), {})
        dropped = [f"{d['term']} {d['level']}".strip() for d in fit.get("dropped", [])
                   if d["why"].startswith("collinear")]
        note = (f"; dropped as not separable from the other terms in these calls: {', '.join(dropped)} "
                "(the terms kept carry their effect too)" if dropped else "")
        if fit.get("not_estimable"):
            note += ("; not estimable (the choices are perfectly predicted: separation): "
                     + ", ".join(fit["not_estimable"]))
        for w in fit.get("warnings", []):
            if w.startswith("only"):
                note += f"; {w}"
        lines.append(f"{v} ({int(g['n_calls'].iloc[0])} attributed calls, {int(g['n_clusters'].iloc[0])} clusters): "
                     + ("; ".join(parts) or "no term estimable")
                     + f" ({level:.0%} intervals; * Holm-adjusted p <= {1 - level:.2g}){note}")
    return "\n".join(lines)
