"""Unlabelled images in the segmenter's training: the consistency term (fixmatch) and the pseudo-labels
(self-train), on the trainer's loop beside Algorithm 1.

The unlabelled images of a fold are its training images without a label there: those prepared with
``--unlabelled`` and those whose label a budget hides (:attr:`Fold.unlabelled`, which holds both).
Only their images are read; their labels never are (a hidden label raises :class:`HiddenLabel`).

**fixmatch** (weak-to-strong consistency: FixMatch, Sohn et al. 2020; UniMatch, Yang et al. 2023, for
segmentation). Each step trains the supervised batch as the strategy without ``fixmatch`` would, and
adds a batch of unlabelled images:

1. weak view: the image, mirrored along each axis with probability 0.5;
2. pseudo-label: the arg-max of the model on the weak view (evaluation mode, no gradient), its
   confidence the largest softmax probability;
3. strong view: the weak view through nnU-Net's intensity transforms (more often, nothing spatial:
   :data:`.augment.STRONG_VIEW`), then, with ``cutmix_prob``, a box of another unlabelled image of the
   batch pasted in (its pseudo-label and confidence pasted alike);
4. loss: ``unlabelled_weight`` x the cross-entropy of the model on the strong view against the
   pseudo-label on the pixels whose confidence exceeds ``confidence``, averaged over all pixels of the
   batch (FixMatch's mean: the term grows with the share of confident pixels). No Dice term: the
   confident pixels of an ultrasound image are mostly background, and a batch Dice on them drives every
   foreground prediction to zero (measured on BUSI at 10% labels: validation Dice fell from 0.54 to 0.09 by
   epoch 8 with it). When no pixel passes, the strong view does not go through the network: the step is
   the supervised one, exactly.

**fixmatch-diffboost**: step 3's strong view starts from a DiffBoost variant of the unlabelled image
(mirrored as the weak view is, so the variant's edges stay where the image's are) instead of the image;
the pseudo-label still comes from the real image. The labelled batch is trained with Algorithm 1.

**self-train** (the nnU-Net maintainers' recipe for unlabelled images): a teacher is trained with the
strategy's supervised part (``self-train+classic``: ``classic``) in ``OUT/teacher``; it predicts every
unlabelled training image; the ``self_train_keep`` share of them on which it is most confident (mean
confidence over the pixels it calls foreground, over all pixels when it calls none; ``self_train_keep:
null``: those above the cut chosen on the fold's validation images, :func:`confidence_cut`) join the
labelled images with their pseudo-labels, the pixels at or under ``confidence`` left out of the loss; a fresh
segmenter trains on both. ``self_train_rounds = 2`` makes the first student the teacher of a second.
With a variant source (``self-train+diffboost+classic``) the kept images are mixed with their own
variants by Algorithm 1 as the labelled ones are.

Every random choice is drawn from (seed, epoch, step) on streams of its own, so the supervised part of
a step draws the same numbers as without the unlabelled term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.store import PreparedSet
from .augment import STRONG_VIEW, BatchAugmenter
from .config import FIXMATCH_DIFFBOOST, SegConfig, semi_of
from .data import SyntheticPool, to_size
from .patchmix import choose_variants


def unlabelled_indices(ps: PreparedSet, fold: int, strategy: str) -> list[int]:
    """The training samples of ``fold`` without a label there (prepared without one, or hidden by the
    budget); an error naming the set when there are none."""
    f = ps.fold(fold)
    # the hidden cases are among them; every slice of a volume, since a hidden label may not choose them
    # (``slices: foreground`` marks a labelled case's training slices by its mask)
    idx = ps.indices(f.unlabelled)
    if not idx:
        raise ValueError(f"{ps.root}: fold {fold} has no unlabelled training images, which {strategy} learns from; "
                         "prepare the set with --unlabelled DIR or a label --budget")
    return idx


def mirror(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """``images [B, C, H, W]`` mirrored along H where ``flips[:, 0]`` and along W where ``flips[:, 1]``."""
    out = torch.where(flips[:, 0, None, None, None], images.flip(-2), images)
    return torch.where(flips[:, 1, None, None, None], out.flip(-1), out)


def cutmix_boxes(batch: int, height: int, width: int, prob: float, g: torch.Generator) -> torch.Tensor:
    """``[B, 1, H, W]`` bool: per sample, with probability ``prob``, one box of 2-40% of the image's area
    (aspect ratio 0.3-3.3), elsewhere False."""
    boxes = torch.zeros(batch, 1, height, width, dtype=torch.bool)
    draws = torch.rand(batch, 5, generator=g)
    for i, (p, area, ratio, y, x) in enumerate(draws.tolist()):
        if p >= prob:
            continue
        area = (0.02 + 0.38 * area) * height * width
        ratio = float(np.exp(np.log(0.3) + ratio * (np.log(1 / 0.3) - np.log(0.3))))
        h = min(height, max(1, round((area * ratio) ** 0.5)))
        w = min(width, max(1, round((area / ratio) ** 0.5)))
        top, left = int(y * (height - h + 1)), int(x * (width - w + 1))
        boxes[i, 0, top : top + h, left : left + w] = True
    return boxes


@torch.no_grad()
def pseudo_label(net: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [B, 1, H, W] long, confidence [B, 1, H, W])`` of the model on ``images``, in evaluation
    mode (batch statistics untouched), the model's mode restored after."""
    was = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        probs = torch.softmax(net(images.to(device)).float(), dim=1).cpu()
    finally:
        net.train(was)
    conf, labels = probs.max(1, keepdim=True)
    return labels, conf


@dataclass
class FixMatch:
    """The unlabelled term of one training step (module docstring). ``images`` are the fold's
    unlabelled training images; ``variants`` their DiffBoost variants (fixmatch-diffboost), row j of the
    pool belonging to image j."""

    images: torch.Tensor  # [U, 1, S, S]
    cfg: SegConfig
    variants: SyntheticPool | None = None

    def __post_init__(self):
        self.strong = BatchAugmenter(STRONG_VIEW, seed=self.cfg.seed, stream=13)
        self.batch = self.cfg.unlabelled_batch or self.cfg.batch_size
        if self.variants is not None and bool((self.variants.counts == 0).any()):
            raise ValueError(f"{self.variants.source}: some unlabelled images have no variant")

    def views(self, net: torch.nn.Module, epoch: int, step: int):
        """``(strong view, pseudo-label, pixels kept)`` of this step's unlabelled batch."""
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.seed, epoch, step, 11]).integers(2**62)))
        pick = torch.randint(len(self.images), (self.batch,), generator=g)
        flips = torch.rand(self.batch, 2, generator=g) < 0.5
        weak = mirror(self.images[pick], flips)
        labels, conf = pseudo_label(net, weak)  # always from the real image
        if self.variants is not None:
            rows = self.variants.rows[pick, choose_variants(self.variants.counts[pick], g)]
            strong = mirror(self.variants.images[rows], flips)  # the variant in the weak view's geometry
        else:
            strong = weak
        strong, _ = self.strong(strong, labels, epoch, step)  # intensity only: the labels stay
        boxes = cutmix_boxes(self.batch, strong.shape[-2], strong.shape[-1], self.cfg.cutmix_prob, g)
        if bool(boxes.any()):
            other = (torch.arange(self.batch) + 1) % self.batch  # each image takes a box of the next one
            strong = torch.where(boxes, strong[other], strong)
            labels = torch.where(boxes, labels[other], labels)
            conf = torch.where(boxes, conf[other], conf)
        return strong, labels, conf > self.cfg.confidence

    def loss(self, net: torch.nn.Module, forward: Callable, epoch: int, step: int) -> torch.Tensor | None:
        """The weighted unlabelled loss of this step, or None when no pixel passes the threshold."""
        strong, labels, keep = self.views(net, epoch, step)
        if not bool(keep.any()) or self.cfg.unlabelled_weight == 0:
            return None
        logits = forward(strong)
        ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].to(logits.device), reduction="none")
        return self.cfg.unlabelled_weight * (ce * keep[:, 0].to(ce.device)).mean()


def fixmatch_term(ps: PreparedSet, fold: int, cfg: SegConfig, size: int, synthetic: Path | None) -> FixMatch:
    """The fold's :class:`FixMatch` term: its unlabelled training images and, for fixmatch-diffboost, their
    variants from the ``synthetic`` set (an error saying how to make them when they are not there)."""
    from .data import load_synthetic

    idx = unlabelled_indices(ps, fold, cfg.aug)
    variants = None
    if semi_of(cfg.aug) == FIXMATCH_DIFFBOOST:
        try:
            variants = load_synthetic(synthetic, ps, fold, idx, size, cfg.n)
        except ValueError as e:
            raise ValueError(f"{e}. {cfg.aug} takes its strong views from variants of the unlabelled images: "
                             "generate them with `diffboost generate --unlabelled` (generate.unlabelled: true)") from None
    return FixMatch(to_size(ps.images[np.asarray(idx)], size), cfg, variants)


def image_confidence(labels: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Per image, the mean confidence over the pixels labelled foreground (over all pixels when none is)."""
    fg = (labels > 0).float()
    n = fg.flatten(1).sum(1)
    on_fg = (conf * fg).flatten(1).sum(1) / n.clamp_min(1)
    return torch.where(n > 0, on_fg, conf.flatten(1).mean(1))


def _predict(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    labels, conf = [], []
    for i in range(0, len(images), batch_size):
        lab, c = pseudo_label(net, images[i : i + batch_size])
        labels.append(lab)
        conf.append(c)
    return torch.cat(labels), torch.cat(conf)


def confidence_cut(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, labels: list[int]) -> float:
    """Self-training's rule, chosen on labelled validation images: the image-confidence cut that maximises
    sum(2 Dice - 1) over the validation images at or above it. An image enters when, at its confidence, the
    teacher's labels were more right than wrong (Dice above 0.5). Returns +inf (keep none) when no cut
    gives a positive sum."""
    from ..evaluation.metrics import label_dice

    pred, conf = _predict(net, images)
    score = image_confidence(pred, conf)
    dice = torch.tensor([label_dice(p[0].numpy(), m[0].numpy(), labels) for p, m in zip(pred, masks)])
    order = torch.argsort(score, descending=True, stable=True)
    gain = torch.cumsum(2 * dice[order] - 1, 0)
    best = int(torch.argmax(gain))
    return float(score[order[best]]) if float(gain[best]) > 0 else float("inf")


def pseudo_labelled(net: torch.nn.Module, images: torch.Tensor, cfg: SegConfig, cut: float | None = None,
                    batch_size: int = 32):
    """Self-training's choice: ``(chosen image positions, their pseudo-labels, their pixels kept, the
    image confidences of all)``: the ``self_train_keep`` most confident share of ``images``, or, with a
    ``cut`` (:func:`confidence_cut`), the images whose confidence reaches it."""
    labels, conf = _predict(net, images, batch_size)
    score = image_confidence(labels, conf)
    if cut is not None:
        chosen = torch.nonzero(score >= cut)[:, 0]
    else:
        n = max(1, round(cfg.self_train_keep * len(images)))
        chosen = torch.sort(torch.argsort(score, descending=True, stable=True)[:n]).values
    return chosen, labels[chosen], conf[chosen] > cfg.confidence, score


def self_training_set(ps: PreparedSet, fold: int, cfg: SegConfig, out: Path, size: int, progress: bool):
    """Train (or reuse) the teacher in ``out/teacher`` and return ``(sample indices, pseudo-labels,
    pixels kept, record)`` of the unlabelled images the student adds to its labelled ones."""
    import dataclasses

    from .config import supervised_part
    from .trainer import load_segmenter, train_seg

    if cfg.self_train_rounds > 1:  # the previous round's student teaches
        teacher_cfg = dataclasses.replace(cfg, self_train_rounds=cfg.self_train_rounds - 1)
    else:
        teacher_cfg = dataclasses.replace(cfg, aug=supervised_part(cfg.aug))
    teacher = train_seg(ps, fold, teacher_cfg, out / "teacher", progress=progress)
    net, _ = load_segmenter(out / "teacher" / "model")
    idx = unlabelled_indices(ps, fold, cfg.aug)
    images = to_size(ps.images[np.asarray(idx)], size)
    cut = None
    if cfg.self_train_keep is None:  # the rule chosen on the fold's validation images
        from .trainer import labels_of

        f = ps.fold(fold)
        if not f.val:
            raise ValueError(f"{ps.root}: fold {fold} has no validation images to choose self-training's "
                             "confidence cut on; set seg.self_train_keep")
        val = np.asarray(ps.indices(f.val))
        cut = confidence_cut(net, to_size(ps.images[val], size), to_size(ps.masks[val], size, labels=True), labels_of(ps))
    chosen, labels, keep, score = pseudo_labelled(net, images, cfg, cut)
    if len(chosen) == 0:
        raise ValueError(f"{ps.root}: fold {fold}: the teacher's pseudo-labels were no better than chance on its "
                         "validation images at any confidence, so none would be kept; set seg.self_train_keep")
    record = {"teacher": teacher_cfg.aug, "teacher_rounds": cfg.self_train_rounds - 1,
              "confidence_cut": None if cut is None else round(cut, 4),
              "teacher_test_dice": teacher["metrics"].get("dice", {}).get("mean"),
              "unlabelled_images": len(idx), "pseudo_labelled_images": len(chosen),
              "pixels_kept": round(float(keep.float().mean()), 4),
              "image_confidence_cut": round(float(score[chosen].min()), 4)}
    return [idx[int(i)] for i in chosen], labels, keep, record
