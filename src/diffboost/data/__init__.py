"""The data layer: readers, preprocessing, prepared sets, folds and demo phantoms."""

from .folds import Fold, split_by_case
from .preparation import prepare
from .store import PreparedSet

__all__ = ["Fold", "PreparedSet", "prepare", "split_by_case"]
