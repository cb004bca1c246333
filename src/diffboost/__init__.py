"""DiffBoost: text + edge guided diffusion augmentation for medical image segmentation.

The package is organised one subpackage per stage of the method, with a thin CLI over it:

- :mod:`diffboost.data` — readers (BUSI, paired folders, MSD, nnU-Net, RadImageNet-style corpora),
  preprocessing, the prepared-set store, near-duplicate-aware case-wise folds, the demo phantoms;
- :mod:`diffboost.conditioning` — prompts, augmentation phrases and edge maps (soft edges, HED,
  mask boundary);
- :mod:`diffboost.diffusion` — stages 1-2: the text + edge conditioned model (``small`` or
  ``sd15``), pretraining and fine-tuning, the pipeline;
- :mod:`diffboost.generation` — stage 3: synthetic variants and their store, the Pix2Pix baseline,
  the quality filter;
- :mod:`diffboost.segmentation` — stage 4: networks, classical strategies, Algorithm 1
  (``patchmix``), the trainer, parallel jobs and the comparison (Table II);
- :mod:`diffboost.evaluation` — segmentation metrics, statistics, fidelity (Table I);
- :mod:`diffboost.report` — the report's tables and figures;
- :mod:`diffboost.export` — nnU-Net and MSD raw datasets with the synthetic images;
- :mod:`diffboost.integrations` — where users train: MONAI dictionary transforms
  (:class:`RandSyntheticPatchMixd`, and :class:`RandDiffusionStrongViewd` for semi-supervised loops) and
  an nnU-Net v2 trainer (``nnUNetTrainerDiffBoost``) with self-training (``nnunet pseudo-label``);
- :mod:`diffboost.utils` — crash-safe files and progress bars;
- :mod:`diffboost.run` / :mod:`diffboost.ablate` — the whole pipeline in one resumable call, and
  the paper's ablations on a finished run.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from diffboost import RandSyntheticPatchMixd`` (or ``RandDiffusionStrongViewd``) without importing
    MONAI with the package."""
    if name in ("RandSyntheticPatchMixd", "RandDiffusionStrongViewd"):
        from .integrations import monai

        return getattr(monai, name)
    raise AttributeError(f"module 'diffboost' has no attribute {name!r}")
