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


BLOCK = 1024  # images compared at once: memory grows with BLOCK x N, never N x N


def thumbnails(images: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """``[N, H, W]`` images -> ``[N, size*size]`` area-averaged thumbnails, centred, unit norm.
    ``images`` may be a memory map: it is read ``BLOCK`` images at a time."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), size * size), np.float32)
    for start in range(0, len(images), BLOCK):
        x = torch.as_tensor(np.asarray(images[start : start + BLOCK], np.float32))[:, None]
        t = F.adaptive_avg_pool2d(x, size)[:, 0].reshape(len(x), -1).numpy().astype(np.float64)
        t -= t.mean(1, keepdims=True)
        norm = np.linalg.norm(t, axis=1, keepdims=True)
        out[start : start + len(x)] = t / np.where(norm > 0, norm, 1.0)
    return out


def similarity(images: np.ndarray) -> np.ndarray:
    """Pairwise thumbnail correlation ``[N, N]`` (the diagonal is 1; a flat image correlates 0). For
    inspection of small sets; the grouping itself never builds this matrix."""
    t = thumbnails(images).astype(np.float64)
    return t @ t.T


def similar_pairs(a: np.ndarray, b: np.ndarray | None = None, threshold: float = DEFAULT_THRESHOLD):
    """Pairs ``(i, j, correlation)`` of thumbnails ``a[i]``, ``b[j]`` correlating ``>= threshold``,
    computed ``BLOCK`` rows at a time. Without ``b``: the pairs ``i < j`` within ``a``."""
    same = b is None
    b = a if same else b
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(a), BLOCK):
        s = a[start : start + BLOCK].astype(np.float64) @ b.T.astype(np.float64)
        i, j = np.nonzero(s >= threshold)
        keep = (i + start < j) if same else slice(None)
        out_i.append(i[keep] + start)
        out_j.append(j[keep])
        out_s.append(s[i[keep], j[keep]])
    if not out_i:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def near_duplicate_groups(case_ids: Sequence[str], images: np.ndarray,
                          threshold: float = DEFAULT_THRESHOLD) -> list[list[str]]:
    """Groups (two or more case ids, sorted) of images whose thumbnails correlate ``>= threshold``,
    directly or through a chain; cases without a near-duplicate are in no group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(case_ids) != len(images):
        raise ValueError(f"{len(case_ids)} case ids for {len(images)} images")
    if len(case_ids) < 2:
        return []
    i, j, _ = similar_pairs(thumbnails(images), threshold=threshold)
    n = len(case_ids)
    graph = coo_matrix((np.ones(len(i), bool), (i, j)), shape=(n, n)).tocsr()
    _, label = connected_components(graph, directed=False)
    groups: dict[int, list[str]] = {}
    for c, g in zip(case_ids, label):
        groups.setdefault(int(g), []).append(str(c))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)
