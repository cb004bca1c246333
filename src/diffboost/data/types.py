"""What a reader hands to the preprocessing: references to cases, then loaded cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class CaseRef:
    """A case found on disk, not yet loaded (cheap: used for counting and progress)."""

    case_id: str
    image: Path
    masks: list[Path] = field(default_factory=list)  # several are unioned (BUSI _mask_1 ...)
    category: str | None = None
    modality: str | None = None
    organ: str | None = None
    group: str | None = None  # the patient / examination: cases of one group stay in one fold
    device: str | None = None  # the scanner, when the source names it (BUS-BRA's Device column)


@dataclass
class Case:
    """A loaded case: a 2D image ``[H, W]`` or a 3D volume ``[X, Y, Z]`` with its label map.

    ``mask`` holds output labels (after the label map), ``None`` for corpora without masks.
    ``spacing`` is per axis: pixels (1.0) for 2D image files, mm for NIfTI.
    """

    ref: CaseRef
    image: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, ...]

    @property
    def is_3d(self) -> bool:
        return self.image.ndim == 3
