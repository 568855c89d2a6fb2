"""Small exact statistics for the calibration controllers (pure Python, no SciPy needed for these two)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact for the n of a lot stream)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@lru_cache(maxsize=65536)
def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper confidence bound on a binomial rate after ``k`` events in ``n``
    trials: the p at which seeing ``k`` or fewer has probability ``1 - confidence``."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection: the cdf falls as p rises
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class BernoulliCusum:
    """One-sided CUSUM for a rise of a Bernoulli rate from ``p0`` to ``p1``: the statistic grows by the
    log-likelihood ratio of each observation and signals when it crosses ``h``."""

    p0: float
    p1: float
    h: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.p0 < self.p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1, got {self.p0}, {self.p1}")

    def update(self, statistic: float, events: int, trials: int) -> tuple[float, bool]:
        """The statistic after ``events`` in ``trials`` more observations, and whether it signals (then reset)."""
        llr = events * math.log(self.p1 / self.p0) + (trials - events) * math.log((1 - self.p1) / (1 - self.p0))
        statistic = max(0.0, statistic + llr)
        if statistic > self.h:
            return 0.0, True
        return statistic, False
