"""Paired folders: ``images/`` and ``masks/`` (or ``labels/``), matched by file stem.

Images may be PNG, JPG, TIFF or NIfTI (2D or 3D). A mask named ``STEM``, ``STEM_mask``,
``STEM_seg`` or ``STEM_label`` pairs with image ``STEM``. 2D masks: foreground = value > 0
unless a label map is given; NIfTI masks keep their integer labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..io import ALL_SUFFIXES, is_nifti, read_any, split_suffix
from ..labels import apply_label_map
from ..types import Case, CaseRef
from .base import Reader

MASK_DIRS = ("masks", "labels", "mask", "label")
_MASK_SUFFIXES = ("", "_mask", "_seg", "_label", "_labels")


def find_mask_dir(root: Path) -> Path | None:
    for name in MASK_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and split_suffix(p)[1] in ALL_SUFFIXES
    )


class FoldersReader(Reader):
    name = "folders"

    def scan(self) -> list[CaseRef]:
        img_dir = self.root / "images"
        mask_dir = find_mask_dir(self.root)
        if not img_dir.is_dir() or mask_dir is None:
            raise DataError(self.root, "expected sub-folders images/ and masks/ (or labels/)")
        masks = {split_suffix(p)[0]: p for p in _files(mask_dir)}
        refs, used = [], set()
        for img in _files(img_dir):
            stem = split_suffix(img)[0]
            match = next((masks[stem + s] for s in _MASK_SUFFIXES if stem + s in masks), None)
            if match is None:
                self.bad(img, f"image without mask (no {stem}.* in {mask_dir})")
                continue
            used.add(match)
            refs.append(CaseRef(case_id=stem, image=img, masks=[match]))
        if not refs:
            raise self.empty_error(f"image files ({', '.join(ALL_SUFFIXES)}) with masks in {img_dir}")
        return refs

    def load(self, ref: CaseRef) -> Case:
        image, spacing = read_any(ref.image)
        mpath = ref.masks[0]
        if not is_nifti(mpath):
            if image.ndim != 2:
                raise DataError(mpath, "a 2D mask file cannot label a 3D image")
            return Case(ref, image, self.read_binary_masks([mpath], image.shape), spacing)
        mask, _ = read_any(mpath)
        if image.ndim == 4:
            image = select_channel(image, self.cfg.channel, ref.image)
        if mask.shape != image.shape:
            raise DataError(mpath, f"mask size {mask.shape} differs from its image size {image.shape}")
        return Case(ref, image.astype(np.float32), apply_label_map(mask, self.cfg.label_map, None, mpath), spacing)


def select_channel(volume: np.ndarray, channel: int | None, path: Path, names: dict | None = None) -> np.ndarray:
    """Pick one channel of a 4D volume ``[X, Y, Z, C]``."""
    if volume.ndim != 4:
        return volume
    n = volume.shape[3]
    if channel is None:
        if n == 1:
            return volume[..., 0]
        hint = f" ({', '.join(f'{k}: {v}' for k, v in names.items())})" if names else ""
        raise DataError(path, f"4D volume with {n} channels{hint}: choose one with --channel")
    if not 0 <= channel < n:
        raise DataError(path, f"channel {channel} does not exist: the volume has {n} channels")
    return volume[..., channel]
