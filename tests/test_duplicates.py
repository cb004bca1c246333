"""Near-duplicate detection: copies, re-crops and intensity changes are found, other images are not,
and ``prepare`` keeps each group inside one fold."""

from __future__ import annotations

import json

import numpy as np

from diffboost.data.duplicates import near_duplicate_groups, similarity


def _scenes(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):  # smooth random scenes: a few blobs on a gradient
        img = rng.uniform(-1, 1) * yy
        for _ in range(4):
            cy, cx, r = rng.uniform(0.1, 0.9, 2).tolist() + [rng.uniform(0.12, 0.3)]
            img += rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
        out.append(img)
    return np.stack(out).astype(np.float32)


def test_copies_recrops_and_contrast_changes_are_grouped_and_distinct_scenes_are_not():
    base = _scenes(12)
    noisy = base[0] + np.random.default_rng(1).normal(0, 0.05, base[0].shape).astype(np.float32)
    shifted = np.roll(base[1], 1, axis=1)  # re-cropped by a pixel
    brighter = 1.3 * base[2] + 0.2  # another gain / offset: correlation ignores it
    images = np.concatenate([base, np.stack([noisy, shifted, brighter])])
    ids = [f"s{i}" for i in range(12)] + ["copy_of_s0", "crop_of_s1", "gain_of_s2"]
    groups = near_duplicate_groups(ids, images, 0.92)
    assert sorted(groups) == [["copy_of_s0", "s0"], ["crop_of_s1", "s1"], ["gain_of_s2", "s2"]]
    sim = similarity(base)
    assert np.allclose(np.diag(sim), 1)
    assert (sim[~np.eye(12, dtype=bool)] < 0.92).all()  # the distinct scenes really are distinct


def test_flat_image_is_nobodys_duplicate():
    images = np.zeros((3, 32, 32), np.float32)
    images[1] += np.linspace(0, 1, 32)
    # no structure to correlate: flat images match nothing, not even each other (documented limit)
    assert near_duplicate_groups(["a", "b", "c"], images, 0.92) == []
    images[2] = images[1] * 2
    assert near_duplicate_groups(["a", "b", "c"], images, 0.92) == [["b", "c"]]


def test_prepare_keeps_each_group_in_one_fold(tmp_path):
    from PIL import Image

    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    scenes = _scenes(10, 96, seed=3)
    copies = {"c0": 0, "c1": 0, "c2": 5}  # two copies of scene 0, one of scene 5
    for name, img in [*((f"s{i}", scenes[i]) for i in range(10)), *((k, scenes[v]) for k, v in copies.items())]:
        u8 = np.uint8(np.clip((img - img.min()) / (np.ptp(img) + 1e-6) * 255, 0, 255))
        Image.fromarray(u8).save(root / "images" / f"{name}.png")
        mask = np.zeros_like(u8)
        mask[30:60, 30:60] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    ps = prepare(root, tmp_path / "prep", PrepareConfig(size=32, folds=3), progress=False)
    dups = json.loads((ps.root / "dataset.json").read_text())["near_duplicates"]
    assert sorted(dups["groups"]) == [["c0", "c1", "s0"], ["c2", "s5"]]
    for f in ps.folds:
        for g in dups["groups"]:
            assert sum(bool(set(g) & set(part)) for part in (f.train, f.val, f.test)) == 1
    off = prepare(root, tmp_path / "prep_off", PrepareConfig(size=32, folds=3, duplicates=None), progress=False)
    assert json.loads((off.root / "dataset.json").read_text())["near_duplicates"]["groups"] == []
