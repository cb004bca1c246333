"""The statistics of a comparison: a paired difference with its confidence interval over runs, and
Holm's correction of several p-values.

A unit of replication is one trained model: a (fold, seed) pair. Two strategies are compared on the
same units, so their difference is paired; its interval is Student's t over the units. This is the
uncertainty a reader needs (how much would the gain move with another split or seed), not the
per-case spread, which mostly measures how hard the cases are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student's t interval of the mean; one value gives an unbounded interval."""
    from scipy.stats import t

    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("-inf"), float("inf")
    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (family-wise error), same keys."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m = len(order)
    out: dict[str, float] = {}
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value; 1 when the pairs do not differ."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or not np.any(a != b):
        return 1.0
    return float(wilcoxon(a, b).pvalue)
