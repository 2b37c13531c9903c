"""The formulas behind a lift report, on counts and sums: pure, standard library only.

Each is the textbook form, checked in the tests against scipy and statsmodels:

- `wilson`: Wilson score interval for one proportion (statsmodels `proportion_confint(method="wilson")`).
- `newcombe`: Newcombe's hybrid score interval for a difference of proportions, built from the two
  Wilson intervals (Newcombe 1998, method 10; statsmodels `confint_proportions_2indep(method="newcomb")`).
- `log_ratio`: delta-method (Katz) interval for a ratio of proportions, on the log scale
  (statsmodels `confint_proportions_2indep(compare="ratio", method="log")`).
- `pooled_z`: two-proportion z-test with the pooled proportion (statsmodels `proportions_ztest`, and
  Pearson's chi-square on the 2×2 table without continuity correction).
- `welch`: normal-approximation interval for a difference of means with unequal variances.

See docs/lift.md for why each was chosen.
"""

from __future__ import annotations

import math
from statistics import NormalDist

Bounds = tuple[float, float]


def z_for(confidence: float) -> float:
    """The two-sided critical value: 1.959963984540054 for 0.95."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def two_sided_p(z: float) -> float:
    """P(|Z| ≥ |z|) for a standard normal Z; `erfc` keeps precision far into the tail."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def wilson(successes: int, n: int, z: float) -> Bounds:
    """Wilson score interval; (0, 1) when n is 0 (its limit: nothing is known)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float) -> Bounds:
    """Interval for p1 − p2 (Newcombe's hybrid score, from the Wilson intervals of each proportion)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (low, high)


def log_ratio(x1: int, n1: int, x2: int, n2: int, z: float) -> Bounds | None:
    """Interval for p1 / p2: exp(log(p1/p2) ± z·√(1/x1 − 1/n1 + 1/x2 − 1/n2)); None if x1 or x2 is 0."""
    if x1 == 0 or x2 == 0:
        return None
    log_rr = math.log((x1 / n1) / (x2 / n2))
    se = math.sqrt(1.0 / x1 - 1.0 / n1 + 1.0 / x2 - 1.0 / n2)
    return (math.exp(log_rr - z * se), math.exp(log_rr + z * se))


def pooled_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of H0: p1 = p2 with the pooled standard error; (0, 1) if there is no variation."""
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:
        return (0.0, 1.0)
    z = (x1 / n1 - x2 / n2) / se
    return (z, two_sided_p(z))


def welch(mean1: float, var1: float, n1: int, mean2: float, var2: float, n2: int, z: float) -> Bounds:
    """mean1 − mean2 ± z·√(var1/n1 + var2/n2), the variances being sample variances (n − 1)."""
    difference = mean1 - mean2
    half = z * math.sqrt(var1 / n1 + var2 / n2)
    return (difference - half, difference + half)
