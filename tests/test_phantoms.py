"""The built-in SYNTHETIC demo phantoms: BUSI layout, labels, lesion look, determinism, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import regionprops

import diffboost.data.phantoms as P
from diffboost.data.phantoms import KINDS, generate_phantoms, phantom

NAME = re.compile(r"^(?P<kind>benign|malignant|normal) \((?P<i>\d+)\)(?P<mask>_mask(?:_(?P<k>\d+))?)?\.png$")
N, SEED = 20, 7


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_phantoms(tmp_path_factory.mktemp("ph") / "busi", n=N, seed=SEED)


def _read(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        assert im.mode == "L", f"{p.name} is {im.mode}, expected 8-bit grey"
        return np.asarray(im)


def _cases(root: Path) -> dict[str, dict[int, dict]]:
    """kind -> index -> {"image": path, "masks": [paths]}"""
    out: dict[str, dict[int, dict]] = {k: {} for k in KINDS}
    for kind in KINDS:
        for p in (root / "Dataset_BUSI_with_GT" / kind).iterdir():
            m = NAME.match(p.name)
            assert m and m["kind"] == kind, f"unexpected file {p}"
            case = out[kind].setdefault(int(m["i"]), {"image": None, "masks": []})
            if m["mask"]:
                case["masks"].append(p)
            else:
                case["image"] = p
    return out


def _ring(mask: np.ndarray, inner: int = 3, outer: int = 8) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(mask, iterations=inner)


# -- layout and labels ------------------------------------------------------------------------
def test_layout_and_file_names(root):
    assert root.name == "busi"
    assert sorted(p.name for p in root.iterdir()) == ["Dataset_BUSI_with_GT", "README.txt"]
    assert sorted(p.name for p in (root / "Dataset_BUSI_with_GT").iterdir()) == list(KINDS)
    assert [p.name for p in root.parent.iterdir()] == ["busi"]  # no temporary folder left beside it
    for kind, cases in _cases(root).items():
        assert sorted(cases) == list(range(1, len(cases) + 1))  # benign (1) ... benign (n)
        for i, case in cases.items():
            assert case["image"] is not None
            names = sorted(p.name for p in case["masks"])
            assert names[0] == f"{kind} ({i})_mask.png"
            assert names[1:] in ([], [f"{kind} ({i})_mask_1.png"])
            if kind == "normal":
                assert len(names) == 1


def test_counts_per_class(root, tmp_path):
    cases = _cases(root)
    assert {k: len(v) for k, v in cases.items()} == {"benign": 11, "malignant": 6, "normal": 3}
    assert "benign: 11, malignant: 6, normal: 3" in (root / "README.txt").read_text()
    small = generate_phantoms(tmp_path / "s", n=3, seed=0)
    assert {k: len(v) for k, v in _cases(small).items()} == {"benign": 1, "malignant": 1, "normal": 1}
    assert P._class_counts(48, (0.55, 0.30, 0.15)) == [27, 14, 7]
    assert P._class_counts(10, (1, 0, 0)) == [10, 0, 0]  # a zero fraction really means none
    assert sum(P._class_counts(7, (1, 1, 1))) == 7


def test_masks_binary_same_size_and_sizes_vary(root):
    sizes = set()
    for kind, cases in _cases(root).items():
        for case in cases.values():
            img = _read(case["image"])
            assert img.dtype == np.uint8 and img.ndim == 2
            assert 160 <= img.shape[0] <= 256 and 160 <= img.shape[1] <= 256
            sizes.add(img.shape)
            masks = [_read(p) for p in case["masks"]]
            for m in masks:
                assert m.shape == img.shape
                assert set(np.unique(m)) <= {0, 255}
            if kind == "normal":
                assert masks[0].max() == 0
            else:
                assert all(m.max() == 255 for m in masks)
                assert all(m[[0, -1]].max() == 0 and m[:, [0, -1]].max() == 0 for m in masks)  # inside
                if len(masks) == 2:
                    assert not ((masks[0] > 0) & (masks[1] > 0)).any()
    assert len(sizes) > N // 2  # every image draws its own height and width, like real BUSI


def test_readme_says_synthetic(root):
    text = (root / "README.txt").read_text()
    assert "SYNTHETIC" in text and "not patient data" in text.lower()
    assert f"seed: {SEED}" in text and f"version {P.VERSION}" in text and f"images: {N}" in text


def test_busi_reader_reads_it_unchanged(root):
    from diffboost.config import PrepareConfig
    from diffboost.data.readers import detect_format
    from diffboost.data.readers.busi import BusiReader

    assert detect_format(root) == "busi"
    reader = BusiReader(root, PrepareConfig())
    refs = reader.scan()
    assert len(refs) == N and not reader.skipped
    assert {r.category for r in refs} == set(KINDS)
    for ref in refs:
        if len(ref.masks) == 2 or ref.category == "normal":
            case = reader.load(ref)
            union = np.zeros(case.image.shape, bool)
            for p in ref.masks:
                union |= _read(p) > 0
            assert np.array_equal(case.mask > 0, union)
            assert np.array_equal(case.image, _read(ref.image).astype(np.float32))


# -- the lesion look ----------------------------------------------------------------------------
def test_phantom_api():
    rng = np.random.default_rng(1)
    for kind in KINDS:
        img, masks = phantom(rng, 170, 230, kind)
        assert img.dtype == np.uint8 and img.shape == (170, 230)
        assert all(m.dtype == bool and m.shape == img.shape for m in masks)
        assert (masks == []) == (kind == "normal")
        assert img.std() > 20  # textured, not flat
        assert img[:3].mean() < img[img.shape[0] // 3 :].mean()  # dark near-field band at the top
    with pytest.raises(ValueError):
        phantom(rng, 170, 230, "cyst")


def test_lesions_hypoechoic_sized_and_shaped():
    rng = np.random.default_rng(0)
    solidity = {"benign": [], "malignant": []}
    widths = []
    second = 0
    for kind in solidity:
        for _ in range(14):
            img, masks = phantom(rng, 200, 240, kind)
            second += len(masks) == 2
            for m in masks:
                # hypoechoic: the drawn lesion is clearly darker than the tissue ring around it
                assert img[m].mean() < 0.7 * img[_ring(m)].mean()
            m = masks[0]
            assert 0.04 <= m.mean() <= 0.26
            props = regionprops(m.astype(np.uint8))[0]
            solidity[kind].append(props.solidity)
            if kind == "benign":
                r0, c0, r1, c1 = props.bbox
                widths.append((c1 - c0) / (r1 - r0))
    assert np.mean(solidity["benign"]) > 0.95
    assert np.mean(solidity["malignant"]) < np.mean(solidity["benign"]) - 0.1
    assert min(widths) > 1.0  # benign ovals are wider than tall
    assert 1 <= second <= 12  # a second lesion now and then (~15%)


def test_posterior_shadow_and_enhancement():
    """Below malignant lesions the tissue is darker than beside them; relatively less so for benign."""
    rng = np.random.default_rng(3)
    below_vs_side = {"benign": [], "malignant": []}
    for kind in below_vs_side:
        for _ in range(10):
            img, masks = phantom(rng, 220, 220, kind)
            m = masks[0]
            rows, cols = np.nonzero(m)
            bottom, c0, c1 = rows.max(), cols.min(), cols.max()
            if bottom > 200:
                continue
            mid = slice(c0 + (c1 - c0) // 4, c1 - (c1 - c0) // 4 + 1)
            band = slice(bottom + 4, min(bottom + 25, 220))
            below = img[band, mid][~m[band, mid]].mean()
            side = np.r_[img[band, : max(c0 - 3, 1)].ravel(), img[band, c1 + 3 :].ravel()]
            below_vs_side[kind].append(below / max(side.mean(), 1.0))
    assert np.mean(below_vs_side["malignant"]) < 0.9
    assert np.mean(below_vs_side["benign"]) > np.mean(below_vs_side["malignant"]) + 0.15


# -- determinism --------------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(generate_phantoms(tmp_path / "a", n=5, seed=11))
    b = _files(generate_phantoms(tmp_path / "b", n=5, seed=11))
    c = _files(generate_phantoms(tmp_path / "c", n=5, seed=12))
    assert a == b
    images = [k for k in a if k.endswith(").png")]
    assert any(k in c and a[k] != c[k] for k in images)


# -- writing ------------------------------------------------------------------------------------
def test_existing_output_needs_overwrite(tmp_path):
    out = generate_phantoms(tmp_path / "out", n=3, seed=0)
    before = _files(out)
    with pytest.raises(FileExistsError):
        generate_phantoms(out, n=3, seed=1)
    assert _files(out) == before  # untouched
    generate_phantoms(out, n=4, seed=1, overwrite=True)
    assert "images: 4" in (out / "README.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "empty").mkdir()
    generate_phantoms(tmp_path / "empty", n=3)  # an empty folder is fine without overwrite
    assert (tmp_path / "empty" / "README.txt").exists()


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    real = P.phantom
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure while writing")
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "phantom", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        generate_phantoms(tmp_path / "x", n=6)
    assert list(tmp_path.iterdir()) == []

    # a failure while replacing an existing output keeps the old one and leaves no temporary folder
    monkeypatch.setattr(P, "phantom", real)
    out = generate_phantoms(tmp_path / "keep", n=3, seed=2)
    before = _files(out)
    calls["n"] = 0
    monkeypatch.setattr(P, "phantom", flaky)
    with pytest.raises(RuntimeError):
        generate_phantoms(out, n=6, seed=5, overwrite=True)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"fractions": (1, -1, 0)}, {"fractions": (0, 0, 0)}, {"size_range": (20, 40)}, {"seed": -1}],
)
def test_bad_arguments_raise_before_writing(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_phantoms(tmp_path / "bad", **{"n": 3, **kwargs})
    assert list(tmp_path.iterdir()) == []
