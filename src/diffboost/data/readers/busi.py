"""The public BUSI layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png``.

Masks are ``NAME_mask.png`` and, for images with several lesions, ``NAME_mask_1.png``,
``NAME_mask_2.png`` ...; they are unioned. Normal-class masks are empty: a valid case.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import DataError
from ..io import IMAGE_SUFFIXES, read_image_2d
from ..types import Case, CaseRef
from .base import Reader

_MASK = re.compile(r"(?P<name>.+)_mask(?:_(?P<k>\d+))?", re.DOTALL)  # fullmatch: a newline in a name is a character


def find_busi_root(root: Path) -> Path | None:
    """The folder holding the class sub-folders, or None when ``root`` is not BUSI-like."""
    for cand in (root / "Dataset_BUSI_with_GT", root):
        if cand.is_dir() and any(
            any(p.name.endswith("_mask" + p.suffix) for p in d.iterdir())
            for d in cand.iterdir()
            if d.is_dir() and not d.name.startswith(".")
        ):
            return cand
    return None


class BusiReader(Reader):
    name = "busi"

    def scan(self) -> list[CaseRef]:
        base = find_busi_root(self.root)
        if base is None:
            raise self.empty_error("BUSI class folders with NAME.png + NAME_mask.png pairs")
        refs: list[CaseRef] = []
        for cls_dir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            images: dict[str, Path] = {}
            masks: dict[str, list[Path]] = {}
            for p in sorted(cls_dir.iterdir()):
                if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
                    continue
                m = _MASK.fullmatch(p.stem)
                if m:
                    masks.setdefault(m["name"], []).append(p)
                elif p.stem in images:  # x.png beside x.jpg: which one is the image?
                    raise DataError(p, f"a second image file for {p.stem} (beside {images[p.stem].name}): which one "
                                       "is the image is ambiguous; remove the copy")
                else:
                    images[p.stem] = p
            for stem, img in images.items():
                if stem not in masks:
                    self.bad(img, "image without mask (expected NAME_mask.png beside it)")
                    continue
                refs.append(
                    CaseRef(
                        case_id=stem,
                        image=img,
                        masks=sorted(masks[stem], key=lambda q: q.name),
                        category=cls_dir.name,
                        modality="US",
                        organ="Breast",
                    )
                )
            for stem, ms in masks.items():
                if stem not in images:
                    self.bad(ms[0], "mask without image")
        if not refs:
            raise self.empty_error("BUSI images")
        ids = [r.case_id for r in refs]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"{base}: the same image name appears in several class folders: {dup[:5]}")
        return refs

    @property
    def label_names(self) -> dict[int, str]:
        return {0: "background", 1: "lesion"}

    def load(self, ref: CaseRef) -> Case:
        image = read_image_2d(ref.image)
        mask = self.read_binary_masks(ref.masks, image.shape, use_label_map=False)
        return Case(ref=ref, image=image, mask=mask, spacing=(1.0, 1.0))
