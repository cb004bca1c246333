"""Stage 3: label-preserving synthetic variants of every training image, and their store.

- :mod:`.generate` — variants from the fine-tuned diffusion model (``GenerateConfig``, ``generate``);
- :mod:`.synthetic` — the synthetic set on disk (``SyntheticSet``, ``write_synthetic_set``);
- :mod:`.pix2pix` — the Pix2Pix baseline, also a generator of synthetic sets;
- :mod:`.quality` — the synthetic-quality filter.
"""

from .generate import GenerateConfig, generate
from .synthetic import SyntheticSet, variant_seed, write_synthetic_set

__all__ = ["GenerateConfig", "SyntheticSet", "generate", "variant_seed", "write_synthetic_set"]
