"""Algorithm 1 where users train: the MONAI dictionary transform (against the project's own mixing
function, in Compose / CacheDataset / DataLoader workers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffboost.segmentation.patchmix import mix_sample, patch_mask


def _sample(seed: int = 0, n: int = 3, size: int = 32):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(1, size, size)).astype(np.float32)
    variants = rng.normal(size=(n, 1, size, size)).astype(np.float32) + 10.0  # tell them apart from the real
    label = (rng.random((1, size, size)) > 0.7).astype(np.int64)
    return {"image": torch.from_numpy(image), "variants": torch.from_numpy(variants), "label": torch.from_numpy(label)}


def test_mix_sample_is_algorithm_1_for_one_sample():
    d = _sample()
    g = torch.Generator().manual_seed(5)
    mixed, label, m, i = mix_sample(d["image"], d["variants"], 0.6, 8, g)
    g = torch.Generator().manual_seed(5)
    j = int((torch.rand(1, generator=g) * 3).long())
    assert i == j and torch.equal(m, patch_mask(1, 32, 32, 0.6, 8, g)[0])
    assert torch.equal(mixed, m * d["image"] + (1 - m) * d["variants"][i]) and label is None
    # a variant whose label differs: the label takes the same grid
    other = 1 - d["label"]
    _, mixed_label, m, _ = mix_sample(d["image"], d["variants"], 0.5, 4, torch.Generator().manual_seed(1),
                                      label=d["label"], variant_labels=torch.stack([other] * 3))
    assert torch.equal(mixed_label, torch.where(m > 0, d["label"], other))
    with pytest.raises(ValueError, match="variants must be"):
        mix_sample(d["image"], d["variants"][0], 0.6, 8)


def test_monai_transform_gives_the_projects_mixing_for_the_same_seed():
    from monai.transforms import Compose, RandFlipd

    from diffboost import RandSyntheticPatchMixd

    t = RandSyntheticPatchMixd("image", variant_key="variants", label_key="label", alpha=0.6, patch=8)
    t.set_random_state(seed=123)
    out = t(_sample())
    # the same draw by hand: the transform's RandomState gives the seed of the torch generator
    state = np.random.RandomState(123)
    state.rand()  # RandomizableTransform.randomize draws the prob first
    g = torch.Generator().manual_seed(int(state.randint(0, 2**31 - 1)))
    expected, _, _, _ = mix_sample(_sample()["image"], _sample()["variants"], 0.6, 8, g)
    assert torch.equal(torch.as_tensor(out["image"]), expected)
    assert torch.equal(out["label"], _sample()["label"])  # same-layout variants keep the real label
    # in a Compose, again deterministic under set_random_state, and followed by classical transforms
    pipe = Compose([RandSyntheticPatchMixd("image", alpha=0.6, patch=8), RandFlipd(["image", "label"], prob=0.5)])
    a = [pipe.set_random_state(seed=7)(_sample(k))["image"] for k in range(4)]
    b = [pipe.set_random_state(seed=7)(_sample(k))["image"] for k in range(4)]
    assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))
    # a MetaTensor keeps its metadata through the mixing
    from monai.data import MetaTensor

    d = _sample()
    d["image"] = MetaTensor(d["image"], meta={"filename_or_obj": "case_7.png"})
    out = RandSyntheticPatchMixd("image", alpha=0.6, patch=8).set_random_state(seed=2)(d)
    assert isinstance(out["image"], MetaTensor) and out["image"].meta["filename_or_obj"] == "case_7.png"
    # prob 0 never mixes
    untouched = RandSyntheticPatchMixd("image", prob=0.0).set_random_state(seed=1)(_sample())
    assert torch.equal(untouched["image"], _sample()["image"])


def test_monai_transform_with_variant_labels_and_in_dataloader_workers():
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose

    from diffboost import RandSyntheticPatchMixd

    d = _sample()
    d["variant_labels"] = torch.stack([1 - d["label"]] * 3)
    out = RandSyntheticPatchMixd("image", variant_label_key="variant_labels", alpha=0.5, patch=4).set_random_state(seed=3)(d)
    real = torch.isclose(torch.as_tensor(out["image"]), d["image"])
    assert 0 < real.float().mean() < 1  # some cells real, some synthetic
    assert torch.equal(out["label"], torch.where(real, d["label"], 1 - d["label"]))  # the label follows the grid
    data = [_sample(k) for k in range(6)]
    ds = CacheDataset(data, Compose([RandSyntheticPatchMixd("image", alpha=0.6, patch=8)]), progress=False)
    batches = list(DataLoader(ds, batch_size=3, num_workers=2))
    images = torch.cat([torch.as_tensor(b["image"]) for b in batches])
    assert images.shape == (6, 1, 32, 32)
    synthetic_share = float((images > 5).float().mean())  # variants are offset by +10
    assert 0.1 < synthetic_share < 0.8


def test_monai_strong_view_is_a_variant_moved_with_the_weak_view():
    """RandDiffusionStrongViewd: the strong view is one of the image's variants, the image itself is left as
    the weak view, a flip given both keys afterwards flips both (the variant's edges stay where the image's
    are), prob 0 gives the image, a seed gives the same draws, and variants of another shape are refused."""
    from monai.transforms import Compose, RandFlipd

    from diffboost import RandDiffusionStrongViewd

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 8, 10), dtype=np.float32))
    variants = torch.from_numpy(rng.random((3, 1, 8, 10), dtype=np.float32))
    t = Compose([RandDiffusionStrongViewd("image", variant_key="variants"),
                 RandFlipd(["image", "image_strong"], prob=1.0, spatial_axis=1)])
    t.set_random_state(3)
    seen = set()
    for _ in range(12):
        out = t({"image": image, "variants": variants})
        assert torch.equal(torch.as_tensor(out["image"]), image.flip(-1))  # the weak view: the image, flipped
        strong = torch.as_tensor(out["image_strong"])
        match = [k for k in range(3) if torch.equal(strong, variants[k].flip(-1))]  # a variant, flipped the same way
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {0, 1, 2}
    again = Compose([RandDiffusionStrongViewd("image", variant_key="variants"),
                     RandFlipd(["image", "image_strong"], prob=1.0, spatial_axis=1)])
    again.set_random_state(3)
    t.set_random_state(3)
    assert all(torch.equal(torch.as_tensor(t({"image": image, "variants": variants})["image_strong"]),
                           torch.as_tensor(again({"image": image, "variants": variants})["image_strong"])) for _ in range(4))
    flat = RandDiffusionStrongViewd("image").set_random_state(1)({"image": image, "variants": variants[:, 0]})
    assert any(torch.equal(torch.as_tensor(flat["image_strong"]), v) for v in variants)  # [n, H, W] for one channel
    copy = RandDiffusionStrongViewd("image", strong_key="s", prob=0.0)({"image": image, "variants": variants})
    assert torch.equal(torch.as_tensor(copy["s"]), image)
    with pytest.raises(ValueError, match="not a stack of images shaped like"):
        RandDiffusionStrongViewd("image")({"image": image, "variants": variants[:, :, :4]})
