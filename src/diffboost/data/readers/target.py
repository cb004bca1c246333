"""The target site of a cross-site set (``prepare SOURCE --target DIR``): a labelled layout of another
hospital or scanner, read with its own layout's reader and default options (the source's options name
the source's files). Its case ids and patient groups are ``DIRNAME/ID`` so that they never collide with
the source's. Modality and organ come from its layout when it names them, else from the source (the same
task); the category from its layout, else ``unknown``. Its labels are read for its test folds only: in a fold's training part its images are
unlabelled (their labels hidden), see :func:`diffboost.data.folds.cross_site_folds`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...errors import DataError
from ..types import Case, CaseRef
from .base import Reader


class TargetReader(Reader):
    """The target's own reader, its case ids and groups prefixed with the folder's name."""

    def __init__(self, root, cfg, taken: set[str], task: tuple[str | None, str | None] = (None, None)):
        from . import READERS, detect_format

        super().__init__(root, cfg)
        fmt = detect_format(self.root)
        if fmt == "corpus":
            raise DataError(self.root, "--target: a corpus has no labels to test on; give a labelled layout "
                                       "(BUSI, BUS-BRA, DDTI, images/ + masks/, MSD, nnU-Net)")
        own = dataclasses.replace(cfg, format="auto", image_dir=None, mask_dir=None, case_pattern=None,
                                  categories=None, mask_pattern=None, target=None, unlabelled=None)
        self.inner = READERS[fmt](self.root, own)
        self.name = f"target {fmt}"
        self.has_masks = self.inner.has_masks
        self.prefix = f"{self.root.resolve().name or 'target'}/"
        self.taken = taken
        self.task = task  # the source's (modality, organ): the same task, for a layout that names neither

    def scan(self) -> list[CaseRef]:
        refs = self.inner.scan()
        self.tables = getattr(self.inner, "tables", [])
        self.skipped = self.inner.skipped
        modality, organ = self.task
        out = [dataclasses.replace(r, case_id=self.prefix + r.case_id, category=r.category or "unknown",
                                   modality=r.modality or modality, organ=r.organ or organ,
                                   group=None if r.group is None else self.prefix + r.group) for r in refs]
        clash = sorted(self.taken & {r.case_id for r in out})
        if clash:
            raise DataError(self.root, f"--target: its cases would be named like the source's ({clash[:3]}); "
                                       "rename the target folder")
        return out

    def load(self, ref: CaseRef) -> Case:
        n = len(self.prefix)  # the inner reader sees its own ids
        own = dataclasses.replace(ref, case_id=ref.case_id[n:], group=None if ref.group is None else ref.group[n:])
        return dataclasses.replace(self.inner.load(own), ref=ref)

    @property
    def label_names(self) -> dict[int, str]:
        return self.inner.label_names


def read_target(folder, cfg, source_refs: list[CaseRef]) -> tuple[TargetReader, list[CaseRef]]:
    """Scan the ``--target`` folder; a DataError naming it when it is missing, has no labels, or clashes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "--target: not found or not a folder")
    from collections import Counter

    task = Counter((r.modality, r.organ) for r in source_refs).most_common(1)
    reader = TargetReader(folder, cfg, {r.case_id for r in source_refs}, task[0][0] if task else (None, None))
    if not reader.has_masks:
        raise DataError(folder, "--target: has no labels to test on")
    return reader, reader.scan()
