"""Learning curves: every strategy at every label budget on the same test folds and seeds, runs of one
length whatever the number of labels, and the labels-saved estimate."""

from __future__ import annotations

import json

import pytest
import torch

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.segmentation import SegConfig
from diffboost.segmentation.curves import _crossing, labels_saved, learning_curve
from diffboost.segmentation.trainer import epoch_batches


def test_steps_per_epoch_fixes_the_epoch_whatever_the_number_of_images():
    cfg = SegConfig(batch_size=4, steps_per_epoch=5)
    for n in (3, 7, 50):
        batches = epoch_batches(n, cfg, torch.Generator().manual_seed(0))
        assert len(batches) == 5 and all(len(b) == 4 for b in batches) and all(int(b.max()) < n for b in batches)
    plain = epoch_batches(10, SegConfig(batch_size=4), torch.Generator().manual_seed(0))
    assert [len(b) for b in plain] == [4, 4, 2]  # one pass, as before


def test_labels_saved_interpolates_the_crossing_and_its_interval():
    assert _crossing([10, 20, 40], [-4.0, -2.0, 2.0]) == pytest.approx(30.0)
    assert _crossing([10, 20], [-1.0, -0.5]) is None
    assert _crossing([10, 20, 30, 40], [-1.0, 0.5, -0.5, 0.5]) == pytest.approx(35.0)  # it must stay reached
    assert _crossing([10, 20], [float("-inf"), 1.0]) == 20 and _crossing([10, 20], [float("nan"), 1.0]) == 20
    diffs = [(10, {"dice_diff": -4.0, "ci95": [-6.0, -2.0]}), (20, {"dice_diff": -2.0, "ci95": [-4.0, 0.0]}),
             (40, {"dice_diff": 2.0, "ci95": [-1.0, 5.0]})]
    saved = labels_saved(diffs, 40)
    assert saved["images"] == pytest.approx(30.0) and saved["share"] == pytest.approx(0.75)
    assert saved["interval"][0] == pytest.approx(20.0) and saved["interval"][1] is None  # lower bound never reaches 0


def test_compare_over_budgets_on_phantoms(tmp_path, phantom_root):
    from diffboost.data.phantoms import generate_phantoms

    src = generate_phantoms(tmp_path / "busi", n=24, seed=4)
    ps = prepare(src, tmp_path / "prepared", PrepareConfig(size=32), progress=False)
    cfg = SegConfig(channels=(8, 16, 32), size=32, epochs=1, batch_size=4, steps_per_epoch=2, min_val_cases=1)
    curve = learning_curve(ps, ["0.5", "1"], ["none", "classic"], cfg, tmp_path, seeds=[0], progress=False)
    assert curve["budgets"] == ["0.5", "1"] and curve["labelled_images"]["0.5"] < curve["labelled_images"]["1"]
    for n in ("0.5", "1"):
        for s in ("none", "classic"):
            d = curve["dice"][s][n]
            assert 0 <= d["mean"] <= 1 and d["low"] <= d["mean"] <= d["high"]
        assert set(curve["gains"][n]) == {"classic vs none"}
    assert set(curve["labels_saved"]) == {"none", "classic"}
    half = tmp_path / "budgets" / "0.5"
    for k in range(3):  # the same test folds and seeds at both budgets; at 0.5 each run saw fewer labels
        a = json.loads((half / "seg" / "none" / "seed0" / f"fold{k}" / "summary.json").read_text())
        b = json.loads((tmp_path / "seg" / "none" / "seed0" / f"fold{k}" / "summary.json").read_text())
        assert a["cases"] == b["cases"] and a["steps_per_epoch"] == b["steps_per_epoch"] == 2
        assert a["labelled_training_cases"] < b["labelled_training_cases"]
    md = (tmp_path / "compare" / "learning_curve.md").read_text()
    assert "Labels saved" in md and "classic vs none" in md
