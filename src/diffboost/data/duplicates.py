"""Near-duplicate images, so that a pair never straddles a training and a test fold.

Public 2D sets such as BUSI hold the same scan more than once (re-exported, re-cropped by a few
pixels, sometimes filed under two categories). A pair split across train and test inflates every
score. Two images are near-duplicates when the Pearson correlation of their 32 x 32 area-averaged
thumbnails (of the prepared, intensity-normalised image) is at least ``threshold``; groups are the
connected components of that relation.

Measured on the shared BUSI (624 images; see ``bench/bench_duplicates.py``): 0.92 finds 104 groups
(238 images, the largest 7). The count is stable from 0.93 to 0.95 (98 groups); below 0.90 unrelated
images start to chain (a group of 25 at 0.90, of 107 at 0.88). Pairs at 0.926-0.96 looked at side by
side were the same lesion, re-cropped or with other caliper marks; pairs at 0.92 and below were mostly
different scans of similar tissue. Grouping a few unrelated images together costs only fold balance,
so the default errs on that side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.92
THUMBNAIL = 32


def thumbnails(images: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """``[N, H, W]`` images -> ``[N, size*size]`` area-averaged thumbnails, centred, unit norm."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
    t = F.adaptive_avg_pool2d(x, size)[:, 0].reshape(len(x), -1).numpy().astype(np.float64)
    t -= t.mean(1, keepdims=True)
    norm = np.linalg.norm(t, axis=1, keepdims=True)
    return t / np.where(norm > 0, norm, 1.0)


def similarity(images: np.ndarray) -> np.ndarray:
    """Pairwise thumbnail correlation ``[N, N]`` (the diagonal is 1; a flat image correlates 0)."""
    t = thumbnails(images)
    return t @ t.T


def near_duplicate_groups(case_ids: Sequence[str], images: np.ndarray,
                          threshold: float = DEFAULT_THRESHOLD) -> list[list[str]]:
    """Groups (two or more case ids, sorted) of images whose thumbnails correlate ``>= threshold``,
    directly or through a chain; cases without a near-duplicate are in no group."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if len(case_ids) != len(images):
        raise ValueError(f"{len(case_ids)} case ids for {len(images)} images")
    if len(case_ids) < 2:
        return []
    _, label = connected_components(csr_matrix(similarity(images) >= threshold), directed=False)
    groups: dict[int, list[str]] = {}
    for c, g in zip(case_ids, label):
        groups.setdefault(int(g), []).append(str(c))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)
