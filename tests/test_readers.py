"""Readers: each supported layout, auto-detection, and what each one hands to preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from builders import disk, make_busi, make_corpus, make_folders, make_msd, make_nnunet, volume_pair

from diffboost.config import PrepareConfig
from diffboost.data.readers import detect_format, get_reader
from diffboost.errors import DataError


def load_all(root, **cfg):
    reader = get_reader(root, PrepareConfig(**cfg))
    return reader, [reader.load(r) for r in reader.scan()]


def test_busi_reader_unions_masks_and_converts_rgb(tmp_path):
    root = make_busi(tmp_path / "busi")
    assert detect_format(root) == "busi"
    assert detect_format(root / "Dataset_BUSI_with_GT") == "busi"
    reader, cases = load_all(root)
    by_id = {c.ref.case_id: c for c in cases}
    assert sorted(by_id) == ["benign (1)", "benign (2)", "malignant (1)", "normal (1)"]
    two = by_id["benign (2)"]
    expected = disk(60, 80, 20, 20, 6) | disk(60, 80, 40, 60, 8)  # 1-bit mask ∪ RGBA mask_1
    np.testing.assert_array_equal(two.mask.astype(bool), expected)
    assert two.image.ndim == 2 and two.image.dtype == np.float32  # RGB -> grey
    assert abs(two.image[7, 7] - 0.299 * 255) < 1  # red overlay through BT.601 weights
    assert by_id["normal (1)"].mask.sum() == 0  # empty mask: valid case
    assert by_id["malignant (1)"].ref.category == "malignant"
    assert set(np.unique(by_id["benign (1)"].mask)) == {0, 1}


def test_folders_reader_matches_by_stem(tmp_path):
    root = make_folders(tmp_path / "f", n=3, mask_dir="labels")
    assert detect_format(root) == "folders"
    _, cases = load_all(root)
    assert [c.ref.case_id for c in cases] == ["img0", "img1", "img2"]
    assert all(c.mask.shape == c.image.shape and c.mask.max() == 1 for c in cases)


def test_folders_reader_nifti_volumes(tmp_path):
    from builders import save_nifti

    img, lab = volume_pair()
    save_nifti(tmp_path / "v" / "images" / "a.nii.gz", img, (0.8, 0.8, 2.5))
    save_nifti(tmp_path / "v" / "masks" / "a.nii.gz", lab, (0.8, 0.8, 2.5))
    _, [case] = load_all(tmp_path / "v")
    assert case.is_3d and case.spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_array_equal(case.mask, lab)


def test_msd_reader_spacing_labels_and_prompt_parts(tmp_path):
    root = make_msd(tmp_path / "Task05_Prostate", n=3)
    assert detect_format(root) == "msd"
    reader, cases = load_all(root)
    assert len(cases) == 3
    c = cases[0]
    assert c.spacing == pytest.approx((0.5, 0.5, 3.0))
    assert set(np.unique(c.mask)) == {0, 1, 2}
    assert c.ref.modality == "MR" and c.ref.organ == "Prostate"
    assert reader.label_names == {0: "background", 1: "PZ", 2: "TZ"}


def test_msd_label_map_merges_and_selects(tmp_path):
    root = make_msd(tmp_path / "t", n=1)
    reader, [merged] = load_all(root, label_map={1: 1, 2: 1})
    assert set(np.unique(merged.mask)) == {0, 1}
    assert reader.label_names == {0: "background", 1: "PZ+TZ"}
    _, [only2] = load_all(root, label_map={2: 1})
    _, [orig] = load_all(root)
    np.testing.assert_array_equal(only2.mask, (orig.mask == 2).astype(np.uint8))


def test_msd_4d_channel_selection(tmp_path):
    root = make_msd(tmp_path / "t", n=1, channels=2)
    _, [c0] = load_all(root, channel=0)
    _, [c1] = load_all(root, channel=1)
    assert c0.image.ndim == 3
    np.testing.assert_allclose(c1.image - c0.image, 10.0, atol=1e-4)


def test_nnunet_reader_nifti_and_png(tmp_path):
    root = make_nnunet(tmp_path / "Dataset501_X", n=3)
    assert detect_format(root) == "nnunet"
    reader, cases = load_all(root)
    assert [c.ref.case_id for c in cases] == ["case_000", "case_001", "case_002"]
    assert reader.label_names == {0: "background", 1: "organ", 2: "tumour"}
    assert cases[0].ref.modality == "CT"
    root2 = make_nnunet(tmp_path / "Dataset502_P", n=2, ending=".png")
    _, cases2 = load_all(root2)
    assert cases2[0].image.ndim == 2 and cases2[0].mask.max() == 1


def test_corpus_reader_triplets(tmp_path):
    root = make_corpus(tmp_path / "radimagenet")
    assert detect_format(root) == "corpus"
    reader, cases = load_all(root)
    assert not reader.has_masks and len(cases) == 4
    parts = {(c.ref.modality, c.ref.organ, c.ref.category) for c in cases}
    assert parts == {("CT", "Abdomen", "Arterial Pathology"), ("MR", "Hip", "normal")}
    assert all(c.mask is None for c in cases)


def test_detect_format_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        detect_format(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty folder"):
        detect_format(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="--format"):
        detect_format(tmp_path / "odd")


def test_ddti_as_downloaded_groups_images_of_a_case_and_reads_its_categories(tmp_path):
    import re

    from builders import make_ddti

    from diffboost.data.preparation import prepare

    root = make_ddti(tmp_path / "DDTI")
    assert detect_format(root) == "ddti"
    refs = {r.case_id: r for r in get_reader(root, PrepareConfig()).scan()}
    assert len(refs) == 9 and refs["5_1(2)"].group == "5" and refs["11_1(1)"].group == "11"
    assert refs["5_2"].category == "TI-RADS 4b" and refs["7_1"].category == "TI-RADS not given"
    case = get_reader(root, PrepareConfig()).load(refs["9_1"])
    assert set(np.unique(case.mask)) == {0, 1} and case.mask.sum() > 50  # a GIF mask of 0/255
    ps = prepare(root, tmp_path / "prepared", PrepareConfig(size=32, folds=3, duplicates=None), progress=False)
    assert "US, Thyroid, TI-RADS 4a" in ps.meta["prompts"] and ps.meta["case_groups"]["with_several_images"] == 3
    patient = lambda c: re.match(r"^([^_]+)_", c).group(1)  # noqa: E731
    for f in ps.folds:  # every image of one case in one part of one fold
        parts = [{patient(c) for c in getattr(f, p)} for p in ("train", "val", "test")]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    tested = [{patient(c) for c in f.test} for f in ps.folds]
    assert sum(map(len, tested)) == len(set().union(*tested)) == 5  # each case tested by exactly one fold


def test_folders_options_name_the_layout_and_refuse_ambiguous_files(tmp_path):
    from builders import gradient_image, make_folders, save_png

    root = make_folders(tmp_path / "f", n=4)
    (root / "images").rename(root / "scans")
    with pytest.raises(DataError, match="prepare.image_dir"):
        get_reader(root, PrepareConfig(format="folders")).scan()
    refs = get_reader(root, PrepareConfig(format="folders", image_dir="scans", case_pattern=r"^img(?P<case>\d)")).scan()
    assert [r.group for r in refs] == ["0", "1", "2", "3"]
    (root / "cats.csv").write_text("name,class\nimg0,a\nimg1,b\nimg2,a\n")
    with pytest.raises(DataError, match="no row for img3"):
        get_reader(root, PrepareConfig(format="folders", image_dir="scans", categories="cats.csv")).scan()
    save_png(root / "scans" / "img1.jpg", gradient_image(30, 40, 9))  # x.png beside x.jpg: which is it?
    with pytest.raises(DataError, match="two file types"):
        get_reader(root, PrepareConfig(format="folders", image_dir="scans")).scan()
    with pytest.raises(ValueError, match="needs a group"):
        PrepareConfig(case_pattern="^img")
