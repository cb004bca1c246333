"""Algorithm 1 as a MONAI dictionary transform, for users' own MONAI pipelines.

.. code-block:: python

    from monai.transforms import Compose, LoadImaged, EnsureChannelFirstd, RandFlipd
    from diffboost import RandSyntheticPatchMixd

    train = Compose([
        LoadImaged(["image", "label", "variants"]), EnsureChannelFirstd(["image", "label"]),
        # "variants": the image's synthetic variants, [n, C, H, W] (e.g. from `diffboost export`)
        RandSyntheticPatchMixd("image", variant_key="variants", label_key="label", alpha=0.6, patch=16),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),   # classical augmentation after mixing
    ])

Each call draws one variant and a grid of ``patch`` px cells (real with probability ``alpha``), and
returns the mixed image; with ``variant_label_key`` (variants whose label differs from the real one)
the label is mixed with the same grid. ``prob`` is the share of samples mixed (the trainer's
``mix_prob``). The draw comes from the transform's own ``RandomState``, so ``set_random_state`` makes it
deterministic, and ``Compose`` / ``CacheDataset`` / ``DataLoader`` workers seed it as for any MONAI
random transform. The mixing itself is :func:`diffboost.segmentation.patchmix.mix_sample`, the
function the nnU-Net trainer calls and whose primitives the project's own trainer uses.

For semi-supervised loops (FixMatch, UniMatch) on unlabelled images, :class:`RandDiffusionStrongViewd`
puts one of an image's DiffBoost variants beside it as its strong view, as the ``fixmatch-diffboost``
strategy does: the pseudo-label comes from the image (the weak view), the loss from the variant. A
geometric transform given both keys afterwards moves them together, so the variant's edges stay where
the image's are; intensity transforms given the strong key alone make it stronger still.

.. code-block:: python

    unlabelled = Compose([
        LoadImaged(["image", "variants"]), EnsureChannelFirstd("image"),
        RandDiffusionStrongViewd("image", variant_key="variants", strong_key="image_strong"),
        RandFlipd(["image", "image_strong"], prob=0.5, spatial_axis=0),     # the same flip for both views
        RandGaussianNoised("image_strong", prob=0.5),                        # strong view only
    ])
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from ..segmentation.patchmix import default_patch, mix_sample

__all__ = ["RandDiffusionStrongViewd", "RandSyntheticPatchMixd"]


def _tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.as_tensor() if hasattr(x, "as_tensor") else x
    if isinstance(x, (list, tuple)):
        return torch.stack([_tensor(v) for v in x])
    return torch.as_tensor(np.asarray(x))


def _like(original, value: torch.Tensor):
    """``value`` in the container of ``original``: a MetaTensor keeps its metadata (affine, file name)."""
    from monai.data import MetaTensor

    if isinstance(original, MetaTensor):
        return MetaTensor(value, meta=original.meta, applied_operations=original.applied_operations)
    if isinstance(original, np.ndarray):
        return value.numpy().astype(original.dtype, copy=False)
    return value


class RandSyntheticPatchMixd(RandomizableTransform, MapTransform):
    """Mix ``keys`` (images ``[C, H, W]``, or ``[C, D, H, W]`` mixed plane by plane) patch-wise with one
    of their synthetic variants ``data[variant_key]`` (``[n, C, ...]``, or a list of ``[C, ...]``).

    Args:
        keys: the image key(s) to mix; every key is mixed with the same variant index and grid
            (``variant_key`` then holds a list of variant stacks, one per key).
        variant_key: the variants of the (first) image key.
        label_key: the label; mixed with the same grid when ``variant_label_key`` is given.
        variant_label_key: the variants' own labels (``[n, 1, ...]``), for variants whose label differs.
        alpha: probability that a cell shows the real image (the paper's alpha).
        patch: the cell size in pixels; None = the paper's 64 px at 384 px scaled to the image size.
        prob: probability that a sample is mixed at all.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, keys: KeysCollection, variant_key: Hashable = "variants", label_key: Hashable | None = "label",
                 variant_label_key: Hashable | None = None, alpha: float = 0.6, patch: int | None = None,
                 prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if patch is not None and patch < 1:
            raise ValueError(f"patch must be at least 1 pixel, got {patch}")
        self.variant_key, self.label_key, self.variant_label_key = variant_key, label_key, variant_label_key
        self.alpha, self.patch = float(alpha), patch
        self._seed = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))  # the torch generator of this call's draws

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        stacks = d[self.variant_key] if len(keys) > 1 else [d[self.variant_key]]
        if len(stacks) != len(keys):
            raise ValueError(f"{self.variant_key!r} must hold one variant stack per key ({len(keys)}), got {len(stacks)}")
        label = d.get(self.label_key) if self.label_key is not None else None
        variant_labels = d.get(self.variant_label_key) if self.variant_label_key is not None else None
        for n, (key, stack) in enumerate(zip(keys, stacks)):
            real, variants = _tensor(d[key]), _tensor(stack)
            patch = self.patch or default_patch(int(real.shape[-1]))
            g = torch.Generator().manual_seed(self._seed)  # the same draw for every key
            mixed, new_label, _, _ = mix_sample(
                real.float(), variants.float(), self.alpha, patch, g,
                label=None if label is None or n else _tensor(label),
                variant_labels=None if variant_labels is None or n else _tensor(variant_labels))
            d[key] = _like(d[key], mixed)
            if n == 0 and label is not None and variant_labels is not None:
                d[self.label_key] = _like(label, new_label)
        return d

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandSyntheticPatchMixd":
        super().set_random_state(seed, state)
        return self


class RandDiffusionStrongViewd(RandomizableTransform, MapTransform):
    """Write one of the image's synthetic variants, drawn at random, to ``strong_key``: the strong view of a
    weak-to-strong consistency method, beside the untouched image (the weak view, from which the
    pseudo-label is computed). Apply geometric transforms to both keys after it, so the two views stay
    aligned.

    Args:
        keys: the image key (one).
        variant_key: its variants, ``[n, C, ...]`` or a list of ``[C, ...]`` (``[n, ...]`` for a one-channel
            image; ``generate --unlabelled`` draws them for images without a label).
        strong_key: where the strong view goes (default ``"<key>_strong"``).
        prob: probability that the strong view is a variant; otherwise it is a copy of the image (classical
            strong views then come from the intensity transforms that follow).
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, keys: KeysCollection, variant_key: Hashable = "variants", strong_key: Hashable | None = None,
                 prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 1:
            raise ValueError(f"RandDiffusionStrongViewd takes one image key, got {list(self.keys)}")
        self.variant_key = variant_key
        self.strong_key = strong_key if strong_key is not None else f"{self.keys[0]}_strong"
        self._pick = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._pick = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            image = _tensor(d[key])
            if not self._do_transform:
                d[self.strong_key] = _like(d[key], image.clone())
                continue
            variants = _tensor(d[self.variant_key])
            if variants.ndim == image.ndim and image.shape[0] == 1 and variants.shape[1:] == image.shape[1:]:
                variants = variants[:, None]  # [n, *spatial] (files loaded as a list) for a one-channel image
            if variants.ndim != image.ndim + 1 or variants.shape[1:] != image.shape:
                raise ValueError(f"{self.variant_key!r}: variants of shape {tuple(variants.shape)} are not a stack of "
                                 f"images shaped like {key!r} {tuple(image.shape)}")
            d[self.strong_key] = _like(d[key], variants[self._pick % len(variants)].to(image.dtype).clone())
        return d

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandDiffusionStrongViewd":
        super().set_random_state(seed, state)
        return self
