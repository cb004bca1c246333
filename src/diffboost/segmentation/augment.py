"""Classical augmentation strategies (MONAI transforms), one name each.

Each single strategy applies its transform with probability ``prob`` (default 0.5) and the ranges of
nnU-Net's 2D defaults. Two pipelines chain several:

- ``classic``: nnU-Net's default 2D training augmentation, the competitor users actually run:
  rotation ±180° (p 0.2), scaling 0.7-1.4 (p 0.2), Gaussian noise (p 0.1), Gaussian blur sigma
  0.5-1 (p 0.2 x 0.5 per channel), multiplicative brightness 0.75-1.25 (p 0.15), contrast 0.75-1.25
  (p 0.15), low-resolution simulation zoom 0.5-1 (p 0.25 x 0.5 per channel), inverted gamma (p 0.1),
  gamma 0.7-1.5 (p 0.3), mirroring along each axis (p 0.5), in nnU-Net's order;
- ``deepstack``: the paper's DeepStack baseline (Zhang et al., 2020): its nine kinds of change,
  image quality (sharpen, blur, noise), appearance (brightness, contrast, intensity shift) and
  spatial (rotation, scaling, elastic deformation), each with probability 0.5, our ranges (it
  really runs, unlike the public code's unreachable branch).

Images are ``[C, H, W]`` in [-1, 1]; C may be 2
(a real image and its synthetic variant, which must move together); labels are ``[1, H, W]`` and
follow spatial transforms with nearest-neighbour interpolation.

| name | transform | range |
|---|---|---|
| contrast | scale around the mean, range kept | factor 0.75-1.25 |
| gamma | gamma, statistics kept | 0.7-1.5 |
| brightness | multiply | 0.75-1.25 |
| noise | additive Gaussian | std up to 0.15 (≈ nnU-Net's variance 0.1 at our intensity scale) |
| resolution | simulated low resolution | zoom 0.5-1 |
| mirror | flip along each axis | each axis with prob |
| rotate | in-plane rotation | ±180° |
| scale | zoom, size kept | 0.7-1.4 |
"""

from __future__ import annotations

import math

import numpy as np
import torch

CLASSICAL = ("contrast", "gamma", "brightness", "noise", "resolution", "mirror", "rotate", "scale")
DEEPSTACK = "deepstack"
CLASSIC = "classic"
PIPELINES = (CLASSIC, DEEPSTACK)

# nnU-Net v2's default 2D pipeline: (transform, probability) in its order. Blur and low resolution
# are drawn per sample and then per channel (0.5); with one image channel that is their product.
_NNUNET = (("rotate", 0.2), ("scale", 0.2), ("noise", 0.1), ("blur", 0.2 * 0.5), ("brightness", 0.15),
           ("contrast", 0.15), ("resolution", 0.25 * 0.5), ("gamma_inverted", 0.1), ("gamma", 0.3),
           ("mirror", 0.5))
# the strong view of an unlabelled image (semi-supervised learners, .semisup): nnU-Net's intensity transforms,
# more often, and nothing spatial, so that the weak view's pseudo-label stays where its pixels are
STRONG_VIEW = "strong-view"
_STRONG = (("noise", 0.3), ("blur", 0.3), ("brightness", 0.5), ("contrast", 0.5), ("resolution", 0.3),
           ("gamma", 0.5))
_DEEPSTACK = ("sharpen", "blur", "noise", "brightness", "contrast", "shift", "rotate_small", "scale", "elastic")


def _transform(name: str, p: float):
    from monai import transforms as T

    img, both = "image", ["image", "label"]
    if name == "contrast":
        return T.RandScaleIntensityFixedMeand(img, factors=0.25, preserve_range=True, prob=p)
    if name == "gamma":
        return T.RandAdjustContrastd(img, gamma=(0.7, 1.5), retain_stats=True, prob=p)
    if name == "gamma_inverted":
        return T.RandAdjustContrastd(img, gamma=(0.7, 1.5), retain_stats=True, invert_image=True, prob=p)
    if name == "brightness":
        return T.RandScaleIntensityd(img, factors=0.25, prob=p)
    if name == "noise":
        return T.RandGaussianNoised(img, std=0.15, prob=p, sample_std=True)
    if name == "blur":
        return T.RandGaussianSmoothd(img, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=p)
    if name == "sharpen":
        return T.RandGaussianSharpend(img, prob=p)
    if name == "shift":
        return T.RandShiftIntensityd(img, offsets=0.1, prob=p)
    if name == "rotate_small":
        return T.RandRotated(both, range_x=math.radians(20), prob=p, mode=("bilinear", "nearest"), padding_mode="border")
    if name == "elastic":
        return T.Rand2DElasticd(both, spacing=(16, 16), magnitude_range=(1, 2), prob=p, mode=("bilinear", "nearest"),
                                padding_mode="border")
    if name == "resolution":
        return T.RandSimulateLowResolutiond(img, zoom_range=(0.5, 1.0), upsample_mode="bilinear", prob=p)
    if name == "mirror":
        return T.Compose([T.RandFlipd(both, prob=p, spatial_axis=0), T.RandFlipd(both, prob=p, spatial_axis=1)])
    if name == "rotate":
        return T.RandRotated(both, range_x=math.pi, prob=p, mode=("bilinear", "nearest"), padding_mode="border")
    if name == "scale":
        return T.RandZoomd(both, min_zoom=0.7, max_zoom=1.4, prob=p, mode=("bilinear", "nearest"),
                           padding_mode="edge", keep_size=True)
    raise ValueError(f"unknown augmentation {name!r}")


def build_augmentation(name: str, prob: float = 0.5):
    """A MONAI ``Compose`` for a classical strategy name (``none`` -> ``None``)."""
    from monai import transforms as T

    if name == "none":
        return None
    if name == CLASSIC:
        return T.Compose([_transform(k, p) for k, p in _NNUNET])
    if name == DEEPSTACK:
        return T.Compose([_transform(k, 0.5) for k in _DEEPSTACK])
    if name == STRONG_VIEW:
        return T.Compose([_transform(k, p) for k, p in _STRONG])
    if name not in CLASSICAL:
        raise ValueError(f"unknown augmentation {name!r}; classical ones: none, {', '.join(CLASSICAL)}, "
                         f"{', '.join(PIPELINES)}")
    return T.Compose([_transform(name, prob)])


class BatchAugmenter:
    """Applies a strategy sample by sample, reproducibly: the transforms' random state is reset
    from ``(seed, epoch, step)`` before each batch, so a resumed run sees the same augmentations."""

    def __init__(self, name: str, prob: float = 0.5, seed: int = 0, stream: int = 7):
        self.name, self.seed, self.stream = name, seed, stream  # stream: another augmenter draws other numbers
        self.compose = build_augmentation(name, prob)

    def __bool__(self) -> bool:
        return self.compose is not None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
        """``images [B, C, H, W]`` and ``labels [B, 1, H, W]`` -> augmented copies."""
        if self.compose is None:
            return images, labels
        seed = int(np.random.default_rng([self.seed, epoch, step, self.stream]).integers(2**31))
        self.compose.set_random_state(seed=seed)
        out_i, out_l = [], []
        for x, y in zip(images, labels):
            d = self.compose({"image": x, "label": y.float()})
            out_i.append(_plain(d["image"]).float())
            out_l.append(_plain(d["label"]).round().to(labels.dtype))
        return torch.stack(out_i), torch.stack(out_l)


def _plain(x) -> torch.Tensor:
    """A MONAI MetaTensor (or array) as a plain tensor."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
