"""Ablations: pipeline variants x prompts x repeats, scored, with intervals and with every
identical call paid once.

All variants run in one trace store with ``cache=True`` and the same seeds, so a call that two
variants make identically (the six proposals in front of an added Shuffle, say) is made by
the first and replayed by the others: ``calls_paid`` and ``calls_reused`` show it.

Statistics (per variant; the prompt is the unit):

* ``score``: mean over prompts of the prompt's mean over repeats.
* ``ci_low`` / ``ci_high``: 95% interval. Binary scores with one repeat get the Wilson score
  interval (it never collapses to a point at 0% or 100%); anything else a percentile
  bootstrap over prompts. ``ci_method`` says which.
* ``delta`` / ``delta_ci_low`` / ``delta_ci_high`` / ``p_value``: the paired difference with the
  baseline variant (the first, unless ``baseline=``) over the same prompts and seeds, a
  percentile bootstrap interval, and a sign-flip permutation test of "no difference".
* tokens (``input_tokens``, ``output_tokens``) count every call of the variant, replayed or not:
  what the variant uses on its own; ``cost_usd`` is the money this ablation actually spent
  on it (replayed calls cost nothing), ``calls_paid`` / ``calls_reused`` split its calls.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["ablate", "ablation_summary", "ablation_reading", "robustness_variants", "ABLATION_COLUMNS", "ITEM_COLUMNS"]

ABLATION_COLUMNS = ["variant", "score", "ci_low", "ci_high", "n", "repeats", "delta", "delta_ci_low",
                    "delta_ci_high", "p_value", "errors", "calls", "calls_paid", "calls_reused", "input_tokens",
                    "output_tokens", "cost_usd", "ci_method", "scorer"]
ITEM_COLUMNS = ["variant", "repeat", "item", "prompt", "reference", "output", "score", "error", "trace_id",
                "cost_usd", "input_tokens", "output_tokens", "calls", "calls_paid", "calls_reused"]


# ---- shared helpers (used by impact too) -------------------------------------------------------
def prompts_and_references(prompts: Any, references: Any, scorer) -> tuple[list, list | None]:
    """The prompt list and the aligned references. A DataFrame's ``aliases`` (a list of
    accepted answers), ``reference`` or ``answer`` column is used when ``references`` is None."""
    from ..runner.plan import prompt_list as _prompt_list

    items = _prompt_list(prompts)
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

    bar = None
    total = len(variants) * repeats
    if progress and total > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="variants", unit="batch")
    frames = []
    try:
        for r in range(repeats):
            for name, pipe in variants.items():
                if bar is not None:
                    bar.set_postfix_str(f"{name} #{r}")
                df = run_batch(pipe, items, seed=seed + r, models=models, store=store, cache=True,
                               max_tokens=max_tokens, progress=progress, name=name, **run_kwargs)
                df = df.assign(variant=name, repeat=r,
                               reference=list(refs) if refs is not None else None)
                for col, value in (key_columns or {}).get(name, {}).items():
                    df[col] = value
                frames.append(df)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    out = pd.concat(frames, ignore_index=True)
    out["score"] = scorer.score_many(list(out["output"]), list(out["reference"]) if refs is not None else None,
                                     list(out["prompt"]))
    return out


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


def paired_test(d, *, n_boot: int, n_perm: int, rng) -> tuple[float, float, float, float]:
    """(mean difference, bootstrap low, high, sign-flip permutation p) of paired differences."""
    import numpy as np

    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan, math.nan, math.nan, math.nan
    m = float(d.mean())
    lo = hi = math.nan
    if n_boot > 0 and len(d) > 1:
        boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
        lo, hi = float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))
    nz = d[d != 0]
    if not len(nz):
        return m, lo, hi, 1.0
    if len(nz) <= 16:  # exact: every sign pattern
        signs = ((np.arange(2 ** len(nz))[:, None] >> np.arange(len(nz))) & 1) * 2 - 1
        stats = np.abs((signs * nz).mean(axis=1))
        p = float(np.mean(stats >= abs(nz.mean()) - 1e-12))
    else:
        signs = rng.choice([-1.0, 1.0], size=(n_perm, len(nz)))
        stats = np.abs((signs * nz).mean(axis=1))
        p = float((1 + np.sum(stats >= abs(nz.mean()) - 1e-12)) / (n_perm + 1))
    return m, lo, hi, p


def per_prompt(items, group_cols: Sequence[str], error_score: float | None):
    """Per (group, prompt) mean score over repeats: a DataFrame indexed by ``item`` with one
    column per group key (a tuple for several group columns)."""
    import numpy as np

    df = items.copy()
    if error_score is not None:
        failed = df["output"].isna()
        df.loc[failed, "score"] = error_score
    df["score"] = df["score"].astype(float)
    keys = list(group_cols)
    wide = df.groupby(keys + ["item"])["score"].mean().unstack(keys)
    return wide.replace([np.inf, -np.inf], np.nan)


def ablation_summary(items, *, baseline: str | None = None, n_boot: int = 1000, seed: int = 0,
                     error_score: float | None = 0.0, n_perm: int = 10000):
    """The per-variant summary (columns :data:`ABLATION_COLUMNS`) of an items DataFrame
    (columns :data:`ITEM_COLUMNS`, as ``ablate(..., items=True)`` returns).

    ``error_score``: what a failed run scores (default 0: no answer is a wrong answer); None
    leaves failures out of the means."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    variants = list(dict.fromkeys(items["variant"]))
    if baseline is None:
        baseline = variants[0]
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not a variant; variants: {variants}")
    wide = per_prompt(items, ["variant"], error_score)
    repeats = int(items["repeat"].nunique())
    rows = []
    for v in variants:
        sub = items[items["variant"] == v]
        vals = wide[v].to_numpy()
        m, lo, hi, method = mean_ci(vals, n_boot=n_boot, rng=rng, binary_ok=repeats == 1)
        if v == baseline:
            dm, dlo, dhi, p = 0.0, math.nan, math.nan, math.nan
        else:
            dm, dlo, dhi, p = paired_test(vals - wide[baseline].to_numpy(), n_boot=n_boot, n_perm=n_perm, rng=rng)
        rows.append({
            "variant": v, "score": m, "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(vals).sum()),
            "repeats": repeats, "delta": dm, "delta_ci_low": dlo, "delta_ci_high": dhi, "p_value": p,
            "errors": int(sub["error"].notna().sum()), "calls": int(sub["calls"].fillna(0).sum()),
            "calls_paid": int(sub["calls_paid"].fillna(0).sum()), "calls_reused": int(sub["calls_reused"].fillna(0).sum()),
            "input_tokens": int(sub["input_tokens"].fillna(0).sum()),
            "output_tokens": int(sub["output_tokens"].fillna(0).sum()),
            "cost_usd": float(sub["cost_usd"].fillna(0).sum()), "ci_method": method,
            "scorer": items.attrs.get("scorer"),
        })
    out = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    out.attrs.update({"baseline": baseline, "n_boot": n_boot, "seed": seed, "scorer": items.attrs.get("scorer")})
    return out


def ablation_reading(summary) -> str:
    """One line per non-baseline variant: its score, the paired difference with the baseline
    and its interval and p-value, and the calls it paid for."""
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
        parts.append(f"{r['variant']}: {r['score']:.2f}, {r['delta']:+.2f} vs {base}{ci(r['delta_ci_low'], r['delta_ci_high'])}"
                     f"{p}, {int(r['calls_paid'])} calls paid, {int(r['calls_reused'])} reused")
    return "; ".join(parts)


# ---- the entry point ---------------------------------------------------------------------------
def ablate(variants: Mapping[str, Any], prompts, *, scorer, repeats: int = 1, models: Any = None, store: Any = None,
           seed: int = 0, max_tokens: int | None = None, references: Sequence[Any] | None = None,
           baseline: str | None = None, n_boot: int = 1000, error_score: float | None = 0.0,
           items: bool = False, progress: bool = True, **run_kwargs):
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
        error_score: score of a failed run (default 0.0); None leaves failures out.
        items: also return the per-run rows: ``(summary, items)``.

    Returns:
        DataFrame, one row per variant, columns :data:`ABLATION_COLUMNS` (see the module doc
        for each statistic); with ``items=True`` also the rows :data:`ITEM_COLUMNS`.
    """
    scorer, prompt_list, refs, st = prepare(variants, prompts, scorer=scorer, references=references,
                                            repeats=repeats, models=models, store=store, seed=seed,
                                            max_tokens=max_tokens, templates=run_kwargs.get("templates", "together"))
    raw = run_variants(variants, prompt_list, refs, scorer=scorer, repeats=repeats, models=models, store=st,
                       seed=seed, max_tokens=max_tokens, progress=progress, **run_kwargs)
    item_df = raw[ITEM_COLUMNS].copy()
    item_df.attrs["scorer"] = scorer.name
    summary = ablation_summary(item_df, baseline=baseline, n_boot=n_boot, seed=seed, error_score=error_score)
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
