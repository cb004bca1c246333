"""New lesions in new places: donors, transforms and placement rules, the copy-paste control as a
synthetic set with labels of its own, and Algorithm 1 mixing those labels with the image's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import train_tiny

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.generation.layout import (LayoutConfig, LayoutPlanner, Placement, copy_paste, copy_paste_set,
                                         layout_label, placed, tissue_map, transform_crop)
from diffboost.generation.synthetic import SyntheticSet
from diffboost.segmentation.data import FoldData, SyntheticPool, load_synthetic


@pytest.fixture(scope="module")
def ps(tmp_path_factory, phantom_root):
    return prepare(phantom_root, tmp_path_factory.mktemp("layout") / "prepared", PrepareConfig(size=64, folds=3),
                   progress=False)


def _train(ps, fold=0):
    return ps.indices(ps.fold(fold).train, training=True)


def test_a_placement_is_a_function_of_seed_image_and_variant(ps):
    idx = _train(ps)
    a = LayoutPlanner(ps, idx, LayoutConfig(seed=3, tries=100))
    b = LayoutPlanner(ps, idx, LayoutConfig(seed=3, tries=100))
    plans = [a.plan(j, v) for j in idx for v in range(2)]
    assert plans == [b.plan(j, v) for j in idx for v in range(2)]
    assert all(p is not None and p.donor_index != p.real_index for p in plans)
    assert plans != [LayoutPlanner(ps, idx, LayoutConfig(seed=4, tries=100)).plan(j, v) for j in idx for v in range(2)]
    assert Placement.from_row({k: str(v) for k, v in plans[0].to_row().items()}) == plans[0]


@pytest.mark.parametrize("rule", ["tissue", "depth"])
def test_new_lesions_lie_in_the_tissue_off_the_existing_lesions(ps, rule):
    from scipy import ndimage as ndi

    cfg = LayoutConfig(placement=rule, gap=2, tries=100)
    planner = LayoutPlanner(ps, _train(ps), cfg)
    for j in _train(ps):
        p = planner.plan(j, 0)
        _, labels, _ = planner.transformed(p)
        new = placed((ps.size, ps.size), labels > 0, p.top, p.left)
        real = np.asarray(ps.masks[j]) > 0
        assert new.sum() == (labels > 0).sum()  # the whole lesion is in the image
        assert not (new & ndi.binary_dilation(real, iterations=2)).any()
        assert (new <= tissue_map(np.asarray(ps.images[j], np.float32), erode=cfg.ring)).all()


def test_the_uniform_rule_also_goes_over_the_background_and_the_tissue_rule_never(tmp_path):
    ps, idx = _toy_set(tmp_path, slice(0, 30), lesion_row=14)  # tissue in the top half, black below it
    below = {rule: np.mean(_centres(ps, idx, LayoutConfig(placement=rule, scale=(0.7, 0.8), tries=50), 40) > 34 / 64)
             for rule in ("uniform", "tissue")}
    assert below["uniform"] > 0.3 and below["tissue"] == 0


def _toy_set(tmp_path, rows_of_tissue: slice, lesion_row: int, n: int = 6):
    """Grey tissue in ``rows_of_tissue`` (black elsewhere) with one dark lesion per image at ``lesion_row``."""
    from builders import disk, save_png

    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((64, 64), np.uint8)
        img[rows_of_tissue] = rng.integers(90, 160, img[rows_of_tissue].shape)
        img[disk(64, 64, lesion_row, 12 + 7 * i, 5)] = 30
        save_png(root / "images" / f"c{i}.png", img)
        save_png(root / "masks" / f"c{i}.png", disk(64, 64, lesion_row, 12 + 7 * i, 5).astype(np.uint8) * 255)
    ps = prepare(root, tmp_path / "p", PrepareConfig(size=64, folds=2, duplicates=None), progress=False)
    return ps, ps.indices(ps.fold(0).train, training=True)


def _centres(ps, idx, cfg, variants):
    planner = LayoutPlanner(ps, idx, cfg)
    out = []
    for j in idx:
        for v in range(variants):
            p = planner.plan(j, v)
            if p is not None:
                _, labels, _ = planner.transformed(p)
                out.append((p.top + np.nonzero(labels)[0].mean()) / ps.size)
    return np.asarray(out)


def test_the_depth_rule_puts_lesions_at_the_depths_where_lesions_are(tmp_path):
    ps, idx = _toy_set(tmp_path, slice(0, 64), lesion_row=16)  # tissue everywhere, every lesion at 1/4 depth
    spread = {rule: np.abs(_centres(ps, idx, LayoutConfig(placement=rule, scale=(0.7, 0.8), tries=50), 40) - 0.25).mean()
              for rule in ("tissue", "depth")}
    assert spread["depth"] < 0.08 < 0.15 < spread["tissue"]


def test_the_transform_keeps_image_and_labels_together():
    img = np.linspace(-1, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    lab = np.zeros((40, 30), np.uint8)
    lab[10:25, 8:20] = 1
    same_img, same_lab, support = transform_crop(img, lab, False, 0.0, 1.0, 0.0, 0)
    assert np.array_equal(same_img, img) and np.array_equal(same_lab, lab) and support.all()
    flip_img, flip_lab, _ = transform_crop(img, lab, True, 0.0, 1.0, 0.0, 0)
    assert np.array_equal(flip_img, img[:, ::-1]) and np.array_equal(flip_lab, lab[:, ::-1])
    big_img, big_lab, _ = transform_crop(img, lab, False, 30.0, 1.4, 0.05, 7)
    area = (big_lab > 0).sum() / (lab > 0).sum()
    assert 1.4 ** 2 * 0.8 < area < 1.4 ** 2 * 1.2  # scaled, rotated and warped, about 1.96 x the area
    assert big_img.shape == big_lab.shape


def test_copy_paste_set_labels_are_the_union_and_its_placements_are_the_planners(ps, tmp_path):
    cfg = LayoutConfig(n=2, seed=5, tries=100)
    syn = copy_paste_set(ps, 0, tmp_path / "cp", cfg, progress=False)
    planner = LayoutPlanner(ps, _train(ps), cfg)
    assert syn.masks is not None and len(syn) == len(_train(ps)) * 2
    for r in syn.manifest:
        p = Placement.from_row(r)
        assert p == planner.plan(r["real_index"], r["variant"])  # same seed: same donor, transform, position
        crop, labels, support = planner.transformed(p)
        real_mask = np.asarray(ps.masks[p.real_index])
        new = placed(real_mask.shape, labels, p.top, p.left)
        expected = np.where(real_mask > 0, real_mask, new)
        assert np.array_equal(np.asarray(syn.masks[r["index"]]), expected)
        assert np.array_equal((np.asarray(syn.masks[r["index"]]) > 0), (real_mask > 0) | (new > 0))
        image = copy_paste(np.asarray(ps.images[p.real_index], np.float32), crop, labels, support, p.top, p.left,
                           cfg.ring, real_mask)
        assert np.allclose(np.asarray(syn.images[r["index"]], np.float32), image, atol=2e-3)  # float16 on disk
        # the lesion pixels are the donor's, the image far from it the real one
        inside = new > 0
        assert np.allclose(image[inside], placed(real_mask.shape, crop, p.top, p.left)[inside])
        from scipy import ndimage as ndi
        far = ~ndi.binary_dilation(inside, np.ones((3, 3)), iterations=cfg.ring + 1) | (real_mask > 0)
        assert np.array_equal(image[far], np.asarray(ps.images[p.real_index], np.float32)[far])  # real lesions untouched
    assert copy_paste_set(ps, 0, tmp_path / "cp", cfg, progress=False).meta == syn.meta  # reused
    pool = load_synthetic(tmp_path / "cp", ps, 0, _train(ps), 64)
    assert pool.masks is not None and pool.masks.shape == pool.images.shape


def test_layout_label_keeps_the_real_label_where_both_are_set():
    real = np.array([[0, 1, 1], [0, 0, 2]], np.uint8)
    new = np.array([[1, 1, 0], [1, 0, 1]], np.uint8)
    assert np.array_equal(layout_label(real, new), [[1, 1, 1], [1, 0, 2]])


def _fold_with_labels(per: int = 1) -> FoldData:
    """Real images > 0 with a lesion in square A; variants < 0 whose own label is square B."""
    g = torch.Generator().manual_seed(2)
    n = 8
    a = torch.zeros(1, 32, 32, dtype=torch.long)
    a[:, 2:12, 3:14] = 1
    b = torch.zeros(1, 32, 32, dtype=torch.long)
    b[:, 18:30, 16:29] = 1
    images = 0.1 + 0.5 * torch.rand(n, 1, 32, 32, generator=g)
    data = FoldData(images, a.expand(n, -1, -1, -1).clone(), list(range(n)))
    syn = -0.1 - 0.5 * torch.rand(n * per, 1, 32, 32, generator=g)
    data.synthetic = SyntheticPool(syn, torch.arange(n * per).reshape(n, per), torch.full((n,), per), Path("toy"),
                                   masks=b.expand(n * per, -1, -1, -1).clone())
    return data, a, b


@pytest.mark.parametrize("aug", ["copy-paste", "copy-paste+mirror"])
def test_the_label_is_mixed_with_the_same_grid_as_the_image(aug):
    data, a, b = _fold_with_labels()
    net, labels = train_tiny(data, epochs=(0, 1), aug=aug, alpha=0.5, patch=4, aug_prob=0.5)
    seen_mixed = 0
    for x, y in zip(net.inputs, labels):
        m = (x > 0).long()  # real pixels are positive, the variant's negative
        for k in range(len(x)):
            flips = [(), (-1,), (-2,), (-2, -1)] if "mirror" in aug else [()]  # mirroring along either axis
            options = [(a.flip(f), b.flip(f)) if f else (a, b) for f in flips]
            assert any(torch.equal(y[k], torch.where(m[k] > 0, ra, rb)) for ra, rb in options)
        seen_mixed += int(((m == 0) & (y > 0)).any())
    assert seen_mixed  # the variant's lesion did reach the loss


def test_run_compares_copy_paste_without_a_diffusion_model(phantom_root, tmp_path):
    from diffboost.run import RunConfig, run

    cfg = RunConfig.from_dict({"prepare": {"size": 32}, "seg": {"channels": [8, 16, 32], "epochs": 1, "batch_size": 4},
                               "layout": {"n": 2, "tries": 100},
                               "compare": {"augs": ["none", "copy-paste", "copy-paste+mirror"], "folds": [0]},
                               "ablate": {"sweeps": []}})
    run(phantom_root, tmp_path / "r", cfg, progress=False)
    syn = tmp_path / "r" / "synthetic_copy-paste" / "fold0"
    assert (syn / "masks.npy").exists() and not (tmp_path / "r" / "models").exists()  # no diffusion model trained
    # diffboost-layout: the fold's model is fine-tuned and draws the lesions; no same-layout set is made
    cfg = RunConfig.from_dict({**json.loads(json.dumps(dataclasses_dict(cfg))),
                               "model": {"channels": [8, 16, 32], "attention": [False, True, True],
                                         "condition": "edges+mask"},
                               "train": {"steps": 2, "batch_size": 2, "warmup_steps": 0, "validate_every": 2},
                               "inpaint": {"steps": 4, "lesion_strength": 0.6},
                               "compare": {"augs": ["none", "copy-paste", "copy-paste+mirror", "diffboost-layout"],
                                           "folds": [0]}})
    run(phantom_root, tmp_path / "r", cfg, progress=False)
    layout = tmp_path / "r" / "synthetic_diffboost-layout" / "fold0"
    assert (layout / "masks.npy").exists() and (tmp_path / "r" / "models" / "fold0" / "model").exists()
    assert not (tmp_path / "r" / "synthetic").exists()
    assert (tmp_path / "r" / "seg" / "diffboost-layout" / "seed0" / "fold0" / "summary.json").exists()
    for s in ("copy-paste", "copy-paste+mirror"):
        summary = json.loads((tmp_path / "r" / "seg" / s / "seed0" / "fold0" / "summary.json").read_text())
        assert summary["strategy"] == s and summary["cases"] > 0
    table = (tmp_path / "r" / "compare" / "table.md").read_text()
    assert "| copy-paste |" in table and "Lesion-wise detection" in table and "false lesions / image" in table
    report = (tmp_path / "r" / "report.md").read_text()
    assert "New lesions in new places (copy-paste)" in report and "finds the new lesions with a Dice of" in report
    checked = json.loads((syn / "new_lesion_consistency.json").read_text())
    assert checked["new_lesions"] > 0 and 0 <= checked["teacher_dice_new_lesion"] <= 1
    assert "layout:" in (tmp_path / "r" / "run.yaml").read_text()


def test_lesion_wise_detection_counts_found_missed_and_false_lesions():
    from diffboost.evaluation.metrics import detection_summary, lesion_detection

    ref = np.zeros((40, 40), np.uint8)
    ref[2:12, 2:12] = 1  # 100 px, found (half covered)
    ref[20:23, 20:23] = 1  # 9 px, missed
    ref[30:38, 2:10] = 1  # 64 px, found by a 7 px touch (>= 10%)
    pred = np.zeros_like(ref)
    pred[2:12, 2:7] = 1
    pred[30, 2:9] = 1
    pred[15:18, 30:33] = 1  # touches nothing: a false lesion
    d = lesion_detection(pred, ref)
    assert (d["lesions"], d["lesions_found"], d["false_lesions"]) == (3, 2, 1)
    assert d["lesion_sizes"] == "100;9;64" and d["lesion_found"] == "1;0;1"
    empty = lesion_detection(pred, np.zeros_like(ref))
    assert (empty["lesions"], empty["false_lesions"], empty["lesion_sizes"]) == (0, 3, "")
    s = detection_summary([d, empty])
    assert s["lesions"] == 3 and s["recall"] == pytest.approx(2 / 3) and s["false_lesions_per_image"] == 2.0
    assert s["recall_by_size"] == {"small": 0.0, "medium": 1.0, "large": 1.0}
    assert detection_summary([{"dice": 1.0}]) is None  # rows of runs evaluated before detection existed


def dataclasses_dict(cfg) -> dict:
    from diffboost.config import to_dict

    return to_dict(cfg)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained edges+mask model at 64 px (what is tested is where it may draw, not how well)."""
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import new_pipeline

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model"
    new_pipeline(ModelConfig(image_size=64, channels=(8, 16, 32), attention=(False, True, True),
                             condition="edges+mask", mask_channels=1)).save_pretrained(path)
    return path


def test_diffusion_layout_variants_redraw_only_the_new_lesion_and_share_copy_pastes_placements(ps, tiny_model, tmp_path):
    from diffboost.generation.inpaint import InpaintConfig, layout_generate, redraw_region

    layout = LayoutConfig(n=1, seed=2, tries=100)
    cp = copy_paste_set(ps, 0, tmp_path / "cp", layout, progress=False)
    held = layout_generate(tiny_model, ps, tmp_path / "dl", 0, "diffboost-layout", layout,
                           InpaintConfig(lesion_strength=0.6, strength=0.0, grow=2, steps=5), progress=False)
    harm = layout_generate(tiny_model, ps, tmp_path / "hm", 0, "copy-paste-harmonize", layout,
                           InpaintConfig(strength=0.3, steps=5), progress=False)
    keys = ["real_index", "variant", *[k for k in Placement.__dataclass_fields__ if k not in ("real_index", "variant")]]
    for a, b, c in zip(cp.manifest, held.manifest, harm.manifest):
        assert [a[k] for k in keys] == [b[k] for k in keys] == [c[k] for k in keys]  # donor, transform, position
        assert np.array_equal(cp.masks[a["index"]], held.masks[b["index"]])
        assert np.array_equal(cp.masks[a["index"]], harm.masks[c["index"]])
        p = Placement.from_row(b)
        _, labels, _ = LayoutPlanner(ps, _train(ps), layout).transformed(p)
        region = redraw_region(placed((64, 64), labels > 0, p.top, p.left), 2)
        composite = np.asarray(cp.images[a["index"]], np.float32)
        variant = np.asarray(held.images[b["index"]], np.float32)
        assert np.allclose(variant[region == 0], composite[region == 0], atol=2e-3)  # held at strength 0
        assert not np.allclose(variant[region == 1], composite[region == 1], atol=0.05)  # the lesion is redrawn
        assert not np.allclose(np.asarray(harm.images[c["index"]], np.float32), composite, atol=0.05)
    again = layout_generate(tiny_model, ps, tmp_path / "dl", 0, "diffboost-layout", layout,
                            InpaintConfig(lesion_strength=0.6, strength=0.0, grow=2, steps=5), progress=False)
    assert again.meta == held.meta  # reused
    with pytest.raises(ValueError, match="copy-paste strategy"):
        layout_generate(tiny_model, ps, tmp_path / "h0", 0, "copy-paste-harmonize", layout,
                        InpaintConfig(strength=0.0), progress=False)


def test_new_lesion_dice_scores_the_new_lesion_only():
    from diffboost.evaluation.consistency import new_lesion_dice

    real = np.zeros((40, 40), np.uint8)
    real[2:8, 2:8] = 1
    label = real.copy()
    label[20:30, 20:30] = 1  # the new lesion: 100 px
    pred = np.zeros_like(real)
    pred[20:30, 20:25] = 1  # half of it
    pred[2:8, 2:8] = 1  # the real lesion: not about the new one
    pred[0, 39] = 1  # far away: not counted
    assert new_lesion_dice(pred, label, real) == pytest.approx(2 * 50 / (50 + 100))
    assert np.isnan(new_lesion_dice(pred, real, real))  # no new lesion


def test_ablate_sweeps_the_placement_rule_and_scale_of_copy_paste(phantom_root, tmp_path):
    from diffboost.ablate import ablate
    from diffboost.run import RunConfig, run

    cfg = RunConfig.from_dict({"prepare": {"size": 32}, "seg": {"channels": [8, 16, 32], "epochs": 1, "batch_size": 4},
                               "layout": {"n": 1, "tries": 100},
                               "compare": {"augs": ["none", "copy-paste"], "folds": [0]}, "ablate": {"sweeps": []}})
    run(phantom_root, tmp_path / "r", cfg, progress=False)
    res = ablate(tmp_path / "r", "placement", ["tissue", "uniform"], progress=False, strategy="copy-paste")
    assert set(res["dice"]["copy-paste"]) == {"tissue", "uniform"} and res["gain"]["uniform"]["over none"] is not None
    uniform = tmp_path / "r" / "ablations" / "placement" / "uniform" / "synthetic_copy-paste" / "fold0"
    assert {r["rule"] for r in SyntheticSet(uniform).manifest} == {"uniform"}
    assert not (tmp_path / "r" / "ablations" / "placement" / "tissue" / "synthetic_copy-paste").exists()  # the run's own
    res = ablate(tmp_path / "r", "scale", ["0.9-1.1"], progress=False, strategy="copy-paste")
    scales = [float(r["scale"]) for r in SyntheticSet(tmp_path / "r" / "ablations" / "scale" / "0.9-1.1" /
                                                          "synthetic_copy-paste" / "fold0").manifest]
    drawn = [s / 0.8 ** np.floor(np.log(s / 1.1) / np.log(0.8) + 1e-9) for s in scales]  # before any shrinking
    assert max(scales) <= 1.1 and all(0.9 - 1e-9 <= d <= 1.1 + 1e-9 for d in drawn) and max(scales) >= 0.9
    with pytest.raises(ValueError, match="layout variants"):
        ablate(tmp_path / "r", "placement", ["tissue"], progress=False, strategy="diffboost")
    with pytest.raises(ValueError, match="diffboost-layout"):
        ablate(tmp_path / "r", "lesion_strength", [0.4], progress=False, strategy="copy-paste")


def test_layout_command_makes_a_set_where_train_seg_looks(ps, tiny_model):
    from typer.testing import CliRunner

    from diffboost.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["layout", str(ps.root), "--fold", "1", "-n", "1", "--placement", "tissue", "-q"])
    assert res.exit_code == 0, res.output
    syn = SyntheticSet(ps.root.parent / "synthetic_copy-paste" / "fold1")
    assert syn.masks is not None and {r["rule"] for r in syn.manifest} == {"tissue"}
    res = runner.invoke(app, ["layout", str(ps.root), "--fold", "1", "--kind", "diffboost-layout", "-q"])
    assert res.exit_code == 2 and "--model" in res.output


def test_a_lesion_too_large_for_the_free_tissue_is_shrunk_until_it_fits_or_given_up(tmp_path):
    from scipy import ndimage as ndi

    ps, idx = _toy_set(tmp_path, slice(0, 15), lesion_row=7, n=8)  # a strip of tissue less high than a lesion
    fixed = dict(scale=(1.0, 1.0), rotation=0.0, elastic=0.0, tries=5)
    assert all(LayoutPlanner(ps, idx, LayoutConfig(min_scale=None, **fixed)).plan(j, 0) is None for j in idx)
    planner = LayoutPlanner(ps, idx, LayoutConfig(**fixed))
    plans = [planner.plan(j, 0) for j in idx]
    assert all(p is not None for p in plans) and planner.shrunk == len(idx)
    for j, p in zip(idx, plans):
        assert 0.25 <= p.scale < 1.0 and p.scale == pytest.approx(0.8 ** round(np.log(p.scale) / np.log(0.8)))
        _, labels, _ = planner.transformed(p)
        new = placed((ps.size, ps.size), labels > 0, p.top, p.left)
        real = np.asarray(ps.masks[j]) > 0
        assert new.sum() == (labels > 0).sum() > 0
        assert (new <= planner.allowed(j)).all() and not (new & ndi.binary_dilation(real, iterations=2)).any()
    with pytest.raises(ValueError, match="min_scale"):
        LayoutConfig(min_scale=0)
