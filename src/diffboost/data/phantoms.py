"""Built-in demo data: SYNTHETIC breast-ultrasound-like phantoms in the public BUSI layout.

Not patient data. Each phantom has a dark near field, layered tissue echotexture, fully developed
speckle (a Rayleigh-distributed envelope of a smoothed scatterer field), depth attenuation, and —
except for the ``normal`` class — one or two hypoechoic lesions whose masks are exactly the regions
drawn: ``benign`` lesions are smooth ovals, wider than tall, often with posterior enhancement;
``malignant`` ones are irregular (several radial harmonics plus spikes) with posterior shadowing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

VERSION = "1"
KINDS = ("benign", "malignant", "normal")


def _smooth_noise(rng, h, w, sigma, aniso=(1.0, 1.0)):
    f = ndimage.gaussian_filter(rng.standard_normal((h, w)), (sigma * aniso[0], sigma * aniso[1]))
    return f / (f.std() + 1e-8)


def _lesion_mask(rng, h, w, kind, avoid=None):
    area = rng.uniform(0.05, 0.22) * h * w
    r0 = np.sqrt(area / np.pi)
    aspect = rng.uniform(1.2, 1.8) if kind == "benign" else rng.uniform(0.75, 1.3)
    ry, rx = r0 / np.sqrt(aspect), r0 * np.sqrt(aspect)
    margin_y, margin_x = ry * 1.4 + 4, rx * 1.4 + 4
    cy = rng.uniform(max(0.25 * h, margin_y), max(0.25 * h, h - margin_y - 0.1 * h) + 1)
    cx = rng.uniform(margin_x, max(margin_x, w - margin_x) + 1)
    yy, xx = np.mgrid[:h, :w]
    ang = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
    dist = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    radius = np.ones_like(ang)
    if kind == "benign":
        for k in (2, 3):
            radius += rng.uniform(0, 0.05) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    else:
        for k in range(2, 7):
            radius += rng.uniform(0.03, 0.12) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
        for _ in range(rng.integers(4, 9)):  # spicules
            a0 = rng.uniform(-np.pi, np.pi)
            d = np.angle(np.exp(1j * (ang - a0)))
            radius += rng.uniform(0.2, 0.45) * np.exp(-(d / 0.07) ** 2)
    mask = dist <= radius
    if avoid is not None:
        mask &= ~ndimage.binary_dilation(avoid, iterations=3)
    lab, n = ndimage.label(mask)
    if n > 1:  # keep the largest piece so the mask is one lesion
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    return mask, (cy, cx, ry, rx)


def phantom(rng: np.random.Generator, height: int, width: int, kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """One phantom: a uint8 image [H, W] and its lesion masks (empty list for ``normal``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    h, w = height, width
    depth = np.linspace(0, 1, h)[:, None]
    # tissue: low-frequency structure + oblique bright layers (fascia / Cooper's ligaments)
    tissue = 0.55 + 0.15 * _smooth_noise(rng, h, w, 10, (0.5, 2.0))
    for _ in range(rng.integers(3, 7)):
        y0, slope = rng.uniform(0.15, 0.9) * h, rng.uniform(-0.25, 0.25)
        thick = rng.uniform(1.0, 3.0)
        yy, xx = np.mgrid[:h, :w]
        tissue += rng.uniform(0.15, 0.35) * np.exp(-((yy - y0 - slope * (xx - w / 2)) / thick) ** 2)
    skin = rng.uniform(0.06, 0.12)
    tissue *= np.clip((depth - skin) / 0.04, 0.1, 1.0)  # dark near field under the skin line
    masks: list[np.ndarray] = []
    n_lesions = 0 if kind == "normal" else (2 if rng.random() < 0.15 else 1)
    for _ in range(n_lesions):
        m, (cy, cx, ry, rx) = _lesion_mask(rng, h, w, kind, masks[0] if masks else None)
        if m.sum() < 30:
            continue
        masks.append(m)
        tissue[m] = rng.uniform(0.08, 0.2) * (1 + 0.3 * _smooth_noise(rng, h, w, 3)[m])
        # a soft column below the lesion: shadowing (malignant) or enhancement (benign)
        lateral = np.exp(-(((np.arange(w) - cx) / (0.8 * rx)) ** 4))[None, :]
        onset = 1 / (1 + np.exp(-(np.arange(h)[:, None] - (cy + 0.8 * ry)) / 3.0))
        fade = np.exp(-np.maximum(np.arange(h)[:, None] - (cy + ry), 0) / (0.6 * h))
        column = np.where(m, 0.0, lateral * onset * fade)
        if kind == "malignant":
            tissue = tissue * (1 - rng.uniform(0.4, 0.7) * column)  # acoustic shadow
        elif rng.random() < 0.6:
            tissue = tissue * (1 + rng.uniform(0.2, 0.4) * column)  # posterior enhancement
        if kind == "benign" and rng.random() < 0.5:
            ring = ndimage.binary_dilation(m, iterations=2) & ~m
            tissue[ring] += 0.25  # thin echogenic capsule
    # speckle: Rayleigh envelope of a smoothed complex scatterer field (granular texture)
    re, im = (ndimage.gaussian_filter(rng.standard_normal((h, w)), (1.0, 2.2)) for _ in range(2))
    speckle = np.hypot(re, im)
    speckle = 0.3 + 0.7 * speckle / speckle.mean()
    tgc = np.exp(-1.2 * depth) * 1.3  # depth attenuation left after time-gain compensation
    img = np.clip(tissue, 0, None) * speckle * tgc
    img = np.log1p(6 * img) / np.log1p(6 * 2.5)  # log compression, as scanners display
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), masks


def generate_phantoms(
    out: str | Path,
    n: int = 48,
    seed: int = 0,
    size_range: tuple[int, int] = (160, 256),
    fractions: tuple[float, float, float] = (0.55, 0.30, 0.15),
    overwrite: bool = False,
) -> Path:
    """Write ``n`` phantoms in BUSI layout under ``out`` (atomically); return ``out``."""
    out = Path(out)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative shares, got {fractions}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (use overwrite)")
    counts = np.floor(np.asarray(fractions) / sum(fractions) * n).astype(int)
    if n >= 3:
        counts = np.maximum(counts, 1)
    while counts.sum() < n:
        counts[int(np.argmax(np.asarray(fractions) * n - counts))] += 1
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        base = tmp / "Dataset_BUSI_with_GT"
        for kind, count in zip(KINDS, counts):
            (base / kind).mkdir(parents=True)
            for i in range(1, count + 1):
                h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
                img, masks = phantom(rng, h, w, kind)
                name = f"{kind} ({i})"
                Image.fromarray(img).save(base / kind / f"{name}.png")
                first = masks[0] if masks else np.zeros((h, w), bool)
                Image.fromarray(first.astype(np.uint8) * 255).save(base / kind / f"{name}_mask.png")
                for k, m in enumerate(masks[1:], start=1):
                    Image.fromarray(m.astype(np.uint8) * 255).save(base / kind / f"{name}_mask_{k}.png")
        (tmp / "README.txt").write_text(
            "SYNTHETIC PHANTOMS generated by diffboost - not patient data.\n"
            "Breast-ultrasound-like images with lesion masks in the public BUSI folder layout, for demos and tests.\n"
            f"generator version {VERSION}, seed {seed}, images {n}: "
            + ", ".join(f"{k} {c}" for k, c in zip(KINDS, counts)) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
