"""Algorithm 1 of the paper: real and synthetic images mixed patch-wise.

For each real image x0 of a batch, one of its n synthetic variants x_i is chosen at random, and a
mask m is drawn: a grid of (H/p x W/p) uniform numbers, each cell 1 (take the real image) where its
number is below ``alpha``, upsampled to H x W by nearest neighbour. Then, with ``mix="input"`` (the
paper's Algorithm 1)::

    loss = L(C(m * x0 + (1 - m) * x_i), y)

and with ``mix="output"`` (the authors' public code) both images go through the network and the
predictions are mixed with the same mask::

    loss = L(m * C(x0) + (1 - m) * C(x_i), y)

The label y is always the real mask: the synthetic image was generated from its edges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def default_patch(size: int) -> int:
    """The paper's 64 px at 384 px, scaled to the working size (a 6 x 6 grid)."""
    return max(1, round(size * 64 / 384))


def patch_mask(batch: int, height: int, width: int, alpha: float, patch: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, 1, H, W]`` float mask: 1 = real, 0 = synthetic, constant on ``patch`` x ``patch`` cells.

    A size that ``patch`` does not divide gets a last, partial row and column of cells.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if patch < 1:
        raise ValueError(f"patch must be at least 1 pixel, got {patch}")
    grid = torch.rand(batch, 1, math.ceil(height / patch), math.ceil(width / patch), generator=generator)
    cells = (grid < alpha).float()
    return F.interpolate(cells, scale_factor=patch, mode="nearest")[..., :height, :width]


def mix(real: torch.Tensor, synthetic: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``m * real + (1 - m) * synthetic`` (images, or network outputs for ``mix="output"``)."""
    return mask * real + (1.0 - mask) * synthetic


def choose_variants(counts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each real image with ``counts[j]`` variants, a variant number in ``[0, counts[j])``."""
    if (counts < 1).any():
        raise ValueError("every real image needs at least one synthetic variant")
    return (torch.rand(len(counts), generator=generator) * counts).long().clamp_max(counts - 1)
