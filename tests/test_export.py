"""Export to nnU-Net v2 and MSD raw datasets: read back with the readers and against the schemas,
nnU-Net's own integrity check, the original sizes, and the split file's guarantees (validation from
the training part, never a test case; synthetic cases only in the training part of their own fold)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.data.io import read_image_2d
from diffboost.data.preview import to_uint8
from diffboost.data.readers import get_reader
from diffboost.export import ExportConfig, export_dataset


@pytest.fixture(scope="module")
def run2d(tmp_path_factory, phantom_root):
    from builders import prepared_with_variants

    root = tmp_path_factory.mktemp("export")
    # fold 1 gets no synthetic set: its training list must hold real cases only
    return root, prepared_with_variants(root, phantom_root, folds=(0, 2), steps=1)


def _check_splits(path, ps, names_by_case, syn_names):
    splits = json.loads((path / "splits_final.json").read_text())
    assert len(splits) == len(ps.folds)
    info = {c["name"]: c for c in json.loads((path / "diffboost_export.json").read_text())["cases"]}
    tests = json.loads((path / "diffboost_export.json").read_text())["test_cases_per_fold"]
    every_test = {n for c in ps.case_ids for n in names_by_case[c]}
    assert set(n for v in tests.values() for n in v) == every_test  # each real case is tested by one fold
    for f, split in zip(ps.folds, splits):
        assert sorted(split["val"]) == sorted(n for c in f.val for n in names_by_case[c])  # from the training part
        assert sorted(tests[str(f.index)]) == sorted(n for c in f.test for n in names_by_case[c])
        assert not set(tests[str(f.index)]) & (set(split["val"]) | set(split["train"]))  # the test fold is unseen
        assert not set(split["val"]) & syn_names  # never a synthetic case in validation
        syn_train = [n for n in split["train"] if n in syn_names]
        assert all(info[n]["synthetic_fold"] == f.index for n in syn_train)  # only its own fold's variants
        assert all(info[n]["case_id"] in f.train for n in syn_train)  # made from training cases only
        assert not set(split["train"]) & set(split["val"])
    return splits


def test_nnunet_export_round_trip_2d(run2d, tmp_path):
    root, ps = run2d
    path = export_dataset(root, tmp_path, ExportConfig(dataset_id=7, name="Phantom"), progress=False)
    assert path.name == "Dataset007_Phantom"
    meta = json.loads((path / "dataset.json").read_text())
    # nnU-Net v2's documented schema
    assert set(meta) >= {"channel_names", "labels", "numTraining", "file_ending"}
    assert meta["file_ending"] == ".png" and meta["labels"]["background"] == 0 and meta["channel_names"] == {"0": "zscore"}
    images = sorted((path / "imagesTr").iterdir())
    labels = sorted((path / "labelsTr").iterdir())
    assert len(images) == len(labels) == meta["numTraining"]
    assert all(p.name.endswith("_0000.png") for p in images)
    assert {p.name[: -len("_0000.png")] for p in images} == {p.name[: -len(".png")] for p in labels}
    n_syn = sum(2 * len(ps.indices(ps.fold(k).train, training=True)) for k in (0, 2))
    assert meta["numTraining"] == len(ps) + n_syn
    # read back with the nnU-Net reader: every case, the same pixels and labels as exported
    reader = get_reader(path, PrepareConfig(format="nnunet"))
    refs = reader.scan()
    assert len(refs) == meta["numTraining"]
    info = {c["name"]: c for c in json.loads((path / "diffboost_export.json").read_text())["cases"]}
    seen = {"real": 0, "synthetic": 0}
    for ref in refs:
        c = info[ref.case_id]
        if seen["synthetic" if c["synthetic_fold"] is not None else "real"] >= 3:
            continue
        case = reader.load(ref)
        row = ps.manifest[ps.indices([c["case_id"]])[0]]
        # at the original size of the source image, with its original label
        assert case.image.shape == (row["orig_height"], row["orig_width"]) != (ps.size, ps.size)
        assert np.array_equal(case.mask, ps.original_mask(c["case_id"]))
        if c["synthetic_fold"] is None:
            assert np.array_equal(case.image, np.rint(read_image_2d(row["source_image"])))
            seen["real"] += 1
        else:
            seen["synthetic"] += 1
    assert seen == {"real": 3, "synthetic": 3}
    real_names = sorted(n for n, c in info.items() if c["synthetic_fold"] is None)
    assert sorted(p.name[: -len("_0000.png")] for p in (path / "imagesTs").iterdir()) == real_names
    assert sorted(p.name[: -len(".png")] for p in (path / "labelsTs").iterdir()) == real_names
    syn_names = {n for n, c in info.items() if c["synthetic_fold"] is not None}
    names_by_case = {}
    for n, c in info.items():
        if c["synthetic_fold"] is None:
            names_by_case.setdefault(c["case_id"], []).append(n)
    splits = _check_splits(path, ps, names_by_case, syn_names)
    assert not [n for n in splits[1]["train"] if n in syn_names]  # fold 1 had no synthetic set
    assert sum(n in syn_names for n in splits[0]["train"]) == 2 * len(ps.indices(ps.fold(0).train, training=True))


def test_msd_export_round_trip_and_schema(run2d, tmp_path):
    root, ps = run2d
    path = export_dataset(root / "prepared", tmp_path, ExportConfig(to="msd", dataset_id=42, name="Phantom", n=1),
                          progress=False)
    assert path.name == "Task42_Phantom"
    meta = json.loads((path / "dataset.json").read_text())
    assert set(meta) >= {"name", "modality", "labels", "numTraining", "numTest", "training", "test"}
    assert meta["modality"] == {"0": "US"} and meta["labels"]["0"] == "background"
    assert meta["numTraining"] == len(meta["training"]) == len(ps) + sum(
        len(ps.indices(ps.fold(k).train, training=True)) for k in (0, 2))
    for entry in meta["training"][:3]:
        assert (path / entry["image"]).exists() and (path / entry["label"]).exists()
    back = prepare(path, tmp_path / "back", PrepareConfig(size=32, format="msd"), progress=False)
    assert back.meta["num_cases"] == meta["numTraining"]
    info = {c["name"]: c for c in json.loads((path / "diffboost_export.json").read_text())["cases"]}
    for entry in meta["training"][:4]:
        name = entry["image"].split("/")[-1][: -len(".nii.gz")]
        m = np.asarray(back.masks[back.indices([name])[0]])
        assert np.array_equal(m, np.asarray(ps.masks[ps.indices([info[name]["case_id"]])[0]]))


def test_3d_sets_export_as_slices_or_volumes(tmp_path):
    from builders import make_msd

    ps = prepare(make_msd(tmp_path / "msd", n=3, spacing=(0.5, 0.5, 3.0)), tmp_path / "prepared",
                 PrepareConfig(size=16, folds=3), progress=False)
    vol = export_dataset(ps.root, tmp_path / "v", ExportConfig(volumes="volumes", dataset_id=3, name="Vol"), progress=False)
    meta = json.loads((vol / "dataset.json").read_text())
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 3
    reader = get_reader(vol, PrepareConfig(format="nnunet"))
    case = reader.load(reader.scan()[0])
    orig = ps.original_mask(case.ref.case_id)
    assert case.image.shape == orig.shape and np.array_equal(case.mask, orig)  # the whole volume as it was
    assert case.spacing == pytest.approx((0.5, 0.5, 3.0))
    work = export_dataset(ps.root, tmp_path / "w", ExportConfig(volumes="volumes", dataset_id=5, name="Vol", size="working"),
                          progress=False)
    reader = get_reader(work, PrepareConfig(format="nnunet"))
    case = reader.load(reader.scan()[0])
    orig = ps.original_mask(case.ref.case_id)
    assert case.image.shape == (16, 16, orig.shape[2])  # in-plane at the working size, every slice kept
    assert case.spacing == pytest.approx((0.5 * orig.shape[0] / 16, 0.5 * orig.shape[1] / 16, 3.0))
    sl = export_dataset(ps.root, tmp_path / "s", ExportConfig(dataset_id=4, name="Sl"), progress=False)
    assert json.loads((sl / "dataset.json").read_text())["numTraining"] == len(ps)


def test_export_refuses_bad_options_and_keeps_nothing_half_written(run2d, tmp_path):
    root, ps = run2d
    with pytest.raises(ValueError, match="letters"):
        ExportConfig(name="my data")
    with pytest.raises(ValueError, match="NIfTI"):
        ExportConfig(to="msd", file_ending=".png")
    export_dataset(root, tmp_path, ExportConfig(dataset_id=9, name="X", n=1), progress=False)
    with pytest.raises(FileExistsError):
        export_dataset(root, tmp_path, ExportConfig(dataset_id=9, name="X", n=1), progress=False)
    with pytest.raises(FileNotFoundError, match="neither a prepared set"):
        export_dataset(tmp_path / "nowhere", tmp_path, ExportConfig(), progress=False)
    with pytest.raises(ValueError, match="size"):
        ExportConfig(size="half")


def test_export_at_the_original_size_needs_the_unchanged_source(tmp_path, phantom_root):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(phantom_root, src)
    ps = prepare(src, tmp_path / "prepared", PrepareConfig(size=32, folds=3), progress=False)
    # a label fixed in the source after prepare: the export would pair the old label with it
    case = ps.case_ids[0]
    mask_file = ps.manifest[ps.indices([case])[0]]["source_mask"].split(";")[0]
    from PIL import Image

    arr = np.asarray(Image.open(mask_file)).copy()
    arr[:4, :4] = 255 - arr[:4, :4]
    Image.fromarray(arr).save(mask_file)
    with pytest.raises(ValueError, match="changed since"):
        export_dataset(ps.root, tmp_path / "out", ExportConfig(), progress=False)
    assert not (tmp_path / "out" / "Dataset501_DiffBoost").exists()  # nothing half-written
    shutil.rmtree(src)
    with pytest.raises(FileNotFoundError, match="is not there"):
        export_dataset(ps.root, tmp_path / "out", ExportConfig(), progress=False)
    # the working size needs only the prepared set
    assert (export_dataset(ps.root, tmp_path / "out", ExportConfig(size="working"), progress=False) / "dataset.json").exists()


def test_nnunet_verifies_the_exported_dataset(run2d, tmp_path):
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'diffboost[nnunet]')")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    root, ps = run2d
    path = export_dataset(root, tmp_path, ExportConfig(dataset_id=11, name="Verify", n=1), progress=False)
    verify_dataset_integrity(str(path), num_processes=1)  # raises on any problem nnU-Net would trip over
    splits = json.loads((path / "splits_final.json").read_text())
    tests = json.loads((path / "diffboost_export.json").read_text())["test_cases_per_fold"]
    for k, split in enumerate(splits):  # no case of a fold's test part is in its validation (or training) list
        assert tests[str(k)] and not set(tests[str(k)]) & (set(split["val"]) | set(split["train"]))


def test_export_command(run2d, tmp_path):
    from diffboost.cli import app

    root, _ = run2d
    r = CliRunner().invoke(app, ["export", str(root), "--to", "nnunet", "--dataset-id", "501", "--name", "BUSIBoost",
                                 "--out", str(tmp_path), "-n", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "Dataset501_BUSIBoost" / "splits_final.json").exists()


def test_images_without_a_label_and_a_label_budget_export_without_reading_a_hidden_label(tmp_path, phantom_root):
    """Images prepared without a label go to imagesUnlabelled (named for nnUNetv2_predict), never to imagesTr,
    and no variant of one is exported. A budget hides other labels in each fold: its set exports one fold,
    whose labelled cases (and the training ones' variants) are the cases, its test cases in imagesTs only,
    and its hidden cases unlabelled images without a label file. The set is bound to the fold, so reading a
    hidden label would raise."""
    import torch

    from diffboost.data.phantoms import generate_phantoms
    from diffboost.data.preparation import with_budget
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import new_pipeline
    from diffboost.generation import GenerateConfig, SyntheticSet, generate

    more = generate_phantoms(tmp_path / "more", n=4, seed=11)
    ps = prepare(phantom_root, tmp_path / "p", PrepareConfig(size=32, folds=3, unlabelled=[str(more)]), progress=False)
    unl = set(ps.unlabelled_cases)
    torch.manual_seed(0)
    new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True))).save_pretrained(
        tmp_path / "model")
    syn = generate(tmp_path / "model", ps, tmp_path / "synthetic" / "fold0", 0,
                   GenerateConfig(n=1, steps=1, batch_size=8, unlabelled=True), progress=False)
    assert {ps.manifest[r["real_index"]]["case_id"] for r in SyntheticSet(syn.root).manifest} & unl  # drawn, to leave out
    path = export_dataset(ps.root, tmp_path / "out", ExportConfig(dataset_id=12, name="Unl"), progress=False)
    info = json.loads((path / "diffboost_export.json").read_text())
    assert {u["case_id"] for u in info["unlabelled_images"]} == unl
    assert sorted(p.name for p in (path / "imagesUnlabelled").iterdir()) == sorted(
        f"{u['name']}_0000.png" for u in info["unlabelled_images"])
    assert not {c["case_id"] for c in info["cases"]} & unl  # neither a case nor a variant
    variants = [c for c in info["cases"] if c["synthetic_fold"] == 0]
    assert variants and all(c["case_id"] in ps.fold(0).train for c in variants)
    meta = json.loads((path / "dataset.json").read_text())
    assert meta["numTraining"] == len(list((path / "labelsTr").iterdir())) == len(info["cases"])

    full = prepare(phantom_root, tmp_path / "full", PrepareConfig(size=32, folds=3), progress=False)
    budget = with_budget(full, "0.5", tmp_path / "b")
    with pytest.raises(ValueError, match="export one fold at a time"):
        export_dataset(budget.root, tmp_path / "o", ExportConfig(), progress=False)
    f = budget.fold(1)
    assert f.hidden
    one = export_dataset(budget.root, tmp_path / "o", ExportConfig(dataset_id=13, name="B", fold=1), progress=False)
    info = json.loads((one / "diffboost_export.json").read_text())
    case_of = {c["name"]: c["case_id"] for c in info["cases"]}
    stems = lambda d: {p.name.removesuffix(".png").removesuffix("_0000") for p in (one / d).iterdir()}  # noqa: E731
    assert {case_of[n] for n in stems("labelsTr")} == set(f.train) | set(f.val)
    assert {case_of[n] for n in stems("imagesTr")} == set(f.train) | set(f.val)
    assert {case_of[n] for n in stems("labelsTs")} == set(f.test)
    assert {u["case_id"] for u in info["unlabelled_images"]} == set(f.unlabelled) == set(f.hidden)
    splits = json.loads((one / "splits_final.json").read_text())
    assert len(splits) == 1 and {case_of[n] for n in splits[0]["train"]} == set(f.train)
    assert info["fold"] == 1 and json.loads((one / "dataset.json").read_text())["numTraining"] == len(stems("labelsTr"))
    if importlib.util.find_spec("nnunetv2"):
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

        verify_dataset_integrity(str(path), num_processes=1)
        verify_dataset_integrity(str(one), num_processes=1)


def test_pseudo_labels_from_a_folds_predictions_join_its_one_fold_export(tmp_path, phantom_root):
    """`diffboost nnunet pseudo-label`: of nnUNetv2_predict's output for a one-fold export's imagesUnlabelled,
    the most confident share joins its training list, its uncertain pixels as nnU-Net's ignore label; an
    export of every fold (whose models learnt each other's test cases), a second call and missing
    predictions are refused before anything changes; an interrupted call's leftovers are replaced."""
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'diffboost[nnunet]')")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from PIL import Image

    from diffboost.cli import app
    from diffboost.data.phantoms import generate_phantoms

    more = generate_phantoms(tmp_path / "more", n=4, seed=11)
    ps = prepare(phantom_root, tmp_path / "p", PrepareConfig(size=32, folds=3, unlabelled=[str(more)]), progress=False)
    every = export_dataset(ps.root, tmp_path / "all", ExportConfig(dataset_id=15, name="All", size="working"), progress=False)
    path = export_dataset(ps.root, tmp_path / "raw", ExportConfig(dataset_id=14, name="Pl", size="working", fold=1),
                          progress=False)
    names = [u["name"] for u in json.loads((path / "diffboost_export.json").read_text())["unlabelled_images"]]
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, n in enumerate(names):  # image i: a square called lesion with confidence 0.99 - 0.05 i, an unsure strip
        h, w = np.asarray(Image.open(path / "imagesUnlabelled" / f"{n}_0000.png")).shape
        fg = np.full((h, w), 0.03, np.float32)
        fg[4:12, 4:12] = 0.99 - 0.05 * i
        fg[20:24] = 0.45
        seg = (fg > 0.5).astype(np.uint8)
        Image.fromarray(seg).save(pred / f"{n}.png")
        np.savez_compressed(pred / f"{n}.npz", probabilities=np.stack([1 - fg, fg])[:, None])
    r = CliRunner().invoke(app, ["nnunet", "pseudo-label", str(every), str(pred)])
    assert r.exit_code != 0 and "export one fold" in r.output
    before = (path / "splits_final.json").read_text()
    (pred / f"{names[-1]}.npz").rename(tmp_path / "away.npz")
    r = CliRunner().invoke(app, ["nnunet", "pseudo-label", str(path), str(pred)])
    assert r.exit_code != 0 and f"{names[-1]}.npz" in r.output
    assert (path / "splits_final.json").read_text() == before and not list((path / "imagesTr").glob("*_pseudo_*"))
    (tmp_path / "away.npz").rename(pred / f"{names[-1]}.npz")
    stray = json.loads(before)  # what a call stopped before its record would leave: a file and a list entry
    stray[0]["train"].append(f"{names[3]}_pseudo_f0")
    (path / "splits_final.json").write_text(json.dumps(stray))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path / "labelsTr" / f"{names[3]}_pseudo_f0.png")
    r = CliRunner().invoke(app, ["nnunet", "pseudo-label", str(path), str(pred), "--keep", "0.5"])
    assert r.exit_code == 0, r.output
    added = [f"{n}_pseudo_f0" for n in names[:2]]  # the two most confident
    splits, old = json.loads((path / "splits_final.json").read_text()), json.loads(before)
    assert len(splits) == 1 and splits[0]["train"] == old[0]["train"] + added and splits[0]["val"] == old[0]["val"]
    assert not (path / "labelsTr" / f"{names[3]}_pseudo_f0.png").exists()
    meta = json.loads((path / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == 2 and meta["numTraining"] == len(list((path / "labelsTr").iterdir()))
    first = np.asarray(Image.open(path / "labelsTr" / f"{added[0]}.png"))
    assert (first[4:12, 4:12] == 1).all() and (first[20:24] == 2).all() and (first[:4] == 0).all()
    second = np.asarray(Image.open(path / "labelsTr" / f"{added[1]}.png"))
    assert (second[4:12, 4:12] == 2).all()  # 0.94 <= 0.95: out of the loss, not called lesion
    assert (path / "imagesTr" / f"{added[0]}_0000.png").read_bytes() == (
        path / "imagesUnlabelled" / f"{names[0]}_0000.png").read_bytes()
    verify_dataset_integrity(str(path), num_processes=1)
    r = CliRunner().invoke(app, ["nnunet", "pseudo-label", str(path), str(pred)])
    assert r.exit_code != 0 and "already trains on pseudo-labels" in r.output
