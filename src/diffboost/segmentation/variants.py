"""``mix-classic`` and ``histmatch``: Algorithm 1 with classical variants instead of generated ones.

The control that tells whether DiffBoost's gain comes from the diffusion model or from mixing itself:
the same patch-wise mixing (same ``n``, ``alpha``, ``patch``, ``mix_prob``, ``mix``), but the ``n``
variants of each real image are intensity transforms of it, made with the MONAI transforms of the
classical strategies (:func:`.augment._transform` at probability 1, nnU-Net's ranges):

| variant i | transform (i mod 5) | strength, drawn once |
|---|---|---|
| 0 | gamma, statistics kept | 0.7-1.5 |
| 1 | contrast around the mean, range kept | factor 0.75-1.25 |
| 2 | additive Gaussian noise | std up to 0.15 |
| 3 | Gaussian blur | sigma 0.5-1 |
| 4 | multiplicative brightness | 0.75-1.25 |

Each variant is drawn once, from ``(SEED, prepared-set sample index, variant)``, like a generated
set (not redrawn per epoch or per training seed), and made in memory by the trainer: no generation
step, no synthetic folder. ``n`` is ``SegConfig.n``, or ``DEFAULT_N`` = 3 (the CPU preset's number of
generated variants). The teacher filters do not apply: no teacher ran on these variants.
"""

from __future__ import annotations

import numpy as np
import torch

from . import augment
from .config import HISTMATCH, MIX_CLASSIC
from .data import SyntheticPool

KINDS = ("gamma", "contrast", "noise", "blur", "brightness")  # variant i: KINDS[i % 5]
RANGES = {"gamma": "0.7-1.5", "contrast": "0.75-1.25", "noise": "std 0-0.15", "blur": "sigma 0.5-1",
          "brightness": "0.75-1.25"}  # what augment._transform draws from (recorded in a run's identity)
DEFAULT_N = 3
SEED = 0


def classic_n(n: int | None) -> int:
    """Variants per image of ``mix-classic``: ``n``, or ``DEFAULT_N``."""
    return DEFAULT_N if n is None else n


def classic_identity(n: int | None) -> dict:
    """What defines a ``mix-classic`` variant set (stored in a run's identity as its variants)."""
    return {"source": MIX_CLASSIC, "n": classic_n(n), "kinds": list(KINDS), "ranges": RANGES, "seed": SEED}


def classic_variant(image: torch.Tensor, sample: int, variant: int, seed: int = SEED) -> torch.Tensor:
    """Variant ``variant`` of one ``[1, H, W]`` image (prepared-set index ``sample``): the transform
    ``KINDS[variant % 5]`` with its strength drawn from ``(seed, sample, variant)``."""
    t = augment._transform(KINDS[variant % len(KINDS)], 1.0)
    t.set_random_state(seed=int(np.random.default_rng([seed, sample, variant]).integers(2**31)))
    out = t({"image": image.clone()})["image"]
    return (out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)).float()


def classic_variants(images: torch.Tensor, indices: list[int], n: int | None = None, seed: int = SEED) -> SyntheticPool:
    """The ``mix-classic`` pool of ``images [N, 1, S, S]`` (prepared-set samples ``indices``):
    ``classic_n(n)`` variants each, variant v of sample j at row ``j * n + v``."""
    n = classic_n(n)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = torch.stack([classic_variant(images[j], int(s), v, seed) for j, s in enumerate(indices) for v in range(n)])
    rows = torch.arange(len(indices) * n, dtype=torch.long).reshape(len(indices), n)
    return SyntheticPool(out, rows, torch.full((len(indices),), n, dtype=torch.long), f"{MIX_CLASSIC} (in memory)")


# ---- histmatch: variants re-textured toward the unlabelled images (another site's) ----------------

def histmatch_identity(n: int | None) -> dict:
    """What defines a ``histmatch`` variant set (with the unlabelled images, in the run's identity apart)."""
    return {"source": HISTMATCH, "n": classic_n(n), "method": "skimage.exposure.match_histograms", "seed": SEED}


def histmatch_variants(images: torch.Tensor, indices: list[int], references: torch.Tensor, n: int | None = None,
                       seed: int = SEED) -> SyntheticPool:
    """``histmatch``: ``classic_n(n)`` variants of each of ``images [N, 1, S, S]`` (prepared-set samples
    ``indices``), variant v of sample j (row ``j * n + v``) the image with its intensity histogram matched
    to that of a reference drawn from ``(seed, sample, v)`` among ``references [R, 1, S, S]`` (the fold's
    unlabelled images): the classical answer to a change of scanner, for Algorithm 1 as a control of the
    variants a generator draws in the target's style."""
    from skimage.exposure import match_histograms

    n = classic_n(n)
    if n < 1 or len(references) == 0:
        raise ValueError("histmatch needs n >= 1 and at least one unlabelled image to match")
    ref = references[:, 0].numpy()
    out = []
    for j, s in enumerate(indices):
        for v in range(n):
            r = int(np.random.default_rng([seed, int(s), v, 17]).integers(len(ref)))
            out.append(torch.from_numpy(match_histograms(images[j, 0].numpy(), ref[r]).astype(np.float32))[None])
    rows = torch.arange(len(indices) * n, dtype=torch.long).reshape(len(indices), n)
    return SyntheticPool(torch.stack(out), rows, torch.full((len(indices),), n, dtype=torch.long),
                         f"{HISTMATCH} (in memory)")
