"""The folder ``nnUNet_extTrainer`` points at (``diffboost nnunet trainer-dir``): nnU-Net imports the
modules here by file to find ``-tr nnUNetTrainerDiffBoost``."""
