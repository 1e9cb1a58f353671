"""Positional bias: does an aggregating LLM draw on a response *because of* the position it
is shown at?

**What is observed.** Each aggregating call (Synthesize, Aggregate, Vote) is shown ``n``
responses; its output is attributed to the one it draws on by distinctive content
(:mod:`moakit.analysis.attribution`), or left unattributed (a blend, or nothing traceable).
Each Rank call *keeps* ``m`` of its ``n`` positions (read from the trace).

**The estimand.** Among the calls that were attributed (or ranked), for position ``k``:

    share_k  = P(the attributed response sat at position k | position k was shown)
    chance_k = E[m / n]  over those calls   (1/n for copying)
    excess_k = (share_k - chance_k) / (1 - chance_k)

``excess`` is the chance-corrected excess rate: 0 when the position does not matter, 1 when
position ``k`` is always the one drawn on, negative when it is drawn on less than chance. For
an aggregator that takes position ``k`` with probability ``p`` and otherwise chooses without
regard to position, ``excess_k = p`` and every other position gets ``-p / (n - 1)``. It is
*not* in general "the probability of choosing a response because of its position": when
several positions are favoured, each row is only its own normalised excess. With
``by="agent"`` the rows are source agents: how much more often an agent's response is drawn
on than its share of the list.

**What the design identifies.** Position effects are estimated only on calls whose order was
randomized (:mod:`moakit.analysis.design`: a Shuffle or Sample upstream in the call's own
run, or exchangeable samples of one agent), one block per pipeline variant by default. On
those calls position is independent of source agent and content by construction, so
``excess`` by position is a causal effect of position (averaged over the content shown), and
by agent an agent effect averaged over positions. Calls shown a fixed order are reported in
their own rows (``randomized=False``) as a description with no p-value: there a position is
mostly one agent, and ``cramers_v`` (position x source agent, 1 = each position always the
same agent) says how tangled the two are. Dropout keeps relative order and separates nothing.

**Inference.** For each row, ``T_k = excess_k / se_k(0)``, where ``se_k(d)`` is the
cluster-robust (delta-method) standard error of the excess evaluated at the hypothesised
value ``d`` (score type, as Wilson's interval is for a proportion), over clusters of calls
that share randomness (item x repeat: the calls of one run share proposals and a
permutation; variants of one item share proposals). The reference distribution of
``max_k |T_k|``:

* positions on randomized calls: a **randomization test** that re-draws the design's own
  randomization: within each cluster one random ranking of every source shown, which each call's
  list follows (calls of a Synthesize layer, shown one list, get one new order). Exact under the
  sharp null "the output does not depend on the order", whatever the clustering; studentized,
  so also asymptotically valid for the weak null of zero excess (Chung & Romano, 2013);
* agents (whose identity no design randomizes), and fixed-order calls (intervals only): the
  normal distribution with the labels' covariance at the null, simulated.

The standard error is taken at the value tested (score type): each call's own variance is
the one the hypothesis implies (``pi (1 - pi)`` for a pick indicator with mean ``pi``), the
covariance between the calls of a cluster is the observed one. Studentizing by the observed
share instead (Wald) makes low counts look too extreme: that max-T test rejected about 6% of
null datasets at alpha 0.05.

``p_value`` is the single-step max-T adjusted p (simultaneous over the rows of a block). The
interval inverts the same test: every ``d`` with ``|excess - d| <= q * se(d)``, ``q`` the
reference distribution's critical value (a quadratic in ``d``: a cluster-robust Wilson-type
interval). So a row's interval excludes 0 exactly when its ``p_value <= alpha``, and the
intervals hold simultaneously for every row of a block (the largest row's interval stays valid
for the row picked as largest; its point estimate, the largest of several, is biased upward).
The block's overall test (``attrs["blocks"]``) is the same max-T.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

__all__ = ["positional_bias", "bias_summary", "bias_inputs", "COPY_STEPS", "BIAS_COLUMNS", "INPUT_COLUMNS"]

COPY_STEPS = ("Synthesize", "Aggregate", "Vote")
BIAS_COLUMNS = ["measure", "variant", "step", "aggregator", "randomized", "design", "position", "agent", "n",
                "n_calls", "share", "chance", "excess", "ci_low", "ci_high", "p_value", "content_share", "cramers_v"]
INPUT_COLUMNS = ["trace_id", "span_id", "step", "aggregator", "measure", "variant", "item", "repeat", "randomized",
                 "design", "position", "n_shown", "source_agent", "source_key", "log_length", "share", "picked",
                 "status"]
PICKED = ("attributed", "kept")
DESIGN_WORDS = {"shuffled": "order randomized by Shuffle", "exchangeable": "exchangeable samples of one agent",
                "fixed": "order never randomized"}


# ---- per call ---------------------------------------------------------------------------------
def bias_inputs(source, *, store: Any = None, trace_id: str | Sequence[str] | None = None,
                steps: Sequence[str] | None = None, ngram: int = 3, dominance: float = 0.5, min_hits: int = 2,
                exchangeable: bool = True, dedupe: bool = True):
    """One row per response shown to an analysable aggregating call, with the design and what
    the call did with it (columns :data:`INPUT_COLUMNS`):

    ``measure`` (``"copied"`` for Synthesize/Aggregate/Vote, ``"kept"`` for Rank), ``variant``,
    ``item``, ``repeat``, ``randomized``, ``design`` (see :mod:`moakit.analysis.design`),
    ``position`` (1-based), ``n_shown``, ``source_agent``, ``source_key`` (the source's identity
    within its item x repeat), ``log_length`` (log of 1 + the shown text's words), ``share``
    (the response's share of the output's distinctive content; NaN for Rank), ``picked`` (1 for
    the response the output is attributed to, or each kept one), ``status`` (per call:
    ``attributed``, ``kept``, ``unattributed: <reason>`` or ``not attributable: <reason>``).

    Calls left out are counted in ``attrs["excluded"]`` by reason: failed calls, calls shown
    fewer than 2 responses, Rank replies that were not parsed (the engine's fallback is not the
    model's choice) or that kept everything, and with ``dedupe`` the calls of a run that repeats
    an earlier run (same variant, item and seed: a rerun served from the cache)."""
    import numpy as np
    import pandas as pd

    from .attribution import attribute, tokens
    from .design import load_inputs

    want = set(steps) if steps is not None else set(COPY_STEPS) | {"Rank"}
    unknown = want - set(COPY_STEPS) - {"Rank"}
    if unknown:
        raise ValueError(f"steps must be among {COPY_STEPS + ('Rank',)}, got {sorted(unknown)}")
    df = load_inputs(source, store=store, trace_id=trace_id, exchangeable=exchangeable)
    excluded: Counter = Counter()
    out = pd.DataFrame(columns=INPUT_COLUMNS)
    out.attrs["excluded"] = {}
    if df.empty:
        return out
    df = df[df["step"].isin(want)]
    if "error" in df.columns:
        bad = df["error"].notna() | df["output"].isna()
    else:
        bad = df["output"].isna()
    excluded["failed"] += int(df.loc[bad, "span_id"].nunique())
    df = df[~bad]
    if dedupe and len(df):
        runs = df.drop_duplicates("trace_id")[["trace_id", "variant", "item", "repeat"]]
        first = runs.drop_duplicates(["variant", "item", "repeat"])["trace_id"]
        dup = ~df["trace_id"].isin(set(first))
        excluded["repeats an earlier run (same variant, item and seed)"] += int(df.loc[dup, "span_id"].nunique())
        df = df[~dup]
    df = df.sort_values(["span_id", "position"], kind="stable")
    span = df["span_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, span[1:] != span[:-1]]) if len(span) else np.array([], int)
    ends = np.r_[starts[1:], len(span)] if len(span) else np.array([], int)
    cols = {c: df[c].tolist() for c in ("trace_id", "span_id", "step", "agent", "variant", "item", "repeat",
                                        "randomized", "design", "position", "n_shown", "source_agent",
                                        "shown_text", "shown_known", "output", "rank_choice")}
    source_text = df["source_text"].tolist() if "source_text" in df.columns else cols["shown_text"]
    cache: dict = {}
    length_of: dict = {}
    rows: dict[str, list] = {c: [] for c in INPUT_COLUMNS}
    for a, b in zip(starts.tolist(), ends.tolist()):
        n = int(cols["n_shown"][a])
        positions = cols["position"][a:b]
        if n < 2:
            excluded["fewer than 2 responses shown"] += 1
            continue
        if b - a != n or list(positions) != list(range(1, n + 1)):
            excluded["shown responses missing from the inputs"] += 1
            continue
        step = cols["step"][a]
        shown = [t if isinstance(t, str) else "" for t in cols["shown_text"][a:b]]
        agents = [str(x) if x is not None else "?" for x in cols["source_agent"][a:b]]
        if step == "Rank":
            measure = "kept"
            choice = cols["rank_choice"][a]
            if not isinstance(choice, (list, tuple)) or not choice:
                excluded["Rank reply not parsed (or no choice recorded)"] += 1
                continue
            kept = {int(c) for c in choice if 0 <= int(c) < n}
            if not kept or len(kept) >= n:
                excluded["Rank kept every response"] += 1
                continue
            picked = [1 if i in kept else 0 for i in range(n)]
            shares = [math.nan] * n
            status = "kept"
        else:
            measure = "copied"
            if not all(cols["shown_known"][a:b]):
                picked, shares = [0] * n, [math.nan] * n
                status = "not attributable: shown text unknown (after Map)"
            else:
                att = attribute(cols["output"][a], shown, ngram=ngram, dominance=dominance, min_hits=min_hits,
                                cache=cache)
                picked = [1 if i == att.source else 0 for i in range(n)]
                shares = list(att.shares)
                status = "attributed" if att.source is not None else f"unattributed: {att.reason}"
        occ: Counter = Counter()
        for i in range(n):
            src = source_text[a + i] if isinstance(source_text[a + i], str) else shown[i]
            occ[(agents[i], src)] += 1
            text = shown[i] or src
            if text not in length_of:
                length_of[text] = math.log1p(len(tokens(text)))
            rows["source_key"].append(hash((agents[i], src, occ[(agents[i], src)])))
            rows["log_length"].append(length_of[text])
        rows["trace_id"] += cols["trace_id"][a:b]
        rows["span_id"] += cols["span_id"][a:b]
        rows["step"] += [step] * n
        rows["aggregator"] += cols["agent"][a:b]
        rows["measure"] += [measure] * n
        for c in ("variant", "item", "repeat", "randomized", "design"):
            rows[c] += cols[c][a:b]
        rows["position"] += list(range(1, n + 1))
        rows["n_shown"] += [n] * n
        rows["source_agent"] += agents
        rows["share"] += shares
        rows["picked"] += picked
        rows["status"] += [status] * n
    out = pd.DataFrame(rows, columns=INPUT_COLUMNS)
    out["randomized"] = out["randomized"].astype(bool)
    out.attrs["excluded"] = {k: int(v) for k, v in excluded.items() if v}
    return out


# ---- estimation -------------------------------------------------------------------------------
def _index(values) -> tuple[list, Any]:
    """(distinct values in order of appearance, integer code of each value)."""
    import numpy as np

    codes: dict = {}
    idx = np.fromiter((codes.setdefault(v, len(codes)) for v in values), dtype=np.int64, count=len(values))
    return list(codes), idx


def _critical(max_null, alpha: float) -> float:
    """The critical value q of a max-|T| reference sample: ``|T| > q`` exactly when the p-value
    ``(1 + #{M* >= |T|}) / (B + 1)`` is <= alpha."""
    import numpy as np

    B = len(max_null)
    r = int(math.floor(alpha * (B + 1) + 1e-9)) - 1  # rejections allow at most r null draws >= |T|
    if r < 0:
        return math.inf
    return float(np.sort(max_null)[::-1][min(r, B - 1)])


class _Block:
    """The sums of one block of calls, for one labelling (position or agent).

    Per call c and label l: ``S`` picks, ``E`` picks expected by chance (appearances x m/n),
    ``A`` 1 if shown, ``N = S - E``, ``D = A - E``; summed over the calls of a cluster g. The
    excess is ``sum N / sum D``. Its variance at a hypothesised excess d (score type) keeps the
    clusters' empirical covariance between calls and replaces each call's own variance by the
    one the hypothesis implies: a call's pick indicator with mean ``pi = E + d*D`` has variance
    ``pi (1 - pi)`` (where the count can exceed 1, a Rank keeping several copies of one agent,
    its empirical square is kept)::

        se(d)^2 = G/(G-1) / D^2 * [sum_g (N_g - d D_g)^2 - sum_c (N_c - d D_c)^2 + sum_c pi_c (1 - pi_c)]

    For independent calls this is the variance of a proportion at its hypothesised value (the
    interval that inverts it is Wilson's); studentizing by the observed share instead makes low
    counts look too extreme, and the max-T test rejected ~6% at alpha 5%."""

    def __init__(self, rows, label: str, cluster_cols: Sequence[str]):
        import numpy as np

        r = rows.reset_index(drop=True)
        self.calls, call_idx = _index(r["span_id"].tolist())
        first = r.drop_duplicates("span_id")
        self.clusters, cl_of_call = _index(list(zip(*(first[c].tolist() for c in cluster_cols))))
        self.cl_of_call = cl_of_call
        if label == "position":
            self.labels = list(range(1, int(r["position"].max()) + 1))
            lab = r["position"].to_numpy(dtype=np.int64) - 1
        else:
            self.labels = sorted(set(r["source_agent"]))
            code = {v: i for i, v in enumerate(self.labels)}
            lab = np.fromiter((code[v] for v in r["source_agent"]), dtype=np.int64, count=len(r))
        C, G, L = len(self.calls), len(self.clusters), len(self.labels)
        n_shown = r["n_shown"].to_numpy(dtype=float)
        picked = r["picked"].to_numpy(dtype=float)
        m = np.bincount(call_idx, weights=picked, minlength=C)  # picks per call
        Sc, Ec, shown = np.zeros((C, L)), np.zeros((C, L)), np.zeros((C, L))
        np.add.at(Sc, (call_idx, lab), picked)
        np.add.at(Ec, (call_idx, lab), m[call_idx] / n_shown)
        np.add.at(shown, (call_idx, lab), 1.0)
        Ac = (shown > 0).astype(float)
        self.indicator = (Ac > 0) & ((m[:, None] == 1) | (shown == 1))  # the call's count is 0 or 1
        self.m = m
        self.Sc, self.Ec, self.Ac = Sc, Ec, Ac
        self.S, self.E, self.A = (np.zeros((G, L)) for _ in range(3))
        np.add.at(self.S, cl_of_call, Sc)
        np.add.at(self.E, cl_of_call, Ec)
        np.add.at(self.A, cl_of_call, Ac)
        self.D = (self.A - self.E).sum(0)
        Ei = np.where(self.indicator, Ec, 0.0)
        self.E2 = (Ei ** 2).sum(0)  # sum over indicator cells of E^2
        self.T1 = (Ei * (1 - Ei)).sum(0)  # ... of E (1 - E): the null variance of the indicators
        self.call_idx, self.lab, self.picked = call_idx, lab, picked
        self.rows = r

    def estimate(self, S=None, SW=None):
        """(excess, se0): the estimate and its standard error at excess 0, from cluster sums
        ``S`` (..., G, L) and ``SW`` (..., L), the sum over indicator cells of ``S (1 - 2E)``
        (defaults: the observed picks; re-drawn picks carry a leading draw axis)."""
        import numpy as np

        if S is None:
            S, SW = self.S, (np.where(self.indicator, self.Sc * (1 - 2 * self.Ec), 0.0)).sum(0)
        G = len(self.clusters)
        N = S - self.E
        within = SW + self.E2  # sum over indicator cells of (S - E)^2, as S is 0 or 1 there
        with np.errstate(invalid="ignore", divide="ignore"):
            est = N.sum(-2) / self.D
            var = G / (G - 1) * np.maximum((N ** 2).sum(-2) - within + self.T1, 0) / self.D ** 2 if G > 1 \
                else np.full(est.shape, np.nan)
        return est, np.sqrt(var)

    def null_covariance(self):
        """The covariance of the labels' estimates at excess 0 (same construction as the
        variance, between labels: a single pick falls on one label only, so two labels'
        indicators of one call have covariance ``-E_l E_l'``)."""
        import numpy as np

        G = len(self.clusters)
        N = self.S - self.E
        cov = N.T @ N
        single = self.m == 1
        Nc = self.Sc - self.Ec
        Ns, Es = Nc[single], self.Ec[single]
        cov += -(Ns.T @ Ns) + np.diag(Es.sum(0)) - Es.T @ Es
        multi = ~single & self.indicator.any(1)
        if multi.any():  # a Rank keeping several: the indicators' own variance at the null
            Ni = np.where(self.indicator[multi], Nc[multi], 0.0)
            Ei = np.where(self.indicator[multi], self.Ec[multi], 0.0)
            cov += np.diag(-(Ni ** 2).sum(0) + (Ei * (1 - Ei)).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return G / (G - 1) * cov / np.outer(self.D, self.D)

    def interval(self, q: float):
        """Per label, the excesses ``d`` not rejected at critical value ``q``:
        ``(est - d)^2 <= q^2 se(d)^2``, a quadratic in ``d`` (Wilson's interval for independent
        calls), clipped to the range an excess can take. It excludes 0 exactly when
        ``|est| / se0 > q``."""
        import numpy as np

        G = len(self.clusters)
        Dg, Ng = self.A - self.E, self.S - self.E
        ind = self.indicator
        Nc = np.where(ind, self.Sc - self.Ec, 0.0)
        Dc = np.where(ind, self.Ac - self.Ec, 0.0)
        Ec = np.where(ind, self.Ec, 0.0)
        # se(d)^2 * D^2 * (G-1)/G = a0 + a1 d + a2 d^2
        a0 = (Ng ** 2).sum(0) - (Nc ** 2).sum(0) + (Ec * (1 - Ec)).sum(0)
        a1 = -2 * (Ng * Dg).sum(0) + 2 * (Nc * Dc).sum(0) + (Dc * (1 - 2 * Ec)).sum(0)
        a2 = (Dg ** 2).sum(0) - 2 * (Dc ** 2).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            est = Ng.sum(0) / self.D
            k = q * q * G / (G - 1) / self.D ** 2
            a = 1 - k * a2
            b = -2 * est - k * a1
            c = est ** 2 - k * a0
            root = np.sqrt(np.maximum(b * b - 4 * a * c, 0))
            lo, hi = (-b - root) / (2 * a), (-b + root) / (2 * a)
            chance = self.E.sum(0) / self.A.sum(0)
            floor = -chance / (1 - chance)
        bounded = a > 0  # else too few clusters for the test to exclude any value: the whole range
        lo = np.where(bounded, np.fmax(lo, floor), floor)
        hi = np.where(bounded, np.fmin(hi, 1.0), 1.0)
        lo, hi = np.fmin(lo, est), np.fmax(hi, est)
        return np.where(np.isfinite(est), lo, np.nan), np.where(np.isfinite(est), hi, np.nan)


def _tstat(est, se):
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(est) / se
    t = np.where(se > 0, t, np.where(np.abs(est) > 1e-12, np.inf, 0.0))
    return np.where(np.isfinite(est), t, np.nan)


def _randomization_max(block: _Block, draws: int, rng, budget: int = 4_000_000):
    """``draws`` values of max_k |T_k| with the positions re-drawn as the design drew them:
    in each cluster one uniform random ranking of the sources shown, every call's list
    following it (module doc)."""
    import numpy as np

    r = block.rows
    _, key = _index(list(zip(block.cl_of_call[block.call_idx].tolist(), r["source_key"].tolist())))
    picks = np.flatnonzero(block.picked > 0)
    # pairs (pick, row of the same call): the pick's new 0-based position counts the rows of its
    # call whose source ranks before it
    order = np.argsort(block.call_idx, kind="stable")
    call_sorted = block.call_idx[order]
    start = np.searchsorted(call_sorted, np.arange(len(block.calls)))
    count = np.bincount(block.call_idx, minlength=len(block.calls))
    pc = block.call_idx[picks]
    reps = count[pc]
    pair_pick = np.repeat(np.arange(len(picks)), reps)
    offs = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    pair_row = order[np.repeat(start[pc], reps) + offs]
    pair_bounds = np.r_[0, np.cumsum(reps)[:-1]]
    key_row, key_pick = key[pair_row], key[picks][pair_pick]
    g_pick = block.cl_of_call[pc]
    # a pick's weight in sum S (1 - 2E): E is m/n for every position of its call
    w_pick = 1 - 2 * block.m[pc] / count[pc]
    G, L = block.S.shape
    n_keys = int(key.max()) + 1
    est_obs, _ = block.estimate()
    valid = np.isfinite(est_obs) & (block.D > 0)
    out = np.empty(draws)
    chunk = max(1, min(draws, budget // max(1, len(pair_row) + G * L)))
    done = 0
    while done < draws:
        b = min(chunk, draws - done)
        u = rng.random((b, n_keys))
        before = u[:, key_row] < u[:, key_pick]
        newpos = np.add.reduceat(before, pair_bounds, axis=1) if len(pair_bounds) else np.zeros((b, 0), int)
        draw = np.arange(b)[:, None]
        S = np.bincount((draw * (G * L) + g_pick[None, :] * L + newpos).ravel(),
                        minlength=b * G * L).reshape(b, G, L).astype(float)
        SW = np.bincount((draw * L + newpos).ravel(), weights=np.broadcast_to(w_pick, newpos.shape).ravel(),
                         minlength=b * L).reshape(b, L)
        est, se0 = block.estimate(S, SW)
        t = _tstat(est, se0)[:, valid]
        out[done:done + b] = np.nanmax(t, axis=1) if t.shape[1] else 0.0
        done += b
    return out


def _normal_max(block: _Block, draws: int, rng):
    """``draws`` values of max_k |Z_k| / sd_k for Z normal with the labels' covariance at the
    null (:meth:`_Block.null_covariance`): the simultaneous reference where no design
    randomizes the label (agents) or nothing is tested (fixed order)."""
    import numpy as np

    est, se0 = block.estimate()
    valid = np.isfinite(est) & np.isfinite(se0) & (se0 > 0)
    if not valid.any():
        return np.zeros(draws)
    cov = block.null_covariance()[np.ix_(valid, valid)]
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    z = rng.standard_normal((draws, len(w))) @ (v * np.sqrt(np.clip(w, 0, None))).T
    return np.max(np.abs(z) / se0[valid], axis=1)


def _cramers_v(rows) -> float:
    """Cramér's V of position x source agent over the shown rows (NaN when one of the two
    never varies: Self-MoA's single agent tangles nothing)."""
    import pandas as pd
    from scipy.stats.contingency import association

    table = pd.crosstab(rows["position"], rows["source_agent"])
    if table.shape[0] < 2 or table.shape[1] < 2:
        return math.nan
    return float(association(table.to_numpy(), method="cramer"))


def _block_rows(rows, label: str, randomized: bool, cluster_cols, draws: int, alpha: float, rng):
    """Per-label estimates of one block, and the block's overall test."""
    import numpy as np

    used = rows[rows["status"].isin(PICKED)]
    blk = _Block(used, label, cluster_cols)
    est, se0 = blk.estimate()
    A, E, S = blk.A.sum(0), blk.E.sum(0), blk.S.sum(0)
    G = len(blk.clusters)
    test_method = None
    p = np.full(len(blk.labels), np.nan)
    lo = hi = np.full(len(blk.labels), np.nan)
    p_overall = math.nan
    if G > 1 and draws:
        if randomized and label == "position":
            null = _randomization_max(blk, draws, rng)
            test_method = "randomization (the design's permutations re-drawn), studentized max-T"
        else:
            null = _normal_max(blk, draws, rng)
            test_method = "simultaneous normal reference with the null covariance, studentized max-T"
        q = _critical(null, alpha)
        lo, hi = blk.interval(q)
        if randomized:
            t = _tstat(est, se0)
            exceed = (null[None, :] >= np.nan_to_num(t, nan=np.inf)[:, None] - 1e-12).sum(1)
            p = np.where(np.isnan(t), np.nan, (1 + exceed) / (len(null) + 1))
            if not np.isnan(t).all():
                p_overall = float(np.nanmin(p))
        else:
            test_method = None  # fixed order: an association, not a test of position or agent
    # content share: a continuous, argmax-free description over copy calls with traceable content
    cs = np.full(len(blk.labels), np.nan)
    copy = rows[(rows["measure"] == "copied") & rows["share"].notna()]
    if len(copy):
        traced = copy.groupby("span_id")["share"].transform("sum") > 0
        copy = copy[traced]
        if len(copy):
            key = copy["position"] if label == "position" else copy["source_agent"]
            per = copy.groupby([copy["span_id"], key])["share"].sum().groupby(level=1).mean()
            cs = np.array([float(per.get(v, np.nan)) for v in blk.labels])
    out = []
    for j, v in enumerate(blk.labels):
        if A[j] == 0:
            continue
        out.append({"label": v, "n": int(A[j]), "share": float(S[j] / A[j]), "chance": float(E[j] / A[j]),
                    "excess": float(est[j]), "ci_low": float(lo[j]), "ci_high": float(hi[j]),
                    "p_value": float(p[j]), "content_share": float(cs[j])})
    test = {"method": test_method, "p_value": p_overall, "draws": draws if test_method else 0, "clusters": G}
    return out, test, len(blk.calls)


def positional_bias(source, *, by: str = "position", variant: str | Sequence[str] | None = None,
                    pool_variants: bool = False, split: str | None = None, steps: Sequence[str] | None = None,
                    cluster: str = "item_repeat", level: float = 0.95, draws: int = 1999, seed: int = 0,
                    ngram: int = 3, dominance: float = 0.5, min_hits: int = 2, exchangeable: bool = True,
                    dedupe: bool = True, store: Any = None, trace_id: str | Sequence[str] | None = None):
    """Position (or source-agent) effects of aggregating calls, one row per position (or
    agent) and block; see the module doc for the estimand and the inference.

    Args:
        source: a :class:`~moakit.TraceStore`, a DataFrame shaped like
            ``TraceStore.aggregation_inputs()`` (with ``store=`` to derive the design, or with
            design columns ``randomized``, ``variant``, ``item``, ``repeat``, ``shown_text``,
            ``rank_choice``), or the output of :func:`bias_inputs`.
        by: ``"position"`` or ``"agent"`` (rows per source agent).
        variant: restrict to this pipeline variant (or these); default every variant, each in
            its own block (variants differ in design: never pooled by default).
        pool_variants: pool the chosen variants into one block per order design.
        split: also split blocks by ``"step"`` (kind) or ``"aggregator"`` (aggregating agent).
        steps: step kinds to analyse (default Synthesize, Aggregate, Vote, Rank).
        cluster: ``"item_repeat"`` (default; calls sharing a run or an item's proposals) or
            ``"item"`` (also pools repeats of an item: when items are the sampling unit).
        level: simultaneous confidence level of the intervals (alpha = 1 - level for p).
        draws: re-drawn permutations / bootstrap draws (at least 19; smallest p is 1/(draws+1)).
        seed: seed of the draws (results are reproducible).
        ngram, dominance, min_hits: the attribution (:func:`moakit.analysis.attribution.attribute`).
        exchangeable: count samples of one agent listed in sample order as randomized.
        dedupe: drop runs that repeat an earlier run (same variant, item and seed).
        store, trace_id: a store to derive a frame's design from; the runs to analyse.

    Returns:
        DataFrame with columns :data:`BIAS_COLUMNS`: ``measure`` (``copied``/``kept``),
        ``variant``, ``step`` (the step kinds in the block, joined by ``+``), ``aggregator``
        (with ``split="aggregator"``), ``randomized``, ``design`` (``shuffled``,
        ``exchangeable``, ``fixed``, or several joined by ``+``), ``position`` or ``agent``,
        ``n`` (attributed calls that showed it), ``n_calls`` (attributed calls in the block),
        ``share``, ``chance``, ``excess``, ``ci_low``/``ci_high`` (simultaneous intervals over
        the block's rows), ``p_value`` (adjusted, agreeing with the interval; NaN where the
        order was never randomized), ``content_share`` (mean share of the output's
        distinctive content from it, over copy calls with any), ``cramers_v`` (position x
        source agent in the block's calls). ``attrs``: ``blocks`` (per block: design,
        counts of attributed / unattributed calls by reason, clusters, the overall test),
        ``excluded`` (calls left out, by reason), ``estimand``, ``reading`` (the words
        ``BiasView`` shows), and the settings.
    """
    import numpy as np
    import pandas as pd

    if by not in ("position", "agent"):
        raise ValueError(f"positional_bias: by must be 'position' or 'agent', got {by!r}")
    if split not in (None, "step", "aggregator"):
        raise ValueError(f"positional_bias: split must be None, 'step' or 'aggregator', got {split!r}")
    if cluster not in ("item_repeat", "item"):
        raise ValueError(f"positional_bias: cluster must be 'item_repeat' or 'item', got {cluster!r}")
    if not (isinstance(draws, int) and (draws == 0 or draws >= 19)):
        raise ValueError(f"positional_bias: draws must be 0 or an integer >= 19, got {draws!r}")
    if not 0.5 <= level < 1:
        raise ValueError(f"positional_bias: level must be in [0.5, 1), got {level!r}")
    alpha = 1 - level
    if isinstance(source, pd.DataFrame) and set(INPUT_COLUMNS) <= set(source.columns):
        inputs = source
    else:
        inputs = bias_inputs(source, store=store, trace_id=trace_id, steps=steps, ngram=ngram, dominance=dominance,
                             min_hits=min_hits, exchangeable=exchangeable, dedupe=dedupe)
    if steps is not None and len(inputs):
        inputs = inputs[inputs["step"].isin(set(steps))]
    if variant is not None and len(inputs):
        chosen = [variant] if isinstance(variant, str) else list(variant)
        have = list(dict.fromkeys(inputs["variant"]))
        unknown = [v for v in chosen if v not in have]
        if unknown:
            raise ValueError(f"positional_bias: no variant {unknown} in the data; variants: {have}")
        inputs = inputs[inputs["variant"].isin(chosen)]
    if pool_variants and len(inputs):
        inputs = inputs.assign(variant=" + ".join(dict.fromkeys(inputs["variant"])))
    cluster_cols = ["item", "repeat"] if cluster == "item_repeat" else ["item"]
    keys = ["measure", "variant", "randomized"] + ([split] if split == "step" else
                                                   ["aggregator"] if split == "aggregator" else [])
    label = "position" if by == "position" else "agent"
    rows, blocks = [], []
    if len(inputs):
        for bi, (key, g) in enumerate(inputs.groupby(keys, sort=False)):
            meta = dict(zip(keys, key))
            status = g.drop_duplicates("span_id")["status"]
            counts = {k: int(v) for k, v in status.value_counts().items()}
            picked_calls = int(status.isin(PICKED).sum())
            design = "+".join(sorted(set(g["design"])))
            block = {"measure": meta["measure"], "variant": meta["variant"], "randomized": bool(meta["randomized"]),
                     "design": design, "step": "+".join(sorted(set(g["step"]))),
                     "aggregator": meta.get("aggregator"), "calls": int(g["span_id"].nunique()),
                     "picked": picked_calls, "status": counts, "runs": int(g["trace_id"].nunique()),
                     "cramers_v": _cramers_v(g[g["status"].isin(PICKED)]) if picked_calls else math.nan}
            if picked_calls:
                est, test, n_calls = _block_rows(g, label, bool(meta["randomized"]), cluster_cols, draws, alpha,
                                                 np.random.default_rng([seed, bi]))
            else:
                est, test, n_calls = [], {"method": None, "p_value": math.nan, "draws": 0, "clusters": 0}, 0
            block["test"] = test
            blocks.append(block)
            for r in est:
                v = r.pop("label")
                rows.append({"measure": block["measure"], "variant": block["variant"], "step": block["step"],
                             "aggregator": block["aggregator"], "randomized": block["randomized"],
                             "design": design, "position": v if label == "position" else None,
                             "agent": v if label == "agent" else None, **r, "n_calls": n_calls,
                             "cramers_v": block["cramers_v"]})
    df = pd.DataFrame(rows, columns=BIAS_COLUMNS)
    df["position"] = df["position"].astype("Int64")
    df["randomized"] = df["randomized"].astype(bool)
    df.attrs.update({
        "by": by, "level": level, "draws": draws, "seed": seed, "cluster": cluster,
        "attribution": {"ngram": ngram, "dominance": dominance, "min_hits": min_hits},
        "blocks": blocks, "excluded": dict(inputs.attrs.get("excluded", {})),
        "estimand": ("excess = (share - chance) / (1 - chance): the chance-corrected excess rate at which the "
                     f"{'position' if by == 'position' else 'source agent'} is drawn on, among attributed calls; "
                     "identified as an effect only on randomized calls"),
    })
    df.attrs["reading"] = bias_summary(df)
    return df


# ---- reading ----------------------------------------------------------------------------------
def _fmt_p(p: float, draws: int | None = None) -> str:
    if p is None or p != p:
        return "p n/a"
    if draws and p <= 1.0 / (draws + 1) + 1e-12:
        return f"p <= {1.0 / (draws + 1):.2g}"
    return f"p = {p:.2g}"


def _name(row, label: str) -> str:
    return f"position {int(row['position'])}" if label == "position" else f"agent {row['agent']}"


def bias_summary(df) -> str:
    """What :func:`positional_bias`'s result says, one line per block, in words: which rows
    differ from chance (simultaneous intervals and adjusted p agree), which effects the data
    rule out, and what cannot be concluded where the order was never randomized."""
    blocks = list(getattr(df, "attrs", {}).get("blocks") or [])
    if df is None or (len(df) == 0 and not blocks):
        return "no aggregating calls to analyse"
    if not blocks:  # a frame that lost its attrs: its rows still say what they hold
        for (m, v, r, st), g in df.groupby(["measure", "variant", "randomized", "step"], sort=False):
            blocks.append({"measure": m, "variant": v, "randomized": bool(r), "step": st, "design": g["design"].iloc[0],
                           "aggregator": g["aggregator"].iloc[0], "status": {}, "test": {}})
    label = "position" if len(df) == 0 or df["position"].notna().any() else "agent"
    level = float(df.attrs.get("level", 0.95))
    draws = df.attrs.get("draws")
    lines = []
    for b in blocks:
        g = df[(df["measure"] == b["measure"]) & (df["variant"] == b["variant"])
               & (df["randomized"] == b["randomized"]) & (df["step"] == b["step"])]
        if isinstance(b.get("aggregator"), str):
            g = g[g["aggregator"] == b["aggregator"]]
        lines.append(_block_line(g, b, label, level, draws) if len(g) else _empty_line(b))
    return "\n".join(lines)


def _block_line(g, b: dict, label: str, level: float, draws) -> str:
    alpha = 1 - level
    head = _head(g.iloc[0], b)
    verb = "kept" if g.iloc[0]["measure"] == "kept" else "drawn on"
    if not bool(g.iloc[0]["randomized"]):
        top = g.loc[(g["share"] - g["chance"]).abs().idxmax()]
        v = g.iloc[0]["cramers_v"]
        tangle = ("a single source agent throughout, but the order was not randomized" if v != v else
                  f"position and source agent are tangled (Cramér's V {v:.2f})")
        other = "the agent (or content) usually shown there" if label == "position" else \
            "the position it is usually shown at"
        return (f"{head}: the order was never randomized, so no {label} effect is estimated or tested. "
                f"{_name(top, label).capitalize()} is {verb} at {top['share'] / top['chance']:.1f}x chance, "
                f"but {tangle}: this may be a preference for {other}. "
                f"Add Shuffle before the aggregating step to separate them.")
    sig = g[g["p_value"] <= alpha + 1e-12]
    if len(sig):
        up = sig[sig["excess"] > 0].sort_values("excess", ascending=False)
        down = sig[sig["excess"] < 0].sort_values("excess")
        parts = [f"{_name(r, label)} is {verb} beyond chance: excess {r['excess']:.2f} "
                 f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}], {_fmt_p(r['p_value'], draws)}" for _, r in up.iterrows()]
        if len(down):
            parts.append("less than chance: " + ", ".join(
                f"{_name(r, label)} ({r['excess']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}])"
                for _, r in down.iterrows()))
        return (f"{head}: " + "; ".join(parts) + f" ({level:.0%} intervals simultaneous over {len(g)} {label}s"
                + (", positions balanced by the design)" if label == "agent" else ")"))
    what = "position effect" if label == "position" else "agent preference"
    clusters = b.get("test", {}).get("clusters")
    if g["ci_low"].isna().all() and g["p_value"].isna().all():
        return (f"{head}: {clusters if clusters is not None else 'too few'} cluster(s) of calls (item x repeat): "
                f"too few for an interval or a test")
    p = b.get("test", {}).get("p_value", math.nan)
    floor = -g["chance"] / (1 - g["chance"])
    if ((g["ci_low"] <= floor + 0.01) & (g["ci_high"] >= 0.99)).all():
        return (f"{head}: no {what} detected ({_fmt_p(p, draws)}), but the intervals span every possible "
                f"excess: too few calls to bound an effect")
    bound = float(g[["ci_low", "ci_high"]].abs().max().max())
    return (f"{head}: no {what} detected ({_fmt_p(p, draws)}); "
            f"excesses beyond ±{bound:.2f} are ruled out ({level:.0%} simultaneous)")


def _head(row, block: dict) -> str:
    design = "+".join(DESIGN_WORDS.get(d, d) for d in str(row["design"]).split("+"))
    who = f"{row['variant']}, {row['step']}"
    if isinstance(row.get("aggregator"), str):
        who += f" ({row['aggregator']})"
    if row["measure"] == "kept":
        who += " kept"
    st = block.get("status", {})
    total = sum(st.values()) if st else None
    att = f"{int(row['n_calls'])} of {total} calls attributed" if total and row["measure"] == "copied" else \
        f"{int(row['n_calls'])} calls"
    return f"{who} [{design}; {att}]"


def _empty_line(b: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in b.get("status", {}).items())
    return (f"{b['variant']}, {b['step']} [{DESIGN_WORDS.get(b['design'], b['design'])}]: no call could be "
            f"attributed to one source ({reasons}): nothing to estimate")
