"""Edge conditions: soft image edges, the mask boundary band, and their sum.

Soft edges without downloaded weights
-------------------------------------
HED's fused output is a multi-scale, soft, thick edge probability: its side outputs respond to
boundaries at several receptive-field sizes and are averaged, so structures that persist across
scales (organ and lesion outlines) come out strong while fine texture (speckle, noise) stays faint.
:func:`soft_edges` reproduces those properties with scale-normalised Gaussian gradient magnitudes
(Lindeberg's scale-space edge strength) at three scales, fused so that only edges present at every
scale stay strong, normalised per image by a high percentile and shaped by a power curve, giving a
map in [0, 1]. On real BUSI images it keeps lesion and layer outlines and suppresses speckle.
It needs no weights and takes about a millisecond per 128 px image; the real HED network is
available in :mod:`diffboost.conditioning.hed` for users who have its BSDS500 weights.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import scharr

# Scales in pixels at a 128 px working size; they grow with the image so that a 384 px image
# gets the same edges as a 128 px one, three times larger.
BASE_SIGMAS = (1.0, 2.0, 4.0)
REFERENCE_SIZE = 128


def soft_edges(image: np.ndarray, sigmas: tuple[float, ...] | None = None, power: float = 1.5) -> np.ndarray:
    """HED-like soft edges of a 2D image in [-1, 1] (any range works); float32 in [0, 1].

    The scale-normalised gradient magnitudes are fused by their geometric mean, so an edge must be
    present at every scale to be strong (speckle, which lives at the finest scale only, fades);
    the fused map is divided by its 99th percentile, clipped to 1 and raised to ``power`` (> 1
    darkens weak texture, like HED's sigmoid output).
    """
    if image.ndim != 2:
        raise ValueError(f"soft_edges expects a 2D image, got shape {image.shape}")
    if sigmas is None:
        scale = max(image.shape) / REFERENCE_SIZE
        sigmas = tuple(s * scale for s in BASE_SIGMAS)
    x = image.astype(np.float32)
    log_sum = np.zeros_like(x)
    for s in sigmas:
        # scale-normalised gradient magnitude: comparable strengths across scales
        log_sum += np.log(ndimage.gaussian_gradient_magnitude(x, s, mode="nearest") * s + 1e-6)
    fused = np.maximum(np.exp(log_sum / len(sigmas)) - 1e-6, 0.0)
    # Normalise per image, but never amplify a nearly flat image's noise into edges: the floor is
    # the strength of a 10% contrast step (on a [-1, 1] image) at these scales.
    ref = max(float(np.percentile(fused, 99)), 0.2 / np.sqrt(2 * np.pi))
    return (np.clip(fused / ref, 0.0, 1.0) ** power).astype(np.float32)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """The boundary band of a label map (about 2 px: one pixel on each side), float32 {0, 1}.

    Computed as the non-zero support of the Scharr gradient of the mask, as the paper's code does;
    boundaries between two labels count too.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask_boundary expects a 2D mask, got shape {mask.shape}")
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    grad = scharr(mask.astype(np.float32), mode="nearest")
    return (grad > 1e-6).astype(np.float32)


def task_condition(edges: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The fine-tuning condition: ``clip(edges + boundary(mask), 0, 1)``."""
    if mask is None:
        return np.clip(edges, 0.0, 1.0).astype(np.float32)
    return np.clip(edges + mask_boundary(mask), 0.0, 1.0).astype(np.float32)
