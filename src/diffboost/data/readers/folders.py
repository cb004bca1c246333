"""Paired folders: ``images/`` and ``masks/`` (or ``labels/``; any case: ``Images/``), matched by file stem.

Images may be PNG, JPG, GIF, TIFF or NIfTI (2D or 3D). A mask named ``STEM``, ``STEM_mask``,
``STEM_seg``, ``STEM_label``, ``mask_STEM`` or ``mask_ID`` pairs with image ``STEM``, ``ID`` being the
stem without its first ``_``-separated token (``bus_0002-l`` <-> ``mask_0002-l``); ``prepare.mask_pattern``
(e.g. ``mask_{id}``, ``{stem}_gt``) names the one rule of other layouts. 2D masks: foreground = value > 0
unless a label map is given; NIfTI masks keep their integer labels.

Other layouts without renaming anything: ``prepare.image_dir`` / ``mask_dir`` name the folders (an
image folder called ``cropped/`` is found as well), ``case_pattern`` groups several images of one
patient or examination (group ``case`` of the regex on the file stem; they stay in one fold), and
``categories`` names a CSV of ``NAME,CATEGORY`` rows, or ``FILE:COLUMN`` (a CSV with a header whose ``ID``
column, else its first, names the image), whose category goes into the prompt.
:class:`DDTIReader` and :class:`BusBraReader` are this reader with DDTI's and BUS-BRA's public layouts
filled in.
"""

from __future__ import annotations

import csv
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
_MASK_PREFIX = "mask_"
BUSBRA_TABLE = "bus_data.csv"


def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` under ``root``, written in any case (``Images/``, ``MASKS/``)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    for name in names:
        if (root / name).is_dir():
            return root / name
        match = next((p for p in folders if p.name.lower() == name), None)
        if match is not None:
            return match
    return None


def find_mask_dir(root: Path) -> Path | None:
    return _find_dir(root, MASK_DIRS)


def find_image_dir(root: Path) -> Path | None:
    return _find_dir(root, IMAGE_DIRS)


def stem_id(stem: str) -> str:
    """The stem without its first ``_``-separated token (``bus_0002-l`` -> ``0002-l``); the stem without ``_``."""
    return stem.split("_", 1)[1] if "_" in stem else stem


def _bare(name: str) -> str:
    """``name`` without an image file suffix (``x.png`` -> ``x``; ``case.1`` stays)."""
    stem, suffix = split_suffix(name)
    return stem if suffix in ALL_SUFFIXES else name


def mask_stems(stem: str, pattern: str | None) -> list[str]:
    """The mask file stems that pair with image ``stem``, preferred first: ``pattern`` (``{stem}``, ``{id}``)
    alone when given, else ``STEM``, ``STEM_mask``, ``STEM_seg``, ``STEM_label(s)``, ``mask_STEM``, ``mask_ID``."""
    if pattern is not None:
        return [_bare(pattern.format(stem=stem, id=stem_id(stem)))]
    return [stem + s for s in _MASK_SUFFIXES] + [_MASK_PREFIX + stem, _MASK_PREFIX + stem_id(stem)]


def split_column(spec: str, root: Path) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:COLUMN`` -> the file (relative to ``root`` unless absolute) and the column (or None).

    The text after the last ``:`` is a column when it holds no path separator and ``spec`` is no file."""

    def resolve(name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else root / name

    head, sep, column = spec.rpartition(":")
    if sep and head and column.strip() and not resolve(spec).is_file() and not any(c in column for c in "/\\"):
        return resolve(head), column.strip()
    return resolve(spec), None


class CsvTable:
    """A CSV with a header row, one row per image: the column ``ID`` (any case), else the first, names the
    image by its file stem (an image suffix is ignored; ``bus_0002-l`` or ``0002-l`` both name ``bus_0002-l``)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise DataError(path, "table not found")
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.reader(fh))
        except UnicodeDecodeError as e:
            raise DataError(path, f"not UTF-8 text ({e})") from None
        rows = [r for r in rows if any(v.strip() for v in r)]
        if not rows:
            raise DataError(path, "empty table: expected a header row, then one row per image")
        self.columns = [c.strip() for c in rows[0]]
        lower = [c.lower() for c in self.columns]
        key = lower.index("id") if "id" in lower else 0
        self.rows: dict[str, dict[str, str]] = {}
        for n, row in enumerate(rows[1:], start=2):
            name = _bare(row[key].strip()) if key < len(row) else ""
            if name in self.rows:
                raise DataError(path, f"line {n}: a second row for {name!r}")
            self.rows[name] = {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(self.columns)}

    def column(self, name: str) -> str:
        """``name`` as the header writes it (exact, else ignoring case); a DataError naming file and column."""
        if name in self.columns:
            return name
        match = [c for c in self.columns if c.lower() == name.lower()]
        if len(match) != 1:
            raise DataError(self.path, f"no column {name!r}; its columns are: {', '.join(self.columns)}")
        return match[0]

    def row(self, stem: str) -> dict[str, str] | None:
        return self.rows.get(stem) or self.rows.get(stem_id(stem))


def column_category(column: str, value: str) -> str:
    """A table value as a prompt category: lower-case text (``benign``), a number with its column (``BIRADS 4``)."""
    return f"{column} {value}" if value[:1].isdigit() else value.lower()


def is_busbra(root: Path) -> bool:
    """Whether ``root`` holds BUS-BRA's ``bus_data.csv`` with its ``ID`` and ``Case`` columns."""
    table = root / BUSBRA_TABLE
    if not table.is_file():
        return False
    with open(table, newline="", encoding="utf-8-sig", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    return {"id", "case"} <= {h.strip().lower() for h in header}


def read_categories(path: Path, stems: set[str]) -> dict[str, str]:
    """``NAME,CATEGORY[,...]`` rows of a CSV (a header row, one whose name is no image, is skipped)."""
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
    default_table: str | None = None  # a CSV of one row per image (CsvTable) holding the columns below
    case_column: str | None = None  # the patient (used when no case_pattern is given)
    device_column: str | None = None  # the scanner, kept in the manifest
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
        table = CsvTable(self.root / self.default_table) if self.default_table else None
        if table is not None:
            self.tables.append(table.path)
        case_col = table.column(self.case_column) if table and self.case_column and not self.case_pattern else None
        device_col = table.column(self.device_column) if table and self.device_column else None
        cat_spec = self.cfg.categories or self.default_categories
        categories, cat_table, cat_col = None, None, None
        if cat_spec is not None:
            path, column = split_column(cat_spec, self.root)
            if path not in self.tables:
                self.tables.append(path)
            if column is None:
                categories = read_categories(path, set(stems))
            else:
                cat_table = table if table is not None and table.path == path else CsvTable(path)
                cat_col = cat_table.column(column)
        rx = re.compile(self.case_pattern) if self.case_pattern else None
        refs = []
        paired: dict[Path, str] = {}
        for img, stem in zip(images, stems):
            names = mask_stems(stem, self.cfg.mask_pattern)
            match = next((masks[n] for n in names if n in masks), None)
            if match is None:
                rule = f"mask_pattern {self.cfg.mask_pattern!r}" if self.cfg.mask_pattern else "--mask-pattern"
                self.bad(img, f"image without mask (no {' or '.join(dict.fromkeys(names))} in {mask_dir}; "
                              f"see {rule})")
                continue
            if match in paired:
                raise DataError(match, f"the mask pairs with two images, {paired[match]} and {stem}: name the rule "
                                       "with --mask-pattern")
            paired[match] = stem
            row = table.row(stem) if table is not None else None
            if table is not None and row is None:
                self.bad(img, f"no row for {stem} in {table.path}")
                continue
            group = None
            if rx is not None:
                m = rx.search(stem)
                if m is None:
                    self.bad(img, f"file name does not match case_pattern {self.case_pattern!r}")
                    continue
                group = m.groupdict().get("case") or m.group(1)
            elif row is not None and case_col is not None:
                group = row[case_col] or None
                if group is None:
                    self.bad(img, f"no {case_col} for {stem} in {self.default_table}")
                    continue
            category = None
            if categories is not None:
                if stem not in categories:
                    self.bad(img, f"no row for {stem} in the categories file {cat_spec}")
                    continue
                category = self.category_text(categories[stem])
            elif cat_table is not None and cat_col is not None:
                cat_row = cat_table.row(stem)
                if cat_row is None or not cat_row[cat_col]:
                    self.bad(img, f"no {cat_col} for {stem} in {cat_table.path}")
                    continue
                category = column_category(cat_col, cat_row[cat_col])
            device = (row[device_col] or None) if row is not None and device_col is not None else None
            refs.append(CaseRef(case_id=stem, image=img, masks=[match], category=category, modality=self.modality,
                                organ=self.organ, group=group, device=device))
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


class BusBraReader(FoldersReader):
    """BUS-BRA breast ultrasound as downloaded: ``Images/bus_ID.png``, ``Masks/mask_ID.png`` (one lesion
    each), ``bus_data.csv`` (``ID,Case,Histology,Pathology,BIRADS,Device,...``, one row per image). The images
    of one ``Case`` (patient) stay in one fold; the prompt is ``US, Breast, benign`` from ``Pathology``
    (``categories: bus_data.csv:Histology`` or ``:BIRADS`` picks another column); ``Device`` (the scanner)
    goes into the manifest's ``device`` column."""

    name = "busbra"
    default_table = BUSBRA_TABLE
    default_categories = f"{BUSBRA_TABLE}:Pathology"
    case_column, device_column = "Case", "Device"
    modality, organ = "US", "Breast"

    @property
    def label_names(self) -> dict[int, str]:
        return {0: "background", 1: "lesion"}
