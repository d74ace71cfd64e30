"""The statistics `zoo compare` states its verdicts with: sample mean and standard deviation, the 95% confidence
interval of a mean (Student's t), and Welch's two-sided t-test of two means with unequal variances. Plain
Python (the t distribution through the regularised incomplete beta function), so no SciPy is needed."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

ALPHA = 0.05  # the significance level of `welch`'s verdict, and 1 - the confidence of `ci95`


@dataclass(frozen=True)
class Sample:
    """n values summarised: mean, sample standard deviation (None for n = 1), standard error of the mean and
    the half-width of its 95% confidence interval (both None for n = 1)."""

    n: int
    mean: float
    std: float | None
    sem: float | None
    ci95: float | None

    @staticmethod
    def of(values: list[float]) -> Sample | None:
        if not values:
            return None
        n, mean = len(values), statistics.fmean(values)
        if n == 1:
            return Sample(1, mean, None, None, None)
        std = statistics.stdev(values)
        sem = std / math.sqrt(n)
        return Sample(n, mean, std, sem, t_quantile(1 - ALPHA / 2, n - 1) * sem)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p (bisection; p in (0.5, 1))."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Welch:
    """Welch's two-sided t-test of mean(b) - mean(a): the difference, its standard error and 95% interval
    half-width, t, the Welch-Satterthwaite degrees of freedom and the p-value; `significant` is p < ALPHA."""

    delta: float
    se: float
    ci95: float
    t: float
    df: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def welch(a: Sample, b: Sample) -> Welch | None:
    """The test of b against a; None when either has fewer than two values (no estimate of its noise)."""
    if a.n < 2 or b.n < 2:
        return None
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    delta, se = b.mean - a.mean, math.sqrt(va + vb)
    if se == 0.0:  # both without spread: any difference is beyond their (zero) noise
        return Welch(delta, 0.0, 0.0, math.inf if delta else 0.0, math.inf, 0.0 if delta else 1.0)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    t = delta / se
    p = min(1.0, 2.0 * (1.0 - t_cdf(abs(t), df)))
    return Welch(delta, se, t_quantile(1 - ALPHA / 2, df) * se, t, df, p)
