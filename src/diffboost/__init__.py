"""DiffBoost: text + edge guided diffusion augmentation for medical image segmentation.

The package is organised one subpackage per stage of the method:

- :mod:`diffboost.data` — readers (BUSI, paired folders, MSD, nnU-Net, RadImageNet-style corpora),
  preprocessing, the prepared-set store, case-wise folds and the built-in demo phantoms;
- :mod:`diffboost.conditioning` — prompts and edge maps (soft edges, HED, mask boundary).
"""

__version__ = "0.1.0"
