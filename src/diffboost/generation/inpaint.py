"""New lesions in new places drawn by the fine-tuned diffusion model, and the harmonised copy-paste.

Both start from the copy-paste composite of :mod:`.layout` (the same donor, transform and position for
the same ``layout.seed``, so the only difference from ``copy-paste`` is how the lesion is drawn) and
its new label (the union), and condition the model on the composite's own edges (the real image's
outside the new lesion, the donor's transformed edges inside it), the new label's boundary and, for
``edges+mask`` models, the new filled label:

- ``diffboost-layout``: the new lesion's region (dilated by ``grow`` px, soft-edged) is redrawn at
  ``lesion_strength`` (image-to-image from the pasted donor pixels; at most the model's timestep cap),
  the rest of the image held to ``strength`` (the ``mask_strength`` mechanism with the region swapped:
  here the surroundings are held and the lesion changes);
- ``copy-paste-harmonize``: the whole composite at the low ``strength``, nothing held: the seam and
  the donor's texture pulled toward the image, the lesion kept.

A variant's label is the union (the model draws the lesion where the label says). Generation is in
fixed batches and resumable like :func:`~diffboost.generation.generate.generate` (finished batches
are kept in ``OUT/.work``), and writes a synthetic set with ``masks.npy`` and each variant's placement.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils.lock import locks_folder
from .layout import LAYOUT_FIELDS, LayoutConfig, LayoutPlanner, copy_paste, layout_label, placed

DIFFBOOST_LAYOUT = "diffboost-layout"
HARMONIZE = "copy-paste-harmonize"
KINDS = (DIFFBOOST_LAYOUT, HARMONIZE)


@dataclass
class InpaintConfig:
    """How the diffusion model draws the new lesions (``layout_generate:`` in a run config)."""

    lesion_strength: float = 0.6  # diffboost-layout: the new lesion's region, from the pasted donor pixels
    strength: float = 0.15  # the rest of the image (diffboost-layout) / the whole composite (harmonize)
    grow: int = 3  # px around the new lesion redrawn with it (diffboost-layout)
    sampler: str = "dpm++"
    steps: int = 20
    guidance: float = 3.0
    batch_size: int = 16

    def __post_init__(self):
        if not 0 < self.lesion_strength <= 1:
            raise ValueError(f"lesion_strength must be in (0, 1], got {self.lesion_strength}")
        if not 0 <= self.strength < 1:
            raise ValueError(f"strength must be in [0, 1), got {self.strength}")
        if self.strength > self.lesion_strength:
            raise ValueError(f"strength ({self.strength}) must not exceed lesion_strength ({self.lesion_strength})")
        if self.grow < 0:
            raise ValueError(f"grow must be at least 0, got {self.grow}")

    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        return d


def redraw_region(new_lesion: np.ndarray, grow: int) -> np.ndarray:
    """Where ``diffboost-layout`` redraws [H, W] in [0, 1]: the new lesion grown by ``grow`` px, with a
    soft border of the same width; 1 on the lesion itself."""
    from scipy import ndimage as ndi

    lesion = np.asarray(new_lesion, bool)
    if grow == 0 or not lesion.any():
        return lesion.astype(np.float32)
    dist = ndi.distance_transform_edt(~lesion)
    return np.clip(1.0 - dist / (grow + 1), 0.0, 1.0).astype(np.float32)


def _composites(ps, planner: LayoutPlanner, items: list[dict], cfg: LayoutConfig):
    """Per item: the copy-paste composite, its new label and the new lesion alone."""
    out = []
    for it in items:
        p = it["placement"]
        crop, labels, support = planner.transformed(p)
        real, real_mask = np.asarray(ps.images[p.real_index], np.float32), np.asarray(ps.masks[p.real_index])
        new = placed(real.shape, labels, p.top, p.left)
        out.append((copy_paste(real, crop, labels, support, p.top, p.left, cfg.ring, real_mask),
                    layout_label(real_mask, new), new > 0))
    return out


@locks_folder("out")
def layout_generate(model: str | Path, prepared, out: str | Path, fold: int, kind: str = DIFFBOOST_LAYOUT,
                    layout: LayoutConfig | None = None, cfg: InpaintConfig | None = None, progress: bool = True):
    """``layout.n`` variants of ``kind`` for every training sample of ``fold`` (samples no donor fits
    have fewer) into ``out``; a finished set of the same identity is reused, a half-made one completed."""
    from ..conditioning.edges import soft_edges, task_condition
    from ..data.store import PreparedSet
    from ..diffusion.models import label_channels
    from ..diffusion.pipeline import DiffBoostPipeline, model_hash
    from ..utils.atomic import read_control, write_control
    from ..utils.progress import progress_iter
    from .generate import _atomic_save, check_strength, mask_labels
    from .synthetic import SyntheticSet, check_set_folder, write_synthetic_set

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    layout, cfg = layout or LayoutConfig(), cfg or InpaintConfig()
    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    out = Path(out)
    top = cfg.lesion_strength if kind == DIFFBOOST_LAYOUT else cfg.strength
    if top <= 0:
        raise ValueError(f"{kind}: strength 0 draws nothing; use the copy-paste strategy for the composite itself")
    check_strength(model, top)
    identity = {"generator": kind, "fold": fold, "layout": layout.identity(), "inpaint": cfg.identity(),
                "model_hash": model_hash(model)}
    if (out / "generation.json").exists():
        meta = json.loads((out / "generation.json").read_text())
        if meta.get("identity") == identity and meta.get("n", 0) >= layout.n:
            return SyntheticSet(out)
    check_set_folder(out)
    work = out / ".work"
    if work.exists() and (work / "identity.json").exists() and read_control(work / "identity.json") != identity:
        shutil.rmtree(work)  # half-made with other settings: its batches are of no use
    work.mkdir(parents=True, exist_ok=True)
    write_control(work / "identity.json", identity)
    t0 = time.perf_counter()
    ps = ps.for_fold(fold)
    idx = ps.indices(ps.fold(fold).train, training=True)
    planner = LayoutPlanner(ps, idx, layout)
    items = [{"placement": p} for v in range(layout.n) for j in idx if (p := planner.plan(j, v)) is not None]
    if not items:
        raise ValueError(f"{ps.root}: fold {fold} has no training image with a lesion to place elsewhere")
    batches = [items[i : i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]
    todo = [k for k in range(len(batches)) if not (work / f"batch_{k:05d}.npy").exists()]
    if todo:
        pipe = DiffBoostPipeline.from_pretrained(model)
        pipe.denoiser.eval()
        labels = mask_labels(pipe, ps)
        for k in progress_iter(todo, f"{kind} fold {fold}", enabled=progress):
            batch = batches[k]
            made = _composites(ps, planner, batch, layout)
            comp = np.stack([c for c, _, _ in made])
            new_labels = np.stack([m for _, m, _ in made])
            cond = np.stack([task_condition(soft_edges(c), m) for c, m, _ in made])
            keep = (1.0 - np.stack([redraw_region(n, cfg.grow) for _, _, n in made])) if kind == DIFFBOOST_LAYOUT else None
            reals = [it["placement"].real_index for it in batch]
            imgs = pipe([ps.manifest[r]["prompt"] for r in reals], cond,
                        [it["placement"].elastic_seed for it in batch], sampler=cfg.sampler, steps=cfg.steps,
                        guidance=cfg.guidance, images=comp, strength=top,
                        masks=label_channels(new_labels, labels) if labels is not None else None,
                        keep=keep, keep_strength=cfg.strength if keep is not None else None)
            _atomic_save(work / f"labels_{k:05d}.npy", new_labels.astype(np.uint8))  # before its batch: a batch
            _atomic_save(work / f"batch_{k:05d}.npy", imgs.astype(np.float16))  # on disk always has its labels
    images = np.concatenate([np.load(work / f"batch_{k:05d}.npy") for k in range(len(batches))])
    masks = np.concatenate([np.load(work / f"labels_{k:05d}.npy") for k in range(len(batches))])
    rows = []
    for k, it in enumerate(items):
        p, r = it["placement"], ps.manifest[it["placement"].real_index]
        rows.append({"index": k, "real_index": p.real_index, "case_id": r["case_id"], "slice_index": r["slice_index"],
                     "variant": p.variant, "category": r["category"], "prompt": r["prompt"], "text": kind,
                     "seed": p.elastic_seed, "sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance,
                     "model_hash": identity["model_hash"], **p.to_row()})
    meta = {"identity": identity, "model": str(Path(model).resolve()), "fold": fold, "n": layout.n,
            "num_variants": len(rows), "missing_variants": layout.n * len(idx) - len(rows),
            "shrunk_variants": planner.shrunk,
            "layout": dataclasses.asdict(layout), "inpaint": dataclasses.asdict(cfg),
            "seconds": round(time.perf_counter() - t0, 1)}
    write_synthetic_set(out, ps, rows, images, cfg, meta, masks=masks, fields=LAYOUT_FIELDS)
    shutil.rmtree(work, ignore_errors=True)
    return SyntheticSet(out)
