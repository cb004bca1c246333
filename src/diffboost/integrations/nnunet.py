"""DiffBoost's Algorithm 1 inside nnU-Net v2: ``nnUNetTrainerDiffBoost``.

The dataset comes from ``diffboost export --to nnunet``. There, fold K's training list holds the real
cases and their synthetic variants ``CASE_syn_fK_vV``, made by fold K's diffusion model. Every variant
has its source image's original size. ``nnUNetv2_plan_and_preprocess`` preprocesses the variants like
any case.

The trainer does the following:

- it takes the variants out of the training list. They are never sampled as cases of their own, only
  as mixing partners of their real case;
- it mixes each loaded real case with one of its variants, patch-wise, with the grid of Algorithm 1
  (:func:`diffboost.segmentation.patchmix.mix_sample`: cells of ``patch`` px, each one real with
  probability ``alpha``; a sample is mixed with probability ``mix_prob``). A variant whose label differs
  has its label mixed with the same grid;
- the mixing happens when nnU-Net's data loader loads the case, so before nnU-Net crops its patch and
  before its own augmentation, which is applied to the mixed image as usual;
- it mixes 2D configurations. A ``2d`` configuration of a 3D dataset (exported with
  ``--volumes volumes``) mixes each slice with the same slice of the variant volume. 3D
  configurations are refused.

Options come from environment variables, because nnU-Net builds the trainer itself:
``DIFFBOOST_ALPHA`` (0.6), ``DIFFBOOST_PATCH`` (the paper's 64 px at 384 px, scaled to the image),
``DIFFBOOST_MIX_PROB`` (1). ``diffboost nnunet train`` sets them from its options.

nnU-Net finds trainers inside its own package or in the folders named by ``nnUNet_extTrainer``.
``diffboost nnunet train DATASET CONFIG FOLD`` sets that variable to :data:`TRAINER_DIR` and calls
nnU-Net's own training functions. ``export nnUNet_extTrainer=$(diffboost nnunet trainer-dir)`` makes
``nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerDiffBoost`` work as well.

The trainer counts what it mixed. ``diffboost_mixing.json`` in the fold's output folder holds the
loaded samples, how many were mixed and the mean share of synthetic pixels. Each data-loading process
first writes its own ``diffboost_mixing.<pid>.json``, and the counts are summed when training ends.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ..segmentation.patchmix import default_patch, mix_sample

TRAINER_DIR = Path(__file__).with_name("nnunet_trainers")  # what nnUNet_extTrainer points at
SYNTHETIC = re.compile(r"^(?P<real>.+)_syn_f(?P<fold>\d+)_v(?P<variant>\d+)$")
MIXING_FILE = "diffboost_mixing.json"


def split_variants(keys: list[str], fold: int) -> tuple[list[str], dict[str, list[str]]]:
    """The real cases of a training list, and each one's synthetic variants of ``fold``."""
    real, variants = [], {}
    for k in keys:
        m = SYNTHETIC.match(k)
        if m is None:
            real.append(k)
        elif int(m["fold"]) == fold:
            variants.setdefault(m["real"], []).append(k)
    return real, {r: sorted(v) for r, v in variants.items() if r in set(real)}


def mixing_options() -> dict:
    """alpha, patch (None: scaled to the image) and mix_prob, from the environment."""
    def number(name, default, kind=float):
        text = os.environ.get(name)
        try:
            return default if text in (None, "") else kind(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a number") from None

    opts = {"alpha": number("DIFFBOOST_ALPHA", 0.6), "patch": number("DIFFBOOST_PATCH", None, int),
            "mix_prob": number("DIFFBOOST_MIX_PROB", 1.0)}
    if not 0 <= opts["alpha"] <= 1 or not 0 <= opts["mix_prob"] <= 1:
        raise ValueError(f"DIFFBOOST_ALPHA and DIFFBOOST_MIX_PROB must be in [0, 1], got {opts}")
    if opts["patch"] is not None and opts["patch"] < 1:
        raise ValueError(f"DIFFBOOST_PATCH must be at least 1 pixel, got {opts['patch']}")
    return opts


class _Mixing:
    """Mixes each loaded real case with one of its variants; counts what it did."""

    variants: dict[str, list[str]] = {}
    options: dict = {}
    log_dir: str | None = None

    def configure(self, variants: dict[str, list[str]], options: dict, log_dir: str) -> None:
        self.variants, self.options, self.log_dir = variants, options, log_dir
        self.counts = {"loaded": 0, "mixed": 0, "synthetic_pixels": 0.0, "skipped_misaligned": 0}

    def load_case(self, identifier):
        data, seg, seg_prev, props = super().load_case(identifier)
        choices = self.variants.get(identifier)
        self.counts["loaded"] += 1
        if choices and np.random.uniform() < self.options["mix_prob"]:
            mixed = self._mix(identifier, np.asarray(data[:]), np.asarray(seg[:]), props, choices)
            if mixed is not None:
                data, seg = mixed
        if self.counts["loaded"] % 50 == 0:
            self.flush()
        return data, seg, seg_prev, props

    def _mix(self, identifier, data, seg, props, choices):
        g = torch.Generator().manual_seed(int(np.random.randint(0, 2**31 - 1)))  # seeded per worker by nnU-Net
        # every variant aligned to the real case's crop: the stack mix_sample draws one of
        stack, labels = [], []
        for v in choices:
            v_data, v_seg, _, v_props = super().load_case(v)
            aligned = _align(np.asarray(v_data[:]), np.asarray(v_seg[:]), v_props, data.shape, props)
            if aligned is None:
                self.counts["skipped_misaligned"] += 1
                return None
            stack.append(aligned[0])
            labels.append(aligned[1])
        real = torch.from_numpy(np.ascontiguousarray(data, np.float32))
        patch = self.options["patch"] or default_patch(int(min(data.shape[-2:])))
        mixed, label, m, _ = mix_sample(real, torch.from_numpy(np.stack(stack).astype(np.float32)),
                                        self.options["alpha"], patch, g,
                                        label=torch.from_numpy(seg.astype(np.int16)),
                                        variant_labels=torch.from_numpy(np.stack(labels).astype(np.int16)))
        self.counts["mixed"] += 1
        self.counts["synthetic_pixels"] += float(1 - m.mean())
        return mixed.numpy(), label.numpy()

    def flush(self) -> None:
        if self.log_dir is None:
            return
        path = Path(self.log_dir) / f"diffboost_mixing.{os.getpid()}.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.counts))
        os.replace(tmp, path)


def _align(v_data, v_seg, v_props, shape, props):
    """The variant in the real case's cropped frame: both were cropped to their own non-zero box of the
    same original grid; None when their grids differ (another size or resampling)."""
    if tuple(v_props.get("shape_before_cropping", ())) != tuple(props.get("shape_before_cropping", ())):
        return None
    if v_data.shape == tuple(shape) and v_props.get("bbox_used_for_cropping") == props.get("bbox_used_for_cropping"):
        return v_data, v_seg
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    real_box, var_box = props["bbox_used_for_cropping"], v_props["bbox_used_for_cropping"]
    if any(ub - lb != s for (lb, ub), s in zip(real_box, shape[1:])) or any(
            ub - lb != s for (lb, ub), s in zip(var_box, v_data.shape[1:])):
        return None  # resampled after cropping: boxes are not in voxels of the data
    box = [[r_lb - v_lb, r_ub - v_lb] for (r_lb, r_ub), (v_lb, _) in zip(real_box, var_box)]
    return crop_and_pad_nd(v_data, box, 0), crop_and_pad_nd(v_seg, box, 0)


class DiffBoostDatasetBlosc2(_Mixing, nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset whose real cases come back mixed with a variant."""


class DiffBoostDatasetNumpy(_Mixing, nnUNetDatasetNumpy):
    """nnU-Net's numpy dataset whose real cases come back mixed with a variant."""


_MIXING_CLASSES = {nnUNetDatasetBlosc2: DiffBoostDatasetBlosc2, nnUNetDatasetNumpy: DiffBoostDatasetNumpy}


class nnUNetTrainerDiffBoost(nnUNetTrainer):
    """nnU-Net's trainer with Algorithm 1 mixing of each real case with its synthetic variants."""

    def initialize(self):
        if len(self.configuration_manager.patch_size) != 2 and self.configuration_name != "2d":
            raise RuntimeError(f"nnUNetTrainerDiffBoost mixes 2D variants: train a 2d configuration, not "
                               f"{self.configuration_name!r} (the variants are 2D slices of the volume)")
        self.diffboost_options = mixing_options()
        super().initialize()

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        real, variants = split_variants(list(tr_keys), int(self.fold) if self.fold != "all" else -1)
        if not variants:
            raise RuntimeError(f"fold {self.fold}: the training list of splits_final.json holds no synthetic variant "
                               "of this fold (CASE_syn_fK_vV); export the dataset with `diffboost export` from a run "
                               "that generated fold K's variants")
        self.diffboost_variants = variants
        self.print_to_log_file(f"DiffBoost: {len(real)} real training cases, {sum(map(len, variants.values()))} "
                               f"variants of {len(variants)} of them, mixing {self.diffboost_options}")
        return real, val_keys

    def get_tr_and_val_datasets(self):
        tr_keys, val_keys = self.do_split()
        mixing = _MIXING_CLASSES.get(self.dataset_class)
        if mixing is None:
            raise RuntimeError(f"nnUNetTrainerDiffBoost does not know nnU-Net's dataset class {self.dataset_class.__name__}")
        dataset_tr = mixing(self.preprocessed_dataset_folder, tr_keys,
                            folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        dataset_tr.configure(self.diffboost_variants, self.diffboost_options, self.output_folder)
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        self._diffboost_dataset = dataset_tr  # this process's counts (the only ones without DA workers)
        return dataset_tr, dataset_val

    def on_train_end(self):
        super().on_train_end()
        if getattr(self, "_diffboost_dataset", None) is not None:
            self._diffboost_dataset.flush()
        total = {"loaded": 0, "mixed": 0, "synthetic_pixels": 0.0, "skipped_misaligned": 0}
        for p in Path(self.output_folder).glob("diffboost_mixing.*.json"):
            for k, v in json.loads(p.read_text()).items():
                total[k] = total.get(k, 0) + v
        total["synthetic_share_of_mixed"] = total["synthetic_pixels"] / total["mixed"] if total["mixed"] else 0.0
        total["options"] = self.diffboost_options
        (Path(self.output_folder) / MIXING_FILE).write_text(json.dumps(total, indent=1))
        self.print_to_log_file(f"DiffBoost mixing: {total}")


def train(dataset: str, configuration: str, fold: int | str, device: str = "cuda", continue_training: bool = False,
          epochs: int | None = None, iterations: int | None = None, val_iterations: int | None = None,
          alpha: float | None = None, patch: int | None = None, mix_prob: float | None = None,
          plans: str = "nnUNetPlans", validate: bool = True) -> Path:
    """Train ``nnUNetTrainerDiffBoost`` on ``dataset`` (id or name) with nnU-Net's own training functions,
    then run its validation; returns the fold's output folder. ``epochs`` / ``iterations`` /
    ``val_iterations`` shorten nnU-Net's 1000 x 250 (x 50) schedule."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    for name, value in (("DIFFBOOST_ALPHA", alpha), ("DIFFBOOST_PATCH", patch), ("DIFFBOOST_MIX_PROB", mix_prob)):
        if value is not None:
            os.environ[name] = str(value)
    mixing_options()  # bad values refused before nnU-Net starts
    paths = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(TRAINER_DIR) not in paths:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINER_DIR), *paths])
    fold = fold if fold == "all" else int(fold)
    # the trainer built as nnU-Net's get_trainer_from_args builds it, without searching nnU-Net's trainer
    # package for the class (that search imports every trainer variant, some of which need timm)
    base = join(str(nnUNet_preprocessed), maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else dataset))
    plans_json = load_json(join(base, plans + ".json"))
    plans_json["continue_training"] = continue_training
    trainer = nnUNetTrainerDiffBoost(plans=plans_json, configuration=configuration, fold=fold,
                                     dataset_json=load_json(join(base, "dataset.json")), device=torch.device(device))
    for attr, value in (("num_epochs", epochs), ("num_iterations_per_epoch", iterations),
                        ("num_val_iterations_per_epoch", val_iterations)):
        if value is not None:
            setattr(trainer, attr, int(value))
    maybe_load_checkpoint(trainer, continue_training, False)
    trainer.run_training()
    if validate:
        trainer.perform_actual_validation(False)
    return Path(trainer.output_folder)
