"""Label consistency of synthetic variants, checked by a teacher segmenter.

A variant is trained on with its real image's mask. Whether that label still fits the variant is
measured by a *teacher*: the fold's ``none`` segmenter (trained on the fold's training part only).
It segments every variant and every real training image; each prediction is scored against the
REAL mask at the prepared size (per image, mean Dice over the foreground labels; a label absent
from both prediction and mask scores 1, absent from one of them 0). Then

    label consistency = mean teacher Dice on the variants / mean teacher Dice on their real images

(the real images weighted by their number of variants), overall, per augmentation text and per
strength (the manifest's ``strength`` column, else the set's generation strength, else 1.0: from
noise). 1 means the teacher finds
the lesions of the variants as well as those of the real images; erased or moved lesions lower it.

Written into the synthetic set's folder (caches of the set: a regenerated set drops them):

    consistency.csv    one row per variant: variant_index (the set's row), real_index, text, strength,
                       teacher_dice_variant, teacher_dice_real
    consistency.json   the summary (overall, per_text, per_strength), the teacher (path, sha256, ...),
                       teacher_loss_real_mean and the identity of the set and teacher it was made from
    teacher_loss.npy   float16 [num_variants, H, W]: the teacher's per-pixel cross-entropy on each
                       variant against the real mask (read by the segmentation pixel filter)

``teacher_loss_real_mean`` is the teacher's mean per-pixel cross-entropy on the fold's real training
images against their masks. The files are reused while the set and the teacher are the same ones.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import PreparedSet
from ..generation.synthetic import CONSISTENCY_CSV, CONSISTENCY_JSON, TEACHER_LOSS
from ..utils.atomic import atomic_write_text, file_sha256
from .metrics import label_dice

FIELDS = ["variant_index", "real_index", "text", "strength", "teacher_dice_variant", "teacher_dice_real"]
PLAIN = "plain"  # the per-text key of variants made from the plain prompt (text "")


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def summarise(rows: list[dict]) -> dict:
    """``variants``, mean ``teacher_dice_variant`` and ``teacher_dice_real`` and their ratio, the
    ``consistency`` (NaN when the teacher's Dice on the real images is 0)."""
    v = float(np.mean([float(r["teacher_dice_variant"]) for r in rows])) if rows else float("nan")
    r_ = float(np.mean([float(r["teacher_dice_real"]) for r in rows])) if rows else float("nan")
    return {"variants": len(rows), "teacher_dice_variant": v, "teacher_dice_real": r_, "consistency": _ratio(v, r_)}


def text_key(text: str) -> str:
    return text if text else PLAIN


def strength_key(strength) -> str:
    return f"{float(strength):g}"


class LabelConsistency:
    """Per-variant teacher Dice against the real mask (MONAI metric style): ``__call__`` one variant,
    ``aggregate`` overall or per text / strength, ``reset`` to start again."""

    def __init__(self, labels: Sequence[int] = (1,)):
        self.labels = tuple(labels)
        self.rows: list[dict] = []

    def __call__(self, pred: np.ndarray, ref: np.ndarray, dice_real: float, variant_index: int, real_index: int,
                 text: str = "", strength: float = 1.0) -> dict:
        """Score the teacher's prediction ``pred`` of a variant against its real image's mask ``ref``;
        ``dice_real`` is the teacher's Dice on that real image."""
        row = {"variant_index": int(variant_index), "real_index": int(real_index), "text": text,
               "strength": float(strength), "teacher_dice_variant": label_dice(pred, ref, self.labels),
               "teacher_dice_real": float(dice_real)}
        self.rows.append(row)
        return row

    def aggregate(self, by: str | None = None) -> dict:
        """The summary of every variant (``by=None``), or ``{group: summary}`` per ``"text"`` (the plain
        prompt as ``"plain"``) or per ``"strength"``."""
        if by is None:
            return summarise(self.rows)
        key = {"text": lambda r: text_key(r["text"]), "strength": lambda r: strength_key(r["strength"])}.get(by)
        if key is None:
            raise ValueError(f"aggregate by 'text' or 'strength', not {by!r}")
        groups: dict[str, list[dict]] = {}
        for r in self.rows:
            groups.setdefault(key(r), []).append(r)
        return {k: summarise(g) for k, g in sorted(groups.items(), key=lambda kv: _sort_key(by, kv[0]))}

    def reset(self) -> None:
        self.rows = []


def _sort_key(by: str, key: str):
    return (float(key),) if by == "strength" else (key != PLAIN, key)


# ---- the teacher -----------------------------------------------------------------------------------

class Teacher:
    """A saved segmenter (``model/`` of a training run) that gives, at the prepared size, the label map
    and the per-pixel cross-entropy against a mask of images ``[N, S, S]`` in [-1, 1]."""

    def __init__(self, path: str | Path, device: str | None = None):
        from ..segmentation.trainer import load_segmenter

        self.path = Path(path)
        self.net, self.config = load_segmenter(self.path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self.net.to(self.device).eval()
        self.labels = [int(k) for k in self.config.get("labels") or [1]]
        self.size = int(self.config["size"])

    def info(self) -> dict:
        """Where the teacher is and what it is (for the summary)."""
        c = self.config
        return {"path": str(self.path.resolve()), "sha256": model_sha256(self.path), "strategy": c.get("strategy"),
                "network": c.get("network"), "size": self.size, "epoch": c.get("epoch"), "val_dice": c.get("val_dice")}

    @torch.no_grad()
    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(label maps [N, S, S] uint8, cross-entropy [N, S, S] float32 or None without masks)``:
        logits at the teacher's size, resized (bilinear) to the images' size S."""
        from ..segmentation.data import to_size

        images = np.asarray(images, np.float32)
        s = images.shape[-1]
        logits = self.net(to_size(images, self.size).to(self.device)).float()
        if logits.shape[-1] != s:
            logits = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
        pred = logits.argmax(1).to(torch.uint8).cpu().numpy()
        if masks is None:
            return pred, None
        target = torch.from_numpy(np.asarray(masks, np.int64)).to(self.device)
        if int(target.max()) >= logits.shape[1]:
            raise ValueError(f"{self.path}: the teacher predicts {logits.shape[1]} classes, but a mask holds label "
                             f"{int(target.max())}; use a teacher trained on this prepared set")
        ce = F.cross_entropy(logits, target, reduction="none")
        return pred, ce.cpu().numpy()


def _files_sha256(root: str | Path, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(file_sha256(Path(root) / name).encode())
    return h.hexdigest()


def model_sha256(path: str | Path) -> str:
    """A segmenter folder's identity: the hash of its weights and config."""
    return _files_sha256(path, ("config.json", "model.safetensors"))


def set_sha256(root: str | Path) -> str:
    """A synthetic set's identity: the hash of its images, manifest and generation record."""
    return _files_sha256(root, ("generation.json", "manifest.csv", "images.npy"))


def _strength(row: dict, default: float) -> float:
    value = row.get("strength")
    return default if value in (None, "") else float(value)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def load_consistency(root: str | Path) -> tuple[dict, list[dict]] | None:
    """``(consistency.json, consistency.csv rows)`` of a synthetic set, or None when it has none."""
    root = Path(root)
    if not (root / CONSISTENCY_JSON).exists() or not (root / CONSISTENCY_CSV).exists():
        return None
    with open(root / CONSISTENCY_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["variant_index"], r["real_index"] = int(r["variant_index"]), int(r["real_index"])
        for k in ("strength", "teacher_dice_variant", "teacher_dice_real"):
            r[k] = float(r[k])
    return json.loads((root / CONSISTENCY_JSON).read_text()), rows


def load_fold_consistencies(root: str | Path) -> list[tuple[Path, dict, list[dict]]]:
    """``(set folder, consistency.json, consistency.csv rows)`` of every checked set ``root/foldK``,
    in fold order (fold2 before fold10)."""
    found = [p for p in Path(root).glob("fold*") if p.is_dir()]
    loaded = ((p, load_consistency(p)) for p in sorted(found, key=lambda p: (len(p.name), p.name)))
    return [(p, *c) for p, c in loaded if c is not None]


def _fresh(root: Path, identity: dict, num_variants: int) -> dict | None:
    """The stored summary when all three files are there and were made from ``identity``."""
    if not all((root / name).exists() for name in (TEACHER_LOSS, CONSISTENCY_CSV, CONSISTENCY_JSON)):
        return None
    try:
        summary = json.loads((root / CONSISTENCY_JSON).read_text())
        shape = np.load(root / TEACHER_LOSS, mmap_mode="r").shape
    except (ValueError, OSError):
        return None
    return summary if summary.get("identity") == identity and shape[:1] == (num_variants,) else None


def label_consistency(teacher_dir: str | Path, prepared: str | Path | PreparedSet, synthetic_dir: str | Path,
                      fold: int, batch_size: int = 32, progress: bool = True, device: str | None = None) -> dict:
    """Check every variant of the synthetic set ``synthetic_dir`` (made for ``fold``) with the teacher
    ``teacher_dir`` (a saved segmenter, e.g. ``seg/none/seed0/foldK/model``); write
    ``consistency.csv``, ``consistency.json`` and ``teacher_loss.npy`` into the set and return the
    summary. Files made from the same set and teacher are reused."""
    from ..generation.synthetic import SyntheticSet
    from ..utils.progress import progress_iter

    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    syn = SyntheticSet(synthetic_dir)
    syn.check_fold(ps, fold)
    root = syn.root
    teacher_dir = Path(teacher_dir)
    identity = {"set": set_sha256(root), "teacher": model_sha256(teacher_dir), "prepared": str(ps.root.resolve()),
                "fold": int(fold)}
    stored = _fresh(root, identity, len(syn))
    if stored is not None:
        return stored
    images = syn.images
    if images.ndim != 3 or images.shape[1:] != (ps.size, ps.size) or len(images) != len(syn):
        raise ValueError(f"{root / 'images.npy'}: shape {images.shape}, expected [{len(syn)}, {ps.size}, {ps.size}] "
                         f"(one variant per manifest row at the prepared size)")
    teacher = Teacher(teacher_dir, device)
    (root / CONSISTENCY_JSON).unlink(missing_ok=True)  # the summary marks the files complete: written last
    # a variant's strength: its manifest column, else the set's (image-to-image generation), else 1 (from noise)
    strength = float((syn.meta.get("identity") or {}).get("strength", syn.meta.get("strength", 1.0)))

    # the real training images: their Dice (per image) and the mean per-pixel loss
    ps = ps.for_fold(fold)
    # variants of images without a label here (fixmatch-diffboost's strong views) have no mask to be scored
    # against: written with an undefined (NaN) Dice, which no gate drops, and a zero loss map
    real_idx = sorted(set(ps.indices(ps.fold(fold).train, training=True)) | {i for i in syn.by_real if ps.label_readable(i)})
    dice_real: dict[int, float] = {}
    loss_sum, pixels = 0.0, 0
    for sl in progress_iter(_batches(len(real_idx), batch_size), f"teacher fold {fold}: real images", enabled=progress):
        idx = np.asarray(real_idx[sl])
        masks = np.asarray(ps.masks[idx])
        pred, ce = teacher(np.asarray(ps.images[idx], np.float32), masks)
        loss_sum += float(ce.astype(np.float64).sum())
        pixels += ce.size
        for i, p, m in zip(idx, pred, masks):
            dice_real[int(i)] = label_dice(p, m, teacher.labels)

    # every variant against its real image's mask: Dice and the per-pixel loss map
    metric = LabelConsistency(teacher.labels)
    tmp = root / f".{TEACHER_LOSS}.tmp-{os.getpid()}.npy"
    loss_map = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(syn), ps.size, ps.size))
    try:
        rows = sorted(syn.manifest, key=lambda r: r["index"])
        if [r["index"] for r in rows] != list(range(len(rows))):
            raise ValueError(f"{root / 'manifest.csv'}: the index column must number the rows 0..{len(rows) - 1} "
                             "(the variants' rows of images.npy)")
        unscored = [{"variant_index": r["index"], "real_index": r["real_index"], "text": r["text"],
                     "strength": _strength(r, strength), "teacher_dice_variant": float("nan"),
                     "teacher_dice_real": float("nan")} for r in rows if r["real_index"] not in dice_real]
        rows = [r for r in rows if r["real_index"] in dice_real]
        for sl in progress_iter(_batches(len(rows), batch_size), f"teacher fold {fold}: variants", enabled=progress):
            batch = rows[sl]
            at = np.asarray([r["index"] for r in batch])
            masks = np.asarray(ps.masks[np.asarray([r["real_index"] for r in batch])])
            pred, ce = teacher(np.asarray(images[at], np.float32), masks)
            loss_map[at] = np.minimum(ce, np.finfo(np.float16).max).astype(np.float16)
            for r, p, m in zip(batch, pred, masks):
                metric(p, m, dice_real[r["real_index"]], r["index"], r["real_index"], r["text"],
                       _strength(r, strength))
        loss_map.flush()
        del loss_map
        os.replace(tmp, root / TEACHER_LOSS)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows({**r, "teacher_dice_variant": f"{r['teacher_dice_variant']:.6f}",
                 "teacher_dice_real": f"{r['teacher_dice_real']:.6f}", "strength": f"{r['strength']:g}"}
                for r in sorted(metric.rows + unscored, key=lambda r: r["variant_index"]))
    atomic_write_text(root / CONSISTENCY_CSV, buf.getvalue())
    summary = {"overall": metric.aggregate(), "per_text": metric.aggregate("text"),
               "per_strength": metric.aggregate("strength"),
               "real": {"images": len(real_idx), "teacher_dice": float(np.mean(list(dice_real.values())))},
               "teacher_loss_real_mean": loss_sum / max(pixels, 1), "teacher": teacher.info(),
               "variants_of_unlabelled_images": len(unscored),
               "synthetic": str(root.resolve()), "fold": int(fold), "identity": identity}
    atomic_write_text(root / CONSISTENCY_JSON, json.dumps(_finite(summary), indent=1))
    return _finite(summary)


def _finite(obj):
    """NaN -> None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---- generated test images (Table I) and whole runs ---------------------------------------------------

def teacher_dice(teacher: Teacher, images: np.ndarray, masks: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The teacher's Dice on each image (``[N, S, S]`` in [-1, 1]) against its mask."""
    dice: list[float] = []
    for sl in _batches(len(images), batch_size):
        pred, _ = teacher(np.asarray(images[sl], np.float32))
        dice += [label_dice(p, m, teacher.labels) for p, m in zip(pred, masks[sl])]
    return np.asarray(dice, np.float64)


def generated_consistency(teacher: Teacher, real: np.ndarray, generated: np.ndarray, masks: np.ndarray,
                          batch_size: int = 32) -> dict:
    """Teacher Dice on images generated from ``real`` images' conditions and on the real images
    themselves (both ``[N, S, S]`` in [-1, 1]) against ``masks``, and their ratio."""
    g = float(teacher_dice(teacher, generated, masks, batch_size).mean())
    r = float(teacher_dice(teacher, real, masks, batch_size).mean())
    return _finite({"teacher_dice_generated": g, "teacher_dice_real": r, "consistency": _ratio(g, r)})


def run_teacher_seed(run_dir: str | Path) -> int:
    """The seed whose ``none`` runs teach: the first of the run's segmentation seeds (``run.yaml``),
    else the lowest seed ``seg/none`` holds, else 0."""
    import yaml

    run_dir = Path(run_dir)
    if (run_dir / "run.yaml").exists():
        cfg = yaml.safe_load((run_dir / "run.yaml").read_text()) or {}
        seeds = (cfg.get("compare") or {}).get("seeds") or [(cfg.get("seg") or {}).get("seed", 0)]
        return int(seeds[0])
    found = sorted(int(p.name[4:]) for p in (run_dir / "seg" / "none").glob("seed*") if p.name[4:].isdigit())
    return found[0] if found else 0


def consistency_for_run(run_dir: str | Path, folds: Sequence[int] | None = None, seed: int | None = None,
                        prepared: PreparedSet | None = None, batch_size: int = 32,
                        progress: bool = True) -> dict[int, dict]:
    """Label consistency of every fold of a run folder that has a synthetic set
    (``synthetic/foldK``) and a teacher (``seg/none/seed<seed>/foldK/model``); ``{fold: summary}``.
    Under a distributed launch the main process computes and the others wait."""
    from ..segmentation.jobs import barrier, distributed, run_folder

    run_dir = Path(run_dir)
    ps = prepared or PreparedSet(run_dir / "prepared")
    seed = run_teacher_seed(run_dir) if seed is None else seed
    folds = range(len(ps.folds)) if folds is None else folds
    out: dict[int, dict] = {}
    for k in folds:
        syn, teacher = run_dir / "synthetic" / f"fold{k}", run_folder(run_dir / "seg", "none", k, seed) / "model"
        if (syn / "generation.json").exists() and (teacher / "model.safetensors").exists():
            if distributed()[0] == 0:
                out[k] = label_consistency(teacher, ps, syn, k, batch_size, progress)
        # layout sets (new lesions in new places): does the teacher see the new lesions?
        for layout in sorted(run_dir.glob(f"synthetic_*/fold{k}/masks.npy")):
            if (teacher / "model.safetensors").exists() and distributed()[0] == 0:
                new_lesion_consistency(teacher, ps, layout.parent, batch_size)
    barrier()
    if distributed()[0] != 0:  # the main process wrote them: read
        out = {k: json.loads((run_dir / "synthetic" / f"fold{k}" / CONSISTENCY_JSON).read_text()) for k in folds
               if (run_dir / "synthetic" / f"fold{k}" / CONSISTENCY_JSON).exists()}
    return out


# ---- new lesions in new places -----------------------------------------------------------------------

NEW_LESION_JSON = "new_lesion_consistency.json"
NEW_LESION_WINDOW = 8  # px around a new lesion where the teacher's prediction is scored


def new_lesion_dice(pred: np.ndarray, label: np.ndarray, real_mask: np.ndarray, window: int = NEW_LESION_WINDOW) -> float:
    """The teacher's Dice on a variant's new lesion: the lesion is the variant's label where the real
    image had none; the teacher's foreground counts within ``window`` px of it (what it predicts at the
    real lesions or far away is not about the new one). NaN without a new lesion."""
    from scipy import ndimage as ndi

    new = (np.asarray(label) > 0) & ~(np.asarray(real_mask) > 0)
    if not new.any():
        return float("nan")
    near = ndi.binary_dilation(new, iterations=window) & ~(np.asarray(real_mask) > 0)
    p = (np.asarray(pred) > 0) & near
    return float(2 * np.count_nonzero(p & new) / (np.count_nonzero(p) + np.count_nonzero(new)))


def new_lesion_consistency(teacher_dir: str | Path, prepared: str | Path | PreparedSet, synthetic_dir: str | Path,
                           batch_size: int = 32) -> dict:
    """Does the teacher (a segmenter trained on real images only) see the new lesions of a layout set
    (variants with labels of their own)? Its Dice on each variant's new lesion, and the mean, written to
    ``SET/new_lesion_consistency.json``."""
    from ..generation.synthetic import SyntheticSet
    from ..utils.atomic import atomic_write_text

    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    syn = SyntheticSet(synthetic_dir)
    ps = syn.bind(ps)
    if syn.masks is None:
        raise ValueError(f"{syn.root}: its variants have no labels of their own (not a layout set)")
    teacher = Teacher(teacher_dir)
    scores = []
    for sl in _batches(len(syn), batch_size):
        pred, _ = teacher(np.asarray(syn.images[sl], np.float32))
        for p, row in zip(pred, syn.manifest[sl]):
            scores.append(new_lesion_dice(p, syn.masks[row["index"]], ps.masks[row["real_index"]]))
    v = np.asarray(scores, np.float64)
    summary = _finite({"variants": len(v), "new_lesions": int(np.isfinite(v).sum()),
                       "teacher_dice_new_lesion": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                       "found_share": float(np.mean(v[np.isfinite(v)] >= 0.1)) if np.isfinite(v).any() else float("nan"),
                       "window_px": NEW_LESION_WINDOW, "teacher": teacher.info()})
    summary["per_variant"] = [float(x) if np.isfinite(x) else None for x in v]
    atomic_write_text(Path(synthetic_dir) / NEW_LESION_JSON, json.dumps(summary, indent=1))
    return summary
