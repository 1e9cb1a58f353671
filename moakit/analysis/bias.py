"""Positional bias: does an aggregating LLM favour the response shown at some position?

For every aggregating call (Synthesize, Aggregate, Vote) the output is compared with each
response it was shown; the response it resembles most is the one it **copied** (ties share
the credit). For every Rank call, the positions it **kept** are read from the trace. Under no
positional effect, position k is copied with probability 1/n_shown (kept with probability
kept/n_shown): the chance rate. The estimate is the chance-corrected rate

    influence_k = (rate_k - chance_k) / (1 - chance_k)

which is the probability that the aggregator picks position k *because of its position*,
beyond chance. For a model that copies the response at position 1 with probability p and
otherwise picks uniformly among the n shown, influence_1 = p exactly and every other
position gets -p/(n-1) (they lose what position 1 wins).

Intervals: when every run holds one analysed call of the block, the calls are independent
and each position's picks are binomial: Wilson's interval for the rate, mapped through the
chance correction (honest for small n and for rates of 0 or 1). Otherwise a percentile
bootstrap over runs (traces: calls of one run share their inputs, so they are resampled
together). The test of "no positional effect" is a Monte Carlo test:
the chi-square distance between observed and chance counts, compared with the same
statistic under independent uniform choices with each call's own n_shown (and kept count).

With ``by="agent"`` the unit is the source agent instead of the position: how often each
agent's response is copied beyond chance. The two are only separable when Shuffle (or
Dropout) varied the order; when every position always held the same agent the result says
``confounded=True``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Sequence

__all__ = ["positional_bias", "bias_summary", "bias_inputs", "COPY_STEPS", "BIAS_COLUMNS"]

COPY_STEPS = ("Synthesize", "Aggregate", "Vote")
BIAS_COLUMNS = ["measure", "step", "aggregator", "position", "source_agent", "n", "n_calls", "rate", "chance",
                "lift", "influence", "ci_low", "ci_high", "similarity", "p_value", "p_position", "confounded",
                "ci_method"]
INPUT_COLUMNS = ["trace_id", "span_id", "step", "aggregator", "measure", "position", "n_shown", "source_agent",
                 "similarity", "weight", "k"]


# ---- similarity -------------------------------------------------------------------------------
def _similarity_fn(similarity: str | Callable[[str, str], float]) -> Callable[[str, str], float]:
    """``fn(output, source) -> float``; higher = the output draws more on the source."""
    if callable(similarity):
        return similarity
    from .scorers import rouge_l_scores

    if similarity in ("containment", "rouge_l_precision", "precision"):
        return lambda out, src: rouge_l_scores(out, src)[0]  # share of the output's tokens found, in order, in src
    if similarity in ("rouge_l", "f", "f1"):
        return lambda out, src: rouge_l_scores(out, src)[2]
    if similarity in ("recall", "rouge_l_recall"):
        return lambda out, src: rouge_l_scores(out, src)[1]
    raise ValueError(f"similarity must be 'containment', 'rouge_l', 'recall' or a callable, got {similarity!r}")


# ---- loading ----------------------------------------------------------------------------------
def _open(source, store):
    """(aggregation inputs DataFrame, store or None, trace ids or None)."""
    import pandas as pd

    from ..store import TraceStore

    if isinstance(source, TraceStore):
        return source.aggregation_inputs(), source, None
    if isinstance(source, pd.DataFrame):
        st = store if isinstance(store, TraceStore) or store is None else TraceStore(store, create=False)
        return source, st, None
    if isinstance(source, str) or (isinstance(source, Sequence) and all(isinstance(t, str) for t in source)):
        if store is None:
            raise ValueError("positional_bias: give store=... with a list of trace ids")
        st = store if isinstance(store, TraceStore) else TraceStore(store, create=False)
        ids = [source] if isinstance(source, str) else list(source)
        ids = [st.resolve_trace_id(t) for t in ids]
        return st.aggregation_inputs(ids), st, ids
    raise TypeError("positional_bias: source must be a TraceStore, a list of trace ids (with store=...) or a "
                    f"DataFrame from TraceStore.aggregation_inputs(); got {type(source).__name__}")


def _rank_choices(store, ids) -> dict[tuple[str, int], list[int] | None]:
    """(trace_id, step_index) -> 0-based positions kept by the Rank call, or None when the
    reply could not be parsed (the engine then kept the first n: not the model's choice)."""
    if store is None:
        return {}
    where, params = store._where(ids, "step")
    out = {}
    for trace_id, step_index, choice, parsed in store.query(
            "SELECT s.trace_id, s.step_index, json_extract(s.attributes, '$.\"moakit.rank.choice\"'), "
            f"json_extract(s.attributes, '$.\"moakit.rank.parsed\"') FROM spans s WHERE {where} AND s.step='Rank'",
            params):
        if choice is None or parsed in (0, False, "false"):
            out[(trace_id, int(step_index))] = None
        else:
            out[(trace_id, int(step_index))] = json.loads(choice) if isinstance(choice, str) else choice
    return out


def _request_keys(store, ids) -> dict[str, str]:
    if store is None:
        return {}
    where, params = store._where(ids, "call")
    return dict(store.query(f"SELECT s.span_id, s.request_key FROM spans s WHERE {where} "
                            "AND s.request_key IS NOT NULL", params))


# ---- per call ---------------------------------------------------------------------------------
def bias_inputs(source, *, store: Any = None, similarity: str | Callable = "containment",
                steps: Sequence[str] | None = None, dedupe: bool = True):
    """One row per response shown to an analysable aggregating call, with what the call did
    with it: trace_id, span_id, step, aggregator, measure (``"copied"`` or ``"kept"``),
    position, n_shown, source_agent, similarity (output vs this response; NaN for Rank),
    weight (share of the copy credit, or 1/0 kept), k (responses picked: 1 for copying,
    the number kept for Rank).

    Calls left out: failed calls, calls shown fewer than 2 responses, copy calls whose output
    is empty or equally similar to every response (no information), Rank calls whose reply
    could not be parsed or that kept every response. With ``dedupe`` (default), a call
    replayed from the cache (same request key, or same inputs and output) counts once."""
    import pandas as pd

    df, st, ids = _open(source, store)
    sim = _similarity_fn(similarity)
    want = set(steps) if steps is not None else set(COPY_STEPS) | {"Rank"}
    unknown = want - set(COPY_STEPS) - {"Rank"}
    if unknown:
        raise ValueError(f"positional_bias: steps must be among {COPY_STEPS + ('Rank',)}, got {sorted(unknown)}")
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=INPUT_COLUMNS)
    needed = {"trace_id", "span_id", "step", "agent", "position", "n_shown", "source_agent", "source_text", "output"}
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"positional_bias: the DataFrame lacks {sorted(missing)}; pass TraceStore.aggregation_inputs()")
    df = df[df["step"].isin(want)]
    if "error" in df.columns:
        df = df[df["error"].isna()]
    df = df[df["output"].notna()]
    has_rank = bool((df["step"] == "Rank").any())
    choices = _rank_choices(st, ids) if has_rank else {}
    if has_rank and not choices and "rank_choice" not in df.columns:
        import warnings

        warnings.warn("positional_bias: Rank calls found but no recorded choices (pass store=...); Rank is skipped")
    keys = _request_keys(st, ids) if dedupe else {}
    rows, seen = [], set()
    for span_id, g in df.sort_values(["span_id", "position"]).groupby("span_id", sort=False):
        g = g.sort_values("position")
        first = g.iloc[0]
        n = int(first["n_shown"])
        if n < 2 or len(g) != n:
            continue
        step, out = first["step"], str(first["output"])
        texts = ["" if t is None or (isinstance(t, float) and math.isnan(t)) else str(t) for t in g["source_text"]]
        if dedupe:
            key = keys.get(span_id) or (step, first["agent"], tuple(texts), out)
            if key in seen:
                continue
            seen.add(key)
        agents = [str(a) if a is not None else "?" for a in g["source_agent"]]
        base = {"trace_id": first["trace_id"], "span_id": span_id, "step": step, "aggregator": first["agent"],
                "n_shown": n}
        if step == "Rank":
            if "rank_choice" in g.columns and isinstance(first.get("rank_choice"), (list, tuple)):
                choice = list(first["rank_choice"])
            else:
                choice = choices.get((first["trace_id"], int(first["step_index"]))) if "step_index" in g.columns else None
            if not choice:
                continue
            kept = {int(c) for c in choice if 0 <= int(c) < n}
            if not kept or len(kept) >= n:
                continue
            for i in range(n):
                rows.append({**base, "measure": "kept", "position": i + 1, "source_agent": agents[i],
                             "similarity": math.nan, "weight": 1.0 if i in kept else 0.0, "k": len(kept)})
            continue
        if not out.strip():
            continue
        sims = [float(sim(out, t)) for t in texts]
        top = max(sims)
        if top <= 0 or min(sims) == top:
            continue
        winners = [i for i, s in enumerate(sims) if s == top]
        for i in range(n):
            rows.append({**base, "measure": "copied", "position": i + 1, "source_agent": agents[i],
                         "similarity": sims[i], "weight": (1.0 / len(winners)) if i in winners else 0.0, "k": 1})
    return pd.DataFrame(rows, columns=INPUT_COLUMNS)


# ---- estimation -------------------------------------------------------------------------------
def _estimate(g, label_col: str, n_boot: int, n_sim: int, rng):
    """Rows (one per label) for one group of calls."""
    import numpy as np

    labels = sorted(g[label_col].unique(), key=lambda v: (isinstance(v, str), v))
    li = {v: j for j, v in enumerate(labels)}
    calls = list(dict.fromkeys(g["span_id"]))
    ci = {s: j for j, s in enumerate(calls)}
    C, L = len(calls), len(labels)
    W = np.zeros((C, L))  # observed picks
    A = np.zeros((C, L))  # times shown
    E = np.zeros((C, L))  # expected picks under no effect
    S = np.zeros((C, L))  # similarity sums
    rows_c = g["span_id"].map(ci).to_numpy()
    rows_l = g[label_col].map(li).to_numpy()
    k_over_n = (g["k"] / g["n_shown"]).to_numpy(dtype=float)
    np.add.at(W, (rows_c, rows_l), g["weight"].to_numpy(dtype=float))
    np.add.at(A, (rows_c, rows_l), 1.0)
    np.add.at(E, (rows_c, rows_l), k_over_n)
    simv = g["similarity"].to_numpy(dtype=float)
    np.add.at(S, (rows_c, rows_l), np.nan_to_num(simv))
    has_sim = bool(np.isfinite(simv).any())

    def stats(w, a, e):
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = w / a
            chance = e / a
            infl = (rate - chance) / (1 - chance)
        return rate, chance, infl

    rate, chance, infl = stats(W.sum(0), A.sum(0), E.sum(0))

    # bootstrap over clusters (runs): calls of one run share their inputs
    clusters = list(dict.fromkeys(g.drop_duplicates("span_id").set_index("span_id").loc[calls, "trace_id"]))
    cl_of_call = g.drop_duplicates("span_id").set_index("span_id").loc[calls, "trace_id"].map(
        {c: j for j, c in enumerate(clusters)}).to_numpy()
    G = len(clusters)
    Wg, Ag, Eg = (np.zeros((G, L)) for _ in range(3))
    np.add.at(Wg, cl_of_call, W)
    np.add.at(Ag, cl_of_call, A)
    np.add.at(Eg, cl_of_call, E)
    lo = hi = np.full(L, np.nan)
    calls_per_cluster = np.bincount(cl_of_call, minlength=G)
    if G and calls_per_cluster.max() == 1 and A.max() <= 1:
        # independent calls, each label shown at most once: the picks of a label are binomial.
        # Wilson's interval for the rate, mapped through the (monotone) chance correction: it
        # stays honest for small n and for rates of 0 or 1, where the bootstrap collapses.
        from .ablation import wilson

        method = "wilson"
        bounds = np.array([wilson(float(w), int(a)) if a else (np.nan, np.nan) for w, a in zip(W.sum(0), A.sum(0))])
        with np.errstate(invalid="ignore", divide="ignore"):
            lo = (bounds[:, 0] - chance) / (1 - chance)
            hi = (bounds[:, 1] - chance) / (1 - chance)
    elif n_boot and G > 1:
        method = "bootstrap"
        B = rng.multinomial(G, np.full(G, 1.0 / G), size=n_boot).astype(float)
        _, _, infl_b = stats(B @ Wg, B @ Ag, B @ Eg)
        with np.errstate(all="ignore"):
            lo = np.nanpercentile(infl_b, 2.5, axis=0)
            hi = np.nanpercentile(infl_b, 97.5, axis=0)
    else:
        method = "none"

    # Monte Carlo test of "no positional (or agent) effect": each call picks k of its shown
    # responses uniformly at random
    obs, expct = W.sum(0), E.sum(0)
    null = np.zeros((n_sim, L))
    if n_sim:
        lab_of_call: dict[int, list[int]] = {}
        for c, l_ in zip(rows_c, rows_l):
            lab_of_call.setdefault(int(c), []).append(int(l_))
        k_of_call = dict(zip(rows_c, g["k"].to_numpy()))
        sim_idx = np.arange(n_sim)
        for c, labs in lab_of_call.items():
            labs_a = np.asarray(labs)
            n, k = len(labs), int(k_of_call[c])
            if k == 1:
                picks = rng.integers(0, n, size=n_sim)
                np.add.at(null, (sim_idx, labs_a[picks]), 1.0)
            else:
                order = np.argsort(rng.random((n_sim, n)), axis=1)[:, :k]
                np.add.at(null, (np.repeat(sim_idx, k), labs_a[order].ravel()), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = expct > 0
        chi_obs = float(np.sum((obs[ok] - expct[ok]) ** 2 / expct[ok]))
        chi_null = np.sum((null[:, ok] - expct[ok]) ** 2 / expct[ok], axis=1)
    p_value = float((1 + np.sum(chi_null >= chi_obs - 1e-9)) / (n_sim + 1)) if n_sim else math.nan
    dev_obs = np.abs(obs - expct)
    p_pos = ((1 + np.sum(np.abs(null - expct) >= dev_obs - 1e-9, axis=0)) / (n_sim + 1)) if n_sim \
        else np.full(L, np.nan)

    shown_calls = (A > 0).sum(0)
    out = []
    for j, v in enumerate(labels):
        out.append({
            label_col: v, "n": int(shown_calls[j]), "n_calls": C, "rate": float(rate[j]), "chance": float(chance[j]),
            "lift": float(rate[j] / chance[j]) if chance[j] > 0 else math.nan, "influence": float(infl[j]),
            "ci_low": float(lo[j]), "ci_high": float(hi[j]),
            "similarity": float(S[:, j].sum() / A[:, j].sum()) if has_sim and A[:, j].sum() else math.nan,
            "p_value": p_value, "p_position": float(p_pos[j]), "ci_method": method,
        })
    return out


def _confounded(g) -> bool:
    """True when every position always held the same source agent (no Shuffle/Dropout)."""
    per_pos = g.groupby("position")["source_agent"].nunique()
    return bool(len(per_pos) and (per_pos <= 1).all())


def positional_bias(source, *, by: str | None = None, store: Any = None, n_boot: int = 1000, seed: int = 0,
                    similarity: str | Callable[[str, str], float] = "containment",
                    steps: Sequence[str] | None = None, n_sim: int = 2000, dedupe: bool = True):
    """Positional bias of aggregating calls, one row per position (and measure).

    Args:
        source: a :class:`~moakit.TraceStore` (every run in it), a list of trace ids (with
            ``store=``), or a DataFrame from ``TraceStore.aggregation_inputs()`` (give ``store=``
            too when it holds Rank calls: their choices live on the step spans).
        by: ``None`` (pool Synthesize/Aggregate/Vote calls; Rank separately), ``"step"`` (one
            block per step kind), ``"aggregator"`` (one block per aggregating agent) or
            ``"agent"`` (rows per *source agent* instead of position: does the aggregator favour
            a model, whatever its position?).
        n_boot: bootstrap resamples (over runs) for ``ci_low``/``ci_high`` when runs hold
            several analysed calls; 0 skips them.
        seed: seed of the bootstrap and of the Monte Carlo test (results are reproducible).
        similarity: how "the output draws on a response" is measured to find the copied one:
            ``"containment"`` (default: ROUGE-L precision, the share of the output's tokens
            found in order in the response; robust when outputs are cut short), ``"rouge_l"``
            (F1), ``"recall"`` or ``fn(output, response) -> float``.
        steps: restrict to these step kinds (default Synthesize, Aggregate, Vote, Rank).
        n_sim: Monte Carlo draws for ``p_value`` / ``p_position`` (smallest p is 1/(n_sim+1)).
        dedupe: count a call replayed from the cache once.

    Returns:
        DataFrame with columns :data:`BIAS_COLUMNS`: measure (``"copied"`` for
        Synthesize/Aggregate/Vote, ``"kept"`` for Rank), step (the step kinds pooled, joined by
        ``+``), aggregator (the aggregating agent with ``by="aggregator"``, else None),
        position (1-based; None with ``by="agent"``), source_agent (with ``by="agent"``, else
        None), n (calls that showed this position/agent), n_calls (calls in the block), rate
        (share of picks), chance (rate expected with no effect), lift (rate / chance),
        influence (chance-corrected rate, see the module doc), ci_low / ci_high (95% interval
        of influence: Wilson when calls are independent, else a bootstrap over runs; the
        method is in ci_method), similarity (mean similarity of the output to this
        position's response; NaN for Rank), p_value (Monte Carlo test of no effect over the
        block, repeated on each of its rows), p_position (the same test for this row alone,
        two-sided), confounded (position and source agent never varied independently),
        ci_method (``"wilson"``, ``"bootstrap"`` or ``"none"``).
        ``df.attrs`` holds n_boot, n_sim, similarity and the number of calls analysed.
    """
    import numpy as np
    import pandas as pd

    if by not in (None, "step", "aggregator", "agent", "source_agent"):
        raise ValueError(f"positional_bias: by must be None, 'step', 'aggregator' or 'agent', got {by!r}")
    if not isinstance(n_boot, int) or n_boot < 0 or not isinstance(n_sim, int) or n_sim < 0:
        raise ValueError("positional_bias: n_boot and n_sim must be non-negative integers")
    inputs = bias_inputs(source, store=store, similarity=similarity, steps=steps, dedupe=dedupe)
    rng = np.random.default_rng(seed)
    rows = []
    if len(inputs):
        label = "source_agent" if by in ("agent", "source_agent") else "position"
        group_cols = ["measure"] + (["step"] if by == "step" else ["aggregator"] if by == "aggregator" else [])
        for key, g in inputs.groupby(group_cols, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            meta = dict(zip(group_cols, key))
            conf = _confounded(g)
            step_label = meta.get("step") or "+".join(sorted(g["step"].unique()))
            for r in _estimate(g, label, n_boot, n_sim, rng):
                rows.append({"measure": meta["measure"], "step": step_label, "aggregator": meta.get("aggregator"),
                             "position": r.pop("position", None), "source_agent": r.pop("source_agent", None),
                             **{k: v for k, v in r.items() if k != "ci_method"}, "confounded": conf,
                             "ci_method": r["ci_method"]})
    df = pd.DataFrame(rows, columns=BIAS_COLUMNS)
    if len(df):
        df["position"] = df["position"].astype("Int64")
    df.attrs.update({"n_boot": n_boot, "n_sim": n_sim, "seed": seed, "by": by,
                     "similarity": similarity if isinstance(similarity, str) else getattr(similarity, "__name__", "fn"),
                     "calls": int(inputs["span_id"].nunique()) if len(inputs) else 0})
    return df


# ---- reading ----------------------------------------------------------------------------------
def _fmt_p(p: float) -> str:
    if p is None or _na(p):
        return "p n/a"
    if p < 0.001:
        return "p < 0.001"
    if p < 0.01:
        return "p < 0.01"
    return f"p = {p:.2g}"


def bias_summary(df) -> str:
    """One line per block of :func:`positional_bias`'s result, e.g. ``"Aggregate: position 1 is
    copied 2.1x more often than chance (influence 0.45, 95% CI 0.38 to 0.52), p < 0.01"``."""
    if df is None or len(df) == 0:
        return "no aggregating calls to analyse"
    lines = []
    keys = ["measure", "step", "aggregator"]
    for _, g in df.groupby(keys, dropna=False, sort=False):
        g = g[g["n"] > 0]
        if not len(g):
            continue
        top = g.loc[g["lift"].idxmax()] if g["lift"].notna().any() else g.iloc[0]
        what = f"agent {top['source_agent']}" if top["source_agent"] is not None and not _na(top["source_agent"]) \
            else f"position {int(top['position'])}"
        verb = "kept" if top["measure"] == "kept" else "copied"
        who = f"{top['step']}" + (f" ({top['aggregator']})" if top["aggregator"] is not None and not _na(top["aggregator"]) else "")
        ci = "" if _na(top["ci_low"]) else f", 95% CI {top['ci_low']:.2f} to {top['ci_high']:.2f}"
        p = float(top["p_value"])
        verdict = "" if _na(p) or p < 0.05 else " (no evidence of a positional effect)" if what.startswith("position") \
            else " (no evidence of an agent effect)"
        line = (f"{who}: {what} is {verb} {top['lift']:.1f}x as often as chance (influence {top['influence']:.2f}{ci}), "
                f"{_fmt_p(p)}, {int(top['n_calls'])} calls{verdict}")
        if bool(top["confounded"]):
            line += "; the order never varied, so position and source agent are confounded"
        lines.append(line)
    return "\n".join(lines)


def _na(v) -> bool:
    try:
        return v is None or (isinstance(v, float) and math.isnan(v)) or bool(v != v)
    except (TypeError, ValueError):
        return False
