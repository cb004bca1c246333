"""A trained segmenter on new images (``diffboost predict``), and predictions scored against labels
(``diffboost evaluate``).

``predict_folder(SEG_RUN, SRC, OUT)`` reads every image of SRC (any layout ``prepare`` reads, labelled or
not, or a plain folder of images), preprocesses it exactly as the segmenter's training set was prepared
(intensity clipping, slicing, working size: the prepared set's ``config.yaml``), and writes one label map
per image at the image's original size and grid, under the image's path relative to SRC:

- PNG for a 2D image file (0/255 for one foreground label, the label values otherwise);
- NIfTI (``.nii.gz``) with the image's own affine and orientation for a NIfTI image.

``OUT/predictions.csv`` lists case, image and mask; ``OUT/predict.json`` the model and settings.

``evaluate_folder(OUT, SRC)`` scores those masks against SRC's labels with the project's metrics (Dice,
Precision, Recall, HD95, ASSD in mm for NIfTI, lesion detection, false positives on empty references):
``OUT/evaluation/cases.csv`` and ``summary.json`` / ``summary.md``. An image whose label is missing is
listed as not scored, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np

from ..config import PrepareConfig, load_section
from ..data.io import is_nifti, split_suffix
from ..errors import DataError
from ..utils.atomic import atomic_dir, atomic_write_text
from ..utils.lock import locks_folder
from ..utils.progress import progress_iter

MAPPING = "predictions.csv"


def _training_prepare_config(seg_run: Path) -> tuple[PrepareConfig, Path]:
    """The prepare config of the set the segmenter in ``seg_run`` was trained on."""
    from ..utils.atomic import read_control

    candidates = []
    if (seg_run / "run.json").exists():
        candidates.append(Path(str(read_control(seg_run / "run.json").get("prepared", ""))))
    candidates.append(seg_run.resolve().parents[3] / "prepared" if len(seg_run.resolve().parents) > 3 else seg_run)
    for p in candidates:
        if (p / "config.yaml").is_file():
            return load_section(p / "config.yaml", "prepare", PrepareConfig), p
    raise FileNotFoundError(f"{seg_run}: cannot find the prepared set it was trained on (looked at "
                            f"{', '.join(str(c) for c in candidates)}); its config.yaml says how to preprocess images")


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return Path(path.name)


def mask_name(image: Path, root: Path) -> Path:
    """Where the mask of ``image`` (a file under ``root``) goes, relative to the output folder."""
    rel = _relative(image, root)
    stem, _ = split_suffix(rel.name)
    return rel.parent / (stem + (".nii.gz" if is_nifti(image) else ".png"))


def _predict_case(net, image: np.ndarray, spacing, pcfg: PrepareConfig, size: int, batch_size: int) -> np.ndarray:
    """A label map at the image's own size, made as the training set's images were prepared."""
    import torch
    import torch.nn.functional as F

    from ..data.preprocess import iter_slices, normalize_intensity, resize_image, through_plane_axis
    from .data import to_size
    from .predict import predict_probs

    norm = normalize_intensity(image, pcfg.percentiles, pcfg.window)
    if norm.ndim == 2:
        planes, axis = [norm], -1
    else:
        axis = pcfg.axis if pcfg.axis is not None else through_plane_axis(spacing)
        planes = [p for _, p in iter_slices(norm, axis)]
    stored = np.stack([resize_image(p, pcfg.size).astype(np.float16) for p in planes])  # as prepare stores them
    probs = predict_probs(net, to_size(stored, size), batch_size)
    out = []
    for p, plane in zip(probs, planes):
        p = F.interpolate(p[None], size=plane.shape, mode="bilinear", align_corners=False)
        out.append(p[0].argmax(0).numpy().astype(np.uint8))
    return out[0] if axis < 0 else np.stack(out, axis=axis)


def _write_mask(path: Path, pred: np.ndarray, image: Path, labels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_nifti(image):
        import nibabel as nib
        from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

        src = nib.load(str(image))
        data = pred
        if src.ndim >= 3:  # predicted in the closest canonical orientation (read_nifti): back to the file's
            if pred.ndim == 2:  # a 2D image stored as (X, Y, 1): read_nifti dropped the last canonical axis
                data = pred[..., None]
            canon = nib.as_closest_canonical(src)
            data = apply_orientation(data, ornt_transform(io_orientation(canon.affine), io_orientation(src.affine)))
        nib.save(nib.Nifti1Image(data.astype(np.uint8), src.affine), str(path))
        return
    from PIL import Image

    out = pred * 255 if len(labels) == 1 else pred
    buf = io.BytesIO()
    Image.fromarray(out.astype(np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


@locks_folder("out")
def predict_folder(seg_run: str | Path, source: str | Path, out: str | Path, overwrite: bool = False,
                   batch_size: int = 32, progress: bool = True) -> Path:
    """Segment every image of ``source`` with the model of ``seg_run``; write the masks to ``out``."""
    import torch

    from ..data.preparation import check_file_names
    from ..data.readers.unlabelled import UnlabelledReader
    from .trainer import load_segmenter

    seg_run, source, out = Path(seg_run), Path(source), Path(out)
    net, mcfg = load_segmenter(seg_run / "model")
    pcfg, prepared = _training_prepare_config(seg_run)
    reader = UnlabelledReader(source, pcfg, prefix=False)
    refs = reader.scan()
    check_file_names(refs)
    names = [mask_name(r.image, source) for r in refs]
    dup = sorted({str(n) for n in names if names.count(n) > 1})
    if dup:
        raise DataError(source, f"two images would write the same mask file ({dup[:3]}): a PNG and a JPG of one name?")
    labels = [int(k) for k in mcfg.get("labels") or [1]]
    t0 = time.perf_counter()
    net.eval()
    torch.set_grad_enabled(False)
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            rows = []
            for ref, name in zip(progress_iter(refs, f"predict {source.name}", enabled=progress), names):
                case = reader.load(ref)
                pred = _predict_case(net, case.image, case.spacing, pcfg, int(mcfg["size"]), batch_size)
                _write_mask(tmp / name, pred, ref.image, labels)
                rows.append({"case_id": ref.case_id, "image": str(ref.image), "mask": str(name),
                             "foreground_pixels": int(np.count_nonzero(pred))})
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["case_id", "image", "mask", "foreground_pixels"])
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(tmp / MAPPING, buf.getvalue())
            atomic_write_text(tmp / "predict.json", json.dumps({
                "model": str((seg_run / "model").resolve()), "strategy": mcfg.get("strategy"),
                "trained_on": str(prepared), "source": str(source.resolve()), "layout": reader.layout,
                "images": len(rows), "labels": labels, "label_names": mcfg.get("label_names"),
                "prepare": {k: getattr(pcfg, k) for k in ("size", "percentiles", "window", "axis", "channel", "label_map")},
                "seconds": round(time.perf_counter() - t0, 2)}, indent=1, default=str))
    finally:
        torch.set_grad_enabled(True)
    return out


def evaluate_folder(predictions: str | Path, source: str | Path, progress: bool = True,
                    layout: dict | None = None) -> dict:
    """Score the masks of ``predictions`` (a ``predict`` output) against the labels of ``source``; write
    ``predictions/evaluation/`` and return the summary. ``layout``: how ``source``'s labels pair with its
    images when detection does not find them (``format``, ``image_dir``, ``mask_dir``, ``mask_pattern``,
    ``case_pattern``: the options of ``prepare``)."""
    from ..data.readers import get_reader
    from ..evaluation.metrics import SegmentationMetric, lesion_detection
    from .predict import empty_references

    predictions, source = Path(predictions), Path(source)
    if not (predictions / MAPPING).is_file() or not (predictions / "predict.json").is_file():
        raise FileNotFoundError(f"{predictions}: not a `diffboost predict` output (no {MAPPING} / predict.json)")
    info = json.loads((predictions / "predict.json").read_text())
    pcfg = PrepareConfig(label_map=info["prepare"].get("label_map"), channel=info["prepare"].get("channel"),
                         skip_bad=True, **{k: v for k, v in (layout or {}).items() if v is not None})
    reader = get_reader(source, pcfg)
    if not reader.has_masks:
        raise DataError(source, "has no labels to evaluate against")
    refs = {r.image.resolve(): r for r in reader.scan()}
    with open(predictions / MAPPING, newline="") as f:
        mapping = list(csv.DictReader(f))
    labels = [int(k) for k in info.get("labels") or [1]]
    metric = SegmentationMetric(labels)
    unscored = []
    for row in progress_iter(mapping, "evaluate", enabled=progress):
        ref = refs.get(Path(row["image"]).resolve())
        if ref is None:
            unscored.append({"case_id": row["case_id"], "why": "no label in the source"})
            continue
        case = reader.load(ref)
        pred = _read_mask(predictions / row["mask"], case.mask.shape, labels)
        axis = -1 if case.mask.ndim == 2 else (info["prepare"].get("axis") if info["prepare"].get("axis") is not None
                                               else _axis(case.spacing))  # the slicing the prediction used
        empty, fp = empty_references(pred, case.mask, axis)
        metric(pred, case.mask, tuple(case.spacing), case_id=ref.case_id, category=ref.category or "",
               reference_empty=int(not case.mask.any()), prediction_empty=int(not pred.any()),
               empty_slices=empty, fp_slices=fp, **lesion_detection(pred, case.mask))
    rows = metric.rows
    unit = "mm" if any(is_nifti(r["image"]) for r in mapping) else "px"
    summary = _summary(rows, unscored, info, source, unit)
    folder = predictions / "evaluation"
    folder.mkdir(exist_ok=True)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(folder / "cases.csv", buf.getvalue())
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1, default=str))
    atomic_write_text(folder / "summary.md", summary_markdown(summary))
    return summary


def _axis(spacing) -> int:
    from ..data.preprocess import through_plane_axis

    return through_plane_axis(spacing)


def _read_mask(path: Path, shape: tuple[int, ...], labels: list[int]) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "predicted mask missing (the predict output is incomplete)")
    if is_nifti(path):
        from ..data.io import read_nifti

        arr, _ = read_nifti(path)
    else:
        from PIL import Image

        arr = np.asarray(Image.open(path))
        if len(labels) == 1:
            arr = (arr > 0).astype(np.uint8)
    if arr.shape != shape:
        raise DataError(path, f"predicted mask size {arr.shape} differs from its label's {shape}")
    return np.rint(arr).astype(np.uint8)


def _summary(rows: list[dict], unscored: list[dict], info: dict, source: Path, unit: str) -> dict:
    def mean(key, subset=None):
        vals = [float(r[key]) for r in (subset if subset is not None else rows) if r.get(key) not in (None, "")]
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    lesion = [r for r in rows if int(r.get("reference_empty", 0)) == 0]
    empty = [r for r in rows if int(r.get("reference_empty", 0)) == 1]
    return {"source": str(source.resolve()), "model": info.get("model"), "strategy": info.get("strategy"),
            "cases": len(rows), "not_scored": unscored,
            "metrics": {m: mean(m) for m in ("dice", "precision", "recall", "hd95", "assd")},
            "lesion": {m: mean(m, lesion) for m in ("dice", "hd95", "assd")}, "lesion_cases": len(lesion),
            "empty_references": len(empty),
            "fp_rate_empty": (float(np.mean([int(r["prediction_empty"]) == 0 for r in empty])) if empty else None),
            "unit": unit}


def summary_markdown(summary: dict) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}"

    def dist(v):
        return "–" if v is None else f"{v:.2f}"

    m, les = summary["metrics"], summary["lesion"]
    lines = [f"Predictions of {summary['model']} ({summary['strategy']}) on {summary['source']}: "
             f"{summary['cases']} case(s) scored, {len(summary['not_scored'])} without a label.", "",
             f"| cases | Dice | Precision | Recall | HD95 ({summary['unit']}) | ASSD ({summary['unit']}) | lesion Dice | "
             "FP rate on empty references |",
             "|---|---|---|---|---|---|---|---|",
             f"| {summary['cases']} | {pct(m['dice'])} | {pct(m['precision'])} | {pct(m['recall'])} | {dist(m['hd95'])} | "
             f"{dist(m['assd'])} | {pct(les['dice'])} | "
             f"{'–' if summary['fp_rate_empty'] is None else pct(summary['fp_rate_empty'])} |"]
    return "\n".join(lines) + "\n"
