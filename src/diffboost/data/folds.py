"""Case-wise cross-validation: k test folds, and a validation part inside each training fold.

Splits are always by case (a 3D volume's slices never straddle two parts), stratified by the
case's category where there is one, and deterministic for a seed. Cases given as a group (the
near-duplicates of :mod:`diffboost.data.duplicates`) always land in the same part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    """One fold: labelled cases to train on, to choose the checkpoint with, and to test on; training
    images without a label in this fold (``unlabelled``: images that never had one, and ``hidden``, the
    cases of the training + validation part whose labels a label budget keeps out of this fold); and the
    partition it belongs to (repeated k-fold: ``index`` counts over all partitions). ``unlabelled`` holds
    every training case without a label in this fold, the hidden ones included."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    unlabelled: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    partition: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Fold":
        return cls(int(d["index"]), tuple(d["train"]), tuple(d["val"]), tuple(d["test"]),
                   tuple(d.get("unlabelled", ())), tuple(d.get("hidden", ())), int(d.get("partition", 0)))

    @property
    def labelled(self) -> tuple[str, ...]:
        """Every case whose label this fold may read: training, validation and test."""
        return self.train + self.val + self.test


def _stratified_order(units: list[str], strata: list[str], rng: np.random.Generator) -> list[str]:
    """Units shuffled within each stratum, then interleaved so any prefix is balanced."""
    groups: dict[str, list[str]] = {}
    for c, s in zip(units, strata):
        groups.setdefault(s, []).append(c)
    keyed = []
    for s in sorted(groups):
        members = sorted(groups[s])
        rng.shuffle(members)
        n = len(members)
        # position i/n spreads each stratum evenly over the interleaved order
        keyed += [((i + rng.random()) / n, s, c) for i, c in enumerate(members)]
    return [c for _, _, c in sorted(keyed)]


def _units(unique: list[str], groups: list[list[str]] | None) -> dict[str, list[str]]:
    """Unit name -> its cases: each group is one unit (named by its first case), every other case its own."""
    units: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    known = set(unique)
    for g in groups or []:
        members = sorted(set(g))
        missing = [c for c in members if c not in known]
        if missing:
            raise ValueError(f"near-duplicate group names unknown case(s): {', '.join(missing)}")
        taken = [c for c in members if c in owner]
        if taken:
            raise ValueError(f"case(s) {', '.join(taken)} appear in two near-duplicate groups")
        if len(members) > 1:
            units[members[0]] = members
            owner.update({c: members[0] for c in members})
    for c in unique:
        if c not in owner:
            units[c] = [c]
    return units


def split_by_case(
    case_ids: list[str],
    k: int = 3,
    val_fraction: float = 0.2,
    seed: int = 0,
    strata: list[str] | None = None,
    groups: list[list[str]] | None = None,
) -> list[Fold]:
    """Split unique case ids into ``k`` folds; each fold's training part gives up ``val_fraction``
    of its cases (at least one when it has two or more) to a validation part. The cases of each of
    ``groups`` stay together (test, validation and training parts alike); a group is stratified by
    the category most of its cases have.
    """
    unique = sorted(set(case_ids))
    if len(unique) != len(case_ids):
        raise ValueError("split_by_case expects unique case ids (one per case, not per slice)")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if strata is None:
        strata = ["" for _ in case_ids]
    stratum = dict(zip(case_ids, strata))
    units = _units(unique, groups)
    if len(units) < k:
        raise ValueError(f"cannot make {k} folds from {len(unique)} cases in {len(units)} separable groups")

    def unit_stratum(u: str) -> str:
        cats = [stratum[c] for c in units[u]]
        return max(sorted(set(cats)), key=cats.count)

    ustratum = {u: unit_stratum(u) for u in units}
    rng = np.random.default_rng(seed)
    test_parts: list[list[str]] = [[] for _ in range(k)]
    if all(len(m) == 1 for m in units.values()):
        # deal each stratum's shuffled cases round-robin, continuing where the last stratum stopped, so
        # every fold gets its share of every class (to within one case) and sizes stay balanced
        dealt = 0
        for s in sorted(set(ustratum.values())):
            members = sorted(u for u in units if ustratum[u] == s)
            rng.shuffle(members)
            for u in members:
                test_parts[dealt % k] += units[u]
                dealt += 1
    else:
        # with groups: each unit, the largest first, goes to the fold where its cases' categories are
        # rarest so far, then to the smallest fold (ties: the next fold in turn)
        order = sorted(units)
        rng.shuffle(order)
        order.sort(key=lambda u: -len(units[u]))
        counts = [dict.fromkeys(set(strata), 0) for _ in range(k)]
        for i, u in enumerate(order):
            cats = [stratum[c] for c in units[u]]
            j = min(range(k), key=lambda j: (sum(counts[j][c] for c in cats), len(test_parts[j]), (j - i) % k))
            test_parts[j] += units[u]
            for c in cats:
                counts[j][c] += 1
    test_parts = [sorted(p) for p in test_parts]
    folds = []
    for i in range(k):
        test = set(test_parts[i])
        pool_units = sorted(u for u in units if units[u][0] not in test)
        pool = sorted(c for u in pool_units for c in units[u])
        n_val = int(round(val_fraction * len(pool)))
        if val_fraction > 0 and len(pool) >= 2:
            n_val = min(max(n_val, 1), len(pool) - 1)
        val = validation_part({u: units[u] for u in pool_units}, ustratum, n_val, np.random.default_rng([seed, i]))
        train = sorted(set(pool) - set(val))
        folds.append(Fold(i, tuple(train), tuple(val), tuple(test_parts[i])))
    return folds


def validation_part(units: dict[str, list[str]], strata: dict[str, str], n_val: int,
                    rng: np.random.Generator) -> list[str]:
    """The cases of a validation part of about ``n_val`` cases taken from ``units`` (name -> cases kept
    together) in a stratified, seeded order, whole units only, leaving at least one case to train on."""
    total = sum(len(m) for m in units.values())
    names = sorted(units)
    val: list[str] = []
    for u in _stratified_order(names, [strata[u] for u in names], rng):
        if len(val) >= n_val:
            break
        if total - len(val) - len(units[u]) >= 1:  # the training part keeps at least one case
            val += units[u]
    return sorted(val)


def partition_seed(seed: int, partition: int) -> int:
    """The seed of partition ``partition`` of a repeated k-fold (partition 0: the single k-fold's own)."""
    return seed if partition == 0 else seed + 7919 * partition


def budget_order(fold: Fold, strata: dict[str, str], groups: list[list[str]] | None, seed: int) -> list[list[str]]:
    """The units (cases kept together) of a fold's training + validation part in the order a label budget
    takes them: stratified by category and seeded by the fold, independent of the budget, so a smaller
    budget's labelled cases are always inside a larger one's."""
    pool = sorted(fold.train + fold.val)
    units = _units(pool, [[c for c in g if c in set(pool)] for g in groups or []])
    names = sorted(units)
    cats = {u: max(sorted({strata.get(c, "") for c in units[u]}), key=[strata.get(c, "") for c in units[u]].count)
            for u in names}
    order = _stratified_order(names, [cats[u] for u in names], np.random.default_rng([seed, fold.index, 7919]))
    return [units[u] for u in order]


def parse_budget(budget: str | float | int | None) -> tuple[str, float] | None:
    """``None`` (every label), a fraction in (0, 1] (``0.1``, ``"25%"``) or a number of images (``"30"``):
    ``("fraction", f)`` or ``("images", n)``; None for all labels. A ValueError for anything else."""
    if budget is None:
        return None
    text = str(budget).strip()
    try:
        if text.endswith("%"):
            value, kind = float(text[:-1]) / 100, "fraction"
        elif (isinstance(budget, int) or text.isdigit()) and int(text) != 1:  # 1 is every label, as 1.0
            value, kind = float(int(text)), "images"
        else:
            value, kind = float(text), "fraction"
    except ValueError:
        raise ValueError(f"budget {budget!r}: expected a fraction in (0, 1] such as 0.1 or 25%, or a number of "
                         "labelled images such as 30") from None
    if kind == "fraction" and not 0 < value <= 1:
        raise ValueError(f"budget {budget!r}: a fraction must be in (0, 1]")
    if kind == "images" and value < 2:
        raise ValueError(f"budget {budget!r}: at least 2 labelled images (one to train on, one to validate with)")
    return (kind, value)


def apply_budget(folds: list[Fold], budget: tuple[str, float] | None, val_fraction: float,
                 strata: dict[str, str], groups: list[list[str]] | None, seed: int) -> list[Fold]:
    """Each fold with the labels of a budget's share of its training + validation part (the rest moved to
    ``hidden`` and ``unlabelled``), split again into training and validation (the validation part shrinks
    with the budget: its labels count). Test parts are unchanged. ``None`` or a fraction of 1 keeps every fold."""
    if budget is None or budget == ("fraction", 1.0):
        return folds
    kind, value = budget
    out = []
    for f in folds:
        order = budget_order(f, strata, groups, seed)
        pool = sum(len(u) for u in order)
        want = int(value) if kind == "images" else max(2, int(round(value * pool)))
        if want > pool:
            raise ValueError(f"budget {value:g} images: fold {f.index} has only {pool} labelled training + "
                             "validation images")
        kept: list[list[str]] = []
        for u in order:
            if sum(map(len, kept)) >= want:
                break
            kept.append(u)
        labelled = sorted(c for u in kept for c in u)
        n_val = min(max(int(round(val_fraction * len(labelled))), 1), len(labelled) - 1) if val_fraction > 0 else 0
        val: list[str] = []
        for u in kept[::-1]:  # the last units taken validate
            if len(val) >= n_val:
                break
            if len(labelled) - len(val) - len(u) >= 1:
                val += u
        hidden = sorted(set(f.train + f.val) - set(labelled))
        out.append(Fold(f.index, tuple(sorted(set(labelled) - set(val))), tuple(sorted(val)), f.test,
                        tuple(sorted(set(f.unlabelled) | set(hidden))), tuple(hidden), f.partition))
    return out


def cross_site_folds(source: list[str], target: list[str], k: int, val_fraction: float, seed: int,
                     strata: dict[str, str], groups: list[list[str]] | None = None) -> list[Fold]:
    """The folds of the cross-site protocol. The target's cases are split into ``k`` test folds (a group
    kept together, stratified by category); every source case trains, but a seeded, stratified
    ``val_fraction`` of them, the same in every fold, chooses the checkpoint; a fold's other target cases
    are its unlabelled training images, their labels hidden (``unlabelled`` and ``hidden``). No target
    label is read outside its test fold."""
    tset, sset = set(target), set(source)
    if tset & sset:
        raise ValueError(f"a case is both source and target: {sorted(tset & sset)[:3]}")
    tgroups = [g for g in groups or [] if set(g) <= tset]
    sgroups = [g for g in groups or [] if set(g) <= sset]
    if len(tgroups) + len(sgroups) != len(groups or []):
        raise ValueError("a group of cases spans the source and the target")
    split = split_by_case(sorted(target), k, 0.0, seed, [strata[c] for c in sorted(target)], tgroups)
    units = _units(sorted(source), sgroups)
    names = sorted(units)
    cats = {u: max(sorted({strata[c] for c in units[u]}), key=[strata[c] for c in units[u]].count) for u in names}
    val = validation_part(units, cats, int(round(val_fraction * len(source))), np.random.default_rng([seed, 104729]))
    train = tuple(sorted(sset - set(val)))
    out = []
    for f in split:
        others = tuple(sorted(tset - set(f.test)))
        out.append(Fold(f.index, train, tuple(val), f.test, unlabelled=others, hidden=others))
    return out
