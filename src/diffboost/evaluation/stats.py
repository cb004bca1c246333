"""The statistics of a comparison under cross-validation: a paired difference with an interval that
counts what really varies, and Holm's correction of a table's p-values.

A unit of replication is one trained model, a (fold, seed) pair, and two strategies compared on the
same units give paired differences ``d[fold, seed]``. These are not independent replicates:

- the seeds of one fold share its test cases and its training data (they differ only in training
  randomness);
- the folds share training data with each other (each pair of training parts overlaps).

:func:`corrected_interval` is the corrected resampled t-test of Nadeau & Bengio (2003), as used for
repeated k-fold cross-validation by Bouckaert & Frank (2004), where a repetition is one partition of
the cases into folds. Seeds that reuse the same folds are not repetitions in that sense: they are
averaged within each fold first (their differences share the fold's test cases and training data),
and the k fold means give

    var(mean) = var(fold means) * (1/k + n_test/n_train),   t with k - 1 degrees of freedom,

the second term being Nadeau & Bengio's correction for the training data the folds share. A second
seed that repeats the first leaves the interval as it is (it adds no information), where the formula
taken over all k*r runs as if each were its own partition would narrow it; a second seed that does
differ narrows it through the fold means only.

:func:`fold_interval` is the plain t-interval over the k fold means (seeds averaged within a fold),
shown beside it (the same fold means, uncorrected); :func:`run_interval` the naive t-interval over all
runs, kept for comparison only.
The per-case Wilcoxon test (:func:`wilcoxon_p`) ignores training variance entirely: descriptive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval, the t-test p-value of "mean = 0" and its degrees of freedom."""

    mean: float
    low: float
    high: float
    p: float
    df: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict:
        return asdict(self)


def _t_interval(mean: float, var_of_mean: float, df: float, level: float) -> Interval:
    from scipy.stats import t

    if not np.isfinite(mean):
        return Interval(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"))
    if not np.isfinite(df) or df <= 0 or not np.isfinite(var_of_mean):
        return Interval(mean, float("-inf"), float("inf"), 1.0, float(df) if np.isfinite(df) else 0.0)
    se = float(np.sqrt(max(var_of_mean, 0.0)))
    if se == 0.0:
        return Interval(mean, mean, mean, 1.0 if mean == 0 else 0.0, float(df))
    half = float(t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * t.sf(abs(mean) / se, df))
    return Interval(mean, mean - half, mean + half, p, float(df))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student's t interval of the mean; one value gives an unbounded interval."""
    iv = run_interval(values, level)
    return iv.mean, iv.low, iv.high


def run_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student's t over independent values (for runs of a cross-validation: too narrow, see the module)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return _t_interval(float("nan"), float("nan"), 0, level)
    if len(v) < 2:
        return _t_interval(float(v.mean()), float("inf"), 0, level)
    return _t_interval(float(v.mean()), float(v.var(ddof=1)) / len(v), len(v) - 1, level)


def _by_fold(diffs: Mapping[tuple[int, int], float]) -> dict[int, list[float]]:
    groups: dict[int, list[float]] = {}
    for (fold, _seed), d in sorted(diffs.items()):
        groups.setdefault(int(fold), []).append(float(d))
    return groups


def fold_interval(diffs: Mapping[tuple[int, int], float], level: float = 0.95) -> Interval:
    """t-interval over the fold means (each fold's seeds averaged first), ``k - 1`` degrees of freedom."""
    return run_interval([np.mean(v) for v in _by_fold(diffs).values()], level)


def corrected_interval(diffs: Mapping[tuple[int, int], float], test_train_ratio: float,
                       level: float = 0.95) -> Interval:
    """The corrected repeated k-fold t-test of the paired differences ``{(fold, seed): d}`` (see the
    module): the seeds of a fold averaged, then the variance of the k fold means inflated by
    ``1 + k * test_train_ratio`` (var x (1/k + n_test/n_train)), t with k - 1 degrees of freedom.
    ``test_train_ratio`` is n_test / n_train of the folds (their mean; n_train counts the cases a
    fold's model learnt from, its validation part included)."""
    if not np.isfinite(test_train_ratio) or test_train_ratio < 0:
        raise ValueError(f"test_train_ratio must be a finite number >= 0, got {test_train_ratio}")
    means = np.array([np.mean(v) for v in _by_fold(diffs).values()])
    k = len(means)
    if k == 0:
        return _t_interval(float("nan"), float("nan"), 0, level)
    if k < 2:  # one fold: nothing says how the difference moves with another split
        return _t_interval(float(means.mean()), float("inf"), 0, level)
    return _t_interval(float(means.mean()), float(means.var(ddof=1)) * (1.0 / k + test_train_ratio), k - 1, level)


def holdout_ratio(folds) -> float:
    """n_test / n_train of a cross-validation, the mean over its folds (objects with ``train``, ``val``
    and ``test`` case lists, or dicts of such lists or of their sizes); n_train = train + val cases, and
    under a label budget the cases whose labels it hides (``hidden``): the correction is for how much the
    folds' training parts overlap, which the partition sets, not how many labels each keeps."""
    def size(f, part):
        v = f.get(part, ()) if isinstance(f, Mapping) else getattr(f, part, ())
        return v if isinstance(v, (int, np.integer)) else len(v)

    ratios = [size(f, "test") / (size(f, "train") + size(f, "val") + size(f, "hidden")) for f in folds]
    if not ratios:
        raise ValueError("no folds to take n_test / n_train from")
    return float(np.mean(ratios))


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
    """Two-sided paired Wilcoxon signed-rank p-value over cases; 1 when the pairs do not differ.
    Descriptive only: it treats the test cases as the replicates and ignores training variance."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or not np.any(a != b):
        return 1.0
    return float(wilcoxon(a, b).pvalue)
