"""Augmentation phrases that mean something to a model trained from scratch.

Stable Diffusion already knows what "enhanced contrast" looks like; a small model trained from
scratch does not. So during diffusion training a known appearance change is applied to some target
images and its phrase is appended to the prompt ("US, Breast, benign, enhanced contrast"): at
generation time the phrase then asks for that change. Each phrase below is tied to one transform of
an image batch in [-1, 1]; strengths are random within a range so the model learns a direction,
not a single filter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _contrast(x, g, lo, hi):
    f = torch.empty(x.shape[0], 1, 1, 1).uniform_(lo, hi, generator=g)
    m = x.mean((1, 2, 3), keepdim=True)
    return (x - m) * f + m


def _shift(x, g, lo, hi):
    return x + torch.empty(x.shape[0], 1, 1, 1).uniform_(lo, hi, generator=g)


def _gamma(x, g, lo, hi):
    gam = torch.empty(x.shape[0], 1, 1, 1).uniform_(lo, hi, generator=g)
    return ((x.clamp(-1, 1) + 1) / 2) ** gam * 2 - 1


def _low_resolution(x, g, lo, hi):
    f = float(torch.empty(1).uniform_(lo, hi, generator=g))
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(4, int(h / f)), max(4, int(w / f))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _blur(x, sigma):
    k = int(2 * round(3 * sigma) + 1)
    r = torch.arange(k, dtype=x.dtype) - k // 2
    w = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    w = w / w.sum()
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="replicate"), w.view(1, 1, 1, k))
    return F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="replicate"), w.view(1, 1, k, 1))


def _sharpen(x, g, lo, hi):
    a = torch.empty(x.shape[0], 1, 1, 1).uniform_(lo, hi, generator=g)
    return x + a * (x - _blur(x, 1.0))


def _noise(x, g, lo, hi):
    s = torch.empty(x.shape[0], 1, 1, 1).uniform_(lo, hi, generator=g)
    return x + s * torch.randn(x.shape, generator=g)


# phrase -> (transform, low, high)
PHRASES: dict[str, tuple[Callable, float, float]] = {
    "enhanced contrast": (_contrast, 1.4, 1.8),
    "low contrast": (_contrast, 0.45, 0.7),
    "bright": (_shift, 0.15, 0.3),
    "dark": (_shift, -0.3, -0.15),
    "high gamma": (_gamma, 1.5, 2.0),
    "low resolution": (_low_resolution, 3.0, 5.0),
    "high resolution": (_sharpen, 0.6, 1.0),
    "noisy": (_noise, 0.06, 0.12),
}

# The texts used at generation time by default: the plain prompt first, then each phrase.
DEFAULT_TEXTS: tuple[str, ...] = ("",) + tuple(PHRASES)


def apply_phrase(phrase: str, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the appearance change a phrase stands for to images [B,1,H,W] in [-1, 1]."""
    if phrase not in PHRASES:
        raise ValueError(f"unknown augmentation phrase {phrase!r}; known: {', '.join(PHRASES)}")
    fn, lo, hi = PHRASES[phrase]
    g = generator or torch.Generator().manual_seed(0)
    return fn(images, g, lo, hi).clamp(-1, 1)
