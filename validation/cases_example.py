"""A case that checks the validation harness itself: a one-sample t-test of a normal mean
(scipy), whose false-positive rate, power and coverage are known exactly."""

from __future__ import annotations

from .core import Case, Outcome


def _ttest(rng, mu: float, n: int = 30) -> Outcome:
    from scipy import stats

    x = rng.normal(mu, 1.0, n)
    t = stats.ttest_1samp(x, 0.0)
    ci = t.confidence_interval(0.95)
    return Outcome(rejected={"t-test mean = 0": t.pvalue < 0.05}, covered={"95% CI of the mean": ci.low <= mu <= ci.high})


CASES = [
    Case("harness", "t-test, null", "mean 0, n = 30", lambda rng: _ttest(rng, 0.0), null=("t-test mean = 0",)),
    Case("harness", "t-test, mean 0.6", "mean 0.6, n = 30 (power 0.91 exactly)", lambda rng: _ttest(rng, 0.6),
         power_goal={"t-test mean = 0": 0.8}),
]
