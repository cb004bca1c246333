"""Unlabelled images in the segmenter's training: fixmatch, fixmatch-diffboost and self-train read the
images of a fold's unlabelled training cases and never their labels; with nothing passing the
confidence threshold fixmatch is the supervised strategy exactly; the diffusion strong view keeps the
weak view's geometry and the pseudo-label comes from the real image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.data.store import PreparedSet
from diffboost.segmentation.config import SegConfig, parse_strategy, semi_of, supervised_part
from diffboost.segmentation.data import SyntheticPool
from diffboost.segmentation.semisup import FixMatch, image_confidence, mirror, pseudo_labelled
from diffboost.segmentation.trainer import train_seg


@pytest.fixture(scope="module")
def budget_set(tmp_path_factory):
    from diffboost.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("semi")
    src = generate_phantoms(root / "busi", n=24, seed=4)
    return prepare(src, root / "prepared", PrepareConfig(size=32, folds=3, budget="0.5"), progress=False)


def _cfg(aug: str, **kw) -> SegConfig:
    return SegConfig(network="unet", channels=(8, 16, 32), size=32, epochs=2, batch_size=4, steps_per_epoch=2,
                     min_val_cases=1, aug=aug, threads=1, unlabelled_batch=4, **kw)


def test_strategy_names():
    assert parse_strategy("fixmatch+classic") == (None, "classic") and semi_of("fixmatch+classic") == "fixmatch"
    assert parse_strategy("fixmatch-diffboost+classic") == ("diffboost", "classic")
    assert semi_of("self-train+diffboost+classic") == "self-train" and semi_of("diffboost+classic") is None
    assert supervised_part("self-train+diffboost+classic") == "diffboost+classic"
    assert supervised_part("fixmatch-diffboost+classic") == "diffboost+classic"
    assert supervised_part("self-train") == "none" and supervised_part("fixmatch+classic") == "classic"
    with pytest.raises(ValueError, match="semi-supervised"):
        parse_strategy("fixmatch+self-train")
    # a learner's options are in its runs' identity only: sweeping them never retrains classic
    assert "confidence" in SegConfig(aug="fixmatch").identity() and "self_train_keep" not in SegConfig(aug="fixmatch").identity()
    assert "confidence" not in SegConfig(aug="classic").identity()
    with pytest.raises(ValueError, match="confidence"):
        SegConfig(confidence=1.5)


def test_fixmatch_with_nothing_confident_trains_exactly_as_the_supervised_strategy(budget_set, tmp_path):
    sup = train_seg(budget_set, 0, _cfg("classic"), tmp_path / "classic", progress=False)
    semi = train_seg(budget_set, 0, _cfg("fixmatch+classic", confidence=1.0), tmp_path / "fixmatch", progress=False)
    a = np.load(tmp_path / "classic" / "predictions.npz")
    b = np.load(tmp_path / "fixmatch" / "predictions.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert semi["metrics"]["dice"] == sup["metrics"]["dice"]
    assert semi["unlabelled_images"] == len(budget_set.indices(budget_set.fold(0).hidden, training=True)) > 0
    # a threshold that passes pixels changes what is learned
    other = train_seg(budget_set, 0, _cfg("fixmatch+classic", confidence=0.0), tmp_path / "fm0", progress=False)
    c = np.load(tmp_path / "fm0" / "predictions.npz")
    assert other["identity"]["unlabelled_cases"] and not all(np.array_equal(a[k], c[k]) for k in a.files)


def _with_hidden_labels_changed(ps: PreparedSet, dest, fold: int = 0) -> PreparedSet:
    """A copy of the prepared set whose labels hidden in ``fold`` (by the budget) are scrambled."""
    import shutil

    shutil.copytree(ps.root, dest)
    masks = np.load(dest / "masks.npy")
    hidden = ps.indices(ps.fold(fold).unlabelled)
    assert hidden
    masks[hidden] = np.random.default_rng(0).integers(0, 2, masks[hidden].shape, dtype=masks.dtype)
    np.save(dest / "masks.npy", masks)
    return PreparedSet(dest)


@pytest.mark.parametrize("aug", ["fixmatch", "self-train"])
def test_a_hidden_label_never_reaches_a_pseudo_label_or_a_loss(budget_set, tmp_path, aug):
    kw = {"confidence": 0.5, "self_train_keep": 1.0} if aug == "self-train" else {"confidence": 0.5}
    changed = _with_hidden_labels_changed(budget_set, tmp_path / "changed", fold=0)
    a = train_seg(budget_set, 0, _cfg(aug, **kw), tmp_path / "a", progress=False)
    b = train_seg(changed, 0, _cfg(aug, **kw), tmp_path / "b", progress=False)
    assert a["metrics"] == b["metrics"]  # the scrambled hidden labels changed nothing
    pa, pb = np.load(tmp_path / "a" / "predictions.npz"), np.load(tmp_path / "b" / "predictions.npz")
    assert all(np.array_equal(pa[k], pb[k]) for k in pa.files)
    if aug == "self-train":
        assert a["pseudo_labelled_images"] == a["unlabelled_images"] > 0
        assert json.loads((tmp_path / "a" / "teacher" / "summary.json").read_text())["strategy"] == "none"


def test_self_training_keeps_the_most_confident_images():
    class Fixed(torch.nn.Module):  # logits that make image i confident in proportion to i
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            s = x.mean((1, 2, 3), keepdim=True) * 10
            return torch.cat([torch.zeros_like(x), s.expand_as(x)], 1)

    images = torch.arange(1, 7, dtype=torch.float32)[:, None, None, None].expand(6, 1, 4, 4).contiguous() / 6
    chosen, labels, keep, score = pseudo_labelled(Fixed(), images, SegConfig(self_train_keep=0.5, confidence=0.9995))
    assert chosen.tolist() == [3, 4, 5] and bool((labels == 1).all())
    assert keep[-1].all() and not keep[0].any()  # sigmoid(10 * 4/6) < 0.9995 < sigmoid(10)
    conf = torch.full((2, 1, 4, 4), 0.6)
    conf[0, 0, :2] = 0.9
    lab = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    lab[0, 0, :2] = 1
    assert torch.allclose(image_confidence(lab, conf), torch.tensor([0.9, 0.6]))


class _Recorder(torch.nn.Module):
    """A model that records what it sees in evaluation mode (where pseudo-labels are made) and in training."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.seen_eval: list[torch.Tensor] = []

    def forward(self, x):
        if not self.training:
            self.seen_eval.append(x.clone())
        return self.conv(x)


def test_the_diffusion_strong_view_keeps_the_geometry_and_the_pseudo_label_comes_from_the_real_image():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(5, 1, 16, 16, generator=g) * 2 - 1
    variants = -real  # a variant that keeps every edge where the image has it (here: inverted intensities)
    pool = SyntheticPool(variants, torch.arange(5)[:, None], torch.ones(5, dtype=torch.long), "test")
    cfg = SegConfig(unlabelled_batch=4, cutmix_prob=0.0, confidence=0.0)
    fm = FixMatch(real, cfg, pool)
    fm.strong.compose = None  # no intensity change: compare the geometry exactly
    net = _Recorder()
    strong, labels, keep = fm.views(net, epoch=3, step=1)
    weak = net.seen_eval[0]
    assert len(net.seen_eval) == 1 and net.training  # one evaluation-mode pass, mode restored
    # the pseudo-label came from real images (mirrored), never from a variant, and the strong view is the
    # same pictures' variants in the same mirrored geometry
    for w, s in zip(weak, strong):
        i = next(k for k in range(5) for f in ([], [-2], [-1], [-2, -1])
                 if torch.equal(w, real[k].flip(f) if f else real[k]))
        assert any(torch.equal(s, (variants[i].flip(f) if f else variants[i])) and torch.equal(w, real[i].flip(f) if f else real[i])
                   for f in ([], [-2], [-1], [-2, -1]))
    assert torch.equal(labels, net.conv(weak).argmax(1, keepdim=True))
    # CutMix pastes a box of the next image into the strong view and its pseudo-label alike (the same
    # draws up to the boxes: the same images, mirrored alike)
    fm.cfg = SegConfig(unlabelled_batch=4, cutmix_prob=1.0, confidence=0.0)
    strong2, labels2, _ = fm.views(net, epoch=3, step=1)
    for i in range(4):
        box = strong2[i] != strong[i]
        assert box.any()
        rows, cols = box[0].nonzero(as_tuple=True)
        assert box[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one rectangle
        nxt = (i + 1) % 4
        assert torch.equal(strong2[i], torch.where(box, strong[nxt], strong[i]))
        assert torch.equal(labels2[i], torch.where(box, labels[nxt], labels[i]))


def test_mirror_flips_each_axis_on_its_own():
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    flips = torch.tensor([[True, False], [False, True]])
    out = mirror(x, flips)
    assert torch.equal(out[0], x[0].flip(-2)) and torch.equal(out[1], x[1].flip(-1))


def test_a_learning_curve_runs_a_semi_supervised_strategy_where_there_are_unlabelled_images(tmp_path):
    from diffboost.data.phantoms import generate_phantoms
    from diffboost.segmentation.curves import curve_markdown, learning_curve

    src = generate_phantoms(tmp_path / "src", n=18, seed=8)
    ps = prepare(src, tmp_path / "prepared", PrepareConfig(size=32, folds=3), progress=False)
    cfg = SegConfig(network="unet", channels=(8, 16, 32), size=32, epochs=1, batch_size=4, steps_per_epoch=1,
                    min_val_cases=1, threads=1, unlabelled_batch=4)
    curve = learning_curve(ps, ["0.5", "1"], ["none", "classic", "fixmatch+classic"], cfg, tmp_path / "lc",
                           progress=False)
    assert curve["dice"]["fixmatch+classic"]["1"] is None  # every label: no unlabelled image to learn from
    assert curve["dice"]["fixmatch+classic"]["0.5"]["mean"] >= 0
    assert "fixmatch+classic vs classic" in curve["gains"]["0.5"] and "fixmatch+classic vs classic" not in curve["gains"]["1"]
    assert "fixmatch+classic" in curve["labels_saved"]
    row = next(l for l in curve_markdown(curve).splitlines() if l.startswith("| fixmatch+classic |"))
    assert row.rstrip(" |").endswith("–")
    from diffboost.report.figures import learning_curve as plot

    assert plot(curve)[:4] == b"\x89PNG"


def test_a_run_with_a_learner_and_no_unlabelled_images_is_refused_when_the_config_loads(tmp_path):
    from diffboost.runconfig import load_run_config

    f = tmp_path / "semi.yaml"
    f.write_text("compare:\n  augs: [classic, fixmatch+classic]\n")
    with pytest.raises(ValueError, match=r"'fixmatch\+classic' learns from unlabelled images, and this run has none"):
        load_run_config(f)
    f.write_text("prepare:\n  budget: '0.1'\ncompare:\n  augs: [classic, fixmatch+classic]\n")
    assert load_run_config(f).compare.augs[-1] == "fixmatch+classic"


def test_todays_options_leave_older_stages_and_ablations_reusable():
    from diffboost.config import PrepareConfig as P
    from diffboost.config import to_dict
    from diffboost.run import prepare_identity
    from diffboost.runconfig import load_run_config, preset
    from diffboost.stages import comparable

    assert "target" not in prepare_identity(P())  # a run made before --target keeps its prepare stage
    assert prepare_identity(P(target="/x/BUS-BRA"))["target"] is True  # content is in the source fingerprint
    cfg = preset("cpu")
    new = {k: to_dict(getattr(cfg, k)) for k in ("prepare", "train", "generate", "seg")}
    old = {k: dict(v) for k, v in new.items()}
    for section, keys in {"prepare": ["target"], "train": ["unlabelled", "mask_dropout"],
                          "generate": ["unlabelled", "target_style"],
                          "seg": ["confidence", "unlabelled_batch", "unlabelled_weight", "cutmix_prob", "self_train_keep",
                                  "self_train_rounds"]}.items():
        for k in keys:
            old[section].pop(k)
    assert comparable(old) == comparable(new)  # an ablation recorded before them matches
    new["seg"]["confidence"] = 0.9
    assert comparable(old) != comparable(new)  # a changed option still counts


def test_a_strategy_on_variants_of_unlabelled_images_needs_a_generator_that_learns_them(tmp_path):
    from diffboost.runconfig import load_run_config

    f = tmp_path / "fd.yaml"
    f.write_text("prepare:\n  budget: '0.1'\ncompare:\n  augs: [fixmatch-diffboost+classic]\n")
    with pytest.raises(ValueError, match="train.unlabelled: true, or train.mask_dropout"):
        load_run_config(f)
    f.write_text("prepare:\n  budget: '0.1'\ntrain:\n  unlabelled: true\ncompare:\n  augs: [fixmatch-diffboost+classic]\n")
    assert load_run_config(f).train.unlabelled


def test_the_validation_rule_keeps_images_where_the_teachers_labels_were_more_right_than_wrong():
    from diffboost.segmentation.semisup import confidence_cut

    class Half(torch.nn.Module):  # foreground on the left half, confidence rising with the image's mean
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            s = 2 + 4 * x.mean((1, 2, 3), keepdim=True)
            left = torch.zeros_like(x)
            left[..., : x.shape[-1] // 2] = 1
            return torch.cat([(1 - left) * s, left * s], 1)

    images = torch.linspace(0, 1, 4)[:, None, None, None].expand(4, 1, 4, 4).contiguous()
    masks = torch.zeros(4, 1, 4, 4, dtype=torch.long)
    masks[2:, ..., :2] = 1  # the teacher is right on the two most confident images, wrong on the others
    cut = confidence_cut(Half(), images, masks, [1])
    from diffboost.segmentation.semisup import _predict, image_confidence

    score = image_confidence(*_predict(Half(), images))
    assert cut == pytest.approx(float(score[2]))  # images 2 and 3 enter, 0 and 1 do not
    masks[:] = 0
    assert confidence_cut(Half(), images, masks, [1]) == float("inf")  # never more right than wrong: none
