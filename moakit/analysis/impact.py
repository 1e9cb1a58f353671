"""Aggregator vs proposer impact: a factorial grid of aggregators x proposer sets.

Every cell runs ``[Propose(proposers), Aggregate(aggregator)]`` (or your own ``build``) over
the same prompts with the same seed, in one store with the cache on: a proposer set's
proposals are made once and replayed for every aggregator.

Estimates (the prompt is the unit; every bootstrap resamples prompts, so all cells move
together and the comparison is paired):

* cell score: mean over prompts (Wilson interval for binary scores, else bootstrap);
* marginal score of an aggregator: its mean over proposer sets (and of a proposer set: its
  mean over aggregators);
* effect of a factor: the range (max - min) of its marginal scores, i.e. how much the score
  moves when that choice changes, averaged over the other; with two levels, the difference.
  ``p_value``: a randomisation test of "this choice does not matter" that permutes the
  factor's labels within each (prompt, other factor) block;
* ratio: aggregator effect / proposer effect, the MoA papers' "the aggregator matters about
  twice as much" (MoA Table 4: aggregator scores span 41.5-61.3, proposer scores 53.3-63.8).
  Its interval is wide when the proposer effect is near zero; read it with the two effects.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

__all__ = ["impact", "table4", "paper_table4", "impact_summary", "IMPACT_COLUMNS", "TABLE4_COLUMNS"]

IMPACT_COLUMNS = ["level", "factor", "aggregator", "proposers", "score", "ci_low", "ci_high", "n", "p_value",
                  "errors", "calls", "calls_paid", "calls_reused", "input_tokens", "output_tokens", "cost_usd"]
TABLE4_COLUMNS = ["model", "as_aggregator", "as_aggregator_ci_low", "as_aggregator_ci_high", "as_proposer",
                  "as_proposer_ci_low", "as_proposer_ci_high"]

# MoA paper (Wang et al. 2024, arXiv 2406.04692) Table 4: AlpacaEval 2.0 LC win rate (%).
PAPER_TABLE4 = {
    "Qwen1.5-110B-Chat": (61.3, 56.7),
    "Qwen1.5-72B-Chat": (59.3, 53.3),
    "WizardLM-2-8x22B": (52.9, 63.8),
    "LLaMA-3-70B-Instruct": (45.0, 60.6),
    "Mixtral-8x22B-Instruct-v0.1": (48.4, 54.8),
    "dbrx-instruct": (41.5, 55.1),
}


def paper_table4():
    """The MoA paper's Table 4 (LC win rate as aggregator / as proposer), for comparison."""
    import pandas as pd

    return pd.DataFrame([{"model": m, "as_aggregator": a, "as_proposer": p} for m, (a, p) in PAPER_TABLE4.items()])


def _aggregators(aggregators) -> dict[str, str]:
    if isinstance(aggregators, str):
        raise ValueError("aggregators must be a list (or dict label -> agent) of at least one agent, not one string")
    if isinstance(aggregators, Mapping):
        out = {str(k): v for k, v in aggregators.items()}
    else:
        out = {a: a for a in aggregators}
    if not out or not all(isinstance(v, str) and v for v in out.values()):
        raise ValueError(f"aggregators must be non-empty agent names, got {aggregators!r}")
    return out


def _proposer_sets(sets) -> dict[str, list[str]]:
    if isinstance(sets, Mapping):
        out = {str(k): list(v) if not isinstance(v, str) else [v] for k, v in sets.items()}
    elif isinstance(sets, (list, tuple)) and sets and all(isinstance(s, (list, tuple)) for s in sets):
        out = {}
        for s in sets:
            label = "+".join(s)
            if label in out:
                label = f"{label}#{len(out)}"
            out[label] = list(s)
    else:
        raise ValueError("proposer_sets must be a dict name -> list of agents, or a list of agent lists "
                         "(e.g. [['a', 'b'], ['c', 'd']])")
    if not out or not all(s and all(isinstance(a, str) and a for a in s) for s in out.values()):
        raise ValueError(f"every proposer set needs at least one agent name, got {sets!r}")
    return out


def default_build(aggregator: str, proposers: Sequence[str], *, temp: float = 0.7, max_tokens: int = 512):
    """The two-layer cell pipeline: ``[Propose(proposers), Aggregate(aggregator)]``."""
    from ..steps import Aggregate, Propose

    return [Propose(list(proposers), temp=temp, max_tokens=max_tokens),
            Aggregate(aggregator, temp=temp, max_tokens=max_tokens)]


def impact(aggregators, proposer_sets, prompts, *, scorer, repeats: int = 1, models: Any = None, store: Any = None,
           seed: int = 0, max_tokens: int | None = None, references: Sequence[Any] | None = None,
           build: Callable[[str, Sequence[str]], list] | None = None, n_boot: int = 1000, n_perm: int = 2000,
           error_score: float | None = 0.0, items: bool = False, progress: bool = True, **run_kwargs):
    """Score every (aggregator, proposer set) pair over ``prompts`` and estimate how much each
    choice matters.

    Args:
        aggregators: agent names, or a dict label -> agent.
        proposer_sets: a dict name -> list of agents, or a list of agent lists (named by
            joining the agents with ``+``). With ``models="local"`` every name is the embedded
            model, but differently named agents are different samples (the request key, and so
            the sampling seed, includes the agent name).
        prompts, scorer, repeats, models, store, seed, max_tokens, references, ``**run_kwargs``:
            as for :func:`moakit.analysis.ablate`.
        build: ``build(aggregator, proposers) -> pipeline`` (default :func:`default_build`).
        n_boot / n_perm: bootstrap resamples / permutations for the intervals / p-values.
        items: also return the per-run rows.

    Returns:
        DataFrame with columns :data:`IMPACT_COLUMNS`, rows of four levels:
        ``level="cell"`` (one per pair: aggregator, proposers), ``level="aggregator"`` (the
        marginal score of each aggregator, proposers None), ``level="proposers"`` (of each
        proposer set, aggregator None), ``level="effect"`` with ``factor`` = ``"aggregator"``,
        ``"proposers"`` (range of the marginal scores, with a permutation p_value) and
        ``"ratio"`` (aggregator effect / proposer effect). ``score`` holds the estimate, with
        ``ci_low``/``ci_high`` its 95% interval. Call counts, tokens and cost are filled on
        cell rows (and summed on marginal rows).
    """
    import numpy as np
    import pandas as pd

    from .ablation import ITEM_COLUMNS, mean_ci, per_prompt, prepare, run_variants

    aggs = _aggregators(aggregators)
    sets = _proposer_sets(proposer_sets)
    build = build or default_build
    variants, keys = {}, {}
    for al, agent in aggs.items():
        for sl, agents in sets.items():
            name = f"{al} | {sl}"
            variants[name] = build(agent, agents)
            keys[name] = {"aggregator": al, "proposers": sl}
    scorer, prompt_list, refs, st = prepare(variants, prompts, scorer=scorer, references=references, repeats=repeats,
                                            models=models, store=store, seed=seed, max_tokens=max_tokens,
                                            templates=run_kwargs.get("templates", "together"))
    raw = run_variants(variants, prompt_list, refs, scorer=scorer, repeats=repeats, models=models, store=st,
                       seed=seed, max_tokens=max_tokens, progress=progress, key_columns=keys, **run_kwargs)
    item_df = raw[["aggregator", "proposers"] + ITEM_COLUMNS].copy()
    item_df.attrs["scorer"] = scorer.name

    rng = np.random.default_rng(seed)
    a_labels, s_labels = list(aggs), list(sets)
    wide = per_prompt(item_df, ["aggregator", "proposers"], error_score)  # index item, columns (agg, set)
    cube = np.stack([np.stack([wide[(a, s)].to_numpy(dtype=float) for s in s_labels], axis=1) for a in a_labels],
                    axis=1)  # prompts x aggregators x sets
    P = cube.shape[0]
    binary = repeats == 1

    def sums(mask):
        sub = item_df[mask]
        return {"errors": int(sub["error"].notna().sum()), "calls": int(sub["calls"].fillna(0).sum()),
                "calls_paid": int(sub["calls_paid"].fillna(0).sum()),
                "calls_reused": int(sub["calls_reused"].fillna(0).sum()),
                "input_tokens": int(sub["input_tokens"].fillna(0).sum()),
                "output_tokens": int(sub["output_tokens"].fillna(0).sum()),
                "cost_usd": float(sub["cost_usd"].fillna(0).sum())}

    def effects(c):
        """(aggregator effect, proposer effect) of a prompts x aggs x sets cube."""
        with np.errstate(all="ignore"):
            cell = np.nanmean(c, axis=0)
            am, sm = np.nanmean(cell, axis=1), np.nanmean(cell, axis=0)
        return float(np.nanmax(am) - np.nanmin(am)), float(np.nanmax(sm) - np.nanmin(sm))

    rows = []
    for ai, a in enumerate(a_labels):
        for si, s in enumerate(s_labels):
            m, lo, hi, _ = mean_ci(cube[:, ai, si], n_boot=n_boot, rng=rng, binary_ok=binary)
            rows.append({"level": "cell", "factor": None, "aggregator": a, "proposers": s, "score": m, "ci_low": lo,
                         "ci_high": hi, "n": int(np.isfinite(cube[:, ai, si]).sum()), "p_value": math.nan,
                         **sums((item_df["aggregator"] == a) & (item_df["proposers"] == s))})
    idx = rng.integers(0, P, size=(n_boot, P)) if n_boot and P > 1 else None
    def marginal(per, level: str, label) -> dict:
        """One marginal row: the per-prompt mean over the other factor, bootstrapped over prompts."""
        lo = hi = math.nan
        if idx is not None:
            b = np.nanmean(per[idx], axis=1)
            lo, hi = float(np.nanpercentile(b, 2.5)), float(np.nanpercentile(b, 97.5))
        return {"level": level, "factor": level, "aggregator": label if level == "aggregator" else None,
                "proposers": label if level == "proposers" else None, "score": float(np.nanmean(per)),
                "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(per).sum()), "p_value": math.nan,
                **sums(item_df[level] == label)}

    with np.errstate(all="ignore"):
        for ai, a in enumerate(a_labels):
            rows.append(marginal(np.nanmean(cube[:, ai, :], axis=1), "aggregator", a))
        for si, s in enumerate(s_labels):
            rows.append(marginal(np.nanmean(cube[:, :, si], axis=1), "proposers", s))

    ea, ep = effects(cube)
    ratio = ea / ep if ep else (math.inf if ea else math.nan)
    ci = {"aggregator": (math.nan, math.nan), "proposers": (math.nan, math.nan), "ratio": (math.nan, math.nan)}
    if idx is not None:
        boot = np.array([effects(cube[i]) for i in idx])
        with np.errstate(all="ignore"):
            r = boot[:, 0] / boot[:, 1]
        r = r[~np.isnan(r)]
        ci["aggregator"] = tuple(float(v) for v in np.nanpercentile(boot[:, 0], [2.5, 97.5]))
        ci["proposers"] = tuple(float(v) for v in np.nanpercentile(boot[:, 1], [2.5, 97.5]))
        if len(r):
            ci["ratio"] = tuple(float(v) for v in np.percentile(r, [2.5, 97.5], method="inverted_cdf"))
    # randomisation tests: permute one factor's labels within each (prompt, other level) block
    p = {"aggregator": math.nan, "proposers": math.nan}
    if n_perm:
        for f, axis, obs in (("aggregator", 1, ea), ("proposers", 2, ep)):
            if cube.shape[axis] < 2:
                continue
            count = 0
            for _ in range(n_perm):
                keys_ = rng.random(cube.shape).argsort(axis=axis)
                perm = np.take_along_axis(cube, keys_, axis=axis)
                count += effects(perm)[0 if f == "aggregator" else 1] >= obs - 1e-12
            p[f] = (1 + count) / (n_perm + 1)
    for f, v in (("aggregator", ea), ("proposers", ep), ("ratio", ratio)):
        rows.append({"level": "effect", "factor": f, "aggregator": None, "proposers": None, "score": v,
                     "ci_low": ci[f][0], "ci_high": ci[f][1], "n": P, "p_value": p.get(f, math.nan)})
    out = pd.DataFrame(rows, columns=IMPACT_COLUMNS)
    out.attrs.update({"scorer": scorer.name, "n_boot": n_boot, "n_perm": n_perm, "seed": seed, "repeats": repeats})
    return (out, item_df) if items else out


def table4(result, *, scale: float = 1.0):
    """An :func:`impact` result in the layout of the MoA paper's Table 4: one row per name
    (aggregators and proposer sets; a name used as both fills both columns), with the
    marginal score as aggregator and as proposer set and their intervals. ``scale=100``
    gives percentages like the paper. Columns :data:`TABLE4_COLUMNS`."""
    import pandas as pd

    need = {"level", "aggregator", "proposers", "score", "ci_low", "ci_high"}
    if not need <= set(result.columns):
        raise ValueError("table4 takes the DataFrame returned by moakit.analysis.impact")
    ag = result[result["level"] == "aggregator"].set_index("aggregator")
    pr = result[result["level"] == "proposers"].set_index("proposers")
    names = list(dict.fromkeys(list(ag.index) + list(pr.index)))
    rows = []
    for n in names:
        row = {"model": n}
        for col, src in (("as_aggregator", ag), ("as_proposer", pr)):
            if n in src.index:
                r = src.loc[n]
                row.update({col: r["score"] * scale, f"{col}_ci_low": r["ci_low"] * scale,
                            f"{col}_ci_high": r["ci_high"] * scale})
            else:
                row.update({col: math.nan, f"{col}_ci_low": math.nan, f"{col}_ci_high": math.nan})
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE4_COLUMNS)


def impact_summary(result) -> str:
    """One line: both effects, their intervals and p-values, and their ratio."""
    eff = result[result["level"] == "effect"].set_index("factor")
    if not len(eff):
        return "no effects to report"

    def fmt(f):
        r = eff.loc[f]
        ci = "" if r["ci_low"] != r["ci_low"] else f" (95% CI {r['ci_low']:.2f} to {r['ci_high']:.2f}"
        p = "" if r["p_value"] != r["p_value"] else f", p = {r['p_value']:.2g}"
        return f"{r['score']:.2f}{ci}{p}{')' if ci else ''}"

    ratio = eff.loc["ratio"]
    rtxt = "undefined (no proposer effect)" if ratio["score"] != ratio["score"] or math.isinf(ratio["score"]) \
        else f"{ratio['score']:.1f}x" + ("" if ratio["ci_low"] != ratio["ci_low"]
                                         else f" (95% CI {ratio['ci_low']:.1f} to {ratio['ci_high']:.1f})")
    return (f"changing the aggregator moves the score by {fmt('aggregator')}; changing the proposers by "
            f"{fmt('proposers')}; aggregator / proposer effect: {rtxt}")
