"""The data layer on the real sets in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from diffboost.config import PrepareConfig
from diffboost.data.io import read_image_2d
from diffboost.data.preparation import prepare
from diffboost.data.preprocess import resize_mask

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    src = shared_path("BUSI")
    return prepare(src, tmp_path_factory.mktemp("busi") / "prepared", PrepareConfig(size=128), progress=False)


@pytest.fixture(scope="module")
def hippocampus(tmp_path_factory):
    src = shared_path("MSD", "Task04_Hippocampus")
    cfg = PrepareConfig(size=128)
    cfg.prompt.organ = "Hippocampus"
    return prepare(src, tmp_path_factory.mktemp("hip") / "prepared", cfg, progress=False)


def test_busi_takes_every_image(busi):
    root = shared_path("BUSI", "Dataset_BUSI_with_GT")
    expected = {}
    for cls in ("benign", "malignant", "normal"):
        expected[cls] = len([p for p in (root / cls).glob("*.png") if "_mask" not in p.name])
    assert busi.meta["cases_per_category"] == expected
    assert len(busi) == busi.meta["num_cases"] == sum(expected.values())
    assert busi.meta["skipped"] == []
    assert busi.meta["prompts"] == ["US, Breast, benign", "US, Breast, malignant", "US, Breast, normal"]


def test_busi_values_masks_and_sizes(busi):
    imgs = np.asarray(busi.images, np.float32)
    assert imgs.shape == (len(busi), 128, 128)
    assert imgs.min() >= -1 and imgs.max() <= 1
    assert set(np.unique(busi.masks)) == {0, 1}
    edges = np.asarray(busi.edges)
    assert edges.max() == 255 and edges.mean() > 5
    for row in busi.manifest:
        fg = int(np.asarray(busi.masks[row["index"]]).sum())
        if row["category"] == "normal":
            assert fg == 0 and row["foreground_pixels"] == 0  # empty masks kept, not dropped
        else:
            assert row["foreground_pixels"] > 0
    # original sizes match the source files; originals hold the unioned mask at that size
    rng = np.random.default_rng(0)
    for i in rng.choice(len(busi), 25, replace=False):
        row = busi.manifest[i]
        with Image.open(row["source_image"]) as im:
            assert (row["orig_height"], row["orig_width"]) == (im.height, im.width)
        orig = busi.original_mask(row["case_id"])
        assert orig.shape == (row["orig_height"], row["orig_width"])
        union = np.zeros(orig.shape, bool)
        for m in row["source_mask"].split(";"):
            union |= read_image_2d(m) > 0
        np.testing.assert_array_equal(orig.astype(bool), union)


def test_busi_multi_lesion_masks_are_unioned(busi):
    multi = [r for r in busi.manifest if ";" in r["source_mask"]]
    assert multi, "real BUSI has images with _mask_1 files"
    r = multi[0]
    parts = [read_image_2d(m) > 0 for m in r["source_mask"].split(";")]
    assert busi.original_mask(r["case_id"]).sum() == np.logical_or.reduce(parts).sum()


def test_busi_mask_edge_alignment(busi):
    """Lesion outlines are edges: the soft edges are stronger on the mask boundary than elsewhere."""
    from diffboost.conditioning.edges import mask_boundary

    on, off = [], []
    for row in busi.manifest:
        if row["foreground_pixels"] == 0:
            continue
        s = busi.sample(row["index"])
        band = mask_boundary(s["mask"]) > 0
        on.append(s["edges"][band].mean())
        off.append(s["edges"][~band].mean())
        assert np.all(s["condition"][band] == 1.0)
    assert np.mean(on) > 1.5 * np.mean(off)


def test_busi_folds_by_case_and_stratified(busi):
    assert len(busi.folds) == 3
    for f in busi.folds:
        assert not set(f.test) & (set(f.train) | set(f.val))
        assert 0.15 < len(f.val) / (len(f.train) + len(f.val)) < 0.25
        cats = [busi.manifest[i]["category"] for i in busi.indices(f.test)]
        assert abs(cats.count("normal") - 106 / 3) <= 1


def test_hippocampus_every_case_spacing_and_volumes(hippocampus):
    root = shared_path("MSD", "Task04_Hippocampus")
    n_src = len(list((root / "imagesTr").glob("*.nii.gz")))
    assert hippocampus.meta["num_cases"] == n_src == len(hippocampus.case_ids)
    assert hippocampus.meta["prompts"] == ["MR, Hippocampus, normal"]
    assert hippocampus.meta["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    by_case: dict[str, list[dict]] = {}
    for r in hippocampus.manifest:
        by_case.setdefault(r["case_id"], []).append(r)
    for case_id in list(by_case)[:40]:
        rows = by_case[case_id]
        shape = rows[0]["case_shape"]
        assert rows[0]["case_spacing"] == (1.0, 1.0, 1.0)
        axis = rows[0]["slice_axis"]
        assert len(rows) == shape[axis]  # every slice stored: whole-volume evaluation
        vol = hippocampus.original_mask(case_id)
        assert vol.shape == shape and set(np.unique(vol)) <= {0, 1, 2}
        # each stored 128 px slice maps back exactly onto its original slice
        for r in rows:
            orig_slice = np.take(vol, r["slice_index"], axis=axis)
            back = resize_mask(np.asarray(hippocampus.masks[r["index"]]), orig_slice.shape)
            np.testing.assert_array_equal(back, orig_slice)
            assert r["train"] == (orig_slice.any())  # the paper's foreground-slice choice


def test_hippocampus_folds_never_split_a_case(hippocampus):
    for f in hippocampus.folds:
        train_cases = {hippocampus.manifest[i]["case_id"] for i in hippocampus.indices(f.train, training=True)}
        test_cases = {hippocampus.manifest[i]["case_id"] for i in hippocampus.indices(f.test)}
        assert train_cases.isdisjoint(test_cases)


def test_busi_segmentation_is_scored_on_every_test_image_at_its_original_size(busi, tmp_path):
    import csv

    from diffboost.segmentation import SegConfig, train_seg

    s = train_seg(busi, 0, SegConfig(channels=(8, 16, 32), size=32, epochs=1, batch_size=16), tmp_path / "seg",
                  progress=False)
    rows = list(csv.DictReader(open(tmp_path / "seg" / "metrics.csv")))
    test = busi.fold(0).test
    assert s["cases"] == len(rows) == len(test)
    normal = [r for r in rows if r["category"] == "normal"]
    assert normal and all(r["reference_empty"] == "1" for r in normal)  # empty references are kept and scored
    for r in rows:
        assert all(np.isfinite(float(r[m])) for m in ("dice", "precision", "recall", "hd95", "assd"))
        if r["reference_empty"] == "1":
            assert float(r["dice"]) == (1.0 if r["prediction_empty"] == "1" else 0.0)
    preds = np.load(tmp_path / "seg" / "predictions.npz")
    for case in test[:20]:
        assert preds[case].shape == busi.original_mask(case).shape


def test_hippocampus_segmentation_is_scored_on_whole_volumes_in_mm(hippocampus, tmp_path):
    from diffboost.segmentation import SegConfig, train_seg

    s = train_seg(hippocampus, 1, SegConfig(channels=(8, 16, 32), size=32, epochs=1, batch_size=32), tmp_path / "seg",
                  progress=False)
    test = hippocampus.fold(1).test
    assert s["cases"] == len(test)
    preds = np.load(tmp_path / "seg" / "predictions.npz")
    for case in test:
        ref = hippocampus.original_mask(case)
        assert preds[case].shape == ref.shape  # the whole volume at its original size
    import csv

    import nibabel as nib

    from diffboost.evaluation.metrics import case_metrics
    from diffboost.segmentation.predict import case_spacing

    first = {}
    for r in hippocampus.manifest:
        first.setdefault(r["case_id"], r)
    stored = {r["case_id"]: r for r in csv.DictReader(open(tmp_path / "seg" / "metrics.csv"))}
    empty_hd95 = []
    for case in test[:6]:
        ref = hippocampus.original_mask(case)
        src = nib.load(first[case]["source_mask"])
        np.testing.assert_array_equal(np.asarray(src.dataobj), ref)  # the label volume as the file holds it
        spacing = tuple(float(v) for v in src.header.get_zooms()[:3])
        assert case_spacing(first[case]) == pytest.approx(spacing)  # mm, from the NIfTI header
        # the stored score is the whole stored volume's, against the file's labels, in the file's mm
        assert float(stored[case]["hd95"]) == pytest.approx(case_metrics(preds[case], ref, spacing, [1, 2])["hd95"])
        # HD95 in mm: the reference moved by k voxels along an axis scores about k voxel sizes (the 95th
        # percentile of the border distances: at most k, and most border points are k away)
        for axis in range(3):
            for k in (1, 2, 4):
                moved = np.zeros_like(ref)
                src_sl, dst_sl = [slice(None)] * 3, [slice(None)] * 3
                src_sl[axis], dst_sl[axis] = slice(0, ref.shape[axis] - k), slice(k, None)
                moved[tuple(dst_sl)] = ref[tuple(src_sl)]
                hd95 = case_metrics(moved, ref, spacing, [1, 2])["hd95"]
                assert 0.75 * k * spacing[axis] <= hd95 <= k * spacing[axis] + 1e-6, (case, axis, k, hd95)
        empty_hd95.append(case_metrics(np.zeros_like(ref), ref, spacing, [1, 2])["hd95"])
    # one epoch already beats predicting nothing (whose HD95 is the volume's diagonal)
    model_hd95 = [float(stored[c]["hd95"]) for c in test[:6]]
    assert np.mean(model_hd95) < 0.5 * np.mean(empty_hd95), (model_hd95, empty_hd95)
    assert s["metrics"]["dice"]["mean"] > 0.3


def test_ddti_prepares_as_downloaded_with_every_case_in_one_fold(tmp_path):
    import re

    src = shared_path("DDTI")
    ps = prepare(src, tmp_path / "prepared", PrepareConfig(size=64), progress=False)
    assert ps.meta["format"] == "ddti" and ps.meta["num_cases"] == 531
    assert ps.meta["case_groups"]["groups"] == len({re.match(r"^([^_]+)_", c).group(1) for c in ps.case_ids})
    assert {p.split(", ")[1] for p in ps.meta["prompts"]} == {"Thyroid"} and "US, Thyroid, TI-RADS not given" in ps.meta["prompts"]
    patient = lambda c: re.match(r"^([^_]+)_", c).group(1)  # noqa: E731
    tested = [{patient(c) for c in f.test} for f in ps.folds]
    assert sum(map(len, tested)) == len(set().union(*tested))  # no case in two test folds
    for f in ps.folds:
        assert not {patient(c) for c in f.train} & {patient(c) for c in f.test}


def test_real_budgets_and_unlabelled_images_from_another_site(tmp_path):
    """BUSI labelled at 10% with BUS-BRA's images unlabelled (masks unread); DDTI at 10% keeps its patients
    apart; the test folds are those of every label, and no unlabelled image validates or tests."""
    busi, busbra, ddti = shared_path("BUSI"), shared_path("BUS-BRA"), shared_path("DDTI")
    ps = prepare(busi, tmp_path / "busi", PrepareConfig(size=32, budget="0.1", unlabelled=[str(busbra)]), progress=False)
    assert ps.meta["num_unlabelled_cases"] == 631 and ps.meta["num_labelled_cases"] == 624
    full = prepare(busi, tmp_path / "busi_full", PrepareConfig(size=32), progress=False)
    unl = set(ps.unlabelled_cases)
    assert all(ps.manifest[i]["device"] for i in ps.indices(sorted(unl)))  # the scanner kept, masks unread
    for f, g in zip(ps.folds, full.folds):
        assert f.test == g.test and not unl & set(f.train + f.val + f.test)
        want = round(0.1 * (len(g.train) + len(g.val)))  # a near-duplicate group (up to 7 images) is taken whole
        assert want <= len(f.train) + len(f.val) <= want + 6
    p = prepare(ddti, tmp_path / "ddti", PrepareConfig(size=32, budget="0.1"), progress=False)
    patient = lambda c: c.split("_")[0]  # noqa: E731
    for f in p.folds:
        assert not {patient(c) for c in f.train + f.val + f.hidden} & {patient(c) for c in f.test}
        assert 0 < len(f.train) + len(f.val) < len(f.hidden)
