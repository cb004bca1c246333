"""Images without labels (``prepare --unlabelled DIR``): any layout ``prepare`` reads, its masks left
unread, or a plain folder of images (searched recursively).

Their case ids are ``DIRNAME/ID`` so that they never collide with the labelled source's. Modality and
organ come from the layout when it names them, else from the labelled source (the same task); the
category from the layout when it names one (BUS-BRA's pathology, a BUSI class folder), else ``unknown``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, read_any, split_suffix
from ..types import Case, CaseRef
from .base import Reader

UNKNOWN = "unknown"


class UnlabelledReader(Reader):
    name = "unlabelled"
    has_masks = False

    def __init__(self, root, cfg, labelled: list[CaseRef] | None = None, prefix: bool = True):
        super().__init__(root, cfg)
        self.prefix = prefix  # case ids DIRNAME/ID (beside a labelled source) or the layout's own
        known = Counter((r.modality, r.organ) for r in labelled or [])
        self._task = known.most_common(1)[0][0] if known else (None, None)
        self.layout: str = "images"

    def scan(self) -> list[CaseRef]:
        from . import READERS, detect_format

        try:
            fmt = detect_format(self.root)  # its own layout: the source's options name the source's files
        except DataError:
            fmt = None
        refs: list[CaseRef] = []
        if fmt in READERS and fmt != "corpus":
            own = dataclasses.replace(self.cfg, format="auto", image_dir=None, mask_dir=None, case_pattern=None,
                                      categories=None, mask_pattern=None, skip_bad=True)  # a missing mask is no error
            inner = READERS[fmt](self.root, own)
            try:
                refs = [dataclasses.replace(r, masks=[]) for r in inner.scan()]
            except DataError:  # no image of the layout has a mask: its images are read below
                refs = []
            # the layout's images that have no mask are images all the same
            taken = {r.image for r in refs}
            refs += [CaseRef(case_id=split_suffix(Path(s["file"]).name)[0], image=Path(s["file"]))
                     for s in inner.skipped if "without mask" in s["problem"] and Path(s["file"]) not in taken]
            self.tables = getattr(inner, "tables", [])
            self.layout = fmt
        if not refs:  # a plain folder of images, at any depth (the image folder of a layout whose masks pair none)
            from .folders import find_image_dir

            where = (find_image_dir(self.root) or self.root) if fmt in ("folders", "ddti", "busbra") else self.root
            files = sorted(p for p in where.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and (p.suffix.lower() in IMAGE_SUFFIXES or p.name.lower().endswith(NIFTI_SUFFIXES)))
            refs = [CaseRef(case_id=split_suffix(p.relative_to(where))[0], image=p) for p in files]
            self.layout = "images"
        if not refs:
            raise self.empty_error("images")
        modality, organ = self._task
        prefix = f"{self.root.resolve().name or 'unlabelled'}/" if self.prefix else ""
        return [dataclasses.replace(r, case_id=f"{prefix}{r.case_id}", masks=[], category=r.category or UNKNOWN,
                                    modality=r.modality or modality, organ=r.organ or organ, group=None)
                for r in refs]

    def load(self, ref: CaseRef) -> Case:
        image, spacing = read_any(ref.image)
        if image.ndim == 4:
            from .folders import select_channel

            image = select_channel(image, self.cfg.channel, ref.image)
        if image.ndim not in (2, 3):
            raise DataError(ref.image, f"expected a 2D image or a 3D volume, got shape {image.shape}")
        return Case(ref=ref, image=np.asarray(image, np.float32), mask=None, spacing=spacing)


def read_unlabelled(folders, cfg, labelled: list[CaseRef]) -> list[tuple[UnlabelledReader, list[CaseRef]]]:
    """Scan every ``--unlabelled`` folder; a DataError naming the folder for one that is missing, empty, or
    whose case ids collide with the labelled source's or another folder's."""
    taken = {r.case_id for r in labelled}
    out = []
    for folder in folders or []:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(folder, "--unlabelled: not found or not a folder")
        reader = UnlabelledReader(folder, cfg, labelled)
        refs = reader.scan()
        clash = sorted(taken & {r.case_id for r in refs})
        if clash:
            raise DataError(folder, f"--unlabelled: its images would be named like others already read ({clash[:3]}); "
                                    "give each unlabelled folder a name of its own")
        taken |= {r.case_id for r in refs}
        out.append((reader, refs))
    return out
