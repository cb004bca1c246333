"""The built-in demo phantoms: layout, labels, determinism, and the lesion look."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import regionprops

from diffboost.data.phantoms import generate_phantoms, phantom


def test_layout_counts_and_masks(phantom_root):
    base = phantom_root / "Dataset_BUSI_with_GT"
    assert "SYNTHETIC" in (phantom_root / "README.txt").read_text()
    counts = {}
    for kind in ("benign", "malignant", "normal"):
        imgs = sorted(p for p in (base / kind).glob("*.png") if "_mask" not in p.name)
        counts[kind] = len(imgs)
        for p in imgs:
            img = np.asarray(Image.open(p))
            mask = np.asarray(Image.open(p.with_name(p.stem + "_mask.png")))
            assert img.dtype == np.uint8 and img.ndim == 2 and mask.shape == img.shape
            assert set(np.unique(mask)) <= {0, 255}
            assert (mask.max() == 0) == (kind == "normal")
    assert sum(counts.values()) == 12 and min(counts.values()) >= 1
    sizes = {Image.open(p).size for p in base.rglob("*.png")}
    assert len(sizes) > 3  # varied image sizes, like real BUSI


def test_lesions_are_hypoechoic_and_malignant_less_convex():
    rng = np.random.default_rng(0)
    solidity = {"benign": [], "malignant": []}
    for kind in solidity:
        for _ in range(8):
            img, masks = phantom(rng, 200, 240, kind)
            m = masks[0]
            ring = ndimage.binary_dilation(m, iterations=8) & ~ndimage.binary_dilation(m, iterations=3)
            assert img[m].mean() < 0.75 * img[ring].mean()
            solidity[kind].append(regionprops(m.astype(np.uint8))[0].solidity)
    assert np.mean(solidity["malignant"]) < np.mean(solidity["benign"]) - 0.05


def test_deterministic_per_seed(tmp_path):
    a = generate_phantoms(tmp_path / "a", n=4, seed=1)
    b = generate_phantoms(tmp_path / "b", n=4, seed=1)
    c = generate_phantoms(tmp_path / "c", n=4, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


def test_existing_output_and_failure_leave_no_temp(tmp_path):
    generate_phantoms(tmp_path / "a", n=3)
    with pytest.raises(FileExistsError):
        generate_phantoms(tmp_path / "a", n=3)
    with pytest.raises(ValueError):
        generate_phantoms(tmp_path / "b", n=3, fractions=(1, -1, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_failure_midway_removes_temp(tmp_path, monkeypatch):
    import diffboost.data.phantoms as P

    calls = {"n": 0}
    real = P.phantom

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(P, "phantom", boom)
    with pytest.raises(RuntimeError):
        generate_phantoms(tmp_path / "x", n=4)
    assert list(tmp_path.iterdir()) == []
