"""Inference and evaluation on whole cases at their original size.

A prediction is made at the training size, its class probabilities are resized (bilinear) to the
original image (each slice to the original slice), and the arg-max is compared with the original
label map. 3D cases are reassembled slice by slice along their slicing axis into the whole volume,
every slice included, and measured in mm.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import PreparedSet
from ..evaluation.metrics import SegmentationMetric, label_dice, lesion_detection
from .data import to_size


@torch.no_grad()
def predict_probs(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 32,
                  channels_last: bool = False) -> torch.Tensor:
    """Softmax probabilities ``[N, C, S, S]`` of images ``[N, 1, S, S]``."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(net(x).float(), dim=1).cpu())
    return torch.cat(out)


def predict_cases(net: torch.nn.Module, ps: PreparedSet, case_ids, size: int, batch_size: int = 32,
                  channels_last: bool = False) -> Iterator[tuple[str, np.ndarray, dict]]:
    """``(case_id, label map at the original size, first manifest row)`` for each case."""
    for case in case_ids:
        idx = ps.indices([case])
        rows = [ps.manifest[i] for i in idx]
        probs = predict_probs(net, to_size(ps.images[np.asarray(idx)], size), batch_size, channels_last)
        planes = []
        for p, r in zip(probs, rows):
            p = F.interpolate(p[None], size=(r["orig_height"], r["orig_width"]), mode="bilinear", align_corners=False)
            planes.append(p[0].argmax(0).numpy().astype(np.uint8))
        first = rows[0]
        if first["slice_axis"] < 0:
            pred = planes[0]
        else:
            order = np.argsort([r["slice_index"] for r in rows])
            pred = np.stack([planes[k] for k in order], axis=first["slice_axis"])
        yield case, pred, first


def case_spacing(row: dict) -> tuple[float, ...]:
    """Spacing of the whole case: mm per axis for volumes, the image's own for 2D files."""
    if row["slice_axis"] < 0:
        return (row["spacing_row"], row["spacing_col"])
    return tuple(row["case_spacing"])


def empty_references(pred: np.ndarray, ref: np.ndarray, slice_axis: int) -> tuple[int, int]:
    """Empty references of a case and how many of them the prediction marks with any foreground:
    the image itself for 2D, each slice along ``slice_axis`` for a volume."""
    if slice_axis < 0:
        empty = not ref.any()
        return int(empty), int(empty and pred.any())
    other = tuple(a for a in range(ref.ndim) if a != slice_axis)
    ref_empty = ~ref.any(axis=other)
    return int(ref_empty.sum()), int((ref_empty & pred.any(axis=other)).sum())


def evaluate_cases(net: torch.nn.Module, ps: PreparedSet, case_ids, size: int, labels, batch_size: int = 32,
                   channels_last: bool = False, keep: set[str] | None = None) -> tuple[SegmentationMetric, dict]:
    """Per-case metrics of ``case_ids`` (and the predictions of the cases in ``keep``)."""
    metric = SegmentationMetric(labels)
    kept = {}
    for case, pred, row in predict_cases(net, ps, case_ids, size, batch_size, channels_last):
        ref = ps.original_mask(case)
        if ref.shape != pred.shape:
            raise ValueError(f"{ps.root}: case {case}: reassembled prediction {pred.shape} does not match the "
                             f"original label map {ref.shape}")
        empty, fp = empty_references(pred, ref, row["slice_axis"])
        metric(pred, ref, case_spacing(row), case_id=case, category=row["category"],
               reference_empty=int(not ref.any()), prediction_empty=int(not pred.any()),
               empty_slices=empty, fp_slices=fp, **lesion_detection(pred, ref))
        if keep and case in keep:
            kept[case] = pred
    return metric, kept


@torch.no_grad()
def quick_dice(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, groups: list[list[int]],
               labels, batch_size: int = 32, channels_last: bool = False) -> float:
    """Mean per-case Dice at the working size (validation, checkpoint selection): each case's slices
    are pooled; a label absent from both prediction and reference counts as 1."""
    pred = predict_probs(net, images, batch_size, channels_last).argmax(1)
    ref = masks[:, 0]
    return float(np.mean([label_dice(pred[rows], ref[rows], labels) for rows in groups]))
