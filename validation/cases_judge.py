"""Validation of the pairwise judge's statistics, judge agreement and the length-controlled
win rate, on simulated judges whose behaviour is known.

* ``judge``: replies are simulated as text (verdict sentences, bare labels, JSON, and
  unreadable replies at a known rate), read by ``read_judgements`` and summarised by
  ``judge_summary``: exactly what ``LLMJudge`` does with a model's replies. Per item the
  output's chance of winning is ``w_i`` (varying over items); a position bias ``b`` adds to its
  logit when shown first and subtracts when shown second. Truths (by a large Monte Carlo run of
  the same model, once per process): the order-averaged win rate ``E[(P_first + P_second)/2]``
  and ``p_first = E[(P_first + 1 - P_second)/2]``.
* ``judge_agreement``: two judges label "the output won" for both orders of each item; each
  copies the item's true label with probability r, else flips a fair coin. Kappa = r^2.
* ``length``: AlpacaEval-sized (805 instructions, both orders), reference lengths log-normal,
  outputs mostly longer; the judge prefers the longer answer, plus a position bias and
  instruction-level noise symmetric around no preference. With no quality difference the
  LC win rate is 0.5 by construction (the judge's preference at equal lengths is a symmetric
  mixture around 0.5); the raw win rate is not.

Every case simulates 600 datasets (Monte Carlo standard error of a 0.95 coverage: 0.009).
"""

from __future__ import annotations

import functools

from .core import Case, Outcome

READABLE = {
    "a": ["Output (a)", "Between Output (a) and Output (b), (a) is better.", '{"better": "a"}', "I prefer Output (a)."],
    "b": ["Output (b)", "Between Output (a) and Output (b), (b) is better.", '{"better": "b"}', "I prefer Output (b)."],
}
UNREADABLE = ["Both outputs have merits.", "I cannot decide.", "Output (a) is longer than Output (b)."]


def _expit(x):
    import numpy as np

    return 1 / (1 + np.exp(-x))


def _judge_probs(rng, n, alpha, beta, bias):
    """Per item: P(output wins | shown first), P(output wins | shown second)."""
    import numpy as np

    w = np.clip(rng.beta(alpha, beta, n), 1e-6, 1 - 1e-6)
    logit = np.log(w / (1 - w))
    return _expit(logit + bias), _expit(logit - bias)


@functools.lru_cache(maxsize=None)
def _judge_truth(alpha, beta, bias):
    import numpy as np

    p1, p2 = _judge_probs(np.random.default_rng(12345), 2_000_000, alpha, beta, bias)
    return float(((p1 + p2) / 2).mean()), float(((p1 + 1 - p2) / 2).mean())


def _reply(rng, chose_a: bool, unreadable: float) -> str:
    if rng.random() < unreadable:
        return UNREADABLE[rng.integers(len(UNREADABLE))]
    forms = READABLE["a" if chose_a else "b"]
    return forms[rng.integers(len(forms))]


def _judge(rng, *, alpha, beta, bias, unreadable, n=150) -> Outcome:
    import numpy as np
    import pandas as pd

    from moakit.analysis import judge_summary, read_judgements

    p1, p2 = _judge_probs(rng, n, alpha, beta, bias)
    out_first = rng.random(n) < p1  # output shown as (a) wins: the judge says (a)
    out_second = rng.random(n) < p2  # output shown as (b) wins: the judge says (b)
    frame = pd.DataFrame({"item": np.arange(n), "reference_index": 0,
                          "reply_ab": [_reply(rng, bool(x), unreadable) for x in out_first],
                          "reply_ba": [_reply(rng, not bool(x), unreadable) for x in out_second]})
    s = judge_summary(read_judgements(frame)).iloc[0]
    truth_wr, truth_pf = _judge_truth(alpha, beta, bias)
    # what the old scorer did: an unreadable reply made the item a tie (0.5)
    old = read_judgements(frame)["score"].fillna(0.5).mean()
    return Outcome(
        rejected={"win rate = 0.5": not s["ci_low"] <= 0.5 <= s["ci_high"],
                  "p_first = 0.5 (no position bias)": s["p_first_p_value"] < 0.05},
        covered={"win rate": s["ci_low"] <= truth_wr <= s["ci_high"],
                 "p_first": s["p_first_ci_low"] <= truth_pf <= s["p_first_ci_high"]},
        extra={"win rate - truth": s["win_rate"] - truth_wr,
               "old scoring (unreadable = 0.5) - truth": old - truth_wr,
               "parse failure rate": s["parse_failure_rate"]})


def _agreement(rng, *, r: float, n=150) -> Outcome:
    import numpy as np
    import pandas as pd

    from moakit.analysis import judge_agreement

    truth = rng.integers(0, 2, n)  # did the output deserve to win (per item, both orders)

    def judge():
        labels = []
        for _ in range(2):  # the two orders
            copy = rng.random(n) < r
            labels.append(np.where(copy, truth, rng.integers(0, 2, n)).astype(float))
        return pd.DataFrame({"item": np.arange(n), "reference_index": 0, "win_output_first": labels[0],
                             "win_output_second": labels[1]})

    k = judge_agreement(judge(), judge(), n_boot=1000, seed=int(rng.integers(1 << 30))).iloc[0]
    kappa = r * r
    return Outcome(rejected={"kappa = 0": k["p_value"] < 0.05},
                   covered={"kappa": k["ci_low"] <= kappa <= k["ci_high"]},
                   extra={"kappa - truth": k["kappa"] - kappa})


def _lengths(rng, n):
    import numpy as np

    ref = np.exp(rng.normal(np.log(1200), 0.5, n))
    return ref * np.exp(rng.normal(0.35, 0.5, n)), ref


def _length_pref(delta, shape):
    import numpy as np

    if shape == "tanh":
        return 1.5 * np.tanh(delta / 900)
    # "step": a judge that almost always picks the longer answer once it is 300 characters longer
    return 2.0 * np.sign(delta) * np.minimum(np.abs(delta) / 300, 1.0)


@functools.lru_cache(maxsize=None)
def _lc_truth(quality: float, u_sd: float, pos: float) -> float:
    """P(output preferred | equal length), averaged over instructions and both orders."""
    import numpy as np

    u = np.random.default_rng(7).normal(0, u_sd, 2_000_000)
    return float(((_expit(quality + u + pos) + _expit(quality + u - pos)) / 2).mean())


def _length(rng, *, quality: float, shape: str, n: int = 805, u_sd: float = 0.8, pos: float = 0.4) -> Outcome:
    import numpy as np
    import pandas as pd

    from moakit.analysis import length_controlled_win_rate

    out, ref = _lengths(rng, n)
    u = rng.normal(0, u_sd, n)
    rows = []
    for p in (pos, -pos):  # both orders: the position bias cancels on average
        prob = _expit(quality + u + p + _length_pref(out - ref, shape))
        rows.append(pd.DataFrame({"item": np.arange(n), "score": (rng.random(n) < prob).astype(float),
                                  "output_length": out, "reference_length": ref}))
    r = length_controlled_win_rate(pd.concat(rows, ignore_index=True)).iloc[0]
    truth = _lc_truth(quality, u_sd, pos)
    return Outcome(rejected={"LC win rate = 0.5": r["p_value"] < 0.05,
                             "raw win rate = 0.5": not r["win_rate_ci_low"] <= 0.5 <= r["win_rate_ci_high"]},
                   covered={"LC win rate": r["lc_ci_low"] <= truth <= r["lc_ci_high"]},
                   extra={"LC win rate - truth": r["lc_win_rate"] - truth, "raw win rate": r["win_rate"],
                          "LC interval width": r["lc_ci_high"] - r["lc_ci_low"]})


CASES = [
    Case("judge", "fair judge and equal outputs",
         "w ~ Beta(2,2) (win rate 0.5), no position bias, 10% unreadable replies, 150 items",
         lambda rng: _judge(rng, alpha=2, beta=2, bias=0.0, unreadable=0.10),
         null=("win rate = 0.5", "p_first = 0.5 (no position bias)"), datasets=600),
    Case("judge", "position-biased judge and a better output",
         "w ~ Beta(3,2), position bias +-1.0 logit, 15% unreadable replies, 150 items",
         lambda rng: _judge(rng, alpha=3, beta=2, bias=1.0, unreadable=0.15),
         power_goal={"p_first = 0.5 (no position bias)": 0.8}, datasets=600),
    Case("judge_agreement", "independent judges", "each judge a fair coin (kappa 0), 150 items x 2 orders",
         lambda rng: _agreement(rng, r=0.0), null=("kappa = 0",), datasets=600),
    Case("judge_agreement", "judges sharing the truth", "each copies the true label w.p. 0.5 (kappa 0.25)",
         lambda rng: _agreement(rng, r=0.5), power_goal={"kappa = 0": 0.8}, datasets=600),
    Case("length", "longer-preferring judge with no quality difference (tanh)",
         "805 instructions x 2 orders; judge +1.5 tanh(delta/900) logit for length; LC truth 0.5",
         lambda rng: _length(rng, quality=0.0, shape="tanh"), null=("LC win rate = 0.5",), datasets=600),
    Case("length", "longer-preferring judge with no quality difference (step)",
         "as above, but a judge that picks the longer answer once it is 300 chars longer (not the GLM's shape)",
         lambda rng: _length(rng, quality=0.0, shape="step"), null=("LC win rate = 0.5",), datasets=600),
    Case("length", "true quality difference",
         "as the tanh case, plus +0.3 logit for the output at every length (LC truth 0.56)",
         lambda rng: _length(rng, quality=0.3, shape="tanh"), power_goal={"LC win rate = 0.5": 0.8}, datasets=600),
]

