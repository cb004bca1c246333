"""The reader interface: ``scan`` finds cases cheaply, ``load`` reads one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config import PrepareConfig
from ...errors import DataError
from ..io import binary_from_grey, read_any
from ..labels import apply_label_map, output_label_names
from ..types import Case, CaseRef


class Reader:
    """Base class of the dataset readers.

    Problems found while scanning go through :meth:`bad`: an error by default, a recorded skip
    (``skipped``) when the user asked for ``skip_bad``.
    """

    name = "base"
    has_masks = True

    def __init__(self, root: str | Path, cfg: PrepareConfig):
        self.root = Path(root)
        self.cfg = cfg
        self.skipped: list[dict[str, str]] = []
        self.tables: list[Path] = []  # the files besides images and masks that scan read (CSV tables)
        if not self.root.is_dir():
            raise DataError(self.root, "not a folder")

    # -- to implement -------------------------------------------------------------------------
    def scan(self) -> list[CaseRef]:
        raise NotImplementedError

    def load(self, ref: CaseRef) -> Case:
        raise NotImplementedError

    @property
    def label_names(self) -> dict[int, str]:
        return output_label_names({1: "foreground"}, self.cfg.label_map)

    # -- helpers --------------------------------------------------------------------------------
    def bad(self, path: str | Path, problem: str) -> None:
        if not self.cfg.skip_bad:
            raise DataError(path, problem)
        self.skipped.append({"file": str(path), "problem": problem})

    def empty_error(self, what: str) -> DataError:
        return DataError(self.root, f"no {what} found")

    def read_binary_masks(
        self, paths: list[Path], shape: tuple[int, ...], use_label_map: bool = True
    ) -> np.ndarray:
        """Union of 2D masks that must match the image shape.

        Foreground = value > 0, unless a label map is configured (and ``use_label_map``).
        """
        out = np.zeros(shape, dtype=np.uint8)
        for p in paths:
            arr, _ = read_any(p)
            if arr.shape != shape:
                raise DataError(p, f"mask size {arr.shape} differs from its image size {shape}")
            if use_label_map and self.cfg.label_map is not None:
                out = np.maximum(out, apply_label_map(np.rint(arr), self.cfg.label_map, None, p))
            else:
                out |= binary_from_grey(arr)
        return out
