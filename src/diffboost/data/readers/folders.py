"""Paired folders: ``images/`` and ``masks/`` (or ``labels/``), matched by file stem.

Images may be PNG, JPG, GIF, TIFF or NIfTI (2D or 3D). A mask named ``STEM``, ``STEM_mask``,
``STEM_seg`` or ``STEM_label`` pairs with image ``STEM``. 2D masks: foreground = value > 0
unless a label map is given; NIfTI masks keep their integer labels.

Other layouts without renaming anything: ``prepare.image_dir`` / ``mask_dir`` name the folders (an
image folder called ``cropped/`` is found as well), ``case_pattern`` groups several images of one
patient or examination (group ``case`` of the regex on the file stem; they stay in one fold), and
``categories`` names a CSV of ``NAME,CATEGORY`` rows whose category goes into the prompt.
:class:`DDTIReader` is this reader with DDTI's public layout filled in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..io import ALL_SUFFIXES, check_same_grid, is_nifti, read_any, split_suffix
from ..labels import apply_label_map
from ..types import Case, CaseRef
from .base import Reader

MASK_DIRS = ("masks", "labels", "mask", "label")
IMAGE_DIRS = ("images", "image", "imgs", "cropped")
_MASK_SUFFIXES = ("", "_mask", "_seg", "_label", "_labels")


def find_mask_dir(root: Path) -> Path | None:
    for name in MASK_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def find_image_dir(root: Path) -> Path | None:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def read_categories(path: Path, stems: set[str]) -> dict[str, str]:
    """``NAME,CATEGORY[,...]`` rows of a CSV (a header row, one whose name is no image, is skipped)."""
    import csv

    if not path.is_file():
        raise DataError(path, "categories file not found")
    out: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for n, row in enumerate(csv.reader(fh)):
                if not row or not row[0].strip():
                    continue
                if len(row) < 2:
                    raise DataError(path, f"line {n + 1}: expected NAME,CATEGORY, got {row!r}")
                name = split_suffix(row[0].strip())[0]
                if n == 0 and name not in stems:
                    continue  # a header
                out[name] = row[1].strip()
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text ({e})") from None
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and split_suffix(p)[1] in ALL_SUFFIXES
    )


class FoldersReader(Reader):
    name = "folders"
    # what a layout fills in when the config leaves it open (DDTIReader)
    default_image_dir: str | None = None
    default_mask_dir: str | None = None
    default_case_pattern: str | None = None
    default_categories: str | None = None
    modality: str | None = None
    organ: str | None = None

    def __init__(self, root, cfg):
        super().__init__(root, cfg)
        self._nifti_labels: set[int] = set()

    def category_text(self, value: str) -> str:
        return value

    @property
    def case_pattern(self) -> str | None:
        return self.cfg.case_pattern or self.default_case_pattern

    def _dir(self, name: str | None, default: str | None, find, what: str) -> Path:
        name = name or default
        if name is not None:
            folder = Path(name) if Path(name).is_absolute() else self.root / name
            if not folder.is_dir():
                raise DataError(folder, f"{what} folder not found")
            return folder
        folder = find(self.root)
        if folder is None:
            raise DataError(self.root, f"expected sub-folders images/ (or {', '.join(IMAGE_DIRS[1:])}) and masks/ "
                                       f"(or {', '.join(MASK_DIRS[1:])}), or name them with prepare.image_dir / mask_dir")
        return folder

    def scan(self) -> list[CaseRef]:
        import re

        img_dir = self._dir(self.cfg.image_dir, self.default_image_dir, find_image_dir, "image")
        mask_dir = self._dir(self.cfg.mask_dir, self.default_mask_dir, find_mask_dir, "mask")
        mask_files = _files(mask_dir)
        masks = {split_suffix(p)[0]: p for p in mask_files}
        if len(masks) != len(mask_files):
            seen: dict[str, Path] = {}
            for p in mask_files:
                if split_suffix(p)[0] in seen:
                    raise DataError(p, f"a second mask file for {split_suffix(p)[0]} (beside {seen[split_suffix(p)[0]].name}): "
                                       "which one labels the image is ambiguous; remove the copy")
                seen[split_suffix(p)[0]] = p
        images = _files(img_dir)
        stems = [split_suffix(p)[0] for p in images]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            first = next(p for p in images if split_suffix(p)[0] == twice[0])
            raise DataError(first, f"{len(twice)} image name(s) appear with two file types (e.g. {twice[0]}.*): "
                                   "which one is the image is ambiguous; remove the copies")
        cat_file = self.cfg.categories or self.default_categories
        categories = None
        if cat_file is not None:
            path = Path(cat_file) if Path(cat_file).is_absolute() else self.root / cat_file
            categories = read_categories(path, set(stems))
        rx = re.compile(self.case_pattern) if self.case_pattern else None
        refs = []
        for img, stem in zip(images, stems):
            match = next((masks[stem + s] for s in _MASK_SUFFIXES if stem + s in masks), None)
            if match is None:
                self.bad(img, f"image without mask (no {stem}.* in {mask_dir})")
                continue
            group = None
            if rx is not None:
                m = rx.search(stem)
                if m is None:
                    self.bad(img, f"file name does not match case_pattern {self.case_pattern!r}")
                    continue
                group = m.groupdict().get("case") or m.group(1)
            category = None
            if categories is not None:
                if stem not in categories:
                    self.bad(img, f"no row for {stem} in the categories file {cat_file}")
                    continue
                category = self.category_text(categories[stem])
            refs.append(CaseRef(case_id=stem, image=img, masks=[match], category=category, modality=self.modality,
                                organ=self.organ, group=group))
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
        if is_nifti(ref.image):
            check_same_grid(ref.image, mpath)
        if self.cfg.label_map is None:  # the labels of a NIfTI mask become the set's labels: 1..K
            values = sorted(int(v) for v in np.unique(np.rint(mask)) if v != 0)
            if values == [255]:
                raise DataError(mpath, "the mask holds 0/255; pass --labels 255=1 (or save it as 0/1)")
            if values and values != list(range(1, values[-1] + 1)) and not set(values) <= self._nifti_labels:
                raise DataError(mpath, f"the mask holds label(s) {values[:8]}, not 1..K; pass --labels to map them "
                                       "('1,2' merges, '1=1,3=2' renumbers)")
            self._nifti_labels.update(values)
        return Case(ref, image.astype(np.float32), apply_label_map(mask, self.cfg.label_map, None, mpath), spacing)

    @property
    def label_names(self) -> dict[int, str]:
        """One foreground label, or the labels 1..K the NIfTI masks hold (known once they are read)."""
        if self.cfg.label_map is None and len(self._nifti_labels) > 1:
            return {0: "background", **{k: f"label {k}" for k in sorted(self._nifti_labels)}}
        return super().label_names


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


class DDTIReader(FoldersReader):
    """DDTI thyroid ultrasound as its public preprocessing ships it: ``cropped/NAME.png``,
    ``mask/NAME.gif`` (0/255), ``diagnosis.csv`` (``NAME,TI-RADS,flag``). ``NAME`` is ``CASE_IMAGE`` or
    ``CASE_IMAGE(NODULE)``: the images of one CASE (one examination) stay in one fold. The prompt is
    ``US, Thyroid, TI-RADS 4a``; an image without a TI-RADS (``None``) gets the category of its own
    ``TI-RADS not given``."""

    name = "ddti"
    default_image_dir = "cropped"
    default_mask_dir = "mask"
    default_case_pattern = r"^(?P<case>[^_]+)_"
    default_categories = "diagnosis.csv"
    modality, organ = "US", "Thyroid"

    def category_text(self, value: str) -> str:
        return "TI-RADS not given" if value.strip().lower() in ("", "none", "nan") else f"TI-RADS {value.strip()}"

    @property
    def label_names(self) -> dict[int, str]:
        return {0: "background", 1: "nodule"}
