"""Intensity normalisation, resizing and slicing of 3D volumes."""

from __future__ import annotations

import numpy as np
from skimage.transform import resize


def normalize_intensity(
    image: np.ndarray,
    percentiles: tuple[float, float] = (0.5, 99.5),
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Clip to a fixed window or to the image's own percentiles, then scale to [-1, 1].

    For a volume the percentiles are taken over the whole volume (per-slice clipping would stretch
    the noise of nearly empty slices). A constant image maps to -1.
    """
    if window is not None:
        lo, hi = window
    else:
        lo, hi = np.percentile(image, percentiles)
    if hi <= lo:
        return np.full(image.shape, -1.0, dtype=np.float32)
    out = (np.clip(image, lo, hi) - lo) / (hi - lo)
    return (out * 2.0 - 1.0).astype(np.float32)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2D float image (anti-aliased when shrinking)."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if image.shape == shape:
        return image.astype(np.float32, copy=False)
    shrink = any(s < i for s, i in zip(shape, image.shape))
    return resize(image, shape, order=1, mode="edge", anti_aliasing=shrink, preserve_range=True).astype(np.float32)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (labels are never blended)."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if mask.shape == shape:
        return mask
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1).astype(int)
    return mask[rows[:, None], cols[None, :]]


def through_plane_axis(spacing: tuple[float, ...]) -> int:
    """The axis with the largest spacing (the last such axis on ties: axial for RAS volumes)."""
    sp = np.asarray(spacing[:3], dtype=float)
    return int(np.flatnonzero(sp == sp.max())[-1])


def iter_slices(volume: np.ndarray, axis: int):
    """Yield ``(index, 2D slice)`` along ``axis``."""
    for k in range(volume.shape[axis]):
        yield k, np.take(volume, k, axis=axis)


def in_plane_spacing(spacing: tuple[float, ...], axis: int) -> tuple[float, float]:
    rest = [s for i, s in enumerate(spacing[:3]) if i != axis]
    return float(rest[0]), float(rest[1])
