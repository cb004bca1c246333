"""prepare(): the prepared set's contents, 3D slicing, atomic output, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import disk, make_busi, make_msd, save_nifti, save_png, volume_pair
from PIL import Image

from diffboost.conditioning.edges import mask_boundary
from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.data.preprocess import resize_mask
from diffboost.data.store import PreparedSet
from diffboost.errors import DataError


def leftovers(parent, name):
    """Temporary or set-aside folders of an atomic write (the lock file beside the folder is no leftover)."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") and not p.name.endswith(".diffboost-lock")]


def test_prepare_busi_layout_contents(tmp_path):
    src = make_busi(tmp_path / "busi")
    ps = prepare(src, tmp_path / "out", PrepareConfig(size=32, folds=2), progress=False)
    assert len(ps) == 4 and ps.meta["num_cases"] == 4
    assert ps.images.shape == (4, 32, 32) and ps.images.dtype == np.float16
    assert ps.masks.dtype == np.uint8 and ps.edges.dtype == np.uint8
    imgs = np.asarray(ps.images, np.float32)
    assert imgs.min() >= -1.0 and imgs.max() <= 1.0 and imgs.min() < -0.9 and imgs.max() > 0.9
    rows = {r["case_id"]: r for r in ps.manifest}
    assert rows["benign (1)"]["prompt"] == "US, Breast, benign"
    assert rows["normal (1)"]["prompt"] == "US, Breast, normal"
    assert (rows["benign (1)"]["orig_height"], rows["benign (1)"]["orig_width"]) == (60, 80)
    assert rows["benign (1)"]["case_spacing"] == (1.0, 1.0)
    assert rows["benign (1)"]["source_image"].endswith("benign (1).png")
    # originals keep the mask at the source size: the metric grid
    orig = ps.original_mask("benign (2)")
    np.testing.assert_array_equal(orig.astype(bool), disk(60, 80, 20, 20, 6) | disk(60, 80, 40, 60, 8))
    # the condition contains the mask's boundary band exactly where the resized mask has one
    for i in range(len(ps)):
        s = ps.sample(i)
        np.testing.assert_array_equal(s["mask"], resize_mask(ps.original_mask(s["case_id"]), 32))
        band = mask_boundary(s["mask"]) > 0
        assert np.all(s["condition"][band] == 1.0)
        assert np.all(s["condition"] >= s["edges"] - 1e-6)
    for name in ("config.yaml", "folds.json", "preview.png", "manifest.csv", "dataset.json"):
        assert (ps.root / name).exists()
    assert Image.open(ps.root / "preview.png").size[0] > 4 * 32
    assert not leftovers(tmp_path, "out")


def test_prepare_3d_slices_spacing_and_training_selection(tmp_path):
    src = make_msd(tmp_path / "Task05_Prostate", n=3, spacing=(0.5, 0.6, 3.0))
    ps = prepare(src, tmp_path / "fg", PrepareConfig(size=16, folds=3, val_fraction=0.0), progress=False)
    # through-plane = the 3 mm axis (2): 8 slices per case, all stored
    assert len(ps) == 3 * 8 and ps.meta["is_3d"]
    r = ps.manifest[0]
    assert r["slice_axis"] == 2 and (r["spacing_row"], r["spacing_col"]) == (0.5, 0.6)
    assert r["case_spacing"] == (0.5, 0.6, 3.0) and r["case_shape"] == (24, 20, 8)
    assert r["prompt"] == "MR, Prostate, normal"
    train = [x for x in ps.manifest if x["train"]]
    assert {x["slice_index"] for x in train} == {2, 3, 4, 5}  # foreground slices only
    assert all(x["foreground_pixels"] > 0 for x in train)
    idx = ps.indices([ps.case_ids[0]])
    assert [ps.manifest[i]["slice_index"] for i in idx] == list(range(8))
    assert len(ps.indices([ps.case_ids[0]], training=True)) == 4
    # the whole volume is kept at its original size for 3D metrics
    vol = ps.original_mask(ps.case_ids[0])
    assert vol.shape == (24, 20, 8)
    # every stored slice maps back to its original slice
    for i in idx:
        back = resize_mask(np.asarray(ps.masks[i]), (24, 20))
        assert back.shape == vol[:, :, ps.manifest[i]["slice_index"]].shape
    ps_all = prepare(src, tmp_path / "all", PrepareConfig(size=16, slices="all", axis=0), progress=False)
    assert len(ps_all) == 3 * 24 and all(x["train"] for x in ps_all.manifest)
    assert ps_all.manifest[0]["spacing_row"] == 0.6


def test_prepare_folds_are_by_case(tmp_path):
    src = make_msd(tmp_path / "t", n=6)
    ps = prepare(src, tmp_path / "o", PrepareConfig(size=16, folds=3, val_fraction=0.25), progress=False)
    tests = [set(f.test) for f in ps.folds]
    assert set().union(*tests) == set(ps.case_ids)
    for f in ps.folds:
        assert not (set(f.train) & set(f.val)) and not (set(f.train) & set(f.test)) and not (set(f.val) & set(f.test))
        assert len(f.val) >= 1
        slices_train = {ps.manifest[i]["case_id"] for i in ps.indices(f.train)}
        assert slices_train.isdisjoint(f.test)


def test_prepare_prompt_overrides_and_free_text(tmp_path):
    src = make_msd(tmp_path / "t", n=3)
    cfg = PrepareConfig(size=16)
    cfg.prompt.organ = "Prostate gland"
    cfg.prompt.category = "tumour"
    ps = prepare(src, tmp_path / "a", cfg, progress=False)
    assert ps.manifest[0]["prompt"] == "MR, Prostate gland, tumour"
    cfg2 = PrepareConfig(size=16, prompt={"template": "an {modality} scan of the {organ}, please"})
    ps2 = prepare(src, tmp_path / "b", cfg2, progress=False)
    assert ps2.manifest[0]["prompt"] == "an MR scan of the Prostate, please"


def test_output_exists_needs_overwrite(tmp_path):
    src = make_busi(tmp_path / "busi")
    prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)
    with pytest.raises(FileExistsError):
        prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)
    prepare(src, tmp_path / "out", PrepareConfig(size=24, folds=2), overwrite=True, progress=False)
    assert PreparedSet(tmp_path / "out").size == 24


# ---- bad input: one clear error naming the file, nothing written ------------------------------

def _bad_busi_corrupt(root):
    (root / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return "benign (1).png", "cannot read image"


def _bad_busi_no_mask(root):
    (root / "Dataset_BUSI_with_GT" / "malignant" / "malignant (1)_mask.png").unlink()
    return "malignant (1).png", "image without mask"


def _bad_busi_size(root):
    save_png(root / "Dataset_BUSI_with_GT" / "benign" / "benign (1)_mask.png", np.zeros((10, 10), np.uint8))
    return "benign (1)_mask.png", "differs from its image size"


@pytest.mark.parametrize("breaker", [_bad_busi_corrupt, _bad_busi_no_mask, _bad_busi_size])
def test_bad_busi_inputs(tmp_path, breaker):
    src = make_busi(tmp_path / "busi")
    fname, problem = breaker(src)
    with pytest.raises(DataError) as e:
        prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)
    assert fname in str(e.value) and problem in str(e.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


def test_skip_bad_lists_skipped_files(tmp_path):
    src = make_busi(tmp_path / "busi")
    _bad_busi_corrupt(src)
    _bad_busi_no_mask(src)
    with pytest.warns(UserWarning, match="skipped 2"):
        ps = prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2, skip_bad=True), progress=False)
    assert ps.meta["num_cases"] == 2
    skipped = {s["file"].rsplit("/", 1)[-1]: s["problem"] for s in ps.meta["skipped"]}
    assert set(skipped) == {"benign (1).png", "malignant (1).png"}


def test_bad_label_values_outside_map(tmp_path):
    src = make_msd(tmp_path / "t", n=2)
    img, lab = volume_pair(seed=9)
    lab[0, 0, 0] = 7  # not declared in dataset.json
    save_nifti(src / "labelsTr" / "prostate_01.nii.gz", lab, (0.5, 0.5, 3.0))
    for cfg in (PrepareConfig(size=16, folds=2), PrepareConfig(size=16, folds=2, label_map={1: 1, 2: 1})):
        with pytest.raises(DataError, match=r"prostate_01\.nii\.gz.*label values \[7\]"):
            prepare(src, tmp_path / "out", cfg, progress=False)
        assert not (tmp_path / "out").exists()


def test_bad_nan_in_volume(tmp_path):
    src = make_msd(tmp_path / "t", n=2)
    img, _ = volume_pair(seed=1)
    img[3, 3, 3] = np.nan
    save_nifti(src / "imagesTr" / "prostate_01.nii.gz", img, (0.5, 0.5, 3.0))
    with pytest.raises(DataError, match=r"imagesTr/prostate_01\.nii\.gz: volume contains 1 NaN/Inf"):
        prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_4d_without_channel(tmp_path):
    src = make_msd(tmp_path / "t", n=2, channels=2)
    with pytest.raises(DataError, match=r"prostate_00\.nii\.gz: 4D volume with 2 channels \(0: T2, 1: ADC\).*--channel"):
        prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)
    with pytest.raises(DataError, match="channel 5 does not exist"):
        prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2, channel=5), progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: empty folder"):
        prepare(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    with pytest.raises(DataError, match="no image files"):
        prepare(tmp_path / "f", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_mask_3d_size_mismatch(tmp_path):
    src = make_msd(tmp_path / "t", n=2)
    save_nifti(src / "labelsTr" / "prostate_00.nii.gz", np.zeros((5, 5, 5), np.uint8), (0.5, 0.5, 3.0))
    with pytest.raises(DataError, match=r"labelsTr/prostate_00\.nii\.gz: label size"):
        prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)


def test_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    import diffboost.data.preparation as P

    src = make_busi(tmp_path / "busi")
    calls = {"n": 0}
    real = P._Collector.add

    def flaky(self, case, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, case, **kw)

    monkeypatch.setattr(P._Collector, "add", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


def test_dataset_json_records_config_and_timing(tmp_path):
    src = make_busi(tmp_path / "busi")
    ps = prepare(src, tmp_path / "out", PrepareConfig(size=16, folds=2), progress=False)
    meta = json.loads((ps.root / "dataset.json").read_text())
    assert meta["config"]["size"] == 16 and meta["seconds"] >= 0 and meta["peak_memory_mb"] > 0
    assert meta["cases_per_category"] == {"benign": 2, "malignant": 1, "normal": 1}
    assert meta["labels"] == {"0": "background", "1": "lesion"}
