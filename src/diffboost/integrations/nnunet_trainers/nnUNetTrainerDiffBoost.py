"""Found by nnU-Net through ``nnUNet_extTrainer``; the trainer lives in :mod:`diffboost.integrations.nnunet`."""

from diffboost.integrations.nnunet import nnUNetTrainerDiffBoost

__all__ = ["nnUNetTrainerDiffBoost"]
