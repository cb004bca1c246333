"""The generator learns from every training image of a fold: labelled ones with their mask condition,
unlabelled ones (and, with mask_dropout, some labelled ones) with the "no mask" condition; it draws
variants of the unlabelled images too, which fixmatch-diffboost takes as strong views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.data.store import HiddenLabel
from diffboost.diffusion.conditions import NO_MASK, condition_inputs
from diffboost.diffusion.models import ModelConfig
from diffboost.diffusion.train import TrainConfig, finetune_indices, new_pipeline, train_diffusion
from diffboost.generation import GenerateConfig, generate

TINY = dict(image_size=32, channels=(8, 16, 32), attention=(False, True, True))


@pytest.fixture(scope="module")
def budget_set(tmp_path_factory):
    from diffboost.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("ugen")
    src = generate_phantoms(root / "src", n=18, seed=6)
    return root, prepare(src, root / "prepared", PrepareConfig(size=32, folds=3, budget="0.5"), progress=False)


def test_an_unlabelled_image_is_conditioned_on_its_edges_and_no_mask(budget_set):
    _, ps = budget_set
    bound = ps.for_fold(0)
    f = ps.fold(0)
    lab, unl = bound.indices(f.train)[:2], bound.indices(f.unlabelled)[:2]
    idx = np.asarray(sorted(lab + unl))
    cond, masks = condition_inputs(bound, idx, np.zeros(len(idx), bool), [1], 1)
    for j, i in enumerate(idx):
        if i in unl:  # edges alone, the "no mask" value in every label channel
            np.testing.assert_allclose(cond[j, 0], np.asarray(ps.edges[i], np.float32) / 255)
            assert (masks[j] == NO_MASK).all()
        else:
            np.testing.assert_allclose(cond[j, 0], np.asarray(bound.conditions[i], np.float32) / 255)
            np.testing.assert_array_equal(masks[j, 0], np.asarray(bound.masks[i]) == 1)
    # a labelled image the dropout picks takes the "no mask" condition as well
    cond2, masks2 = condition_inputs(bound, idx, np.ones(len(idx), bool), [1], 1)
    assert (masks2 == NO_MASK).all() and np.allclose(cond2[:, 0], np.asarray(ps.edges[idx], np.float32) / 255)


def test_fine_tuning_on_every_image_never_reads_an_unlabelled_mask(budget_set, tmp_path, monkeypatch):
    root, ps = budget_set
    bound = ps.for_fold(0)
    tcfg = TrainConfig(steps=3, batch_size=8, unlabelled=True, mask_dropout=0.2, checkpoint_every=100,
                       validate_every=100)
    idx = finetune_indices(bound, 0, tcfg)
    f = ps.fold(0)
    assert set(idx) == set(ps.indices([*f.train, *f.unlabelled], training=True))
    assert not set(idx) & set(ps.indices([*f.val, *f.test]))  # never a validation or test image
    asked = []
    real = type(bound.masks).__getitem__

    def watched(self, rows):  # every mask row read during fine-tuning
        asked.extend(np.atleast_1d(np.arange(len(self))[rows]).tolist())
        return real(self, rows)

    monkeypatch.setattr(type(bound.masks), "__getitem__", watched)
    mcfg = ModelConfig(condition="edges+mask", mask_channels=1, **TINY)
    train_diffusion(bound, tmp_path / "ft", idx, mcfg, tcfg, progress=False)
    hidden = set(ps.indices(f.unlabelled))
    assert asked and not hidden & set(asked)  # masks were read, never an unlabelled image's
    record = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert record["unlabelled_samples"] == len(hidden & set(idx)) > 0
    assert record["labelled_samples"] == len(idx) - record["unlabelled_samples"]
    # without the option the unlabelled images are left out, as before
    assert set(finetune_indices(bound, 0, TrainConfig())) == set(ps.indices(f.train, training=True))


def test_variants_of_unlabelled_images_feed_fixmatch_diffboost(budget_set, tmp_path, monkeypatch):
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.segmentation.config import SegConfig
    from diffboost.segmentation.trainer import train_seg

    root, ps = budget_set
    torch.manual_seed(0)
    new_pipeline(ModelConfig(condition="edges+mask", mask_channels=1, **TINY)).save_pretrained(tmp_path / "m")
    seen = []
    real_call = DiffBoostPipeline.__call__

    def recording(self, prompts, conditions, seeds, **k):
        seen.append(np.asarray(k["masks"]).copy())
        return real_call(self, prompts, conditions, seeds, **k)

    monkeypatch.setattr(DiffBoostPipeline, "__call__", recording)
    syn_root = root / "synthetic" / "fold0"
    syn = generate(tmp_path / "m", ps, syn_root, 0, GenerateConfig(n=1, steps=2, batch_size=64, unlabelled=True),
                   progress=False)
    f = ps.fold(0)
    unl = set(ps.indices(f.unlabelled, training=True))
    made = {r["real_index"] for r in syn.manifest}
    assert made == set(ps.indices(f.train, training=True)) | unl and unl
    masks = np.concatenate(seen)
    by_row = {r["real_index"]: r["index"] for r in syn.manifest}
    for i in unl:
        assert (masks[by_row[i]] == NO_MASK).all()
    # the variants feed fixmatch-diffboost's strong views (and Algorithm 1 on the labelled images)
    cfg = SegConfig(network="unet", channels=(8, 16, 32), size=32, epochs=1, batch_size=4, steps_per_epoch=2,
                    min_val_cases=1, aug="fixmatch-diffboost+classic", threads=1, unlabelled_batch=4, confidence=0.5)
    summary = train_seg(ps, 0, cfg, tmp_path / "seg", progress=False)
    assert summary["unlabelled_images"] == len(unl)
    # self-training + DiffBoost: the pseudo-labelled images are mixed with their own variants by Algorithm 1
    st = SegConfig(**{**cfg.__dict__, "aug": "self-train+diffboost", "self_train_keep": 1.0})
    summary = train_seg(ps, 0, st, tmp_path / "st", progress=False)
    assert summary["pseudo_labelled_images"] == len(unl)
    # a set without the unlabelled images' variants is refused with what to do
    plain = generate(tmp_path / "m", ps, tmp_path / "plain", 0, GenerateConfig(n=1, steps=2, batch_size=64), progress=False)
    with pytest.raises(ValueError, match="--unlabelled"):
        train_seg(ps, 0, SegConfig(**{**cfg.__dict__, "synthetic": str(plain.root)}), tmp_path / "seg2", progress=False)
    with pytest.raises(HiddenLabel):
        ps.for_fold(0).masks[sorted(unl)[:1]]


def test_hidden_images_show_no_category_and_give_every_slice(budget_set, tmp_path):
    from builders import make_msd

    from diffboost.diffusion.conditions import visible_prompt
    from diffboost.generation.quality import quality_filter
    from diffboost.segmentation.semisup import unlabelled_indices

    root, ps = budget_set
    bound = ps.for_fold(0)
    f = ps.fold(0)
    for i in ps.indices(f.unlabelled):  # a hidden image's category (an image-level label) is not shown
        assert visible_prompt(bound, i) == ps.manifest[i]["prompt"].replace(ps.manifest[i]["category"], "unknown")
    for i in ps.indices(f.train):
        assert visible_prompt(bound, i) == ps.manifest[i]["prompt"]
    torch.manual_seed(0)
    new_pipeline(ModelConfig(**TINY)).save_pretrained(tmp_path / "m")
    syn = generate(tmp_path / "m", ps, tmp_path / "s", 0, GenerateConfig(n=1, steps=2, batch_size=64, unlabelled=True),
                   progress=False)
    from diffboost.report import figures

    assert figures.variants(ps, syn)[:4] == b"\x89PNG"  # the report's grid shows labelled images' variants only
    kept = quality_filter(syn, bound)  # scores the labelled images' variants, keeps the others unscored
    assert {r["index"] for r in syn.manifest if not bound.label_readable(r["real_index"])} <= kept
    # a volume whose label is hidden gives every slice, not the ones its mask marks for training
    vol = prepare(make_msd(tmp_path / "Task99", n=8), tmp_path / "p3d", PrepareConfig(size=32, folds=2, budget="0.5"),
                  progress=False)
    g = vol.fold(0)
    idx = unlabelled_indices(vol, 0, "fixmatch")
    assert idx == vol.indices(g.unlabelled) and len(idx) > len(vol.indices(g.unlabelled, training=True))
