"""Across sites: `prepare SOURCE --target DIR` tests on the target's cases, trains on every source case,
and gives each fold the target's other cases as unlabelled training images whose labels stay hidden."""

from __future__ import annotations

import numpy as np
import pytest

from diffboost.config import PrepareConfig
from diffboost.data.folds import cross_site_folds
from diffboost.data.preparation import prepare
from diffboost.data.store import HiddenLabel
from diffboost.errors import DataError
from builders import disk, gradient_image, save_png


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from diffboost.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("sites")
    source = generate_phantoms(root / "src", n=15, seed=21)
    target = root / "hospital2"  # an images/ + masks/ layout; two images of one patient (p3)
    for i in range(8):
        name = f"p{i}_a" if i != 7 else "p3_b"
        save_png(target / "images" / f"{name}.png", gradient_image(48, 56, 30 + i))
        save_png(target / "masks" / f"{name}.png", disk(48, 56, 20 + i, 25, 6).astype(np.uint8) * 255)
    return source, target


def test_the_target_makes_the_test_folds_and_its_training_labels_stay_hidden(sites, tmp_path):
    source, target = sites
    ps = prepare(source, tmp_path / "p", PrepareConfig(size=32, folds=4, repeats=2, target=str(target)), progress=False)
    tcases = {c for c in ps.case_ids if c.startswith("hospital2/")}
    scases = set(ps.case_ids) - tcases
    assert len(tcases) == 8 and ps.meta["cross_site"]["target_cases"] == 8
    assert ps.meta["cross_site"]["source_cases"] == len(scases) > 0
    for p in (0, 1):
        part = [f for f in ps.folds if f.partition == p]
        assert sorted(c for f in part for c in f.test) == sorted(tcases)  # each target case tested once
        for f in part:
            assert set(f.test) <= tcases and set(f.train + f.val) <= scases  # train and validate on the source
            assert set(f.train + f.val) == scases
            assert set(f.unlabelled) == set(f.hidden) == tcases - set(f.test)
    assert [f.test for f in ps.folds if f.partition == 0] != [f.test for f in ps.folds if f.partition == 1]
    f = ps.fold(0)
    bound = ps.for_fold(0)
    assert bound.original_mask(f.test[0]) is not None  # a test case's label is read for scoring
    with pytest.raises(HiddenLabel, match="hidden in fold 0"):
        bound.masks[ps.indices(f.hidden[:1])]


def test_cross_site_folds_by_hand():
    src = [f"s{i}" for i in range(10)]
    tgt = [f"t{i}" for i in range(6)]
    strata = {c: "a" if int(c[1:]) % 2 else "b" for c in src + tgt}
    folds = cross_site_folds(src, tgt, 3, 0.2, 0, strata, [["t0", "t1"]])
    assert [len(f.test) for f in folds] and sum(len(f.test) for f in folds) == 6
    assert all({"t0", "t1"} <= set(f.test) or not {"t0", "t1"} & set(f.test) for f in folds)
    assert all(len(f.val) == 2 and f.val == folds[0].val for f in folds)  # the same source validation part
    with pytest.raises(ValueError, match="spans the source and the target"):
        cross_site_folds(src, tgt, 3, 0.2, 0, strata, [["s0", "t0"]])


def test_bad_targets_are_refused_before_any_work(sites, tmp_path):
    source, target = sites
    with pytest.raises(ValueError, match="do not combine"):
        PrepareConfig(target=str(target), budget="0.1")
    with pytest.raises(DataError, match="--target: not found"):
        prepare(source, tmp_path / "p", PrepareConfig(size=32, target=str(tmp_path / "nowhere")), progress=False)
    plain = tmp_path / "plain" / "imgs"
    save_png(plain / "a.png", gradient_image(20, 20, 1))
    with pytest.raises(DataError):
        prepare(source, tmp_path / "p2", PrepareConfig(size=32, target=str(plain.parent)), progress=False)
    assert not (tmp_path / "p").exists() and not (tmp_path / "p2").exists()


def test_busi_to_busbra_keeps_each_patient_in_one_test_fold(tmp_path):
    from conftest import shared_path

    busi, busbra = shared_path("BUSI"), shared_path("BUS-BRA")
    ps = prepare(busi, tmp_path / "p", PrepareConfig(size=32, folds=5, target=str(busbra)), progress=False)
    rows = [r for r in ps.manifest if r["case_id"].startswith(f"{busbra.name}/")]
    assert ps.meta["cross_site"]["target_cases"] == len({r["case_id"] for r in rows}) > 600
    assert {r["device"] for r in rows} - {""}  # the scanner is kept, and ends the target's prompts
    from diffboost.conditioning.prompts import site_style

    assert all(r["prompt"].endswith(", " + site_style(r["device"], busbra.name)) for r in rows)
    assert any(r["prompt"].endswith("GE Logiq 7") for r in rows)
    assert not any("Logiq" in r["prompt"] for r in ps.manifest if r not in rows)
    import csv

    with open(busbra / "bus_data.csv", newline="") as fh:
        patient = {row["ID"]: row["Case"] for row in csv.DictReader(fh)}
    fold_of = {c: f.index for f in ps.folds for c in f.test}
    by_patient: dict[str, set[int]] = {}
    for c in fold_of:
        by_patient.setdefault(patient[c.split("/", 1)[1]], set()).add(fold_of[c])
    assert all(len(v) == 1 for v in by_patient.values())  # no patient in two test folds
    assert len(by_patient) < len(fold_of)  # patients with several images exist, and were kept together
    for f in ps.folds:
        assert not any(c.startswith(f"{busbra.name}/") for c in f.train + f.val)


def test_histmatch_variants_take_the_intensities_of_the_unlabelled_images_and_train(sites, tmp_path):
    import torch

    from diffboost.segmentation.config import SegConfig
    from diffboost.segmentation.trainer import train_seg
    from diffboost.segmentation.variants import histmatch_variants

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    refs = torch.rand(4, 1, 16, 16, generator=g) ** 3  # another site's look: other intensities
    pool = histmatch_variants(images, [10, 11, 12], refs, n=2)
    assert pool.images.shape == (6, 1, 16, 16) and pool.counts.tolist() == [2, 2, 2]
    for j in range(3):
        for v in range(2):
            out = pool.images[pool.rows[j, v], 0].flatten()
            # the variant's values are a reference's values, in the order of the image's own
            assert any(torch.allclose(out.sort().values, r.flatten().sort().values, atol=1e-6) for r in refs[:, 0])
            assert torch.equal(out.argsort(stable=True), images[j, 0].flatten().argsort(stable=True))
    source, target = sites
    ps = prepare(source, tmp_path / "p", PrepareConfig(size=32, folds=4, target=str(target)), progress=False)
    cfg = SegConfig(network="unet", channels=(8, 16, 32), size=32, epochs=1, batch_size=4, steps_per_epoch=2,
                    min_val_cases=1, aug="histmatch+classic", threads=1)
    summary = train_seg(ps, 0, cfg, tmp_path / "seg", progress=False)
    assert summary["identity"]["synthetic_variants"]["source"] == "histmatch" and summary["identity"]["unlabelled_cases"]


def test_target_prompts_carry_the_scanner_and_target_style_variants_draw_from_the_targets_mix(sites, tmp_path):
    import torch

    from diffboost.conditioning.prompts import site_style
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import new_pipeline
    from diffboost.generation import GenerateConfig, generate
    from diffboost.runconfig import load_run_config

    assert site_style("GE Logiq 7 @10-14MHz", "BUS-BRA") == "GE Logiq 7" and site_style("", "BUS-BRA") == "BUS-BRA"
    source, target = sites
    ps = prepare(source, tmp_path / "prepared", PrepareConfig(size=32, folds=4, target=str(target)), progress=False)
    for r in ps.manifest:  # the target's prompts end with its scanner (here: no Device column, the site)
        assert r["prompt"].endswith(", hospital2") == r["case_id"].startswith("hospital2/")
        if r["case_id"].startswith("hospital2/"):  # the source's task, no category invented
            assert r["prompt"] == "US, Breast, unknown, hospital2"
    torch.manual_seed(0)
    new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True))).save_pretrained(tmp_path / "m")
    cfg = GenerateConfig(n=2, steps=2, batch_size=64, target_style=True)
    syn = generate(tmp_path / "m", ps, tmp_path / "synthetic_diffboost-target" / "fold0", 0, cfg, progress=False)
    source_rows = [r for r in syn.manifest if not r["case_id"].startswith("hospital2/")]
    assert source_rows and all(r["prompt"] == ps.manifest[r["real_index"]]["prompt"] + ", hospital2" for r in source_rows)
    assert syn.meta["identity"]["target_style"] is True
    from diffboost.report import write_report

    html = write_report(tmp_path).read_text()  # the grid of source images in the target's styles
    assert "target&#x27;s scanner styles" in html or "target's scanner styles" in html
    assert (tmp_path / "figures" / "target_styles.png").stat().st_size > 0
    # a run config asking for diffboost-target without a target or a generator that learns the target is refused
    f = tmp_path / "t.yaml"
    f.write_text(f"prepare:\n  target: {target}\ncompare:\n  augs: [classic, diffboost-target+classic]\n")
    with pytest.raises(ValueError, match="train.unlabelled: true"):
        load_run_config(f)
    f.write_text(f"prepare:\n  target: {target}\ntrain:\n  unlabelled: true\ncompare:\n  augs: [diffboost-target+classic]\n")
    assert load_run_config(f).train.unlabelled


def test_the_target_supervised_ceiling_trains_on_the_targets_other_cases(sites, tmp_path):
    from diffboost.data.preparation import target_supervised, with_budget

    source, target = sites
    ps = prepare(source, tmp_path / "p", PrepareConfig(size=32, folds=4, target=str(target)), progress=False)
    top = target_supervised(ps, tmp_path / "ceiling")
    assert target_supervised(ps, tmp_path / "ceiling").root == top.root  # reused
    tcases = {c for c in ps.case_ids if c.startswith("hospital2/")}
    for f, g in zip(ps.folds, top.folds):
        assert g.test == f.test and set(g.train + g.val) == tcases - set(f.test) and g.val and not g.hidden
    bound = top.for_fold(0)
    assert bound.masks[top.indices(top.fold(0).train)].shape[0] == len(top.fold(0).train)
    with pytest.raises(HiddenLabel):  # the source is not this fold's
        bound.masks[top.indices([c for c in ps.case_ids if c not in tcases][:1])]
    with pytest.raises(ValueError, match="takes no label budget"):
        with_budget(ps, "0.5", tmp_path / "b")


@pytest.mark.parametrize("aug", ["histmatch+classic", "fixmatch"])
def test_no_target_training_label_is_read_in_training_or_selection(sites, tmp_path, aug):
    import shutil

    from diffboost.data.store import PreparedSet
    from diffboost.segmentation.config import SegConfig
    from diffboost.segmentation.trainer import train_seg

    source, target = sites
    ps = prepare(source, tmp_path / "p", PrepareConfig(size=32, folds=4, target=str(target)), progress=False)
    shutil.copytree(ps.root, tmp_path / "q")
    masks = np.load(tmp_path / "q" / "masks.npy")
    hidden = ps.indices(ps.fold(0).hidden)  # the target's training cases of fold 0: their labels scrambled
    masks[hidden] = np.random.default_rng(1).integers(0, 2, masks[hidden].shape, dtype=masks.dtype)
    np.save(tmp_path / "q" / "masks.npy", masks)
    cfg = SegConfig(network="unet", channels=(8, 16, 32), size=32, epochs=2, batch_size=4, steps_per_epoch=2,
                    min_val_cases=1, aug=aug, threads=1, unlabelled_batch=4, confidence=0.5)
    a = train_seg(ps, 0, cfg, tmp_path / "a", progress=False)
    b = train_seg(PreparedSet(tmp_path / "q"), 0, cfg, tmp_path / "b", progress=False)
    assert a["metrics"] == b["metrics"] and a["best_epoch"] == b["best_epoch"]
    pa, pb = np.load(tmp_path / "a" / "predictions.npz"), np.load(tmp_path / "b" / "predictions.npz")
    assert all(np.array_equal(pa[k], pb[k]) for k in pa.files)
