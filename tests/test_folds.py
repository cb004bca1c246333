from __future__ import annotations

import pytest

from diffboost.data.folds import split_by_case


def _check(folds, ids):
    tests = [set(f.test) for f in folds]
    assert set().union(*tests) == set(ids) and sum(map(len, tests)) == len(ids)  # a partition
    for f in folds:
        assert set(f.train) | set(f.val) | set(f.test) == set(ids)
        assert not set(f.train) & set(f.val)
        assert not (set(f.train) | set(f.val)) & set(f.test)


def test_split_partitions_and_validation_inside_training():
    ids = [f"c{i:02d}" for i in range(30)]
    folds = split_by_case(ids, k=3, val_fraction=0.2, seed=0)
    _check(folds, ids)
    assert [len(f.test) for f in folds] == [10, 10, 10]
    assert all(len(f.val) == 4 for f in folds)


def test_split_is_deterministic_and_seed_dependent():
    ids = [f"c{i}" for i in range(20)]
    assert split_by_case(ids, seed=1) == split_by_case(list(reversed(ids)), seed=1)
    assert split_by_case(ids, seed=1) != split_by_case(ids, seed=2)


def test_split_is_stratified():
    ids = [f"b{i}" for i in range(30)] + [f"m{i}" for i in range(15)] + [f"n{i}" for i in range(9)]
    strata = ["b"] * 30 + ["m"] * 15 + ["n"] * 9
    folds = split_by_case(ids, k=3, seed=0, strata=strata)
    _check(folds, ids)
    for f in folds:
        counts = {s: sum(c.startswith(s) for c in f.test) for s in "bmn"}
        assert counts == {"b": 10, "m": 5, "n": 3}
        assert any(c.startswith("n") for c in f.val)


def test_split_errors():
    with pytest.raises(ValueError, match="unique"):
        split_by_case(["a", "a", "b"])
    with pytest.raises(ValueError, match="cannot make 3 folds"):
        split_by_case(["a", "b"])
