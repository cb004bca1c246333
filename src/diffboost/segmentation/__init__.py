"""Stage 4: segmenters trained with Algorithm 1 (real and synthetic images mixed patch-wise) or a
classical augmentation, selected on validation cases and evaluated on whole test cases."""

from .compare import compare
from .config import DEFAULT_COMPARE, SegConfig, parse_strategy
from .patchmix import mix, patch_mask
from .trainer import load_segmenter, train_seg

__all__ = ["DEFAULT_COMPARE", "SegConfig", "compare", "load_segmenter", "mix", "parse_strategy",
           "patch_mask", "train_seg"]
