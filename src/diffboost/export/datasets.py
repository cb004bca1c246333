"""Export a prepared set and its synthetic variants as an nnU-Net v2 or MSD raw dataset that nnU-Net
evaluates honestly.

Sizes. Real images and labels are written at their original size and spacing (``size="original"``,
the default): the images are read again from the prepared set's source (which must still be where
``prepare`` found it, and hold the same labels), the labels come from the prepared set's
``originals.npz``. A synthetic variant exists only at the working size; it is resized (bilinear) to
the original size of its source image and mapped back to that image's intensity window (the
percentile clip ``prepare`` applied), and keeps its real image's original label. ``size="working"``
writes everything at the working size instead (real images from ``images.npy``).

Folds. ``splits_final.json`` (nnU-Net's format: a list of ``{"train": [...], "val": [...]}``, one per fold
of the prepared set) keeps the prepared set's folds without ever validating on a test fold: fold K
trains on the real cases of its training part plus the synthetic variants made by fold K's diffusion
model, and validates on the real cases of its validation part (drawn from the training cases, as
``prepare`` made it). nnU-Net uses that validation fold for ``checkpoint_best``,
``find_best_configuration`` and postprocessing, so none of them sees a test case. The test cases are
written again to ``imagesTs/`` with their reference labels in ``labelsTs/`` (a folder nnU-Net does not
read: evaluate with ``nnUNetv2_evaluate_folder labelsTs PREDICTIONS``); ``diffboost_export.json`` lists
each fold's test cases. A synthetic case is never in any validation list nor in another fold.
nnU-Net reads ``splits_final.json`` from ``nnUNet_preprocessed/DatasetXXX_NAME/``: copy it there after
``nnUNetv2_plan_and_preprocess``.

3D sets export as 2D slices (``volumes="slices"``, one case per slice) or as volumes
(``volumes="volumes"``: a synthetic volume is its real volume with every training slice replaced by
that slice's variant).

Images without a label (``prepare --unlabelled``) go to ``imagesUnlabelled/`` (named as nnU-Net's input
images, for ``nnUNetv2_predict``), never to ``imagesTr``; their variants (``generate --unlabelled``) are
not exported. A label budget hides other labels in each fold, which one ``labelsTr`` cannot express:
such a set exports one fold (``fold=K``): ``imagesTr`` holds that fold's labelled training and validation
cases and the variants of the training ones, ``imagesTs`` / ``labelsTs`` its test cases (in no other
folder), ``imagesUnlabelled`` its images without a label, hidden ones included (with no label file), and
``splits_final.json`` one split: nnU-Net's fold 0 is fold K.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    size: str = "original"  # original (real cases as read, variants resized to them) | working
    fold: int | None = None  # export this fold alone (a set at a label budget: required)

    def __post_init__(self):
        if self.to not in ("nnunet", "msd"):
            raise ValueError(f"--to must be 'nnunet' or 'msd', got {self.to!r}")
        if self.volumes not in ("slices", "volumes"):
            raise ValueError(f"volumes must be 'slices' or 'volumes', got {self.volumes!r}")
        if self.size not in ("original", "working"):
            raise ValueError(f"size must be 'original' or 'working', got {self.size!r}")
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
    image: np.ndarray  # 2D [H, W] or 3D, in the exported intensity units
    label: np.ndarray | None  # None: an image without a label (imagesUnlabelled)
    spacing: tuple[float, ...]
    case_id: str
    fold: int | None = None  # the fold whose training part a synthetic unit belongs to
    variant: int | None = None
    slice_index: int | None = None


class _RealCases:
    """Each case's real image, label, spacing and intensity window at the exported size."""

    def __init__(self, ps: PreparedSet, original: bool, with_unlabelled: bool = False):
        self.ps, self.original = ps, original
        self._refs = None
        if original:
            from ..config import PrepareConfig, load_section
            from ..data.readers import get_reader

            source = Path(str(ps.meta.get("source", "")))
            if not source.is_dir():
                raise FileNotFoundError(
                    f"{ps.root}: its source {source} is not there; exporting at the original size reads the real "
                    "images again (move the data back, or export with size: working)")
            self.cfg = load_section(ps.root / "config.yaml", "prepare", PrepareConfig)
            reader = get_reader(source, self.cfg)
            refs = reader.scan()
            self._refs = {r.case_id: (reader, r) for r in refs}  # each case's reader, as prepare read it
            extra = []  # the folders as prepare resolved them (config.yaml keeps them as typed, maybe relative)
            unlabelled = ps.meta.get("unlabelled_sources") or []
            if with_unlabelled and unlabelled:
                from ..data.readers.unlabelled import read_unlabelled

                extra = read_unlabelled(unlabelled, self.cfg, refs)
            target = (ps.meta.get("cross_site") or {}).get("target")
            if target:
                from ..data.readers.target import read_target

                extra.append(read_target(target, self.cfg, refs + [r for _, more in extra for r in more]))
            self._refs |= {r.case_id: (other, r) for other, more in extra for r in more}

    def case(self, case_id: str, rows: list[dict], volumes: bool, labelled: bool = True):
        """``(image, label, spacing, (lo, hi))``: 2D, or 3D for a volume (whole, or stacked slices when
        ``volumes``); ``lo, hi``: the intensities that [-1, 1] stands for. ``labelled`` False: an image
        whose label may not be read here (its label is None)."""
        if self.original:
            reader, ref = self._refs.get(case_id, (None, None))
            if ref is None:
                raise ValueError(f"{self.ps.meta['source']}: case {case_id!r} of {self.ps.root} is no longer in the source")
            case = reader.load(ref)
            image, spacing = case.image.astype(np.float32), tuple(float(s) for s in case.spacing)
            window = self.cfg.window if self.cfg.window is not None else tuple(
                float(v) for v in np.percentile(case.image, self.cfg.percentiles))
            if not labelled:
                return image, None, spacing, window
            label = self.ps.original_mask(case_id)
            if case.mask is not None and (case.mask.shape != label.shape or not np.array_equal(case.mask, label)):
                raise ValueError(f"{ref.masks[0] if ref.masks else ref.image}: the label of case {case_id!r} changed "
                                 f"since {self.ps.root} was prepared; prepare again before exporting")
            return image, label, spacing, window
        # the working size: [-1, 1] written as 0..255
        images, masks = self.ps.images, self.ps.masks
        idx = [r["index"] for r in rows]
        grey = lambda i: (np.asarray(images[i], np.float32) + 1) * 127.5  # noqa: E731
        if rows[0]["slice_axis"] < 0:
            return (grey(idx[0]), np.asarray(masks[idx[0]]) if labelled else None,
                    _slice_spacing(rows[0], self.ps.size), (0.0, 255.0))
        axis = rows[0]["slice_axis"]
        image = np.stack([grey(i) for i in idx], axis=axis)
        label = np.stack([np.asarray(masks[i]) for i in idx], axis=axis) if labelled else None
        return image, label, _volume_spacing(rows[0], self.ps.size), (0.0, 255.0)

    def variant(self, plane: np.ndarray, row: dict, window: tuple[float, float]) -> np.ndarray:
        """A working-size variant in [-1, 1] at the exported size and intensity units of its real slice."""
        from ..data.preprocess import resize_image

        plane = np.asarray(plane, np.float32)
        if self.original:
            plane = resize_image(plane, (row["orig_height"], row["orig_width"]))
        lo, hi = window
        return (lo + (np.clip(plane, -1, 1) + 1) / 2 * (hi - lo)).astype(np.float32)


def export_dataset(source: str | Path, out: str | Path, cfg: ExportConfig | None = None,
                   overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``out/DatasetXXX_NAME`` (nnU-Net) or ``out/TaskXXX_NAME`` (MSD); return its path.

    ``source`` is a prepared set, or a run folder holding ``prepared/`` (and ``synthetic/foldK``)."""
    cfg = cfg or ExportConfig()
    ps = _find_prepared(Path(source), cfg.fold)
    folds = ps.folds if cfg.fold is None else [ps.fold(cfg.fold)]
    if not ps.meta.get("has_masks", True):
        raise ValueError(f"{ps.root}: has no masks (a corpus); nothing to export for segmentation")
    is_3d = bool(ps.meta.get("is_3d"))
    volumes = is_3d and cfg.volumes == "volumes"
    ending = ".nii.gz" if cfg.to == "msd" else (cfg.file_ending or (".nii.gz" if volumes else ".png"))
    folder = f"Dataset{cfg.dataset_id:03d}_{cfg.name}" if cfg.to == "nnunet" else f"Task{cfg.dataset_id:02d}_{cfg.name}"
    synthetic = _synthetic_sets(ps, cfg, folds)
    # the cases whose label is readable here (a fold's own, when one is exported), and the images without one
    labelled = set(ps.labelled_cases) if cfg.fold is None else set(folds[0].labelled)
    blind_here = None if cfg.fold is None else set(folds[0].unlabelled)
    unlabelled = [c for c in ps.case_ids if c not in labelled and (blind_here is None or c in blind_here)]
    real = _RealCases(ps, cfg.size == "original", bool(unlabelled))  # checks the source before anything is written
    target = Path(out) / folder
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite to replace it")
    train_of = {f.index: set(f.train) for f in folds}  # variants of a fold's labelled training cases only
    units, real_of_case = _units(ps, real, synthetic, volumes, cfg.n, progress, [c for c in ps.case_ids if c in labelled],
                                 train_of)
    blind = _unlabelled_units(ps, real, unlabelled, volumes, progress)
    names = [u.name for u in units] + [u.name for u in blind]
    if len(set(names)) != len(names):
        raise ValueError(f"{ps.root}: two cases map to the same exported name; rename the cases")
    splits = [{"train": [n for c in f.train for n in real_of_case[c]] + [u.name for u in units if u.fold == f.index],
               "val": [n for c in f.val for n in real_of_case[c]]} for f in folds]
    tests = {str(f.index): [n for c in f.test for n in real_of_case[c]] for f in folds}
    test_names = set(n for v in tests.values() for n in v)
    # every fold's cases in one imagesTr (each case is tested by one fold and trains in the others); one fold's
    # test cases in imagesTs alone
    training = [u for u in units if cfg.fold is None or u.name not in test_names]
    training_names = {u.name for u in training}
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs") + (("imagesUnlabelled",) if blind else ()):
            (tmp / sub).mkdir()
        for u in progress_iter(units + blind, f"export {cfg.to}", enabled=progress):
            stem = f"{u.name}_0000" if cfg.to == "nnunet" else u.name
            if u.label is None:  # an image without a label here: input to nnUNetv2_predict, never a case
                _write(tmp / "imagesUnlabelled" / f"{stem}{ending}", u.image, u.spacing, cfg.to == "msd", image=True)
                continue
            parts = ([("imagesTr", "labelsTr")] if u.name in training_names else []) + (
                [("imagesTs", "labelsTs")] if u.name in test_names else [])
            for images, labels in parts:
                _write(tmp / images / f"{stem}{ending}", u.image, u.spacing, cfg.to == "msd", image=True)
                _write(tmp / labels / f"{u.name}{ending}", u.label.astype(np.uint8), u.spacing, cfg.to == "msd")
        labels = ps.label_names
        description = _description(ps, sum(u.fold is not None for u in units), sorted(synthetic), cfg.size)
        if cfg.to == "nnunet":
            meta = {"channel_names": {"0": "zscore"},
                    "labels": {("background" if k == 0 else v): k for k, v in sorted(labels.items())},
                    "numTraining": len(training), "file_ending": ending, "name": cfg.name, "description": description}
        else:
            meta = {"name": cfg.name, "description": description, "tensorImageSize": "3D",
                    "reference": "", "licence": "see the source dataset", "release": "",
                    "modality": {"0": _modality(ps)},
                    "labels": {str(k): ("background" if k == 0 else v) for k, v in sorted(labels.items())},
                    "numTraining": len(training), "numTest": len(test_names),
                    "training": [{"image": f"./imagesTr/{u.name}{ending}", "label": f"./labelsTr/{u.name}{ending}"}
                                 for u in training],
                    "test": [f"./imagesTs/{n}{ending}" for n in sorted(test_names)]}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        (tmp / "splits_final.json").write_text(json.dumps(splits, indent=1))
        (tmp / "diffboost_export.json").write_text(json.dumps({
            "prepared": str(ps.root.resolve()), "format": cfg.to, "size": cfg.size, "working_size": ps.size,
            "volumes": "volumes" if volumes else "slices", "synthetic": {str(k): str(s.root) for k, s in synthetic.items()},
            "fold": cfg.fold, **({"nnunet_fold": f"nnU-Net's fold 0 is fold {cfg.fold}"} if cfg.fold is not None else {}),
            "test_cases_per_fold": tests,
            "unlabelled_images": [{"name": u.name, "case_id": u.case_id, "slice_index": u.slice_index} for u in blind],
            "evaluate": "nnUNetv2_evaluate_folder labelsTs PREDICTIONS_OF_FOLD_K -djfile dataset.json -pfile plans.json "
                        "(the predictions of fold K's model on test_cases_per_fold[K] only)",
            "cases": [{"name": u.name, "case_id": u.case_id, "synthetic_fold": u.fold, "variant": u.variant,
                       "slice_index": u.slice_index, "shape": list(u.image.shape)} for u in units]}, indent=1))
    return target


def _find_prepared(source: Path, fold: int | None = None) -> PreparedSet:
    """The prepared set at ``source``, bound to ``fold`` when one is exported."""
    if (source / "dataset.json").exists() and (source / "manifest.csv").exists():
        ps = PreparedSet(source)
    elif (source / "prepared" / "dataset.json").exists():
        ps = PreparedSet(source / "prepared")
    else:
        raise FileNotFoundError(f"{source}: neither a prepared set nor a run folder with prepared/")
    if fold is not None:
        return ps.for_fold(fold)  # an error naming the folds there are
    hiding = [f.index for f in ps.folds if f.hidden]
    if hiding:
        # nnU-Net reads every label of labelsTr: one folder cannot hold a label one fold may read and another may not
        raise ValueError(f"{ps.root}: its folds hide labels (a label budget, or a cross-site set's target), "
                         f"fold {hiding[0]} among them; export one fold at a time (--fold K)")
    return ps


def _synthetic_sets(ps: PreparedSet, cfg: ExportConfig, folds) -> dict:
    from ..generation.generate import SyntheticSet

    found = {}
    for f in folds:
        root = Path(cfg.synthetic.format(fold=f.index)) if cfg.synthetic else ps.root.parent / "synthetic" / f"fold{f.index}"
        if (root / "generation.json").exists():
            syn = SyntheticSet(root)
            syn.check_fold(ps, f.index)
            found[f.index] = syn
    return found


def _variants_of(syn, rows: list[int], n: int | None) -> list[int]:
    ordered = sorted(rows, key=lambda j: syn.manifest[j]["variant"])
    return ordered if n is None else ordered[:n]


def _units(ps: PreparedSet, real: _RealCases, synthetic: dict, volumes: bool, n: int | None, progress: bool,
           cases: list[str], train_of: dict[int, set]):
    """The exported labelled ``cases`` and the variants of each fold's labelled training cases
    (``train_of``), and for each case id the names of its real units."""
    units: list[_Unit] = []
    real_of_case: dict[str, list[str]] = {}
    for case in progress_iter(cases, "read cases", enabled=progress):
        rows = sorted((ps.manifest[i] for i in ps.indices([case])), key=lambda r: r["slice_index"])
        base = _safe(case)
        image, label, spacing, window = real.case(case, rows, volumes)
        axis = rows[0]["slice_axis"]
        if axis < 0:  # a 2D case: one image, each variant replaces it whole
            units.append(_Unit(base, image, label, spacing, case))
            real_of_case[case] = [base]
            for k, syn in synthetic.items():
                if case not in train_of[k]:
                    continue
                for v, j in enumerate(_variants_of(syn, syn.by_real.get(rows[0]["index"], []), n)):
                    units.append(_Unit(f"{base}_syn_f{k}_v{v}", real.variant(syn.images[j], rows[0], window),
                                       label, spacing, case, k, v))
            continue
        if volumes:  # a synthetic volume: the real one with each training slice replaced by its variant
            units.append(_Unit(base, image, label, spacing, case))
            real_of_case[case] = [base]
            train = [r for r in rows if r["train"]]
            for k, syn in synthetic.items():
                if case not in train_of[k] or not train or not all(r["index"] in syn.by_real for r in train):
                    continue
                per = {r["index"]: _variants_of(syn, syn.by_real[r["index"]], n) for r in train}
                for v in range(min(len(p) for p in per.values())):
                    vol = image.copy()
                    for r in train:
                        plane = real.variant(syn.images[per[r["index"]][v]], r, window)
                        index = [slice(None)] * vol.ndim
                        index[axis] = r["slice_index"]
                        vol[tuple(index)] = plane
                    units.append(_Unit(f"{base}_syn_f{k}_v{v}", vol, label, spacing, case, k, v))
            continue
        names = []  # a 3D case as 2D slices
        sp = tuple(s for a, s in enumerate(spacing) if a != axis) if real.original else _slice_spacing(rows[0], ps.size)
        for r in rows:
            z = r["slice_index"]
            name = f"{base}_z{z:03d}"
            plane, lab = np.take(image, z, axis=axis), np.take(label, z, axis=axis)
            units.append(_Unit(name, plane, lab, sp, case, slice_index=z))
            names.append(name)
            for k, syn in synthetic.items():
                if case not in train_of[k]:
                    continue
                for v, j in enumerate(_variants_of(syn, syn.by_real.get(r["index"], []), n)):
                    units.append(_Unit(f"{name}_syn_f{k}_v{v}", real.variant(syn.images[j], r, window), lab, sp,
                                       case, k, v, z))
        real_of_case[case] = names
    return units, real_of_case


def _unlabelled_units(ps: PreparedSet, real: _RealCases, cases: list[str], volumes: bool, progress: bool) -> list[_Unit]:
    """The images without a label here, as units without one (whole, or one per slice as the labelled ones)."""
    units = []
    for case in progress_iter(cases, "read unlabelled images", enabled=progress):
        rows = sorted((ps.manifest[i] for i in ps.indices([case])), key=lambda r: r["slice_index"])
        image, _, spacing, _ = real.case(case, rows, volumes, labelled=False)
        axis = rows[0]["slice_axis"]
        if axis < 0 or volumes:
            units.append(_Unit(_safe(case), image, None, spacing, case))
            continue
        sp = tuple(s for a, s in enumerate(spacing) if a != axis) if real.original else _slice_spacing(rows[0], ps.size)
        units += [_Unit(f"{_safe(case)}_z{r['slice_index']:03d}", np.take(image, r["slice_index"], axis=axis), None, sp,
                        case, slice_index=r["slice_index"]) for r in rows]
    return units


def _slice_spacing(row: dict, size: int) -> tuple[float, float]:
    return (row["spacing_row"] * row["orig_height"] / size, row["spacing_col"] * row["orig_width"] / size)


def _volume_spacing(row: dict, size: int) -> tuple[float, ...]:
    sp = list(row["case_spacing"])
    in_plane = [a for a in range(3) if a != row["slice_axis"]]
    shape = row["case_shape"]
    for a in in_plane:
        sp[a] = sp[a] * shape[a] / size
    return tuple(sp)


def _png_array(arr: np.ndarray, path: Path) -> np.ndarray:
    """An image as 8-bit (or 16-bit) grey for a PNG: the original units, rounded."""
    v = np.rint(np.asarray(arr, np.float64))
    if v.min() >= 0 and v.max() <= 255:
        return v.astype(np.uint8)
    if v.min() >= 0 and v.max() <= 65535:
        return v.astype(np.uint16)
    raise ValueError(f"{path.name}: intensities {v.min():g}..{v.max():g} do not fit a PNG; export with file ending .nii.gz")


def _write(path: Path, arr: np.ndarray, spacing: tuple[float, ...], force_3d: bool, image: bool = False) -> None:
    if path.name.endswith(".png"):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(_png_array(arr, path) if image else arr).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        return
    import nibabel as nib

    arr = arr.astype(np.float32) if image else arr
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


def _description(ps: PreparedSet, variants: int, folds: list[int], size: str) -> str:
    where = "their original size" if size == "original" else f"the working size {ps.size} px"
    return (f"diffboost export of {ps.meta.get('source')} at {where}: real cases and "
            f"{variants} synthetic variants from folds {folds}")
