"""Algorithm 1's mixing and the segmentation metrics, against hand-computed and brute-force values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from diffboost.evaluation.metrics import SegmentationMetric, binary_metrics, case_metrics
from diffboost.segmentation.patchmix import choose_variants, default_patch, mix, patch_mask


# ---- patch mixing --------------------------------------------------------------------------------

def _pair(b=4, s=24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 1, s, s, generator=g), -torch.rand(b, 1, s, s, generator=g)


def test_alpha_one_gives_the_real_image_and_zero_the_synthetic():
    real, syn = _pair()
    for patch in (1, 5, 8, 24):
        assert torch.equal(mix(real, syn, patch_mask(4, 24, 24, 1.0, patch)), real)
        assert torch.equal(mix(real, syn, patch_mask(4, 24, 24, 0.0, patch)), syn)


def test_patch_equal_to_size_chooses_whole_images():
    real, syn = _pair(b=64)
    m = patch_mask(64, 24, 24, 0.5, 24, torch.Generator().manual_seed(1))
    out = mix(real, syn, m)
    for j in range(64):
        assert torch.equal(out[j], real[j]) or torch.equal(out[j], syn[j])
    whole = m.flatten(1).mean(1)
    assert set(whole.tolist()) == {0.0, 1.0}  # both choices occur


def test_mask_is_constant_on_cells_and_its_mean_is_alpha():
    g = torch.Generator().manual_seed(2)
    for alpha in (0.2, 0.6, 0.9):
        m = patch_mask(500, 32, 32, alpha, 8, g)
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        cells = m.unfold(2, 8, 8).unfold(3, 8, 8)  # [B, 1, 4, 4, 8, 8]
        assert torch.equal(cells.amax((-1, -2)), cells.amin((-1, -2)))
        assert abs(float(m.mean()) - alpha) < 0.01


def test_a_patch_that_does_not_divide_the_size_gives_partial_cells():
    m = patch_mask(3, 20, 20, 0.5, 6, torch.Generator().manual_seed(3))
    assert m.shape == (3, 1, 20, 20)
    assert torch.equal(m[:, :, 18:, 18:].amax((-1, -2)), m[:, :, 18:, 18:].amin((-1, -2)))


def test_mixing_picks_pixels_from_the_two_sources_by_the_mask():
    real, syn = _pair()
    m = patch_mask(4, 24, 24, 0.5, 4, torch.Generator().manual_seed(4))
    out = mix(real, syn, m)
    assert torch.equal(out[m == 1], real[m == 1]) and torch.equal(out[m == 0], syn[m == 0])


def test_default_patch_is_the_papers_64_at_384():
    assert default_patch(384) == 64 and default_patch(96) == 16 and default_patch(4) == 1


def test_variants_are_chosen_within_each_images_count():
    counts = torch.tensor([1, 3, 5] * 200)
    v = choose_variants(counts, torch.Generator().manual_seed(0))
    assert bool((v < counts).all()) and bool((v >= 0).all())
    assert set(v[counts == 5].tolist()) == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="at least one"):
        choose_variants(torch.tensor([2, 0]))


def test_bad_alpha_and_patch_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        patch_mask(1, 8, 8, 1.5, 2)
    with pytest.raises(ValueError, match="patch"):
        patch_mask(1, 8, 8, 0.5, 0)


# ---- metrics -------------------------------------------------------------------------------------

def _points(shape, *pts):
    a = np.zeros(shape, bool)
    for p in pts:
        a[p] = True
    return a


def test_overlapping_squares_by_hand():
    ref = np.zeros((10, 10), bool)
    ref[2:6, 2:6] = True
    pred = np.zeros((10, 10), bool)
    pred[2:6, 3:7] = True  # 12 of 16 pixels shared
    m = binary_metrics(pred, ref, (1.0, 1.0))
    assert m["dice"] == pytest.approx(0.75) and m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)


def test_distances_use_the_spacing():
    ref, pred = _points((10, 10), (5, 5)), _points((10, 10), (5, 8))
    m = binary_metrics(pred, ref, (1.0, 0.5))
    assert m["hd95"] == pytest.approx(1.5) and m["assd"] == pytest.approx(1.5) and m["dice"] == 0.0
    ref3, pred3 = _points((6, 6, 6), (2, 2, 1)), _points((6, 6, 6), (2, 2, 3))
    assert binary_metrics(pred3, ref3, (0.5, 0.5, 3.0))["hd95"] == pytest.approx(6.0)


def test_hd95_pools_both_directions_and_assd_averages_the_two_directed_means():
    ref = _points((12, 12), (5, 5))
    pred = _points((12, 12), (5, 5), (5, 9))
    m = binary_metrics(pred, ref, (1.0, 1.0))
    # pred -> ref: [0, 4]; ref -> pred: [0]. medpy: hd95 = percentile([0, 4, 0], 95); assd = (2 + 0) / 2
    assert m["hd95"] == pytest.approx(np.percentile([0, 4, 0], 95)) == pytest.approx(3.6)
    assert m["assd"] == pytest.approx(1.0)
    assert m["dice"] == pytest.approx(2 / 3) and m["precision"] == pytest.approx(0.5) and m["recall"] == 1.0


def test_empty_masks_have_defined_values():
    empty, some = np.zeros((10, 20), bool), _points((10, 20), (3, 3))
    diag = np.hypot(10 * 1.0, 20 * 0.5)
    assert binary_metrics(empty, empty, (1.0, 0.5)) == {"dice": 1.0, "precision": 1.0, "recall": 1.0,
                                                       "hd95": 0.0, "assd": 0.0}
    for pred, ref in ((some, empty), (empty, some)):
        m = binary_metrics(pred, ref, (1.0, 0.5))
        assert (m["dice"], m["precision"], m["recall"]) == (0.0, 0.0, 0.0)
        assert m["hd95"] == pytest.approx(diag) and m["assd"] == pytest.approx(diag)
    assert not any(np.isnan(v) for v in binary_metrics(some, empty, (1.0, 1.0)).values())


def _brute(pred, ref, spacing):
    def border(a):
        return np.argwhere(a & ~ndimage.binary_erosion(a)) * np.asarray(spacing)

    bp, br = border(pred), border(ref)
    d_pr, d_rp = cdist(bp, br).min(1), cdist(br, bp).min(1)
    return np.percentile(np.concatenate([d_pr, d_rp]), 95), (d_pr.mean() + d_rp.mean()) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_a_brute_force_computation(seed):
    rng = np.random.default_rng(seed)
    shape, spacing = (20, 24, 9), (0.8, 1.1, 2.5)

    def blob():
        a = ndimage.gaussian_filter(rng.random(shape), 2.0)
        return a > np.percentile(a, 80)

    pred, ref = blob(), blob()
    m = binary_metrics(pred, ref, spacing)
    hd95, assd = _brute(pred, ref, spacing)
    assert m["hd95"] == pytest.approx(hd95, rel=1e-6) and m["assd"] == pytest.approx(assd, rel=1e-6)


def test_case_metrics_per_label_and_aggregate():
    ref = np.zeros((8, 8), np.uint8)
    ref[1:3, 1:3] = 1
    ref[5:7, 5:7] = 2
    pred = ref.copy()
    pred[5:7, 5:7] = 0  # label 2 missed entirely
    row = case_metrics(pred, ref, (1.0, 1.0), labels=(1, 2))
    assert row["dice_1"] == 1.0 and row["dice_2"] == 0.0 and row["dice"] == 0.5
    metric = SegmentationMetric(labels=(1, 2))
    metric(pred, ref, (1.0, 1.0), case_id="a")
    metric(ref, ref, (1.0, 1.0), case_id="b")
    agg = metric.aggregate()
    assert agg["dice"] == (pytest.approx(0.75), pytest.approx(0.25))
    metric.reset()
    with pytest.raises(ValueError):
        metric.aggregate()
