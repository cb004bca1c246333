"""`diffboost predict` + `evaluate`: a trained segmenter on files as downloaded, masks at the original size,
and the run's own test metrics recovered from the files."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.segmentation import SegConfig
from diffboost.segmentation.trainer import train_seg

BIN = Path(sys.executable).parent


def test_predict_then_evaluate_gives_the_runs_own_test_metrics(tmp_path, phantom_root):
    ps = prepare(phantom_root, tmp_path / "run" / "prepared", PrepareConfig(size=32), progress=False)
    summary = train_seg(ps, 0, SegConfig(channels=(8, 16, 32), epochs=2, batch_size=4), tmp_path / "run" / "seg" / "none"
                        / "seed0" / "fold0", progress=False)
    run = tmp_path / "run" / "seg" / "none" / "seed0" / "fold0"
    out = tmp_path / "masks"
    r = subprocess.run([str(BIN / "diffboost"), "predict", str(run), str(phantom_root), "--out", str(out), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out / "predictions.csv", newline="") as f:
        mapping = list(csv.DictReader(f))
    assert len(mapping) == len(ps.case_ids)  # every image, test fold or not
    for row in mapping:  # at the image's original size, in its relative place
        img = Image.open(row["image"])
        mask = Image.open(out / row["mask"])
        assert mask.size == img.size and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert (out / row["mask"]).relative_to(out).parent == Path(row["image"]).relative_to(phantom_root).parent
    e = subprocess.run([str(BIN / "diffboost"), "evaluate", str(out), str(phantom_root), "-q"], capture_output=True,
                       text=True, timeout=300)
    assert e.returncode == 0, e.stdout + e.stderr
    with open(out / "evaluation" / "cases.csv", newline="") as f:
        scored = {r["case_id"]: r for r in csv.DictReader(f)}
    with open(run / "metrics.csv", newline="") as f:
        own = list(csv.DictReader(f))
    assert len(own) == len(ps.fold(0).test) == summary["cases"]
    for r in own:  # the run's own test metrics, case by case, from the files alone
        for m in ("dice", "precision", "recall"):
            assert float(scored[r["case_id"]][m]) == pytest.approx(float(r[m]), abs=1e-6), (r["case_id"], m)
    assert "Dice" in e.stdout


def test_predict_on_nifti_writes_the_images_grid(tmp_path):
    import nibabel as nib

    from builders import make_msd

    root = make_msd(tmp_path / "Task99")
    for f in list((root / "imagesTr").glob("*.nii.gz")) + list((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(str(f))  # stored left-right flipped (a negative x axis): not the canonical orientation
        aff = img.affine.copy()
        aff[0, :] *= -1
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), aff), str(f))
    ps = prepare(root, tmp_path / "run" / "prepared", PrepareConfig(size=32), progress=False)
    run = tmp_path / "run" / "seg" / "none" / "seed0" / "fold0"
    train_seg(ps, 0, SegConfig(channels=(8, 16, 32), epochs=1, batch_size=4), run, progress=False)
    from diffboost.segmentation.apply import evaluate_folder, predict_folder

    out = predict_folder(run, root, tmp_path / "masks", progress=False)
    with open(out / "predictions.csv", newline="") as f:
        mapping = list(csv.DictReader(f))
    assert mapping and all(m["mask"].endswith(".nii.gz") for m in mapping)
    for m in mapping:
        src, pred = nib.load(m["image"]), nib.load(out / m["mask"])
        assert pred.shape[:3] == src.shape[:3] and np.allclose(pred.affine, src.affine)
    summary = evaluate_folder(out, root, progress=False)
    assert summary["cases"] == len(mapping) and summary["unit"] == "mm"
    with open(out / "evaluation" / "cases.csv", newline="") as f:
        scored = {r["case_id"]: r for r in csv.DictReader(f)}
    with open(run / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):  # whole volumes, in mm: the run's own numbers from the written files
            for m in ("dice", "hd95"):
                assert float(scored[r["case_id"]][m]) == pytest.approx(float(r[m]), abs=1e-5, nan_ok=True)


def test_evaluate_takes_the_layout_options_of_prepare(tmp_path, phantom_root):
    from builders import disk, gradient_image, save_png

    from diffboost.segmentation.apply import evaluate_folder, predict_folder

    ps = prepare(phantom_root, tmp_path / "run" / "prepared", PrepareConfig(size=32), progress=False)
    run = tmp_path / "run" / "seg" / "none" / "seed0" / "fold0"
    train_seg(ps, 0, SegConfig(channels=(8, 16, 32), epochs=1, batch_size=4), run, progress=False)
    site = tmp_path / "site"  # masks named IMAGE_gt.png: no default pairing finds them
    for i in range(3):
        save_png(site / "images" / f"s{i}.png", gradient_image(40, 48, 50 + i))
        save_png(site / "masks" / f"s{i}_gt.png", disk(40, 48, 20, 24, 6).astype(np.uint8) * 255)
    out = predict_folder(run, site / "images", tmp_path / "masks", progress=False)
    summary = evaluate_folder(out, site, progress=False, layout={"mask_pattern": "{stem}_gt"})
    assert summary["cases"] == 3
    r = subprocess.run([str(BIN / "diffboost"), "evaluate", str(out), str(site), "--mask-pattern", "{stem}_gt", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Dice" in r.stdout, r.stdout + r.stderr
