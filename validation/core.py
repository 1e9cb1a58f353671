"""What a validation case is and how its simulated datasets are summarised.

A :class:`Case` simulates one dataset with known truth from a seeded generator, runs the
analysis on it through moakit's public API and returns one :class:`Outcome`: for each test it
checks, whether the test rejected at alpha = 0.05; for each interval, whether it covered the
true value. Over many datasets these give

* the **false-positive rate** of a test whose null hypothesis is true in the simulation,
* the **power** of a test whose alternative is true,
* the **coverage** of an interval (share of datasets whose interval holds the truth),

each with a Monte Carlo 95% interval (Wilson), so a reader sees how precisely it was measured.
Which of the three a test or interval measures is declared by the case (``null`` names the
tests whose hypothesis is true), with the goal it must meet.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

ALPHA = 0.05
FPR_GOAL = 0.07  # at most, at alpha = 0.05
COVERAGE_GOAL = 0.93  # at least, for a 95% interval
POWER_GOAL = 0.80  # at least, where a case states a power goal


@dataclass
class Outcome:
    """One simulated dataset's result: test name -> rejected at ALPHA; interval name -> covered
    the truth. ``extra`` holds any number worth averaging (an estimate's bias, say)."""

    rejected: dict[str, bool] = field(default_factory=dict)
    covered: dict[str, bool] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Case:
    """A simulation with known truth.

    ``run(rng) -> Outcome`` simulates one dataset and analyses it. ``null``: the tests whose
    null hypothesis holds in this simulation (their rejection rate is a false-positive rate);
    every other test's rejection rate is power. ``power_goal``: test name -> the power it must
    reach (tests not named have their power reported without a goal). ``datasets``: how many
    datasets a full run simulates (>= 200 for every case, by the project's standard);
    ``quick``: how many ``--quick`` simulates."""

    analysis: str
    name: str
    truth: str
    run: Callable[..., Outcome]
    null: tuple[str, ...] = ()
    power_goal: dict[str, float] = field(default_factory=dict)
    datasets: int = 200
    quick: int = 3


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


@dataclass
class Rate:
    name: str
    kind: str  # "false positives" | "power" | "coverage"
    k: int
    n: int
    goal: float | None  # the bound it must meet (<= for false positives, >= otherwise)

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def met(self) -> bool | None:
        if self.goal is None or not self.n:
            return None
        return self.value <= self.goal if self.kind == "false positives" else self.value >= self.goal


@dataclass
class CaseResult:
    analysis: str
    name: str
    truth: str
    datasets: int
    seconds: float
    rates: list[Rate]
    extra: dict[str, float]

    @property
    def met(self) -> bool:
        return all(r.met is not False for r in self.rates)


def run_case(case: Case, n: int, seed: int = 0) -> CaseResult:
    """Simulate ``n`` datasets of ``case`` (dataset i from ``numpy.random.default_rng([seed, i])``)."""
    import numpy as np

    t0 = time.perf_counter()
    rejected: dict[str, list[bool]] = {}
    covered: dict[str, list[bool]] = {}
    extra: dict[str, list[float]] = {}
    for i in range(n):
        out = case.run(np.random.default_rng([seed, i]))
        for k, v in out.rejected.items():
            rejected.setdefault(k, []).append(bool(v))
        for k, v in out.covered.items():
            covered.setdefault(k, []).append(bool(v))
        for k, v in out.extra.items():
            extra.setdefault(k, []).append(float(v))
    rates = []
    for k, v in rejected.items():
        if k in case.null:
            rates.append(Rate(k, "false positives", sum(v), len(v), FPR_GOAL))
        else:
            rates.append(Rate(k, "power", sum(v), len(v), case.power_goal.get(k)))
    for k, v in covered.items():
        rates.append(Rate(k, "coverage", sum(v), len(v), COVERAGE_GOAL))
    means = {k: float(np.nanmean(v)) for k, v in extra.items()}
    return CaseResult(case.analysis, case.name, case.truth, n, time.perf_counter() - t0, rates, means)
