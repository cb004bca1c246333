"""Stage 4: strategies, training with Algorithm 1 on real generated variants, selection, resume,
evaluation on whole cases, the comparison table and the CLI verbs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.segmentation import SegConfig, compare, load_segmenter, parse_strategy, train_seg
from diffboost.segmentation.augment import CLASSICAL, DEEPSTACK, BatchAugmenter
from diffboost.segmentation.predict import predict_cases

FAST = dict(channels=(8, 16, 32), epochs=2, batch_size=4)


@pytest.fixture(scope="module")
def task(tmp_path_factory, phantom_root):
    """Phantoms prepared at 32 px, a tiny diffusion model, and REAL generated variants for folds 0, 1."""
    from builders import prepared_with_variants

    root = tmp_path_factory.mktemp("seg")
    return root, prepared_with_variants(root, phantom_root, folds=(0, 1))


# ---- strategies ----------------------------------------------------------------------------------

def test_strategy_names():
    assert parse_strategy("none") == (None, "none")
    assert parse_strategy("diffboost") == ("diffboost", "none")
    assert parse_strategy("diffboost+deepstack") == ("diffboost", "deepstack")
    for bad in ("blur", "diffboost+pix2pix", "mirror+rotate", ""):
        with pytest.raises(ValueError, match="strategy"):
            parse_strategy(bad)


@pytest.mark.parametrize("name", [*CLASSICAL, DEEPSTACK])
def test_each_classical_strategy_changes_images_and_keeps_labels_aligned(name):
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(8, 1, 32, 32, dtype=torch.long)
    labels[:, :, 4:14, 6:20] = 1
    labels[:, :, 20:26, 10:14] = 1
    images = labels.float() * 1.2 - 0.6 + 0.05 * torch.randn(8, 1, 32, 32, generator=g)
    aug = BatchAugmenter(name, prob=1.0, seed=0)
    changed = False
    for step in range(4):
        xi, yi = aug(torch.cat([images, images], 1), labels, epoch=0, step=step)
        assert xi.shape == (8, 2, 32, 32) and yi.shape == labels.shape and yi.dtype == labels.dtype
        if name in ("noise", DEEPSTACK):  # fresh noise per image, the rest shared
            assert torch.corrcoef(torch.stack([xi[:, 0].flatten(), xi[:, 1].flatten()]))[0, 1] > 0.9
        else:
            assert torch.equal(xi[:, 0], xi[:, 1])  # a real image and its variant move together
        assert set(torch.unique(yi).tolist()) <= {0, 1}
        changed |= not torch.equal(xi[:, :1], images)
        if name in ("mirror", "rotate", "scale"):
            # geometry: the label still sits on the bright structure
            inside = xi[:, 0][yi[:, 0] == 1].mean()
            outside = xi[:, 0][yi[:, 0] == 0].mean()
            assert inside - outside > 0.8
        elif name != DEEPSTACK:
            assert torch.equal(yi, labels)
    assert changed
    x1, _ = aug(images, labels, epoch=3, step=1)
    x2, _ = aug(images, labels, epoch=3, step=1)
    assert torch.equal(x1, x2)  # reproducible from (seed, epoch, step)


# ---- training and evaluation ---------------------------------------------------------------------

def test_train_seg_with_generated_variants(task):
    root, ps = task
    out = root / "runs" / "diffboost"
    s = train_seg(ps, 0, SegConfig(aug="diffboost", **FAST), out, progress=False)
    test_cases = ps.fold(0).test
    assert s["cases"] == len(test_cases) and 0 <= s["best_epoch"] < 2
    assert set(s["metrics"]) == {"dice", "precision", "recall", "hd95", "assd"}
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == list(test_cases)
    assert all(not np.isnan(float(r["hd95"])) for r in rows)
    log = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in log] == [0, 1] and all(r["val_dice"] for r in log)
    assert not (out / "state").exists()  # finished: only the selected model stays
    # the saved model (safetensors + config.json) reproduces the stored test predictions
    net, cfg = load_segmenter(out / "model")
    assert cfg["network"] == "attention_unet" and cfg["size"] == 32 and (out / "model" / "model.safetensors").exists()
    preds = np.load(out / "predictions.npz")
    for case, pred, _ in predict_cases(net, ps, test_cases[:2], 32):
        assert np.array_equal(pred, preds[case])
        assert pred.shape == ps.original_mask(case).shape  # the original image size


def test_finished_fold_is_not_retrained_and_other_settings_are_refused(task, monkeypatch):
    root, ps = task
    out = root / "runs" / "none"
    first = train_seg(ps, 0, SegConfig(**FAST), out, progress=False)
    import diffboost.segmentation.trainer as trainer

    monkeypatch.setattr(trainer, "_train_epoch", lambda *a, **k: pytest.fail("retrained a finished fold"))
    assert train_seg(ps, 0, SegConfig(**FAST), out, progress=False) == first
    with pytest.raises(ValueError, match="other settings.*epochs"):
        train_seg(ps, 0, SegConfig(**{**FAST, "epochs": 3}), out, progress=False)


def test_interrupted_training_resumes_to_the_same_weights(task, monkeypatch):
    root, ps = task
    cfg = SegConfig(**{**FAST, "epochs": 3}, aug="diffboost+mirror")
    whole = train_seg(ps, 1, cfg, root / "runs" / "whole", progress=False)
    import diffboost.segmentation.trainer as trainer

    real_epoch = trainer._train_epoch

    def stop_at_two(net, opt, loss_fn, data, c, augment, patch, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(net, opt, loss_fn, data, c, augment, patch, epoch, **kw)

    monkeypatch.setattr(trainer, "_train_epoch", stop_at_two)
    with pytest.raises(KeyboardInterrupt):
        train_seg(ps, 1, cfg, root / "runs" / "cut", progress=False)
    assert (root / "runs" / "cut" / "state").exists() and not (root / "runs" / "cut" / "summary.json").exists()
    monkeypatch.setattr(trainer, "_train_epoch", real_epoch)
    resumed = train_seg(ps, 1, cfg, root / "runs" / "cut", progress=False)
    from safetensors.torch import load_file

    a = load_file(str(root / "runs" / "whole" / "model" / "model.safetensors"))
    b = load_file(str(root / "runs" / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"] == whole["metrics"]
    assert len(list(csv.DictReader(open(root / "runs" / "cut" / "log.csv")))) == 3


def test_output_mixing_and_options_run(task):
    root, ps = task
    s = train_seg(ps, 0, SegConfig(**FAST, aug="diffboost", mix="output", alpha=0.3, patch=8, n=1),
                  root / "runs" / "output_mix", progress=False)
    assert s["identity"]["config"]["mix"] == "output" and s["identity"]["config"]["n"] == 1


def test_synthetic_sets_of_other_folds_are_refused(task):
    root, ps = task
    with pytest.raises(ValueError, match="fold 1, not fold 0"):
        train_seg(ps, 0, SegConfig(**FAST, aug="diffboost", synthetic=str(root / "synthetic" / "fold1")),
                  root / "runs" / "leak", progress=False)
    with pytest.raises(FileNotFoundError, match="not a synthetic set"):
        train_seg(ps, 2, SegConfig(**FAST, aug="diffboost"), root / "runs" / "missing", progress=False)
    with pytest.raises(ValueError, match="n=5"):
        train_seg(ps, 0, SegConfig(**FAST, aug="diffboost", n=5), root / "runs" / "n5", progress=False)


def test_volumes_are_evaluated_whole_at_their_original_size_in_mm(tmp_path):
    from builders import make_msd

    import diffboost.segmentation.predict as predict

    ps = prepare(make_msd(tmp_path / "msd", n=6, spacing=(0.5, 0.5, 3.0)), tmp_path / "prepared",
                 PrepareConfig(size=32, folds=3, label_map={1: 1, 2: 2}), progress=False)
    s = train_seg(ps, 0, SegConfig(**FAST), tmp_path / "seg", progress=False)
    preds = np.load(tmp_path / "seg" / "predictions.npz")
    for case in ps.fold(0).test:
        assert preds[case].shape == ps.original_mask(case).shape  # the whole volume, every slice
    assert s["cases"] == len(ps.fold(0).test)
    # an oracle network (one-hot of the stored masks) scores near-perfectly on the reassembled volumes
    masks = torch.from_numpy(np.asarray(ps.masks, np.int64))

    def oracle(net, images, batch_size=32, channels_last=False):
        hits = [int(np.flatnonzero((np.asarray(ps.images, np.float32) == images[j, 0].numpy()).all((1, 2)))[0])
                for j in range(len(images))]
        return torch.nn.functional.one_hot(masks[hits], 3).permute(0, 3, 1, 2).float()

    orig = predict.predict_probs
    predict.predict_probs = oracle
    try:
        metric, _ = predict.evaluate_cases(None, ps, ps.fold(0).test, 32, labels=[1, 2])
    finally:
        predict.predict_probs = orig
    for row in metric.rows:
        assert row["dice"] > 0.9 and row["hd95"] <= 3.0  # mm: at most one slice of 3 mm off
    rows = [r for r in ps.manifest if r["case_id"] == ps.fold(0).test[0]]
    assert len(rows) == ps.original_mask(ps.fold(0).test[0]).shape[rows[0]["slice_axis"]]


def test_compare_writes_table_ii_on_the_same_folds(task):
    root, ps = task
    res = compare(ps, ["none", "mirror", "diffboost"], SegConfig(**FAST), root / "cmp", folds=[0, 1], progress=False)
    table = res["table"]
    assert list(table) == ["none", "mirror", "diffboost"]
    n_cases = len(ps.fold(0).test) + len(ps.fold(1).test)
    assert all(e["cases"] == n_cases for e in table.values())
    assert "dice_gain_vs_none" in table["diffboost"] and "wilcoxon_p_vs_none" in table["mirror"]
    rows = list(csv.DictReader(open(root / "cmp" / "compare" / "cases.csv")))
    assert len(rows) == 3 * n_cases
    by = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append((r["fold"], r["case_id"]))
    assert by["none"] == by["mirror"] == by["diffboost"]  # same folds, same cases
    md = (root / "cmp" / "compare" / "table.md").read_text()
    assert md.count("**") >= 10 and "Dice ↑" in md and "HD95 ↓ (px)" in md
    saved = json.loads((root / "cmp" / "compare" / "table.json").read_text())
    assert saved["table"]["none"]["dice"]["mean"] == pytest.approx(table["none"]["dice"]["mean"])
    # every strategy started from the same weights: seed is part of each run's identity
    ids = {json.loads((root / "cmp" / "seg" / s / "fold0" / "run.json").read_text())["config"]["seed"] for s in table}
    assert ids == {0}


def test_cli_train_seg_and_compare(task):
    from diffboost.cli import app

    root, ps = task
    runner = CliRunner()
    r = runner.invoke(app, ["train-seg", str(ps.root), "--fold", "0", "--aug", "gamma", "--channels", "8,16,32",
                            "--epochs", "1", "--batch-size", "4", "--out", str(root / "cli" / "gamma"), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((root / "cli" / "gamma" / "summary.json").read_text())["strategy"] == "gamma"
    r = runner.invoke(app, ["compare", str(ps.root), "--augs", "none,contrast", "--folds", "1", "--channels", "8,16,32",
                            "--epochs", "1", "--batch-size", "4", "--out", str(root / "cli"), "-q"])
    assert r.exit_code == 0, r.output
    assert "| contrast |" in r.output and (root / "cli" / "compare" / "table.md").exists()
    r = runner.invoke(app, ["train-seg", str(ps.root), "--aug", "sharpen", "-q"])
    assert r.exit_code == 2 and "unknown augmentation strategy 'sharpen'" in r.output


def test_prefetching_the_next_batch_changes_nothing(task):
    from monai.losses import DiceCELoss

    import diffboost.segmentation.trainer as trainer
    from diffboost.segmentation.data import load_synthetic, load_training
    from diffboost.segmentation.networks import build_network

    root, ps = task
    cfg = SegConfig(**FAST, aug="diffboost+deepstack")
    idx = ps.indices(ps.fold(0).train, training=True)
    data = load_training(ps, idx, 32)
    data.synthetic = load_synthetic(root / "synthetic" / "fold0", ps, 0, idx, 32)
    weights = []
    for prefetch in (False, True):
        torch.manual_seed(0)
        net = build_network("attention_unet", 2, cfg.channels)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        loss = trainer._train_epoch(net, opt, DiceCELoss(include_background=False, to_onehot_y=True, softmax=True),
                                    data, cfg, BatchAugmenter("deepstack", 0.5, 0), 8, epoch=0, prefetch=prefetch)
        weights.append((loss, net.state_dict()))
    (l1, a), (l2, b) = weights
    assert l1 == l2 and all(torch.equal(a[k], b[k]) for k in a)


def test_runs_recorded_before_an_option_existed_are_reused(task, monkeypatch):
    root, ps = task
    out = root / "runs" / "none"
    first = train_seg(ps, 0, SegConfig(**FAST), out, progress=False)
    ident = json.loads((out / "run.json").read_text())
    del ident["config"]["quality_filter"]  # as written by an older version
    (out / "run.json").write_text(json.dumps(ident))
    import diffboost.segmentation.trainer as trainer

    monkeypatch.setattr(trainer, "_train_epoch", lambda *a, **k: pytest.fail("retrained a finished fold"))
    assert train_seg(ps, 0, SegConfig(**FAST), out, progress=False) == first
