"""Label consistency: a teacher segmenter checks every synthetic variant against its real mask; the
files it writes into the set; the quality filter's text-aware intensity check; the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.evaluation.consistency import (FIELDS, LabelConsistency, Teacher, generated_consistency,
                                              label_consistency)
from diffboost.evaluation.metrics import label_dice
from diffboost.generation.synthetic import SyntheticSet, write_synthetic_set
from diffboost.segmentation import SegConfig, train_seg

SET_FIELDS = dict(case_id="", slice_index=0, category="", prompt="", seed=0, sampler="test", steps=0, guidance=0.0,
                  model_hash="")


@pytest.fixture(scope="module")
def task(tmp_path_factory, phantom_root):
    """A run-like folder: phantoms prepared at 32 px and fold 0's `none` segmenter (the teacher)."""
    root = tmp_path_factory.mktemp("consistency")
    ps = prepare(phantom_root, root / "prepared", PrepareConfig(size=32, folds=3), progress=False)
    teacher = root / "seg" / "none" / "seed0" / "fold0"
    train_seg(ps, 0, SegConfig(aug="none", channels=(8, 16, 32), epochs=20, batch_size=4, learning_rate=3e-3,
                               threads=1), teacher, progress=False)
    return root, ps, teacher / "model"


def erase_lesion(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The lesion (grown by 2 px) filled with speckle-like noise of the tissue around it."""
    if not mask.any():
        return img.copy()
    grown = ndimage.binary_dilation(mask, iterations=2)
    ring = ndimage.binary_dilation(grown, iterations=3) & ~grown
    out = img.copy()
    out[grown] = rng.normal(img[ring].mean(), img[ring].std(), int(grown.sum()))
    return np.clip(out, -1, 1)


def write_set(out: Path, ps, fold: int, variants: list[tuple[str, object]], strengths=None,
              identity: dict | None = None) -> SyntheticSet:
    """A synthetic set of ``fold``'s training images: per image, one variant per ``(text, make)`` with
    ``make(real, mask, rng) -> image``; a ``strength`` column appended when given (one per variant kind)."""
    rng = np.random.default_rng(0)
    rows, images = [], []
    for v, (text, make) in enumerate(variants):
        for ri in ps.indices(ps.fold(fold).train, training=True):
            real, mask = np.asarray(ps.images[ri], np.float32), np.asarray(ps.masks[ri]) > 0
            rows.append({"index": len(rows), "real_index": ri, "variant": v, "text": text, **SET_FIELDS})
            images.append(np.asarray(make(real, mask, rng), np.float16))
    write_synthetic_set(out, ps, rows, np.stack(images), SegConfig(), {"fold": fold, "identity": identity or {}})
    if strengths is not None:  # as a generator that records a strength per variant writes it
        with open(out / "manifest.csv", newline="") as fh:
            manifest = list(csv.DictReader(fh))
        with open(out / "manifest.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[*manifest[0], "strength"])
            w.writeheader()
            w.writerows({**r, "strength": strengths[int(r["variant"])]} for r in manifest)
    return SyntheticSet(out)


def same(real, mask, rng):
    return real


def test_the_teacher_finds_the_real_images_exactly_as_consistent_and_writes_the_documented_files(task, monkeypatch):
    root, ps, teacher = task
    syn = write_set(root / "synthetic" / "fold0", ps, 0, [("", same), ("enhanced contrast", same)],
                    strengths=[1.0, 0.5])
    summary = label_consistency(teacher, ps, syn.root, 0, batch_size=4, progress=False)
    assert summary["real"]["teacher_dice"] > 0.5  # the teacher does find the lesions
    for part in [summary["overall"], *summary["per_text"].values(), *summary["per_strength"].values()]:
        assert part["consistency"] == 1.0
    assert set(summary["per_text"]) == {"plain", "enhanced contrast"} and set(summary["per_strength"]) == {"0.5", "1"}
    assert summary["per_text"]["plain"]["variants"] == len(syn) // 2
    assert summary["teacher"]["path"] == str(teacher.resolve()) and len(summary["teacher"]["sha256"]) == 64
    with open(syn.root / "consistency.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == FIELDS == ["variant_index", "real_index", "text", "strength", "teacher_dice_variant",
                                           "teacher_dice_real"]
    assert [int(r["variant_index"]) for r in rows] == list(range(len(syn)))
    assert all(r["teacher_dice_variant"] == r["teacher_dice_real"] for r in rows)
    assert {r["strength"] for r in rows if r["text"] == ""} == {"1"}
    loss = np.load(syn.root / "teacher_loss.npy")
    assert loss.dtype == np.float16 and loss.shape == (len(syn), ps.size, ps.size)
    # the variants are the real images: their mean loss is the teacher's mean loss on the real images
    assert np.isclose(loss.astype(np.float64).mean(), summary["teacher_loss_real_mean"], rtol=1e-2)
    on_disk = json.loads((syn.root / "consistency.json").read_text())
    assert on_disk["teacher_loss_real_mean"] == summary["teacher_loss_real_mean"]

    # the same set and teacher: reused, not recomputed
    monkeypatch.setattr(Teacher, "__call__", lambda *a, **k: pytest.fail("recomputed"))
    assert label_consistency(teacher, ps, syn.root, 0, progress=False) == on_disk
    monkeypatch.undo()
    # another teacher: recomputed
    other = root / "other_teacher"
    other.mkdir()
    from safetensors.torch import load_file, save_file

    weights = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
               for k, v in load_file(str(teacher / "model.safetensors")).items()}
    save_file(weights, str(other / "model.safetensors"))
    (other / "config.json").write_text((teacher / "config.json").read_text())
    again = label_consistency(other, ps, syn.root, 0, progress=False)
    assert again["identity"]["teacher"] != summary["identity"]["teacher"]
    assert again["teacher"]["path"] == str(other.resolve())
    # a set written anew replaces its files (check_set_folder accepts them as the set's own)
    write_set(syn.root, ps, 0, [("", same)])
    assert not any((syn.root / n).exists() for n in ("consistency.csv", "consistency.json", "teacher_loss.npy"))


def test_variants_with_the_lesion_erased_are_clearly_less_consistent(task, tmp_path):
    root, ps, teacher = task
    kept = label_consistency(teacher, ps, write_set(tmp_path / "same", ps, 0, [("", same)]).root, 0, progress=False)
    syn = write_set(tmp_path / "erased", ps, 0, [("", erase_lesion)], identity={"strength": 0.6})  # image-to-image
    erased = label_consistency(teacher, ps, syn.root, 0, progress=False)
    assert list(erased["per_strength"]) == ["0.6"] and list(kept["per_strength"]) == ["1"]  # no strength: from noise
    assert kept["overall"]["consistency"] == 1.0
    assert erased["overall"]["consistency"] < 0.6
    lesion = [r for r in syn.manifest if ps.masks[r["real_index"]].any()]
    with open(syn.root / "consistency.csv", newline="") as fh:
        rows = {int(r["variant_index"]): r for r in csv.DictReader(fh)}
    assert all(float(rows[r["index"]]["teacher_dice_variant"]) < float(rows[r["index"]]["teacher_dice_real"])
               for r in lesion)
    # the teacher's loss on the erased lesions' pixels is far above its loss there on the real images
    masks = np.stack([np.asarray(ps.masks[r["real_index"]]) > 0 for r in syn.manifest])
    loss_erased = np.load(syn.root / "teacher_loss.npy").astype(np.float32)[masks].mean()
    loss_real = np.load(tmp_path / "same" / "teacher_loss.npy").astype(np.float32)[masks].mean()
    assert loss_erased > 3 * loss_real


def test_the_metric_scores_empty_masks_explicitly_and_aggregates_by_group():
    empty, lesion = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    lesion[2:6, 2:6] = 1
    assert label_dice(empty, empty, [1]) == 1.0 and label_dice(lesion, empty, [1]) == 0.0
    assert label_dice(empty, lesion, [1]) == 0.0 and label_dice(lesion, lesion, [1]) == 1.0
    m = LabelConsistency([1])
    m(empty, empty, 1.0, 0, 0, "", 1.0)  # both empty: 1
    m(empty, lesion, 0.8, 1, 1, "dark", 0.5)  # lesion missed: 0
    m(lesion, lesion, 0.8, 2, 1, "dark", 1.0)
    assert m.aggregate()["consistency"] == pytest.approx((2 / 3) / (2.6 / 3))
    assert m.aggregate("text")["dark"]["consistency"] == pytest.approx(0.5 / 0.8)
    assert m.aggregate("strength")["0.5"]["teacher_dice_variant"] == 0.0
    assert list(m.aggregate("text")) == ["plain", "dark"]
    m.reset()
    assert m.aggregate()["variants"] == 0


def test_generated_test_images_get_the_teachers_consistency(task):
    from diffboost.evaluation.fidelity import table_markdown

    root, ps, teacher = task
    idx = ps.indices(ps.fold(0).test, training=True)
    real = np.asarray(ps.images[np.asarray(idx)], np.float32)
    masks = np.asarray(ps.masks[np.asarray(idx)])
    t = Teacher(teacher)
    assert generated_consistency(t, real, real.copy(), masks)["consistency"] == 1.0
    rng = np.random.default_rng(0)
    erased = np.stack([erase_lesion(r, m > 0, rng) for r, m in zip(real, masks)])
    c = generated_consistency(t, real, erased, masks)
    assert c["consistency"] < 0.8
    row = {"method": "diffusion", **{m: {"mean": 0.1, "std": 0.0} for m in ("mae", "mse", "rmse", "ssim", "ms_ssim")}}
    assert f"| {c['consistency']:.3f} |" in table_markdown([{**row, "label_consistency": c}])
    # Table I with a teacher: each method's generated test images checked
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import new_pipeline
    from diffboost.evaluation.fidelity import fidelity

    torch.manual_seed(0)
    model = new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True)))
    model.save_pretrained(root / "m")
    rows = fidelity(root / "m", ps, 0, root / "fid", settings=[("dpm++", 2)], progress=False, teacher=teacher)
    saved = json.loads((root / "fid" / "table.json").read_text())
    assert saved["teacher"]["path"] == str(teacher.resolve())
    c = rows[0]["label_consistency"]
    assert c["teacher_dice_real"] == pytest.approx(generated_consistency(t, real, real, masks)["teacher_dice_real"])
    assert saved["rows"][0]["label_consistency"] == c and "label consistency" in (root / "fid" / "table.md").read_text()


def test_intended_appearance_changes_pass_the_quality_filter_structural_departures_do_not(task, tmp_path):
    from diffboost.conditioning.augment_text import apply_phrase
    from diffboost.generation.quality import score_variants

    root, ps, _ = task
    g = torch.Generator().manual_seed(1)

    def phrase(text):
        return lambda real, mask, rng: apply_phrase(text, torch.from_numpy(real)[None, None], g)[0, 0].numpy()

    noise = ("", lambda real, mask, rng: rng.uniform(-1, 1, real.shape))
    brightened = ("dark", lambda real, mask, rng: np.clip(real + 0.9, -1, 1))  # says dark, is far too bright
    syn = write_set(tmp_path / "syn", ps, 0, [("enhanced contrast", phrase("enhanced contrast")),
                                             ("dark", phrase("dark")), ("", erase_lesion), noise, brightened])
    scores = {(r["real_index"], r["variant"]): r for r in score_variants(syn, ps)}
    reals = sorted(syn.by_real)
    for ri in reals:
        assert scores[(ri, 0)]["keep"] == 1 and scores[(ri, 1)]["keep"] == 1, scores[(ri, 0)]
        assert scores[(ri, 3)]["keep"] == 0 and "edges" in scores[(ri, 3)]["reason"]
        assert scores[(ri, 4)]["keep"] == 0 and "intensity" in scores[(ri, 4)]["reason"]
        if ps.masks[ri].any():
            assert scores[(ri, 2)]["keep"] == 0 and "edges" in scores[(ri, 2)]["reason"]
    # the contrast variants are outliers to the unchanged real images: a text-blind check rejected them
    real = np.asarray(ps.images[np.asarray(reals)], np.float32)
    stds = real.std(axis=(1, 2))
    contrast = np.stack([np.asarray(syn.images[r["index"]], np.float32) for r in syn.manifest if r["variant"] == 0])
    assert np.abs((contrast.std(axis=(1, 2)) - stds.mean()) / stds.std()).max() > 3


def test_cli_checks_a_run_folder_and_the_report_shows_it(task):
    from diffboost.cli import app
    from diffboost.report import write_report

    root, ps, teacher = task
    write_set(root / "synthetic" / "fold0", ps, 0, [("", same), ("dark", erase_lesion)])
    res = CliRunner().invoke(app, ["consistency", str(root), "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((root / "synthetic" / "fold0" / "consistency.json").read_text())
    assert "overall" in res.output and "text: dark" in res.output and "text: plain" in res.output
    assert f"{summary['per_text']['dark']['consistency']:.3f}" in res.output
    assert summary["per_text"]["plain"]["consistency"] == 1.0 > summary["per_text"]["dark"]["consistency"]
    res = CliRunner().invoke(app, ["consistency", "--teacher", str(teacher), "--synthetic",
                                   str(root / "synthetic" / "fold0"), "-q"])
    assert res.exit_code == 0 and "text: dark" in res.output, res.output

    import diffboost.report.figures as figures

    grids = []
    real_grid = figures.grid_png

    def grid_png(rows, *args, **kwargs):
        grids.append(rows)
        return real_grid(rows, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "grid_png", grid_png)
        write_report(root)
    band = grids[0][0][3][:12]  # Fig. 3, first variant: its title band gives its teacher Dice ratio
    assert (band == 255).all(axis=-1).mean() > 0.5 and (band < 100).all(axis=-1).any()
    md = (root / "report.md").read_text()
    assert "## Label consistency of the variants (teacher check)" in md and "Per augmentation text" in md
    assert f"| dark | {summary['per_text']['dark']['variants']} |" in md


def test_run_trains_the_teacher_first_when_the_segmenters_read_its_files(phantom_root, tmp_path, monkeypatch):
    import importlib

    import diffboost.diffusion.train as dtrain
    import diffboost.segmentation.trainer as strainer
    from diffboost.run import RunConfig, run

    gen = importlib.import_module("diffboost.generation.generate")  # the modules, not the functions of that name
    cmp = importlib.import_module("diffboost.segmentation.compare")

    def fake_generate(model, ps, out, fold, cfg, progress=True, replace_stale=False):  # real images, lesions erased
        if not (Path(out) / "generation.json").exists():
            write_set(Path(out), ps, fold, [("", same), ("dark", erase_lesion)])
        return SyntheticSet(out)

    calls, trained = [], []
    real_compare, real_epoch = cmp.compare, strainer._train_epoch
    monkeypatch.setattr(dtrain, "train_diffusion", lambda ps, out, *a, **k: (Path(out) / "model").mkdir(parents=True))
    monkeypatch.setattr(gen, "generate", fake_generate)
    made = tmp_path / "run" / "synthetic" / "fold0" / "consistency.json"
    monkeypatch.setattr(cmp, "compare", lambda ps, augs, *a, **k: calls.append((list(augs), made.exists()))
                        or real_compare(ps, augs, *a, **k))
    monkeypatch.setattr(strainer, "_train_epoch", lambda *a, **k: trained.append(a[4].aug) or real_epoch(*a, **k))
    cfg = {"prepare": {"size": 32}, "generate": {"n": 2}, "ablate": {"sweeps": []},
           "seg": {"channels": [8, 16, 32], "epochs": 1, "batch_size": 4, "teacher_gate": 0.5},
           "compare": {"augs": ["none", "diffboost"], "folds": [0]}}
    run(phantom_root, tmp_path / "run", RunConfig.from_dict(cfg), progress=False)
    assert calls == [(["none"], False), (["none", "diffboost"], True)]  # consistency made before diffboost trains
    assert trained == ["none", "diffboost"]  # the teacher's runs are reused by the comparison
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Label consistency of the variants (teacher check)" in md and "| fold0 |" in md
    assert "label consistency" in json.loads((tmp_path / "run" / "times.json").read_text())
    calls.clear()
    run(phantom_root, tmp_path / "run", RunConfig.from_dict({**cfg, "seg": {**cfg["seg"], "teacher_gate": None}}),
        progress=False, redo=["seg"])  # the gate changes the diffboost runs: redone when asked
    assert calls == [(["none", "diffboost"], True)]  # no filter reads it: checked after the comparison
