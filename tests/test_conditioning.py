"""Prompts and edge maps."""

from __future__ import annotations

import numpy as np
import pytest

from diffboost.conditioning import build_prompt, mask_boundary, soft_edges, task_condition
from diffboost.config import PromptConfig
from diffboost.data.preprocess import normalize_intensity, resize_image, resize_mask, through_plane_axis


def test_prompt_triplet_overrides_and_free_text():
    assert build_prompt(PromptConfig(), "US", "Breast", "benign") == "US, Breast, benign"
    assert build_prompt(PromptConfig(), "CT", "Spleen", None) == "CT, Spleen, normal"
    assert build_prompt(PromptConfig(organ="Prostate"), "MR", "Task05", None) == "MR, Prostate, normal"
    assert build_prompt(PromptConfig(), None, None, None) == "normal"
    free = PromptConfig(template="Can you help to generate a {modality} image of a {organ}?")
    assert build_prompt(free, "CT", "spleen", None) == "Can you help to generate a CT image of a spleen?"
    with pytest.raises(ValueError, match="unknown field"):
        build_prompt(PromptConfig(template="{anatomy}"), "CT", "x", None)


def _step(size=128, contrast=1.0):
    img = -np.ones((size, size), np.float32) * 0.5 * contrast
    img[:, size // 2:] = 0.5 * contrast
    return img


def test_soft_edges_range_and_location():
    e = soft_edges(_step())
    assert e.dtype == np.float32 and e.min() >= 0 and e.max() <= 1
    assert e[:, 63:65].min() > 0.9  # strong at the step
    assert e[:, :40].max() < 0.05 and e[:, 90:].max() < 0.05  # nothing in flat regions
    assert 3 <= (e[64] > 0.2).sum() <= 12  # soft and a few pixels thick, like HED, not a 1 px line


def test_soft_edges_prefer_structure_over_speckle():
    rng = np.random.default_rng(0)
    size = 128
    yy, xx = np.mgrid[:size, :size]
    lesion = (yy - 64) ** 2 + (xx - 64) ** 2 < 30 ** 2
    img = np.where(lesion, -0.6, 0.2).astype(np.float32)
    img *= rng.rayleigh(1.0, img.shape).astype(np.float32) / 1.25  # multiplicative speckle
    e = soft_edges(np.clip(img, -1, 1))
    ring = mask_boundary(lesion.astype(np.uint8)) > 0
    inside_tissue = (np.hypot(yy - 64, xx - 64) > 40) & (np.hypot(yy - 64, xx - 64) < 55)
    assert e[ring].mean() > 3 * e[inside_tissue].mean()


def test_soft_edges_flat_image_and_scale():
    assert soft_edges(np.zeros((64, 64), np.float32)).max() == 0.0
    rng = np.random.default_rng(1)
    faint = rng.normal(0, 0.01, (64, 64)).astype(np.float32)  # noise only: must not be stretched to edges
    assert soft_edges(faint).max() < 0.1
    # the same picture at 256 px gives the same edges as at 128 px (scales follow the size)
    e128 = soft_edges(_step(128))
    e256 = resize_image(soft_edges(_step(256)), 128)
    assert np.abs(e128 - e256).mean() < 0.02


def test_mask_boundary_band_and_condition():
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 1
    b = mask_boundary(m)
    assert set(np.unique(b)) == {0.0, 1.0}
    assert b[10].tolist() == [0] * 4 + [1, 1] + [0] * 8 + [1, 1] + [0] * 4  # 2 px band across the edge
    assert mask_boundary(np.zeros((8, 8), np.uint8)).sum() == 0
    two = m.copy()
    two[5:15, 10:15] = 2
    assert mask_boundary(two)[10, 9:11].tolist() == [1, 1]  # label-to-label boundary counts
    e = np.full((20, 20), 0.3, np.float32)
    c = task_condition(e, m)
    assert np.all(c[b > 0] == 1.0) and np.allclose(c[b == 0], 0.3)
    np.testing.assert_allclose(task_condition(e, None), e)


def test_normalize_and_resize():
    x = np.arange(1000, dtype=np.float32).reshape(25, 40)
    n = normalize_intensity(x)
    assert n.min() == -1.0 and n.max() == 1.0
    w = normalize_intensity(x, window=(100, 200))
    assert w[0, 0] == -1.0 and w[-1, -1] == 1.0 and np.isclose(w.ravel()[150], 0.0)
    assert (normalize_intensity(np.full((4, 4), 7.0)) == -1).all()
    assert resize_image(n, 64).shape == (64, 64)
    m = (np.arange(25 * 40).reshape(25, 40) % 3).astype(np.uint8)
    r = resize_mask(m, 64)
    assert set(np.unique(r)) <= {0, 1, 2}  # nearest: no blended labels
    big = resize_mask(m, (100, 160))
    np.testing.assert_array_equal(resize_mask(big, (25, 40)), m)  # up then down is exact
    assert through_plane_axis((0.6, 0.6, 3.6)) == 2
    assert through_plane_axis((1.0, 1.0, 1.0)) == 2
    assert through_plane_axis((3.0, 0.7, 0.7)) == 0


def test_augmentation_phrases_move_images_their_way_reproducibly():
    import torch

    from diffboost.conditioning.augment_text import PHRASES, apply_phrase

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 48, 48, generator=g) * 0.6 - 0.3) + torch.linspace(-0.5, 0.5, 48).view(1, 1, 1, 48)

    def detail(t):  # high-frequency energy: the image minus its 3x3 mean
        return float((t - torch.nn.functional.avg_pool2d(t, 3, 1, 1, count_include_pad=False)).abs().mean())

    out = {p: apply_phrase(p, x, torch.Generator().manual_seed(1)) for p in PHRASES}
    assert all(torch.equal(out[p], apply_phrase(p, x, torch.Generator().manual_seed(1))) for p in PHRASES)
    assert all(o.shape == x.shape and o.min() >= -1 and o.max() <= 1 for o in out.values())
    assert out["enhanced contrast"].std() > 1.3 * x.std() and out["low contrast"].std() < 0.75 * x.std()
    assert out["bright"].mean() > x.mean() + 0.1 and out["dark"].mean() < x.mean() - 0.1
    assert out["high gamma"].mean() < x.mean() - 0.05  # gamma > 1 darkens the mid-tones
    assert detail(out["low resolution"]) < 0.7 * detail(x) and detail(out["high resolution"]) > 1.1 * detail(x)
    noise = out["noisy"] - x
    assert 0.05 < float(noise.std()) < 0.13 and abs(float(noise.mean())) < 0.02
