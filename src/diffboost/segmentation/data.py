"""The tensors a segmenter trains on: a fold's real training samples and their synthetic variants.

Everything is loaded into memory once (a few hundred MB at most for the CPU preset), so no data
loading sits on the critical path of a training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import PreparedSet


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
    for ``v < counts[j]``."""

    images: torch.Tensor  # [M, 1, S, S]
    rows: torch.Tensor  # [N, n_max] long
    counts: torch.Tensor  # [N] long
    source: Path

    def pick(self, batch: torch.Tensor, variants: torch.Tensor) -> torch.Tensor:
        return self.images[self.rows[batch, variants]]


@dataclass
class FoldData:
    images: torch.Tensor  # [N, 1, S, S] float in [-1, 1]
    masks: torch.Tensor  # [N, 1, S, S] long
    indices: list[int]  # prepared-set sample indices
    synthetic: SyntheticPool | None = None

    def __len__(self) -> int:
        return len(self.indices)


def load_training(ps: PreparedSet, indices: list[int], size: int) -> FoldData:
    if not indices:
        raise ValueError(f"{ps.root}: no training samples")
    idx = np.asarray(indices)
    return FoldData(to_size(ps.images[idx], size), to_size(ps.masks[idx], size, labels=True), list(indices))


def load_synthetic(root: str | Path, ps: PreparedSet, fold: int, indices: list[int], size: int,
                   n: int | None = None, quality_filter: bool = False) -> SyntheticPool:
    """Read a synthetic set made for ``fold`` and check that it belongs to this fold's training samples
    only (a variant of a validation or test image would leak it into training)."""
    from ..generation.generate import SyntheticSet

    syn = SyntheticSet(root)
    syn.check_fold(ps, fold)
    by_real = syn.by_real
    missing = [i for i in indices if i not in by_real]
    if missing:
        raise ValueError(f"{syn.root}: no variants for {len(missing)} of {len(indices)} training samples of fold "
                         f"{fold} (e.g. sample {missing[0]}); run `diffboost generate` for this fold")
    per = [sorted(by_real[i], key=lambda r: syn.manifest[r]["variant"]) for i in indices]
    if n is not None:
        short = min(len(p) for p in per)
        if short < n:
            raise ValueError(f"{syn.root}: n={n} asked, but some training samples have only {short} variant(s)")
        per = [p[:n] for p in per]
    if quality_filter:  # after n: the filter removes from the variants that would be used
        from ..generation.quality import quality_filter as passing

        keep = passing(syn, ps)
        per = [[r for r in p if r in keep] for p in per]
    used = sorted({r for p in per for r in p})
    remap = {r: k for k, r in enumerate(used)}
    n_max = max(len(p) for p in per)
    rows = torch.zeros(len(per), n_max, dtype=torch.long)
    for j, p in enumerate(per):
        rows[j, : len(p)] = torch.tensor([remap[r] for r in p])
    counts = torch.tensor([len(p) for p in per], dtype=torch.long)
    images = to_size(np.asarray(syn.images[np.asarray(used)], np.float32), size)
    return SyntheticPool(images, rows, counts, syn.root)
