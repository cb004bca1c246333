"""Generate n synthetic variants of every training image of a fold.

Variant ``i`` of a real image is made from noise seeded by (seed, case, slice, i), the image's own
prompt plus augmentation text ``texts[i % len(texts)]``, and the image's own condition (edge map;
for ``edges+mask`` models also its filled mask); its label is the real mask. With ``strength < 1``
the variant starts from the real image noised to strength x T with that noise (image-to-image,
SDEdit), which keeps its structure, and so its label, at moderate strength. ``mask_strength`` below
``strength`` holds the labelled region (the foreground, dilated by a soft border of size / 64 px) to
that lower strength while the rest of the image changes at ``strength``: the lesion stays what its
label says by construction, and its surroundings, contrast and texture vary.
The work list is cut into fixed batches, which are dealt to processes round-robin (``accelerate
launch``), so the images do not depend on the number of processes. A second call completes only
what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils.lock import locks_folder
from ..conditioning.augment_text import DEFAULT_TEXTS
from ..data.store import PreparedSet
from ..utils.atomic import read_control, recover_artifact, write_control
from ..utils.progress import progress_iter
from .synthetic import SyntheticSet, check_set_folder, variant_seed, write_synthetic_set

@dataclass
class GenerateConfig:
    """Options of ``diffboost generate``."""

    n: int = 4
    texts: tuple[str, ...] = DEFAULT_TEXTS
    sampler: str = "dpm++"  # ddim | dpm++ | unipc | euler
    steps: int = 20
    guidance: float = 3.0
    batch_size: int = 16
    seed: int = 0
    blend: bool = False  # the public code's text-embedding blend (see pipeline.PUBLIC_BLEND)
    negative: str = ""
    control_scale: float = 1.0
    strength: float = 1.0  # 1 = from noise; < 1 = image-to-image from the real image (runs strength x steps)
    mask_strength: float | None = None  # the labelled region's own strength, in [0, strength]; None = strength
    # also draw variants of the fold's training images without a label (prepare --unlabelled, or hidden by a
    # budget), conditioned on their edges and the "no mask" input (diffusion.conditions): the strong views
    # of fixmatch-diffboost, the variants of self-train's pseudo-labelled images
    unlabelled: bool = False
    # cross-site sets: each variant of a labelled (source) image is drawn with the prompt of a target scanner,
    # drawn per variant from the fold's unlabelled target images (their mix of scanners): the source's
    # labels, redrawn as the target site's scanners see them (the diffboost-target strategy's variants)
    target_style: bool = False

    def __post_init__(self):
        self.texts = tuple(self.texts)
        self.strength = float(self.strength)
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1] (1 = from noise), got {self.strength}")
        if int(self.strength * self.steps) < 1:
            raise ValueError(f"strength {self.strength} x {self.steps} steps runs no denoising step; "
                             "raise strength or steps")
        if self.mask_strength is not None:
            self.mask_strength = float(self.mask_strength)
            if not (0 <= self.mask_strength <= self.strength and self.strength < 1):
                raise ValueError(f"mask_strength must be in [0, strength] of image-to-image generation "
                                 f"(strength < 1), got {self.mask_strength} at strength {self.strength}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if not self.texts:
            raise ValueError("texts must hold at least one text ('' = the plain prompt)")

    def identity(self) -> dict:
        """The settings that change the images (n and batch size do not)."""
        d = dataclasses.asdict(self)
        d.pop("n")
        d.pop("batch_size")
        d["texts"] = list(d["texts"])
        return d


def _items(ps: PreparedSet, indices: list[int], cfg: GenerateConfig, styles: list[str] | None = None) -> list[dict]:
    from ..diffusion.conditions import visible_prompt

    """Variant-major order: raising n later only appends batches. With ``styles`` (target_style), a labelled
    image's variant takes one of them, drawn from its seed, at the end of its prompt."""
    items = []
    for i in range(cfg.n):
        for ri in indices:
            row = ps.manifest[ri]
            seed = variant_seed(cfg.seed, row["case_id"], row["slice_index"], i)
            prompt = visible_prompt(ps, ri)  # a hidden image's category is not shown
            if styles and ps.label_readable(ri):
                prompt = f"{prompt}, {styles[int(np.random.default_rng([seed, 23]).integers(len(styles)))]}"
            items.append({"real_index": ri, "case_id": row["case_id"], "slice_index": row["slice_index"],
                          "variant": i, "category": row["category"], "prompt": prompt,
                          "text": cfg.texts[i % len(cfg.texts)], "seed": seed})
    return items


def target_styles(ps: PreparedSet, fold: int) -> list[str]:
    """The scanners (else the site's name) of the fold's unlabelled target images, one per image: the
    target's mix, from which each target-style variant draws."""
    from ..conditioning.prompts import site_style

    site = (ps.meta.get("cross_site") or {}).get("target")
    if not site:
        raise ValueError(f"{ps.root}: target_style needs a cross-site set (prepare SOURCE --target DIR)")
    name = Path(site).name
    rows = [ps.manifest[i] for i in ps.indices(ps.fold(fold).unlabelled)]
    styles = [site_style(r["device"], name) for r in rows if r["case_id"].startswith(f"{name}/")]
    if not styles:
        raise ValueError(f"{ps.root}: fold {fold} has no unlabelled target images to take the style of")
    return styles


# identity keys added after sets were first written, with the value that older sets were made with
IDENTITY_DEFAULTS = {"strength": 1.0, "mask_strength": None, "unlabelled": False, "target_style": False}


def _key(item: dict) -> str:
    return f"{item['real_index']:07d}_{item['variant']:04d}"


@locks_folder("out")
def generate(
    model: str | Path,
    prepared: str | Path | PreparedSet,
    out: str | Path,
    fold: int,
    cfg: GenerateConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    replace_stale: bool = False,
) -> SyntheticSet:
    """Generate ``cfg.n`` variants of every training sample of ``fold`` (with ``cfg.unlabelled``, of its
    unlabelled ones too) into ``out``. A set made with other settings in ``out`` is an error, or is removed
    and remade with ``replace_stale``."""
    from accelerate import PartialState

    from ..diffusion.conditions import condition_inputs
    from ..diffusion.models import label_channels
    from ..diffusion.pipeline import PUBLIC_BLEND, DiffBoostPipeline, model_hash

    cfg = cfg or GenerateConfig()
    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    out = Path(out)
    state = PartialState()
    t0 = time.perf_counter()
    check_strength(model, cfg.strength)
    mhash = model_hash(model)
    identity = {**cfg.identity(), "model_hash": mhash, "prepared": str(ps.root.resolve()), "fold": fold}
    work = out / ".work"
    if state.is_main_process:
        recover_artifact(out)  # a kill while swapping a new set in leaves the previous one aside
        check_set_folder(out)
        try:
            _check_compatible(out, identity)
        except ValueError:
            if not replace_stale:
                raise
            shutil.rmtree(out)
    state.wait_for_everyone()
    if (out / "generation.json").exists() and json.loads((out / "generation.json").read_text())["n"] == cfg.n \
            and not work.exists():
        return SyntheticSet(out)  # complete already: nothing to do (its metadata and timing stay as they are)
    if state.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        write_control(work / "identity.json", identity)
        _unpack_existing(out, work)
    state.wait_for_everyone()

    ps = ps.for_fold(fold)
    f = ps.fold(fold)
    indices = ps.indices(f.train, training=True)
    if not indices:
        raise ValueError(f"{ps.root}: fold {fold} has no training samples")
    if cfg.unlabelled:  # after the labelled ones: their items keep their place
        indices += ps.indices(f.unlabelled)  # every slice: a hidden label may not choose them
    items = _items(ps, indices, cfg, target_styles(ps, fold) if cfg.target_style else None)
    batches = [items[i : i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]
    mine = [b for j, b in enumerate(batches) if j % state.num_processes == state.process_index]
    todo = [b for b in mine if any(not (work / f"{_key(it)}.npy").exists() for it in b)]
    cond_arr = ps.conditions if ps.meta.get("has_masks", True) else ps.edges
    if todo:
        pipe = DiffBoostPipeline.from_pretrained(model, device=device or str(state.device))
        pipe.denoiser.eval()
        labels = mask_labels(pipe, ps)
        blend = PUBLIC_BLEND if cfg.blend else None
        held = cfg.mask_strength is not None and cfg.mask_strength < cfg.strength
        if held and not ps.meta.get("has_masks", True):
            raise ValueError(f"{ps.root}: has no masks, so generate.mask_strength has no region to hold")
        for batch in progress_iter(todo, f"generate fold {fold}", enabled=progress and state.is_main_process):
            real = np.asarray([it["real_index"] for it in batch])
            if cfg.unlabelled:  # images without a label here: their edges and the "no mask" input
                cond, masks = condition_inputs(ps, real, np.zeros(len(real), bool), labels,
                                               pipe.config.mask_channels if labels is not None else None)
                cond = cond[:, 0]
                readable = np.array([ps.label_readable(int(i)) for i in real], bool)
                keep = None
                if held:  # an unlabelled image holds no region
                    keep = np.zeros((len(real), ps.size, ps.size), np.float32)
                    if readable.any():
                        keep[readable] = keep_region(ps.masks[real[readable]])
            else:
                cond = np.asarray(cond_arr[real], np.float32) / 255.0
                masks = label_channels(ps.masks[real], labels) if labels is not None else None
                keep = keep_region(ps.masks[real]) if held else None
            imgs = pipe([it["prompt"] for it in batch], cond, [it["seed"] for it in batch],
                        augment=[it["text"] for it in batch], sampler=cfg.sampler, steps=cfg.steps,
                        guidance=cfg.guidance, negative=cfg.negative, blend=blend,
                        control_scale=cfg.control_scale, strength=cfg.strength,
                        images=np.asarray(ps.images[real], np.float32) if cfg.strength < 1 else None,
                        masks=masks, keep=keep, keep_strength=cfg.mask_strength)
            for it, img in zip(batch, imgs):
                _atomic_save(work / f"{_key(it)}.npy", img.astype(np.float16))
    state.wait_for_everyone()
    if state.is_main_process:
        _consolidate(out, work, ps, items, cfg, mhash, identity, fold, model, time.perf_counter() - t0)
    state.wait_for_everyone()
    return SyntheticSet(out)


def keep_region(masks: np.ndarray) -> np.ndarray:
    """The region ``mask_strength`` holds: each label map's foreground [B, H, W] dilated by size / 64
    px (at least 1), with a soft border of the same width, in [0, 1]."""
    from skimage.filters import gaussian
    from skimage.morphology import dilation, disk

    masks = np.asarray(masks)
    r = max(1, round(masks.shape[-1] / 64))
    out = np.zeros(masks.shape, np.float32)
    for j, m in enumerate(masks):
        if m.any():
            grown = dilation(m > 0, disk(r)).astype(np.float32)
            out[j] = np.maximum(gaussian(grown, sigma=r / 2), m > 0)  # the label itself stays fully held
    return out


def timestep_cap(model: str | Path) -> float:
    """The largest timestep fraction the model was trained on (``train.max_timestep_fraction``; 1 = all)."""
    info = Path(model) / "training.json"
    return json.loads(info.read_text()).get("max_timestep_fraction", 1.0) if info.exists() else 1.0


def check_strength(model: str | Path, strength: float) -> None:
    """Refuse a strength above the timesteps the model was trained on (``max_timestep_fraction``)."""
    cap = timestep_cap(model)
    if strength > cap + 1e-9:
        raise ValueError(f"{model}: was trained on timesteps up to {cap:g} x T only (max_timestep_fraction); "
                         f"generate with strength <= {cap:g}, not {strength:g}")


def mask_labels(pipe, ps: PreparedSet) -> list[int] | None:
    """The labels an ``edges+mask`` model gets as mask channels (the real mask: the variant's label)."""
    from ..diffusion.models import foreground_labels

    if pipe.config.condition != "edges+mask":
        return None
    if not ps.meta.get("has_masks", True):
        raise ValueError(f"{ps.root}: has no masks, but the model is conditioned on them ('edges+mask')")
    labels = foreground_labels(ps.label_names)
    if len(labels) != pipe.config.mask_channels:
        raise ValueError(f"{ps.root}: has {len(labels)} foreground label(s), the model takes "
                         f"{pipe.config.mask_channels} mask channel(s); generate with the set it was fine-tuned on")
    return labels


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")  # a name of this writer's own
    np.save(tmp, arr)
    tmp.rename(path)


def _check_compatible(out: Path, identity: dict) -> None:
    for f in (out / "generation.json", out / ".work" / "identity.json"):
        if f.exists():
            old = read_control(f)  # unreadable: an error of its own, never taken for other settings
            old = {**IDENTITY_DEFAULTS, **old.get("identity", old)}
            # where the prepared set lies is no setting (the model's hash and the fold say what was made)
            diff = sorted(k for k in identity if k != "prepared" and old.get(k) != identity[k])
            if diff:
                raise ValueError(f"{out}: holds variants made with other settings ({', '.join(diff)}); nothing was "
                                 "deleted. Choose another --out or remove it (diffboost run: --redo generate)")


def _unpack_existing(out: Path, work: Path) -> None:
    """Turn a finished set back into per-variant files so that a larger n only adds variants."""
    if not (out / "manifest.csv").exists():
        return
    syn = SyntheticSet(out)
    imgs = np.asarray(syn.images)
    for r in syn.manifest:
        p = work / f"{r['real_index']:07d}_{r['variant']:04d}.npy"
        if not p.exists():
            _atomic_save(p, imgs[r["index"]])


def _consolidate(out, work, ps, items, cfg, mhash, identity, fold, model, seconds) -> None:
    images = np.stack([np.load(work / f"{_key(it)}.npy") for it in items])
    rows = [{"index": k, **it, "sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance,
             "model_hash": mhash} for k, it in enumerate(items)]
    write_synthetic_set(out, ps, rows, images, cfg, {
        "identity": identity, "model": str(Path(model).resolve()), "fold": fold, "n": cfg.n,
        "num_real": len({it["real_index"] for it in items}), "num_variants": len(items),
        "seconds": round(seconds, 2)})
    shutil.rmtree(work, ignore_errors=True)
