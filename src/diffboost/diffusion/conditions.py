"""The generator's conditions for labelled and unlabelled images: one model serves both.

A labelled image is conditioned on its edges + mask boundary (the prepared ``conditions``) and, for
``edges+mask`` models, its filled label channels. An image without a label here (prepared with
``--unlabelled``, or hidden by a label budget) is conditioned on its edges alone and, for ``edges+mask``
models, on the "no mask" input :data:`NO_MASK` in every label channel: a value no label takes (labels
are 0/1, and all-zero channels mean "no lesion", a normal image), which the network learns to read as
"unknown". Fine-tuning with ``mask_dropout`` gives labelled images that condition too, now and then
(classifier-free style), so the model also redraws an image it is given no mask for. The unlabelled
images' masks are never read: their rows are not asked for.
"""

from __future__ import annotations

import numpy as np

from ..data.store import PreparedSet
from .models import label_channels

NO_MASK = -1.0  # the label channels' value for "no mask given"
UNKNOWN = "unknown"


def visible_prompt(ps: PreparedSet, index: int) -> str:
    """The prompt of sample ``index`` as a stage may use it: an image whose label this set may not read
    (hidden by a budget, a cross-site target's training image) has its category, an image-level label,
    replaced by ``unknown``; other prompts are as prepared."""
    row = ps.manifest[index]
    if ps.label_readable(index) or not row["category"]:
        return row["prompt"]
    parts = row["prompt"].split(", ")
    return ", ".join(UNKNOWN if p == row["category"] else p for p in parts)


def condition_inputs(ps: PreparedSet, indices: np.ndarray, no_mask: np.ndarray, labels: list[int] | None,
                     mask_channels: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(condition [B, 1, H, W] in [0, 1], label channels [B, K, H, W] or None)`` of samples ``indices``;
    rows where ``no_mask`` (or whose label this set may not read) take the edges alone and :data:`NO_MASK`.
    ``labels`` are the label values of an ``edges+mask`` model's channels (None: the model takes none, or
    it is pretraining, with empty channels of ``mask_channels``)."""
    indices = np.asarray(indices)
    no_mask = np.asarray(no_mask, bool) | ~np.array([ps.label_readable(int(i)) for i in indices], bool)
    has = ps.meta.get("has_masks", True)
    cond = np.empty((len(indices), 1, ps.size, ps.size), np.float32)
    masks = None if mask_channels is None else np.zeros((len(indices), mask_channels, ps.size, ps.size), np.float32)
    with_mask = np.flatnonzero(~no_mask)
    without = np.flatnonzero(no_mask)
    if len(with_mask):  # one read per kind (memory-mapped arrays, sorted rows)
        cond[with_mask, 0] = np.asarray((ps.conditions if has else ps.edges)[indices[with_mask]], np.float32) / 255.0
        if masks is not None and labels is not None:
            masks[with_mask] = label_channels(ps.masks[indices[with_mask]], labels)
    if len(without):
        cond[without, 0] = np.asarray(ps.edges[indices[without]], np.float32) / 255.0
        if masks is not None:
            masks[without] = NO_MASK
    return cond, masks
