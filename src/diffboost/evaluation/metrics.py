"""Dice, Precision, Recall, HD95 and ASSD per case, nnU-Net / medpy style, with empty masks defined.

Distances use MONAI's mask edges (the mask minus its erosion) and its exact Euclidean surface
distances with the voxel spacing, so they are in mm for NIfTI and in pixels of the original image
for 2D files. HD95 and ASSD follow medpy (the paper's code):

- HD95 = 95th percentile of the distances from each border to the other, both directions pooled;
- ASSD = mean of the two directed average surface distances.

Empty masks are never dropped (MONAI's own HD95 returns NaN there, and a NaN silently left out of a
mean flatters a model). The values used instead:

| reference | prediction | Dice | Precision | Recall | HD95, ASSD |
|---|---|---|---|---|---|
| empty | empty | 1 | 1 | 1 | 0 |
| empty | not empty | 0 | 0 | 0 | the image diagonal |
| not empty | empty | 0 | 0 | 0 | the image diagonal |

A ratio whose denominator is zero is 1 when both masks are empty and 0 otherwise; the distance
where one border is missing is the diagonal of the whole image (or volume) in physical units, the
largest distance possible inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("dice", "precision", "recall", "hd95", "assd")
HIGHER_IS_BETTER = {"dice": True, "precision": True, "recall": True, "hd95": False, "assd": False}


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each border voxel of ``pred`` to the border of ``ref``, and back (both masks
    non-empty)."""
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    edges_pred, edges_ref = get_mask_edges(pred, ref, crop=True)
    sp = np.asarray(spacing, dtype=np.float64)
    d_pr = get_surface_distance(edges_pred, edges_ref, distance_metric="euclidean", spacing=sp)
    d_rp = get_surface_distance(edges_ref, edges_pred, distance_metric="euclidean", spacing=sp)
    return np.asarray(d_pr, np.float64), np.asarray(d_rp, np.float64)


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """The five metrics of one binary mask pair on the same grid (see the module's table)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the reference's {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D mask")
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    both_empty = n_pred == 0 and n_ref == 0

    def ratio(num: int, den: int) -> float:
        return num / den if den else float(both_empty)

    out = {"dice": ratio(2 * tp, n_pred + n_ref), "precision": ratio(tp, n_pred), "recall": ratio(tp, n_ref)}
    if both_empty:
        out["hd95"] = out["assd"] = 0.0
    elif n_pred == 0 or n_ref == 0:
        out["hd95"] = out["assd"] = _diagonal(pred.shape, spacing)
    else:
        d_pr, d_rp = surface_distances(pred, ref, spacing)
        out["hd95"] = float(np.percentile(np.concatenate([d_pr, d_rp]), 95))
        out["assd"] = float((d_pr.mean() + d_rp.mean()) / 2)
    return out


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Sequence[int]) -> dict:
    """Metrics of one case for each foreground label (``dice_1`` ...) and their mean (``dice`` ...)."""
    out: dict = {}
    per = {lab: binary_metrics(pred == lab, ref == lab, spacing) for lab in labels}
    for m in METRICS:
        for lab in labels:
            out[f"{m}_{lab}"] = per[lab][m]
        out[m] = float(np.mean([per[lab][m] for lab in labels]))
    return out


def label_dice(pred, ref, labels: Sequence[int]) -> float:
    """Mean Dice over ``labels`` of one image or volume at one grid (numpy arrays or tensors); a label
    absent from both scores 1. The cheap overlap-only score of checkpoint selection and the teacher."""
    scores = []
    for lab in labels:
        a, b = pred == lab, ref == lab
        den = int(a.sum()) + int(b.sum())
        scores.append(2.0 * int((a & b).sum()) / den if den else 1.0)
    return float(np.mean(scores))


# a reference lesion counts as found when the prediction covers at least this share of it
FOUND_SHARE = 0.1


def lesion_detection(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Lesion-wise detection of one case (any foreground label; connected components, corners touching
    included): how many reference lesions, which were found (the prediction covers at least
    :data:`FOUND_SHARE` of the lesion), and how many predicted components touch no reference lesion
    (false lesions). Lesion sizes (pixels or voxels of the case's grid) and their found flags are
    ``;``-joined so that lesions of all cases can be pooled by size."""
    from scipy import ndimage as ndi

    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    full = np.ones((3,) * ref.ndim, int)
    ref_lab, n_ref = ndi.label(ref, structure=full)
    pred_lab, n_pred = ndi.label(pred, structure=full)
    sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)[1:]
    covered = np.bincount(ref_lab[pred].ravel(), minlength=n_ref + 1)[1:]
    found = covered >= FOUND_SHARE * sizes
    touching = np.unique(pred_lab[ref & pred])
    return {"lesions": int(n_ref), "lesions_found": int(found.sum()),
            "false_lesions": int(n_pred - np.count_nonzero(touching)),
            "lesion_sizes": ";".join(str(int(v)) for v in sizes),
            "lesion_found": ";".join(str(int(v)) for v in found)}


def detection_summary(rows: list[dict]) -> dict | None:
    """Pooled lesion-wise detection of per-case rows carrying :func:`lesion_detection`'s fields (None
    when they do not): recall of the reference lesions, overall and by size tercile (cut points over
    the pooled reference lesions), and false lesions per image."""
    if not rows or any(r.get("lesions") in (None, "") for r in rows):
        return None
    sizes = np.array([int(v) for r in rows for v in str(r["lesion_sizes"]).split(";") if v != ""], np.int64)
    found = np.array([int(v) for r in rows for v in str(r["lesion_found"]).split(";") if v != ""], bool)
    out = {"cases": len(rows), "lesions": int(len(sizes)),
           "recall": float(found.mean()) if len(sizes) else float("nan"),
           "false_lesions_per_image": float(np.mean([int(r["false_lesions"]) for r in rows]))}
    if len(sizes) >= 3:
        cuts = np.quantile(sizes, [1 / 3, 2 / 3])
        bins = np.digitize(sizes, cuts, right=True)
        out["size_terciles"] = [float(c) for c in cuts]
        out["recall_by_size"] = {name: float(found[bins == k].mean()) if (bins == k).any() else float("nan")
                                 for k, name in enumerate(("small", "medium", "large"))}
    return out


class SegmentationMetric:
    """Accumulates per-case rows (MONAI style): ``__call__`` one case, ``aggregate`` the mean and
    standard deviation over cases, ``reset`` to start again."""

    def __init__(self, labels: Sequence[int] = (1,)):
        self.labels = tuple(labels)
        self.rows: list[dict] = []

    def __call__(self, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], **info) -> dict:
        row = {**info, **case_metrics(pred, ref, spacing, self.labels)}
        self.rows.append(row)
        return row

    def aggregate(self) -> dict[str, tuple[float, float]]:
        """``metric -> (mean, std)`` over the cases seen (population std, as the paper's tables)."""
        if not self.rows:
            raise ValueError("no cases to aggregate")
        return {m: (float(np.mean([r[m] for r in self.rows])), float(np.std([r[m] for r in self.rows])))
                for m in METRICS}

    def reset(self) -> None:
        self.rows = []
