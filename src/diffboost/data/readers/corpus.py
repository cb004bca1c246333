"""A radiology corpus without masks, RadImageNet layout: ``modality/organ/category/*.png``.

The three folder names give the prompt triplet ("CT, Abdomen, Arterial Pathology"). Used to
pretrain the diffusion model; cases carry no mask.
"""

from __future__ import annotations

from pathlib import Path

from ..io import ALL_SUFFIXES, read_any, split_suffix
from ..types import Case, CaseRef
from .base import Reader


def _pretty(name: str) -> str:
    return name.replace("_", " ").strip()


def corpus_files(root: Path) -> list[Path]:
    """Image files exactly three folders deep under ``root``."""
    return sorted(
        p for p in root.glob("*/*/*/*")
        if p.is_file() and not p.name.startswith(".") and split_suffix(p)[1] in ALL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class CorpusReader(Reader):
    name = "corpus"
    has_masks = False

    @property
    def label_names(self) -> dict[int, str]:
        return {0: "background"}

    def scan(self) -> list[CaseRef]:
        refs = []
        for p in corpus_files(self.root):
            modality, organ, category = p.relative_to(self.root).parts[:3]
            rel = p.relative_to(self.root).with_name(split_suffix(p)[0])
            refs.append(CaseRef(case_id=rel.as_posix(), image=p, masks=[], category=_pretty(category),
                                modality=_pretty(modality), organ=_pretty(organ)))
        if not refs:
            raise self.empty_error("images in modality/organ/category/ folders")
        return refs

    def load(self, ref: CaseRef) -> Case:
        image, spacing = read_any(ref.image)
        return Case(ref, image, None, spacing)
