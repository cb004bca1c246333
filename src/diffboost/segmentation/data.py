"""The tensors a segmenter trains on: a fold's real training samples and their synthetic variants.

Everything is loaded into memory once (a few hundred MB at most for the CPU preset), so no data
loading sits on the critical path of a training step.

Two optional filters read what a teacher segmenter made of each variant, stored in the synthetic set's
folder (the row of a variant is its index in the set's manifest):

- ``teacher_gate`` (image level), ``consistency.csv``: columns ``variant_index``, ``real_index``,
  ``teacher_dice_variant``, ``teacher_dice_real``; a variant is dropped when its Dice is below
  ``teacher_gate`` x the Dice on its real image (an undefined, NaN, Dice drops nothing);
- ``pixel_filter`` (FreeMask, pixel level), ``teacher_loss.npy``: ``[num_variants, H, W]`` float16
  per-pixel cross-entropy of the teacher on each variant against the real mask, and
  ``teacher_loss_real_mean`` in ``consistency.json``; a pixel whose loss exceeds ``pixel_filter`` x
  that mean is marked in :attr:`SyntheticPool.ignore`, and the trainer leaves it out of the loss
  where Algorithm 1 takes the pixel from the variant.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import PreparedSet
from ..generation.synthetic import CONSISTENCY_CSV, CONSISTENCY_JSON, TEACHER_LOSS
from ..utils.atomic import file_sha256


def to_size(images: np.ndarray, size: int, labels: bool = False) -> torch.Tensor:
    """``[N, S, S]`` array -> ``[N, 1, size, size]`` tensor (bilinear, anti-aliased; nearest for labels)."""
    t = torch.from_numpy(np.asarray(images, np.uint8 if labels else np.float32))[:, None]
    if t.shape[-1] == size and t.shape[-2] == size:
        return t.long() if labels else t
    if labels:
        return F.interpolate(t.float(), size=(size, size), mode="nearest-exact").long()
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@dataclass
class SyntheticPool:
    """Synthetic variants of the training samples: ``images[rows[j, v]]`` is variant v of sample j,
    for ``v < counts[j]``. A sample whose variants were all filtered out (``counts[j] == 0``) trains
    on its real image whole."""

    images: torch.Tensor  # [M, 1, S, S]
    rows: torch.Tensor  # [N, n_max] long
    counts: torch.Tensor  # [N] long
    source: Path | str
    ignore: torch.Tensor | None = None  # [M, 1, S, S] bool: pixels left out of the loss (pixel_filter)
    masks: torch.Tensor | None = None  # [M, 1, S, S] long: the variants' own labels; None = their real images'

    def pick(self, batch: torch.Tensor, variants: torch.Tensor) -> torch.Tensor:
        return self.images[self.rows[batch, variants]]


@dataclass
class FoldData:
    images: torch.Tensor  # [N, 1, S, S] float in [-1, 1]
    masks: torch.Tensor  # [N, 1, S, S] long
    indices: list[int]  # prepared-set sample indices
    synthetic: SyntheticPool | None = None
    ignore: torch.Tensor | None = None  # [N, 1, S, S] bool: pixels left out of the loss (uncertain pseudo-labels)

    def __len__(self) -> int:
        return len(self.indices)

    def extended(self, images: torch.Tensor, masks: torch.Tensor, indices: list[int],
                 ignore: torch.Tensor | None = None) -> "FoldData":
        """These samples and more (pseudo-labelled images), before any synthetic pool is attached."""
        if self.synthetic is not None:
            raise ValueError("extend the training samples before their variants are loaded")
        old = self.ignore if self.ignore is not None else torch.zeros_like(self.masks, dtype=torch.bool)
        new = ignore if ignore is not None else torch.zeros_like(masks, dtype=torch.bool)
        both = torch.cat([old, new]) if self.ignore is not None or ignore is not None else None
        return FoldData(torch.cat([self.images, images]), torch.cat([self.masks, masks.to(self.masks.dtype)]),
                        [*self.indices, *indices], None, both)


def load_training(ps: PreparedSet, indices: list[int], size: int) -> FoldData:
    if not indices:
        raise ValueError(f"{ps.root}: no training samples")
    idx = np.asarray(indices)
    return FoldData(to_size(ps.images[idx], size), to_size(ps.masks[idx], size, labels=True), list(indices))


def load_synthetic(root: str | Path, ps: PreparedSet, fold: int, indices: list[int], size: int,
                   n: int | None = None, quality_filter: bool = False, teacher_gate: float | None = None,
                   pixel_filter: float | None = None) -> SyntheticPool:
    """Read a synthetic set made for ``fold`` and check that it belongs to this fold's training samples
    only (a variant of a validation or test image would leak it into training). The first ``n``
    variants of each sample are taken, then the filters remove from them."""
    from ..generation.generate import SyntheticSet

    syn = SyntheticSet(root)
    syn.check_fold(ps, fold)
    by_real = syn.by_real
    # a layout set (variants with labels of their own) may have no variant for a sample no donor fitted:
    # that sample trains on its real image
    layout = syn.masks is not None
    missing = [i for i in indices if i not in by_real]
    if missing and not layout:
        raise ValueError(f"{syn.root}: no variants for {len(missing)} of {len(indices)} training samples of fold "
                         f"{fold} (e.g. sample {missing[0]}); run `diffboost generate` for this fold")
    per = [sorted(by_real.get(i, []), key=lambda r: syn.manifest[r]["variant"]) for i in indices]
    if n is not None:
        short = min(len(p) for p in per)
        if short < n and not layout:
            raise ValueError(f"{syn.root}: n={n} asked, but some training samples have only {short} variant(s)")
        per = [p[:n] for p in per]
    if quality_filter:  # after n: the filter removes from the variants that would be used
        from ..generation.quality import quality_filter as passing

        keep = passing(syn, ps)
        per = [[r for r in p if r in keep] for p in per]
    if teacher_gate is not None:
        keep = teacher_gate_keep(syn.root, len(syn), teacher_gate)
        per = [[r for r in p if r in keep] for p in per]
    used = sorted({r for p in per for r in p})
    if not used:
        raise ValueError(f"{syn.root}: the filters (quality_filter={quality_filter}, teacher_gate={teacher_gate}) "
                         "removed every variant of this fold's training samples")
    remap = {r: k for k, r in enumerate(used)}
    n_max = max(len(p) for p in per)
    rows = torch.zeros(len(per), n_max, dtype=torch.long)
    for j, p in enumerate(per):
        rows[j, : len(p)] = torch.tensor([remap[r] for r in p], dtype=torch.long)
    counts = torch.tensor([len(p) for p in per], dtype=torch.long)
    images = to_size(np.asarray(syn.images[np.asarray(used)], np.float32), size)
    ignore = pixel_ignore(syn.root, len(syn), used, pixel_filter, size) if pixel_filter is not None else None
    masks = None
    if layout:
        labels = np.asarray(syn.masks[np.asarray(used)])
        if int(labels.max(initial=0)) >= 64 or max(int(k) for k in ps.label_names) >= 64:
            raise ValueError(f"{syn.root}: variants with labels of their own take label values below 64")
        masks = to_size(labels, size, labels=True)
    return SyntheticPool(images, rows, counts, syn.root, ignore, masks)


def _teacher_file(root: Path, name: str, option: str) -> Path:
    path = Path(root) / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: {option} needs the teacher's results on this synthetic set ({name}, "
                                "written beside the variants by the teacher consistency check); make them first, "
                                f"or set {option} to null")
    return path


def teacher_gate_keep(root: str | Path, num_variants: int, gate: float) -> set[int]:
    """The variants (synthetic-set rows) whose teacher Dice is at least ``gate`` x the teacher Dice on
    their real image, from ``consistency.csv``; NaN on either side keeps the variant."""
    path = _teacher_file(Path(root), CONSISTENCY_CSV, "teacher_gate")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"variant_index", "real_index", "teacher_dice_variant", "teacher_dice_real"}
    missing = sorted(need - set(rows[0] if rows else need))
    if missing or not rows:
        raise ValueError(f"{path}: " + (f"missing column(s) {', '.join(missing)}" if missing else "no rows"))
    dice = {int(r["variant_index"]): (float(r["teacher_dice_variant"]), float(r["teacher_dice_real"])) for r in rows}
    absent = sorted(set(range(num_variants)) - set(dice))
    if absent:
        raise ValueError(f"{path}: no teacher Dice for {len(absent)} of the set's {num_variants} variants "
                         f"(e.g. row {absent[0]}); the set changed after the teacher ran: run it again")
    return {r for r, (v, real) in dice.items() if r < num_variants
            and (math.isnan(v) or math.isnan(real) or v >= gate * real)}


def pixel_ignore(root: str | Path, num_variants: int, used: list[int], factor: float, size: int) -> torch.Tensor:
    """``[len(used), 1, size, size]`` bool: the pixels of the ``used`` variants whose teacher loss
    (``teacher_loss.npy``) exceeds ``factor`` x ``teacher_loss_real_mean`` (``consistency.json``)."""
    loss_path = _teacher_file(Path(root), TEACHER_LOSS, "pixel_filter")
    meta_path = _teacher_file(Path(root), CONSISTENCY_JSON, "pixel_filter")
    meta = json.loads(meta_path.read_text())
    if "teacher_loss_real_mean" not in meta:
        raise ValueError(f"{meta_path}: no teacher_loss_real_mean (the teacher's mean loss on the real images)")
    loss = np.load(loss_path, mmap_mode="r")
    if loss.ndim != 3 or len(loss) != num_variants:
        raise ValueError(f"{loss_path}: shape {loss.shape}, expected [{num_variants}, H, W] (one map per variant "
                         "of the set); the set changed after the teacher ran: run it again")
    limit = factor * float(meta["teacher_loss_real_mean"])
    above = np.asarray(loss[np.asarray(used)], np.float32) > limit
    return to_size(above.astype(np.uint8), size, labels=True).bool()


def teacher_identity(root: str | Path, teacher_gate: float | None, pixel_filter: float | None) -> dict | None:
    """What the teacher filters read (hashes of ``consistency.csv`` / ``.json``), for a run's identity:
    a run is stale once the teacher is re-run. None when neither filter is on (older runs' identity)."""
    if teacher_gate is None and pixel_filter is None:
        return None
    names = [n for n, on in ((CONSISTENCY_CSV, teacher_gate), (CONSISTENCY_JSON, pixel_filter)) if on is not None]
    return {n: file_sha256(Path(root) / n) if (Path(root) / n).exists() else None for n in names}
