"""Export a prepared set and its synthetic variants as an nnU-Net v2 or MSD raw dataset.

Everything is written at the working size of the prepared set (the synthetic images exist only
there): real images from ``images.npy`` (rescaled from [-1, 1] to 0..255), labels from
``masks.npy``, synthetic variants with the label of their real image.

``splits_final.json`` (nnU-Net's format: a list of ``{"train": [...], "val": [...]}``, one per fold of
the prepared set) keeps the prepared set's folds: fold K validates on the real cases of its test part
and trains on the real cases of its training and validation parts plus the synthetic variants made by
fold K's diffusion model. A synthetic case is therefore never in any validation list, and never in a
fold other than its own. nnU-Net reads the file from ``nnUNet_preprocessed/DatasetXXX_NAME/``: copy it
there after ``nnUNetv2_plan_and_preprocess``.

3D sets export as 2D slices (``volumes="slices"``, one case per slice) or as re-stacked volumes
(``volumes="volumes"``: the in-plane spacing is scaled to the working size; a synthetic volume is its
real volume with every training slice replaced by that slice's variant).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.preview import to_uint8
from ..data.store import PreparedSet
from ..utils.atomic import atomic_dir
from ..utils.progress import progress_iter


@dataclass
class ExportConfig:
    """Options of ``diffboost export``."""

    to: str = "nnunet"  # nnunet | msd
    dataset_id: int = 501
    name: str = "DiffBoost"
    file_ending: str | None = None  # nnunet: .png (2D default) | .nii.gz (3D default); msd: always .nii.gz
    volumes: str = "slices"  # 3D sets: slices | volumes
    n: int | None = None  # variants per image to export; None = all
    synthetic: str | None = None  # '{fold}' template; None = PREPARED/../synthetic/fold{fold}

    def __post_init__(self):
        if self.to not in ("nnunet", "msd"):
            raise ValueError(f"--to must be 'nnunet' or 'msd', got {self.to!r}")
        if self.volumes not in ("slices", "volumes"):
            raise ValueError(f"volumes must be 'slices' or 'volumes', got {self.volumes!r}")
        if not 0 <= self.dataset_id <= 999:
            raise ValueError(f"dataset id must be in 0..999, got {self.dataset_id}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ValueError(f"dataset name may hold letters, digits, '_' and '-' only, got {self.name!r}")
        if self.file_ending not in (None, ".png", ".nii.gz"):
            raise ValueError(f"file ending must be .png or .nii.gz, got {self.file_ending!r}")
        if self.to == "msd" and self.file_ending == ".png":
            raise ValueError("MSD datasets are NIfTI only (.nii.gz)")


def _safe(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", case_id).strip("_") or "case"


@dataclass
class _Unit:
    """One exported case: arrays to write and where it belongs."""

    name: str
    image: np.ndarray  # float32 in [-1, 1], 2D [H, W] or 3D
    label: np.ndarray
    spacing: tuple[float, ...]
    case_id: str
    fold: int | None = None  # the fold whose training part a synthetic unit belongs to
    variant: int | None = None
    slice_index: int | None = None


def export_dataset(source: str | Path, out: str | Path, cfg: ExportConfig | None = None,
                   overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``out/DatasetXXX_NAME`` (nnU-Net) or ``out/TaskXXX_NAME`` (MSD); return its path.

    ``source`` is a prepared set, or a run folder holding ``prepared/`` (and ``synthetic/foldK``)."""
    cfg = cfg or ExportConfig()
    ps = _find_prepared(Path(source))
    if not ps.meta.get("has_masks", True):
        raise ValueError(f"{ps.root}: has no masks (a corpus); nothing to export for segmentation")
    is_3d = bool(ps.meta.get("is_3d"))
    volumes = is_3d and cfg.volumes == "volumes"
    ending = ".nii.gz" if cfg.to == "msd" else (cfg.file_ending or (".nii.gz" if volumes else ".png"))
    folder = f"Dataset{cfg.dataset_id:03d}_{cfg.name}" if cfg.to == "nnunet" else f"Task{cfg.dataset_id:02d}_{cfg.name}"
    synthetic = _synthetic_sets(ps, cfg)
    units, real_of_case = _units(ps, synthetic, volumes, cfg.n)
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"{ps.root}: two cases map to the same exported name; rename the cases")
    splits = []
    for f in ps.folds:
        train = [n for c in (*f.train, *f.val) for n in real_of_case[c]]
        train += [u.name for u in units if u.fold == f.index]
        splits.append({"train": train, "val": [n for c in f.test for n in real_of_case[c]]})
    target = Path(out) / folder
    with atomic_dir(target, overwrite=overwrite) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for u in progress_iter(units, f"export {cfg.to}", enabled=progress):
            stem = f"{u.name}_0000" if cfg.to == "nnunet" else u.name
            _write(tmp / "imagesTr" / f"{stem}{ending}", to_uint8(u.image) if ending == ".png" else u.image.astype(np.float32),
                   u.spacing, cfg.to == "msd")
            _write(tmp / "labelsTr" / f"{u.name}{ending}", u.label.astype(np.uint8), u.spacing, cfg.to == "msd")
        labels = ps.label_names
        if cfg.to == "nnunet":
            meta = {"channel_names": {"0": "zscore"},
                    "labels": {("background" if k == 0 else v): k for k, v in sorted(labels.items())},
                    "numTraining": len(units), "file_ending": ending, "name": cfg.name,
                    "description": _description(ps, synthetic)}
        else:
            meta = {"name": cfg.name, "description": _description(ps, synthetic), "tensorImageSize": "3D",
                    "reference": "", "licence": "see the source dataset", "release": "",
                    "modality": {"0": _modality(ps)},
                    "labels": {str(k): ("background" if k == 0 else v) for k, v in sorted(labels.items())},
                    "numTraining": len(units), "numTest": 0,
                    "training": [{"image": f"./imagesTr/{u.name}{ending}", "label": f"./labelsTr/{u.name}{ending}"}
                                 for u in units], "test": []}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        (tmp / "splits_final.json").write_text(json.dumps(splits, indent=1))
        (tmp / "diffboost_export.json").write_text(json.dumps({
            "prepared": str(ps.root.resolve()), "format": cfg.to, "working_size": ps.size,
            "volumes": "volumes" if volumes else "slices", "synthetic": {str(k): str(s.root) for k, s in synthetic.items()},
            "cases": [{"name": u.name, "case_id": u.case_id, "synthetic_fold": u.fold, "variant": u.variant,
                       "slice_index": u.slice_index} for u in units]}, indent=1))
    return target


def _find_prepared(source: Path) -> PreparedSet:
    if (source / "dataset.json").exists() and (source / "manifest.csv").exists():
        return PreparedSet(source)
    if (source / "prepared" / "dataset.json").exists():
        return PreparedSet(source / "prepared")
    raise FileNotFoundError(f"{source}: neither a prepared set nor a run folder with prepared/")


def _synthetic_sets(ps: PreparedSet, cfg: ExportConfig) -> dict:
    from ..generation.generate import SyntheticSet

    found = {}
    for f in ps.folds:
        root = Path(cfg.synthetic.format(fold=f.index)) if cfg.synthetic else ps.root.parent / "synthetic" / f"fold{f.index}"
        if (root / "generation.json").exists():
            syn = SyntheticSet(root)
            syn.check_fold(ps, f.index)
            found[f.index] = syn
    return found


def _units(ps: PreparedSet, synthetic: dict, volumes: bool, n: int | None):
    """The exported cases, and for each real case id the names of its real units."""
    units: list[_Unit] = []
    real_of_case: dict[str, list[str]] = {}
    images, masks = ps.images, ps.masks
    for case in ps.case_ids:
        idx = ps.indices([case])
        rows = [ps.manifest[i] for i in idx]
        base = _safe(case)
        if volumes:
            axis = rows[0]["slice_axis"]
            order = np.argsort([r["slice_index"] for r in rows])
            idx = [idx[k] for k in order]
            rows = [rows[k] for k in order]
            img = np.stack([np.asarray(images[i], np.float32) for i in idx], axis=axis)
            lab = np.stack([np.asarray(masks[i]) for i in idx], axis=axis)
            vsp = _volume_spacing(rows[0], ps.size)
            units.append(_Unit(base, img, lab, vsp, case))
            real_of_case[case] = [base]
            for k, syn in synthetic.items():
                by_real = syn.by_real
                if not all(i in by_real for i in idx if ps.manifest[i]["train"]):
                    continue
                train_slices = [i for i in idx if ps.manifest[i]["train"]]
                if not train_slices:
                    continue
                count = min(len(by_real[i]) for i in train_slices)
                for v in range(count if n is None else min(n, count)):
                    planes = [np.asarray(syn.images[_variant_row(syn, by_real[i], v)], np.float32)
                              if ps.manifest[i]["train"] else np.asarray(images[i], np.float32) for i in idx]
                    units.append(_Unit(f"{base}_syn_f{k}_v{v}", np.stack(planes, axis=axis), lab, vsp, case, k, v))
            continue
        names = []
        for i, r in zip(idx, rows):
            name = base if r["slice_axis"] < 0 else f"{base}_z{r['slice_index']:03d}"
            spacing = _slice_spacing(r, ps.size)
            z = None if r["slice_axis"] < 0 else r["slice_index"]
            units.append(_Unit(name, np.asarray(images[i], np.float32), np.asarray(masks[i]), spacing, case, slice_index=z))
            names.append(name)
            for k, syn in synthetic.items():
                for v, row in enumerate(sorted(syn.by_real.get(i, []), key=lambda j: syn.manifest[j]["variant"])):
                    if n is not None and v >= n:
                        break
                    units.append(_Unit(f"{name}_syn_f{k}_v{v}", np.asarray(syn.images[row], np.float32),
                                       np.asarray(masks[i]), spacing, case, k, v, z))
        real_of_case[case] = names
    return units, real_of_case


def _variant_row(syn, rows: list[int], v: int) -> int:
    return sorted(rows, key=lambda j: syn.manifest[j]["variant"])[v]


def _slice_spacing(row: dict, size: int) -> tuple[float, float]:
    return (row["spacing_row"] * row["orig_height"] / size, row["spacing_col"] * row["orig_width"] / size)


def _volume_spacing(row: dict, size: int) -> tuple[float, ...]:
    sp = list(row["case_spacing"])
    in_plane = [a for a in range(3) if a != row["slice_axis"]]
    shape = row["case_shape"]
    for a in in_plane:
        sp[a] = sp[a] * shape[a] / size
    return tuple(sp)


def _write(path: Path, arr: np.ndarray, spacing: tuple[float, ...], force_3d: bool) -> None:
    if path.name.endswith(".png"):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        return
    import nibabel as nib

    if force_3d and arr.ndim == 2:  # MSD holds volumes: a 2D image is a one-slice volume, whose
        # slice is at least as thick as its pixels are wide, so readers take the last axis as through-plane
        arr, spacing = arr[..., None], (*spacing, max(spacing))
    affine = np.diag([*spacing, 1.0]) if len(spacing) == 3 else np.diag([*spacing, 1.0, 1.0])
    img = nib.Nifti1Image(arr, affine)
    img.header.set_zooms(tuple(spacing))
    nib.save(img, str(path))


def _modality(ps: PreparedSet) -> str:
    tmpl = ps.meta.get("config", {}).get("prompt", {})
    if tmpl.get("modality"):
        return str(tmpl["modality"])
    first = ps.meta.get("prompts", [""])[0]
    return first.split(",")[0].strip() or "image"


def _description(ps: PreparedSet, synthetic: dict) -> str:
    return (f"diffboost export of {ps.meta.get('source')} at {ps.size} px: real cases and "
            f"{sum(len(s) for s in synthetic.values())} synthetic variants from folds {sorted(synthetic)}")
