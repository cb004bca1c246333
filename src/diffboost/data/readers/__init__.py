"""Dataset readers, auto-detected from the layout or named with ``--format``."""

from __future__ import annotations

import re
from pathlib import Path

from ...config import PrepareConfig
from ...errors import DataError
from .base import Reader
from .busi import BusiReader, find_busi_root
from .corpus import CorpusReader, corpus_files
from .folders import BusBraReader, DDTIReader, FoldersReader, find_image_dir, find_mask_dir, is_busbra
from .msd import MSDReader, NnUNetReader

READERS: dict[str, type[Reader]] = {
    "busi": BusiReader,
    "ddti": DDTIReader,
    "busbra": BusBraReader,
    "folders": FoldersReader,
    "msd": MSDReader,
    "nnunet": NnUNetReader,
    "corpus": CorpusReader,
}

_NNUNET_FILE = re.compile(r"_\d{4}\.[A-Za-z.]+$")


def detect_format(root: str | Path) -> str:
    """Name the layout of ``root``: busi, ddti, busbra, msd, nnunet, folders or corpus."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "not found")
    if not root.is_dir():
        raise DataError(root, "not a folder")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError(root, "empty folder")
    if (root / "imagesTr").is_dir():
        names = [p.name for p in (root / "imagesTr").iterdir() if not p.name.startswith(".")]
        if not names:
            raise DataError(root / "imagesTr", "empty folder")
        return "nnunet" if any(_NNUNET_FILE.search(n) for n in names) else "msd"
    if (root / "cropped").is_dir() and (root / "mask").is_dir() and (root / "diagnosis.csv").is_file():
        return "ddti"
    if find_image_dir(root) is not None and find_mask_dir(root) is not None:
        return "busbra" if is_busbra(root) else "folders"
    if find_busi_root(root) is not None:
        return "busi"
    if corpus_files(root):
        return "corpus"
    raise DataError(root, "cannot tell the dataset layout (BUSI, DDTI, BUS-BRA, images/+masks/, MSD, nnU-Net, "
                          "modality/organ/category corpus); name it with --format")


def get_reader(root: str | Path, cfg: PrepareConfig) -> Reader:
    fmt = detect_format(root) if cfg.format == "auto" else cfg.format
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: auto, {', '.join(READERS)}")
    return READERS[fmt](root, cfg)


__all__ = ["READERS", "Reader", "detect_format", "get_reader"]
