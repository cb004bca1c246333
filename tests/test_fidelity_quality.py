"""Table I (fidelity) metrics, the Pix2Pix baseline as a generator and as a strategy, and the
synthetic-quality filter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.evaluation.fidelity import fidelity, image_fidelity, ms_ssim_scales
from diffboost.generation.pix2pix import Pix2PixConfig, Pix2PixGenerator, generate_pix2pix, train_pix2pix
from diffboost.generation.generate import SyntheticSet, write_synthetic_set
from diffboost.generation.quality import QualityConfig, quality_filter, score_variants
from diffboost.segmentation import SegConfig, train_seg

TINY_P2P = dict(channels=(8, 16, 32), disc_channels=8, batch_size=4)


@pytest.fixture(scope="module")
def ps(tmp_path_factory, phantom_root):
    root = tmp_path_factory.mktemp("fid")
    return prepare(phantom_root, root / "prepared", PrepareConfig(size=32, folds=3), progress=False)


def test_fidelity_metrics_by_hand():
    rng = np.random.default_rng(0)
    real = rng.random((3, 64, 64))
    same = image_fidelity(real, real)
    assert np.allclose(same["mae"], 0) and np.allclose(same["ssim"], 1) and np.allclose(same["ms_ssim"], 1)
    shifted = np.clip(real + 0.1, 0, 1)
    m = image_fidelity(real, shifted)
    assert m["mae"] == pytest.approx(np.abs(shifted - real).mean(axis=(1, 2)))
    assert m["rmse"] == pytest.approx(np.sqrt(m["mse"]))
    assert m["ssim"][0] == pytest.approx(structural_similarity(real[0], shifted[0], data_range=1.0, gaussian_weights=True,
                                                               sigma=1.5, use_sample_covariance=False))
    noisy = np.clip(real + rng.normal(0, 0.3, real.shape), 0, 1)
    assert (image_fidelity(real, noisy)["ms_ssim"] < m["ms_ssim"]).all()
    assert (ms_ssim_scales(96), ms_ssim_scales(128), ms_ssim_scales(256)) == (3, 4, 5)


def test_pix2pix_learns_generates_and_feeds_compare(ps, tmp_path):
    root = ps.root.parent
    model = train_pix2pix(ps, 0, root / "p2p", Pix2PixConfig(steps=80, **TINY_P2P), progress=False)
    assert (model / "generator.safetensors").exists() and json.loads((model / "config.json").read_text())["fold"] == 0
    gen = Pix2PixGenerator(model)
    idx = ps.indices(ps.fold(0).train, training=True)
    cond = np.asarray(ps.conditions[idx], np.float32) / 255.0
    real = np.asarray(ps.images[idx], np.float32)
    torch.manual_seed(0)
    untrained = Pix2PixGenerator.__new__(Pix2PixGenerator)
    from diffboost.generation.pix2pix import build_generator

    untrained.cfg, untrained.net = gen.cfg, build_generator(gen.cfg).eval()
    assert np.abs(gen(cond) - real).mean() < 0.8 * np.abs(untrained(cond) - real).mean()  # it learned the mapping
    syn = generate_pix2pix(model, ps, root / "synthetic_pix2pix" / "fold0", 0, n=2, progress=False)
    assert len(syn) == 2 * len(idx) and set(syn.by_real) == set(idx)
    v = np.asarray(syn.images, np.float32)
    a, b = syn.by_real[idx[0]]
    assert not np.array_equal(v[a], v[b])  # variants differ by their dropout draw
    s = train_seg(ps, 0, SegConfig(channels=(8, 16, 32), epochs=1, batch_size=4, aug="pix2pix"), root / "seg_p2p",
                  progress=False)
    assert s["identity"]["synthetic"].endswith("synthetic_pix2pix/fold0")
    with pytest.raises(ValueError, match="not fold 1"):
        generate_pix2pix(model, ps, tmp_path / "x", 1, progress=False)


def test_fidelity_table_for_diffusion_and_pix2pix(ps, tmp_path):
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import new_pipeline

    torch.manual_seed(0)
    new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True))).save_pretrained(tmp_path / "m")
    p2p = train_pix2pix(ps, 1, tmp_path / "p2p", Pix2PixConfig(steps=5, **TINY_P2P), progress=False)
    rows = fidelity(tmp_path / "m", ps, 1, tmp_path / "fid", settings=[("dpm++", 2), ("ddim", 3)], pix2pix=p2p,
                    progress=False)
    assert [r["method"] for r in rows] == ["diffusion dpm++ 2 steps", "diffusion ddim 3 steps", "Pix2Pix"]
    # the same images made here, from the held-out test images' conditions and prompts, and scored by hand
    from diffboost.diffusion.pipeline import DiffBoostPipeline

    idx = ps.indices(ps.fold(1).test, training=True)
    real = (np.asarray(ps.images[idx], np.float64) + 1) / 2
    cond = np.asarray(ps.conditions[idx], np.float32) / 255.0
    pipe = DiffBoostPipeline.from_pretrained(tmp_path / "m")
    pipe.denoiser.eval()
    made = [pipe([ps.manifest[j]["prompt"] for j in idx], cond, seeds=idx, sampler=s, steps=k, guidance=3.0)
            for s, k in (("dpm++", 2), ("ddim", 3))] + [Pix2PixGenerator(p2p)(cond)]
    for r, gen in zip(rows, made):
        err = np.clip((np.asarray(gen, np.float64) + 1) / 2, 0, 1) - real
        mae = np.abs(err).mean(axis=(1, 2))
        assert set(r) >= {"mae", "mse", "rmse", "ssim", "ms_ssim"}
        assert mae.mean() > 0.01  # an untrained or barely trained generator is far from the real images
        assert r["mae"]["mean"] == pytest.approx(mae.mean(), rel=1e-4) and r["mae"]["std"] == pytest.approx(mae.std(), rel=1e-3)
        assert r["mse"]["mean"] == pytest.approx((err ** 2).mean(axis=(1, 2)).mean(), rel=1e-4)
    saved = json.loads((tmp_path / "fid" / "table.json").read_text())
    assert saved["images"] == len(ps.indices(ps.fold(1).test, training=True))
    assert (tmp_path / "fid" / "grid.png").exists() and "MS-SSIM" in (tmp_path / "fid" / "table.md").read_text()


def test_fidelity_gives_a_mask_conditioned_model_the_test_masks_and_refuses_a_capped_one(ps, tmp_path):
    from diffboost.diffusion.models import ModelConfig, label_channels
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.diffusion.train import new_pipeline
    from diffboost.evaluation.fidelity import diffusion_rows

    torch.manual_seed(0)
    new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True),
                             condition="edges+mask", mask_channels=1)).save_pretrained(tmp_path / "m")
    idx = ps.indices(ps.fold(1).test, training=True)[:4]
    rows, outs = diffusion_rows(tmp_path / "m", ps, idx, [("ddim", 2)], progress=False)
    pipe = DiffBoostPipeline.from_pretrained(tmp_path / "m")
    pipe.denoiser.eval()
    args = ([ps.manifest[j]["prompt"] for j in idx], np.asarray(ps.conditions[idx], np.float32) / 255.0)
    kw = dict(seeds=idx, sampler="ddim", steps=2, guidance=3.0)
    with_masks = pipe(*args, **kw, masks=label_channels(np.asarray(ps.masks[idx]), [1]))
    without = pipe(*args, **kw)
    np.testing.assert_allclose(outs["ddim-2"], np.clip((with_masks + 1) / 2, 0, 1), atol=1e-5)
    assert np.abs(with_masks - without).max() > 1e-3  # the masks were used, not empty channels
    (tmp_path / "m" / "training.json").write_text(json.dumps({"max_timestep_fraction": 0.6}))
    with pytest.raises(ValueError, match="timesteps up to 0.6 x T only.*from noise"):
        diffusion_rows(tmp_path / "m", ps, idx, [("ddim", 2)], progress=False)


def test_fidelity_at_a_strength_and_without_the_mask_draws_as_generate_does(ps, tmp_path):
    """A model fine-tuned on t < 0.6 T is compared at its working strength: each test image noised to it
    and denoised, as its variants are; --no-mask gives the edges and the "no mask" input instead."""
    from diffboost.diffusion.conditions import NO_MASK
    from diffboost.diffusion.models import ModelConfig, label_channels
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.diffusion.train import new_pipeline
    from diffboost.evaluation.fidelity import diffusion_rows

    torch.manual_seed(0)
    new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True),
                             condition="edges+mask", mask_channels=1)).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "training.json").write_text(json.dumps({"max_timestep_fraction": 0.6}))
    idx = ps.indices(ps.fold(1).test, training=True)[:4]
    rows, outs = diffusion_rows(tmp_path / "m", ps, idx, [("ddim", 5)], progress=False, strength=0.6)
    _, blind = diffusion_rows(tmp_path / "m", ps, idx, [("ddim", 5)], progress=False, strength=0.6, no_mask=True)
    pipe = DiffBoostPipeline.from_pretrained(tmp_path / "m")
    pipe.denoiser.eval()
    prompts, real = [ps.manifest[j]["prompt"] for j in idx], np.asarray(ps.images[idx], np.float32)
    kw = dict(seeds=idx, sampler="ddim", steps=5, guidance=3.0, images=real, strength=0.6)
    masked = pipe(prompts, np.asarray(ps.conditions[idx], np.float32) / 255.0, **kw,
                  masks=label_channels(np.asarray(ps.masks[idx]), [1]))
    no_mask = pipe(prompts, np.asarray(ps.edges[idx], np.float32) / 255.0, **kw,
                   masks=np.full((len(idx), 1, 32, 32), NO_MASK, np.float32))
    np.testing.assert_allclose(outs["ddim-5"], np.clip((masked + 1) / 2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(blind["ddim-5"], np.clip((no_mask + 1) / 2, 0, 1), atol=1e-5)
    assert np.abs(masked - no_mask).max() > 1e-3
    other = pipe(prompts, np.asarray(ps.conditions[idx], np.float32) / 255.0, **{**kw, "images": real[::-1].copy()},
                 masks=label_channels(np.asarray(ps.masks[idx]), [1]))
    assert np.abs(masked - other).max() > 1e-2  # the test image itself is the starting point
    assert rows[0]["method"] == "diffusion ddim 5 steps, strength 0.6"
    with pytest.raises(ValueError, match="timesteps up to 0.6 x T only; use strength <= 0.6"):
        diffusion_rows(tmp_path / "m", ps, idx, [("ddim", 5)], progress=False, strength=0.7)
    new_pipeline(ModelConfig(image_size=32, channels=(8, 16, 32), attention=(False, True, True))).save_pretrained(
        tmp_path / "plain")  # no mask channels: without a mask it gets the edges instead of edges + boundary
    _, edges = diffusion_rows(tmp_path / "plain", ps, idx, [("ddim", 2)], progress=False, no_mask=True)
    plain = DiffBoostPipeline.from_pretrained(tmp_path / "plain")
    plain.denoiser.eval()
    alone = plain(prompts, np.asarray(ps.edges[idx], np.float32) / 255.0, seeds=idx, sampler="ddim", steps=2, guidance=3.0)
    np.testing.assert_allclose(edges["ddim-2"], np.clip((alone + 1) / 2, 0, 1), atol=1e-5)  # the edges alone


def test_quality_filter_removes_what_it_should(ps, tmp_path):
    idx = ps.indices(ps.fold(0).train, training=True)
    rng = np.random.default_rng(0)
    rows, images = [], []
    for v in range(3):
        for ri in idx:
            real = np.asarray(ps.images[ri], np.float32)
            img = [real, rng.uniform(-1, 1, real.shape), np.clip(real + 0.9, -1, 1)][v]  # good, noise, too bright
            rows.append({"index": len(rows), "real_index": ri, "case_id": ps.manifest[ri]["case_id"], "slice_index": 0,
                         "variant": v, "category": "", "prompt": "", "text": "", "seed": 0, "sampler": "test",
                         "steps": 0, "guidance": 0.0, "model_hash": ""})
            images.append(img.astype(np.float16))
    out = tmp_path / "syn"
    out.mkdir()
    write_synthetic_set(out, ps, rows, np.stack(images), QualityConfig(), {"fold": 0})
    syn = SyntheticSet(out)
    scores = {(r["real_index"], r["variant"]): r for r in score_variants(syn, ps)}
    for ri in idx:
        assert scores[(ri, 0)]["keep"] == 1
        assert scores[(ri, 1)]["keep"] == 0 and "edges" in scores[(ri, 1)]["reason"]
        assert scores[(ri, 2)]["keep"] == 0 and "intensity" in scores[(ri, 2)]["reason"]
    keep = quality_filter(syn, ps)
    assert keep == {r["index"] for r in rows if r["variant"] == 0}
    summary = json.loads((out / "quality.json").read_text())
    assert summary["removed"] == 2 * len(idx) and summary["removed_for_intensity"] >= len(idx)
    from diffboost.segmentation.data import load_synthetic

    pool = load_synthetic(out, ps, 0, idx, 32, quality_filter=True)
    assert pool.counts.tolist() == [1] * len(idx)
    assert torch.allclose(pool.images[pool.rows[:, 0]][:, 0], torch.from_numpy(np.asarray(ps.images[idx], np.float32)),
                          atol=1e-2)
