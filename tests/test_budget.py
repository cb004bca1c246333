"""Few labels, many images: unlabelled images in the prepared set, label budgets (nested, test folds
unchanged, hidden labels unreachable), and repeated k-fold partitions with their corrected interval."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.data.store import HiddenLabel, PreparedSet
from diffboost.errors import DataError


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from diffboost.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("few")
    labelled = generate_phantoms(root / "busi", n=30, seed=3)
    more = generate_phantoms(root / "more", n=6, seed=11)  # another BUSI-layout download: its masks go unread
    plain = root / "plain" / "scanner2"
    plain.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(3):  # a plain folder of images, no layout, no masks
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(plain / f"img{i}.png")
    return labelled, more, plain.parent


def _prep(sources, tmp, **cfg) -> PreparedSet:
    labelled = sources[0]
    return prepare(labelled, tmp, PrepareConfig(size=32, **cfg), progress=False)


def test_unlabelled_images_are_marked_and_never_validate_or_test(sources, tmp_path):
    labelled, more, plain = sources
    ps = _prep(sources, tmp_path / "p", unlabelled=[str(more), str(plain)])
    unl = set(ps.unlabelled_cases)
    assert len(unl) == 6 + 3 and all(c.startswith(("more/", "plain/")) for c in unl)
    assert ps.meta["num_unlabelled_cases"] == 9 and ps.meta["num_labelled_cases"] == 30
    assert {r["case_id"] for r in ps.manifest if not r["labelled"]} == unl
    for f in ps.folds:
        assert not unl & set(f.train + f.val + f.test)  # never trained on as labelled, validated, tested
        assert set(f.unlabelled) == unl
    # the same labelled cases, folds and masks as without them
    base = _prep(sources, tmp_path / "base")
    assert [f.test for f in ps.folds] == [f.test for f in base.folds]
    assert [f.train for f in ps.folds] == [f.train for f in base.folds]
    # an unlabelled image's condition is its edges alone (no mask boundary), and its label unreadable
    u = ps.indices(sorted(unl))
    with pytest.raises(HiddenLabel, match="prepared without a label"):
        ps.masks[u]
    with pytest.raises(HiddenLabel):
        ps.for_fold(0).conditions[u[0]]
    assert np.array_equal(np.asarray(ps._conditions[u]), np.asarray(ps.edges[u]))
    assert all(ps.manifest[i]["prompt"].startswith("US, Breast") for i in u)  # modality/organ of the task
    # a plain folder's images have no category
    assert {ps.manifest[i]["category"] for i in ps.indices([c for c in unl if c.startswith("plain/")])} == {"unknown"}


def test_a_near_duplicate_of_a_labelled_image_among_unlabelled_ones_is_refused(sources, tmp_path):
    labelled, _, _ = sources
    extra = tmp_path / "extra"
    extra.mkdir()
    shown = next((labelled / "Dataset_BUSI_with_GT" / "benign").glob("benign (1).png"), None) or next(
        p for p in labelled.rglob("*.png") if "_mask" not in p.name)
    shutil.copy(shown, extra / "copy_of_a_test_case.png")
    with pytest.raises(DataError, match="near-duplicates of labelled images") as e:
        _prep(sources, tmp_path / "p", unlabelled=[str(extra)])
    assert "copy_of_a_test_case.png" in str(e.value) and shown.name in str(e.value)
    assert not (tmp_path / "p").exists()


def test_budgets_are_nested_and_keep_the_test_folds(sources, tmp_path):
    full = _prep(sources, tmp_path / "full")
    sets = {b: _prep(sources, tmp_path / f"b{b}", budget=b) for b in ("0.25", "0.5", "12")}
    for k, f in enumerate(full.folds):
        small, large, n12 = (sets[b].folds[k] for b in ("0.25", "0.5", "12"))
        pool = set(f.train + f.val)
        for g in (small, large, n12):
            assert g.test == f.test  # the same test folds at every budget
            assert set(g.train + g.val + g.hidden) == pool and not set(g.hidden) & set(g.train + g.val)
            assert set(g.unlabelled) == set(g.hidden)
            assert len(g.val) >= 1 and len(g.train) >= 1
        assert set(small.train + small.val) <= set(large.train + large.val)  # nested
        assert len(small.train + small.val) == round(0.25 * len(pool))
        assert len(n12.train + n12.val) == 12
        assert len(small.val) < len(f.val)  # the validation part shrinks with the budget: its labels count
    assert sets["0.25"].meta["budget"] == "0.25"


def test_a_stage_asking_for_a_hidden_label_fails(sources, tmp_path):
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import TrainConfig, train_diffusion

    ps = _prep(sources, tmp_path / "p", budget="0.25")
    f = ps.fold(0)
    bound = ps.for_fold(0)
    hidden = ps.indices(f.hidden, training=True)
    assert bound.masks[ps.indices(f.train)].shape[0] == len(f.train)  # its own labels are readable
    assert bound.original_mask(f.test[0]) is not None
    with pytest.raises(HiddenLabel, match="hidden in fold 0 by the label budget 0.25"):
        bound.original_mask(f.hidden[0])
    with pytest.raises(HiddenLabel):
        ps.masks[hidden[0]]  # unbound: a label some fold hides is nobody's
    with pytest.raises(HiddenLabel):
        np.asarray(bound.masks)
    with pytest.raises(HiddenLabel, match="hidden in fold 0"):  # a real stage, handed the hidden cases
        train_diffusion(bound, tmp_path / "model", hidden, ModelConfig(image_size=32, channels=(8, 16), attention=(False, True),
                                                                    layers_per_block=1),
                        TrainConfig(steps=1, batch_size=2, condition="condition"), progress=False)


def test_repeated_partitions_and_their_interval(sources, tmp_path):
    from diffboost.evaluation.stats import corrected_interval, holdout_ratio

    ps = _prep(sources, tmp_path / "p", folds=3, repeats=2)
    assert len(ps.folds) == 6 and [f.partition for f in ps.folds] == [0, 0, 0, 1, 1, 1]
    assert [f.index for f in ps.folds] == list(range(6))
    for p in (0, 1):
        tests = [c for f in ps.folds if f.partition == p for c in f.test]
        assert len(tests) == len(set(tests)) == 30  # every case tested once per partition
    assert [f.test for f in ps.folds[:3]] != [f.test for f in ps.folds[3:]]  # the partitions differ
    single = _prep(sources, tmp_path / "single", folds=3)
    assert [f.test for f in ps.folds[:3]] == [f.test for f in single.folds]  # partition 0 = the single k-fold
    # the corrected interval over r x k = 6 runs: 5 degrees of freedom, variance x (1/6 + n_test/n_train)
    diffs = {(k, 0): float(d) for k, d in enumerate([1, 2, 3, 4, 5, 6])}
    iv = corrected_interval(diffs, 0.5)
    # by hand: mean 3.5, sample variance 3.5, x (1/6 + 0.5) = 2.3333, se 1.5275, t(0.975, 5) = 2.5706
    assert iv.df == 5 and iv.mean == pytest.approx(3.5)
    assert iv.high - iv.mean == pytest.approx(2.5706 * np.sqrt(3.5 * (1 / 6 + 0.5)), abs=1e-3)
    assert holdout_ratio(ps.folds) == pytest.approx(np.mean([len(f.test) / (len(f.train) + len(f.val)) for f in ps.folds]))


def test_prepare_cli_takes_budget_repeats_and_unlabelled(sources, tmp_path):
    labelled, more, _ = sources
    out = tmp_path / "p"
    r = subprocess.run([str(Path(sys.executable).parent / "diffboost"), "prepare", str(labelled), "--out", str(out),
                        "--size", "32", "--budget", "25%", "--repeats", "2", "--unlabelled", str(more)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "labelled / unlabelled cases" in r.stdout and "30 / 6" in r.stdout and "2 partitions" in r.stdout
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["budget"] == "25%" and meta["repeats"] == 2 and len(meta["labels_per_fold"]) == 6
    bad = subprocess.run([str(Path(sys.executable).parent / "diffboost"), "prepare", str(labelled), "--out",
                          str(tmp_path / "q"), "--budget", "1.5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "budget '1.5'" in bad.stderr and not (tmp_path / "q").exists()


def test_a_budget_derived_from_a_full_set_is_the_budget_prepare_writes(sources, tmp_path):
    from diffboost.data.preparation import with_budget

    full = _prep(sources, tmp_path / "full", repeats=2)
    derived = with_budget(full, "0.25", tmp_path / "b")
    direct = _prep(sources, tmp_path / "direct", repeats=2, budget="0.25")
    assert [f.to_dict() for f in derived.folds] == [f.to_dict() for f in direct.folds]
    assert np.array_equal(np.asarray(derived._masks), np.asarray(full._masks))
    assert with_budget(full, "0.25", tmp_path / "b").root == derived.root  # reused
    assert with_budget(full, "25%", tmp_path / "b").root == derived.root  # the same budget, written otherwise
    with pytest.raises(FileExistsError):
        with_budget(full, "0.5", tmp_path / "b")


def test_a_run_identity_holds_the_unlabelled_images_content_not_their_place(sources, tmp_path):
    from diffboost.run import prepare_identity
    from diffboost.stages import source_fingerprint

    labelled, more, _ = sources
    assert prepare_identity(PrepareConfig(unlabelled=["/a/scanner2"])) == prepare_identity(PrepareConfig(unlabelled=["/b/x"]))
    copy = tmp_path / "more"
    shutil.copytree(more, copy)
    cfg = PrepareConfig(unlabelled=[str(copy)])
    before = source_fingerprint(labelled, cfg)
    assert before != source_fingerprint(labelled, PrepareConfig())
    img = next(p for p in copy.rglob("*.png") if "_mask" not in p.name)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(img)  # an unlabelled image changed in place
    assert source_fingerprint(labelled, cfg) != before


def test_an_unlabelled_folder_in_a_labelled_layout_gives_every_image(tmp_path):
    from diffboost.data.readers.unlabelled import UnlabelledReader

    for name in ("a", "b", "c"):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "a.png")  # one image has a mask
    refs = UnlabelledReader(tmp_path, PrepareConfig(), prefix=False).scan()
    assert sorted(r.case_id for r in refs) == ["a", "b", "c"] and all(not r.masks for r in refs)
    (tmp_path / "masks" / "a.png").rename(tmp_path / "masks" / "zz.png")  # no mask pairs with any image
    refs = UnlabelledReader(tmp_path, PrepareConfig(), prefix=False).scan()
    assert sorted(r.case_id for r in refs) == ["a", "b", "c"]  # the image folder's files, never the masks
