"""Stage 3: label-preserving synthetic variants of every training image."""

from .generate import GenerateConfig, SyntheticSet, generate, variant_seed

__all__ = ["GenerateConfig", "SyntheticSet", "generate", "variant_seed"]
