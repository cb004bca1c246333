"""Medical Segmentation Decathlon tasks and nnU-Net raw datasets.

MSD: ``dataset.json`` (``modality``, ``labels``, ``training`` list), ``imagesTr/CASE.nii.gz``
(4D for multi-channel tasks) and ``labelsTr/CASE.nii.gz``.

nnU-Net raw (v2; v1 alike): ``imagesTr/CASE_0000<ending>`` (one file per channel),
``labelsTr/CASE<ending>``, ``dataset.json`` with ``channel_names`` (v1: ``modality``), ``labels``
and ``file_ending`` (``.nii.gz``, ``.png``, ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..io import check_same_grid, is_nifti, read_any, split_suffix
from ..labels import apply_label_map, output_label_names
from ..types import Case, CaseRef
from .base import Reader
from .folders import select_channel

# MSD / nnU-Net channel names -> the modality word of the prompt triplet (RadImageNet's vocabulary).
_MODALITY_WORDS = {
    "ct": "CT", "mri": "MR", "mr": "MR", "t1": "MR", "t1w": "MR", "t1gd": "MR", "t2": "MR",
    "t2w": "MR", "flair": "MR", "adc": "MR", "dwi": "MR", "us": "US", "ultrasound": "US",
}


def modality_word(name: str) -> str:
    return _MODALITY_WORDS.get(name.strip().lower(), name.strip())


def read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "missing (an MSD / nnU-Net dataset needs its dataset.json)") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object")
    return data


def _task_organ(meta: dict, root: Path) -> str:
    name = str(meta.get("name") or root.name)
    name = re.sub(r"^(Task|Dataset)\d+_", "", name)
    return name.replace("_", " ")


class MSDReader(Reader):
    """MSD layout; also nnU-Net v1 (which lists cases the same way)."""

    name = "msd"

    def __init__(self, root, cfg):
        super().__init__(root, cfg)
        self.meta = read_dataset_json(self.root)
        self.json_path = self.root / "dataset.json"
        chans = self.meta.get("modality") or self.meta.get("channel_names") or {}
        self.channels = {int(k): str(v) for k, v in chans.items()}
        labels = self.meta.get("labels") or {}
        self.source_labels = _parse_labels(labels, self.json_path)

    @property
    def label_names(self) -> dict[int, str]:
        return output_label_names(self.source_labels, self.cfg.label_map)

    def _modality(self) -> str:
        if not self.channels:
            return "MR"
        ch = self.cfg.channel if self.cfg.channel is not None else 0
        return modality_word(self.channels.get(ch, self.channels[min(self.channels)]))

    def _ref(self, case_id: str, image: Path, label: Path) -> CaseRef:
        return CaseRef(case_id=case_id, image=image, masks=[label], category=None,
                       modality=self._modality(), organ=_task_organ(self.meta, self.root))

    def scan(self) -> list[CaseRef]:
        entries = self.meta.get("training")
        if not isinstance(entries, list):
            raise DataError(self.json_path, "has no 'training' list")
        refs = []
        for e in entries:
            try:
                img, lab = _inside(self.root, e["image"], self.json_path), _inside(self.root, e["label"], self.json_path)
            except (TypeError, KeyError):
                raise DataError(self.json_path, f"training entry without image/label: {e!r}") from None
            if not img.exists():
                self.bad(img, "listed in dataset.json but missing")
                continue
            if not lab.exists():
                self.bad(img, f"image without mask ({lab} missing)")
                continue
            refs.append(self._ref(split_suffix(img)[0], img, lab))
        if not refs:
            raise self.empty_error("training cases")
        return refs

    def _declared(self) -> set[int] | None:
        return set(self.source_labels) if self.source_labels else None

    def load(self, ref: CaseRef) -> Case:
        image, spacing = read_any(ref.image)
        image = select_channel(image, self.cfg.channel, ref.image, self.channels)
        mask, _ = read_any(ref.masks[0])
        if mask.shape != image.shape:
            raise DataError(ref.masks[0], f"label size {mask.shape} differs from its image size {image.shape}")
        if is_nifti(ref.image) and is_nifti(ref.masks[0]):
            check_same_grid(ref.image, ref.masks[0])
        mask = apply_label_map(mask, self.cfg.label_map, self._declared(), ref.masks[0])
        return Case(ref, image.astype(np.float32), mask, spacing[: image.ndim])


def _inside(root: Path, relative: str, json_path: Path) -> Path:
    """A dataset.json path, which must stay inside the dataset (no absolute path, no '..')."""
    rel = Path(str(relative))
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(json_path, f"lists {relative!r}, a path outside the dataset folder; dataset.json paths must "
                                   "be relative to it (./imagesTr/NAME.nii.gz)")
    return root / rel


def _parse_labels(labels: dict, path: Path) -> dict[int, str]:
    """MSD labels are ``{"1": "name"}``; nnU-Net v2 labels are ``{"name": 1}`` (or a list)."""
    out: dict[int, str] = {}
    for k, v in labels.items():
        if str(k).lstrip("-").isdigit():
            out[int(k)] = str(v)
        elif isinstance(v, int):
            out[v] = str(k)
        elif isinstance(v, list) and v and all(isinstance(x, int) for x in v):
            out[max(v)] = str(k)  # nnU-Net region labels: take the region's own label value
        else:
            raise DataError(path, f"cannot read label entry {k!r}: {v!r}")
    return out


_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


class NnUNetReader(MSDReader):
    """nnU-Net raw: one file per channel (``_0000``), labels beside, ``file_ending``."""

    name = "nnunet"

    def scan(self) -> list[CaseRef]:
        ending = str(self.meta.get("file_ending") or ".nii.gz")
        img_dir, lab_dir = self.root / "imagesTr", self.root / "labelsTr"
        if not img_dir.is_dir():
            raise DataError(img_dir, "missing")
        ch = self.cfg.channel
        if ch is None:
            if len(self.channels) > 1:
                names = ", ".join(f"{k}: {v}" for k, v in self.channels.items())
                raise DataError(self.json_path, f"{len(self.channels)} channels ({names}): choose one with --channel")
            ch = 0
        refs = []
        for p in sorted(img_dir.iterdir()):
            if not p.name.endswith(ending) or p.name.startswith("."):
                continue
            m = _CHANNEL.match(p.name[: -len(ending)])
            if not m or int(m["ch"]) != ch:
                continue
            case = m["case"]
            lab = lab_dir / f"{case}{ending}"
            if not lab.exists():
                self.bad(p, f"image without mask ({lab} missing)")
                continue
            refs.append(self._ref(case, p, lab))
        if not refs:
            raise self.empty_error(f"imagesTr/CASE_{ch:04d}{ending} files")
        return refs

    def load(self, ref: CaseRef) -> Case:
        image, spacing = read_any(ref.image)
        if image.ndim == 4:
            raise DataError(ref.image, "nnU-Net raw images hold one channel per file, got a 4D volume")
        mask, _ = read_any(ref.masks[0])
        if mask.shape != image.shape:
            raise DataError(ref.masks[0], f"label size {mask.shape} differs from its image size {image.shape}")
        if is_nifti(ref.image) and is_nifti(ref.masks[0]):
            check_same_grid(ref.image, ref.masks[0])
        mask = apply_label_map(mask, self.cfg.label_map, self._declared(), ref.masks[0])
        return Case(ref, image.astype(np.float32), mask, spacing[: image.ndim])
