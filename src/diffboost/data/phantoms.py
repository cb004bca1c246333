"""Built-in demo data: SYNTHETIC breast-ultrasound-like phantoms in the public BUSI folder layout.

These are not patient data. Every phantom is simulated from scratch:

* a dark near-field band under the probe, a bright skin line, subcutaneous fat with darker
  lobules and oblique bright Cooper's ligaments, heterogeneous fibroglandular tissue, a deep
  fascia and pectoral muscle with oblique striations (layer boundaries wander and tilt);
* fully developed speckle: Gaussian scatterers weighted by the local echogenicity, blurred by an
  anisotropic point-spread function, and the Rayleigh-distributed envelope of that complex field;
* depth attenuation that the time-gain compensation only partly undoes, then log compression;
* optionally a curvilinear (sector) field of view with black outside it;
* lesions (not in ``normal``): hypoechoic regions with few scatterers. ``benign`` ones are smooth
  ovals, wider than tall, sometimes with a thin echogenic capsule and posterior enhancement;
  ``malignant`` ones are lobulated and/or spiculated (radius perturbed by several harmonics plus
  narrow spikes), may be taller than wide, and cast a posterior acoustic shadow.

Each mask is exactly the region whose echogenicity was lowered, so the labels are exact.
``generate_phantoms`` writes them as ``Dataset_BUSI_with_GT/{benign,malignant,normal}/`` with
``NAME.png``, ``NAME_mask.png`` and, for a second lesion, ``NAME_mask_1.png``, which is how the real
dataset (and :class:`diffboost.data.readers.busi.BusiReader`) expects them.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..utils.atomic import commit_artifact, make_temp_dir, recover_artifact

__all__ = ["KINDS", "MIN_SIDE", "VERSION", "generate_phantoms", "phantom"]

VERSION = "2"  # bump when the images a seed produces change
KINDS = ("benign", "malignant", "normal")
MIN_SIDE = 64  # smallest image side the lesion placement is designed for
SECOND_LESION_P = 0.15  # share of lesion images that get a second lesion (``NAME_mask_1.png``)

_F = np.float32


# --------------------------------------------------------------------------------------------
# small random fields
# --------------------------------------------------------------------------------------------
def _field(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """Smooth Gaussian noise with unit standard deviation (coarse grid + interpolation when wide)."""
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (2,))
    step = [max(1, int(s // 3)) for s in sig]  # keep >= 3 samples per sigma on the coarse grid
    small = tuple(-(-n // k) + 2 for n, k in zip(shape, step))
    f = ndimage.gaussian_filter(rng.standard_normal(small).astype(_F), sig / step, truncate=3.0)
    if step != [1, 1]:
        ys = (np.arange(shape[0]) + 0.5) / step[0] + 0.5
        xs = (np.arange(shape[1]) + 0.5) / step[1] + 0.5
        f = _interp2(f, ys, xs)
    else:
        f = f[: shape[0], : shape[1]]
    return f / (f.std() + 1e-6)


def _interp2(f: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``f`` on the grid ``ys`` x ``xs`` (fractional indices)."""
    y0 = np.clip(np.floor(ys).astype(int), 0, f.shape[0] - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, f.shape[1] - 2)
    ty = (ys - y0).astype(_F)[:, None]
    tx = (xs - x0).astype(_F)[None, :]
    a, b = f[y0][:, x0], f[y0][:, x0 + 1]
    c, d = f[y0 + 1][:, x0], f[y0 + 1][:, x0 + 1]
    return (a * (1 - tx) + b * tx) * (1 - ty) + (c * (1 - tx) + d * tx) * ty


def _wiggle(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """A smooth 1D curve of length ``n`` with unit standard deviation."""
    f = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma)
    return f / (f.std() + 1e-9)


def _step(x: np.ndarray, width: float) -> np.ndarray:
    """A soft 0 -> 1 step at ``x = 0``."""
    return 1.0 / (1.0 + np.exp(-np.clip(x / width, -30, 30)))


def _line(dist: np.ndarray, thickness: float) -> np.ndarray:
    """A thin bright line profile for a signed distance to the line."""
    return np.exp(-((dist / thickness) ** 2))


# --------------------------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------------------------
@dataclass
class _Scene:
    h: int
    w: int
    yy: np.ndarray  # [H, 1] row index
    xx: np.ndarray  # [1, W] column index
    depth: np.ndarray  # [H, W] pixels below the top of the field of view
    fov: np.ndarray  # [H, W] bool, inside the field of view
    skin_end: float  # depth (pixels) where the skin ends: lesions start below it


def _field_of_view(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(top edge per column, inside mask): a rectangle, or a curvilinear sector (about 1 in 3)."""
    yy = np.arange(h, dtype=_F)[:, None]
    xx = np.arange(w, dtype=_F)[None, :]
    if rng.random() >= 0.35:
        return np.zeros(w, _F), np.ones((h, w), bool)
    apex_y = -rng.uniform(0.6, 1.4) * h  # virtual apex above the image
    apex_x = w / 2 + rng.uniform(-0.03, 0.03) * w
    r_top = -apex_y
    r_bot = h - apex_y - 1.5
    half_bottom = rng.uniform(0.47, 0.62) * w  # half-width of the sector at the bottom row
    half_angle = math.atan2(half_bottom, h - apex_y)
    dy, dx = yy - apex_y, xx - apex_x
    r = np.hypot(dy, dx)
    ang = np.arctan2(dx, dy)
    fov = (np.abs(ang) <= half_angle) & (r >= r_top) & (r <= r_bot)
    cols = np.arange(w, dtype=_F) - apex_x
    top = np.sqrt(np.maximum(r_top**2 - cols**2, 0)) + apex_y  # the top arc, per column
    return np.maximum(top, 0).astype(_F), fov


def _tissue(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, _Scene]:
    """Mean echogenicity (linear intensity, ~1 for glandular tissue) of the layered breast."""
    yy = np.arange(h, dtype=_F)[:, None]
    xx = np.arange(w, dtype=_F)[None, :]
    top, fov = _field_of_view(rng, h, w)
    depth = (yy - top[None, :]).astype(_F)
    span = float(h - top.mean())
    x0 = xx - w / 2
    tilt = rng.uniform(-0.15, 0.15)

    def boundary(frac: float, wander: float, slope: float) -> np.ndarray:
        return frac * span + slope * x0 + wander * span * _wiggle(rng, w, w / 5)[None, :].astype(_F)

    near = rng.uniform(0.035, 0.08) * span  # dark near-field band under the probe
    skin_thick = rng.uniform(0.025, 0.045) * span
    skin_end = near + skin_thick
    fat_end = boundary(rng.uniform(0.22, 0.38), 0.03, tilt * 0.5)
    fat_end = np.maximum(fat_end, skin_end + 6)
    gland_end = boundary(rng.uniform(0.62, 0.82), 0.04, tilt)
    gland_end = np.maximum(gland_end, fat_end + 0.15 * span)

    # per-layer mean levels, blended with soft steps
    fat = rng.uniform(0.1, 0.22) * np.exp(0.5 * _field(rng, (h, w), (4.0, 6.0)))  # fat lobules
    gland = rng.uniform(0.8, 1.1) * np.exp(0.6 * _field(rng, (h, w), (2.5, 7.0)))  # fibroglandular
    muscle = rng.uniform(0.2, 0.35) * np.exp(0.3 * _field(rng, (h, w), (2.0, 10.0)))
    s_fat = _step(depth - fat_end, 3.0)
    s_gland = _step(depth - gland_end, 2.0)
    echo = fat * (1 - s_fat) + gland * s_fat * (1 - s_gland) + muscle * s_gland

    # skin: a dermis band and a bright entry line, the dark near field above it
    skin = _step(depth - near, 0.8) * (1 - _step(depth - skin_end, 1.0))
    echo = echo * (1 - skin) + rng.uniform(0.9, 1.3) * skin
    echo += rng.uniform(1.5, 3.0) * _line(depth - near, 1.0)
    echo *= 0.02 + 0.98 * _step(depth - near + 1.5, 0.8)

    # bright fasciae along the layer boundaries
    echo += rng.uniform(0.6, 1.4) * _line(depth - fat_end, 1.2) * (0.6 + 0.4 * _field(rng, (1, w), (0, 8)))
    echo += rng.uniform(1.0, 2.0) * _line(depth - gland_end, 1.3)
    # oblique bright layers: Cooper's ligaments in fat and gland, patchy along their length
    for _ in range(int(rng.integers(3, 7))):
        y0 = rng.uniform(skin_end + 4, 0.7 * span)
        slope = rng.choice([-1, 1]) * rng.uniform(0.15, 0.6)
        curve = rng.uniform(-1.5, 1.5) / w
        x_c = rng.uniform(0, w)
        d = depth - (y0 + slope * (xx - x_c) + curve * (xx - x_c) ** 2)
        patchy = np.clip(0.5 + 0.8 * _wiggle(rng, w, w / 10), 0, 1.5)[None, :]
        echo += rng.uniform(0.5, 1.2) * _line(d, rng.uniform(0.8, 1.6)) * patchy * (1 - s_gland) * (depth > skin_end)
    # pectoral muscle striations: thin parallel oblique lines
    m_slope = tilt + rng.uniform(-0.2, 0.2)
    period = rng.uniform(5.0, 10.0)
    phase = ((depth - m_slope * x0) % period) - period / 2
    echo += rng.uniform(0.3, 0.7) * _line(phase, 0.9) * s_gland
    # slow shading over the whole view
    echo *= np.exp(0.2 * _field(rng, (h, w), (h / 6, w / 6)))

    scene = _Scene(h=h, w=w, yy=yy, xx=xx, depth=depth, fov=fov, skin_end=float(skin_end))
    return echo.astype(_F), scene


# --------------------------------------------------------------------------------------------
# lesions
# --------------------------------------------------------------------------------------------
@dataclass
class _Outline:
    """A star-shaped outline: radius(theta) on an ellipse with semi-axes (a, b), rotated."""

    kind: str
    aspect: float  # width / height of the base ellipse
    rotation: float
    harmonics: list[tuple[int, float, float]]  # (k, amplitude, phase)
    spikes: list[tuple[float, float, float]]  # (angle, amplitude, angular width)

    def radius(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k, amp, ph in self.harmonics:
            r += amp * np.cos(k * theta + ph)
        for a0, amp, width in self.spikes:
            d = (theta - a0 + np.pi) % (2 * np.pi) - np.pi  # wrapped angular distance
            r += amp * np.exp(-((d / width) ** 2))
        return np.maximum(r, 0.35)

    def unit_area(self) -> float:
        """Area of the outline for a unit-area-factor ellipse (a * b = 1)."""
        t = np.linspace(-np.pi, np.pi, 2048, endpoint=False)
        return float(0.5 * np.mean(self.radius(t) ** 2) * 2 * np.pi)


def _outline(rng: np.random.Generator, kind: str) -> _Outline:
    if kind == "benign":
        harm = [(k, rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
        if rng.random() < 0.25:  # gently macrolobulated fibroadenoma
            harm.append((int(rng.integers(3, 5)), rng.uniform(0.03, 0.06), rng.uniform(0, 2 * np.pi)))
        return _Outline(kind, rng.uniform(1.3, 2.1), rng.uniform(-0.2, 0.2), harm, [])
    style = rng.choice(["lobulated", "spiculated", "both"])
    harm = [(k, rng.uniform(0.01, 0.05), rng.uniform(0, 2 * np.pi)) for k in range(5, 11)]
    if style in ("lobulated", "both"):
        harm += [(k, rng.uniform(0.07, 0.16), rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]
    spikes = []
    if style in ("spiculated", "both"):
        for _ in range(int(rng.integers(6, 13))):
            spikes.append((rng.uniform(-np.pi, np.pi), rng.uniform(0.25, 0.6), rng.uniform(0.06, 0.13)))
    else:
        harm += [(k, rng.uniform(0.03, 0.07), rng.uniform(0, 2 * np.pi)) for k in range(6, 9)]
    return _Outline(kind, rng.uniform(0.7, 1.3), rng.uniform(-0.6, 0.6), harm, spikes)


def _place(
    rng: np.random.Generator, sc: _Scene, outline: _Outline, area: float, forbidden: np.ndarray
) -> tuple[np.ndarray, tuple[float, float]] | None:
    """Rasterise ``outline`` with ``area`` pixels at a random spot clear of ``forbidden``."""
    scale = 1.0
    t = np.linspace(-np.pi, np.pi, 720, endpoint=False)
    for attempt in range(30):
        if attempt and attempt % 5 == 0:
            scale *= 0.85  # does not fit: try smaller
        ab = area * scale**2 / outline.unit_area()
        a = math.sqrt(ab * outline.aspect)  # horizontal semi-axis before rotation
        b = math.sqrt(ab / outline.aspect)
        r = outline.radius(t)
        c, s = math.cos(outline.rotation), math.sin(outline.rotation)
        u, v = a * r * np.cos(t), b * r * np.sin(t)
        bx, by = u * c - v * s, u * s + v * c  # boundary offsets in image axes
        lo_x, hi_x = 2 - bx.min(), sc.w - 3 - bx.max()
        lo_y, hi_y = sc.skin_end + 3 - by.min(), sc.h - 3 - by.max()
        if lo_x > hi_x or lo_y > hi_y:
            continue
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        # rasterise inside the bounding box only
        y0, y1 = int(cy + by.min()) - 1, int(cy + by.max()) + 3
        x0, x1 = int(cx + bx.min()) - 1, int(cx + bx.max()) + 3
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, sc.h), min(x1, sc.w)
        dy = np.arange(y0, y1, dtype=_F)[:, None] - cy
        dx = np.arange(x0, x1, dtype=_F)[None, :] - cx
        pu = (dx * c + dy * s) / a
        pv = (-dx * s + dy * c) / b
        mask = np.zeros((sc.h, sc.w), bool)
        mask[y0:y1, x0:x1] = np.hypot(pu, pv) <= outline.radius(np.arctan2(pv, pu))
        lab, n = ndimage.label(mask)
        if n > 1:  # a hair-thin spike can break into specks: keep the body only
            mask = lab == 1 + int(np.argmax(ndimage.sum_labels(mask, lab, range(1, n + 1))))
        mask = ndimage.binary_fill_holes(mask)
        if mask.sum() < 0.4 * area * scale**2 or (mask & forbidden).any():
            continue
        return mask, (cx, cy)
    return None


def _posterior(mask: np.ndarray, depth_scale: float) -> np.ndarray:
    """Weight in [0, 1] of the acoustic column under a lesion (0 inside the lesion and above it)."""
    h, w = mask.shape
    cols = mask.any(axis=0)
    rows = np.arange(h, dtype=_F)[:, None]
    bottom = np.where(cols, h - 1 - np.argmax(mask[::-1], axis=0), 0).astype(_F)[None, :]
    # lateral taper: full strength in the middle of the lesion, softer at its edges
    taper = ndimage.gaussian_filter1d(cols.astype(_F), max(1.0, 0.08 * cols.sum()))
    taper = np.clip(taper / (taper.max() + 1e-6), 0, 1)[None, :]
    below = rows - bottom
    onset = np.where(below > 0, 1 - np.exp(-np.maximum(below, 0) / 2.0), 0)
    fade = np.exp(-np.maximum(below, 0) / depth_scale)
    return (taper * onset * fade * ~mask).astype(_F)


def _draw_lesion(rng: np.random.Generator, echo: np.ndarray, sc: _Scene, mask: np.ndarray, kind: str) -> np.ndarray:
    """Darken ``mask`` in ``echo`` and add the kind's rim and posterior features; return the
    scatterer sparsity to apply inside the lesion (few scatterers)."""
    post = _posterior(mask, rng.uniform(0.5, 1.5) * sc.h)
    if kind == "malignant":
        echo *= 1 - rng.uniform(0.65, 0.9) * post  # posterior acoustic shadowing
        if rng.random() < 0.4:  # ill-defined echogenic halo
            dist = ndimage.distance_transform_edt(~mask).astype(_F)
            echo *= 1 + rng.uniform(0.3, 0.7) * np.exp(-dist / 3.0) * ~mask
    else:
        if rng.random() < 0.65:
            echo *= 1 + rng.uniform(0.5, 1.3) * post  # posterior enhancement
        if rng.random() < 0.5:  # thin echogenic capsule, brightest where the beam meets it square on
            ring = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3))) & ~mask
            cy, cx = ndimage.center_of_mass(mask)
            ang = np.arctan2(sc.yy - cy, sc.xx - cx)
            facing = 0.35 + 0.65 * np.abs(np.sin(ang))
            echo[ring] = np.maximum(echo[ring], (rng.uniform(1.6, 2.8) * facing)[ring])
    inside = rng.uniform(0.01, 0.04) * np.exp(0.4 * _field(rng, echo.shape, 3.0))
    echo[mask] = inside[mask]
    return mask & (rng.random(mask.shape) >= rng.uniform(0.4, 0.7))  # scatterers removed


# --------------------------------------------------------------------------------------------
# the phantom
# --------------------------------------------------------------------------------------------
def phantom(rng: np.random.Generator, height: int, width: int, kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """One SYNTHETIC ultrasound-like phantom.

    Returns a uint8 image ``[height, width]`` and the bool masks of its lesions (one, sometimes
    two; an empty list for ``kind="normal"``). Each mask is exactly the darkened lesion region.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    h, w = int(height), int(width)
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"height and width must be at least {MIN_SIDE}, got {h} x {w}")

    echo, sc = _tissue(rng, h, w)
    forbidden = ~ndimage.binary_erosion(sc.fov, iterations=3) | (sc.depth < sc.skin_end + 3)
    forbidden[:2], forbidden[-2:], forbidden[:, :2], forbidden[:, -2:] = True, True, True, True
    masks: list[np.ndarray] = []
    empty = np.zeros((h, w), bool)
    if kind != "normal":
        wanted = 2 if rng.random() < SECOND_LESION_P else 1
        for i in range(wanted):
            frac = rng.uniform(0.05, 0.25) if i == 0 else rng.uniform(0.03, 0.07)
            busy = forbidden | (ndimage.binary_dilation(masks[0], iterations=5) if masks else empty)
            placed = _place(rng, sc, _outline(rng, kind), frac * h * w, busy)
            if placed is None:
                if i == 0:  # cannot happen for sides >= MIN_SIDE, but never return an unlabeled lesion image
                    raise RuntimeError(f"could not place a lesion in a {h} x {w} phantom")
                break
            masks.append(placed[0])
    sparse = empty.copy()
    for m in masks:
        sparse |= _draw_lesion(rng, echo, sc, m, kind)

    # speckle: complex Gaussian scatterers weighted by sqrt(echogenicity), blurred by the PSF
    amp = np.sqrt(np.maximum(echo, 0)) * ~sparse
    psf = (rng.uniform(0.7, 0.95), rng.uniform(1.3, 1.9))  # (axial, lateral) sigma in pixels
    re = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(_F) * amp, psf)
    im = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(_F) * amp, psf)
    env = np.hypot(re, im)  # Rayleigh-distributed envelope: fully developed speckle

    # attenuation, only partly undone by the time-gain compensation
    d = np.clip(sc.depth / h, 0, 1)
    gain = np.exp(-rng.uniform(0.5, 1.3) * d) * (1 + rng.uniform(0.0, 0.25) * np.sin(np.pi * d))
    env = env * gain

    # log compression to the display's dynamic range
    db = 20 * np.log10(env + 1e-12)
    ref = np.percentile(db[sc.fov & (sc.depth > sc.skin_end)], 99.8) + rng.uniform(-1.0, 2.0)
    dyn = rng.uniform(36.0, 44.0)
    img = np.clip((db - (ref - dyn)) / dyn, 0, 1) ** rng.uniform(1.4, 1.8)
    img = ndimage.gaussian_filter(img, 0.5, truncate=2.0)  # the scan converter's interpolation
    img = np.where(sc.fov, img * 255, 0)
    return np.rint(img).astype(np.uint8), masks


# --------------------------------------------------------------------------------------------
# the data set on disk
# --------------------------------------------------------------------------------------------
def _class_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Split ``n`` by ``fractions`` (largest remainders); at least one per class with a positive
    fraction when ``n >= 3``."""
    f = np.asarray(fractions, dtype=float)
    share = f / f.sum() * n
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= 3:
        for i in range(3):
            if f[i] > 0 and counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] += 1
    return [int(c) for c in counts]


def _save_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(path, format="PNG", compress_level=6)


def _readme(n: int, seed: int, counts: list[int], size_range: tuple[int, int], fractions) -> str:
    per_class = ", ".join(f"{k}: {c}" for k, c in zip(KINDS, counts))
    return (
        "SYNTHETIC PHANTOMS - NOT PATIENT DATA\n"
        "=====================================\n\n"
        "Every image in this folder is a SYNTHETIC breast-ultrasound-like phantom generated by\n"
        "diffboost (diffboost.data.phantoms). No patient, scanner or real image was used. They exist\n"
        "to demonstrate and test the pipeline; they are not a substitute for clinical data and say\n"
        "nothing about performance on real ultrasound.\n\n"
        f"generator: diffboost.data.phantoms, version {VERSION}\n"
        f"seed: {seed}\n"
        f"images: {n} ({per_class})\n"
        f"image sides: {size_range[0]}-{size_range[1]} pixels, each image its own height and width\n"
        f"class fractions asked: {', '.join(f'{float(x):g}' for x in fractions)}\n\n"
        "Layout (as in the public BUSI data set): Dataset_BUSI_with_GT/<class>/<class> (i).png, with\n"
        "the lesion mask in '<class> (i)_mask.png' (8-bit, 0 or 255) and a second lesion, when there\n"
        "is one, in '<class> (i)_mask_1.png'. Normal images have an all-zero mask.\n"
    )


def generate_phantoms(
    out: str | Path,
    n: int = 48,
    seed: int = 0,
    size_range: tuple[int, int] = (160, 256),
    fractions: tuple[float, float, float] = (0.55, 0.30, 0.15),
    overwrite: bool = False,
) -> Path:
    """Write ``n`` SYNTHETIC phantoms in the BUSI layout under ``out`` and return ``out``.

    Classes (benign, malignant, normal) follow ``fractions``; each image has its own height and
    width in ``size_range``. The same seed gives byte-identical files. The folder is built beside
    ``out`` and moved into place at the end; an existing non-empty ``out`` is an error unless
    ``overwrite``.
    """
    out = Path(out)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n, seed = int(n), int(seed)
    lo, hi = (int(v) for v in size_range)
    if len(size_range) != 2 or not MIN_SIDE <= lo <= hi:
        raise ValueError(f"size_range must be (low, high) with {MIN_SIDE} <= low <= high, got {size_range!r}")
    fr = tuple(float(x) for x in fractions)
    if len(fr) != 3 or not all(math.isfinite(x) and x >= 0 for x in fr) or sum(fr) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers with a positive sum, got {fractions!r}")
    recover_artifact(out)  # a previous output that a kill left aside counts as existing
    if (out.is_symlink() or out.exists()) and not overwrite:
        if not out.is_dir() or any(out.iterdir()):
            raise FileExistsError(f"{out} already exists and is not empty; pass overwrite=True to replace it")

    counts = _class_counts(n, fr)
    seeds = np.random.SeedSequence(seed).spawn(n)  # one independent stream per image
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)  # a normal folder's permissions, not mkdtemp's 0700
    try:
        base = tmp / "Dataset_BUSI_with_GT"
        index = 0
        for kind, count in zip(KINDS, counts):
            (base / kind).mkdir(parents=True)
            for i in range(1, count + 1):
                rng = np.random.default_rng(seeds[index])
                index += 1
                h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
                img, masks = phantom(rng, h, w, kind)
                stem = f"{kind} ({i})"
                _save_png(base / kind / f"{stem}.png", img)
                first = masks[0] if masks else np.zeros((h, w), bool)
                _save_png(base / kind / f"{stem}_mask.png", first.astype(np.uint8) * 255)
                for k, m in enumerate(masks[1:], start=1):
                    _save_png(base / kind / f"{stem}_mask_{k}.png", m.astype(np.uint8) * 255)
        (tmp / "README.txt").write_text(_readme(n, seed, counts, (lo, hi), fr), encoding="utf-8")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing whatever is there; the previous
    contents stay (as ``.out.old``, restored by the next write) until the new ones are in place."""
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    commit_artifact(tmp, out)
