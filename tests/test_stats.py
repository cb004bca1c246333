"""The statistics of a comparison, against values worked by hand (scipy only for the t quantiles)."""

import numpy as np
import pytest

from diffboost.evaluation.stats import corrected_interval, fold_interval, holdout_ratio, holm, run_interval
from diffboost.segmentation.compare import holm_family, paired, run_stats, summarise

T2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom


def test_corrected_interval_of_a_fixed_vector():
    # fold means 1, 2, 6: mean 3, variance 7; x (1/3 + 0.5) = 35/6
    iv = corrected_interval({(0, 0): 1.0, (1, 0): 2.0, (2, 0): 6.0}, 0.5)
    half = T2 * np.sqrt(35 / 6)
    assert iv.mean == pytest.approx(3.0)
    assert (iv.low, iv.high) == pytest.approx((3 - half, 3 + half))
    assert iv.df == 2
    # with 2 degrees of freedom the t survival function is 1/2 (1 - t / sqrt(t^2 + 2))
    t = 3 / np.sqrt(35 / 6)
    assert iv.p == pytest.approx(1 - t / np.sqrt(t * t + 2))
    # no overlap term: the plain t-interval over the three values
    assert corrected_interval({(0, 0): 1.0, (1, 0): 2.0, (2, 0): 6.0}, 0.0).half_width == pytest.approx(T2 * np.sqrt(7 / 3))


def test_fold_averaged_interval_and_seeds_within_a_fold():
    diffs = {(0, 0): 0.0, (0, 1): 2.0, (1, 0): 1.0, (1, 1): 3.0, (2, 0): 5.0, (2, 1): 7.0}  # fold means 1, 2, 6
    f = fold_interval(diffs)
    assert f.mean == pytest.approx(3.0) and (f.low, f.high) == pytest.approx((3 - T2 * np.sqrt(7 / 3), 3 + T2 * np.sqrt(7 / 3)))
    c = corrected_interval(diffs, 0.5)
    assert (c.low, c.high) == pytest.approx((3 - T2 * np.sqrt(35 / 6), 3 + T2 * np.sqrt(35 / 6)))
    assert c.half_width > f.half_width  # the overlap correction widens


def test_duplicating_every_run_under_a_second_seed_does_not_narrow_the_interval():
    once = {(0, 0): 1.2, (1, 0): -0.4, (2, 0): 2.9}
    twice = {**once, **{(k, 1): d for (k, _), d in once.items()}}
    a, b = corrected_interval(once, 0.5), corrected_interval(twice, 0.5)
    assert (b.low, b.high, b.p) == pytest.approx((a.low, a.high, a.p))
    # the naive interval over runs treats the copies as new information: that is what it gets wrong
    assert run_interval(list(twice.values())).half_width < run_interval(list(once.values())).half_width


def test_one_fold_says_nothing_about_another_split():
    iv = corrected_interval({(0, 0): 1.0, (0, 1): 3.0}, 0.5)
    assert iv.mean == 2.0 and iv.low == -np.inf and iv.high == np.inf
    with pytest.raises(ValueError, match="test_train_ratio"):
        corrected_interval({(0, 0): 1.0, (1, 0): 2.0}, float("nan"))


def test_holm_on_fixed_p_values():
    # sorted: a 0.01 x 3 = 0.03; c 0.03 x 2 = 0.06; b 0.04 x 1 = 0.04 -> kept monotone at 0.06
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.5, "b": 0.9}) == pytest.approx({"a": 1.0, "b": 1.0})


def test_holdout_ratio_counts_the_validation_part_as_training():
    assert holdout_ratio([{"train": 3, "val": 1, "test": 2}, {"train": 2, "val": 2, "test": 4}]) == pytest.approx((0.5 + 1.0) / 2)


def _rows(strategy, dice_by_run, cases=4):
    return [{"strategy": strategy, "fold": str(k), "seed": s, "case_id": f"c{k}_{i}", "dice": str(d),
             "precision": str(d), "recall": str(d), "hd95": "1", "assd": "1", "reference_empty": "0",
             "prediction_empty": "0"} for (k, s), d in dice_by_run.items() for i in range(cases)]


def test_table_statistics_are_the_corrected_test_with_holm_over_every_comparison():
    none = {(0, 0): 0.50, (1, 0): 0.60, (2, 0): 0.55, (0, 1): 0.52, (1, 1): 0.58, (2, 1): 0.57}
    aug = {k: v + d for (k, v), d in zip(none.items(), (0.01, 0.03, 0.05, 0.02, 0.01, 0.04))}
    rows = _rows("none", none) + _rows("diffboost", aug) + _rows("mix-classic", none)
    table = summarise(rows, ["none", "diffboost", "mix-classic"], test_train_ratio=0.5)
    vs = table["diffboost"]["vs_none"]
    expected = corrected_interval({k: 100 * (aug[k] - none[k]) for k in none}, 0.5)
    assert vs["dice_diff"] == pytest.approx(expected.mean) and vs["ci95"] == pytest.approx([expected.low, expected.high])
    assert vs["ci95_folds"] == pytest.approx([fold_interval({k: 100 * (aug[k] - none[k]) for k in none}).low,
                                              fold_interval({k: 100 * (aug[k] - none[k]) for k in none}).high])
    assert vs["p"] == pytest.approx(expected.p) and "wilcoxon_cases_p" in vs["descriptive"]
    # the ratio from the rows themselves: 4 test cases of 12 per fold -> 4 / 8
    assert paired(_rows("diffboost", aug), _rows("none", none))["ci95"] == pytest.approx(vs["ci95"])
    assert run_stats(aug, none, 0.5)["ci95"] == pytest.approx(vs["ci95"])
    pairs = {"diffboost vs mix-classic": paired(_rows("diffboost", aug), _rows("mix-classic", none), 0.5)}
    holm_family(table, pairs)
    family = {"diffboost vs none": vs["p"], "mix-classic vs none": table["mix-classic"]["vs_none"]["p"],
              "diffboost vs mix-classic": pairs["diffboost vs mix-classic"]["p"]}
    adjusted = holm(family)
    assert vs["p_holm"] == pytest.approx(adjusted["diffboost vs none"])
    assert pairs["diffboost vs mix-classic"]["p_holm"] == pytest.approx(adjusted["diffboost vs mix-classic"])
    assert vs["p_holm"] >= vs["p"]
