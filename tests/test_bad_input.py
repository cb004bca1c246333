"""Bad input refused at prepare time with one error naming the file (or read the way it means)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from builders import disk, gradient_image, make_folders, make_msd, save_nifti, volume_pair
from PIL import Image

from diffboost.config import PrepareConfig
from diffboost.data.io import read_image_2d
from diffboost.data.preparation import prepare
from diffboost.data.readers import get_reader
from diffboost.errors import DataError


def _load(root, **cfg):
    reader = get_reader(root, PrepareConfig(**cfg))
    return [reader.load(r) for r in reader.scan()], reader


def test_grey_alpha_rgba_and_cmyk_masks_and_images_mean_what_they_show(tmp_path):
    d = disk(30, 40, 15, 20, 6)
    la = np.stack([d.astype(np.uint8) * 255, np.full(d.shape, 255, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.array_equal(read_image_2d(tmp_path / "la.png") > 0, d)  # grey + alpha: the grey channel
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = (200, 50, 50)  # a coloured background ...
    rgba[d] = (255, 255, 255, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")  # ... that is transparent everywhere but the lesion
    assert np.array_equal(read_image_2d(tmp_path / "rgba.png") > 0, d)
    grey = gradient_image(30, 40).astype(np.uint8)
    Image.fromarray(grey).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    back = read_image_2d(tmp_path / "cmyk.jpg")
    assert np.abs(back - grey).mean() < 6  # PIL's CMYK conversion, not RGB weights on C, M, Y


def test_nifti_inputs_that_would_fail_late_or_mislead(tmp_path):
    import nibabel as nib

    img, lab = volume_pair(shape=(16, 12, 6))
    # a label on another grid (flipped in its header): refused, naming the label
    root = make_msd(tmp_path / "msd", n=2)

    flipped = nib.load(str(root / "labelsTr" / "prostate_01.nii.gz"))
    aff = flipped.affine.copy()
    aff[0, 0] *= -1
    nib.save(nib.Nifti1Image(np.asarray(flipped.dataobj), aff), str(root / "labelsTr" / "prostate_01.nii.gz"))
    with pytest.raises(DataError, match="prostate_01.nii.gz: its affine"):
        _load(root)
    # dataset.json paths must stay inside the dataset
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["image"] = "../elsewhere/x.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="dataset.json: lists '../elsewhere/x.nii.gz', a path outside"):
        get_reader(root, PrepareConfig()).scan()
    # an (X, Y, 1) image is a 2D case, not 1-pixel strips; a NaN pixdim is named
    flat = tmp_path / "flat"
    save_nifti(flat / "images" / "a.nii.gz", img[..., :1], (0.7, 0.7, 1.0))
    save_nifti(flat / "masks" / "a.nii.gz", lab[..., :1], (0.7, 0.7, 1.0))
    [case], _ = _load(flat, label_map={1: 1, 2: 1})
    assert case.image.shape == (16, 12) and not case.is_3d
    nan = tmp_path / "nan"
    save_nifti(nan / "images" / "a.nii.gz", img, (0.7, 0.7, 2.0))
    save_nifti(nan / "masks" / "a.nii.gz", lab, (0.7, 0.7, 2.0))
    broken = nib.load(str(nan / "images" / "a.nii.gz"))
    broken.header["pixdim"][2] = np.nan
    nib.save(nib.Nifti1Image(np.asarray(broken.dataobj), None, broken.header), str(nan / "images" / "a.nii.gz"))
    with pytest.raises(DataError, match="a.nii.gz: invalid voxel spacing"):
        _load(nan)


def test_folders_nifti_labels_become_the_sets_labels_and_0_255_is_refused(tmp_path):
    img, lab = volume_pair(shape=(16, 12, 6))
    root = tmp_path / "v"
    save_nifti(root / "images" / "a.nii.gz", img, (0.8, 0.8, 2.5))
    save_nifti(root / "masks" / "a.nii.gz", lab, (0.8, 0.8, 2.5))
    _, reader = _load(root)
    assert reader.label_names == {0: "background", 1: "label 1", 2: "label 2"}  # both labels declared, not dropped
    save_nifti(root / "masks" / "a.nii.gz", (lab > 0).astype(np.uint8) * 255, (0.8, 0.8, 2.5))
    with pytest.raises(DataError, match="a.nii.gz: the mask holds 0/255"):
        _load(root)


def test_a_2d_nifti_set_reports_distances_in_mm_and_bad_names_fail_first(tmp_path):
    root = tmp_path / "n2d"
    for i in range(4):
        save_nifti(root / "images" / f"c{i}.nii.gz", gradient_image(24, 24, i)[..., None], (0.5, 0.5, 1.0))
        save_nifti(root / "masks" / f"c{i}.nii.gz", disk(24, 24, 12, 12, 5).astype(np.uint8)[..., None], (0.5, 0.5, 1.0))
    ps = prepare(root, tmp_path / "p", PrepareConfig(size=16, folds=2, duplicates=None), progress=False)
    assert ps.meta["spacing_unit"] == "mm" and not ps.meta["is_3d"]
    png = make_folders(tmp_path / "png", n=2)
    assert prepare(png, tmp_path / "p2", PrepareConfig(size=16, folds=2, duplicates=None),
                   progress=False).meta["spacing_unit"] == "px"
    bad = os.fsencode(str(png / "images")) + b"/img\xff.png"
    with open(bad, "wb") as f:
        f.write((png / "images" / "img0.png").read_bytes())
    with open(os.fsencode(str(png / "masks")) + b"/img\xff.png", "wb") as f:
        f.write((png / "masks" / "img0_mask.png").read_bytes())
    with pytest.raises(DataError, match="not valid UTF-8"):
        prepare(png, tmp_path / "p3", PrepareConfig(size=16, folds=2, duplicates=None), progress=False)
    assert not (tmp_path / "p3").exists()


def test_an_empty_volume_is_named(tmp_path):
    root = tmp_path / "z"
    save_nifti(root / "images" / "a.nii.gz", np.zeros((0, 4, 4), np.float32))
    save_nifti(root / "masks" / "a.nii.gz", np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(DataError, match="a.nii.gz: empty volume"):
        _load(root)


def test_busi_refuses_an_image_saved_twice_under_one_name(tmp_path):
    from builders import make_busi, save_png

    root = make_busi(tmp_path / "busi")
    first = sorted(root.rglob("*.png"))[0]
    stem = first.stem.replace("_mask", "")
    save_png(first.parent / f"{stem}.jpg", gradient_image(20, 20))
    with pytest.raises(DataError, match="a second image file"):
        get_reader(root, PrepareConfig()).scan()


def test_a_name_with_a_newline_is_paired_then_refused_by_name_on_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from builders import make_busi

    root = make_busi(tmp_path / "busi")
    benign = root / "Dataset_BUSI_with_GT" / "benign"
    (benign / "benign (1).png").rename(benign / "benign\n(1).png")
    (benign / "benign (1)_mask.png").rename(benign / "benign\n(1)_mask.png")
    refs = get_reader(root, PrepareConfig()).scan()
    pair = next(r for r in refs if "\n" in r.case_id)
    assert [m.name for m in pair.masks] == ["benign\n(1)_mask.png"]  # read as a pair, not "image without mask"
    out = tmp_path / "prepared"
    result = subprocess.run([str(Path(sys.executable).parent / "diffboost"), "prepare", str(root), "--out", str(out),
                             "--size", "32"], capture_output=True, text=True, timeout=300)
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 2 and len(said.splitlines()) == 1, said
    assert "benign\\n(1)" in said and "control character" in said and "without mask" not in said
    assert not out.exists()
