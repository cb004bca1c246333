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


def test_groups_stay_in_one_part_and_folds_stay_balanced():
    ids = [f"b{i:02d}" for i in range(30)] + [f"m{i:02d}" for i in range(15)]
    strata = ["b"] * 30 + ["m"] * 15
    groups = [["b00", "b01", "b02"], ["b03", "m00"], ["m01", "m02"], ["b10", "b11", "b12", "b13"]]
    for seed in range(5):
        folds = split_by_case(ids, k=3, seed=seed, strata=strata, groups=groups)
        _check(folds, ids)
        for f in folds:
            for g in groups:
                parts = [name for name, part in (("train", f.train), ("val", f.val), ("test", f.test))
                         if set(g) & set(part)]
                assert len(parts) == 1, (seed, f.index, g, parts)
        sizes = [len(f.test) for f in folds]
        assert max(sizes) - min(sizes) <= 2, sizes
    # without groups the split is the one it always was
    assert split_by_case(ids, k=3, seed=0, strata=strata, groups=[]) == split_by_case(ids, k=3, seed=0, strata=strata)


def test_groups_naming_unknown_or_repeated_cases_are_refused():
    ids = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="unknown case"):
        split_by_case(ids, k=2, groups=[["a", "zz"]])
    with pytest.raises(ValueError, match="two near-duplicate groups"):
        split_by_case(ids, k=2, groups=[["a", "b"], ["b", "c"]])
    with pytest.raises(ValueError, match="separable groups"):
        split_by_case(ids, k=3, groups=[["a", "b", "c"]])
