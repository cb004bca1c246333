"""Case-wise cross-validation: k test folds, and a validation part inside each training fold.

Splits are always by case (a 3D volume's slices never straddle two parts), stratified by the
case's category where there is one, and deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    """One fold: cases to train on, to choose the checkpoint with, and to test on."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Fold":
        return cls(int(d["index"]), tuple(d["train"]), tuple(d["val"]), tuple(d["test"]))


def _stratified_order(case_ids: list[str], strata: list[str], rng: np.random.Generator) -> list[str]:
    """Cases shuffled within each stratum, then interleaved so any prefix is balanced."""
    groups: dict[str, list[str]] = {}
    for c, s in zip(case_ids, strata):
        groups.setdefault(s, []).append(c)
    keyed = []
    for s in sorted(groups):
        members = sorted(groups[s])
        rng.shuffle(members)
        n = len(members)
        # position i/n spreads each stratum evenly over the interleaved order
        keyed += [((i + rng.random()) / n, s, c) for i, c in enumerate(members)]
    return [c for _, _, c in sorted(keyed)]


def split_by_case(
    case_ids: list[str],
    k: int = 3,
    val_fraction: float = 0.2,
    seed: int = 0,
    strata: list[str] | None = None,
) -> list[Fold]:
    """Split unique case ids into ``k`` folds; each fold's training part gives up ``val_fraction``
    of its cases (at least one when it has two or more) to a validation part.
    """
    unique = sorted(set(case_ids))
    if len(unique) != len(case_ids):
        raise ValueError("split_by_case expects unique case ids (one per case, not per slice)")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if len(unique) < k:
        raise ValueError(f"cannot make {k} folds from {len(unique)} cases")
    if strata is None:
        strata = ["" for _ in case_ids]
    stratum = dict(zip(case_ids, strata))
    rng = np.random.default_rng(seed)
    # deal each stratum's shuffled cases round-robin, continuing where the last stratum stopped,
    # so every fold gets its share of every class (to within one case) and sizes stay balanced
    test_parts: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for s in sorted(set(strata)):
        members = sorted(c for c in unique if stratum[c] == s)
        rng.shuffle(members)
        for c in members:
            test_parts[dealt % k].append(c)
            dealt += 1
    test_parts = [sorted(p) for p in test_parts]
    folds = []
    for i in range(k):
        pool = [c for j in range(k) if j != i for c in test_parts[j]]
        n_val = int(round(val_fraction * len(pool)))
        if val_fraction > 0 and len(pool) >= 2:
            n_val = min(max(n_val, 1), len(pool) - 1)
        frng = np.random.default_rng([seed, i])
        pool_order = _stratified_order(sorted(pool), [stratum[c] for c in sorted(pool)], frng)
        val = sorted(pool_order[:n_val])
        train = sorted(set(pool) - set(val))
        folds.append(Fold(i, tuple(train), tuple(val), tuple(test_parts[i])))
    return folds
