"""Ablations: pipeline variants x prompts x repeats, scored, with intervals and with every
identical call paid once.

All variants run in one trace store with ``cache=True`` and the same seeds, so a call that two
variants make identically (the six proposals in front of an added Shuffle, say) is made by
the first and replayed by the others: ``calls_paid`` and ``calls_reused`` show it.

Statistics (per variant; the prompt is the unit, its value the mean over repeats):

* ``score``: the variant's mean score over the population of prompts; ``ci_low`` /
  ``ci_high`` its 95% interval. Binary scores with one repeat get the Wilson score interval
  (it never collapses to a point at 0% or 100%); anything else a percentile bootstrap over
  prompts. ``ci_method`` says which.
* ``delta``: the mean paired difference with the baseline variant (the first, unless
  ``baseline=``) over the same prompts and seeds. ``p_value``: the sign-flip randomisation test
  of "no difference" (:func:`sign_flip`); ``delta_ci_low`` / ``delta_ci_high``: the 95%
  interval that inverts that same test, so it excludes 0 exactly when ``p_value < 0.05``.
  ``p_holm``: the p-values of all non-baseline variants adjusted together (Holm): reject
  where ``p_holm < 0.05`` to keep the chance of any false "this variant differs" <= 5%.
  Intervals are per comparison, not simultaneous.
* Inference is conditional on one proposal draw per prompt x repeat: the variants of a prompt
  and repeat share its proposals (that is what makes their calls reusable), so a difference is
  measured on those proposals, and prompts with their draws are the sampled units. It says how
  the variant changes the score for proposals drawn like these, not how that change varies
  across fresh draws for one prompt; more repeats average over more draws.
* tokens (``input_tokens``, ``output_tokens``) count every call of the variant, replayed or not:
  what the variant uses on its own; ``cost_usd`` is the money this ablation actually spent
  on it (replayed calls cost nothing), ``calls_paid`` / ``calls_reused`` split its calls.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..errors import BudgetExceeded

__all__ = ["ablate", "ablation_summary", "ablation_reading", "robustness_variants", "sign_flip", "holm", "usage",
           "ABLATION_COLUMNS", "ITEM_COLUMNS"]

ABLATION_COLUMNS = ["variant", "score", "ci_low", "ci_high", "n", "repeats", "delta", "delta_ci_low",
                    "delta_ci_high", "p_value", "p_holm", "errors", "calls", "calls_paid", "calls_reused", "input_tokens",
                    "output_tokens", "cost_usd", "ci_method", "scorer"]
ITEM_COLUMNS = ["variant", "repeat", "item", "prompt", "reference", "output", "score", "error", "trace_id",
                "cost_usd", "input_tokens", "output_tokens", "calls", "calls_paid", "calls_reused"]


# ---- shared helpers (used by impact too) -------------------------------------------------------
def prompts_and_references(prompts: Any, references: Any, scorer) -> tuple[list, list | None]:
    """The prompt list and the aligned references. A DataFrame's ``aliases`` (a list of
    accepted answers), ``reference`` or ``answer`` column is used when ``references`` is None."""
    from ..runner.plan import prompt_list

    items = prompt_list(prompts)
    if not items:
        raise ValueError("prompts is empty")
    if references is None:
        try:
            import pandas as pd

            if isinstance(prompts, pd.DataFrame):
                for col in ("aliases", "reference", "answer", "references"):
                    if col in prompts.columns:
                        references = list(prompts[col])
                        break
        except ImportError:  # pragma: no cover
            pass
    elif isinstance(references, str):
        raise ValueError("references must be a list aligned with the prompts, not one string")
    else:
        references = list(references)
    if references is not None and len(references) != len(items):
        raise ValueError(f"{len(items)} prompts but {len(references)} references")
    if references is None and getattr(scorer, "needs_reference", False):
        raise ValueError(f"the scorer {scorer.name!r} compares outputs with reference answers: pass references=... "
                         "(or a prompts DataFrame with a 'reference' column)")
    return items, references


def prepare(variants: Mapping[str, Any], prompts, *, scorer, references, repeats, models, store, seed, max_tokens,
            templates="together"):
    """Validate everything before the first call; open the store; bind the scorer."""
    from ..runner.plan import plan_run
    from ..store import open_store
    from .scorers import as_scorer

    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty dict of name -> pipeline")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer (it keys the cache that variants share), got {seed!r}")
    scorer = as_scorer(scorer)
    items, refs = prompts_and_references(prompts, references, scorer)
    st = open_store(store)
    for name, pipe in variants.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"variant names must be non-empty strings, got {name!r}")
        # resolves every agent and checks API keys: fails here, before anything is spent
        plan_run(pipe, items[0], seed=seed, models=models, templates=templates, max_tokens=max_tokens, cache=st)
    if hasattr(scorer, "with_store") and getattr(scorer, "store", None) is None:
        scorer = scorer.with_store(st)
    return scorer, items, refs, st


def run_variants(variants: Mapping[str, Any], items: list, refs: list | None, *, scorer, repeats: int, models,
                 store, seed: int, max_tokens, progress: bool, key_columns: Mapping[str, Mapping[str, Any]] | None = None,
                 **run_kwargs):
    """Run every variant over every prompt ``repeats`` times (repeat r uses seed + r) in one
    store with the cache on; score the outputs. One row per (variant, repeat, prompt)."""
    import pandas as pd

    from ..runner import run_batch
    from ..runner.api import progress_bar

    bar = None
    total = len(variants) * repeats
    if progress and total > 1:
        bar = progress_bar(total, "variants", "batch")
    frames = []

    def tag(df, name, r):
        df = df.assign(variant=name, repeat=r, reference=list(refs) if refs is not None else None)
        for col, value in (key_columns or {}).get(name, {}).items():
            df[col] = value
        return df

    def scored(frames):
        out = pd.concat(frames, ignore_index=True)
        out["score"] = scorer.score_many(list(out["output"]), list(out["reference"]) if refs is not None else None,
                                         list(out["prompt"]))
        return out

    try:
        for r in range(repeats):
            for name, pipe in variants.items():
                if bar is not None:
                    bar.set_postfix_str(f"{name} #{r}")
                # one bar: the batches' own bars only when there is no bar over the batches
                try:
                    df = run_batch(pipe, items, seed=seed + r, models=models, store=store, cache=True,
                                   max_tokens=max_tokens, progress=progress and bar is None, name=name, **run_kwargs)
                except BudgetExceeded as e:  # the budget stopped this batch: the work done so far goes on the error
                    if e.partial is not None:
                        frames.append(tag(e.partial, name, r))
                    e.partial = scored(frames)
                    done = [f"{f['variant'].iloc[0]} #{f['repeat'].iloc[0]}" for f in frames[:-1]]
                    e.args = (f"{e.args[0]} Ablation: stopped in variant {name!r}, repeat {r}; finished before it: "
                              f"{', '.join(done) or 'none'}. e.partial holds the rows of every batch run "
                              "(scored where there is an output).",)
                    raise
                frames.append(tag(df, name, r))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return scored(frames)


# ---- statistics ----------------------------------------------------------------------------------
def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes out of n."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values, *, n_boot: int, rng, binary_ok: bool = True) -> tuple[float, float, float, str]:
    """(mean, low, high, method) of per-prompt values."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan, math.nan, math.nan, "none"
    m = float(x.mean())
    if binary_ok and np.all((x == 0) | (x == 1)):
        lo, hi = wilson(float(x.sum()), len(x))
        return m, lo, hi, "wilson"
    if n_boot <= 0 or len(x) < 2:
        return m, math.nan, math.nan, "none"
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = x[idx].mean(axis=1)
    return m, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)), "bootstrap"


def sign_flip(d, *, n_perm: int, rng, alpha: float = 0.05, exact_max: int = 16) -> dict:
    """The sign-flip randomisation test of paired differences and the interval that inverts it.

    Estimand: the mean paired difference ``delta`` over the population the prompts were drawn
    from. ``p_value`` tests ``delta = 0``: under it the differences are symmetric about 0, so
    flipping their signs leaves their distribution unchanged; the statistic is ``|sum(d)|``.
    The interval is ``{delta0 : the same test applied to d - delta0 does not reject at alpha}``,
    computed exactly (no grid): for one sign vector s the flipped statistic ``|a - b delta0|``
    (``a = s.d``, ``b = sum(s)``) reaches the observed ``|c - n delta0|`` on a closed interval
    of delta0 with endpoints ``(c - a)/(n - b)`` and ``(c + a)/(n + b)``, which holds
    ``mean(d)``; the test's p-value at delta0 counts the sign vectors whose interval holds it.
    ``p_value`` is that same count at 0, so the interval excludes 0 exactly when
    ``p_value < alpha``: the two never disagree.

    All ``2**n`` sign vectors when ``n <= exact_max`` (p = count / 2**n), else ``n_perm``
    random ones (p = (1 + count) / (n_perm + 1), valid at any ``n_perm``). Non-finite
    differences are dropped. Returns ``{"delta", "ci_low", "ci_high", "p_value", "n", "method"}``.
    """
    import numpy as np

    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    out = {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n": n, "method": "none"}
    if not n:
        return out
    out["delta"] = float(d.mean())
    if n <= exact_max:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        total, extra, method = len(signs), 0, "sign-flip exact"
    elif n_perm > 0:
        signs = rng.choice([-1.0, 1.0], size=(n_perm, n))
        total, extra, method = n_perm + 1, 1, "sign-flip Monte Carlo"
    else:
        return out
    c = float(d.sum())
    a = signs @ d
    b = signs.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = np.where(b < n, (c - a) / (n - b), -np.inf)   # b == n: s is all +1, |a - b x| == |c - n x| everywhere
        r2 = np.where(b > -n, (c + a) / (n + b), np.inf)   # b == -n: all -1, likewise
    lo_s, hi_s = np.minimum(r1, r2), np.maximum(r1, r2)
    lo_s = np.where(b == n, -np.inf, np.where(b == -n, -np.inf, lo_s))
    hi_s = np.where(b == n, np.inf, np.where(b == -n, np.inf, hi_s))
    # ties count as "at least as extreme": widen each interval by a rounding margin so a tie
    # computed with different rounding on the two sides is still counted
    tol = 1e-12 * (1.0 + float(np.abs(d).max()) * n)
    lo_s, hi_s = lo_s - tol, hi_s + tol
    # p(x) = (extra + #{s: lo_s <= x <= hi_s}) / total; accept x iff p(x) >= alpha
    need = math.ceil(alpha * total - 1e-9) - extra  # vectors that must hold x for acceptance
    count0 = int(np.sum((lo_s <= 0.0) & (0.0 <= hi_s)))
    out["p_value"] = (extra + count0) / total
    if need <= 0:
        out["ci_low"], out["ci_high"] = -math.inf, math.inf
    else:
        # every interval holds mean(d); the accepted set is [need-th smallest lo, need-th largest hi]
        lo, hi = float(np.sort(lo_s)[need - 1]), float(np.sort(hi_s)[::-1][need - 1])
        # an endpoint within the margin on the far side of 0 is 0 (identical variants: [0, 0], not
        # [-1e-12, 1e-12]); 0 stays inside exactly when it was, so interval and test still agree
        out["ci_low"] = 0.0 if -tol <= lo < 0.0 <= hi else lo
        out["ci_high"] = 0.0 if lo <= 0.0 < hi <= tol else hi
    out["method"] = method
    return out


def holm(p) -> list[float]:
    """Holm's step-down adjustment of a list of p-values (NaN stays NaN and is not counted):
    rejecting where the adjusted p < alpha keeps the chance of any false rejection in the
    family <= alpha, whatever the dependence between the tests."""
    import numpy as np

    p = np.asarray(p, dtype=float)
    out = np.full(len(p), math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if not m:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out.tolist()


def per_prompt(items, group_cols: Sequence[str], error_score: float | None):
    """Per (group, prompt) mean score over repeats: a DataFrame indexed by ``item`` with one
    column per group key (a tuple for several group columns). A run without output (``output``
    missing, when that column is present) scores ``error_score``; None leaves it out."""
    import numpy as np

    df = items.copy()
    if error_score is not None and "output" in df.columns:
        failed = df["output"].isna()
        df.loc[failed, "score"] = error_score
    df["score"] = df["score"].astype(float)
    keys = list(group_cols)
    wide = df.groupby(keys + ["item"], sort=False)["score"].mean().unstack(keys)
    return wide.replace([np.inf, -np.inf], np.nan)


def validate_stats_args(*, n_boot, n_perm, alpha) -> None:
    """Raise a clear ValueError for a bad resample count or level (before any call is made)."""
    for name, v in (("n_boot", n_boot), ("n_perm", n_perm)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")


def usage(rows) -> dict:
    """What a set of per-run rows cost: failed runs (``error`` set), calls (paid and replayed),
    tokens and dollars. A column the rows lack counts 0 (simulated items have none)."""
    def total(col, kind=int):
        return kind(rows[col].fillna(0).sum()) if col in rows.columns else kind(0)

    errors = int(rows["error"].notna().sum()) if "error" in rows.columns else 0
    return {"errors": errors, "calls": total("calls"), "calls_paid": total("calls_paid"),
            "calls_reused": total("calls_reused"), "input_tokens": total("input_tokens"),
            "output_tokens": total("output_tokens"), "cost_usd": total("cost_usd", float)}


def ablation_summary(items, *, baseline: str | None = None, n_boot: int = 1000, seed: int = 0,
                     error_score: float | None = 0.0, n_perm: int = 10000, alpha: float = 0.05):
    """The per-variant summary (columns :data:`ABLATION_COLUMNS`) of an items DataFrame: what
    ``ablate(..., items=True)`` returns, or any frame with columns ``variant``, ``item`` (the
    prompt) and ``score`` (``repeat``, ``output``, ``error`` and the call / token / cost columns
    of :data:`ITEM_COLUMNS` are used when present), so simulated results go through the same
    statistics as real ones.

    Estimands (the prompt is the unit; a prompt's value is its mean over repeats):
    ``score``, the variant's mean score over the population of prompts; ``delta``, the mean
    paired difference variant - baseline. ``delta_ci_*`` and ``p_value`` come from one
    sign-flip test (:func:`sign_flip`): the interval inverts it, so it excludes 0 exactly when
    ``p_value < alpha``. ``p_holm`` adjusts the p-values of all non-baseline variants together
    (Holm), so rejecting where ``p_holm < alpha`` keeps the family-wise error <= alpha; the
    intervals are per comparison (95% each), not simultaneous. Inference is conditional on one
    proposal draw per prompt x repeat: variants share the proposals of a prompt and repeat, so a
    difference is measured on those proposals; prompts (with their draw) are the sampled units.

    ``error_score``: what a failed run scores (default 0: no answer is a wrong answer); None
    leaves failures out of the means."""
    import numpy as np
    import pandas as pd

    need = {"variant", "item", "score"} - set(items.columns)
    if need:
        raise ValueError(f"ablation_summary needs columns {sorted(need)} (the items of ablate(..., items=True))")
    validate_stats_args(n_boot=n_boot, n_perm=n_perm, alpha=alpha)
    rng = np.random.default_rng(seed)
    variants = list(dict.fromkeys(items["variant"]))
    if baseline is None:
        baseline = variants[0]
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not a variant; variants: {variants}")
    wide = per_prompt(items, ["variant"], error_score)
    repeats = int(items["repeat"].nunique()) if "repeat" in items.columns else 1
    rows = []
    for v in variants:
        vals = wide[v].to_numpy()
        m, lo, hi, method = mean_ci(vals, n_boot=n_boot, rng=rng, binary_ok=repeats == 1)
        if v == baseline:
            t = {"delta": 0.0, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
        else:
            t = sign_flip(vals - wide[baseline].to_numpy(), n_perm=n_perm, rng=rng, alpha=alpha)
        rows.append({
            "variant": v, "score": m, "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(vals).sum()),
            "repeats": repeats, "delta": t["delta"], "delta_ci_low": t["ci_low"], "delta_ci_high": t["ci_high"],
            "p_value": t["p_value"], "p_holm": math.nan, **usage(items[items["variant"] == v]), "ci_method": method,
            "scorer": items.attrs.get("scorer"),
        })
    out = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    out["p_holm"] = holm(out["p_value"])
    out.attrs.update({"baseline": baseline, "n_boot": n_boot, "n_perm": n_perm, "seed": seed, "alpha": alpha,
                      "scorer": items.attrs.get("scorer")})
    return out


def ablation_reading(summary) -> str:
    """One line per non-baseline variant: its score, the paired difference with the baseline
    and its interval, p-value and Holm-adjusted p-value, and the calls it paid for."""
    if summary is None or not len(summary):
        return "no variants"
    base = summary.attrs.get("baseline") or summary.iloc[0]["variant"]
    b = summary[summary["variant"] == base].iloc[0]

    def ci(lo, hi):
        return "" if lo != lo else f" (95% CI {lo:.2f} to {hi:.2f})"

    parts = [f"{base}: {b['score']:.2f}{ci(b['ci_low'], b['ci_high'])}, {int(b['calls_paid'])} calls paid"]
    for _, r in summary.iterrows():
        if r["variant"] == base:
            continue
        p = "" if r["p_value"] != r["p_value"] else f", p = {r['p_value']:.2g}"
        if "p_holm" in r and r["p_holm"] == r["p_holm"]:
            p += f" (Holm {r['p_holm']:.2g})"
        parts.append(f"{r['variant']}: {r['score']:.2f}, {r['delta']:+.2f} vs {base}{ci(r['delta_ci_low'], r['delta_ci_high'])}"
                     f"{p}, {int(r['calls_paid'])} calls paid, {int(r['calls_reused'])} reused")
    return "; ".join(parts)


# ---- the entry point ---------------------------------------------------------------------------
def ablate(variants: Mapping[str, Any], prompts, *, scorer, repeats: int = 1, models: Any = None, store: Any = None,
           seed: int = 0, max_tokens: int | None = None, references: Sequence[Any] | None = None,
           baseline: str | None = None, n_boot: int = 1000, n_perm: int = 10000, alpha: float = 0.05,
           error_score: float | None = 0.0, items: bool = False, progress: bool = True, estimate: bool = False,
           budget_usd: float | None = None, max_paid_calls: int | None = None, **run_kwargs):
    """Run named pipeline variants over the same prompts and compare their scores.

    Args:
        variants: ``{"moa_lite": moa_lite, "shuffle": [...], ...}`` (see :func:`robustness_variants`).
        prompts: a list of queries or a DataFrame (``moakit.analysis.questions()``); its
            ``aliases`` / ``reference`` column gives the references when ``references`` is None.
        scorer: a :class:`~moakit.analysis.scorers.Scorer`, a built-in's name or a callable.
        repeats: runs per prompt; repeat r uses seed ``seed + r`` (fresh samples, fresh cost).
        models, max_tokens, ``**run_kwargs``: passed to :func:`moakit.run_batch` (e.g.
            ``models="local"``, ``max_concurrency``, ``templates``).
        store: the trace store (path or TraceStore) every variant records to and replays from.
        seed: shared by all variants, so identical upstream calls have identical request keys
            and are paid once; Shuffle/Dropout are reproducible per prompt.
        baseline: the variant the others are compared with (default: the first).
        n_boot: bootstrap resamples for a non-binary score's interval.
        n_perm: random sign vectors of the sign-flip test (all 2**n are used when there are at
            most 16 prompts).
        alpha: level of the tests; intervals are ``1 - alpha``.
        error_score: score of a failed run (default 0.0); None leaves failures out.
        items: also return the per-run rows: ``(summary, items)``.
        estimate: first show :func:`moakit.estimate` of the whole ablation (every variant and
            repeat, with what the variants will share), before any call.
        budget_usd, max_paid_calls: one budget for the whole ablation (see
            :mod:`moakit.runner.budget`): no call starts that could pass it; when one is refused
            the ablation stops and raises :class:`moakit.BudgetExceeded`, whose ``partial`` holds
            the item rows of what ran (the stopped prompts with ``error``). Rerun with a larger
            budget: the store serves what was paid.

    Returns:
        DataFrame, one row per variant, columns :data:`ABLATION_COLUMNS` (see the module doc
        for each statistic, and :func:`ablation_summary`); with ``items=True`` also the rows
        :data:`ITEM_COLUMNS`. Everything is checked before the first call.
    """
    if isinstance(variants, Mapping) and baseline is not None and baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not a variant; variants: {list(variants)}")
    validate_stats_args(n_boot=n_boot, n_perm=n_perm, alpha=alpha)
    scorer, prompt_list, refs, st = prepare(variants, prompts, scorer=scorer, references=references,
                                            repeats=repeats, models=models, store=store, seed=seed,
                                            max_tokens=max_tokens, templates=run_kwargs.get("templates", "together"))
    from ..runner.budget import make_budget

    budget = make_budget(budget_usd, max_paid_calls, run_kwargs.pop("budget", None))
    if budget is not None:
        from ..runner.plan import plan_run

        for pipe in variants.values():  # an unpriced model under budget_usd: refused before any call
            budget.check_models(plan_run(pipe, prompt_list[0], seed=seed, models=models, max_tokens=max_tokens,
                                         templates=run_kwargs.get("templates", "together"), cache=st).specs)
        run_kwargs["budget"] = budget
    if estimate:
        from ..runner.estimate import show_estimate

        show_estimate(dict(variants), prompt_list, models=models, seed=seed, cache=st, max_tokens=max_tokens,
                      templates=run_kwargs.get("templates", "together"), repeats=repeats)
    raw = run_variants(variants, prompt_list, refs, scorer=scorer, repeats=repeats, models=models, store=st,
                       seed=seed, max_tokens=max_tokens, progress=progress, **run_kwargs)
    item_df = raw[ITEM_COLUMNS].copy()
    item_df.attrs["scorer"] = scorer.name
    summary = ablation_summary(item_df, baseline=baseline, n_boot=n_boot, n_perm=n_perm, alpha=alpha, seed=seed,
                               error_score=error_score)
    return (summary, item_df) if items else summary


def robustness_variants(pipeline, *, dropout: Sequence[float] = (0.2,), shuffle: bool = True,
                        combined: bool = False, name: str = "base") -> dict[str, list]:
    """``{"base": pipeline, "shuffle": ..., "dropout0.2": ...}`` (plus ``"shuffle+dropout0.2"``
    with ``combined=True``): Shuffle and/or Dropout inserted right before the pipeline's last
    aggregating step (Aggregate, Vote or Rank), as in the page's robust_moa."""
    from ..steps import Dropout, Shuffle, validate_pipeline

    steps = validate_pipeline(pipeline)
    where = max((i for i, s in enumerate(steps) if s.kind in ("Aggregate", "Vote", "Rank")), default=None)
    if where is None:
        raise ValueError("robustness_variants: the pipeline has no Aggregate, Vote or Rank step to put Shuffle or "
                         "Dropout in front of")
    out = {name: list(steps)}
    if shuffle:
        out["shuffle"] = steps[:where] + [Shuffle()] + steps[where:]
    for p in dropout:
        out[f"dropout{p:g}"] = steps[:where] + [Dropout(p)] + steps[where:]
        if shuffle and combined:
            out[f"shuffle+dropout{p:g}"] = steps[:where] + [Shuffle(), Dropout(p)] + steps[where:]
    return out
