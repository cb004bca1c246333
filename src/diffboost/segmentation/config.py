"""Options of ``diffboost train-seg`` / ``compare``, and the strategy names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .augment import CLASSICAL, PIPELINES
from .networks import check_network

# strategies that read a synthetic set. copy-paste, copy-paste-harmonize and diffboost-layout variants hold
# new lesions in new places (generation.layout, generation.inpaint), with labels of their own
# diffboost-target: same-layout variants of the labelled (source) images drawn in a target site's style (a
# cross-site set: generate.target_style)
SYNTHETIC_SOURCES = ("diffboost", "pix2pix", "copy-paste", "copy-paste-harmonize", "diffboost-layout",
                     "diffboost-target")
# the sources whose variants the fine-tuned diffusion model draws (`run` fine-tunes a model per fold for them)
DIFFUSION_SOURCES = ("diffboost", "copy-paste-harmonize", "diffboost-layout", "diffboost-target")
MIX_CLASSIC = "mix-classic"  # Algorithm 1 with classical intensity variants, made in memory (see .variants)
# Algorithm 1 with variants whose intensity histogram is matched to the fold's unlabelled images (another
# site's: the classical answer to a scanner change), made in memory (see .variants)
HISTMATCH = "histmatch"
IN_MEMORY = (MIX_CLASSIC, HISTMATCH)
VARIANT_SOURCES = (*SYNTHETIC_SOURCES, *IN_MEMORY)  # where Algorithm 1's variants come from
DEFAULT_COMPARE = ("none", *CLASSICAL, *PIPELINES, "diffboost", MIX_CLASSIC, "diffboost+classic")
# semi-supervised learners: the fold's unlabelled training images enter the segmenter's training
# (see .semisup). fixmatch-diffboost is fixmatch whose strong view is a DiffBoost variant of the unlabelled
# image, with Algorithm 1 on the labelled part: its variant source is diffboost
FIXMATCH, FIXMATCH_DIFFBOOST, SELF_TRAIN = "fixmatch", "fixmatch-diffboost", "self-train"
SEMI = (FIXMATCH, FIXMATCH_DIFFBOOST, SELF_TRAIN)


def _parts(name: str) -> tuple[list[str], list[str], list[str]]:
    """A strategy's (semi-supervised learner, variant source, classical augmentation) parts."""
    parts = [p.strip() for p in name.split("+") if p.strip()]
    semi = [p for p in parts if p in SEMI]
    source = [p for p in parts if p in VARIANT_SOURCES] + (["diffboost"] if FIXMATCH_DIFFBOOST in semi else [])
    classical = [p for p in parts if p not in VARIANT_SOURCES and p not in SEMI]
    valid = ("none", *CLASSICAL, *PIPELINES)
    if not parts or any(p not in valid for p in classical) or len(source) > 1 or len(classical) > 1 or len(semi) > 1:
        raise ValueError(f"unknown augmentation strategy {name!r}: use one of {', '.join(valid)}, "
                         f"{', '.join(VARIANT_SOURCES)}, or SOURCE+CLASSICAL (e.g. diffboost+classic), optionally "
                         f"with a semi-supervised learner ({', '.join(SEMI)}, e.g. fixmatch+classic)")
    return semi, source, classical


def parse_strategy(name: str) -> tuple[str | None, str]:
    """``"diffboost+deepstack"`` -> (variant source, classical augmentation): ("diffboost", "deepstack").

    A strategy is a classical name (or ``none``), a variant source (a synthetic set's generator, or
    ``mix-classic``), or ``SOURCE+CLASSICAL``; any of them may add a semi-supervised learner
    (:func:`semi_of`): ``fixmatch+classic``, ``self-train+diffboost+classic``, ``fixmatch-diffboost+classic``
    (whose variant source is diffboost).
    """
    _, source, classical = _parts(name)
    return (source[0] if source else None), (classical[0] if classical else "none")


def semi_of(name: str) -> str | None:
    """The semi-supervised learner of a strategy (fixmatch, fixmatch-diffboost, self-train), or None."""
    semi = _parts(name)[0]
    return semi[0] if semi else None


def uses_unlabelled(name: str) -> bool:
    """Whether a strategy learns from the fold's unlabelled images (a semi-supervised learner, or histmatch's
    references)."""
    semi, source, _ = _parts(name)
    return bool(semi) or HISTMATCH in source


def needs_unlabelled_variants(name: str) -> bool:
    """Whether a strategy trains on DiffBoost variants of unlabelled images: fixmatch-diffboost's strong
    views, or self-training's pseudo-labelled images mixed with their variants by Algorithm 1."""
    semi, source, _ = _parts(name)
    return FIXMATCH_DIFFBOOST in semi or (SELF_TRAIN in semi and "diffboost" in source)


def supervised_part(name: str) -> str:
    """The strategy without its semi-supervised learner: what a self-training teacher trains with
    (``self-train+diffboost+classic`` -> ``diffboost+classic``)."""
    _, source, classical = _parts(name)
    return "+".join([*source, *[c for c in classical if c != "none" or not source]]) or "none"


@dataclass
class SegConfig:
    """How one segmenter is trained and evaluated (saved as ``config.yaml`` beside its outputs)."""

    network: str = "attention_unet"  # attention_unet | unet | res_unet | resnet50_unet | swin_unetr | basic_unet
    channels: tuple[int, ...] | None = None  # widths; None = the network's default (the paper's for attention_unet)
    size: int | None = None  # working size; None = the prepared set's
    epochs: int = 50
    # optimiser steps per epoch (nnU-Net's fixed iterations per epoch): None = one pass over the real training
    # samples. Set, a run's length no longer depends on how many labelled images there are (30 labelled
    # images train as long as 330: label budgets, learning curves)
    steps_per_epoch: int | None = None
    # validation parts of fewer cases than this do not choose the checkpoint (a Dice over 3 cases is noise):
    # the last epoch's model is kept
    min_val_cases: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"  # cosine | constant
    batch_dice: bool = True  # Dice over the whole batch (nnU-Net's 2D choice); False: per image, where an
    # empty mask (a normal image) makes the soft Dice loss about 1 whatever the prediction
    # a strategy: none, contrast, ..., classic (nnU-Net's), deepstack, diffboost, mix-classic, diffboost+classic
    aug: str = "none"
    aug_prob: float = 0.5  # probability of a single classical transform
    alpha: float = 0.6  # Algorithm 1: probability that a patch comes from the real image
    patch: int | None = None  # Algorithm 1: cell size in pixels; None = 64 px at 384 px, scaled
    n: int | None = None  # variants per image to use; None = all that were generated (mix-classic: 3)
    mix: str = "input"  # input (the paper's Algorithm 1) | output (the public code)
    mix_prob: float = 1.0  # Algorithm 1: probability that a sample is mixed at all; else its real image whole
    quality_filter: bool = False  # drop variants that fail diffboost.generation.quality's checks
    # drop a variant whose teacher Dice is below this fraction of the teacher's Dice on its real image
    # (consistency.csv of the synthetic set); None = keep all
    teacher_gate: float | None = None
    # FreeMask: leave out of the loss the synthetic pixels whose teacher loss exceeds this multiple of
    # the teacher's mean loss on real images (teacher_loss.npy, consistency.json); None = keep all
    pixel_filter: float | None = None
    synthetic: str | None = None  # synthetic set of the fold ('{fold}' is filled in); None = PREPARED/../synthetic/fold{fold}
    val_every: int = 1  # epochs between validation-Dice evaluations (checkpoint selection)
    seed: int = 0
    # fp32 | bf16 (autocast for the training forward pass; evaluation stays fp32) | auto: bf16 where the
    # device computes it natively (utils.environment.native_bf16), else fp32; a run records the one it used
    precision: str = "fp32"
    device: str | None = None  # cpu | cuda | cuda:1 ...; None = cuda when available, else cpu
    threads: int | None = None  # torch CPU threads; None = torch's default
    # NHWC memory layout (2 CPU cores: 1.12x alone, with bf16 1.76x vs fp32 NCHW where the CPU has native bf16;
    # 1.10x on an AVX2 CPU, where bf16 is 9x slower than fp32: bench/bench_seg_step.py)
    channels_last: bool = False
    prefetch: bool = False  # make the next batch in a background thread (2 CPU cores, 2 threads: 0.92x, off)
    # semi-supervised learners (fixmatch, fixmatch-diffboost, self-train; see .semisup)
    confidence: float = 0.95  # a pseudo-labelled pixel enters the loss when its confidence exceeds this
    unlabelled_batch: int | None = None  # fixmatch: unlabelled images per step; None = batch_size
    unlabelled_weight: float = 1.0  # fixmatch: weight of the unlabelled term beside the supervised loss
    cutmix_prob: float = 0.5  # fixmatch: probability that a strong view gets a box of another unlabelled image
    # self-train: share of the unlabelled images kept, the teacher's most confident; None = those above the image
    # confidence at which the teacher's labels of the validation images were more right than wrong (semisup)
    self_train_keep: float | None = 0.5
    self_train_rounds: int = 1  # self-train: teacher -> student rounds (2: the first student teaches a second)

    def __post_init__(self):
        if self.channels is not None:
            self.channels = tuple(int(c) for c in self.channels)
        check_network(self.network, self.channels)  # a width list the network cannot take fails here
        parse_strategy(self.aug)
        if self.mix not in ("input", "output"):
            raise ValueError(f"mix must be 'input' or 'output', got {self.mix!r}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.mix_prob}")
        if self.teacher_gate is not None and not self.teacher_gate >= 0.0:
            raise ValueError(f"teacher_gate must be at least 0 (a fraction of the teacher's Dice on the real "
                             f"image, e.g. 0.8) or null, got {self.teacher_gate}")
        if self.pixel_filter is not None and not self.pixel_filter > 0.0:
            raise ValueError(f"pixel_filter must be positive (a multiple of the teacher's mean loss on real "
                             f"images, e.g. 1.25) or null, got {self.pixel_filter}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1 or null, got {self.steps_per_epoch}")
        if self.min_val_cases < 1:
            raise ValueError(f"min_val_cases must be at least 1, got {self.min_val_cases}")
        for name in ("epochs", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (batch normalisation)")
        if self.patch is not None and self.patch < 1:
            raise ValueError(f"patch must be at least 1 pixel, got {self.patch}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        for name in ("confidence", "cutmix_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.self_train_keep is not None and not 0.0 < self.self_train_keep <= 1.0:
            raise ValueError(f"self_train_keep must be in (0, 1] or null (chosen on validation), got {self.self_train_keep}")
        if self.unlabelled_weight < 0:
            raise ValueError(f"unlabelled_weight must be at least 0, got {self.unlabelled_weight}")
        if self.self_train_rounds < 1:
            raise ValueError(f"self_train_rounds must be at least 1, got {self.self_train_rounds}")
        if self.unlabelled_batch is not None and self.unlabelled_batch < 2:
            raise ValueError(f"unlabelled_batch must be at least 2 (batch normalisation) or null, got {self.unlabelled_batch}")

    def identity(self) -> dict:
        """The settings that change the trained model (threads and memory layout do not; nor do
        Algorithm 1's and the variant filters' options for a strategy without variants, so sweeping
        them never retrains ``none`` or a classical strategy)."""
        d = dataclasses.asdict(self)
        for k in ("threads", "channels_last", "device", "prefetch", "min_val_cases"):  # min_val_cases: its effect
            d.pop(k)  # on a fold is in the run's identity (last_checkpoint)
        d["channels"] = list(d["channels"]) if d["channels"] else None
        d["precision"] = self.training_precision()  # what training used: auto is another run on another machine
        return drop_unused(d)

    def training_precision(self) -> str:
        """``fp32`` or ``bf16``: ``auto`` resolved for this config's device."""
        if self.precision != "auto":
            return self.precision
        from ..utils.environment import native_bf16

        return "bf16" if native_bf16(self.device) else "fp32"


# options that only act on a strategy with variants (Algorithm 1, which variants, their filters)
VARIANT_OPTIONS = ("alpha", "patch", "n", "mix", "quality_filter", "synthetic", "mix_prob", "teacher_gate",
                   "pixel_filter")
# options of the semi-supervised learners, by learner
SEMI_OPTIONS = {FIXMATCH: ("confidence", "unlabelled_batch", "unlabelled_weight", "cutmix_prob"),
                FIXMATCH_DIFFBOOST: ("confidence", "unlabelled_batch", "unlabelled_weight", "cutmix_prob"),
                SELF_TRAIN: ("confidence", "self_train_keep", "self_train_rounds")}


def drop_unused(identity: dict) -> dict:
    """A run identity's config without the options its strategy does not use."""
    name = identity.get("aug", "none")
    used = set(SEMI_OPTIONS.get(semi_of(name), ()))
    unused = {k for opts in SEMI_OPTIONS.values() for k in opts} - used
    if parse_strategy(name)[0] is None:
        unused |= set(VARIANT_OPTIONS)
    return {k: v for k, v in identity.items() if k not in unused}
