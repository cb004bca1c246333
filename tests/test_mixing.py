"""Issue 13 on the segmentation side: the share of samples Algorithm 1 mixes (``mix_prob``), the
``mix-classic`` control (Algorithm 1 with classical variants), and the teacher filters (an image-level
gate and FreeMask's pixel filter)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.segmentation import SegConfig, parse_strategy, train_seg
from diffboost.segmentation.data import FoldData, SyntheticPool, load_synthetic
from builders import Recorder, train_tiny

FAST = dict(channels=(8, 16, 32), epochs=1, batch_size=4)


@pytest.fixture(scope="module")
def ps(tmp_path_factory, phantom_root):
    """Phantoms prepared at 32 px (no synthetic set beside them)."""
    return prepare(phantom_root, tmp_path_factory.mktemp("mixing") / "prepared", PrepareConfig(size=32, folds=3),
                   progress=False)


# ---- a toy fold and one-epoch training -----------------------------------------------------------

def _fold(variants: str | None = "negative", n: int = 8, per: int = 2) -> FoldData:
    """Real images with distinct values, all > 0, lesion masks, and ``per`` variants per image: all
    < 0 ("negative") or zeros, so the input tells real and synthetic pixels apart."""
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(n, 1, 32, 32, dtype=torch.long)
    for j in range(n):
        masks[j, :, 4 + j : 14 + j, 6:20] = 1
    images = 0.1 + 0.5 * torch.rand(n, 1, 32, 32, generator=g) + 0.3 * masks
    data = FoldData(images, masks, list(range(n)))
    if variants is not None:
        shape = (n * per, 1, 32, 32)
        syn = -0.1 - 0.5 * torch.rand(shape, generator=g) if variants == "negative" else torch.zeros(shape)
        data.synthetic = SyntheticPool(syn, torch.arange(n * per).reshape(n, per), torch.full((n,), per), Path("toy"))
    return data


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _reference_epoch(net, opt, loss_fn, data: FoldData, cfg: SegConfig, patch: int, epoch: int) -> None:
    """Algorithm 1 as the trainer ran it before ``mix_prob`` existed (every sample mixed)."""
    from diffboost.segmentation.patchmix import choose_variants, mix, patch_mask
    from diffboost.segmentation.trainer import _epoch_seed, _lr

    for group in opt.param_groups:
        group["lr"] = _lr(cfg, epoch)
    g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    perm = torch.randperm(len(data), generator=g)
    batches = [perm[i : i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]
    pool = data.synthetic
    for b in batches:
        x, y = data.images[b], data.masks[b]
        syn = pool.pick(b, choose_variants(pool.counts[b], g))
        m = patch_mask(len(b), 32, 32, cfg.alpha, patch, g)
        if cfg.mix == "input":
            logits = net(mix(x, syn, m))
        else:
            both = net(torch.cat([x, syn]))
            logits = mix(both[: len(x)], both[len(x):], m)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


# ---- mix_prob ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mix", ["input", "output"])
def test_mix_prob_zero_trains_exactly_as_none(mix):
    base, base_labels = train_tiny(_fold(None), epochs=(0, 1), aug="none")
    never, labels = train_tiny(_fold("negative"), epochs=(0, 1), aug="diffboost", alpha=0.3, mix=mix, mix_prob=0.0)
    assert len(never.inputs) == len(base.inputs) == 4
    assert all(torch.equal(a, b) for a, b in zip(never.inputs, base.inputs))  # no variant reaches the network
    assert all(torch.equal(a, b) for a, b in zip(labels, base_labels))
    assert _same_weights(never, base)
    some, _ = train_tiny(_fold("negative"), epochs=(0, 1), aug="diffboost", alpha=0.3, mix=mix, mix_prob=0.5)
    assert not _same_weights(some, base)  # the control: mixing some samples changes training


@pytest.mark.parametrize("mix", ["input", "output"])
def test_mix_prob_one_is_algorithm_1_as_before_bit_for_bit(mix):
    from monai.losses import DiceCELoss

    from diffboost.segmentation.networks import build_network

    data = _fold("negative")
    cfg = SegConfig(network="unet", channels=(4, 8), batch_size=4, aug="diffboost", alpha=0.5, mix=mix)
    torch.manual_seed(0)
    ref = Recorder(build_network("unet", 2, cfg.channels))
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    for e in (0, 1):
        _reference_epoch(ref, opt, dice_ce, data, cfg, 8, e)
    default, _ = train_tiny(data, epochs=(0, 1), aug="diffboost", alpha=0.5, mix=mix)
    explicit, _ = train_tiny(data, epochs=(0, 1), aug="diffboost", alpha=0.5, mix=mix, mix_prob=1.0)
    assert all(torch.equal(a, b) for a, b in zip(default.inputs, ref.inputs))
    assert _same_weights(default, ref) and _same_weights(explicit, ref)


def test_mix_prob_mixes_each_sample_with_that_probability_and_leaves_the_others_whole():
    data = _fold("zeros")
    net, labels = train_tiny(data, epochs=range(6), aug="diffboost", alpha=0.0, mix_prob=0.4)
    mixed = 0
    for x, y in zip(net.inputs, labels):
        for xi, yi in zip(x, y):
            if not xi.any():  # alpha = 0: a mixed sample is its (zero) variant everywhere
                mixed += 1
                continue
            j = next(j for j in range(len(data)) if torch.equal(xi, data.images[j]))  # unmixed: the real image whole
            assert torch.equal(yi, data.masks[j])
    assert abs(mixed / (6 * len(data)) - 0.4) < 0.15
    out_net, _ = train_tiny(data, epochs=range(6), aug="diffboost", alpha=0.0, mix_prob=0.4, mix="output")
    sizes = [len(x) for x in out_net.inputs]  # 4 real images + the variants of the mixed samples only
    assert sum(s - 4 for s in sizes) == mixed and any(4 < s < 8 for s in sizes)
    for x in out_net.inputs:
        assert x[:4].all() and not x[4:].any()
    # which samples are mixed comes from (seed, epoch) alone: an epoch run on its own draws the same
    alone, _ = train_tiny(data, epochs=(3,), aug="diffboost", alpha=0.0, mix_prob=0.4)
    assert all(torch.equal(a, b) for a, b in zip(alone.inputs, net.inputs[6:8]))


def test_a_sample_whose_variants_were_all_filtered_out_trains_on_its_real_image():
    data = _fold("zeros")
    data.synthetic.counts[0] = 0
    net, _ = train_tiny(data, epochs=range(3), aug="diffboost", alpha=0.0)
    seen = [x for batch in net.inputs for x in batch]
    assert sum(torch.equal(x, data.images[0]) for x in seen) == 3  # whole, once per epoch
    assert sum(not x.any() for x in seen) == 3 * (len(data) - 1)  # the others: mixed, as before


# ---- mix-classic ---------------------------------------------------------------------------------

def test_mix_classic_is_a_strategy_of_the_presets():
    from diffboost.run import RunConfig, preset
    from diffboost.segmentation.config import DEFAULT_COMPARE

    assert parse_strategy("mix-classic") == ("mix-classic", "none")
    assert parse_strategy("mix-classic+classic") == ("mix-classic", "classic")
    with pytest.raises(ValueError, match="strategy"):
        parse_strategy("diffboost+mix-classic")
    cpu = list(preset("cpu").compare.augs)
    assert cpu[cpu.index("diffboost") + 1] == "mix-classic"
    assert "mix-classic" in preset("gpu").compare.augs and "mix-classic" in DEFAULT_COMPARE
    RunConfig.from_dict({"compare": {"augs": ["none", "mix-classic"]}})  # `run` takes it: nothing to generate


def test_mix_classic_variants_are_classical_transforms_drawn_once():
    from diffboost.segmentation.variants import KINDS, classic_variants

    data = _fold(None)
    images, indices = data.images - 0.4, [10 + j for j in range(len(data))]  # values on both sides of 0
    pool = classic_variants(images, indices, n=6)
    assert pool.counts.tolist() == [6] * len(data) and pool.rows.shape == (len(data), 6)
    assert pool.images.shape == (6 * len(data), 1, 32, 32)
    again = classic_variants(images.flip(0), indices[::-1], n=6)  # keyed by sample, not by position
    assert torch.equal(again.images[again.rows.flip(0)], pool.images[pool.rows])
    assert KINDS == ("gamma", "contrast", "noise", "blur", "brightness")
    brightness = []
    for j, real in enumerate(images):
        v = pool.images[pool.rows[j]]
        for x in v:
            assert not torch.equal(x, real)
        # 0, 5 gamma: order and statistics kept, each with its own strength
        for k in (0, 5):
            order = torch.argsort(real.flatten())
            assert (v[k].flatten()[order].diff() >= -1e-6).all()
            assert v[k].mean() == pytest.approx(float(real.mean()), abs=1e-5)
            assert v[k].std() == pytest.approx(float(real.std()), abs=1e-5)
        assert not torch.equal(v[0], v[5])
        # 1 contrast: scaled around the mean by 0.75-1.25 (inside the original range)
        inside = (v[1] > real.min() + 1e-6) & (v[1] < real.max() - 1e-6)
        ratio = ((v[1] - real.mean()) / (real - real.mean()))[inside & ((real - real.mean()).abs() > 0.05)]
        assert 0.75 - 1e-4 <= float(ratio.min()) and float(ratio.max()) <= 1.25 + 1e-4
        assert float(ratio.max() - ratio.min()) < 1e-3
        # 2 noise: additive, zero-mean, std at most 0.15
        d = v[2] - real
        assert 0 < float(d.std()) <= 0.16 and abs(float(d.mean())) < 0.05
        # 3 blur: smoother than the real image
        assert (v[3].diff(dim=-1).abs().mean() < 0.7 * real.diff(dim=-1).abs().mean())
        # 4 brightness: one factor in 0.75-1.25
        f = v[4] / real
        assert float(f.max() - f.min()) < 1e-4 and 0.75 <= float(f.mean()) <= 1.25
        brightness.append(float(f.mean()))
    assert len({round(b, 4) for b in brightness}) == len(data)  # a strength drawn per image


def test_mix_classic_trains_without_a_synthetic_set_and_records_what_defines_it(ps, tmp_path, monkeypatch):
    import diffboost.segmentation.trainer as trainer
    from diffboost.segmentation.variants import classic_identity, classic_variant

    assert not (ps.root.parent / "synthetic").exists()

    class Seen(Exception):
        pass

    def record(net, opt, loss_fn, data, cfg, augment, patch, epoch, **kw):
        raise Seen(data)

    real_epoch = trainer._train_epoch
    monkeypatch.setattr(trainer, "_train_epoch", record)
    for n, expected in ((None, 3), (5, 5)):
        out = tmp_path / f"n{n}"
        with pytest.raises(Seen) as e:
            train_seg(ps, 0, SegConfig(**FAST, aug="mix-classic", n=n), out, progress=False)
        data = e.value.args[0]
        pool = data.synthetic
        assert pool.counts.tolist() == [expected] * len(data)
        for j in (0, len(data) - 1):
            for v in range(expected):
                assert torch.equal(pool.images[pool.rows[j, v]], classic_variant(data.images[j], data.indices[j], v))
        ident = json.loads((out / "run.json").read_text())
        assert ident["synthetic"] is None and ident["synthetic_variants"] == classic_identity(n)
        assert ident["synthetic_variants"]["n"] == expected and ident["synthetic_variants"]["source"] == "mix-classic"
    monkeypatch.setattr(trainer, "_train_epoch", real_epoch)
    s = train_seg(ps, 0, SegConfig(**FAST, aug="mix-classic+mirror", mix_prob=0.5), tmp_path / "run", progress=False)
    assert s["strategy"] == "mix-classic+mirror" and s["cases"] == len(ps.fold(0).test)


# ---- teacher filters -----------------------------------------------------------------------------

def _synthetic_set(ps, out: Path, per: int = 3) -> list[int]:
    """A synthetic set of fold 0: ``per`` noisy copies of each training image; returns the training indices."""
    from diffboost.generation.generate import GenerateConfig, write_synthetic_set

    idx = ps.indices(ps.fold(0).train, training=True)
    rng = np.random.default_rng(0)
    rows, images = [], []
    for v in range(per):
        for ri in idx:
            rows.append({"index": len(rows), "real_index": ri, "case_id": ps.manifest[ri]["case_id"], "slice_index": 0,
                         "variant": v, "category": "", "prompt": "", "text": "", "seed": 0, "sampler": "test",
                         "steps": 0, "guidance": 0.0, "model_hash": ""})
            images.append(np.clip(np.asarray(ps.images[ri], np.float32) + rng.normal(0, 0.1, (32, 32)), -1, 1))
    out.mkdir(parents=True)
    write_synthetic_set(out, ps, rows, np.stack(images).astype(np.float16), GenerateConfig(), {"fold": 0})
    return idx


def _write_consistency(out: Path, dice: dict[int, tuple[float, float]]) -> None:
    from diffboost.generation.generate import SyntheticSet

    syn = SyntheticSet(out)
    with open(out / "consistency.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant_index", "real_index", "teacher_dice_variant", "teacher_dice_real"])
        for r, (v, real) in dice.items():
            w.writerow([r, syn.manifest[r]["real_index"], v, real])


def test_teacher_gate_drops_the_variants_the_teacher_finds_inconsistent(ps, tmp_path, monkeypatch):
    from diffboost.generation.generate import SyntheticSet

    out = tmp_path / "syn"
    idx = _synthetic_set(ps, out)
    syn = SyntheticSet(out)
    with pytest.raises(FileNotFoundError, match="consistency.csv"):
        load_synthetic(out, ps, 0, idx, 32, teacher_gate=0.8)
    dice = {}
    for r in syn.manifest:  # real 0.8: gate 0.8 keeps a variant from 0.64 on
        v = [0.9, 0.5, 0.7][r["variant"]]
        dice[r["index"]] = (0.1 if r["real_index"] == idx[0] else v, 0.8)
    dice[syn.by_real[idx[1]][1]] = (0.5, float("nan"))  # undefined on the real image: kept
    _write_consistency(out, dice)
    pool = load_synthetic(out, ps, 0, idx, 32, teacher_gate=0.8)
    expected = [[r for r in sorted(syn.by_real[ri], key=lambda r: syn.manifest[r]["variant"])
                 if dice[r][0] >= 0.64 or np.isnan(dice[r][1])] for ri in idx]
    assert pool.counts.tolist() == [len(e) for e in expected] and expected[0] == [] and len(expected[1]) == 3
    for j, rows in enumerate(expected):
        for k, r in enumerate(rows):
            assert torch.equal(pool.images[pool.rows[j, k], 0], torch.from_numpy(np.asarray(syn.images[r], np.float32)))
    assert load_synthetic(out, ps, 0, idx, 32, n=1, teacher_gate=0.8).counts.tolist() == [0] + [1] * (len(idx) - 1)
    assert load_synthetic(out, ps, 0, idx, 32).counts.tolist() == [3] * len(idx)  # off: every variant
    # train_seg reads it and records the teacher's file in the run's identity
    import diffboost.segmentation.trainer as trainer

    class Seen(Exception):
        pass

    def record(net, opt, loss_fn, data, *args, **kwargs):
        raise Seen(data)

    monkeypatch.setattr(trainer, "_train_epoch", record)
    with pytest.raises(Seen) as e:
        train_seg(ps, 0, SegConfig(**FAST, aug="diffboost", teacher_gate=0.8, synthetic=str(out)), tmp_path / "run",
                  progress=False)
    assert e.value.args[0].synthetic.counts.tolist() == pool.counts.tolist()
    ident = json.loads((tmp_path / "run" / "run.json").read_text())
    assert ident["config"]["teacher_gate"] == 0.8 and set(ident["teacher"]) == {"consistency.csv"}


def test_pixel_filter_marks_exactly_the_pixels_above_the_threshold(ps, tmp_path, monkeypatch):
    from diffboost.generation.generate import SyntheticSet

    out = tmp_path / "syn"
    idx = _synthetic_set(ps, out)
    syn = SyntheticSet(out)
    with pytest.raises(FileNotFoundError, match="teacher_loss.npy"):
        load_synthetic(out, ps, 0, idx, 32, pixel_filter=1.25)
    loss = np.random.default_rng(1).gamma(1.0, 0.4, (len(syn), 32, 32)).astype(np.float16)
    np.save(out / "teacher_loss.npy", loss)
    with pytest.raises(FileNotFoundError, match="consistency.json"):
        load_synthetic(out, ps, 0, idx, 32, pixel_filter=1.25)
    (out / "consistency.json").write_text(json.dumps({"teacher_loss_real_mean": 0.4}))
    pool = load_synthetic(out, ps, 0, idx, 32, n=2, pixel_filter=1.25)
    assert pool.ignore.dtype == torch.bool and pool.ignore.shape == pool.images.shape
    for j, ri in enumerate(idx):
        for k, r in enumerate(sorted(syn.by_real[ri], key=lambda r: syn.manifest[r]["variant"])[:2]):
            above = torch.from_numpy(loss[r].astype(np.float32) > 1.25 * 0.4)
            assert torch.equal(pool.ignore[pool.rows[j, k], 0], above)
    assert 0.2 < float(pool.ignore.float().mean()) < 0.5
    assert load_synthetic(out, ps, 0, idx, 32).ignore is None  # off
    # train_seg reads it and records the teacher's file in the run's identity
    import diffboost.segmentation.trainer as trainer

    class Seen(Exception):
        pass

    def record(net, opt, loss_fn, data, *args, **kwargs):
        raise Seen(data)

    monkeypatch.setattr(trainer, "_train_epoch", record)
    with pytest.raises(Seen) as e:
        train_seg(ps, 0, SegConfig(**FAST, aug="diffboost", n=2, pixel_filter=1.25, synthetic=str(out)),
                  tmp_path / "run", progress=False)
    assert torch.equal(e.value.args[0].synthetic.ignore, pool.ignore)
    assert set(json.loads((tmp_path / "run" / "run.json").read_text())["teacher"]) == {"consistency.json"}


def test_masked_loss_ignores_exactly_the_filtered_pixels():
    from monai.losses import DiceCELoss

    from diffboost.segmentation.trainer import masked_dice_ce

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (2, 1, 16, 16), generator=g)
    keep = torch.rand(2, 1, 16, 16, generator=g) > 0.3
    base = masked_dice_ce(logits, labels, keep)
    for b, i, j in [(0, 3, 4), (1, 10, 2), (1, 0, 15)]:
        changed, relabelled = logits.clone(), labels.clone()
        changed[b, :, i, j] += torch.tensor([4.0, -3.0, 2.0])
        relabelled[b, 0, i, j] = (labels[b, 0, i, j] + 1) % 3
        k = keep.clone()
        k[b, 0, i, j] = False  # filtered: neither the prediction nor the label there counts
        ref = masked_dice_ce(logits, labels, k)
        assert torch.equal(masked_dice_ce(changed, labels, k), ref)
        assert torch.equal(masked_dice_ce(logits, relabelled, k), ref)
        k[b, 0, i, j] = True  # kept: both count
        assert not torch.equal(masked_dice_ce(changed, labels, k), masked_dice_ce(logits, labels, k))
        assert not torch.equal(masked_dice_ce(logits, relabelled, k), masked_dice_ce(logits, labels, k))
    x = logits.clone().requires_grad_()
    masked_dice_ce(x, labels, keep).backward()
    grad = x.grad.abs().sum(1, keepdim=True)
    assert (grad[~keep] == 0).all() and (grad[keep] > 0).all()
    whole = masked_dice_ce(logits, labels, torch.ones_like(keep))
    assert float(whole) == pytest.approx(float(DiceCELoss(include_background=False, to_onehot_y=True,
                                                          softmax=True)(logits, labels)), rel=1e-5)
    assert float(base) != pytest.approx(float(whole), rel=1e-3)
    whole_batch = masked_dice_ce(logits, labels, torch.ones_like(keep), batch=True)  # the trainer's default
    assert float(whole_batch) == pytest.approx(float(DiceCELoss(include_background=False, to_onehot_y=True,
                                                                softmax=True, batch=True)(logits, labels)), rel=1e-5)


@pytest.mark.parametrize("aug", ["diffboost", "diffboost+mirror"])
def test_training_leaves_out_the_filtered_pixels_where_the_variant_is_used(aug, monkeypatch):
    import diffboost.segmentation.trainer as trainer

    data = _fold("zeros", per=2)
    pool = data.synthetic
    g = torch.Generator().manual_seed(5)
    pool.ignore = torch.rand(pool.images.shape, generator=g) < 0.4  # per variant, not symmetric
    pool.images = torch.where(pool.ignore, -0.5, -0.25)  # the input shows where the variant is filtered
    seen = []
    real = trainer.masked_dice_ce

    def record(logits, labels, keep, **kw):
        seen.append((keep.clone(), labels.clone()))
        return real(logits, labels, keep, **kw)

    monkeypatch.setattr(trainer, "masked_dice_ce", record)
    net, _ = train_tiny(data, epochs=(0, 1), aug=aug, alpha=0.5, pixel_filter=1.25, aug_prob=0.5)
    assert len(seen) == len(net.inputs) == 4  # every batch had filtered pixels
    flips = set()
    for x, (keep, y) in zip(net.inputs, seen):
        assert torch.equal(keep, x != -0.5)  # exactly the variant's filtered pixels that Algorithm 1 used
        assert (x == -0.25).any() and (x > 0).any()
        for xi, yi in zip(x, y):
            r = xi > 0
            j, dims = next((j, d) for j in range(len(data)) for d in [(), (1,), (2,), (1, 2)]
                           if torch.equal(xi[r], data.images[j].flip(d)[r]))
            assert torch.equal(yi, data.masks[j].flip(dims))  # labels moved with the image, nothing left over
            flips.add(dims)
    assert (len(flips) > 1) == (aug == "diffboost+mirror")

    seen.clear()  # output mixing: the filtered pixels lie where the variant's prediction is used
    net, _ = train_tiny(data, epochs=(0,), aug="diffboost", alpha=0.5, pixel_filter=1.25, mix="output")
    for x, (keep, _) in zip(net.inputs, seen):
        assert (~keep).any() and not (~keep & (x[4:] != -0.5)).any()


# ---- options -------------------------------------------------------------------------------------

def test_the_new_options_are_checked_and_sweepable():
    from diffboost.ablate import check_values, parse_sweep
    from diffboost.run import RunConfig

    for bad, name in [({"mix_prob": 1.5}, "mix_prob"), ({"mix_prob": -0.1}, "mix_prob"),
                      ({"teacher_gate": -0.1}, "teacher_gate"), ({"pixel_filter": 0.0}, "pixel_filter")]:
        with pytest.raises(ValueError, match=name):
            SegConfig(**bad)
    assert parse_sweep("mix_prob=0,0.5,1") == ("mix_prob", [0.0, 0.5, 1.0])
    assert parse_sweep("teacher_gate=none,0.8") == ("teacher_gate", [None, 0.8])
    assert parse_sweep("pixel_filter=None, 1.25") == ("pixel_filter", [None, 1.25])
    with pytest.raises(ValueError, match="mix_prob=2.0: mix_prob must be in"):
        check_values(SegConfig(), "mix_prob", [0.5, 2.0], 32)
    cfg = RunConfig.from_dict({"seg": {"mix_prob": 0.5, "teacher_gate": 0.8, "pixel_filter": 1.25},
                               "ablate": {"sweeps": ["mix_prob=0,0.5,1", "pixel_filter=none,1.25"]}})
    assert (cfg.seg.mix_prob, cfg.seg.teacher_gate, cfg.seg.pixel_filter) == (0.5, 0.8, 1.25)
    ident = SegConfig(aug="diffboost").identity()
    assert (ident["mix_prob"], ident["teacher_gate"], ident["pixel_filter"]) == (1.0, None, None)
