"""DiffBoost inside nnU-Net v2 on CPU, with the real library: `diffboost export` -> nnU-Net's own
plan_and_preprocess -> `diffboost nnunet train` (nnUNetTrainerDiffBoost, one short epoch) -> nnU-Net's
validation. Skipped with a reason where nnunetv2 is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'diffboost[nnunet]')")

BIN = Path(sys.executable).parent


def test_split_variants_keeps_only_the_folds_variants_of_training_cases():
    from diffboost.integrations.nnunet import split_variants

    keys = ["a", "b", "a_syn_f0_v0", "a_syn_f0_v1", "b_syn_f1_v0", "c_syn_f0_v0"]
    real, variants = split_variants(keys, 0)
    assert real == ["a", "b"] and variants == {"a": ["a_syn_f0_v0", "a_syn_f0_v1"]}  # c is not a training case


def test_mixing_dataset_aligns_a_variant_cropped_to_another_box():
    from diffboost.integrations.nnunet import _align

    full = np.arange(2 * 1 * 10 * 12, dtype=np.float32).reshape(2, 1, 10, 12)
    seg = (full[:1] > 100).astype(np.int8)
    real_box, var_box = [[0, 1], [2, 9], [1, 11]], [[0, 1], [0, 10], [3, 12]]
    crop = lambda a, b: a[:, b[0][0]:b[0][1], b[1][0]:b[1][1], b[2][0]:b[2][1]]  # noqa: E731
    props = {"shape_before_cropping": (1, 10, 12), "bbox_used_for_cropping": real_box}
    v_props = {"shape_before_cropping": (1, 10, 12), "bbox_used_for_cropping": var_box}
    data, v_seg = _align(crop(full, var_box), crop(seg, var_box), v_props, crop(full, real_box).shape, props)
    inside = np.s_[:, :, :, 2:]  # columns the variant's box covers
    assert np.array_equal(data[inside], crop(full, real_box)[inside]) and np.all(data[:, :, :, :2] == 0)
    assert np.array_equal(v_seg[inside], crop(seg, real_box)[inside])
    assert _align(full, seg, {"shape_before_cropping": (1, 9, 12)}, full.shape, props) is None  # another grid


@pytest.mark.slow
def test_export_plan_preprocess_and_train_the_diffboost_trainer(tmp_path):
    from builders import prepared_with_variants

    from diffboost.data.phantoms import generate_phantoms
    from diffboost.export import ExportConfig, export_dataset

    phantoms = generate_phantoms(tmp_path / "busi", n=9, seed=4, size_range=(64, 72))
    more = generate_phantoms(tmp_path / "more", n=3, seed=8, size_range=(64, 72))  # images without a label
    prepared_with_variants(tmp_path, phantoms, folds=(0,), n=2, steps=1, unlabelled=[str(more)])
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    # one fold, as for self-training below (an export of every fold is checked by nnU-Net in test_export.py)
    exported = export_dataset(tmp_path, raw, ExportConfig(dataset_id=11, name="Phantom", fold=0), progress=False)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "f", "OMP_NUM_THREADS": "2"}
    r = subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "11", "-c", "2d", "-np", "1", "-npfp", "1",
                        "--verify_dataset_integrity"], env=env, capture_output=True, text=True, timeout=600)
    env["nnUNet_n_proc_DA"] = "0"  # data loading in the training process: its mixing counts are this process's
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    shutil.copy(exported / "splits_final.json", pre / exported.name / "splits_final.json")
    r = subprocess.run([str(BIN / "diffboost"), "nnunet", "train", "11", "2d", "0", "--device", "cpu", "--epochs", "1",
                        "--iterations", "3", "--val-iterations", "1", "--alpha", "0.5"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = res / exported.name / "nnUNetTrainerDiffBoost__nnUNetPlans__2d" / "fold_0"
    mixing = json.loads((out / "diffboost_mixing.json").read_text())
    # the batches it trained on held real cases mixed with their variants, about half synthetic pixels
    assert mixing["mixed"] > 0 and mixing["mixed"] == mixing["loaded"] - mixing["skipped_misaligned"] - (
        mixing["loaded"] - mixing["mixed"] - mixing["skipped_misaligned"])
    assert mixing["skipped_misaligned"] == 0 and 0.2 < mixing["synthetic_share_of_mixed"] < 0.8
    assert mixing["options"]["alpha"] == 0.5
    # the variants were not trained on as cases of their own, and nnU-Net's validation ran on the
    # fold's validation part (never its test fold)
    log = "".join(p.read_text() for p in out.glob("training_log_*.txt"))
    splits = json.loads((exported / "splits_final.json").read_text())
    n_real = sum("_syn_" not in k for k in splits[0]["train"])
    assert f"DiffBoost: {n_real} real training cases" in log
    summary = json.loads((out / "validation" / "summary.json").read_text())
    validated = {c["prediction_file"].split("/")[-1].rsplit(".", 1)[0] for c in summary["metric_per_case"]}
    assert validated == set(splits[0]["val"])
    assert (out / "checkpoint_final.pth").exists() and torch is not None
    # self-training: fold 0's model predicts the images without a label, pseudo-label adds them to fold 0
    # what nnUNetv2_predict -f 0 --save_probabilities runs, but for its search for the trainer class, which imports
    # every trainer variant (some need timm, left out of this test environment; `diffboost[nnunet]` has it)
    predict = (
        "import torch\nfrom unittest import mock\n"
        "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor\n"
        "from diffboost.integrations.nnunet import nnUNetTrainerDiffBoost\n"
        "p = nnUNetPredictor(device=torch.device('cpu'), allow_tqdm=False)\n"
        "with mock.patch('nnunetv2.inference.predict_from_raw_data.recursive_find_trainer_class_by_name',\n"
        "                lambda name: nnUNetTrainerDiffBoost):\n"
        f"    p.initialize_from_trained_model_folder({str(out.parent)!r}, use_folds=(0,))\n"
        f"p.predict_from_files({str(exported / 'imagesUnlabelled')!r}, {str(tmp_path / 'pred')!r}, save_probabilities=True,\n"
        "                     num_processes_preprocessing=1, num_processes_segmentation_export=1)\n")
    r = subprocess.run([sys.executable, "-c", predict], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(BIN / "diffboost"), "nnunet", "pseudo-label", str(exported), str(tmp_path / "pred"),
                        "--fold", "0", "--keep", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    added = json.loads((exported / "splits_final.json").read_text())[0]["train"][len(splits[0]["train"]):]
    assert len(added) == 3 and all(n.endswith("_pseudo_f0") for n in added)
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(exported), num_processes=1)  # the ignore label declared, the labels readable
