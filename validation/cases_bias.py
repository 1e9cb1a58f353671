"""Positional bias (``moakit.analysis.positional_bias`` and ``choice_model``) on simulated MoA
traces whose truth is known.

Each dataset is a frame shaped like ``TraceStore.aggregation_inputs()`` plus the design
columns a store provides (``randomized``, ``variant``, ``item``, ``repeat``): proposers write
random-word answers (a 1,000-word vocabulary with Zipf's-law frequencies, so answers share
common words as real ones do, and a long answer overlaps any output more), an aggregator
behaves as the case says (copies the chosen answer verbatim, with a few words of its own,
or blends equal pieces of every answer), and the analysis reads the texts through the
public API, attribution included.

Truths: an aggregator that copies position k with probability p (else chooses without
regard to position) has excess_k = p and -p/(n-1) elsewhere; one that copies agent a's
answer with probability q has agent excess q and -q/(n-1) elsewhere; the mixture of both has
position excess p and agent excess q (the other term averages out under Shuffle). Tests
named "... = 0" reject when the block's max-T p-value is <= 0.05; intervals are the
simultaneous 95% intervals, "covered" when every row's interval holds its true excess.
Cases that take well under a second per dataset simulate 1,000 datasets: a false-positive
rate is then measured to +/- 0.014 (Monte Carlo 95%), so a test at its 0.05 level is not
reported above the 0.07 goal by Monte Carlo error alone (at 200 datasets, +/- 0.03, it is in
about one case in ten).
"""

from __future__ import annotations

import math

import numpy as np

from .core import Case, Outcome

ALPHA = 0.05
DRAWS = 999
AGENTS = ("a", "b", "c", "d")
_VOCAB: list = []


def vocab():
    """(words, cumulative Zipf weights) of the simulated vocabulary."""
    if not _VOCAB:
        syll = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
        rng = np.random.default_rng(12345)
        words: set[str] = set()
        while len(words) < 1000:
            words.add("".join(rng.choice(syll, size=3)))
        weights = 1.0 / np.arange(1, 1001)
        _VOCAB.extend([np.array(sorted(words)), np.cumsum(weights / weights.sum())])
    return _VOCAB


def answer(rng, words: int) -> str:
    """A random-word answer of ``words`` words."""
    v, cum = vocab()
    return " ".join(v[np.minimum(np.searchsorted(cum, rng.random(int(words))), len(v) - 1)])


class Frame:
    """Rows of a simulated aggregation-inputs frame."""

    def __init__(self):
        self.rows = {c: [] for c in ("trace_id", "span_id", "step_index", "step", "agent", "position", "n_shown",
                                     "source_span_id", "source_agent", "source_text", "output", "randomized",
                                     "variant", "item", "repeat")}
        self.calls = 0

    def call(self, *, trace, step, step_index, aggregator, agents, shown, output, randomized, variant, item,
             repeat=0, design=None):
        self.calls += 1
        sid = f"call{self.calls}"
        n = len(shown)
        r = self.rows
        r["trace_id"] += [trace] * n
        r["span_id"] += [sid] * n
        r["step_index"] += [step_index] * n
        r["step"] += [step] * n
        r["agent"] += [aggregator] * n
        r["position"] += list(range(1, n + 1))
        r["n_shown"] += [n] * n
        r["source_span_id"] += [f"{trace}:{a}:{i}" for i, a in enumerate(agents)]
        r["source_agent"] += list(agents)
        r["source_text"] += list(shown)
        r["output"] += [output] * n
        r["randomized"] += [randomized] * n
        r["variant"] += [variant] * n
        r["item"] += [item] * n
        r["repeat"] += [repeat] * n
        if design is not None:
            self.rows.setdefault("design", [])
            self.rows["design"] += [design] * n

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def copy_of(rng, text, extra=3):
    """An aggregator's output that copies ``text`` with a few words of its own."""
    return text + " " + answer(rng, extra)


def blend(rng, shown, words=6):
    """Equal pieces (``words`` consecutive words) of every shown answer, in random order."""
    pieces = []
    for t in shown:
        w = t.split()
        start = int(rng.integers(0, max(1, len(w) - words + 1)))
        pieces.append(" ".join(w[start:start + words]))
    rng.shuffle(pieces)
    return " ".join(pieces)


def choose(rng, n, agents, *, p_pos=0.0, pos=1, q_agent=0.0, agent="a"):
    """Index of the response copied: position ``pos`` with probability p_pos, agent ``agent``'s
    answer with probability q_agent, else uniform."""
    u = rng.random()
    if u < p_pos:
        return pos - 1
    if u < p_pos + q_agent and agent in agents:
        return list(agents).index(agent)
    return int(rng.integers(0, n))


# ---- outcomes ---------------------------------------------------------------------------------
def _rows(df, **where):
    sub = df
    for k, v in where.items():
        sub = sub[sub[k] == v]
    return sub


def _test(df):
    """Whether the block's simultaneous test rejects (any row's adjusted p <= alpha)."""
    return bool((df["p_value"] <= ALPHA).any())


def _covered(df, truth):
    """Every row's simultaneous interval holds its true excess (``truth``: label -> excess)."""
    col = "position" if df["position"].notna().any() else "agent"
    ok = True
    for _, r in df.iterrows():
        t = truth(r[col])
        ok &= bool(r["ci_low"] - 1e-9 <= t <= r["ci_high"] + 1e-9)
    return ok


def _pos_truth(p, n, k=1):
    return lambda pos: p if pos == k else -p / (n - 1)


def _agent_truth(q, n, a="a"):
    return lambda ag: q if ag == a else -q / (n - 1)


# ---- simulations ----------------------------------------------------------------------------------
def shuffled_aggregate(rng, *, items=200, p_pos=0.0, q_agent=0.0, words=12, long_agent=None, blend_prob=0.0,
                       variants=("shuffle",)):
    """One Aggregate per run over four proposals. Variants: ``base`` (agent order), ``shuffle``
    (random order), ``dropout`` (each answer kept with probability 0.7, agent order kept)."""
    f = Frame()
    for i in range(items):
        lengths = [3 * words if a == long_agent else words for a in AGENTS]
        props = [answer(rng, w) for w in lengths]
        for v in variants:
            order = list(range(4))
            if v == "shuffle":
                order = list(rng.permutation(4))
            elif v == "dropout":
                kept = [j for j in order if rng.random() >= 0.3] or [int(rng.integers(0, 4))]
                order = kept
            agents = [AGENTS[j] for j in order]
            shown = [props[j] for j in order]
            if rng.random() < blend_prob:
                out = blend(rng, shown)
            else:
                out = copy_of(rng, shown[choose(rng, len(shown), agents, p_pos=p_pos, q_agent=q_agent)])
            f.call(trace=f"{v}-{i}", step="Aggregate", step_index=2 if v != "base" else 1, aggregator="agg",
                   agents=agents, shown=shown, output=out, randomized=(v == "shuffle"), variant=v, item=f"q{i}")
    return f.frame()


def case_position_and_agent(p_pos, q_agent, *, items=200, with_choice=False):
    def run(rng):
        from moakit.analysis import bias_inputs, positional_bias

        rows = bias_inputs(shuffled_aggregate(rng, items=items, p_pos=p_pos, q_agent=q_agent))
        pos = positional_bias(rows, draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        ag = positional_bias(rows, by="agent", draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        out = Outcome(
            rejected={"position effect = 0": _test(pos), "agent preference = 0": _test(ag)},
            covered={"position excess (simultaneous)": _covered(pos, _pos_truth(p_pos, 4)),
                     "agent excess (simultaneous)": _covered(ag, _agent_truth(q_agent, 4))},
            extra={"excess of position 1": float(_rows(pos, position=1)["excess"].iloc[0]),
                   "excess of agent a": float(_rows(ag, agent="a")["excess"].iloc[0])})
        return out

    return run


def case_pooled_variants(q_agent, *, items=200):
    """base + Shuffle + Dropout in one frame, as an ablation stores them."""

    def run(rng):
        from moakit.analysis import bias_inputs, positional_bias

        df = shuffled_aggregate(rng, items=items, q_agent=q_agent, variants=("base", "shuffle", "dropout"))
        rows = bias_inputs(df)
        pos = positional_bias(rows, draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        ag = positional_bias(rows, by="agent", draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        fixed = pos[~pos["randomized"]]
        return Outcome(
            rejected={"position effect = 0 (any block)": _test(pos),
                      "agent preference = 0 (shuffle block)": _test(_rows(ag, variant="shuffle"))},
            covered={"agent excess, shuffle block (simultaneous)":
                     _covered(_rows(ag, variant="shuffle"), _agent_truth(q_agent, 4))},
            extra={"fixed-order rows given a p-value": float(fixed["p_value"].notna().any()),
                   "share of variants flagged randomized": float(pos.groupby("variant")["randomized"].first().mean())})

    return run


def case_clustered_synthesize(*, runs=30, layer=6, best_prob=0.8):
    """``runs`` runs: Shuffle, then a Synthesize layer of ``layer`` calls shown one list; each
    call copies the run's best answer (a random proposal, whatever its position) with
    probability ``best_prob``, else a uniform one. No position effect; strongly clustered."""

    def run(rng):
        from moakit.analysis import positional_bias

        f = Frame()
        for i in range(runs):
            props = [answer(rng, 12) for _ in AGENTS]
            best = int(rng.integers(0, 4))
            order = list(rng.permutation(4))
            shown = [props[j] for j in order]
            agents = [AGENTS[j] for j in order]
            for s in range(layer):
                pick = order.index(best) if rng.random() < best_prob else int(rng.integers(0, 4))
                f.call(trace=f"r{i}", step="Synthesize", step_index=2, aggregator=f"s{s}", agents=agents, shown=shown,
                       output=copy_of(rng, shown[pick]), randomized=True, variant="shuffle", item=f"q{i}")
        pos = positional_bias(f.frame(), draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        return Outcome(rejected={"position effect = 0": _test(pos)},
                       covered={"position excess (simultaneous)": _covered(pos, lambda k: 0.0)},
                       extra={"largest |excess|": float(pos["excess"].abs().max())})

    return run


def case_equal_blend_long_source(*, items=200, blend_prob=0.5):
    """Agent d's answers are three times longer; the aggregator blends equal pieces of every
    answer (probability ``blend_prob``) or copies one chosen uniformly. No preference at all."""

    def run(rng):
        from moakit.analysis import bias_inputs, positional_bias

        rows = bias_inputs(shuffled_aggregate(rng, items=items, long_agent="d", blend_prob=blend_prob))
        ag = positional_bias(rows, by="agent", draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        pos = positional_bias(rows, draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        block = ag.attrs["blocks"][0]
        calls = sum(block["status"].values())
        return Outcome(rejected={"agent preference = 0": _test(ag), "position effect = 0": _test(pos)},
                       covered={"agent excess (simultaneous)": _covered(ag, lambda a: 0.0)},
                       extra={"share of calls unattributed": 1 - block["picked"] / calls,
                              "excess of the long agent d": float(_rows(ag, agent="d")["excess"].iloc[0])})

    return run


def case_self_moa(p_pos, *, items=200, samples=4):
    """Self-MoA: one agent sampled ``samples`` times, listed in sample order (exchangeable,
    no Shuffle); the aggregator copies position 1 with probability p_pos, else uniformly."""

    def run(rng):
        from moakit.analysis import positional_bias

        f = Frame()
        for i in range(items):
            shown = [answer(rng, 12) for _ in range(samples)]
            pick = 0 if rng.random() < p_pos else int(rng.integers(0, samples))
            f.call(trace=f"r{i}", step="Aggregate", step_index=1, aggregator="agg", agents=["m"] * samples,
                   shown=shown, output=copy_of(rng, shown[pick]), randomized=False, design="exchangeable",
                   variant="self_moa", item=f"q{i}")
        pos = positional_bias(f.frame(), draws=DRAWS, seed=int(rng.integers(2 ** 31)))
        return Outcome(rejected={"position effect = 0": _test(pos)},
                       covered={"position excess (simultaneous)": _covered(pos, _pos_truth(p_pos, samples))},
                       extra={"flagged tangled (Cramér's V not NaN)": float(pos["cramers_v"].notna().any()),
                              "excess of position 1": float(_rows(pos, position=1)["excess"].iloc[0])})

    return run


def case_choice_model(*, items=200, beta_pos2=-0.6, beta_agent_a=0.8, gamma=0.5):
    """The conditional logit's own model: P(copy i) proportional to exp(beta_pos[pos_i] +
    beta_agent[agent_i] + gamma * log length_i), Shuffle, lengths 6 to 40 words. True
    coefficients: position 2 vs 1 = beta_pos2, positions 3, 4 vs 1 = 0, agent a vs b = beta_agent_a,
    agents c, d vs b = 0, log length = gamma. The power of the position-2 test is reported
    without a goal: the issue sets none for the choice model (a goal of 0.8 guessed for an odds
    ratio of 0.55 with 200 calls was missed, at 0.78; the effect was not enlarged to meet it)."""

    def run(rng):
        from moakit.analysis import choice_model

        f = Frame()
        for i in range(items):
            lengths = rng.integers(6, 41, 4)
            props = [answer(rng, w) for w in lengths]
            order = list(rng.permutation(4))
            agents = [AGENTS[j] for j in order]
            shown = [props[j] for j in order]
            util = np.array([(beta_pos2 if k == 1 else 0.0) + (beta_agent_a if agents[k] == "a" else 0.0)
                             + gamma * math.log1p(len(shown[k].split())) for k in range(4)])
            prob = np.exp(util - util.max())
            pick = int(rng.choice(4, p=prob / prob.sum()))
            f.call(trace=f"r{i}", step="Aggregate", step_index=2, aggregator="agg", agents=agents, shown=shown,
                   output=copy_of(rng, shown[pick]), randomized=True, variant="shuffle", item=f"q{i}")
        cm = choice_model(f.frame(), reference_agent="b")
        truth = {("position", "2"): beta_pos2, ("agent", "a"): beta_agent_a, ("log_length", ""): gamma}
        covered = {}
        for (term, lvl), t in truth.items():
            r = cm[(cm["term"] == term) & (cm["level"] == lvl)].iloc[0]
            name = f"{term.replace('_', ' ')} {lvl}".strip() + " (95% interval)"
            covered[name] = bool(r["ci_low"] <= t <= r["ci_high"])
        null = cm[cm["term"].eq("agent") & cm["level"].isin(["c", "d"])]
        pos2 = cm[(cm["term"] == "position") & (cm["level"] == "2")].iloc[0]
        return Outcome(rejected={"agent c, d vs b = 0 (Holm)": bool((null["p_holm"] <= ALPHA).any()),
                                 "position 3, 4 vs 1 = 0 (Holm)": bool(
                                     (cm[cm["term"].eq("position") & cm["level"].isin(["3", "4"])]["p_holm"]
                                      <= ALPHA).any()),
                                 "position 2 vs 1 = 0": bool(pos2["p_value"] <= ALPHA)},
                       covered=covered, extra={"position 2 coefficient": float(pos2["coef"])})

    return run


CASES = [
    Case("positional_bias", "no preference (Shuffle)", "copies a uniformly chosen answer; 200 items, 4 answers",
         case_position_and_agent(0.0, 0.0), null=("position effect = 0", "agent preference = 0"), datasets=1000),
    Case("positional_bias", "position 1 preference 0.3 (Shuffle)",
         "copies position 1 with p = 0.3 (excess 0.3), else uniform; 200 items, 4 answers",
         case_position_and_agent(0.3, 0.0), null=("agent preference = 0",),
         power_goal={"position effect = 0": 0.8}, datasets=1000),
    Case("positional_bias", "agent preference 0.4 (Shuffle)",
         "copies agent a's answer with q = 0.4, else uniform; no position effect; 200 items",
         case_position_and_agent(0.0, 0.4), null=("position effect = 0",),
         power_goal={"agent preference = 0": 0.8}, datasets=1000),
    Case("positional_bias", "agent preference 0.4 (base + Shuffle + Dropout pooled)",
         "as above, the three variants of each item in one frame (only Shuffle randomizes)",
         case_pooled_variants(0.4), null=("position effect = 0 (any block)",),
         power_goal={"agent preference = 0 (shuffle block)": 0.8}),
    Case("positional_bias", "position 0.2 and agent 0.3 (Shuffle)",
         "copies position 1 with p = 0.2, agent a with q = 0.3, else uniform; 200 items",
         case_position_and_agent(0.2, 0.3), power_goal={"position effect = 0": 0.8, "agent preference = 0": 0.8},
         datasets=1000),
    Case("positional_bias", "clustered Synthesize layers",
         "30 runs, Shuffle, 6 Synthesize calls shown one list, each copying the run's best answer w.p. 0.8",
         case_clustered_synthesize(), null=("position effect = 0",), datasets=1000),
    Case("positional_bias", "equal blend (one source 3x longer)",
         "half the calls blend equal 6-word pieces of all 4 answers (agent d's are 36 words, others 12), "
         "half copy a uniform one; Shuffle",
         case_equal_blend_long_source(), null=("agent preference = 0", "position effect = 0"), datasets=1000),
    Case("positional_bias", "Self-MoA (no preference)", "one agent sampled 4 times, sample order, copies uniformly",
         case_self_moa(0.0), null=("position effect = 0",), datasets=1000),
    Case("positional_bias", "Self-MoA (position 1 preference 0.3)",
         "one agent sampled 4 times, sample order, copies position 1 with p = 0.3",
         case_self_moa(0.3), power_goal={"position effect = 0": 0.8}, datasets=1000),
    Case("positional_bias", "choice model (conditional logit)",
         "P(copy) ~ exp(-0.6 [position 2] + 0.8 [agent a] + 0.5 log length), Shuffle, 200 items",
         case_choice_model(), null=("agent c, d vs b = 0 (Holm)", "position 3, 4 vs 1 = 0 (Holm)")),
]
