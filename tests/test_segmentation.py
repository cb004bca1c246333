"""Stage 4: strategies, training with Algorithm 1 on real generated variants, selection, resume,
evaluation on whole cases, the comparison table and the CLI verbs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.segmentation import SegConfig, compare, load_segmenter, parse_strategy, train_seg
from diffboost.segmentation.augment import CLASSICAL, DEEPSTACK, BatchAugmenter
from diffboost.segmentation.predict import predict_cases
from builders import train_tiny

FAST = dict(channels=(8, 16, 32), epochs=2, batch_size=4, min_val_cases=1)  # the phantoms' validation parts are tiny


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
    assert parse_strategy("mix-classic+classic") == ("mix-classic", "classic")
    for bad in ("blur", "diffboost+pix2pix", "mirror+rotate", "diffboost+mix-classic", ""):
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


def test_a_validation_part_under_min_val_cases_keeps_the_last_epoch(task):
    root, ps = task
    assert 0 < len(ps.fold(0).val) < 100
    s = train_seg(ps, 0, SegConfig(**{**FAST, "min_val_cases": 100}), root / "runs" / "last", progress=False)
    assert s["checkpoint"] == "last epoch" and s["best_epoch"] == FAST["epochs"] - 1
    log = list(csv.DictReader(open(root / "runs" / "last" / "log.csv")))
    assert not any(r["val_dice"] for r in log)  # nothing was chosen on a handful of cases


def test_the_last_epochs_test_metrics_are_recorded_beside_the_selected_checkpoints(task, monkeypatch):
    """Validation changes which weights are tested, not training: the last-epoch record of a run that
    chose its first epoch equals the metrics of the same run keeping its last epoch."""
    import diffboost.segmentation.trainer as trainer

    root, ps = task
    falling = iter([0.9, 0.5, 0.1])
    monkeypatch.setattr(trainer, "quick_dice", lambda *a, **k: next(falling))
    cfg = SegConfig(**{**FAST, "epochs": 3, "val_every": 1}, seed=3)
    chosen = train_seg(ps, 0, cfg, root / "runs" / "rule_val", progress=False)
    last = train_seg(ps, 0, SegConfig(**{**FAST, "epochs": 3, "val_every": 1, "min_val_cases": 100}, seed=3),
                     root / "runs" / "rule_last", progress=False)
    assert chosen["best_epoch"] == 0 and last["checkpoint"] == "last epoch"
    for k in ("dice", "precision"):
        assert chosen["last_epoch_metrics"][k] == pytest.approx(last["metrics"][k]["mean"], rel=1e-5, abs=1e-6)
        assert last["last_epoch_metrics"][k] == last["metrics"][k]["mean"]
    assert chosen["metrics"]["dice"]["mean"] != chosen["last_epoch_metrics"]["dice"]  # epoch 0 was tested


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


# ---- Algorithm 1 in the training loop ------------------------------------------------------------

def _toy_fold(synthetic: str | None = "random", n: int = 8, size: int = 32, variants: int = 2):
    """Real images with distinct random values (every pixel > 0, so a zero marks a synthetic pixel),
    lesion masks, and ``variants`` synthetic variants per image: random, zeros, or copies of the real one."""
    from diffboost.segmentation.data import FoldData, SyntheticPool

    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(n, 1, size, size, dtype=torch.long)
    for j in range(n):
        masks[j, :, 4 + j : 14 + j, 6:20] = 1
    images = 0.1 + 0.5 * torch.rand(n, 1, size, size, generator=g) + 0.3 * masks
    data = FoldData(images, masks, list(range(n)))
    if synthetic is not None:
        real = images.repeat_interleave(variants, 0)
        syn = {"random": torch.rand(real.shape, generator=g) * 2 - 1, "zeros": torch.zeros_like(real), "real": real}
        rows = torch.arange(n * variants).reshape(n, variants)
        data.synthetic = SyntheticPool(syn[synthetic], rows, torch.full((n,), variants), Path("toy"))
    return data


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_alpha_one_and_real_copies_train_exactly_like_no_synthetic_images():
    baseline, _ = train_tiny(_toy_fold(None))
    all_real, _ = train_tiny(_toy_fold("random"), aug="diffboost", alpha=1.0)
    assert _same_weights(all_real, baseline)  # alpha = 1: every patch is real
    copies, _ = train_tiny(_toy_fold("real"), aug="diffboost", alpha=0.0)
    assert _same_weights(copies, baseline)  # alpha = 0 with variants equal to the real images
    mixed, _ = train_tiny(_toy_fold("random"), aug="diffboost", alpha=0.5)
    assert not _same_weights(mixed, baseline)  # the control: real mixing changes training


@pytest.mark.parametrize("alpha, patch", [(0.5, 8), (0.2, 4), (0.8, 16)])
def test_zero_variants_blank_the_input_exactly_where_the_algorithm_1_mask_says(alpha, patch):
    data = _toy_fold("zeros")
    net, labels = train_tiny(data, aug="diffboost", alpha=alpha, patch=patch)
    assert len(net.inputs) == len(labels) == 2 and all(x.shape == (4, 1, 32, 32) for x in net.inputs)
    real_cells, seen = [], []
    for x, y in zip(net.inputs, labels):
        for xi, yi in zip(x, y):
            keep = xi != 0  # zero = taken from the (zero) synthetic variant
            j = next(j for j in range(len(data)) if torch.equal(xi[keep], data.images[j][keep]))
            seen.append(j)
            assert torch.equal(xi, data.images[j] * keep)  # real pixels unchanged, the rest synthetic
            assert torch.equal(yi, data.masks[j])  # the label is the real mask
            cells = keep[0].reshape(32 // patch, patch, 32 // patch, patch)
            assert (cells.all((1, 3)) | ~cells.any((1, 3))).all()  # one source per patch x patch cell
            real_cells += cells[:, 0, :, 0].flatten().tolist()
    assert sorted(seen) == list(range(len(data)))  # every real image once per epoch
    assert abs(np.mean(real_cells) - alpha) < 0.15  # a cell is real with probability alpha
    if patch == 4:  # the cells are 4 px, not some fixed size
        blocks = torch.stack(net.inputs).ne(0).reshape(-1, 4, 8, 4, 8)
        assert (blocks.any((2, 4)) & ~blocks.all((2, 4))).any()


def test_output_mixing_runs_real_and_synthetic_through_the_network_and_trains_differently():
    data = _toy_fold("random")
    out_net, labels = train_tiny(data, aug="diffboost", alpha=0.5, mix="output")
    in_net, _ = train_tiny(data, aug="diffboost", alpha=0.5, mix="input")
    for x, y in zip(out_net.inputs, labels):
        assert x.shape == (8, 1, 32, 32)  # the 4 real images, then one variant of each
        for real, syn in zip(x[:4], x[4:]):
            j = next(j for j in range(len(data)) if torch.equal(real, data.images[j]))
            rows = data.synthetic.rows[j]
            assert any(torch.equal(syn, data.synthetic.images[r]) for r in rows)
    assert all(x.shape == (4, 1, 32, 32) for x in in_net.inputs)
    assert not _same_weights(out_net, in_net)


def test_mix_alpha_patch_and_n_reach_the_training_loop(task, monkeypatch):
    import diffboost.segmentation.trainer as trainer
    from diffboost.generation.generate import SyntheticSet
    from diffboost.segmentation.patchmix import default_patch

    root, ps = task

    class Seen(Exception):
        pass

    def record(net, opt, loss_fn, data, cfg, augment, patch, epoch, **kw):
        raise Seen(cfg, patch, data)

    monkeypatch.setattr(trainer, "_train_epoch", record)
    with pytest.raises(Seen) as e:
        train_seg(ps, 0, SegConfig(**FAST, aug="diffboost", mix="output", alpha=0.3, patch=8, n=1),
                  root / "runs" / "options_n1", progress=False)
    cfg, patch, data = e.value.args
    assert (cfg.mix, cfg.alpha, patch) == ("output", 0.3, 8)
    syn = SyntheticSet(root / "synthetic" / "fold0")
    pool = data.synthetic
    assert pool.counts.tolist() == [1] * len(data)  # n = 1 of the 2 generated variants
    for j, real in enumerate(data.indices):  # ... and it is variant 0 of each image
        first = next(r for r in syn.by_real[real] if syn.manifest[r]["variant"] == 0)
        assert torch.equal(pool.images[pool.rows[j, 0], 0], torch.from_numpy(np.asarray(syn.images[first], np.float32)))
    with pytest.raises(Seen) as e:
        train_seg(ps, 0, SegConfig(**FAST, aug="diffboost"), root / "runs" / "options_all", progress=False)
    assert e.value.args[2].synthetic.counts.tolist() == [2] * len(data)  # n = None: every variant
    assert e.value.args[1] == default_patch(32) == 5  # the paper's 64 px at 384 px, scaled


# ---- networks: every one with every preset's widths, or a reason before training ----------------

@pytest.mark.parametrize("widths", [(8, 16, 32, 64, 64, 128), "cpu preset"])
def test_every_network_runs_with_the_cpu_widths_at_96_px(widths):
    from diffboost.run import preset
    from diffboost.segmentation.networks import NETWORKS, build_network, check_network

    size = 96
    if widths == "cpu preset":
        widths, size = preset("cpu").seg.channels, preset("cpu").prepare.size
    for name in NETWORKS:
        check_network(name, widths, size)
        torch.manual_seed(0)
        net = build_network(name, 2, widths)
        with torch.no_grad():
            assert net(torch.randn(2, 1, size, size)).shape == (2, 2, size, size), name


def test_networks_outside_the_unet_family_use_the_widths():
    from diffboost.segmentation.networks import build_network, swin_feature_size

    widths = (8, 16, 32, 64, 64, 128)
    resnet = build_network("resnet50_unet", 2, widths)  # ResNet-50's decoder: the first five, coarsest level first
    last_conv = [[m.out_channels for m in b.modules() if isinstance(m, torch.nn.Conv2d)][-1] for b in resnet.decoder.blocks]
    assert last_conv == [64, 64, 32, 16, 8]
    assert build_network("swin_unetr", 2, widths).swinViT.embed_dim == 12  # 8 -> the nearest multiple of 12
    assert (swin_feature_size((16,)), swin_feature_size((24,)), swin_feature_size((40,))) == (12, 24, 36)
    basic = build_network("basic_unet", 2, (8, 16, 32, 64, 128))  # five levels; the last decoder level gets 8
    assert basic.final_conv.in_channels == 8 and basic.down_4.convs.conv_1.conv.out_channels == 128


def test_every_preset_either_builds_each_network_or_says_why_not():
    from diffboost.run import PRESETS, preset
    from diffboost.segmentation.networks import NETWORKS, build_network, check_network

    for p in PRESETS:
        cfg = preset(p)
        for name in NETWORKS:
            try:
                check_network(name, cfg.seg.channels, cfg.seg.size or cfg.prepare.size)
            except ValueError as e:
                assert name in str(e) and ("channel widths" in str(e) or "multiple of" in str(e)), str(e)
                continue
            build_network(name, 2, cfg.seg.channels)
    with pytest.raises(ValueError, match=r"basic_unet takes 5 or 6 channel widths .* got 3"):
        SegConfig(network="basic_unet", channels=(8, 16, 32))  # at config time, not after data loading
    with pytest.raises(ValueError, match=r"resnet50_unet takes 5 or 6 channel widths .* got 4"):
        SegConfig(network="resnet50_unet", channels=(8, 16, 32, 64))


def test_a_sweep_value_that_cannot_train_is_refused_before_any_training(task, tmp_path, monkeypatch):
    import diffboost.segmentation.trainer as trainer
    from diffboost.ablate import ablate
    from diffboost.cli import app
    from diffboost.config import save_yaml
    from diffboost.run import RunConfig

    root, ps = task
    monkeypatch.setattr(trainer, "train_seg", lambda *a, **k: pytest.fail("trained before refusing"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "prepared").symlink_to(ps.root)
    save_yaml(RunConfig.from_dict({"prepare": {"size": 32}, "seg": {"channels": [8, 16, 32]}}), run_dir / "run.yaml")
    with pytest.raises(ValueError, match="network=basic_unet: basic_unet takes 5 or 6 channel widths"):
        ablate(run_dir, "network", ["unet", "basic_unet"], progress=False)
    r = CliRunner().invoke(app, ["ablate", str(run_dir), "--sweep", "alpha=0,1", "--sweep",
                                 "network=swin_unetr,resnet50_unet", "-q"])
    assert r.exit_code == 2, r.output
    assert "--sweep network=resnet50_unet: resnet50_unet takes 5 or 6 channel widths" in r.output
    assert "run.yaml" in r.output
    with pytest.raises(ValueError, match="ablate.sweeps: network=basic_unet"):  # `run` refuses it at load
        RunConfig.from_dict({"prepare": {"size": 64}, "seg": {"channels": [8, 16, 32, 64]},
                             "ablate": {"sweeps": ["network=unet,basic_unet"]}})
    with pytest.raises(ValueError, match="seg: size 48 is not a multiple of 32"):
        RunConfig.from_dict({"prepare": {"size": 48}, "seg": {"network": "swin_unetr"}})


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
    assert "vs_none" in table["diffboost"] and "p_holm" in table["mirror"]["vs_none"] and "vs_none" not in table["none"]
    rows = list(csv.DictReader(open(root / "cmp" / "compare" / "cases.csv")))
    assert len(rows) == 3 * n_cases
    by = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append((r["fold"], r["case_id"]))
    assert by["none"] == by["mirror"] == by["diffboost"]  # same folds, same cases
    md = (root / "cmp" / "compare" / "table.md").read_text()
    assert md.count("**") >= 10 and "Dice ↑" in md and "HD95 ↓ (px)" in md and "lesion Dice" in md
    saved = json.loads((root / "cmp" / "compare" / "table.json").read_text())
    assert saved["table"]["none"]["dice"]["mean"] == pytest.approx(table["none"]["dice"]["mean"])
    # every strategy started from the same weights: seed is part of each run's identity
    ids = {json.loads((root / "cmp" / "seg" / s / "seed0" / "fold0" / "run.json").read_text())["config"]["seed"]
           for s in table}
    assert ids == {0}


def test_cli_train_seg_and_compare(task):
    from diffboost.cli import app

    root, ps = task
    runner = CliRunner()
    r = runner.invoke(app, ["train-seg", str(ps.root), "--fold", "0", "--aug", "gamma", "--channels", "8,16,32",
                            "--epochs", "1", "--batch-size", "4", "--out", str(root / "cli" / "gamma"), "-q"])
    assert r.exit_code == 0, r.output
    summary = json.loads((root / "cli" / "gamma" / "summary.json").read_text())
    assert summary["strategy"] == "gamma"
    env = summary["environment"]  # where the run was made: its numbers differ from machine to machine
    assert env["versions"]["torch"] == torch.__version__ and env["machine"]["device"] == "cpu"
    assert env["machine"]["cpu"] and env["machine"]["torch_threads"] >= 1
    r = runner.invoke(app, ["compare", str(ps.root), "--augs", "none,contrast", "--folds", "1", "--channels", "8,16,32",
                            "--epochs", "1", "--batch-size", "4", "--out", str(root / "cli"), "-q"])
    assert r.exit_code == 0, r.output
    assert "| contrast |" in r.output and (root / "cli" / "compare" / "table.md").exists()
    r = runner.invoke(app, ["train-seg", str(ps.root), "--aug", "sharpen", "-q"])
    assert r.exit_code == 2 and "unknown augmentation strategy 'sharpen'" in r.output


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bf16_only_where_the_device_has_it_natively(native, monkeypatch):
    import diffboost.utils.environment as env

    monkeypatch.setattr(env, "native_bf16", lambda device=None: native)
    want, other = ("bf16", "fp32") if native else ("fp32", "bf16")
    cfg = SegConfig(precision="auto")
    assert cfg.training_precision() == want
    assert cfg.identity() == SegConfig(precision=want).identity() != SegConfig(precision=other).identity()
    auto, _ = train_tiny(_toy_fold(None), precision="auto")
    assert _same_weights(auto, train_tiny(_toy_fold(None), precision=want)[0])
    assert not _same_weights(auto, train_tiny(_toy_fold(None), precision=other)[0])  # the control
    with pytest.raises(ValueError, match="precision must be"):
        SegConfig(precision="fp16")


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
    for option in ("quality_filter", "mix_prob", "teacher_gate", "pixel_filter"):
        ident["config"].pop(option, None)  # as written by an older version ...
    # ... which also recorded Algorithm 1's options for a run without variants
    ident["config"].update(alpha=0.6, patch=None, n=None, mix="input", synthetic=None)
    (out / "run.json").write_text(json.dumps(ident))
    import diffboost.segmentation.trainer as trainer

    monkeypatch.setattr(trainer, "_train_epoch", lambda *a, **k: pytest.fail("retrained a finished fold"))
    assert train_seg(ps, 0, SegConfig(**FAST), out, progress=False) == first


def test_variant_options_are_not_part_of_a_run_without_variants():
    # sweeping alpha or a teacher filter must not retrain none or a classical strategy (the teacher)
    for aug in ("none", "classic"):
        base = SegConfig(aug=aug).identity()
        assert SegConfig(aug=aug, alpha=0.2, teacher_gate=0.5, pixel_filter=1.25, n=2, mix_prob=0.5).identity() == base
        assert "alpha" not in base and "epochs" in base
    assert SegConfig(aug="diffboost", alpha=0.2).identity() != SegConfig(aug="diffboost").identity()
    assert SegConfig(aug="mix-classic", n=2).identity() != SegConfig(aug="mix-classic").identity()


def test_batch_dice_reaches_the_loss_and_old_runs_count_as_per_image(task, tmp_path):
    root, ps = task
    a = train_seg(ps, 0, SegConfig(**{**FAST, "epochs": 1}), tmp_path / "batch", progress=False)
    b = train_seg(ps, 0, SegConfig(**{**FAST, "epochs": 1}, batch_dice=False), tmp_path / "image", progress=False)
    log_a = (tmp_path / "batch" / "log.csv").read_text().splitlines()[1].split(",")
    log_b = (tmp_path / "image" / "log.csv").read_text().splitlines()[1].split(",")
    assert log_a[1] != log_b[1]  # another loss was minimised
    assert a["identity"]["config"]["batch_dice"] is True and b["identity"]["config"]["batch_dice"] is False
    # a run recorded before the option existed trained with per-image Dice: reused as batch_dice=False
    ident = json.loads((tmp_path / "image" / "run.json").read_text())
    del ident["config"]["batch_dice"]
    (tmp_path / "image" / "run.json").write_text(json.dumps(ident))
    assert train_seg(ps, 0, SegConfig(**{**FAST, "epochs": 1}, batch_dice=False), tmp_path / "image",
                     progress=False) == b
