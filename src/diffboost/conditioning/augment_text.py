"""Augmentation phrases that mean something to a model trained from scratch.

Stable Diffusion already knows what "enhanced contrast" looks like; a small model trained from
scratch does not. So during diffusion training a known appearance change is applied to some target
images and its phrase is appended to the prompt ("US, Breast, benign, enhanced contrast"): at
generation time the phrase then asks for that change. Each phrase is tied to one MONAI intensity
transform (the same transforms the classical strategies of :mod:`diffboost.segmentation.augment`
use) with a strength drawn per image within the phrase's range, so the model learns a direction,
not a single filter. Images are ``[B, 1, H, W]`` in [-1, 1].
"""

from __future__ import annotations

import torch


def _transform(kind: str, s: float, seed: int):
    """The MONAI array transform of ``kind`` at strength ``s`` (its random parts seeded)."""
    from monai import transforms as T

    if kind == "contrast":  # scale around the mean
        return T.ScaleIntensityFixedMean(factor=s - 1.0)
    if kind == "shift":
        return T.ShiftIntensity(offset=s)
    if kind == "gamma":  # on the image's own range, as nnU-Net's gamma without keeping the statistics
        return T.AdjustContrast(gamma=s)
    if kind == "low_resolution":  # down by s (nearest), back up (linear): MONAI's low-resolution simulation
        t = T.RandSimulateLowResolution(prob=1.0, zoom_range=(1.0 / s, 1.0 / s), upsample_mode="bilinear")
        t.set_random_state(seed)
        return t
    if kind == "sharpen":  # unsharp masking: x + s (x - blur_1(x)); sigma1 0.1 is a one-tap (identity) blur
        return T.GaussianSharpen(sigma1=0.1, sigma2=1.0, alpha=s)
    if kind == "noise":
        t = T.RandGaussianNoise(prob=1.0, std=s, sample_std=False)
        t.set_random_state(seed)
        return t
    raise ValueError(f"unknown appearance change {kind!r}")


# phrase -> (MONAI change, low, high strength)
PHRASES: dict[str, tuple[str, float, float]] = {
    "enhanced contrast": ("contrast", 1.4, 1.8),
    "low contrast": ("contrast", 0.45, 0.7),
    "bright": ("shift", 0.15, 0.3),
    "dark": ("shift", -0.3, -0.15),
    "high gamma": ("gamma", 1.5, 2.0),
    "low resolution": ("low_resolution", 3.0, 5.0),
    "high resolution": ("sharpen", 0.6, 1.0),
    "noisy": ("noise", 0.06, 0.12),
}

# The texts used at generation time by default: the plain prompt first, then each phrase.
DEFAULT_TEXTS: tuple[str, ...] = ("",) + tuple(PHRASES)


def apply_phrase(phrase: str, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the appearance change a phrase stands for to images [B,1,H,W] in [-1, 1]: a strength
    (and a noise seed) per image from ``generator``, the change by MONAI, clipped to [-1, 1]."""
    if phrase not in PHRASES:
        raise ValueError(f"unknown augmentation phrase {phrase!r}; known: {', '.join(PHRASES)}")
    kind, lo, hi = PHRASES[phrase]
    g = generator or torch.Generator().manual_seed(0)
    out = []
    for x in images:
        s = float(torch.empty(1).uniform_(lo, hi, generator=g))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        y = _transform(kind, s, seed)(x.float())
        out.append(torch.as_tensor(y.as_tensor() if hasattr(y, "as_tensor") else y, dtype=images.dtype))
    return torch.stack(out).clamp(-1, 1)
