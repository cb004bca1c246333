"""Algorithm 1 of the paper: real and synthetic images mixed patch-wise.

For each real image x0 of a batch, one of its n synthetic variants x_i is chosen at random, and a
mask m is drawn: a grid of (H/p x W/p) uniform numbers, each cell 1 (take the real image) where its
number is below ``alpha``, upsampled to H x W by nearest neighbour. Then, with ``mix="input"`` (the
paper's Algorithm 1)::

    loss = L(C(m * x0 + (1 - m) * x_i), y)

and with ``mix="output"`` (the authors' public code) both images go through the network and the
predictions are mixed with the same mask::

    loss = L(m * C(x0) + (1 - m) * C(x_i), y)

The label y is the real mask for the same-layout variants (the synthetic image was generated from its
edges). A variant whose label differs from the real one (a new lesion placed elsewhere) gets its label
mixed with the same grid: ``y = m * y0 + (1 - m) * y_i`` (:func:`mix_labels`).

:func:`mix_sample` does all of it for one sample; the MONAI transform
(:class:`diffboost.integrations.monai.RandSyntheticPatchMixd`) and the nnU-Net trainer
(:mod:`diffboost.integrations.nnunet`) call it, and the project's own trainer draws the same
:func:`patch_mask` and :func:`mix` batch-wise: one implementation of the mixing.
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


def mix_labels(real: torch.Tensor, synthetic: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The label of a mixed input: the real label on real cells, the variant's on synthetic cells."""
    return torch.where(mask > 0, real, synthetic.to(real.dtype))


def mix_sample(real: torch.Tensor, variants: torch.Tensor, alpha: float, patch: int,
               generator: torch.Generator | None = None, label: torch.Tensor | None = None,
               variant_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
    """Algorithm 1 for one sample: ``real`` ``[C, *spatial]``, its ``variants`` ``[n, C, *spatial]``
    (2D, or a stack of 2D planes ``[C, D, H, W]`` mixed plane by plane). Draws the variant, then the
    grid of ``patch`` px cells over the last two axes (each real with probability ``alpha``).
    Returns ``(mixed image, label, mask, variant index)``: the label is ``label`` itself, or, when
    ``variant_labels`` are given, mixed with the same grid."""
    if variants.ndim != real.ndim + 1 or variants.shape[1:] != real.shape:
        raise ValueError(f"variants must be [n, *{tuple(real.shape)}], got {tuple(variants.shape)}")
    i = int(choose_variants(torch.tensor([len(variants)]), generator)[0])
    planes = int(math.prod(real.shape[1:-2]))
    m = patch_mask(planes, real.shape[-2], real.shape[-1], alpha, patch, generator)
    m = m.reshape(1, *real.shape[1:]).to(real.dtype if real.is_floating_point() else torch.float32)
    mixed = mix(real, variants[i].to(m.dtype), m)
    out_label = label
    if label is not None and variant_labels is not None:
        out_label = mix_labels(label, variant_labels[i], m)
    return mixed, out_label, m, i
