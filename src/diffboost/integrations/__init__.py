"""Where users already train: DiffBoost's Algorithm 1 as a MONAI dictionary transform
(:mod:`.monai`) and as an nnU-Net v2 trainer (:mod:`.nnunet`), thin layers over
:func:`diffboost.segmentation.patchmix.mix_sample`."""
