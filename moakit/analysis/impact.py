"""Aggregator vs proposer impact: how much the score moves when the aggregator changes, and
when the proposers change.

Two designs (``impact(..., design=...)``):

* ``"paper"``: the MoA paper's Table 4 (Wang et al. 2024, arXiv 2406.04692). Each model as
  the *aggregator* of all the proposer models (one sample each), and each model as the
  *proposer*, ``samples`` (6) samples of itself, under one fixed aggregator (the paper's:
  Qwen1.5-110B-Chat); ``layers`` (2: Propose + Aggregate) deep. Two arms, one factor each.
* ``"grid"``: every aggregator with every proposer set (a full factorial), each factor's
  level mean averaged over the other factor's levels.

Every cell runs over the same prompts with the same seed in one store with the cache on, so
identical calls are paid once (a proposer set's proposals are replayed for every aggregator;
in the paper design a model's proposal in the six-model set is sample 0 of its six).

Estimands (the prompt is the unit: a prompt's value in a cell is its mean over repeats, and
prompts are a sample from a population of prompts; a prompt's proposals, shared across
aggregators, are part of that prompt's draw):

* ``level`` rows: the mean score ``mu_j`` of level ``j`` of a factor over that population
  (in the grid, averaged over the other factor's levels), with a pointwise 95% interval.
* ``contrast`` rows: every pairwise difference ``mu_i - mu_j`` with *simultaneous* 95%
  intervals (all hold together) and single-step adjusted p-values, both from one max-t
  permutation distribution: ``max |t_ij|`` over pairs, studentized by the pairwise standard
  errors, under permutations of the level labels, **one permutation per prompt**, shared
  across the other factor (a prompt's proposals, shared by its aggregators, move as a block).
  An interval excludes 0 exactly when its p < alpha.
* ``effect`` rows: the effect size of a factor, ``tau = sqrt(mean_j (mu_j - mean mu)^2)``, the
  standard deviation of its level means (a fixed-levels SD, divisor K). Estimated debiased:
  the spread of the estimated means minus its sampling variance,
  ``tau^2 = (1/K^2) sum_{i<j} (d_ij^2 - se_ij^2)``, unbiased for tau^2 (reported as its square
  root, 0 when negative). The interval is the projection of the simultaneous contrast
  intervals onto tau (every tau of means whose contrasts all lie in their intervals): it holds
  tau with at least the contrasts' 95%, and it excludes 0 exactly when the global test rejects.
  ``p_value``: the max-t permutation test of "this factor does not matter" (all level labels
  exchangeable within a prompt).
* ``ratio`` row: aggregator effect / proposer effect, **moakit's own statistic** (the paper
  states no ratio), with a Fieller interval for tau_A^2 / tau_P^2 (bootstrap covariance over
  prompts) mapped to the SD scale; unbounded when the proposer effect is not clearly above 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

__all__ = ["impact", "impact_statistics", "table4", "paper_table4", "impact_summary", "default_build",
           "IMPACT_COLUMNS", "IMPACT_ITEM_COLUMNS", "TABLE4_COLUMNS", "PAPER_MODELS", "PAPER_AGGREGATOR"]

IMPACT_COLUMNS = ["level", "factor", "arm", "aggregator", "proposers", "versus", "score", "ci_low", "ci_high", "n",
                  "p_value", "ci_method", "errors", "calls", "calls_paid", "calls_reused", "input_tokens",
                  "output_tokens", "cost_usd"]
TABLE4_COLUMNS = ["model", "as_aggregator", "as_aggregator_ci_low", "as_aggregator_ci_high", "as_proposer",
                  "as_proposer_ci_low", "as_proposer_ci_high", "paper_model", "paper_as_aggregator",
                  "paper_as_proposer"]

# MoA paper (Wang et al. 2024, arXiv 2406.04692) Table 4: AlpacaEval 2.0 LC win rate (%), as
# aggregator (of the six-model proposer set) / as proposer (six samples, Qwen1.5-110B-Chat aggregating).
PAPER_TABLE4 = {
    "Qwen1.5-110B-Chat": (61.3, 56.7),
    "Qwen1.5-72B-Chat": (59.3, 53.3),
    "WizardLM-2-8x22B": (52.9, 63.8),
    "LLaMA-3-70B-Instruct": (45.0, 60.6),
    "Mixtral-8x22B-Instruct-v0.1": (48.4, 54.8),
    "dbrx-instruct": (41.5, 55.1),
}
# what a moakit agent or model name contains when it is one of the paper's models
_PAPER_KEYS = {"Qwen1.5-110B-Chat": "qwen1.5-110b", "Qwen1.5-72B-Chat": "qwen1.5-72b",
               "WizardLM-2-8x22B": "wizardlm-2-8x22b", "LLaMA-3-70B-Instruct": "llama-3-70b",
               "Mixtral-8x22B-Instruct-v0.1": "mixtral-8x22b", "dbrx-instruct": "dbrx"}
#: the paper's six models, as moakit's aliases (moakit.models.ALIASES), in Table 4's order
PAPER_MODELS = ["qwen1.5-110b-chat", "qwen1.5-72b-chat", "wizardlm-2-8x22b", "llama-3-70b-instruct",
                "mixtral-8x22b-instruct", "dbrx-instruct"]
#: the aggregator of Table 4's "as proposer" column
PAPER_AGGREGATOR = "qwen1.5-110b-chat"
ALL_PROPOSERS = "all"  # the proposers label of the paper design's aggregator arm
IMPACT_ITEM_COLUMNS = ["arm", "aggregator", "proposers"]  # before moakit.analysis.ablation.ITEM_COLUMNS


def paper_table4():
    """The MoA paper's Table 4 (AlpacaEval 2.0 LC win rate, %, as aggregator / as proposer)."""
    import pandas as pd

    return pd.DataFrame([{"model": m, "as_aggregator": a, "as_proposer": p} for m, (a, p) in PAPER_TABLE4.items()])


def paper_model(name: str | None) -> str | None:
    """The paper's name of a moakit agent or model name (``"qwen1.5-110b-chat"``,
    ``"together_ai/Qwen/Qwen1.5-110B-Chat"`` -> ``"Qwen1.5-110B-Chat"``), or None."""
    if not isinstance(name, str):
        return None
    low = name.lower()
    for paper, key in _PAPER_KEYS.items():
        if key in low:
            return paper
    return None


# ---- what to run ----------------------------------------------------------------------------------
def _aggregators(aggregators) -> dict[str, str]:
    if isinstance(aggregators, str):
        raise ValueError("aggregators must be a list (or dict label -> agent) of at least one agent, not one string")
    if isinstance(aggregators, Mapping):
        out = {str(k): v for k, v in aggregators.items()}
    elif isinstance(aggregators, (list, tuple)):
        out = {a: a for a in aggregators}
    else:
        raise ValueError(f"aggregators must be a list of agent names or a dict label -> agent, got {aggregators!r}")
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


def _proposer_models(models) -> dict[str, str]:
    """design="paper": each proposer is one agent (it proposes ``samples`` samples of itself)."""
    if isinstance(models, Mapping):
        out = {str(k): v for k, v in models.items()}
    elif isinstance(models, (list, tuple)) and all(isinstance(a, str) for a in models):
        out = {a: a for a in models}
    else:
        out = None
    if not out or not all(isinstance(v, str) and v for v in out.values()):
        raise ValueError("with design='paper', proposer_sets is a list of agent names (or dict label -> agent): "
                         "each is tested as a proposer, as `samples` samples of itself; got "
                         f"{models!r}")
    return out


def default_build(aggregator: str, proposers: Sequence[str], *, layers: int = 2, temp: float = 0.7,
                  max_tokens: int = 512):
    """The cell pipeline, ``layers`` deep: ``Propose(proposers)``, then ``layers - 2`` rounds of
    ``Synthesize(proposers)``, then ``Aggregate(aggregator)`` (2 layers: Propose + Aggregate, as
    in the paper's Table 4)."""
    from ..steps import Aggregate, Propose, Synthesize

    return ([Propose(list(proposers), temp=temp, max_tokens=max_tokens)]
            + [Synthesize(list(proposers), temp=temp, max_tokens=max_tokens) for _ in range(layers - 2)]
            + [Aggregate(aggregator, temp=temp, max_tokens=max_tokens)])


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _plan(design, aggregators, proposer_sets, *, layers, samples, fixed_aggregator, build):
    """(variants name -> pipeline, name -> key columns, attrs) of a design; raises on bad input."""
    variants, keys = {}, {}
    if design == "grid":
        if aggregators is None or proposer_sets is None:
            raise ValueError("design='grid' needs aggregators and proposer_sets")
        aggs, sets = _aggregators(aggregators), _proposer_sets(proposer_sets)
        for al, agent in aggs.items():
            for sl, agents in sets.items():
                name = f"{al} | {sl}"
                variants[name] = build(agent, agents)
                keys[name] = {"arm": "grid", "aggregator": al, "proposers": sl}
        return variants, keys, {"agents": {**aggs, **{k: "+".join(v) for k, v in sets.items()}}}
    aggs = _aggregators(PAPER_MODELS if aggregators is None else aggregators)
    props = _proposer_models(list(aggs.values()) if proposer_sets is None else proposer_sets)
    if fixed_aggregator is None:
        fixed_label = next(iter(aggs))
        fixed_agent = aggs[fixed_label]
    elif not isinstance(fixed_aggregator, str) or not fixed_aggregator:
        raise ValueError(f"fixed_aggregator must be an agent name or an aggregator label, got {fixed_aggregator!r}")
    else:
        fixed_label = fixed_aggregator
        fixed_agent = aggs.get(fixed_aggregator, fixed_aggregator)
    every = list(props.values())
    for al, agent in aggs.items():
        name = f"aggregator {al} | {ALL_PROPOSERS}"
        variants[name] = build(agent, every)
        keys[name] = {"arm": "aggregator", "aggregator": al, "proposers": ALL_PROPOSERS}
    for pl, agent in props.items():
        name = f"proposer {pl} x{samples} | {fixed_label}"
        variants[name] = build(fixed_agent, [agent] * samples)
        keys[name] = {"arm": "proposer", "aggregator": fixed_label, "proposers": pl}
    return variants, keys, {"agents": {**aggs, **props, fixed_label: fixed_agent}, "fixed_aggregator": fixed_label,
                            "samples": samples, "proposer_models": list(props)}


def impact(aggregators=None, proposer_sets=None, prompts=None, *, scorer, design: str = "grid", layers: int = 2,
           samples: int = 6, fixed_aggregator: str | None = None, repeats: int = 1, models: Any = None,
           store: Any = None, seed: int = 0, max_tokens: int | None = None, references: Sequence[Any] | None = None,
           build: Callable[[str, Sequence[str]], list] | None = None, n_boot: int = 1000, n_perm: int = 2000,
           alpha: float = 0.05, error_score: float | None = 0.0, items: bool = False, progress: bool = True,
           **run_kwargs):
    """Run the aggregator-vs-proposer design over ``prompts`` and estimate how much each choice
    matters (see the module doc for every estimand).

    Args:
        aggregators: agent names (or a dict label -> agent). ``design="paper"``: the models
            tested as aggregators, each over all of the proposer models (default
            :data:`PAPER_MODELS`, the paper's six).
        proposer_sets: ``design="grid"``: a dict name -> list of agents, or a list of agent
            lists (named by joining them with ``+``). ``design="paper"``: a list of agent names
            (or dict label -> agent), each tested as a proposer of ``samples`` samples of
            itself; default: the aggregators' agents, as in the paper. With ``models="local"``
            every name is the embedded model, but differently named agents are different
            samples (the request key, and so the sampling seed, includes the agent name).
        prompts: a list of queries or a DataFrame (``moakit.analysis.questions()``).
        design: ``"paper"`` (Table 4's two arms) or ``"grid"`` (the full factorial).
        layers: pipeline depth, >= 2 (Propose, ``layers - 2`` Synthesize rounds, Aggregate).
        samples: ``design="paper"``: samples of each proposer model (the paper: 6).
        fixed_aggregator: ``design="paper"``: the aggregator of the proposer arm (an
            aggregator label or an agent; default the first aggregator, Qwen1.5-110B-Chat in
            :data:`PAPER_MODELS`).
        scorer, repeats, models, store, seed, max_tokens, references, ``**run_kwargs``: as for
            :func:`moakit.analysis.ablate`.
        build: ``build(aggregator, proposers) -> pipeline`` instead of :func:`default_build`
            (then ``layers`` must stay 2).
        n_boot: bootstrap resamples (pointwise intervals of level means, the ratio's covariance).
        n_perm: permutations of the max-t test (contrasts and effects).
        alpha: level of every test; intervals are ``1 - alpha``.
        error_score: score of a failed run (default 0.0); None leaves it out (a prompt with a
            missing cell then drops out of that factor's contrasts and effect).
        items: also return the per-run rows (columns :data:`IMPACT_ITEM_COLUMNS` + ITEM_COLUMNS).

    Returns:
        DataFrame with columns :data:`IMPACT_COLUMNS` (see :func:`impact_statistics`); with
        ``items=True`` also the per-run rows. Everything is checked before the first call.
    """
    from .ablation import ITEM_COLUMNS, prepare, run_variants, validate_stats_args

    if design not in ("grid", "paper"):
        raise ValueError(f"design must be 'paper' (the MoA paper's Table 4) or 'grid' (a full factorial), got {design!r}")
    if prompts is None:
        raise ValueError("prompts is required: a list of queries or a DataFrame (moakit.analysis.questions())")
    _check_int("layers", layers, 2)
    _check_int("samples", samples, 1)
    validate_stats_args(n_boot=n_boot, n_perm=n_perm, alpha=alpha)
    if build is not None and layers != 2:
        raise ValueError("layers shapes the default pipeline; with build=..., build the layers you want yourself")
    own_build = build is not None
    if build is None:
        # the paper's reference settings: temperature 0.7, max_tokens 2048 (max_tokens= caps it per run)
        steps_max = 2048 if design == "paper" else 512

        def build(agg, props):
            return default_build(agg, props, layers=layers, max_tokens=steps_max)

    variants, keys, attrs = _plan(design, aggregators, proposer_sets, layers=layers, samples=samples,
                                  fixed_aggregator=fixed_aggregator, build=build)
    scorer, prompt_list, refs, st = prepare(variants, prompts, scorer=scorer, references=references, repeats=repeats,
                                            models=models, store=store, seed=seed, max_tokens=max_tokens,
                                            templates=run_kwargs.get("templates", "together"))
    raw = run_variants(variants, prompt_list, refs, scorer=scorer, repeats=repeats, models=models, store=st,
                       seed=seed, max_tokens=max_tokens, progress=progress, key_columns=keys, **run_kwargs)
    item_df = raw[IMPACT_ITEM_COLUMNS + ITEM_COLUMNS].copy()
    item_df.attrs["scorer"] = scorer.name
    out = impact_statistics(item_df, n_boot=n_boot, n_perm=n_perm, seed=seed, alpha=alpha, error_score=error_score)
    out.attrs.update({**attrs, "layers": None if own_build else layers})
    return (out, item_df) if items else out


# ---- statistics -----------------------------------------------------------------------------------
def _pairs(k: int):
    import numpy as np

    return np.triu_indices(k, 1)


def _pair_stats(xs):
    """Pairwise differences of column means and their standard errors, over the prompts axis:
    ``xs`` (..., P, K) -> (d, se), each (..., K(K-1)/2), pairs in ``np.triu_indices`` order.
    se_ij^2 = var_p(x_pi - x_pj) / P: the prompts are the independent units, so the pairing
    of levels within a prompt (shared proposals, shared difficulty) is accounted for."""
    import numpy as np

    p = xs.shape[-2]
    i, j = _pairs(xs.shape[-1])
    m = xs.mean(axis=-2)
    c = xs - m[..., None, :]
    cov = np.einsum("...pk,...pl->...kl", c, c) / max(p - 1, 1)
    d = m[..., i] - m[..., j]
    var = cov[..., i, i] + cov[..., j, j] - 2 * cov[..., i, j]
    return d, np.sqrt(np.maximum(var, 0.0) / p)


def _abs_t(d, se):
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(d) / se
    # se = 0: every prompt has the same difference; t is 0 if that difference is 0, else unbounded
    return np.where(se > 0, t, np.where(np.abs(d) > 1e-12, np.inf, 0.0))


def _factor(x, *, n_perm: int, rng, alpha: float, chunk: int = 200) -> dict:
    """Contrasts, effect and test of one factor from ``x``: prompts x levels (complete rows).

    The permutation distribution of max_ij |t_ij| permutes each prompt's level labels (one
    permutation per prompt, applied to the prompt's whole row, which in the grid is already
    averaged over the other factor: the same permutation for every level of it)."""
    import numpy as np

    p, k = x.shape
    d, se = _pair_stats(x)
    t = _abs_t(d, se)
    out = {"means": x.mean(axis=0), "d": d, "se": se, "n": p}
    if k < 2 or p < 2 or n_perm <= 0:
        nan = np.full(len(d), math.nan)
        out.update(lo=nan, hi=nan, p=nan, tau=math.nan, theta=math.nan, tau_lo=math.nan, tau_hi=math.nan,
                   p_global=math.nan)
        if k >= 2 and p >= 2:
            out["theta"] = float(np.sum(d ** 2 - se ** 2)) / k ** 2
            out["tau"] = math.sqrt(max(out["theta"], 0.0))
        return out
    maxes = []
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        perm = rng.random((b, p, k)).argsort(axis=2)
        xp = np.take_along_axis(np.broadcast_to(x, (b, p, k)), perm, axis=2)
        maxes.append(_abs_t(*_pair_stats(xp)).max(axis=1))
    m_sorted = np.sort(np.concatenate(maxes))[::-1]
    # p_ij = (1 + #{max-t* >= |t_ij|}) / (n_perm + 1): single-step, adjusted for all pairs.
    # The relative margin counts ties computed with different rounding as ties.
    count = (m_sorted[None, :] >= t[:, None] * (1 - 1e-9)).sum(axis=1)
    pv = (1 + count) / (n_perm + 1)
    # critical value c: p_ij < alpha exactly when |t_ij| exceeds the (m+1)-th largest max-t*
    m = math.ceil(alpha * (n_perm + 1) - 1 - 1e-9) - 1
    crit = float(m_sorted[m]) if 0 <= m < n_perm else math.inf
    rejected = pv < alpha
    half = crit * se
    with np.errstate(invalid="ignore"):
        lo, hi = d - half, d + half
    # an accepted contrast's interval holds 0 (it can miss it only by rounding at a tie)
    lo = np.where(rejected, lo, np.minimum(lo, 0.0))
    hi = np.where(rejected, hi, np.maximum(hi, 0.0))
    theta = float(np.sum(d ** 2 - se ** 2)) / k ** 2
    # projection: tau^2 = (1/K^2) sum_{i<j} (mu_i - mu_j)^2 over contrasts inside their intervals
    gap = np.where(rejected, np.abs(d) - half, 0.0)
    with np.errstate(invalid="ignore"):
        far = np.abs(d) + half
    out.update(lo=lo, hi=hi, p=pv, theta=theta, tau=math.sqrt(max(theta, 0.0)),
               tau_lo=math.sqrt(float(np.sum(gap ** 2))) / k, tau_hi=math.sqrt(float(np.sum(far ** 2))) / k,
               p_global=float(pv.min()), crit=crit)
    return out


def _theta_boot(x, idx):
    """Debiased tau^2 of ``x`` (prompts x levels) on bootstrap resamples of prompts ``idx``."""
    import numpy as np

    d, se = _pair_stats(x[idx])
    return np.sum(d ** 2 - se ** 2, axis=-1) / x.shape[1] ** 2


def _fieller(a: float, b: float, vaa: float, vab: float, vbb: float, z: float) -> tuple[float, float]:
    """Fieller's interval for a / b restricted to [0, inf): {r >= 0 : (a - r b)^2 <= z^2 var(a - r b)}
    (its hull when it is not an interval)."""
    qa = b * b - z * z * vbb
    qb = -2 * (a * b - z * z * vab)
    qc = a * a - z * z * vaa
    disc = qb * qb - 4 * qa * qc
    if qa > 0:  # the denominator is clearly away from 0: a bounded interval
        if disc < 0:
            return math.nan, math.nan
        r = sorted(((-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)))
        return max(r[0], 0.0), max(r[1], 0.0)
    if disc <= 0 or qa == 0:
        return 0.0, math.inf
    r = sorted(((-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)))
    # the set is (-inf, r0] U [r1, inf): its part in [0, inf) is an interval only when r0 < 0
    return (max(r[1], 0.0), math.inf) if r[0] < 0 else (0.0, math.inf)


def _ratio(xa, xp, *, n_boot: int, rng, alpha: float) -> tuple[float, float, float]:
    """Aggregator / proposer effect (SD ratio) and its Fieller interval; ``xa``, ``xp`` have the
    same prompts in the same row order."""
    import numpy as np
    from scipy.stats import norm

    fa, fp = _factor_theta(xa), _factor_theta(xp)
    ta, tp = math.sqrt(max(fa, 0.0)), math.sqrt(max(fp, 0.0))
    est = ta / tp if tp > 0 else (math.inf if ta > 0 else math.nan)
    p = xa.shape[0]
    if n_boot < 2 or p < 3 or math.isnan(fa) or math.isnan(fp):
        return est, math.nan, math.nan
    idx = rng.integers(0, p, size=(n_boot, p))
    cov = np.cov(_theta_boot(xa, idx), _theta_boot(xp, idx))
    lo, hi = _fieller(fa, fp, cov[0, 0], cov[0, 1], cov[1, 1], float(norm.ppf(1 - alpha / 2)))
    return est, math.sqrt(lo) if lo == lo else lo, math.sqrt(hi) if hi == hi else hi


def _factor_theta(x) -> float:
    if x.shape[1] < 2 or x.shape[0] < 2:
        return math.nan
    d, se = _pair_stats(x)
    return float((d ** 2 - se ** 2).sum()) / x.shape[1] ** 2


def impact_statistics(items, *, n_boot: int = 1000, n_perm: int = 2000, seed: int = 0, alpha: float = 0.05,
                      error_score: float | None = 0.0):
    """The impact table (columns :data:`IMPACT_COLUMNS`) of per-run rows: what
    ``impact(..., items=True)`` returns, or any frame with columns ``aggregator``,
    ``proposers``, ``item`` (the prompt) and ``score``, plus ``arm`` for the paper design
    (``"aggregator"``: each aggregator over one proposer set; ``"proposer"``: each proposer set
    under one aggregator; absent or ``"grid"``: a full factorial). ``repeat``, ``output``,
    ``error`` and the call / token / cost columns are used when present, so simulated results
    go through the same statistics as real ones.

    Rows (``level``): ``"cell"`` (one per aggregator x proposers run; mean over prompts with a
    Wilson or bootstrap interval), ``"aggregator"`` / ``"proposers"`` (each level's mean,
    pointwise interval: in the paper design its arm's cell, in the grid averaged over the other
    factor), ``"contrast"`` (``factor``; the level in ``aggregator`` or ``proposers``, the one
    it is compared with in ``versus``; ``score`` = difference; simultaneous max-t interval and
    adjusted p), ``"effect"`` (``factor`` ``"aggregator"`` / ``"proposers"``: debiased SD of the
    level means, projection interval, global max-t permutation p; ``"ratio"``: their ratio,
    moakit's own statistic, Fieller interval). ``arm`` says which arm a row comes from;
    ``ci_method`` how its interval was made. Prompts missing a cell of a factor's layout are
    left out of its level means, contrasts and effect (every level is compared on the same prompts).
    """
    import numpy as np
    import pandas as pd

    from .ablation import mean_ci, per_prompt, usage, validate_stats_args

    need = {"aggregator", "proposers", "item", "score"} - set(items.columns)
    if need:
        raise ValueError(f"impact_statistics needs columns {sorted(need)} (the items of impact(..., items=True))")
    validate_stats_args(n_boot=n_boot, n_perm=n_perm, alpha=alpha)
    items = items.copy()
    if "arm" not in items.columns:
        items["arm"] = "grid"
    arms = set(items["arm"])
    if arms == {"grid"}:
        design = "grid"
    elif arms <= {"aggregator", "proposer"}:
        design = "paper"
    else:
        raise ValueError(f"arm must be 'grid', or 'aggregator' / 'proposer' (the paper design), got {sorted(arms)}")
    rng = np.random.default_rng(seed)
    repeats = int(items["repeat"].nunique()) if "repeat" in items.columns else 1
    rows: list[dict] = []

    def row(level, factor, arm, aggregator, proposers, score, lo, hi, n, p=math.nan, method=None, versus=None,
            sub=None):
        r = {"level": level, "factor": factor, "arm": arm, "aggregator": aggregator, "proposers": proposers,
             "versus": versus, "score": score, "ci_low": lo, "ci_high": hi, "n": n, "p_value": p, "ci_method": method}
        if sub is not None:
            r.update(usage(sub))
        rows.append(r)

    def cells(sub, arm):
        wide = per_prompt(sub, ["aggregator", "proposers"], error_score)
        for (a, s) in dict.fromkeys(zip(sub["aggregator"], sub["proposers"])):
            m, lo, hi, method = mean_ci(wide[(a, s)].to_numpy(), n_boot=n_boot, rng=rng, binary_ok=repeats == 1)
            row("cell", None, arm, a, s, m, lo, hi, int(wide[(a, s)].notna().sum()), method=method,
                sub=sub[(sub["aggregator"] == a) & (sub["proposers"] == s)])

    def factor(x, labels, f, arm, other, sub):
        """Level, contrast and effect rows of factor ``f`` from x (prompts x levels, complete)."""
        col = "aggregator" if f == "aggregator" else "proposers"
        for j, lab in enumerate(labels):
            m, lo, hi, method = mean_ci(x[:, j], n_boot=n_boot, rng=rng, binary_ok=repeats == 1)
            row(f, f, arm, lab if f == "aggregator" else other, lab if f == "proposers" else other, m, lo, hi,
                x.shape[0], method=method, sub=sub[sub[col] == lab])
        res = _factor(x, n_perm=n_perm, rng=rng, alpha=alpha)
        for q, (i, j) in enumerate(zip(*_pairs(len(labels)))):
            row("contrast", f, arm, labels[i] if f == "aggregator" else other,
                labels[i] if f == "proposers" else other, float(res["d"][q]), float(res["lo"][q]),
                float(res["hi"][q]), x.shape[0], float(res["p"][q]), "max-t permutation, simultaneous",
                versus=labels[j])
        row("effect", f, arm, None, None, res["tau"], res["tau_lo"], res["tau_hi"], x.shape[0], res["p_global"],
            "debiased SD of level means; projection of the simultaneous contrasts")

    def complete(wide):
        keep = wide.notna().all(axis=1)
        return wide[keep]

    if design == "grid":
        cells(items, "grid")
        wide = complete(per_prompt(items, ["aggregator", "proposers"], error_score))
        a_labels = list(dict.fromkeys(items["aggregator"]))
        s_labels = list(dict.fromkeys(items["proposers"]))
        missing = [(a, s) for a in a_labels for s in s_labels if (a, s) not in wide.columns]
        if missing:
            raise ValueError(f"design 'grid' needs every aggregator x proposers cell; missing {missing[:5]}")
        cube = np.stack([np.stack([wide[(a, s)].to_numpy(dtype=float) for s in s_labels], axis=1)
                         for a in a_labels], axis=1)  # prompts x aggregators x sets
        xa, xp = cube.mean(axis=2), cube.mean(axis=1)
        factor(xa, a_labels, "aggregator", "grid", None, items)
        factor(xp, s_labels, "proposers", "grid", None, items)
        ratio = _ratio(xa, xp, n_boot=n_boot, rng=rng, alpha=alpha) if min(len(a_labels), len(s_labels)) >= 2 \
            else (math.nan, math.nan, math.nan)
        n_ratio, ratio_arm = len(xa), "grid"
    else:
        xs = {}
        for arm, f, col, other_col in (("aggregator", "aggregator", "aggregator", "proposers"),
                                      ("proposer", "proposers", "proposers", "aggregator")):
            sub = items[items["arm"] == arm]
            if not len(sub):
                continue
            others = list(dict.fromkeys(sub[other_col]))
            if len(others) != 1:
                raise ValueError(f"the paper design's {arm} arm holds one {other_col} (all its runs share it); "
                                 f"got {others}")
            cells(sub, arm)
            wide = complete(per_prompt(sub, [col], error_score))
            labels = list(dict.fromkeys(sub[col]))
            xs[f] = wide[labels]
            factor(wide[labels].to_numpy(dtype=float), labels, f, arm, others[0], sub)
        ratio, n_ratio = (math.nan, math.nan, math.nan), 0
        if len(xs) == 2 and min(v.shape[1] for v in xs.values()) >= 2:
            common = xs["aggregator"].index.intersection(xs["proposers"].index)
            n_ratio = len(common)
            ratio = _ratio(xs["aggregator"].loc[common].to_numpy(dtype=float),
                           xs["proposers"].loc[common].to_numpy(dtype=float), n_boot=n_boot, rng=rng, alpha=alpha)
        ratio_arm = "both"
    row("effect", "ratio", ratio_arm, None, None, *ratio, n_ratio, math.nan,
        "Fieller (moakit's own statistic: the paper states no ratio)")
    out = pd.DataFrame(rows, columns=IMPACT_COLUMNS)
    for c in ("errors", "calls", "calls_paid", "calls_reused", "input_tokens", "output_tokens"):
        out[c] = out[c].astype("Int64")
    out.attrs.update({"design": design, "scorer": items.attrs.get("scorer"), "n_boot": n_boot, "n_perm": n_perm,
                      "seed": seed, "alpha": alpha, "repeats": repeats})
    return out


# ---- layouts and readings -------------------------------------------------------------------------
def table4(result, *, scale: float = 100.0):
    """A ``design="paper"`` :func:`impact` result in the MoA paper's Table 4 layout: one row per
    model, its score as aggregator (of all the proposer models) and as proposer (``samples``
    samples of itself under the fixed aggregator), each with its pointwise 95% interval, and
    the paper's figures beside them (AlpacaEval 2.0 LC win rate, %) where the model is one of
    the paper's six (matched by name: ``qwen1.5-110b-chat`` -> Qwen1.5-110B-Chat). Paper models
    first, in the paper's order. ``scale`` multiplies moakit's scores (default 100: percentages,
    like the paper's). The scorer is moakit's, not AlpacaEval's: the columns sit side by side,
    they are not the same measurement. Columns :data:`TABLE4_COLUMNS`."""
    import pandas as pd

    need = {"level", "arm", "aggregator", "proposers", "score", "ci_low", "ci_high"}
    if not need <= set(result.columns):
        raise ValueError("table4 takes the DataFrame returned by moakit.analysis.impact")
    ag = result[(result["level"] == "aggregator") & (result["arm"] == "aggregator")].set_index("aggregator")
    pr = result[(result["level"] == "proposers") & (result["arm"] == "proposer")].set_index("proposers")
    if not len(ag) and not len(pr):
        raise ValueError("table4 lays out the paper's design: run impact(..., design='paper'). A grid's level means "
                         "average over the other factor, which is not what Table 4 measured; read its "
                         "level == 'aggregator' / 'proposers' rows instead")
    agents = result.attrs.get("agents", {})
    names = list(dict.fromkeys(list(ag.index) + list(pr.index)))
    paper_of = {n: paper_model(n) or paper_model(agents.get(n)) for n in names}
    order = list(PAPER_TABLE4)
    names.sort(key=lambda n: order.index(paper_of[n]) if paper_of[n] in order else len(order))
    rows = []
    for n in names:
        r = {"model": n}
        for col, src in (("as_aggregator", ag), ("as_proposer", pr)):
            got = src.loc[n] if n in src.index else None
            for suffix, field in (("", "score"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                r[col + suffix] = float(got[field]) * scale if got is not None else math.nan
        pm = paper_of[n]
        r["paper_model"] = pm
        r["paper_as_aggregator"], r["paper_as_proposer"] = PAPER_TABLE4.get(pm, (math.nan, math.nan))
        rows.append(r)
    out = pd.DataFrame(rows, columns=TABLE4_COLUMNS)
    out.attrs.update({"scale": scale, "scorer": result.attrs.get("scorer"),
                      "fixed_aggregator": result.attrs.get("fixed_aggregator")})
    return out


def impact_summary(result) -> str:
    """One line: each factor's effect (debiased SD of its level means) with its interval and
    p-value, the ratio (moakit's statistic) with its Fieller interval, and the best-supported
    contrast of each factor."""
    eff = result[result["level"] == "effect"].set_index("factor")
    if not len(eff):
        return "no effects to report"

    def num(v):
        return "inf" if math.isinf(v) else f"{v:.3g}"

    def fmt(f):
        if f not in eff.index or eff.loc[f, "score"] != eff.loc[f, "score"]:
            return "not estimable (one level)"
        r = eff.loc[f]
        ci = "" if r["ci_low"] != r["ci_low"] else f" [95% CI {num(r['ci_low'])} to {num(r['ci_high'])}]"
        p = "" if r["p_value"] != r["p_value"] else f", p = {r['p_value']:.2g}"
        return f"SD {r['score']:.3g}{ci}{p}"

    parts = [f"aggregator effect {fmt('aggregator')}", f"proposer effect {fmt('proposers')}"]
    if "ratio" in eff.index:
        r = eff.loc["ratio"]
        if r["score"] != r["score"] or math.isinf(r["score"]):
            parts.append("ratio (moakit's statistic) undefined: no proposer effect estimated")
        else:
            ci = "" if r["ci_low"] != r["ci_low"] else f" [Fieller {num(r['ci_low'])} to {num(r['ci_high'])}]"
            parts.append(f"ratio {r['score']:.2g}x{ci} (moakit's statistic)")
    con = result[(result["level"] == "contrast") & result["p_value"].notna()]
    for f in ("aggregator", "proposers"):
        c = con[con["factor"] == f]
        if len(c):
            best = c.loc[c["p_value"].idxmin()]
            who = best["aggregator"] if f == "aggregator" else best["proposers"]
            parts.append(f"largest {f} contrast {who} - {best['versus']} = {best['score']:+.3g} "
                         f"[{best['ci_low']:+.3g}, {best['ci_high']:+.3g}], adjusted p = {best['p_value']:.2g}")
    return "; ".join(parts)
