"""Small interval helpers shared by the judge, length-control and papers' analyses.

Each returns an estimate with a 95% interval (and, where there is a natural null, a p-value
computed from the same statistic, so the interval and the test agree)."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["Z95", "wilson", "mean_interval", "cluster_share", "t_interval", "percentile_interval"]

Z95 = 1.959963984540054


def wilson(share: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a share observed on ``n`` independent trials."""
    if n <= 0 or math.isnan(share):
        return math.nan, math.nan
    d = 1 + z * z / n
    c = (share + z * z / (2 * n)) / d
    h = z * math.sqrt(max(share * (1 - share), 0.0) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def t_interval(x: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean of independent values, its t interval and the two-sided t-test p-value of mean = 0
    (NaN interval for fewer than two values or no spread)."""
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or sd == 0:
        return m, math.nan, math.nan, math.nan
    se = sd / math.sqrt(n)
    q = float(stats.t.ppf(0.975, n - 1))
    return m, m - q * se, m + q * se, float(2 * stats.t.sf(abs(m) / se, n - 1))


def mean_interval(x: Sequence[float]) -> tuple[float, float, float]:
    """Mean of independent values in [0, 1] with a t interval clipped to [0, 1]; Wilson's
    interval when every value is equal (a t interval would collapse to a point there)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m, lo, hi, _ = t_interval(x)
    if math.isnan(lo):
        lo, hi = wilson(m, len(x))
        return m, lo, hi
    return m, max(0.0, lo), min(1.0, hi)


def cluster_share(num: Sequence[float], den: Sequence[float], null: float = 0.5) -> tuple[float, float, float, float]:
    """A share over clusters, ``sum(num) / sum(den)`` (one entry per cluster: successes and
    trials), with a cluster-robust normal interval and the two-sided p-value of share = ``null``
    from the same z. When every cluster has the same share (no spread to estimate a variance
    from), Wilson's interval on the pooled trials and the score test it inverts."""
    import numpy as np
    from scipy import stats

    num, den = np.asarray(num, float), np.asarray(den, float)
    keep = den > 0
    num, den = num[keep], den[keep]
    g = len(num)
    if g == 0:
        return math.nan, math.nan, math.nan, math.nan
    total = den.sum()
    p = float(num.sum() / total)
    se = math.sqrt(((num - p * den) ** 2).sum() * g / (g - 1)) / total if g > 1 else 0.0
    if se == 0:
        lo, hi = wilson(p, total)
        return p, lo, hi, float(2 * stats.norm.sf(abs(p - null) / math.sqrt(null * (1 - null) / total)))
    return p, p - Z95 * se, p + Z95 * se, float(2 * stats.norm.sf(abs(p - null) / se))


def percentile_interval(draws: Sequence[float]) -> tuple[float, float, float]:
    """95% percentile interval of bootstrap draws and the p-value of 0 read from the same draws,
    ``2 * min(P*(draw <= 0), P*(draw >= 0))``, built so that the interval excludes 0 exactly
    when p < 0.05 (the bounds are order statistics, not interpolated quantiles, which could
    disagree with the count at ties). NaN draws are dropped."""
    import numpy as np

    x = np.sort(np.asarray(draws, dtype=float))
    x = x[~np.isnan(x)]
    m = len(x)
    if m == 0:
        return math.nan, math.nan, math.nan
    k = max(math.ceil(0.025 * m) - 1, 0)
    p = min(1.0, 2 * min(int((x <= 0).sum()), int((x >= 0).sum())) / m)
    return float(x[k]), float(x[m - 1 - k]), float(p)
